"""What users would pick instead: GaussianMixture (BIC) and KernelDensity (CV) on the toys.

Run: ``python -m benchmarks.baselines [--seeds 0 1 2]``. Same protocol as ``nll_gap``:
10,000 training rows, 5,000 held-out rows (seed ``1000 + seed``), metric = test NLL minus
the true NLL of the exact density. Writes ``baselines.json`` next to this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

from skdcd.datasets import TOY_NAMES, load_toy


def fit_gmm(X, seed, max_components=30):
    best, best_bic = None, np.inf
    for k in range(1, max_components + 1):
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed).fit(X)
        bic = gmm.bic(X)
        if bic < best_bic:
            best, best_bic = gmm, bic
    return best, {"n_components": best.n_components}


def fit_kde(X, seed):
    search = GridSearchCV(KernelDensity(), {"bandwidth": np.geomspace(0.01, 1.0, 25)}, cv=5)
    search.fit(X)
    return search.best_estimator_, search.best_params_


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--toys", nargs="+", default=list(TOY_NAMES), choices=TOY_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("baselines.json")))
    args = parser.parse_args()
    rows = []
    for toy in args.toys:
        density = load_toy(toy)
        for seed in args.seeds:
            X = density.sample(10000, random_state=seed)
            X_test = density.sample(5000, random_state=1000 + seed)
            true_nll = density.nll(X_test)
            for name, fit in (("gmm_bic", fit_gmm), ("kde_cv", fit_kde)):
                start = time.perf_counter()
                model, chosen = fit(X, seed)
                seconds = time.perf_counter() - start
                nll = -float(np.mean(model.score_samples(X_test)))
                row = dict(toy=toy, method=name, seed=seed, true_nll=true_nll, nll=nll,
                           gap=nll - true_nll, fit_seconds=seconds, chosen=chosen)
                print(json.dumps(row), flush=True)
                rows.append(row)
    Path(args.out).write_text(json.dumps(
        {"meta": {"sklearn": sklearn.__version__}, "rows": rows}, indent=1, default=float))
    print(f"{'toy':16s} {'method':8s} gap")
    for row in rows:
        print(f"{row['toy']:16s} {row['method']:8s} {row['gap']:.3f}")


if __name__ == "__main__":
    main()
