"""Density quality between 2-D and 32-D, where the exact density is known.

Run through the suite: ``python -m benchmarks run --sections highdim [--quick]``.

Data (parameters fixed per dataset; seed ``s`` draws 10,000 training rows and, with seed
``1000 + s``, 5,000 held-out rows):

* ``toys-d`` (d = 4, 8, 16, 32): the six 2-D toys of :mod:`skdcd.datasets` side by side
  (block ``i`` is toy ``i mod 6``, each block independent) and randomly rotated; the
  log-density is the sum over blocks (the rotation's Jacobian is 1).
* ``gaussian-d`` (d = 8, 32): one Gaussian with a full covariance whose standard deviations
  span a factor of 10, in random directions.
* ``mixture-16``: four Gaussians of weights 0.4/0.3/0.2/0.1 whose scales span a factor of
  30, each with its own random directions.

Metric: test NLL minus the true NLL, **per dimension** (nats). Methods: DCD and CD-10 at
their defaults (nothing chosen; ``score`` by AIS), GaussianMixture (full covariances, K by
BIC on the training rows), KernelDensity on standardised rows (bandwidth by 3-fold CV on
the training rows) and a neural spline flow (``zuko`` NSF, 5 transforms, hidden (128, 128),
Adam 1e-3 with cosine decay, 2,000 steps of 256 rows, the EBMs' budget; standardised
rows). ``dcd-env`` is DCD at its defaults but with ``envelope_components=10`` (the mixture
envelope of time-conditional models), and ``envelope`` that mixture alone: what the network
adds over it. No setting is chosen on the test rows. Each fit is one process with one
thread, two at a time, so seconds are single-thread seconds.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from scipy.stats import special_ortho_group

from benchmarks.common import (
    fmt,
    md_table,
    parallel_map,
    report_head,
    spread,
    versions_note,
)
from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.datasets import TOY_NAMES, load_toy

SECTION = "highdim"
N_TRAIN, N_TEST = 10000, 5000
DATASETS = ("toys-4", "toys-8", "toys-16", "toys-32", "gaussian-8", "gaussian-32",
            "mixture-16")
METHODS = ("dcd", "cd-10", "gmm", "kde", "flow", "dcd-tc", "dcd-env", "envelope")
TC_DATASETS = ("toys-8", "gaussian-8")  # the time-conditional variant, where it is shown
FLOW_STEPS, BATCH = 2000, 256
GAP_GOAL = 0.02  # nats per dimension (issue 26)
GAUSS_GOAL = 0.005


class Density:
    """A dataset of known density: ``sample(n, seed)`` and ``log_prob(X)``."""

    def __init__(self, name: str):
        kind, d = name.rsplit("-", 1)
        self.name, self.kind, self.d = name, kind, int(d)
        rng = np.random.default_rng(self.d)
        if kind == "toys":
            self.toys = [load_toy(TOY_NAMES[i % len(TOY_NAMES)]) for i in range(self.d // 2)]
            self.rotation = special_ortho_group.rvs(self.d, random_state=self.d)
        elif kind in ("gaussian", "mixture"):
            n_comp = 1 if kind == "gaussian" else 4
            self.weights = (np.ones(1) if n_comp == 1 else np.array([0.4, 0.3, 0.2, 0.1]))
            scales = np.ones(1) if n_comp == 1 else np.geomspace(1.0, 1 / 30, n_comp)
            self.means = (np.zeros((1, self.d)) if n_comp == 1
                          else rng.normal(0.0, 3.0 / math.sqrt(self.d) * 4, (n_comp, self.d)))
            self.chols = []
            for scale in scales:
                q = special_ortho_group.rvs(self.d, random_state=rng.integers(2**31))
                std = scale * np.geomspace(1.0, 0.1, self.d)
                self.chols.append(q * std)  # L = Q diag(std): covariance L Lᵀ
        else:
            raise ValueError(name)

    def sample(self, n: int, seed: int) -> np.ndarray:
        if self.kind == "toys":
            Z = np.hstack([t.sample(n, random_state=seed + 10 * i)
                           for i, t in enumerate(self.toys)])
            return Z @ self.rotation.T
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        xi = rng.standard_normal((n, self.d))
        return np.stack([self.means[c] + self.chols[c] @ x for c, x in zip(comp, xi, strict=True)])

    def log_prob(self, X: np.ndarray) -> np.ndarray:
        if self.kind == "toys":
            Z = X @ self.rotation
            return sum(t.log_prob(Z[:, 2 * i:2 * i + 2]) for i, t in enumerate(self.toys))
        parts = []
        for w, m, L in zip(self.weights, self.means, self.chols, strict=True):
            y = np.linalg.solve(L, (X - m).T)  # (d, n)
            log_det = np.linalg.slogdet(L)[1]
            parts.append(math.log(w) - 0.5 * (y**2).sum(axis=0) - log_det
                         - 0.5 * self.d * math.log(2 * math.pi))
        return logsumexp(np.stack(parts), axis=0)


# ------------------------------------------------------------------------- the methods
def _gmm(X, seed, quick):
    from sklearn.mixture import GaussianMixture

    best, best_bic = None, np.inf
    for k in (1, 2) if quick else (1, 2, 4, 8, 16, 32):
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed).fit(X)
        bic = gmm.bic(X)
        if bic < best_bic:
            best, best_bic = gmm, bic
    return best.score_samples, {"n_components": best.n_components}


def _standardised(X):
    mean, std = X.mean(axis=0), X.std(axis=0)
    return mean, std, float(np.log(std).sum())  # log |Jacobian| of x -> (x - mean) / std


def _kde(X, seed, quick):
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    mean, std, log_jac = _standardised(X)
    grid = np.geomspace(0.05, 1.5, 4 if quick else 12)
    search = GridSearchCV(KernelDensity(), {"bandwidth": grid}, cv=3).fit((X - mean) / std)
    kde = search.best_estimator_
    return (lambda Y: kde.score_samples((Y - mean) / std) - log_jac,
            {"bandwidth": float(search.best_params_["bandwidth"])})


def _flow(X, seed, quick):
    import torch
    import zuko

    mean, std, log_jac = _standardised(X)
    torch.manual_seed(seed)
    Z = torch.as_tensor((X - mean) / std, dtype=torch.float32)
    flow = zuko.flows.NSF(features=X.shape[1], transforms=5, hidden_features=(128, 128))
    steps = 20 if quick else FLOW_STEPS
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = Z[torch.randint(len(Z), (BATCH,), generator=gen)]
        loss = -flow().log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def score(Y):
        with torch.no_grad():
            y = torch.as_tensor((Y - mean) / std, dtype=torch.float32)
            return flow().log_prob(y).double().numpy() - log_jac

    return score, {"steps": steps}


def _ebm(cls, params):
    def fit(X, seed, quick):
        budget = dict(max_iter=1, ais_n_particles=64, ais_n_steps=16) if quick else {}
        est = cls(random_state=seed, **params, **budget).fit(X)
        return est.score_samples, {"log_z_std": float(est.log_partition_std_),
                                   "steps": int(est.t_)}
    return fit


def _envelope(X, seed, quick):
    """The mixture envelope that ``envelope_components=10`` gives DCD, alone (its density)."""
    from sklearn.utils import check_random_state

    from skdcd import _envelope

    mean, std, log_jac = _standardised(X)
    Z = (X - mean) / std
    model_seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
    k = _envelope.n_components(ENVELOPE_COMPONENTS, *Z.shape, conditional=False)
    means, vecs, lams, residual, weights = _envelope.mixture_fit(Z, k, model_seed)
    covs = [V @ np.diag(lam) @ V.T for V, lam in zip(vecs, lams, strict=True)]

    def score(Y):
        from scipy.stats import multivariate_normal

        Zy = (Y - mean) / std
        parts = [np.log(w) + multivariate_normal(m, C).logpdf(Zy)
                 for m, C, w in zip(means, covs, weights, strict=True)]
        return logsumexp(np.stack(parts), axis=0) - log_jac

    return score, {"n_components": k}


ENVELOPE_COMPONENTS = 10
FITS = {"dcd": _ebm(DCDEnergyEstimator, {}), "cd-10": _ebm(CDEnergyEstimator, {}),
        "gmm": _gmm, "kde": _kde, "flow": _flow,
        "dcd-tc": _ebm(DCDEnergyEstimator, {"time_conditional": True}),
        # marginal DCD over a 10-component mixture envelope, and that envelope alone
        "dcd-env": _ebm(DCDEnergyEstimator, {"envelope_components": ENVELOPE_COMPONENTS}),
        "envelope": _envelope}


def fit_one(*, dataset: str, method: str, seed: int, quick: bool) -> dict:
    """Fit one method to one dataset and seed; never raises (failures become NaN rows)."""
    import warnings

    density = Density(dataset)
    n_train, n_test = (1000, 500) if quick else (N_TRAIN, N_TEST)
    X, X_test = density.sample(n_train, seed), density.sample(n_test, 1000 + seed)
    true_nll = -float(density.log_prob(X_test).mean())
    row = dict(dataset=dataset, d=density.d, method=method, seed=seed, true_nll=true_nll)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a collapsed AIS warns; its s.e. is recorded
            score, chosen = FITS[method](X, seed, quick)
            row["fit_seconds"] = time.perf_counter() - start
            row["nll"] = -float(np.mean(score(X_test)))
        row["chosen"] = chosen
    except Exception as exc:  # a diverged or failing fit is a result, not a crash
        row.update(fit_seconds=time.perf_counter() - start, nll=math.nan,
                   error=f"{type(exc).__name__}: {exc}")
    row["gap_per_dim"] = ((row["nll"] - true_nll) / density.d if math.isfinite(row["nll"])
                          else math.nan)
    return row


def validation_gap(dataset: str, seed: int, params: dict) -> float:
    """NLL gap per dimension of ``DCDEnergyEstimator(**params)`` on validation rows.

    For choosing settings: the validation rows are their own draw (seed ``2000 + seed``),
    never the section's test rows. E.g. ``validation_gap("mixture-16", 0,
    {"noise_std": (0.003, 1.0), "negative_sampler": "mala"})``.
    """
    density = Density(dataset)
    X, X_val = density.sample(N_TRAIN, seed), density.sample(N_TEST, 2000 + seed)
    est = DCDEnergyEstimator(random_state=seed, **params).fit(X)
    return (-est.score(X_val) + float(density.log_prob(X_val).mean())) / density.d


def jobs(quick: bool, seeds: list[int], methods=METHODS) -> list[dict]:
    datasets = ("toys-4",) if quick else DATASETS
    return [dict(dataset=ds, method=m, seed=s, quick=quick)
            for ds, m, s in itertools.product(datasets, methods, seeds)
            if m != "dcd-tc" or quick or ds in TC_DATASETS]


def run(*, quick: bool, seeds: list[int], n_jobs: int, models: list[str] | None = None
        ) -> dict:
    """Every dataset × method × seed; ``models``: only these methods (see merge_models)."""
    unknown = set(models or ()) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown highdim methods {sorted(unknown)}; known: {METHODS}")
    job_list = jobs(quick, seeds, models or METHODS)
    # the slowest first (many features, EBMs and flows) so that the workers finish together
    job_list.sort(key=lambda j: -(Density(j["dataset"]).d
                                  * (1 if j["method"] in ("gmm", "kde") else 3)))
    rows = parallel_map(fit_one, job_list, n_jobs)
    settings = dict(n_train=N_TRAIN, n_test=N_TEST, datasets=DATASETS, methods=METHODS,
                    models=list(models or METHODS),
                    tc_datasets=TC_DATASETS, flow_steps=FLOW_STEPS, seeds=seeds,
                    threads_per_fit=1, parallel_fits=n_jobs, gap_goal=GAP_GOAL)
    if quick:
        settings.update(n_train=1000, n_test=500, note="quick: tiny budgets, not comparable")
    return dict(settings=settings, rows=rows)


# --------------------------------------------------------------------------- report
def _cells(rows, dataset, method) -> tuple[dict | None, dict | None]:
    sel = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
    if not sel:
        return None, None
    return spread(r["gap_per_dim"] for r in sel), spread(r["fit_seconds"] for r in sel)


def _mean_gap(rows, method, datasets) -> float:
    gaps = [r["gap_per_dim"] for r in rows if r["method"] == method and r["dataset"] in datasets]
    return float(np.mean(gaps)) if gaps else math.nan


def targets(result: dict) -> list[list[str]]:
    """The issue's synthetic targets: DCD ≤ 0.02 nats per dimension and below every other
    method; ≤ 0.005 on the Gaussians."""
    rows = result["rows"]
    datasets = [d for d in result["settings"]["datasets"]
                if any(r["dataset"] == d for r in rows)]
    if not datasets:
        return []
    dcd = _mean_gap(rows, "dcd", datasets)
    others = {m: _mean_gap(rows, m, datasets) for m in ("cd-10", "gmm", "kde", "flow")}
    best_other = min(others, key=lambda m: others[m] if math.isfinite(others[m]) else np.inf)
    out = [["synthetic 4–32-D: DCD's mean NLL gap per dimension ≤ 0.02",
            f"{dcd:.4f}", "**met**" if dcd <= GAP_GOAL else "**not met**"],
           ["… and below CD-10's, GaussianMixture's, KernelDensity's and the flow's",
            f"best other: {best_other} {others[best_other]:.4f}",
            "**met**" if dcd < min(others.values()) else "**not met**"]]
    gauss = [d for d in datasets if d.startswith("gaussian")]
    if gauss:
        worst = max(_mean_gap(rows, "dcd", (d,)) for d in gauss)
        out.append(["a full-covariance Gaussian in 8-D and 32-D: DCD ≤ 0.005 per dimension",
                    f"worst {worst:.4f}", "**met**" if worst <= GAUSS_GOAL else "**not met**"])
    return out


def _versions(result: dict) -> str:
    runs = result.get("runs")
    if not runs:
        return versions_note("This section", result["meta"].get("commit"))
    return versions_note("; ".join(f"{part or 'the rest'} at commit {m.get('commit', '?')}"
                                   for part, m in runs.items()),
                         *(m.get("commit") for m in runs.values()))


def report(result: dict, fig_dir: Path) -> str:
    rows = result["rows"]
    settings = result["settings"]
    lines = report_head(SECTION, __doc__, _versions(result), targets(result))
    # every method with rows, reruns of new methods (--models) included
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    table = []
    for ds in settings["datasets"]:
        cells = []
        for m in methods:
            gap, secs = _cells(rows, ds, m)
            cells.append("" if gap is None else f"{fmt(gap, 3)} ({secs['mean']:.0f} s)")
        if any(cells):
            table.append([ds, *cells])
    lines += ["### NLL gap per dimension", "",
              "Nats per dimension, mean ± std over seeds, and the mean fit seconds (one "
              "thread). `dcd-tc` is the time-conditional DCD model (not the tabular default).",
              "", md_table(["data", *methods], table), ""]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["Failed fits: " + "; ".join(f"{r['dataset']} {r['method']} seed "
                                            f"{r['seed']}: {r['error']}" for r in failed), ""]
    chosen = [[r["dataset"], r["method"], r["seed"], r.get("chosen", "")] for r in rows
              if r["method"] in ("gmm", "kde")]
    if chosen:
        lines += ["<details><summary>What the baselines chose (on training rows only)"
                  "</summary>", "", md_table(["data", "method", "seed", "chosen"], chosen),
                  "", "</details>", ""]
    return "\n".join(lines)
