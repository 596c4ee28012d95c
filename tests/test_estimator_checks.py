"""scikit-learn's common estimator checks, on small settings."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from tests.conftest import FAST

EXPECTED_FAILURES: dict[str, str] = {}


@parametrize_with_checks(
    [DCDEnergyEstimator(**FAST), CDEnergyEstimator(**FAST),
     DCDEnergyEstimator(**FAST, time_conditional=True, recovery_steps=2)],
    expected_failed_checks=lambda est: EXPECTED_FAILURES,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
