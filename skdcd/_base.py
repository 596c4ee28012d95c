"""BaseEnergyEstimator: the scikit-learn shell shared by the DCD and CD estimators.

``fit`` reads top to bottom: validate ``X``; resolve every ``"auto"`` setting once into
fitted attributes (:meth:`_resolve`); initialise the standardisation, the network and the
estimator's own state; then step the objective (:meth:`_objective`, from
:mod:`skdcd._objectives`) with :func:`skdcd._training.run`. Inference goes through the
fitted model's kind (:meth:`_model`, from :mod:`skdcd._inference`); persistence through
:mod:`skdcd._persistence`. All maths runs in standardised coordinates
``z = (x - mean_) / scale_``; the public methods convert. Subclasses implement the four
abstract hooks and nothing else.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skdcd import _inference as inference
from skdcd import _persistence as persistence
from skdcd import _training as training
from skdcd._objectives import ContrastiveObjective, WellGuard
from skdcd._utils import generator_from_random_state, seeded_generator
from skdcd.networks import ACTIVATIONS, ConvEnergy, EnvelopedEnergy, MLPEnergy

# optimisation steps that max_iter="auto" aims for (benchmarks/RESULTS.md)
STEPS_PER_FIT = 2000


class BaseEnergyEstimator(DensityMixin, BaseEstimator, metaclass=ABCMeta):
    """Shared machinery of the energy-based density estimators; not for direct use.

    See :class:`skdcd.DCDEnergyEstimator` for the parameters.
    """

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like"],
        "image_shape": [tuple, None],
        "conv_channels": ["array-like"],
        "spectral_norm": ["boolean"],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "energy_net": [callable, None],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "energy_reg": [Interval(Real, 0, None, closed="left")],
        "max_grad_norm": [Interval(Real, 0, None, closed="neither"), None],
        "envelope_std": [Interval(Real, 0, None, closed="neither"), None],
        "clip_margin": [Interval(Real, 0, None, closed="left"), None],
        "well_penalty": [Interval(Real, 0, None, closed="left")],
        "standardize": ["boolean"],
        "log_partition": [StrOptions({"auto", "quadrature", "ais"})],
        "quadrature_n_grid": [Interval(Integral, 8, None, closed="left")],
        "ais_n_particles": [Interval(Integral, 2, None, closed="left")],
        "ais_n_steps": [Interval(Integral, 1, None, closed="left")],
        "sample_steps": [Interval(Integral, 1, None, closed="left")],
        "sample_step_size": [Interval(Real, 0, None, closed="neither")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "mixed_precision": ["boolean"],
        "compile": ["boolean"],
    }
    # renamed parameters of files and pickles from earlier versions: old -> (new, convert)
    _PARAM_UPGRADES: dict = {}
    # the fitted attributes that _resolve sets (re-derived for models saved before them)
    _RESOLVED: tuple[str, ...] = ()

    def __init__(
        self, *, hidden_layer_sizes=(128, 128, 128), image_shape=None,
        conv_channels=(16, 32, 64), spectral_norm=False, activation="silu", energy_net=None,
        learning_rate=1e-2, lr_schedule="cosine", batch_size=256, max_iter="auto",
        energy_reg=0.01, max_grad_norm=None, envelope_std=3.0, clip_margin=1.0,
        well_penalty=1.0, standardize=True, log_partition="auto",
        quadrature_n_grid=512, ais_n_particles=1024, ais_n_steps=256, sample_steps=256,
        sample_step_size=0.01, device="auto", random_state=None, verbose=0, warm_start=False,
        mixed_precision=False, compile=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.image_shape = image_shape
        self.conv_channels = conv_channels
        self.spectral_norm = spectral_norm
        self.activation = activation
        self.energy_net = energy_net
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.energy_reg = energy_reg
        self.max_grad_norm = max_grad_norm
        self.envelope_std = envelope_std
        self.clip_margin = clip_margin
        self.well_penalty = well_penalty
        self.standardize = standardize
        self.log_partition = log_partition
        self.quadrature_n_grid = quadrature_n_grid
        self.ais_n_particles = ais_n_particles
        self.ais_n_steps = ais_n_steps
        self.sample_steps = sample_steps
        self.sample_step_size = sample_step_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.mixed_precision = mixed_precision
        self.compile = compile

    # ------------------------------------------------------------------ the four hooks
    @abstractmethod
    def _resolve(self, Z: np.ndarray | None) -> None:
        """Validate the settings and resolve every ``"auto"`` into fitted attributes.

        ``Z``: the standardised training data of a cold fit; ``None`` for a warm one (or a
        model loaded from before these attributes), which keeps the fitted model's kind.
        Raises before it changes anything.
        """

    @abstractmethod
    def _initial_state(self, Z: np.ndarray) -> None:
        """The estimator's own state at a cold fit, once the network is built."""

    @abstractmethod
    def _objective(self, device: torch.device) -> ContrastiveObjective:
        """The training objective of this fit (resolved settings, the current box)."""

    @abstractmethod
    def _model(self, device: torch.device) -> inference.Model:
        """The fitted model, for inference on ``device``."""

    # ------------------------------------------------------------------ persistence
    def __getstate__(self) -> dict:
        return persistence.pickled_state(super().__getstate__())

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(persistence.unpickled_state(type(self), state))
        self._upgrade_resolved()

    def _upgrade_resolved(self) -> None:
        """Resolve the settings of a fitted model saved before they were fitted attributes."""
        if "energy_net_" in self.__dict__ and not all(
                name in self.__dict__ for name in self._RESOLVED):
            self._resolve(None)

    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted model as tensors and JSON, loadable without unpickling code.

        Unlike pickle or joblib, which can run arbitrary code when a file is loaded,
        the file holds only tensors, numbers and strings, and :meth:`load` reads it with
        ``torch.load(..., weights_only=True)``. A custom ``energy_net`` factory is not saved:
        pass it again to :meth:`load`. A non-integer ``random_state`` is saved as ``None``.

        Parameters
        ----------
        path : str or path-like
            File to write (conventionally ``.pt``); replaced atomically.

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import DCDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
        >>> est = est.fit(X)
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
        >>> est.save(path)
        >>> again = DCDEnergyEstimator.load(path)
        >>> bool(np.array_equal(again.energy(X), est.energy(X)))
        True
        """
        check_is_fitted(self)
        persistence.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, energy_net=None):
        """Load a model written by :meth:`save`, without unpickling arbitrary objects.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save` for this estimator class.
        energy_net : callable or None, default=None
            The ``energy_net`` factory the model was fitted with, when it had a custom one.

        Returns
        -------
        estimator : object
            The fitted estimator, equal in results to the saved one.

        Examples
        --------
        See :meth:`save`.
        """
        return persistence.load(cls, path, energy_net)

    def __sklearn_is_fitted__(self) -> bool:
        # a fit that diverges before its first epoch leaves mean_ etc. but no energy
        return hasattr(self, "energy_net_")

    @property
    def _time_conditional(self) -> bool:
        """Whether the fitted energy is ``E(x, σ)``: a model with a noise ladder (DCD only)."""
        return "noise_levels_" in self.__dict__

    # ------------------------------------------------------------------ validation
    def _check_params(self, n_features: int) -> None:
        """Checks that ``_parameter_constraints`` cannot express, shared by every estimator."""
        sizes = self.hidden_layer_sizes
        if self.energy_net is None and not _positive_ints(sizes):
            raise ValueError(
                f"hidden_layer_sizes must be a sequence of positive integers, got {sizes!r}."
            )
        if self.image_shape is not None:
            shape = self.image_shape
            if not (len(shape) == 3 and _positive_ints(shape)):
                raise ValueError(f"image_shape must be None or a tuple (C, H, W) of positive "
                                 f"integers, got {shape!r}.")
            if math.prod(shape) != n_features:
                raise ValueError(f"image_shape={shape!r} holds {math.prod(shape)} pixels but X "
                                 f"has {n_features} features.")
            channels = self.conv_channels
            if self.energy_net is None and not (_positive_ints(channels) and len(channels) > 0):
                raise ValueError(f"conv_channels must be a non-empty sequence of positive "
                                 f"integers, got {channels!r}.")
        if self.log_partition == "quadrature" and n_features > 2:
            raise ValueError(
                f"log_partition='quadrature' needs n_features <= 2, got {n_features}; "
                "use 'ais' or 'auto'."
            )
        self._fit_device()

    def _fit_device(self) -> torch.device:
        if isinstance(self.device, str) and self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device={self.device!r} is not a valid torch device.") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was requested but CUDA is not available.")
        return device

    def _runtime_device(self) -> torch.device:
        """Device for inference; a CUDA-fitted model falls back to CPU where CUDA is absent."""
        try:
            return self._fit_device()
        except ValueError:
            warnings.warn(
                f"device={self.device!r} is unavailable here; computing on the CPU.",
                RuntimeWarning, stacklevel=3,
            )
            return torch.device("cpu")

    def _validate_X(self, X, *, reset: bool) -> np.ndarray:
        return validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                             force_writeable=True)

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: ArrayLike, y: None = None) -> BaseEnergyEstimator:
        """Fit the energy network to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : object
            The fitted estimator.

        Examples
        --------
        >>> from skdcd import DCDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
        >>> est.fit(X) is est
        True
        >>> est.n_iter_, len(est.loss_curve_), est.n_features_in_
        (2, 2, 2)
        """
        warm = self.warm_start and hasattr(self, "energy_net_")
        X = self._validate_X(X, reset=not warm)
        self._check_params(X.shape[1])
        if warm:
            self._resolve(None)
        else:
            self._start(X)
        n_batches = math.ceil(X.shape[0] / min(self.batch_size, X.shape[0]))
        n_epochs = (math.ceil(STEPS_PER_FIT / n_batches) if self.max_iter == "auto"
                    else self.max_iter)
        self._train(X, n_epochs, cosine=self.lr_schedule == "cosine")
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: ArrayLike, y: None = None) -> BaseEnergyEstimator:
        """Train for one epoch on ``X``, keeping the current state.

        The first call fixes the standardisation from its batch. The learning rate is
        constant (``learning_rate``), since the total number of steps is unknown.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : object
            The updated estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd import CDEnergyEstimator
        >>> from skdcd.datasets import make_toy
        >>> X = make_toy("two_moons", 200, random_state=0)
        >>> est = CDEnergyEstimator(hidden_layer_sizes=(16,), learning_rate=1e-3,
        ...                         random_state=0)
        >>> for batch in np.array_split(X, 4):  # e.g. chunks of a stream
        ...     est = est.partial_fit(batch)
        >>> est.n_iter_, len(est.loss_curve_)
        (4, 4)
        """
        first = not hasattr(self, "energy_net_")
        X = self._validate_X(X, reset=first)
        if first:
            self._check_params(X.shape[1])
            self._start(X)
        else:
            self._resolve(None)
        self._train(X, 1, cosine=False)
        return self

    def _start(self, X: np.ndarray) -> None:
        """A cold start: resolve the settings for ``X``, then initialise every fitted state."""
        mean, scale = self._standardization(X)
        with np.errstate(over="ignore"):  # rows that overflow are refused by _train
            Z = (X - mean) / scale
        self._resolve(Z)  # raises before anything changes
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.mean_, self.scale_ = mean, scale
        # torch initialises layers from its global generator: fork it so that the global
        # state is untouched and the weights depend on random_state alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            self.energy_net_ = self._build_energy_net(X.shape[1])
        self._optimizer_state = None
        self._z_low, self._z_high = np.full(X.shape[1], np.inf), np.full(X.shape[1], -np.inf)
        self._base_mean, self._base_std = Z.mean(axis=0), np.maximum(Z.std(axis=0), 1e-3)
        self._cache: dict = {}  # lazily computed quantities; cleared by training
        self.loss_curve_: list[float] = []
        self.n_iter_ = 0
        self.t_ = 0
        self._initial_state(Z)

    def _standardization(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``mean_`` and ``scale_`` for ``X`` (one of each for all pixels of an image)."""
        n_features = X.shape[1]
        if not self.standardize:
            return np.zeros(n_features), np.ones(n_features)
        # per-pixel scaling would blow up the near-constant border pixels of images
        axis = None if self.image_shape is not None else 0
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
            mean = np.broadcast_to(X.mean(axis=axis), (n_features,)).copy()
            scale = np.broadcast_to(X.std(axis=axis), (n_features,)).copy()
        scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
        if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
            raise ValueError(
                "X holds values too large to standardise in float64 (their mean or standard "
                f"deviation overflows; the largest |x| is {np.abs(X).max():.3g}). Rescale X.")
        return mean, scale

    def _build_energy_net(self, n_features: int) -> EnvelopedEnergy:
        conditional = self._time_conditional
        if self.energy_net is not None:
            net = self.energy_net(n_features)
        elif self.image_shape is not None:
            net = ConvEnergy(self.image_shape, tuple(self.conv_channels), self.activation,
                             spectral_norm=self.spectral_norm, noise_conditional=conditional)
        else:
            net = MLPEnergy(n_features, tuple(self.hidden_layer_sizes), self.activation,
                            noise_conditional=conditional)
        if not isinstance(net, torch.nn.Module):
            raise TypeError(
                f"energy_net must return a torch.nn.Module, got {type(net).__name__}."
            )
        return EnvelopedEnergy(net.float(), self.envelope_std, noise_conditional=conditional)

    def _train(self, X: np.ndarray, n_epochs: int, *, cosine: bool) -> None:
        device = self._fit_device()
        Z = self._standardize_finite(X)  # before any state changes: nothing is lost
        self._z_low = np.minimum(self._z_low, Z.min(axis=0))
        self._z_high = np.maximum(self._z_high, Z.max(axis=0))
        if self.clip_margin is not None:  # the box widens with what partial_fit sees
            self.energy_net_.set_bounds(self._z_low - self.clip_margin,
                                        self._z_high + self.clip_margin)
        objective = self._objective(device)
        generator = seeded_generator((self._seed, 0, self.t_), device)
        settings = training.Settings(
            n_epochs=n_epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            cosine=cosine, max_grad_norm=self.max_grad_norm, compile=self.compile,
            mixed_precision=self.mixed_precision)
        state = training.FitState(self.t_, self.n_iter_, self.loss_curve_,
                                  self._optimizer_state)
        self._cache.clear()
        try:
            diverged = training.run(
                self.energy_net_, torch.as_tensor(Z, dtype=torch.float32, device=device),
                objective, settings, state, generator, name=type(self).__name__,
                verbose=self.verbose)
        finally:
            self.t_, self.n_iter_ = state.t, state.n_iter
            self._optimizer_state = state.optimizer_state
            self.__dict__.update(objective.fitted_state())
        if diverged:
            self._on_divergence()

    def _well_guard(self, device: torch.device) -> WellGuard | None:
        """The spurious-well guard over the clipping box (``well_penalty``), or None."""
        if self.well_penalty <= 0:
            return None
        margin = 1.0 if self.clip_margin is None else self.clip_margin
        return WellGuard(
            self.well_penalty,
            torch.as_tensor(self._z_low - margin, dtype=torch.float32, device=device),
            torch.as_tensor(self._z_high - self._z_low + 2 * margin, dtype=torch.float32,
                            device=device))

    def _on_divergence(self) -> None:
        """The documented divergence rule (see ``max_grad_norm`` in the class docstring)."""
        where = f"epoch {self.n_iter_ + 1}"
        advice = ("Try a smaller learning_rate, a larger energy_reg or max_grad_norm "
                  "(e.g. 10).")
        if self.n_iter_ == 0:
            # nothing was ever learnt: a model at its random initialisation would score
            # and sample as if fitted, so it is discarded instead
            del self.energy_net_
            raise ValueError(
                f"Training diverged (non-finite loss or gradient) in {where}, before any "
                f"epoch completed; the estimator is left unfitted. {advice}")
        warnings.warn(
            f"Training diverged (non-finite loss or gradient) in {where}; stopped and "
            f"restored the weights and optimizer state from the start of that epoch. {advice}",
            ConvergenceWarning, stacklevel=4,
        )

    # ------------------------------------------------------------------ inference helpers
    def _model_fields(self, device: torch.device) -> dict:
        """What every :class:`~skdcd._inference.Model` takes from the estimator."""
        return dict(net=self.energy_net_, device=device, base_mean=self._base_mean,
                    base_std=self._base_std, z_low=self._z_low, z_high=self._z_high,
                    sample_steps=self.sample_steps, sample_step_size=self.sample_step_size,
                    name=type(self).__name__, verbose=self.verbose)

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # callers that cannot take inf check for it
            return (X - self.mean_) / self.scale_

    def _standardize_finite(self, X: np.ndarray) -> np.ndarray:
        Z = self._standardize(X)
        if not np.isfinite(Z).all():
            raise ValueError(
                "X holds values that overflow float64 once standardised with this model's "
                f"mean_ and scale_ (largest |x| {np.abs(X).max():.3g}). Rescale X.")
        return Z

    @property
    def log_partition_(self) -> float:
        """``log Z`` of ``exp(-energy(x))`` in input units (computed once, then cached)."""
        check_is_fitted(self)
        if "log_z" not in self._cache:
            method = self.log_partition
            if method == "auto":
                method = "quadrature" if self.n_features_in_ <= 2 else "ais"
            log_z, std_err = self._model(self._runtime_device()).log_partition(
                method, n_grid=self.quadrature_n_grid, n_particles=self.ais_n_particles,
                n_steps=self.ais_n_steps, seed=self._seed)
            # from standardised to input units: dz = dx / prod(scale)
            self._cache["log_z"] = log_z + float(np.sum(np.log(self.scale_)))
            self._cache["log_z_std"] = std_err
        return self._cache["log_z"]

    @property
    def log_partition_std_(self) -> float:
        """Standard error of :attr:`log_partition_` (0 for quadrature, whose error is tiny)."""
        self.log_partition_  # noqa: B018 - computes the cache
        return self._cache["log_z_std"]

    # ------------------------------------------------------------------ public inference
    def energy(self, X: ArrayLike) -> np.ndarray:
        """Unnormalised energy ``E(x)`` of each row, so that ``q(x) ∝ exp(-E(x))``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points in input units.

        Returns
        -------
        energy : ndarray of shape (n_samples,)

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
        return self._model(self._runtime_device()).energies(self._standardize(X))

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
        log_density : ndarray of shape (n_samples,)

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

    def sample(self, n_samples: int = 1,
               random_state: int | np.random.RandomState | None = None) -> np.ndarray:
        """Draw samples from the fitted model.

        Sequential Monte Carlo: particles from a Gaussian fitted to the training data are
        annealed to the model along ``base^{1-β} exp(-βE)`` with MALA moves and resampled
        whenever their weights degenerate, so separated modes get their right mass.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seed for the sampler.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)

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
        device = self._runtime_device()
        generator = generator_from_random_state(random_state, device)
        return self._model(device).sample(n_samples, generator) * self.scale_ + self.mean_

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
        X_denoised : ndarray of shape (n_samples, n_features)

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
        if method not in inference.DENOISE_METHODS:
            raise ValueError(f"method must be 'auto', 'posterior_mean', 'map' or 'tweedie', "
                             f"got {method!r}.")
        if (not isinstance(noise_std, Real) or isinstance(noise_std, bool)
                or not np.isfinite(noise_std) or noise_std <= 0):
            raise ValueError(f"noise_std must be a positive finite number, got {noise_std!r}.")
        X = self._validate_X(X, reset=False)
        model = self._model(self._runtime_device())
        Z = self._standardize_finite(X)
        with np.errstate(over="ignore"):
            var = (noise_std / self.scale_) ** 2  # (d,) noise variance in standardised units
        if not np.isfinite(var).all() or not (var > 0).all():
            raise ValueError(f"noise_std={noise_std!r} is out of range for data on the scale "
                             f"of this model (scale_ up to {self.scale_.max():.3g}).")
        return model.denoise(Z, var, method, random_state) * self.scale_ + self.mean_


def _positive_ints(values) -> bool:
    """Whether ``values`` is a flat sequence of positive integers (bools excluded)."""
    return np.ndim(values) == 1 and all(
        isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values)
