"""Novelty detection (issue 30): digits with one class held out, and breast cancer.

Run through the suite: ``python -m benchmarks run --sections novelty [--quick]``.

Tasks: the 64-D digits, **dequantised** (a count ``c`` in 0..16 becomes ``(c + u) / 17``),
with one digit held out at a time (10 tasks: train on the other nine, the held-out digit is
the novelty), and ``load_breast_cancer`` (30 features; benign rows normal, malignant rows
novel). Seed ``s`` splits the normal rows at random into 60 % training, 20 % validation and
20 % test rows, and the novel rows into halves for validation and test; every method sees
the rows standardised with the training rows' mean and standard deviation.

Metrics on the test rows: AUROC and average precision of "novel" against the scores (lower
score = more novel). Methods:

* ``dcd``: ``EnergyOutlierDetector`` around ``DCDEnergyEstimator`` at its defaults
  (nothing chosen here); rows are ranked by their energy, which ranks them as the
  log-density does (log Z is one constant).
* ``dcd-ladder``: the time-conditional ``DCDEnergyEstimator(time_conditional=True)``,
  rows ranked by ``E(x, σ_min)``, the energy at the data's own (narrowest) level;
  ``dcd-ladder-best``: the same fit, rows ranked by ``E(x, σ)`` at the one level of its
  noise ladder with the best validation AUROC (does scoring at a wider level help?).
* ``gmm``, ``kde``: GaussianMixture (1–16 components, full or diagonal) and KernelDensity
  (16 bandwidths), their log-densities as scores.
* ``iforest``, ``lof``, ``ocsvm``: IsolationForest (``max_samples`` and
  ``max_features``), ``LocalOutlierFactor(novelty=True)`` (``n_neighbors``) and OneClassSVM
  (RBF, ``gamma`` and ``nu``).

The baselines' settings are chosen by the validation AUROC (novel validation rows
included: the strongest they can be); DCD and CD run at their defaults. No setting is
chosen on the test rows. Each fit is one process with one thread, two at a time.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmarks.common import fmt, md_table, parallel_map, report_head, spread, versions_note
from skdcd import CDEnergyEstimator, DCDEnergyEstimator, EnergyOutlierDetector

SECTION = "novelty"
TASKS = (*(f"digits-{c}" for c in range(10)), "breast_cancer")
METHODS = ("dcd", "dcd-ladder", "dcd-ladder-best", "gmm", "kde", "iforest", "lof", "ocsvm")


def load(task: str, seed: int) -> dict:
    """Standardised training rows, and validation and test rows with novelty labels."""
    from sklearn import datasets

    rng = np.random.default_rng(seed)
    if task == "breast_cancer":
        data = datasets.load_breast_cancer()
        X, novel = data.data.astype(np.float64), data.target == 0  # 0: malignant
    else:
        data = datasets.load_digits()
        X = (data.data + rng.uniform(size=data.data.shape)) / 17.0
        novel = data.target == int(task.split("-")[1])
    normal = X[~novel][rng.permutation(int((~novel).sum()))]
    odd = X[novel][rng.permutation(int(novel.sum()))]
    n_train, n_val = int(0.6 * len(normal)), int(0.2 * len(normal))
    train, val, test = np.split(normal, [n_train, n_train + n_val])
    odd_val, odd_test = np.split(odd, [len(odd) // 2])
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def standard(A):
        return (A - mean) / std

    return dict(train=standard(train),
                val=standard(np.vstack([val, odd_val])),
                val_novel=np.r_[np.zeros(len(val)), np.ones(len(odd_val))],
                test=standard(np.vstack([test, odd_test])),
                test_novel=np.r_[np.zeros(len(test)), np.ones(len(odd_test))])


def _auroc(novel: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(novel, -scores))


# ------------------------------------------------------------------------- the methods
def _tuned(make, grid, data):
    """The candidate of ``grid`` with the best validation AUROC, refitted; its settings."""
    best, best_auc, best_params = None, -np.inf, None
    for params in grid:
        try:
            model = make(**params).fit(data["train"])
            auc = _auroc(data["val_novel"], model.score_samples(data["val"]))
        except ValueError:  # e.g. more components than rows
            continue
        if auc > best_auc:
            best, best_auc, best_params = model, auc, params
    return best.score_samples, best_params


def _grid(**axes):
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _gmm(data, seed, quick):
    from sklearn.mixture import GaussianMixture

    grid = _grid(n_components=(1, 2) if quick else (1, 2, 4, 8, 16),
                 covariance_type=("full", "diag"))
    return _tuned(lambda **p: GaussianMixture(**p, reg_covar=1e-4, random_state=seed),
                  grid, data)


def _kde(data, seed, quick):
    from sklearn.neighbors import KernelDensity

    grid = _grid(bandwidth=np.geomspace(0.05, 3.0, 4 if quick else 16).tolist())
    return _tuned(KernelDensity, grid, data)


def _iforest(data, seed, quick):
    from sklearn.ensemble import IsolationForest

    grid = _grid(max_samples=(64, 256) if quick else (64, 128, 256, 512),
                 max_features=(0.5, 1.0))
    return _tuned(lambda **p: IsolationForest(n_estimators=200, **p, random_state=seed),
                  grid, data)


def _lof(data, seed, quick):
    from sklearn.neighbors import LocalOutlierFactor

    grid = _grid(n_neighbors=(5, 20) if quick else (5, 10, 20, 35, 50, 100))
    return _tuned(lambda **p: LocalOutlierFactor(novelty=True, **p), grid, data)


def _ocsvm(data, seed, quick):
    from sklearn.svm import OneClassSVM

    d = data["train"].shape[1]
    grid = _grid(gamma=[g / d for g in ((0.1, 1.0) if quick else (0.03, 0.1, 0.3, 1.0, 3.0))],
                 nu=(0.1,) if quick else (0.05, 0.1, 0.3))
    return _tuned(OneClassSVM, grid, data)


def _ebm(cls):
    def fit(data, seed, quick):
        budget = dict(max_iter=1) if quick else {}
        detector = EnergyOutlierDetector(cls(random_state=seed, **budget),
                                         contamination=0.05).fit(data["train"])
        est = detector.estimator_
        return (lambda X: -est.energy(X)), {"steps": int(est.t_)}
    return fit


def _ladder(data, seed, quick):
    """One time-conditional fit, scored at σ_min and at the level with the best validation
    AUROC: two score functions (rows ``dcd-ladder`` and ``dcd-ladder-best``)."""
    import torch

    budget = dict(max_iter=1) if quick else {}
    est = DCDEnergyEstimator(time_conditional=True, random_state=seed, **budget)
    est.fit(data["train"])
    net = est.energy_net_.eval()

    def at(level):
        def score(X):
            z = torch.as_tensor(est._standardize(X), dtype=torch.float32)
            with torch.no_grad():
                return -net(z, torch.full((len(z), 1), float(level))).double().numpy()
        return score

    levels = [float(s) for s in est.noise_levels_]
    aucs = [_auroc(data["val_novel"], at(s)(data["val"])) for s in levels]
    k = int(np.nanargmax(aucs))
    return {"dcd-ladder": (at(levels[0]), {"steps": int(est.t_), "level": levels[0]}),
            "dcd-ladder-best": (at(levels[k]), {"steps": int(est.t_), "level": levels[k],
                                                "rung": k, "levels": len(levels)})}


FITS = {"dcd": _ebm(DCDEnergyEstimator), "dcd-ladder": _ladder,
        "cd-10": _ebm(CDEnergyEstimator), "gmm": _gmm, "kde": _kde, "iforest": _iforest,
        "lof": _lof, "ocsvm": _ocsvm}


def fit_one(*, task: str, method: str, seed: int, quick: bool) -> list[dict]:
    """Fit one method to one task and seed: its rows; never raises (failures: NaN rows)."""
    import warnings

    data = load(task, seed)
    if quick:
        data["train"] = data["train"][:150]
    names = ("dcd-ladder", "dcd-ladder-best") if method == "dcd-ladder" else (method,)
    rows = [dict(task=task, method=name, seed=seed, n_train=len(data["train"]))
            for name in names]
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = FITS[method](data, seed, quick)
            if method != "dcd-ladder":
                fitted = {method: fitted}
            seconds = time.perf_counter() - start
            for row in rows:
                score, chosen = fitted[row["method"]]
                scores = score(data["test"])
                row.update(fit_seconds=seconds, chosen=chosen,
                           auroc=_auroc(data["test_novel"], scores),
                           ap=float(average_precision_score(data["test_novel"], -scores)))
    except Exception as exc:  # a diverged or failing fit is a result, not a crash
        for row in rows:
            row.update(fit_seconds=time.perf_counter() - start, auroc=math.nan, ap=math.nan,
                       error=f"{type(exc).__name__}: {exc}")
    return rows


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    """Every task × method × seed."""
    tasks = ("digits-0", "breast_cancer") if quick else TASKS
    jobs = [dict(task=t, method=m, seed=s, quick=quick)
            for t, m, s in itertools.product(tasks, FITS, seeds) if m in METHODS]
    jobs.sort(key=lambda j: not j["method"].startswith(("dcd", "cd")))  # the slow ones first
    rows = [r for part in parallel_map(fit_one, jobs, n_jobs) for r in part]
    settings = dict(tasks=list(tasks), methods=METHODS, seeds=seeds, threads_per_fit=1,
                    parallel_fits=n_jobs)
    if quick:
        settings["note"] = "quick: tiny budgets, not comparable"
    return dict(settings=settings, rows=rows)


# --------------------------------------------------------------------------- report
def _mean(rows, method, key, digits: bool) -> float:
    values = [r[key] for r in rows if r["method"] == method
              and r["task"].startswith("digits") == digits]
    return float(np.mean(values)) if values else math.nan


def targets(result: dict) -> list[list[str]]:
    rows = result["rows"]
    dcd = _mean(rows, "dcd", "auroc", True)
    others = {m: _mean(rows, m, "auroc", True) for m in METHODS if not m.startswith("dcd")}
    best = max(others, key=lambda m: others[m] if math.isfinite(others[m]) else -1)
    ladder = {m: _mean(rows, m, "auroc", True) for m in ("dcd-ladder", "dcd-ladder-best")}
    ok = bool(np.nanmax([dcd, *ladder.values()]) > others[best])
    best_dcd = max(("dcd-ladder", "dcd-ladder-best"), key=lambda m: ladder[m])
    return [["DCD's mean AUROC over the digit tasks above every baseline's",
             f"DCD default (marginal) {dcd:.3f}, time-conditional {ladder[best_dcd]:.3f} "
             f"({best_dcd}); best baseline {best} {others[best]:.3f}",
             "**met**" if ok else "**not met**"],
            ["(report) time-conditional model: energy at σ_min vs the best level of its ladder",
             f"σ_min {ladder['dcd-ladder']:.3f}; best level {ladder['dcd-ladder-best']:.3f}",
             "helps" if ladder["dcd-ladder-best"] > ladder["dcd-ladder"] else "does not help"]]


def report(result: dict, fig_dir: Path) -> str:
    rows = result["rows"]
    tasks = result["settings"]["tasks"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]

    def cell(task, method, key):
        values = [r[key] for r in rows if r["task"] == task and r["method"] == method]
        return fmt(spread(values)) if values else "—"

    auroc = [[t, *(cell(t, m, "auroc") for m in methods)] for t in tasks]
    auroc.append(["**digits mean**", *(f"**{_mean(rows, m, 'auroc', True):.3f}**"
                                       for m in methods)])
    ap = [[t, *(cell(t, m, "ap") for m in methods)] for t in tasks]
    ap.append(["**digits mean**", *(f"**{_mean(rows, m, 'ap', True):.3f}**" for m in methods)])
    seconds = [[m, f"{np.median([r['fit_seconds'] for r in rows if r['method'] == m]):.1f}"]
               for m in methods]
    errors = [f"{r['task']} {r['method']} seed {r['seed']}: {r['error']}"
              for r in rows if "error" in r]
    head = report_head(SECTION, __doc__, versions_note("every method",
                                                       result["meta"].get("commit")),
                       targets(result))
    return "\n".join([
        *head,
        f"### AUROC on the test rows (mean ± std over seeds {result['settings']['seeds']})",
        "", md_table(["task", *methods], auroc), "",
        "### Average precision", "", md_table(["task", *methods], ap), "",
        "### Median seconds per fit (tuning included; two fits at a time)", "",
        md_table(["method", "seconds"], seconds), "",
        *(["Failed fits: " + "; ".join(errors), ""] if errors else [])])
