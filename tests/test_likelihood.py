"""Oracles for ``log Z`` in 8, 32 and 64 dimensions: every estimate within 3 of its own
standard errors and 0.5 nats of a closed form, by both estimators of
``log_partition_diagnostics``.

The models are fitted estimators whose energy is then replaced by one with a known
normaliser: Gaussians with very unequal variances and constant features (where the data's
spread is zero and the model's is not), mixtures of Gaussians with unequal weights, and
envelope-only models (tabular, and time-conditional with a mixture envelope).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch import nn

from skdcd import DCDEnergyEstimator
from skdcd.networks import EnvelopedEnergy
from tests.conftest import QuadraticEnergy

FAST = dict(max_iter=1, hidden_layer_sizes=(8,), batch_size=256, random_state=0)


def _check(est, exact):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no collapsed weights either
        diag = est.log_partition_diagnostics()
    for key in ("log_z", "check_log_z"):
        se = diag["std_err" if key == "log_z" else "check_std_err"]
        error = diag[key] - exact
        # 1e-5: the float32 rounding of an envelope-only model, whose AIS is exact
        assert abs(error) <= 3 * se + 1e-5 and abs(error) <= 0.5, (key, error, se)


def _data(d, n_const, seed):
    rng = np.random.RandomState(seed)
    scales = np.exp(rng.uniform(np.log(0.05), np.log(5.0), d))
    X = rng.randn(600, d) * scales + rng.randn(d)
    X[:, :n_const] = rng.randn(n_const)  # constant columns
    return X


@pytest.mark.parametrize("d", [8, 32, 64])
def test_gaussian_with_unequal_scales_and_constant_features(d):
    X = _data(d, 3, seed=d)
    est = DCDEnergyEstimator(**FAST).fit(X)
    Z = (X - est.mean_) / est.scale_
    var = Z.var(axis=0)
    var[:3] = 0.05**2  # the model is narrow, but not as narrow as constant data
    est.energy_net_ = EnvelopedEnergy(QuadraticEnergy(d, Z.mean(axis=0), -np.log(var)), None)
    est._cache.clear()
    exact = 0.5 * d * math.log(2 * math.pi) + 0.5 * np.log(var).sum() + np.log(est.scale_).sum()
    _check(est, exact)


class _Mixture(nn.Module):
    """-log Σ_c π_c N(x; μ_c, diag(s_c²)) + 3: log Z = -3."""

    def __init__(self, means, stds, weights):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("stds", torch.as_tensor(stds, dtype=torch.float32))
        self.register_buffer("log_w", torch.log(torch.as_tensor(weights, dtype=torch.float32)))

    def forward(self, x):
        z = (x[:, None, :] - self.means) / self.stds  # (n, K, d)
        log_n = (-0.5 * z.pow(2).sum(-1) - torch.log(self.stds).sum(-1)
                 - 0.5 * x.shape[1] * math.log(2 * math.pi))
        return -torch.logsumexp(self.log_w + log_n, dim=1) + 3.0


@pytest.mark.parametrize("d", [8, 32, 64])
def test_mixture_of_gaussians_with_unequal_weights(d):
    rng = np.random.RandomState(d)
    means = rng.randn(3, d) * 1.5
    stds = np.exp(rng.uniform(np.log(0.2), np.log(1.0), (3, d)))
    weights = np.array([0.6, 0.3, 0.1])
    which = rng.choice(3, size=1500, p=weights)
    X = means[which] + stds[which] * rng.randn(1500, d)
    est = DCDEnergyEstimator(**FAST, standardize=False).fit(X)
    est.energy_net_ = EnvelopedEnergy(_Mixture(means, stds, weights), None)
    est._cache.clear()
    _check(est, -3.0)


class _Zero(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma=None):
        return 0.0 * self.dummy + x[:, 0] * 0.0


@pytest.mark.parametrize("d", [8, 32, 64])
def test_envelope_only_tabular_model(d):
    X = _data(d, 3, seed=d + 1)
    est = DCDEnergyEstimator(**FAST, energy_net=_Zero).fit(X)  # E(z) = ‖z‖² / (2 · 3²)
    exact = 0.5 * d * math.log(2 * math.pi * 9.0) + np.log(est.scale_).sum()
    _check(est, exact)


@pytest.mark.slow
@pytest.mark.parametrize("d", [8, 32, 64])
def test_envelope_only_time_conditional_model(d):
    # the narrowest level's density is the fitted mixture diffused by σ_min: log Z is
    # -E(x) - log p(x) at any x, with p from scipy
    rng = np.random.RandomState(d)
    which = rng.randint(3, size=3000)
    X = rng.randn(3, d)[which] * 2 + rng.randn(3000, d) * np.exp(rng.uniform(-1, 0.5, d))
    X[:, :2] = 0.5  # two constant features
    est = DCDEnergyEstimator(max_iter=1, time_conditional=True, energy_net=_Zero,
                             envelope_components=3, learning_rate=1e-6, ais_n_steps=256,
                             random_state=0).fit(X)
    net = est.energy_net_.double()
    s2 = float(est.noise_levels_[0]) ** 2
    covs = np.einsum("kdj,kj,kej->kde", net.directions.numpy(), net.variances.numpy(),
                     net.directions.numpy()) + s2 * np.eye(d)
    z0 = (X[:1] - est.mean_) / est.scale_
    p = sum(w * multivariate_normal(m, c).pdf(z0[0]) for w, m, c in
            zip(net.log_weights.exp().numpy(), net.center.numpy(), covs, strict=True))
    exact = -float(net(torch.as_tensor(z0), torch.full((1, 1), s2**0.5,
                                                        dtype=torch.float64))[0]) - math.log(p)
    exact += float(np.log(est.scale_).sum())
    _check(est, exact)


@pytest.mark.slow
def test_the_two_estimators_agree_on_a_fitted_model_with_constant_features():
    # a real fit (not an oracle): 8-D data with three constant features, where the data's
    # spread alone made the AIS base far too narrow
    X = _data(8, 3, seed=5)
    est = DCDEnergyEstimator(max_iter=30, hidden_layer_sizes=(32, 32), random_state=0).fit(X)
    diag = est.log_partition_diagnostics()
    assert diag["difference_std_errs"] < 3 and abs(diag["difference"]) < 0.5
