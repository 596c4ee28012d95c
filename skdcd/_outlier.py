"""EnergyOutlierDetector: novelty and outlier detection by a fitted density."""

from __future__ import annotations

from numbers import Real

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

# contamination="auto": the share of the training rows below the threshold
AUTO_CONTAMINATION = 0.01


class EnergyOutlierDetector(OutlierMixin, BaseEstimator):
    """Novelty and outlier detection by the log-density of an energy-based model.

    A thin wrapper in scikit-learn's outlier-detector conventions (as
    :class:`~sklearn.ensemble.IsolationForest` and
    ``LocalOutlierFactor(novelty=True)``) around a density estimator, by default a
    :class:`~skdcd.DCDEnergyEstimator`: a row is an outlier where its log-density is below
    a threshold set at ``fit``. Higher scores are more normal.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``score_samples``, default=None
        The density estimator, cloned at ``fit``. ``None``:
        ``DCDEnergyEstimator()``; ``CDEnergyEstimator``, or any scikit-learn density
        estimator (``GaussianMixture``, ``KernelDensity``) works too.
    contamination : "auto" or float in (0, 0.5], default="auto"
        The share of outliers: the threshold is that quantile of the training rows'
        log-densities, so that this share of the training rows is flagged. ``"auto"``: 1 %.
        Where the model is right, the threshold is the density level below which it puts
        that share of its mass, and fresh rows from the training distribution are flagged
        at that rate.

    Attributes
    ----------
    estimator_ : estimator
        The fitted density estimator.
    offset_ : float
        The threshold on the log-density: ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` had string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from skdcd import DCDEnergyEstimator, EnergyOutlierDetector
    >>> X = np.random.RandomState(0).randn(300, 2)
    >>> detector = EnergyOutlierDetector(
    ...     DCDEnergyEstimator(hidden_layer_sizes=(32,), max_iter=20, random_state=0),
    ...     contamination=0.05).fit(X)
    >>> detector.predict([[0.0, 0.0], [6.0, 6.0]])
    array([ 1, -1])
    >>> float(np.mean(detector.predict(X) == -1))
    0.05
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "score_samples"]), None],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
    }

    def __init__(self, estimator=None, contamination="auto"):
        self.estimator = estimator
        self.contamination = contamination

    @_fit_context(prefer_skip_nested_validation=False)  # the inner estimator's params too
    def fit(self, X: ArrayLike, y: None = None) -> EnergyOutlierDetector:
        """Fit the density estimator to ``X`` and set the threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (mostly normal rows).
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : object
            The fitted detector.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if self.estimator is None:
            from skdcd import DCDEnergyEstimator

            estimator = DCDEnergyEstimator()
        else:
            estimator = clone(self.estimator)
        self.estimator_ = estimator.fit(X)
        self._set_offset(X)
        return self

    def _set_offset(self, X: np.ndarray) -> None:
        """The threshold ``offset_`` for the fitted ``estimator_`` and training rows ``X``."""
        share = AUTO_CONTAMINATION if self.contamination == "auto" else self.contamination
        self.offset_ = float(np.percentile(self.estimator_.score_samples(X), 100.0 * share))

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """The log-density of each row under the fitted model (higher is more normal).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            ``estimator_.score_samples(X)``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.estimator_.score_samples(X)

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers, positive for inliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows to score.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            The log-density above the threshold.
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X: ArrayLike) -> np.ndarray:
        """+1 for inliers and -1 for outliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows to classify.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            -1 where ``decision_function(X) < 0``, else +1.
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

