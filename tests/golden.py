"""Golden results of small fits of every kind, recorded before a restructuring.

Each case fits an estimator for a few steps and records what a user sees: the loss curve,
the fitted weights, samples, scores and denoised rows. ``tests/test_golden.py`` compares a
fresh run with ``tests/golden.json``; a change of any result for a fixed seed fails it.
Recording (only when results are meant to change, and said so in the commit):

    python -m tests.golden --write
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import platform
import sys

import numpy as np
import torch

PATH = pathlib.Path(__file__).with_name("golden.json")
SMALL = dict(hidden_layer_sizes=(16, 16), batch_size=64, quadrature_n_grid=64,
             ais_n_particles=64, ais_n_steps=16, sample_steps=16, random_state=0)


def _moons(n: int = 256) -> np.ndarray:
    from skdcd.datasets import make_toy

    return make_toy("two_moons", n, random_state=0)


def _tabular(d: int, n: int = 256) -> np.ndarray:
    rng = np.random.RandomState(1)
    return rng.randn(n, d) @ rng.randn(d, d) * 0.5 + rng.randn(d)


def _images(n: int = 128) -> np.ndarray:
    """4×4 one-channel images: blurred blobs at random places, in [0, 1]."""
    rng = np.random.RandomState(2)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1)  # (4, 4, 2)
    centres = rng.uniform(0, 3, (n, 1, 1, 2))
    return np.exp(-((grid - centres) ** 2).sum(-1) / 2).reshape(n, 16)


def _cases() -> dict:
    from skdcd import CDEnergyEstimator, DCDEnergyEstimator

    dcd, cd = DCDEnergyEstimator, CDEnergyEstimator
    return {  # name: (class, parameters, data, how to fit)
        "dcd_importance": (dcd, dict(max_iter=3), _moons, "fit"),
        "dcd_importance_all": (dcd, dict(max_iter=2, n_negatives=None), _moons, "fit"),
        "dcd_mala": (dcd, dict(max_iter=2, negative_sampler="mala"), _moons, "fit"),
        "dcd_langevin": (dcd, dict(max_iter=2, negative_sampler="langevin",
                                   noise_std=(0.05, 0.5)), _moons, "fit"),
        "dcd_laplace": (dcd, dict(max_iter=2, negative_sampler="laplace"), _moons, "fit"),
        "dcd_vp": (dcd, dict(max_iter=2, diffusion="vp", noise_std=(0.05, 0.5)), _moons,
                   "fit"),
        "dcd_3d_ais": (dcd, dict(max_iter=2, max_grad_norm=1.0, energy_reg=0.01,
                                 lr_schedule="constant"), lambda: _tabular(3), "fit"),
        "dcd_partial_fit": (dcd, dict(learning_rate=1e-3), _moons, "partial_fit"),
        "dcd_warm_start": (dcd, dict(max_iter=1, warm_start=True), _moons, "warm_start"),
        "dcd_bf16": (dcd, dict(max_iter=1, mixed_precision=True), _moons, "fit"),
        "dcd_time_conditional": (dcd, dict(max_iter=2, time_conditional=True,
                                           n_noise_levels=4, recovery_steps=3),
                                 lambda: _tabular(3), "fit"),
        "dcd_image": (dcd, dict(max_iter=2, image_shape=(1, 4, 4), conv_channels=(4, 8),
                                recovery_steps=3, envelope_components=2), _images, "fit"),
        "dcd_image_marginal": (dcd, dict(max_iter=1, image_shape=(1, 4, 4),
                                         conv_channels=(4,), time_conditional=False),
                               _images, "fit"),
        "cd": (cd, dict(max_iter=3), _moons, "fit"),
        "pcd": (cd, dict(max_iter=3, persistent=True, buffer_size=128), _moons, "fit"),
        "cd_image": (cd, dict(max_iter=1, image_shape=(1, 4, 4), conv_channels=(4,)),
                     _images, "fit"),
    }


def _digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float64).tobytes()).hexdigest()


def run_case(name: str) -> dict:
    """Fit case ``name`` and return what it produced, as JSON values."""
    cls, params, data, how = _cases()[name]
    X = data()
    est = cls(**{**SMALL, **params})
    if how == "fit":
        est.fit(X)
    elif how == "partial_fit":
        for chunk in np.array_split(X, 2):
            est.partial_fit(chunk)
    else:  # warm_start: a second fit continues the first
        est.fit(X).fit(X)
    weights = np.concatenate([v.detach().double().reshape(-1).numpy()
                              for v in est.energy_net_.state_dict().values()])
    noise_std = 0.1 * float(np.mean(est.scale_))
    noisy = X[:8] + noise_std * np.random.RandomState(3).randn(8, X.shape[1])
    out = {
        "loss_curve": [float(v) for v in est.loss_curve_],
        "t": int(est.t_),
        "weights_sha256": _digest(weights),
        "weights_head": weights[:8].tolist(),
        "energy": est.energy(X[:8]).tolist(),
        "score_samples": est.score_samples(X[:8]).tolist(),
        "log_partition_std": float(est.log_partition_std_),
        "sample": est.sample(4, random_state=0).ravel().tolist(),
        "denoise": est.denoise(noisy, noise_std, random_state=0).ravel().tolist(),
        "denoise_map": est.denoise(noisy, noise_std, method="map").ravel().tolist(),
    }
    if name == "pcd":
        out["buffer_sha256"] = _digest(est._buffer.double().numpy())
    return out


def environment() -> dict:
    """What bit-identical results depend on besides the code."""
    return {"torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": _cpu_model(), "threads": torch.get_num_threads()}


def _cpu_model() -> str:
    """The processor's model name: MKL's kernels (and their rounding) differ by vendor."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def record() -> None:
    """Rewrite ``golden.json`` with today's results."""
    results = {name: run_case(name) for name in _cases()}
    PATH.write_text(json.dumps({"environment": environment(), "cases": results}, indent=1)
                    + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    record()
