"""Filling in missing values (issue 30 §2): digits and breast cancer.

Run through the suite: ``python -m benchmarks run --sections imputation [--quick]``.

Data: the 64-D digits, pixel counts divided by 16 (values in [0, 1]), and
``load_breast_cancer`` (30 features, standardised with the training rows' mean and std).
Seed ``s`` splits the rows at random into 64 % training, 16 % validation and 20 % test
rows, of which the first 180 are used (filling is MCMC per row; on digits half of the test
rows, the same for every method). Every method is fitted to the **complete** training
rows; then the validation and test rows lose entries, and each method fills them. Tasks:
digits with 25 % and 50 % of the pixels missing at random and with the lower half missing
(rows 4–7 of the image: inpainting), breast cancer with 20 % of the entries missing at
random. Rows that would lose every entry keep one at random.

Metric: RMSE of the filled entries against the truth, on the test rows. Methods:

* ``dcd``: ``EnergyImputer`` around ``DCDEnergyEstimator`` at its defaults (a marginal
  model of the rows); ``dcd-image`` (digits only): the same with ``image_shape=(1, 8, 8)``,
  whose default is the time-conditional model with its mixture envelope.
* ``mean``: ``SimpleImputer``; ``knn``: ``KNNImputer`` (``n_neighbors`` and weights
  chosen on the validation rows); ``iterative-br`` and ``iterative-et``:
  ``IterativeImputer`` with ``BayesianRidge`` and with ``ExtraTreesRegressor``;
  ``gmm``: the exact conditional mean of a ``GaussianMixture`` (full covariances;
  components and ``reg_covar`` chosen on the validation rows), computed with
  :class:`skdcd.conditional.GaussianMixtureConditional`.

Baselines' settings are chosen on the validation rows' RMSE (of the same task); DCD runs
at its defaults: nothing is chosen on the test rows. Each fit is one process with one
thread, two at a time; a density model is fitted once per seed and fills all of that
seed's tasks.
"""

from __future__ import annotations

import itertools
import math
import time
import zlib
from pathlib import Path

import numpy as np

from benchmarks.common import fmt, md_table, parallel_map, report_head, spread, versions_note

SECTION = "imputation"
DATASETS = {"digits": ("digits-mcar25", "digits-mcar50", "digits-lower-half"),
            "breast_cancer": ("breast_cancer-mcar20",)}
METHODS = ("dcd", "dcd-image", "mean", "knn", "iterative-br", "iterative-et", "gmm")
FIGURE = "imputation_digits.png"
MAX_TEST_ROWS = 180  # filling is MCMC per row: the same first 180 test rows for every method


def load(dataset: str, seed: int) -> dict:
    """Training, validation and test rows (complete), in the units the RMSE is taken in."""
    from sklearn import datasets

    rng = np.random.default_rng(seed)
    if dataset == "digits":
        X = datasets.load_digits().data / 16.0
    else:
        X = datasets.load_breast_cancer().data
    X = X[rng.permutation(len(X))]
    n_train, n_val = int(0.64 * len(X)), int(0.16 * len(X))
    train, val, test = np.split(X, [n_train, n_train + n_val])
    test = test[:MAX_TEST_ROWS]
    if dataset == "breast_cancer":
        mean, std = train.mean(axis=0), train.std(axis=0)
        train, val, test = ((A - mean) / std for A in (train, val, test))
    return dict(train=train, val=val, test=test)


def mask(task: str, X: np.ndarray, seed: int) -> np.ndarray:
    """Which entries of ``X`` the task removes (``True``: missing)."""
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    if task.endswith("lower-half"):
        missing = np.zeros(X.shape, dtype=bool)
        missing[:, X.shape[1] // 2:] = True
        return missing
    share = int(task.rsplit("mcar", 1)[1]) / 100
    missing = rng.random(X.shape) < share
    empty = np.flatnonzero(missing.all(axis=1))
    missing[empty, rng.integers(X.shape[1], size=len(empty))] = False
    return missing


def rmse(filled: np.ndarray, truth: np.ndarray, missing: np.ndarray) -> float:
    return float(np.sqrt(np.mean((filled[missing] - truth[missing]) ** 2)))


# ------------------------------------------------------------------------- the methods
def _tuned(make, grid, data, task, seed):
    """Fit each candidate of ``grid``; the one with the best validation RMSE."""
    missing = mask(task, data["val"], seed + 100)
    holes = np.where(missing, np.nan, data["val"])
    best, best_err, best_params = None, np.inf, None
    for params in grid:
        try:
            model = make(**params).fit(data["train"])
            err = rmse(model.transform(holes), data["val"], missing)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if err < best_err:
            best, best_err, best_params = model, err, params
    return best, best_params


def _grid(**axes):
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


class GMMConditionalMean:
    """The exact conditional mean of a full-covariance ``GaussianMixture``, as an imputer."""

    def __init__(self, n_components: int, reg_covar: float, seed: int):
        self.n_components, self.reg_covar, self.seed = n_components, reg_covar, seed

    def fit(self, X):
        from sklearn.mixture import GaussianMixture

        self.gmm = GaussianMixture(self.n_components, covariance_type="full",
                                   reg_covar=self.reg_covar, random_state=self.seed).fit(X)
        return self

    def transform(self, X):
        import torch

        from skdcd.conditional import GaussianMixtureConditional

        missing = np.isnan(X)
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        cond = GaussianMixtureConditional.from_mixture(
            t(self.gmm.means_), t(self.gmm.covariances_), t(self.gmm.weights_),
            t(np.where(missing, 0.0, X)), torch.as_tensor(missing))
        return cond.mean().numpy()


def _baseline(method: str, data: dict, task: str, seed: int, quick: bool):
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    from sklearn.linear_model import BayesianRidge

    if method == "mean":
        return SimpleImputer().fit(data["train"]), {}
    if method == "knn":
        grid = _grid(n_neighbors=(3, 10) if quick else (1, 3, 5, 10, 20, 40),
                     weights=("uniform", "distance"))
        return _tuned(lambda **p: KNNImputer(**p), grid, data, task, seed)
    if method == "iterative-br":
        return IterativeImputer(BayesianRidge(), max_iter=2 if quick else 10,
                                random_state=seed).fit(data["train"]), {}
    if method == "iterative-et":
        trees = ExtraTreesRegressor(n_estimators=5 if quick else 50, min_samples_leaf=2,
                                    n_jobs=1, random_state=seed)
        return IterativeImputer(trees, max_iter=1 if quick else 5,
                                random_state=seed).fit(data["train"]), {}
    if method == "gmm":
        grid = _grid(n_components=(1, 2) if quick else (1, 2, 4, 8, 16, 32),
                     reg_covar=(1e-3, 1e-1) if quick else (1e-4, 1e-3, 1e-2, 1e-1))
        return _tuned(lambda **p: GMMConditionalMean(**p, seed=seed), grid, data, task, seed)
    raise ValueError(method)


def _dcd(method: str, data: dict, seed: int, quick: bool):
    from skdcd import DCDEnergyEstimator, EnergyImputer

    params = dict(random_state=seed)
    if quick:
        params.update(max_iter=1, sample_steps=4)
    if method == "dcd-image":
        params["image_shape"] = (1, 8, 8)
    return EnergyImputer(DCDEnergyEstimator(**params), random_state=seed).fit(data["train"])


def fit_one(*, dataset: str, method: str, seed: int, quick: bool) -> list[dict]:
    """One method and seed on every task of ``dataset``; never raises (failures: NaN rows)."""
    import warnings

    data = load(dataset, seed)
    if quick:
        data = {k: v[:120] for k, v in data.items()}
    rows, model, fit_seconds = [], None, math.nan
    for task in DATASETS[dataset]:
        row = dict(dataset=dataset, task=task, method=method, seed=seed)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chosen = {}
                if method.startswith("dcd"):
                    if model is None:
                        model = _dcd(method, data, seed, quick)
                        fit_seconds = time.perf_counter() - start
                else:
                    model, chosen = _baseline(method, data, task, seed, quick)
                missing = mask(task, data["test"], seed)
                fill_start = time.perf_counter()
                filled = model.transform(np.where(missing, np.nan, data["test"]))
            fill_seconds = time.perf_counter() - fill_start
            row.update(rmse=rmse(filled, data["test"], missing), chosen=chosen,
                       fill_seconds=fill_seconds,
                       seconds=(fit_seconds + fill_seconds if method.startswith("dcd")
                                else time.perf_counter() - start))
            if task == "digits-lower-half" and seed == 0:
                row["examples"] = filled[:8].round(4).tolist()
        except Exception as exc:  # a failing fit is a result, not a crash
            row.update(rmse=math.nan, seconds=time.perf_counter() - start,
                       error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    return rows


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    """Every dataset × method × seed."""
    jobs = [dict(dataset=d, method=m, seed=s, quick=quick)
            for d, m, s in itertools.product(DATASETS, METHODS, seeds)
            if not (m == "dcd-image" and d != "digits")]
    jobs.sort(key=lambda j: not j["method"].startswith("dcd"))  # the slow ones first
    rows = [r for part in parallel_map(fit_one, jobs, n_jobs) for r in part]
    settings = dict(datasets={k: list(v) for k, v in DATASETS.items()}, methods=METHODS,
                    seeds=seeds, threads_per_fit=1, parallel_fits=n_jobs)
    if quick:
        settings["note"] = "quick: tiny budgets, not comparable"
    return dict(settings=settings, rows=rows)


# --------------------------------------------------------------------------- report
def _means(rows, task):
    out = {}
    for m in METHODS:
        values = [r["rmse"] for r in rows if r["task"] == task and r["method"] == m]
        if values:
            out[m] = float(np.mean(values))
    return out


def targets(result: dict) -> list[list[str]]:
    rows = result["rows"]
    out = []
    digits = [t for t in DATASETS["digits"] if any(r["task"] == t for r in rows)]
    for dcd in ("dcd", "dcd-image"):
        wins = []
        for task in digits:
            means = _means(rows, task)
            others = {m: v for m, v in means.items() if not m.startswith("dcd")}
            best = min(others, key=others.get)
            wins.append(f"{task}: {means.get(dcd, math.nan):.4f} vs {best} {others[best]:.4f}")
            ok = math.isfinite(means.get(dcd, math.nan)) and means[dcd] < others[best]
            wins[-1] += "" if ok else " (loses)"
        met = bool(wins) and not any(w.endswith("(loses)") for w in wins)
        out.append([f"{dcd}: lowest RMSE of all baselines on every digits task",
                    "; ".join(wins), "**met**" if met else "**not met**"])
    task = DATASETS["breast_cancer"][0]
    means = _means(rows, task)
    if means:
        best = min(means.values())
        ratio = means.get("dcd", math.nan) / best
        out.append(["dcd within 5 % of the best RMSE on breast cancer",
                    f"dcd {means.get('dcd', math.nan):.4f}, best {best:.4f} "
                    f"(ratio {ratio:.3f})", "**met**" if ratio <= 1.05 else "**not met**"])
    return out


def figure(result: dict, fig_dir: Path) -> str | None:
    """Inpainted digits (lower half) of seed 0: truth, and each method's fill."""
    rows = [r for r in result["rows"] if r.get("examples")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = load("digits", 0)["test"][:8]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(len(methods) + 1, 8, figsize=(8, len(methods) + 1.3))
    panels = [("truth", truth)] + [(m, np.asarray(next(r["examples"] for r in rows
                                                         if r["method"] == m)))
                                   for m in methods]
    for i, (name, images) in enumerate(panels):
        for j in range(8):
            ax = axes[i, j]
            ax.imshow(np.clip(images[j], 0, 1).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.axhline(3.5, color="tab:red", lw=0.6)
            ax.set_xticks([]), ax.set_yticks([])
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("lower half filled from the upper half (below the red line)", fontsize=9)
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / FIGURE, dpi=110)
    plt.close(fig)
    return FIGURE


def report(result: dict, fig_dir: Path) -> str:
    rows = result["rows"]
    tasks = [t for ts in result["settings"]["datasets"].values() for t in ts
             if any(r["task"] == t for r in rows)]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]

    def cell(task, method):
        values = [r["rmse"] for r in rows if r["task"] == task and r["method"] == method]
        return fmt(spread(values), 4) if values else "—"

    table = [[t, *(cell(t, m) for m in methods)] for t in tasks]
    seconds = [[m, *(f"{np.median([r['seconds'] for r in rows if r['method'] == m and r['task'] == t]):.1f}"  # noqa: E501
                     if any(r["method"] == m and r["task"] == t for r in rows) else "—"
                     for t in tasks)] for m in methods]
    errors = [f"{r['task']} {r['method']} seed {r['seed']}: {r['error']}"
              for r in rows if "error" in r]
    name = figure(result, fig_dir)
    head = report_head(SECTION, __doc__, versions_note("every method",
                                                       result["meta"].get("commit")),
                       targets(result))
    return "\n".join([
        *head,
        f"### RMSE of the filled entries, test rows (mean ± std over seeds "
        f"{result['settings']['seeds']})", "", md_table(["task", *methods], table), "",
        "### Median seconds per task (DCD: its one fit per seed, shared by the tasks, plus the "
        "filling; a baseline: tuning, fit and filling)", "",
        md_table(["method", *tasks], seconds), "",
        *([f"![inpainted digits](figures/{name})", ""] if name else []),
        *(["Failed fits: " + "; ".join(errors), ""] if errors else [])])
