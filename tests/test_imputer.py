"""EnergyImputer and the estimators' impute: a Gaussian oracle, conventions, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from skdcd import CDEnergyEstimator, DCDEnergyEstimator, EnergyImputer
from tests.conftest import FAST


@parametrize_with_checks(
    [EnergyImputer(DCDEnergyEstimator(**FAST), n_draws=2, random_state=0),
     EnergyImputer(CDEnergyEstimator(**FAST), n_draws=2, random_state=0)],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


class FullGaussian(nn.Module):
    """E(x) = ½ (x - μ)ᵀ Σ⁻¹ (x - μ)."""

    def __init__(self, mean, cov):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("prec", torch.as_tensor(np.linalg.inv(cov), dtype=torch.float32))

    def forward(self, x):
        z = x - self.mean
        return 0.5 * ((z @ self.prec) * z).sum(dim=1)


def _gaussian_estimator(est_cls, mean, cov):
    # fitted to other data (so its proposal mixture is wrong), then given the exact energy
    # N(mean, cov) in input units, i.e. in the standardised units it works in
    d = len(mean)
    X = np.random.RandomState(0).randn(400, d) * np.linspace(1, 2, d) + 1.0
    est = est_cls(**{**FAST, "envelope_std": None, "sample_steps": 256}).fit(X)
    z_mean = (mean - est.mean_) / est.scale_
    z_cov = cov / np.outer(est.scale_, est.scale_)
    est.energy_net_ = type(est.energy_net_)(FullGaussian(z_mean, z_cov), None)
    est._cache.clear()
    return est


@pytest.mark.parametrize("est_cls", [DCDEnergyEstimator, CDEnergyEstimator])
def test_impute_gives_the_conditional_mean_of_a_gaussian_model(est_cls):
    rng = np.random.RandomState(0)
    d = 5
    a = rng.randn(d, d)
    mean, cov = rng.randn(d), a @ a.T / d + 0.3 * np.eye(d)
    est = _gaussian_estimator(est_cls, mean, cov)
    X = rng.multivariate_normal(mean, cov, size=60)
    missing = rng.rand(60, d) < 0.4
    missing[missing.all(axis=1), 0] = False
    filled = est.impute(np.where(missing, np.nan, X), n_draws=16, random_state=0)
    np.testing.assert_array_equal(filled[~missing], X[~missing])
    errors = []
    for x, m, f in zip(X, missing, filled, strict=True):
        if not m.any():
            continue
        o = ~m
        exact = mean[m] + cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)], x[o] - mean[o])
        sd = np.sqrt(np.diag(cov[np.ix_(m, m)] - cov[np.ix_(m, o)] @ np.linalg.solve(
            cov[np.ix_(o, o)], cov[np.ix_(o, m)])))
        errors.extend((f[m] - exact) / sd)
    errors = np.abs(errors)
    # 16 chains of 128 kept moves each: the Monte Carlo error is a small share of the
    # spread (it halves with 4 times the moves; no bias)
    assert errors.mean() < 0.1 and errors.max() < 0.5, (errors.mean(), errors.max())


def test_sample_posterior_draws_have_the_conditional_spread_of_a_gaussian_model():
    mean = np.array([1.0, -2.0, 0.5])
    cov = np.array([[2.0, 1.2, 0.3], [1.2, 1.5, -0.4], [0.3, -0.4, 1.0]])
    est = _gaussian_estimator(DCDEnergyEstimator, mean, cov)
    row = np.array([[2.0, np.nan, np.nan]])
    draws = est.impute(np.repeat(row, 2000, axis=0), sample_posterior=True,
                       random_state=0)[:, 1:]
    m, o = [1, 2], [0]
    exact_mean = mean[m] + cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)],
                                                               row[0, o] - mean[o])
    exact_cov = cov[np.ix_(m, m)] - cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)],
                                                                       cov[np.ix_(o, m)])
    n = len(draws)
    assert np.all(np.abs(draws.mean(axis=0) - exact_mean) < 4 * np.sqrt(np.diag(exact_cov) / n))
    np.testing.assert_allclose(np.cov(draws.T), exact_cov, atol=5 * np.sqrt(2 / n) * 1.5)


def test_sample_posterior_draws_differ_and_keep_the_observed_values():
    X = np.random.RandomState(0).randn(300, 3)
    imputer = EnergyImputer(DCDEnergyEstimator(**FAST), sample_posterior=True,
                            random_state=0).fit(X)
    holes = X[:50].copy()
    holes[:, 1] = np.nan
    a = imputer.transform(holes)
    b = EnergyImputer(DCDEnergyEstimator(**FAST), sample_posterior=True,
                      random_state=1).fit(X).transform(holes)
    assert not np.allclose(a[:, 1], b[:, 1])
    np.testing.assert_array_equal(a[:, [0, 2]], X[:50, [0, 2]])
    np.testing.assert_array_equal(a, imputer.transform(holes))  # an int seed repeats


def test_missing_values_in_the_training_data_are_filled_by_rounds():
    rng = np.random.RandomState(0)
    X = rng.multivariate_normal([0, 0, 0], [[1, .9, .8], [.9, 1, .9], [.8, .9, 1]], 600)
    holes = X.copy()
    holes[rng.rand(*X.shape) < 0.2] = np.nan
    holes[np.isnan(holes).all(axis=1), 0] = X[np.isnan(holes).all(axis=1), 0]
    holes[0] = np.nan  # a row with nothing observed: left out of fit
    imputer = EnergyImputer(DCDEnergyEstimator(**{**FAST, "max_iter": 30}), random_state=0)
    filled = imputer.fit_transform(holes[1:])
    assert np.isfinite(filled).all()
    # the correlations survive: far better than the column means
    gaps = np.isnan(holes[1:])
    rmse = np.sqrt(np.mean((filled[gaps] - X[1:][gaps]) ** 2))
    assert rmse < 0.75 * np.sqrt(np.mean(X[1:][gaps] ** 2)), rmse
    imputer.fit(holes)  # the empty row is dropped, not an error


def test_pipeline_and_set_output():
    pd = pytest.importorskip("pandas")
    X = np.random.RandomState(0).randn(200, 3)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    pipe = make_pipeline(EnergyImputer(DCDEnergyEstimator(**FAST), random_state=0),
                         StandardScaler()).set_output(transform="pandas")
    holes = frame.copy()
    holes.iloc[:10, 1] = np.nan
    out = pipe.fit(frame).transform(holes)
    assert list(out.columns) == ["a", "b", "c"] and out.notna().all().all()


def test_bad_input_gets_a_clear_error():
    X = np.random.RandomState(0).randn(100, 3)
    X_never = X.copy()
    X_never[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"Feature\(s\) \[2\] have no observed value"):
        EnergyImputer(DCDEnergyEstimator(**FAST)).fit(X_never)
    imputer = EnergyImputer(DCDEnergyEstimator(**FAST)).fit(X)
    with pytest.raises(ValueError, match="every value missing"):
        imputer.transform([[np.nan, np.nan, np.nan]])
    with pytest.raises(ValueError, match="contains infinity"):
        imputer.transform([[np.inf, 0.0, np.nan]])
    with pytest.raises(ValueError, match="NaN"):  # the density estimators take no NaN
        DCDEnergyEstimator(**FAST).fit(np.where(X > 2, np.nan, X))
    with pytest.raises(ValueError, match="n_draws"):
        imputer.estimator_.impute(X, n_draws=0)


def test_a_time_conditional_model_gives_its_own_exact_conditional_mean():
    # an envelope-only time-conditional model: at σ_min it is the fitted mixture diffused by
    # σ_min, whose conditional mean is exact; the ladder, donors and MALA must reproduce it
    from benchmarks.likelihood import Zero
    from skdcd.conditional import GaussianMixtureConditional

    rng = np.random.RandomState(1)
    d = 6
    centres = rng.randn(3, d) * 2
    X = centres[rng.randint(3, size=1500)] + rng.randn(1500, d) @ (rng.randn(d, d) * 0.4)
    est = DCDEnergyEstimator(max_iter=1, time_conditional=True, energy_net=Zero,
                             envelope_components=3, learning_rate=1e-6, sample_steps=128,
                             random_state=0).fit(X)
    net = est.energy_net_.double()
    s2 = float(est.noise_levels_[0]) ** 2
    u, lam = net.directions, net.variances
    covs = torch.einsum("kdj,kj,kej->kde", u, lam, u) + (
        net.residual_variance[:, None, None] * (torch.eye(d) - u @ u.mT)) + s2 * torch.eye(d)
    rows = X[1000:1060]
    missing = rng.rand(60, d) < 0.5
    missing[missing.all(axis=1), 0] = False
    z = torch.as_tensor((rows - est.mean_) / est.scale_)
    exact = GaussianMixtureConditional.from_mixture(
        net.center, covs, net.log_weights.exp(), z, torch.as_tensor(missing)).mean().numpy()
    exact = exact * est.scale_ + est.mean_
    filled = est.impute(np.where(missing, np.nan, rows), n_draws=64, donors=X[:1000],
                        random_state=0)
    # Monte Carlo error only (it falls as 1 / sqrt(n_draws)): some rows sit between modes
    err = np.abs(filled - exact)[missing] / X.std(axis=0)[np.nonzero(missing)[1]]
    assert err.mean() < 0.07 and err.max() < 0.35, (err.mean(), err.max())
