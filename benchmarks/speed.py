"""Seconds per training step of each method, and the estimator's overhead over a bare loop.

Run: ``python -m benchmarks.speed [--steps 300]`` on an otherwise idle machine. Batch 256,
the default MLP, data with 2 and 64 features. The bare loop does DCD's default step
(weighted importance negatives) in plain torch with no estimator around it; the overhead is
the median ratio over three interleaved repeats.
Writes ``speed.json`` next to this file.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.networks import MLPEnergy

METHODS = {
    "dcd-importance": (DCDEnergyEstimator, {}),
    "dcd-importance-resampled": (DCDEnergyEstimator, {"resample_proposals": True}),
    "dcd-langevin-5": (DCDEnergyEstimator, {"negative_sampler": "langevin"}),
    "dcd-mala-5": (DCDEnergyEstimator, {"negative_sampler": "mala"}),
    "dcd-laplace": (DCDEnergyEstimator, {"negative_sampler": "laplace"}),
    "cd-1": (CDEnergyEstimator, {"n_steps": 1}),
    "cd-10": (CDEnergyEstimator, {"n_steps": 10}),
    "pcd-10": (CDEnergyEstimator, {"persistent": True}),
}


def time_fit(cls, params, X, steps):
    n_epochs = max(1, steps * 256 // len(X))
    cls(max_iter=1, random_state=0, **params).fit(X)  # warm-up (lazy imports, allocator)
    est = cls(max_iter=n_epochs, random_state=0, **params)
    start = time.perf_counter()
    est.fit(X)
    return (time.perf_counter() - start) / est.t_


def time_bare_loop(X, steps, sigma=0.1, n_proposals=16, reg=0.01):
    """DCD's default step without the estimator: the overhead reference."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = MLPEnergy(X.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    Z = torch.as_tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    n, d = Z.shape

    def energy(x):
        return net(x) + x.pow(2).sum(1) / 18.0

    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5e-3 * (1 + math.cos(math.pi * step / steps))
        x = Z[torch.randint(n, (256,), generator=g)]
        x_t = x + sigma * torch.randn(x.shape, generator=g)
        prop = x_t[:, None] + sigma * torch.randn((256, n_proposals, d), generator=g)
        e = energy(prop.reshape(-1, d)).reshape(256, n_proposals)
        w = torch.softmax(-e.detach(), 1)
        e_pos = energy(x)
        loss = (e_pos.mean() - (w * e).sum(1).mean()
                + reg * (e_pos.pow(2).mean() + (w * e.pow(2)).sum(1).mean()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).with_name("speed.json")))
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    data = {2: rng.randn(10240, 2), 64: rng.randn(10240, 64)}
    rows = []
    for d, X in data.items():
        for name, (cls, params) in METHODS.items():
            sec = time_fit(cls, params, X, args.steps)
            rows.append(dict(method=name, n_features=d, seconds_per_step=sec,
                             steps_per_second=1 / sec))
            print(json.dumps(rows[-1]), flush=True)
        time_bare_loop(X, 20)  # warm-up
        # interleaved repeats: run-to-run drift on a shared machine is ~15%
        pairs = [(time_bare_loop(X, args.steps), time_fit(DCDEnergyEstimator, {}, X, args.steps))
                 for _ in range(3)]
        bare, fit = np.median([b for b, _ in pairs]), np.median([f for _, f in pairs])
        rows.append(dict(method="bare-loop", n_features=d, seconds_per_step=float(bare),
                         steps_per_second=float(1 / bare), overhead=float(fit / bare),
                         overhead_repeats=[f / b for b, f in pairs]))
        print(json.dumps(rows[-1]), flush=True)
    meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), batch_size=256)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"{'method':26s} {'d':>3s} {'ms/step':>8s}")
    for r in rows:
        extra = f"  overhead {r['overhead']:.2f}x" if "overhead" in r else ""
        print(f"{r['method']:26s} {r['n_features']:3d} {1000 * r['seconds_per_step']:8.2f}{extra}")


if __name__ == "__main__":
    main()
