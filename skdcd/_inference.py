"""The estimators' public inference methods: validate, convert units, delegate.

The maths runs in standardised units in the fitted model (:mod:`skdcd._models`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import check_is_fitted

from skdcd._models import DENOISE_METHODS
from skdcd._utils import generator_from_random_state, runtime_device, uses_threads


class InferenceMixin:
    """The public inference methods of the estimators: validate, convert units, delegate.

    The estimator provides ``_model(device)`` (its fitted :class:`Model`), ``_validate_X``,
    ``_standardize`` and ``_standardize_finite``, and the fitted ``mean_``, ``scale_``.
    """

    @property
    @uses_threads
    def log_partition_(self) -> float:
        """``log Z`` of ``exp(-energy(x))`` in input units (computed once, then cached)."""
        check_is_fitted(self)
        if "log_z" not in self._cache:
            method = self.log_partition
            if method == "auto":
                method = "quadrature" if self.n_features_in_ <= 2 else "ais"
            est = self._model(runtime_device(self.device)).log_partition(
                method, n_grid=self.quadrature_n_grid, n_particles=self.ais_n_particles,
                n_steps=self.ais_n_steps)
            # from standardised to input units: dz = dx / prod(scale)
            self._cache["log_z"] = est.log_z + float(np.sum(np.log(self.scale_)))
            self._cache["log_z_std"] = est.std_err
            self._cache["log_z_ess"] = est.ess
        return self._cache["log_z"]

    @property
    def log_partition_std_(self) -> float:
        """Standard error of :attr:`log_partition_` (0 for quadrature, whose error is tiny)."""
        self.log_partition_  # noqa: B018 - computes the cache
        return self._cache["log_z_std"]

    @uses_threads
    def log_partition_diagnostics(self) -> dict:
        """``log Z`` by two independent estimators, with their errors and effective sizes.

        The first is :attr:`log_partition_` (quadrature or annealed importance sampling);
        the second, ``check_*``, AIS from a Gaussian mixture fitted to ``ais_n_particles``
        samples of the model, with ``ais_n_steps`` temperatures. Where they differ by more
        than a few ``difference_std_errs``, at least one is wrong: raise ``ais_n_steps``
        before trusting ``score``.

        Returns
        -------
        diagnostics : dict
            ``method``, ``log_z``, ``std_err``, ``ess``; ``check_method``, ``check_log_z``,
            ``check_std_err``, ``check_ess``, ``check_n_samples``; ``difference``
            (check minus first) and ``difference_std_errs`` (in combined standard errors).
            Log Z in input units.

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import DCDEnergyEstimator
        >>> X = np.random.default_rng(0).standard_normal((300, 3))
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, ais_n_particles=256,
        ...                          ais_n_steps=64, sample_steps=32, random_state=0).fit(X)
        >>> diag = est.log_partition_diagnostics()
        >>> diag["method"], diag["check_method"]
        ('ais', 'ais-mixture')
        >>> bool(abs(diag["difference"]) < 0.5)
        True
        """
        check_is_fitted(self)
        log_z, std_err = self.log_partition_, self.log_partition_std_
        method = self.log_partition
        if method == "auto":
            method = "quadrature" if self.n_features_in_ <= 2 else "ais"
        check = self._model(runtime_device(self.device)).log_partition_check(
            self.ais_n_particles, self.ais_n_steps)
        check_log_z = check.log_z + float(np.sum(np.log(self.scale_)))
        difference = check_log_z - log_z
        combined = math.hypot(std_err, check.std_err)
        return {
            "method": method, "log_z": log_z, "std_err": std_err,
            "ess": self._cache.get("log_z_ess", math.nan),
            "check_method": "ais-mixture", "check_log_z": check_log_z,
            "check_std_err": check.std_err, "check_ess": check.ess,
            "check_n_samples": check.n_samples, "difference": difference,
            "difference_std_errs": abs(difference) / combined if combined > 0 else math.inf,
        }

    @uses_threads
    def energy(self, X: ArrayLike) -> np.ndarray:
        """Unnormalised energy ``E(x)`` of each row, so that ``q(x) ∝ exp(-E(x))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points in input units.

        Returns
        -------
        energy : ndarray of shape (n_samples,), float64

        Examples
        --------
        >>> from skdcd import DCDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
        >>> E = est.fit(X).energy(X[:4])
        >>> E.shape, E.dtype
        ((4,), dtype('float64'))
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return self._model(runtime_device(self.device)).energies(self._standardize(X))

    @uses_threads
    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """Normalised log-density ``log q(x) = -E(x) - log Z`` of each row, in input units.

        ``log Z`` comes from quadrature (``n_features <= 2``) or annealed importance
        sampling, so scores of different models are comparable.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points in input units.

        Returns
        -------
        log_density : ndarray of shape (n_samples,), float64

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import CDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = CDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, quadrature_n_grid=64,
        ...                         random_state=0).fit(X)
        >>> log_q = est.score_samples(X[:4])
        >>> log_q.shape
        (4,)
        >>> bool(np.allclose(log_q, -est.energy(X[:4]) - est.log_partition_))
        True
        """
        return -self.energy(X) - self.log_partition_

    def score(self, X: ArrayLike, y: None = None) -> float:
        """Mean log-likelihood of ``X`` under the model (higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points in input units.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        score : float

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import DCDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, quadrature_n_grid=64,
        ...                          random_state=0).fit(X)
        >>> score = est.score(X)
        >>> isinstance(score, float), bool(np.isclose(score, est.score_samples(X).mean()))
        (True, True)
        """
        return float(np.mean(self.score_samples(X)))

    @uses_threads
    def sample(self, n_samples: int = 1,
               random_state: int | np.random.RandomState | None = None) -> np.ndarray:
        """Draw samples from the fitted model.

        Sequential Monte Carlo: particles from a Gaussian mixture fitted to the training
        data, floored at the model's own width (as for ``log Z``), are annealed to the model
        along ``base^{1-β} exp(-βE)`` with MALA moves and resampled whenever their weights
        degenerate, so separated modes get their right mass. A time-conditional model is
        sampled so at its widest level, then by recovery sampling down its ladder.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seed for the sampler.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features), float64

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import CDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = CDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, sample_steps=16,
        ...                         random_state=0).fit(X)
        >>> samples = est.sample(5, random_state=0)
        >>> samples.shape
        (5, 2)
        >>> bool(np.array_equal(samples, est.sample(5, random_state=0)))  # seeded: reproducible
        True
        """
        check_is_fitted(self)
        if (not isinstance(n_samples, Integral) or isinstance(n_samples, bool)
                or n_samples < 1):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        device = runtime_device(self.device)
        generator = generator_from_random_state(random_state, device)
        return self._model(device).sample(n_samples, generator) * self.scale_ + self.mean_

    @uses_threads
    def impute(self, X: ArrayLike, *, n_draws: int = 8, sample_posterior: bool = False,
               donors: ArrayLike | None = None,
               random_state: int | np.random.RandomState | None = None) -> np.ndarray:
        """Fill the NaN entries of ``X`` from the model's conditional given the other entries.

        For each row, the missing coordinates are drawn from ``q(x_m | x_o) ∝ exp(-E(x))``
        with the observed coordinates ``x_o`` held fixed: proposals from the conditional of a
        Gaussian mixture fitted to the training data (and from the ``donors`` nearest on the
        observed coordinates), importance-resampled into ``n_draws`` chains, then
        ``sample_steps`` MALA moves each (half of them burn-in). Observed entries are
        returned unchanged. :class:`~skdcd.EnergyImputer` wraps this as a
        scikit-learn transformer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows with NaN where a value is missing; every row needs at least one observed
            value.
        n_draws : int, default=8
            Chains per row.
        sample_posterior : bool, default=False
            ``False``: the conditional mean (the chains' averages after burn-in, the
            estimate with the least squared error); ``True``: one draw of the conditional
            (for multiple imputation: call again with another ``random_state``).
        donors : array-like of shape (n_donors, n_features) or None, default=None
            Complete rows, e.g. (a sample of) the training data: half of the proposals are
            drawn around the 32 donors nearest to each row on its observed coordinates.
            Where the model's modes are narrow, the mixture's draws can miss them all and
            the chains stay where they start; donors put proposals where the data are.
        random_state : int, RandomState instance or None, default=None
            Seed for the proposals and chains.

        Returns
        -------
        X_filled : ndarray of shape (n_samples, n_features), float64

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import DCDEnergyEstimator
        >>> rng = np.random.default_rng(0)
        >>> X = rng.multivariate_normal([0, 0], [[1, 0.9], [0.9, 1]], size=500)
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=50,
        ...                          random_state=0).fit(X)
        >>> filled = est.impute([[1.0, np.nan], [np.nan, -1.0]], n_draws=32, random_state=0)
        >>> filled[0, 0], filled[1, 1]  # observed values are kept
        (np.float64(1.0), np.float64(-1.0))
        >>> bool(abs(filled[0, 1] - 0.9) < 0.2 and abs(filled[1, 0] + 0.9) < 0.2)  # E[x_m | x_o]
        True
        """
        check_is_fitted(self)
        if not isinstance(n_draws, Integral) or isinstance(n_draws, bool) or n_draws < 1:
            raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}.")
        X = self._validate_X(X, reset=False, allow_nan=True)
        missing = np.isnan(X)
        empty = np.flatnonzero(missing.all(axis=1))
        if len(empty):
            raise ValueError(f"{len(empty)} row(s) have every value missing (first: row "
                             f"{empty[0]}); impute needs at least one observed value per "
                             f"row (draw such rows with sample()).")
        if donors is not None:
            donors = self._standardize_finite(self._validate_X(donors, reset=False))
        Z = np.where(missing, 0.0, self._standardize_finite(np.where(missing, self.mean_, X)))
        if not missing.any():
            return X.astype(np.float64)
        model = self._model(runtime_device(self.device))
        filled = model.impute(Z, missing, int(n_draws), bool(sample_posterior), random_state,
                              donors)
        return np.where(missing, filled * self.scale_ + self.mean_, X).astype(np.float64)

    @uses_threads
    def denoise(self, X: ArrayLike, noise_std: float, method: str = "auto",
                random_state: int | np.random.RandomState | None = None) -> np.ndarray:
        """Estimate clean rows from ``X = clean + noise_std · N(0, I)`` under the model prior.

        The posterior is ``q(x | y) ∝ exp(-E(x) - ‖y - x‖² / (2 noise_std²))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Noisy observations, in input units.
        noise_std : float
            Standard deviation of the noise, in input units.
        method : {"auto", "posterior_mean", "map", "tweedie"}, default="auto"
            Posterior mean (MMSE; average of a MALA chain, ``sample_steps`` steps, half
            burn-in), mode (MAP; gradient descent with per-row backtracking), or Tweedie's
            formula ``x̂ = y - σ² ∇ₓE(y, σ)``, the exact posterior mean in one gradient, for
            a time-conditional :class:`DCDEnergyEstimator` whose ladder spans the noise
            level (in standardised units, the same for every feature, as with
            ``image_shape``). ``"auto"``: Tweedie where it applies, else the posterior
            mean.
        random_state : int, RandomState instance or None, default=None
            Seed for the MALA chain (unused by ``"map"``).

        Returns
        -------
        X_denoised : ndarray of shape (n_samples, n_features), float64
            Whatever the dtype of ``X``.

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import DCDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, sample_steps=16,
        ...                          random_state=0).fit(X)
        >>> noisy = X[:5] + 0.1 * np.random.default_rng(0).standard_normal((5, 2))
        >>> est.denoise(noisy, noise_std=0.1, random_state=0).shape
        (5, 2)
        >>> est.denoise(noisy, noise_std=0.1, method="map").shape
        (5, 2)
        """
        check_is_fitted(self)
        if method not in DENOISE_METHODS:
            raise ValueError(f"method must be 'auto', 'posterior_mean', 'map' or 'tweedie', "
                             f"got {method!r}.")
        if (not isinstance(noise_std, Real) or isinstance(noise_std, bool)
                or not np.isfinite(noise_std) or noise_std <= 0):
            raise ValueError(f"noise_std must be a positive finite number, got {noise_std!r}.")
        X = self._validate_X(X, reset=False)
        model = self._model(runtime_device(self.device))
        Z = self._standardize_finite(X)
        with np.errstate(over="ignore"):
            var = (noise_std / self.scale_) ** 2  # (d,) noise variance in standardised units
        if not np.isfinite(var).all() or not (var > 0).all():
            raise ValueError(f"noise_std={noise_std!r} is out of range for data on the scale "
                             f"of this model (scale_ up to {self.scale_.max():.3g}).")
        return model.denoise(Z, var, method, random_state) * self.scale_ + self.mean_
