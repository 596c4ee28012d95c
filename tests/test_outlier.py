"""EnergyOutlierDetector: thresholds with analytic oracles, conventions, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2
from sklearn.mixture import GaussianMixture
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdcd import CDEnergyEstimator, DCDEnergyEstimator, EnergyOutlierDetector
from tests.conftest import FAST, gaussian_model


@parametrize_with_checks(
    [EnergyOutlierDetector(DCDEnergyEstimator(**FAST), contamination=0.1),
     EnergyOutlierDetector(CDEnergyEstimator(**FAST))],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("contamination", [0.01, 0.1, 0.25])
def test_a_float_contamination_flags_that_share_of_the_training_rows(contamination):
    X = np.random.RandomState(0).randn(400, 3)
    detector = EnergyOutlierDetector(DCDEnergyEstimator(**FAST),
                                     contamination=contamination).fit(X)
    share = np.mean(detector.predict(X) == -1)
    assert abs(share - contamination) <= 1 / len(X)
    np.testing.assert_array_equal(detector.fit_predict(X), detector.predict(X))
    np.testing.assert_allclose(detector.decision_function(X),
                               detector.score_samples(X) - detector.offset_)


@pytest.mark.parametrize("d", [2, 5])
def test_auto_is_the_level_set_holding_99_percent_of_a_right_models_mass(d):
    # an exact Gaussian model N(m, diag(v)) of its training rows: its log-density is below
    # -chi2_d(0.99)/2 - log((2 pi)^(d/2) prod sqrt(v)) on 1 % of its mass
    mean, var = np.linspace(-1, 1, d), np.linspace(0.5, 2.0, d)
    n = 20000
    X = np.random.RandomState(0).randn(n, d) * np.sqrt(var) + mean
    detector = EnergyOutlierDetector(contamination="auto")
    detector.estimator_ = gaussian_model(DCDEnergyEstimator, mean, var)
    detector.n_features_in_ = d
    detector._set_offset(X)
    level = -0.5 * chi2.ppf(0.99, d) - 0.5 * np.sum(np.log(2 * np.pi * var))
    # the 1 % quantile of n draws: its standard error, in log-density units
    se = 0.5 * np.sqrt(0.01 * 0.99 / n) / chi2.pdf(chi2.ppf(0.99, d), d)
    assert abs(detector.offset_ - level) < 4 * se, (detector.offset_, level, se)
    rows = np.random.RandomState(1).randn(n, d) * np.sqrt(var) + mean
    assert abs(np.mean(detector.predict(rows) == -1) - 0.01) < 4 * np.sqrt(0.01 * 0.99 / n)


def test_any_density_estimator_can_stand_in():
    X = np.random.RandomState(0).randn(2000, 2)
    detector = EnergyOutlierDetector(GaussianMixture(1, random_state=0)).fit(X)
    level = -0.5 * chi2.ppf(0.99, 2) - np.log(2 * np.pi)
    assert abs(detector.offset_ - level) < 0.3
    assert detector.predict([[0, 0]])[0] == 1 and detector.predict([[5, 5]])[0] == -1


def test_the_default_estimator_is_a_dcd_model():
    X = np.random.RandomState(0).randn(20, 2)
    detector = EnergyOutlierDetector().fit(X)
    assert type(detector.estimator_) is DCDEnergyEstimator
    assert detector.get_params()["estimator"] is None  # fit does not change the parameter


def test_bad_input_gets_a_clear_error():
    X = np.random.RandomState(0).randn(50, 2)
    with pytest.raises(InvalidParameterError, match="contamination"):
        EnergyOutlierDetector(contamination=0.7).fit(X)
    with pytest.raises(InvalidParameterError, match="estimator"):
        EnergyOutlierDetector(estimator="dcd").fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        EnergyOutlierDetector(DCDEnergyEstimator(**FAST)).fit(bad)
    detector = EnergyOutlierDetector(DCDEnergyEstimator(**FAST), contamination=0.1).fit(X)
    with pytest.raises(ValueError, match="features"):
        detector.predict(np.zeros((2, 3)))
