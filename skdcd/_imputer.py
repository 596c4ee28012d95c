"""EnergyImputer: missing values filled from a fitted density's conditional."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, validate_data

MAX_DONORS = 10_000  # training rows kept as impute's donors


class EnergyImputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Fill missing values (NaN) from an energy-based model's conditional distribution.

    A scikit-learn imputer (as :class:`~sklearn.impute.IterativeImputer`) around a density
    estimator, by default a :class:`~skdcd.DCDEnergyEstimator`: ``transform`` replaces each
    row's missing entries by their conditional mean given the row's observed entries under
    the fitted density (or by one draw, ``sample_posterior=True``), through the estimator's
    :meth:`~skdcd.DCDEnergyEstimator.impute`, with training rows as donors of proposals.
    For images this is inpainting.

    ``fit`` learns the density. Where the training data have missing entries too, they are
    first filled with the column means, the density is fitted, and the entries are redrawn
    from its conditional; ``n_rounds`` such fits in all (each sees the previous round's
    draws), the last one kept. Rows with every entry missing carry nothing and are left
    out of ``fit``; ``transform`` refuses them.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``impute``, default=None
        The density estimator, cloned at ``fit``. ``None``: ``DCDEnergyEstimator()``;
        :class:`~skdcd.CDEnergyEstimator` works too.
    n_draws : int, default=8
        Chains per row (``impute``'s ``n_draws``).
    sample_posterior : bool, default=False
        ``False``: fill with the conditional mean (least squared error); ``True``: with one
        draw of the conditional (multiple imputation: transform again after
        ``set_params(random_state=...)``).
    n_rounds : int, default=2
        Fits of the density when the training data have missing entries (see above); with
        complete training data one fit, whatever its value.
    random_state : int, RandomState instance or None, default=None
        Seed for the imputation draws (the estimator keeps its own ``random_state``).

    Attributes
    ----------
    estimator_ : estimator
        The fitted density estimator.
    donors_ : ndarray of shape (n_donors, n_features)
        Training rows (at most 10,000, evenly spaced; with missing entries, as filled for
        the last fit) around which proposals are drawn (``impute``'s ``donors``).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` had string column names.

    See Also
    --------
    sklearn.impute.IterativeImputer : Imputation by regression of each feature on the others.
    sklearn.impute.KNNImputer : Imputation by the nearest rows' values.

    Examples
    --------
    >>> import numpy as np
    >>> from skdcd import DCDEnergyEstimator, EnergyImputer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.multivariate_normal([0, 0], [[1, 0.9], [0.9, 1]], size=500)
    >>> imputer = EnergyImputer(DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=50,
    ...                                            random_state=0),
    ...                         n_draws=32, random_state=0).fit(X)
    >>> filled = imputer.transform([[1.0, np.nan], [np.nan, -1.0]])
    >>> bool(abs(filled[0, 1] - 0.9) < 0.2 and abs(filled[1, 0] + 0.9) < 0.2)  # E[x_m | x_o]
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "impute"]), None],
        "n_draws": [Interval(Integral, 1, None, closed="left")],
        "sample_posterior": ["boolean"],
        "n_rounds": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator=None, *, n_draws=8, sample_posterior=False, n_rounds=2,
                 random_state=None):
        self.estimator = estimator
        self.n_draws = n_draws
        self.sample_posterior = sample_posterior
        self.n_rounds = n_rounds
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    @_fit_context(prefer_skip_nested_validation=False)  # the inner estimator's params too
    def fit(self, X: ArrayLike, y: None = None) -> EnergyImputer:
        """Fit the density estimator to ``X``, whose missing entries may be NaN.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data, NaN where a value is missing.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : object
            The fitted imputer.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        missing = np.isnan(X)
        never = np.flatnonzero(missing.all(axis=0))
        if len(never):
            raise ValueError(f"Feature(s) {never.tolist()} have no observed value in X: their "
                             f"distribution cannot be learned.")
        keep = ~missing.all(axis=1)
        X, missing = X[keep], missing[keep]
        if self.estimator is None:
            from skdcd import DCDEnergyEstimator

            estimator = DCDEnergyEstimator()
        else:
            estimator = clone(self.estimator)
        rng = check_random_state(self.random_state)
        filled = np.where(missing, np.nanmean(X, axis=0), X)
        rounds = self.n_rounds if missing.any() else 1
        for k in range(rounds):
            estimator.fit(filled)
            if k + 1 < rounds:  # draws, not means: the next fit sees the conditional spread
                filled = estimator.impute(X, sample_posterior=True, donors=filled,
                                          random_state=rng.randint(2**31))
        self.estimator_ = estimator
        # proposals where the data are (impute's donors): an even subsample of the rows
        self.donors_ = filled[:: max(1, -(-len(filled) // MAX_DONORS))].copy()
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        """Fill the NaN entries of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows with NaN where a value is missing, each with at least one observed value.

        Returns
        -------
        X_filled : ndarray of shape (n_samples, n_features), float64
            ``X`` with its missing entries filled; observed entries unchanged.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32],
                          ensure_all_finite="allow-nan", reset=False)
        return self.estimator_.impute(X, n_draws=self.n_draws,
                                      sample_posterior=self.sample_posterior,
                                      donors=self.donors_, random_state=self.random_state)
