import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import nn

# CI explores a fixed set of examples, so that a run is reproducible from its log
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# small settings that keep a fit + score well under a second
FAST = dict(
    max_iter=2, hidden_layer_sizes=(16, 16), quadrature_n_grid=64, ais_n_particles=64,
    ais_n_steps=16, sample_steps=16, random_state=0,
)


class QuadraticEnergy(nn.Module):
    """E(x) = ½ (x - μ)ᵀ diag(exp(log_prec)) (x - μ): an EBM with known everything."""

    def __init__(self, n_features: int, mean=None, log_prec=None):
        super().__init__()
        mean = torch.zeros(n_features) if mean is None else torch.as_tensor(mean)
        log_prec = torch.zeros(n_features) if log_prec is None else torch.as_tensor(log_prec)
        self.mean = nn.Parameter(mean.clone().float())
        self.log_prec = nn.Parameter(log_prec.clone().float())

    def forward(self, x):
        return 0.5 * ((x - self.mean).pow(2) * self.log_prec.exp()).sum(dim=1)


@pytest.fixture
def blobs():
    rng = np.random.RandomState(0)
    return rng.randn(200, 2) * [1.0, 0.5] + [1.0, -2.0]


@pytest.fixture(params=["dcd", "cd"])
def estimator_cls(request):
    from skdcd import CDEnergyEstimator, DCDEnergyEstimator

    return DCDEnergyEstimator if request.param == "dcd" else CDEnergyEstimator


def gaussian_model(est_cls, mean, var, **params):
    """A fitted estimator whose energy is replaced by an exact Gaussian N(mean, diag(var))."""
    mean, var = np.asarray(mean, float), np.asarray(var, float)
    d = len(mean)
    X = np.random.RandomState(0).randn(50, d) * np.sqrt(var) + mean
    est = est_cls(**{**FAST, "standardize": False, "envelope_std": None, **params}).fit(X)
    est.energy_net_ = type(est.energy_net_)(
        QuadraticEnergy(d, mean=mean, log_prec=-np.log(var)), None)
    est._cache.clear()
    return est


def pytest_terminal_summary(terminalreporter):
    """Report how many fuzzing examples each method ran, and how each one ended."""
    from tests.test_fuzz import FUZZ_COUNTS

    if FUZZ_COUNTS:
        terminalreporter.section("fuzzing (tests/test_fuzz.py)")
        for name, counts in FUZZ_COUNTS.items():
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                                 if k != "examples")
            terminalreporter.write_line(f"{name}: {counts['examples']} examples ({outcomes})")
