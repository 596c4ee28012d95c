"""Slow statistical tests: a DCD fit on eight Gaussians gets the modes and their weights."""

import numpy as np
import pytest
from scipy.stats import chisquare

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.datasets import load_toy

pytestmark = pytest.mark.slow

CENTRES = 2.0 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)


@pytest.fixture(scope="module")
def eight_gaussians_fit():
    density = load_toy("eight_gaussians")
    X = density.sample(4000, random_state=0)
    # ~2,000 steps: a quarter of the default budget, enough for a clear verdict
    est = DCDEnergyEstimator(max_iter=125, random_state=0).fit(X)
    return est, density


def test_dcd_nll_gap_on_eight_gaussians(eight_gaussians_fit):
    est, density = eight_gaussians_fit
    X_test = density.sample(3000, random_state=1)
    gap = -est.score(X_test) - density.nll(X_test)
    assert -0.05 < gap < 0.25  # a likelihood above the truth would mean a wrong log Z


def test_smc_samples_have_the_right_mode_weights(eight_gaussians_fit):
    est, _ = eight_gaussians_fit
    S = est.sample(2000, random_state=0)
    dist = np.linalg.norm(S[:, None] - CENTRES[None], axis=2)  # (n, 8)
    label, nearest = dist.argmin(1), dist.min(1)
    assert np.mean(nearest < 0.5) > 0.95  # samples sit on the modes
    counts = np.bincount(label, minlength=8)
    # the model's own mode masses (by quadrature) are the null hypothesis of the sampler
    g = np.linspace(-3, 3, 241)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    mass = np.exp(est.score_samples(grid))
    grid_label = np.linalg.norm(grid[:, None] - CENTRES[None], axis=2).argmin(1)
    expected = np.bincount(grid_label, weights=mass, minlength=8)
    expected = expected / expected.sum() * counts.sum()
    assert chisquare(counts, expected).pvalue > 1e-3
    # and the fitted weights are close to the truth (1/8 each)
    assert chisquare(counts).pvalue > 1e-3


def test_cd_learns_something_on_eight_gaussians():
    density = load_toy("eight_gaussians")
    X = density.sample(2000, random_state=0)
    est = CDEnergyEstimator(max_iter=40, random_state=0).fit(X)
    untrained = CDEnergyEstimator(max_iter=1, learning_rate=1e-6, random_state=0).fit(X)
    X_test = density.sample(1000, random_state=1)
    assert est.score(X_test) > untrained.score(X_test) + 0.5
