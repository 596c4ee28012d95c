"""Held-out log-likelihood on real tabular data, 13 to 64 features.

Run through the suite: ``python -m benchmarks run --sections realdata [--quick]``.

Data: scikit-learn's ``load_wine`` (178 rows, 13 features), ``load_breast_cancer`` (569 rows,
30 features) and the digits as 64-D tabular rows (1,797 rows), **dequantised**: a pixel
count ``c`` in 0..16 becomes ``(c + u) / 17`` with ``u ~ U(0, 1)``, so that a continuous
density's log-likelihood is a lower bound on the discrete one and cannot grow without end.
Seed ``s`` splits the rows at random into 60 % training, 20 % validation and 20 % test
rows (and draws the dequantisation noise); every method sees the rows standardised with the
training rows' mean and standard deviation.

Metric: the test log-likelihood per row in nats, in standardised units (higher is better;
the same constant separates it from the original units for every method). Methods:

* ``dcd``, ``cd-10``: the estimators at their defaults (nothing chosen here), ``score`` by
  AIS; each row also records the second, independent estimate of log Z
  (``log_partition_diagnostics``) and how far apart the two are.
* ``gmm``: GaussianMixture with the number of components (1–16) and the covariance type
  (full or diagonal) chosen by the validation log-likelihood.
* ``kde``: KernelDensity with the bandwidth chosen by the validation log-likelihood.
* ``flow``: a zuko neural spline flow (5 transforms, hidden (128, 128), Adam 1e-3 with cosine
  decay over 2,000 steps of 256 rows, the EBMs' budget), stopped at the step (every 100)
  with the best validation log-likelihood.

No setting is chosen on the test rows. Each fit is one process with one thread, two at a
time.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    fmt,
    md_table,
    parallel_map,
    report_head,
    spread,
    versions_note,
)
from skdcd import CDEnergyEstimator, DCDEnergyEstimator

SECTION = "realdata"
DATASETS = ("wine", "breast_cancer", "digits")
METHODS = ("dcd", "cd-10", "gmm", "kde", "flow")
FLOW_STEPS, FLOW_EVERY, BATCH = 2000, 100, 256


def load(dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation and test rows of ``dataset`` for ``seed``, standardised."""
    from sklearn import datasets

    X = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer,
         "digits": datasets.load_digits}[dataset]().data.astype(np.float64)
    rng = np.random.default_rng(seed)
    if dataset == "digits":  # counts 0..16: dequantised into [0, 1)
        X = (X + rng.uniform(size=X.shape)) / 17.0
    order = rng.permutation(len(X))
    n_train, n_val = int(0.6 * len(X)), int(0.2 * len(X))
    train, val, test = np.split(X[order], [n_train, n_train + n_val])
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple((part - mean) / std for part in (train, val, test))


# ------------------------------------------------------------------------- the methods
def _gmm(X, X_val, seed, quick):
    from sklearn.mixture import GaussianMixture

    best, best_ll = None, -np.inf
    grid = ((1, "full"), (2, "diag")) if quick else itertools.product(
        (1, 2, 4, 8, 16), ("full", "diag"))
    for k, kind in grid:
        if k > len(X) // 2:
            continue
        gmm = GaussianMixture(k, covariance_type=kind, reg_covar=1e-4,
                              random_state=seed).fit(X)
        ll = gmm.score(X_val)
        if ll > best_ll:
            best, best_ll = gmm, ll
    return best.score_samples, {"n_components": best.n_components,
                                "covariance_type": best.covariance_type}


def _kde(X, X_val, seed, quick):
    from sklearn.neighbors import KernelDensity

    grid = np.geomspace(0.05, 3.0, 4 if quick else 16)
    lls = [KernelDensity(bandwidth=h).fit(X).score(X_val) for h in grid]
    h = float(grid[int(np.argmax(lls))])
    return KernelDensity(bandwidth=h).fit(X).score_samples, {"bandwidth": h}


def _flow(X, X_val, seed, quick):
    import copy

    import torch
    import zuko

    torch.manual_seed(seed)
    Z, Z_val = (torch.as_tensor(A, dtype=torch.float32) for A in (X, X_val))
    flow = zuko.flows.NSF(features=X.shape[1], transforms=5, hidden_features=(128, 128))
    steps = 20 if quick else FLOW_STEPS
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    best, best_ll, best_step = None, -math.inf, 0
    for step in range(1, steps + 1):
        batch = Z[torch.randint(len(Z), (min(BATCH, len(Z)),), generator=gen)]
        loss = -flow().log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % FLOW_EVERY == 0 or step == steps:
            with torch.no_grad():
                ll = float(flow().log_prob(Z_val).mean())
            if ll > best_ll:
                best, best_ll, best_step = copy.deepcopy(flow.state_dict()), ll, step
    flow.load_state_dict(best)

    def score(Y):
        with torch.no_grad():
            return flow().log_prob(torch.as_tensor(Y, dtype=torch.float32)).double().numpy()

    return score, {"steps": best_step}


def _ebm(cls):
    def fit(X, X_val, seed, quick):
        budget = dict(max_iter=1, ais_n_particles=64, ais_n_steps=16) if quick else {}
        est = cls(random_state=seed, **budget).fit(X)
        diag = est.log_partition_diagnostics()
        return est.score_samples, {
            "steps": int(est.t_), "log_z_std": float(diag["std_err"]),
            "log_z_check_difference": float(diag["difference"]),
            "log_z_check_std_errs": float(diag["difference_std_errs"])}
    return fit


FITS = {"dcd": _ebm(DCDEnergyEstimator), "cd-10": _ebm(CDEnergyEstimator), "gmm": _gmm,
        "kde": _kde, "flow": _flow}


def fit_one(*, dataset: str, method: str, seed: int, quick: bool) -> dict:
    """Fit one method to one dataset and seed; never raises (failures become NaN rows)."""
    import warnings

    X, X_val, X_test = load(dataset, seed)
    if quick:
        X, X_val, X_test = X[:200], X_val[:100], X_test[:100]
    row = dict(dataset=dataset, d=X.shape[1], n_train=len(X), method=method, seed=seed)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a collapsed AIS warns; the check is recorded
            score, chosen = FITS[method](X, X_val, seed, quick)
            row["fit_seconds"] = time.perf_counter() - start
            row["test_ll"] = float(np.mean(score(X_test)))
            row["val_ll"] = float(np.mean(score(X_val)))
        row["chosen"] = chosen
    except Exception as exc:  # a diverged or failing fit is a result, not a crash
        row.update(fit_seconds=time.perf_counter() - start, test_ll=math.nan,
                   val_ll=math.nan, error=f"{type(exc).__name__}: {exc}")
    return row


def jobs(quick: bool, seeds: list[int]) -> list[dict]:
    datasets = ("wine",) if quick else DATASETS
    return [dict(dataset=ds, method=m, seed=s, quick=quick)
            for ds, m, s in itertools.product(datasets, METHODS, seeds)]


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    """Every dataset × method × seed."""
    job_list = jobs(quick, seeds)
    # the slowest first (digits, EBMs and flows) so that the workers finish together
    job_list.sort(key=lambda j: -(DATASETS.index(j["dataset"]) + 1)
                  * (1 if j["method"] in ("gmm", "kde") else 3))
    rows = parallel_map(fit_one, job_list, n_jobs)
    settings = dict(datasets=DATASETS, methods=METHODS, split=(0.6, 0.2, 0.2), seeds=seeds,
                    flow_steps=FLOW_STEPS, threads_per_fit=1, parallel_fits=n_jobs)
    if quick:
        settings["note"] = "quick: tiny budgets, not comparable"
    return dict(settings=settings, rows=rows)


# --------------------------------------------------------------------------- report
def _mean(rows, dataset, method, key="test_ll") -> float:
    values = [r[key] for r in rows if r["dataset"] == dataset and r["method"] == method]
    return float(np.mean(values)) if values else math.nan


def targets(result: dict) -> list[list[str]]:
    """Where DCD stands on real data: best of the five or not, and against CD-10."""
    rows = result["rows"]
    out = []
    for ds in result["settings"]["datasets"]:
        means = {m: _mean(rows, ds, m) for m in result["settings"]["methods"]}
        means = {m: v for m, v in means.items() if math.isfinite(v)}
        if "dcd" not in means:
            continue
        best = max(means, key=means.get)
        out.append([f"{ds}: DCD's test log-likelihood the best of the five",
                    f"DCD {means['dcd']:.2f}; best {best} {means[best]:.2f}",
                    "**met**" if best == "dcd" else "**not met**"])
    return out


def report(result: dict, fig_dir: Path) -> str:
    rows = result["rows"]
    settings = result["settings"]
    lines = report_head(SECTION, __doc__,
                        versions_note("This section", result["meta"].get("commit")),
                        targets(result))
    methods = [m for m in settings["methods"] if any(r["method"] == m for r in rows)]
    table = []
    for ds in settings["datasets"]:
        cells = []
        for m in methods:
            sel = [r for r in rows if r["dataset"] == ds and r["method"] == m]
            if not sel:
                cells.append("")
                continue
            ll = spread(r["test_ll"] for r in sel)
            secs = np.mean([r["fit_seconds"] for r in sel])
            cells.append(f"{fmt(ll, 2)} ({secs:.0f} s)")
        if any(cells):
            d = next(r["d"] for r in rows if r["dataset"] == ds)
            table.append([f"{ds} ({d}-D)", *cells])
    lines += ["### Test log-likelihood per row", "",
              "Nats per row in standardised units (higher is better), mean ± std over "
              "seeds, and the mean fit seconds (one thread).", "",
              md_table(["data", *methods], table), ""]
    checks = [[r["dataset"], r["method"], r["seed"],
               f"{r['chosen']['log_z_check_difference']:+.2f}",
               f"{r['chosen']['log_z_check_std_errs']:.1f}"]
              for r in rows if r["method"] in ("dcd", "cd-10") and "chosen" in r]
    if checks:
        lines += ["How far the EBMs' two independent log Z estimates are apart (the second "
                  "minus the first, nats; and in combined standard errors): a likelihood "
                  "is only as good as this agreement.", "",
                  md_table(["data", "method", "seed", "difference", "s.e."], checks), ""]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["Failed fits: " + "; ".join(f"{r['dataset']} {r['method']} seed "
                                            f"{r['seed']}: {r['error']}" for r in failed), ""]
    chosen = [[r["dataset"], r["method"], r["seed"], r.get("chosen", "")] for r in rows
              if r["method"] in ("gmm", "kde", "flow")]
    if chosen:
        lines += ["<details><summary>What the baselines chose (on validation rows)"
                  "</summary>", "", md_table(["data", "method", "seed", "chosen"], chosen),
                  "", "</details>", ""]
    return "\n".join(lines)
