"""NLL gap of the default DCD and CD estimators on 2-D toys (test NLL minus true NLL).

Run: ``python -m benchmarks.nll_gap [--toys eight_gaussians two_moons] [--seeds 0]``.
Prints one line per (toy, method, seed) and writes JSON next to this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
import torch

import skdcd
from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.datasets import TOY_NAMES, load_toy

METHODS = {"dcd": DCDEnergyEstimator, "cd": CDEnergyEstimator}


def run(toys, methods, seeds, n_train=10000, n_test=5000):
    rows = []
    for toy in toys:
        density = load_toy(toy)
        for seed in seeds:
            X = density.sample(n_train, random_state=seed)
            X_test = density.sample(n_test, random_state=1000 + seed)
            true_nll = density.nll(X_test)
            for method in methods:
                est = METHODS[method](random_state=seed)
                start = time.perf_counter()
                est.fit(X)
                fit_s = time.perf_counter() - start
                nll = -est.score(X_test)
                row = dict(toy=toy, method=method, seed=seed, true_nll=true_nll, nll=nll,
                           gap=nll - true_nll, fit_seconds=fit_s, steps=est.t_)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--toys", nargs="+", default=["eight_gaussians", "two_moons"],
                        choices=TOY_NAMES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("nll_gap.json")))
    args = parser.parse_args()
    rows = run(args.toys, args.methods, args.seeds)
    meta = dict(skdcd=skdcd.__version__, torch=torch.__version__, sklearn=sklearn.__version__,
                python=platform.python_version(), threads=torch.get_num_threads())
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for toy in args.toys:
        for method in args.methods:
            gaps = [r["gap"] for r in rows if r["toy"] == toy and r["method"] == method]
            secs = [r["fit_seconds"] for r in rows if r["toy"] == toy and r["method"] == method]
            print(f"{toy:16s} {method:4s} gap {np.mean(gaps):.3f}  fit {np.mean(secs):.0f}s")


if __name__ == "__main__":
    main()
