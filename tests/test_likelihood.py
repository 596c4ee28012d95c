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

from benchmarks.likelihood import ORACLES, Zero, constant_feature_data, oracle
from skdcd import DCDEnergyEstimator


def _check(est, exact):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no collapsed weights either
        diag = est.log_partition_diagnostics()
    for key in ("log_z", "check_log_z"):
        se = diag["std_err" if key == "log_z" else "check_std_err"]
        error = diag[key] - exact
        # 1e-5: the float32 rounding of an envelope-only model, whose AIS is exact
        assert abs(error) <= 3 * se + 1e-5 and abs(error) <= 0.5, (key, error, se)


_CHECK_COLLAPSE = pytest.mark.xfail(
    reason="known weakness (issue 25): in 64-D the second estimator's weights collapse to the "
    "edge of the warning (ESS 9.83 of 1,024, warning below 10; its estimate -11.78 ± 0.32 "
    "against the exact -12.05); the same on the code of before this change, with today's "
    "package versions", raises=RuntimeWarning, strict=False)


@pytest.mark.parametrize("kind", ORACLES)
@pytest.mark.parametrize("d", [8, 32, 64])
def test_oracle(kind, d, request):
    if (kind, d) == ("gaussian", 64):
        request.applymarker(_CHECK_COLLAPSE)
    # gaussian: very unequal scales and three constant features; mixture: three modes of
    # unequal weight and shape; envelope: the default envelope alone
    _check(*oracle(kind, d, seed=d))


@pytest.mark.slow
@pytest.mark.parametrize("d", [8, 32, 64])
def test_envelope_only_time_conditional_model(d):
    # the narrowest level's density is the fitted mixture diffused by σ_min: log Z is
    # -E(x) - log p(x) at any x, with p from scipy
    rng = np.random.RandomState(d)
    which = rng.randint(3, size=3000)
    X = rng.randn(3, d)[which] * 2 + rng.randn(3000, d) * np.exp(rng.uniform(-1, 0.5, d))
    X[:, :2] = 0.5  # two constant features
    est = DCDEnergyEstimator(max_iter=1, time_conditional=True, energy_net=Zero,
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
    X = constant_feature_data(8, seed=5)
    est = DCDEnergyEstimator(max_iter=30, hidden_layer_sizes=(32, 32), random_state=0).fit(X)
    diag = est.log_partition_diagnostics()
    assert diag["difference_std_errs"] < 3 and abs(diag["difference"]) < 0.5
