"""What users would pick instead: GaussianMixture (BIC) and KernelDensity (CV) on the toys.

Run through the suite: ``python -m benchmarks run --sections baselines``. Same protocol as the
density section: 10,000 training rows, 5,000 held-out rows (seed ``1000 + seed``), metric =
test NLL minus the true NLL of the exact density.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

from benchmarks.common import fmt, md_table, parallel_map, spread
from skdcd.datasets import TOY_NAMES, load_toy

SECTION = "baselines"


def fit_gmm(X, seed, max_components=20):
    best, best_bic = None, np.inf
    for k in range(1, max_components + 1):
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed).fit(X)
        bic = gmm.bic(X)
        if bic < best_bic:
            best, best_bic = gmm, bic
    return best, {"n_components": best.n_components}


def fit_kde(X, seed):
    search = GridSearchCV(KernelDensity(), {"bandwidth": np.geomspace(0.01, 1.0, 15)}, cv=5)
    search.fit(X)
    return search.best_estimator_, {"bandwidth": float(search.best_params_["bandwidth"])}


BASELINES = {"gmm_bic": fit_gmm, "kde_cv": fit_kde}


def fit_one(*, toy: str, method: str, seed: int, n_train: int, n_test: int) -> dict:
    density = load_toy(toy)
    X = density.sample(n_train, random_state=seed)
    X_test = density.sample(n_test, random_state=1000 + seed)
    true_nll = density.nll(X_test)
    start = time.perf_counter()
    model, chosen = BASELINES[method](X, seed)
    seconds = time.perf_counter() - start
    nll = -float(np.mean(model.score_samples(X_test)))
    return dict(toy=toy, method=method, seed=seed, true_nll=true_nll, nll=nll,
                gap=nll - true_nll, fit_seconds=seconds, chosen=chosen)


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    toys = ("eight_gaussians", "two_moons") if quick else TOY_NAMES
    n_train, n_test = (2000, 1000) if quick else (10000, 5000)
    jobs = [dict(toy=t, method=m, seed=s, n_train=n_train, n_test=n_test)
            for t, m, s in itertools.product(toys, BASELINES, seeds)]
    rows = parallel_map(fit_one, jobs, n_jobs)
    return dict(settings=dict(n_train=n_train, n_test=n_test, seeds=seeds), rows=rows)


def best_gaps(result: dict) -> dict:
    """Per toy, the better of the two baselines' mean gaps."""
    out = {}
    for toy in dict.fromkeys(r["toy"] for r in result["rows"]):
        out[toy] = min(np.mean([r["gap"] for r in result["rows"]
                                if r["toy"] == toy and r["method"] == m]) for m in BASELINES)
    return {t: float(g) for t, g in out.items()}


def report(result: dict, fig_dir: Path) -> str:
    rows = result["rows"]
    table = []
    for toy in dict.fromkeys(r["toy"] for r in rows):
        cells = [toy]
        for m in BASELINES:
            mine = [r for r in rows if r["toy"] == toy and r["method"] == m]
            chosen = ", ".join(f"{k} {v:.3g}" for k, v in mine[0]["chosen"].items())
            cells += [fmt(spread(r["gap"] for r in mine)), chosen]
        table.append(cells)
    return "\n".join([
        "## 5. What users would pick instead (2-D toys)", "",
        f"scikit-learn `GaussianMixture` (full covariances, 1–20 components by BIC) and "
        f"`KernelDensity` (Gaussian kernel, bandwidth by 5-fold CV), same data and metric as "
        f"section 1; seeds {result['settings']['seeds']} (chosen setting: first seed).", "",
        md_table(["toy", "GMM gap", "GMM chose", "KDE gap", "KDE chose"], table), ""])
