"""BaseEnergyEstimator: the scikit-learn shell shared by the DCD and CD estimators.

``fit`` reads top to bottom: validate ``X``; resolve every ``"auto"`` setting once into
fitted attributes (:meth:`_resolve`); initialise the standardisation, the network and the
estimator's own state; then step the objective (:meth:`_objective`, from
:mod:`skdcd._objectives`) with :func:`skdcd._training.run`. Inference goes through the
fitted model's kind (:meth:`_model`, from :mod:`skdcd._models`); persistence through
:mod:`skdcd._persistence`. All maths runs in standardised coordinates
``z = (x - mean_) / scale_``; the public methods convert. Subclasses implement the four
abstract hooks and nothing else.
"""

from __future__ import annotations

import copy
import math
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
from sklearn.utils.validation import validate_data

from skdcd import _data as data
from skdcd import _distributed as distributed
from skdcd import _envelope as envelope
from skdcd import _models as models
from skdcd import _training as training
from skdcd import partition
from skdcd._inference import InferenceMixin
from skdcd._objectives import ContrastiveObjective, WellGuard
from skdcd._persistence import PersistenceMixin
from skdcd._utils import fit_device, global_rng, seeded_generator, uses_threads
from skdcd.networks import ACTIVATIONS, ConvEnergy, EnvelopedEnergy, MLPEnergy

# optimisation steps that max_iter="auto" aims for (benchmarks/RESULTS.md), in at most
# AUTO_MAX_EPOCHS passes for a marginal model: more passes memorise a few hundred rows
# (user guide, "Why these defaults")
STEPS_PER_FIT = 2000
AUTO_MAX_EPOCHS = 64


class BaseEnergyEstimator(InferenceMixin, PersistenceMixin, DensityMixin, BaseEstimator,
                          metaclass=ABCMeta):
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
        "envelope_components": [Interval(Integral, 1, None, closed="left"),
                                StrOptions({"auto"}), None],
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
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self, *, hidden_layer_sizes=(128, 128, 128), image_shape=None,
        conv_channels=(16, 32, 64), spectral_norm=False, activation="silu", energy_net=None,
        learning_rate=1e-2, lr_schedule="cosine", batch_size=256, max_iter="auto",
        energy_reg=0.01, max_grad_norm=None, envelope_std=3.0, envelope_components="auto",
        clip_margin=1.0, well_penalty=1.0, standardize=True, log_partition="auto",
        quadrature_n_grid=512, ais_n_particles=1024, ais_n_steps=256, sample_steps=256,
        sample_step_size=0.01, device="auto", random_state=None, verbose=0, warm_start=False,
        mixed_precision=False, compile=False, n_threads=None,
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
        self.envelope_components = envelope_components
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
        self.n_threads = n_threads

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
    def _model(self, device: torch.device) -> models.Model:
        """The fitted model, for inference on ``device``."""

    def __sklearn_is_fitted__(self) -> bool:
        # a fit that diverges before its first epoch leaves mean_ etc. but no energy
        return hasattr(self, "energy_net_")

    @property
    def _time_conditional(self) -> bool:
        """Whether the fitted energy is ``E(x, σ)``: a model with a noise ladder (DCD only)."""
        return "noise_levels_" in self.__dict__

    # ------------------------------------------------------------------ validation
    def _validate_X(self, X, *, reset: bool, allow_nan: bool = False) -> np.ndarray:
        if isinstance(X, torch.Tensor):  # a tensor that requires grad has no numpy view
            X = X.detach().cpu()
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                          force_writeable=True,
                          ensure_all_finite="allow-nan" if allow_nan else True)
        # one memory layout, so that C, Fortran and DataFrame inputs fit bit-identically
        return np.ascontiguousarray(X)

    def _validate_training_X(self, X, *, reset: bool) -> np.ndarray | data.LazyInput:
        """``X`` for ``fit``: in memory, or lazily read (:mod:`skdcd._data`) and never loaded."""
        if not data.is_lazy(X):
            return self._validate_X(X, reset=reset)
        data.check(X, None if reset else self.n_features_in_)
        if reset:
            self.n_features_in_ = int(X.shape[1])
            self.__dict__.pop("feature_names_in_", None)
        return data.LazyInput(X)

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    @uses_threads
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
        with _Transaction(self) as before:
            warm = self.warm_start and hasattr(self, "energy_net_")
            X = self._validate_training_X(X, reset=not warm)
            _check_params(self, X.shape[1])
            if warm:
                self._resolve(None)
            else:
                self._start(X)
            # the minibatch of a data-parallel fit is batch_size rows per process
            _, n_batches = training.minibatches(X.shape[0], self.batch_size,
                                                distributed.world()[1])
            n_epochs, max_steps = self.max_iter, None
            if self.max_iter == "auto":  # about STEPS_PER_FIT steps, a part-epoch if need be
                n_epochs = math.ceil(STEPS_PER_FIT / n_batches)
                if not self._time_conditional:
                    n_epochs = min(n_epochs, AUTO_MAX_EPOCHS)
                max_steps = STEPS_PER_FIT if n_batches > STEPS_PER_FIT else None
            self._train(X, n_epochs, cosine=self.lr_schedule == "cosine", cold=not warm,
                        before=before, max_steps=max_steps)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    @uses_threads
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
        with _Transaction(self) as before:
            first = not hasattr(self, "energy_net_")
            X = self._validate_training_X(X, reset=first)
            _check_params(self, X.shape[1])
            if first:
                self._start(X)
            else:
                self._resolve(None)
            self._train(X, 1, cosine=False, cold=first, before=before)
        return self

    def _start(self, X: np.ndarray | data.LazyInput) -> None:
        """A cold start: resolve the settings for ``X``, then initialise every fitted state.

        Lazy data: the standardisation from one streaming pass; the settings that look at
        the rows from an evenly spaced subsample (:func:`skdcd._data.init_rows`).
        """
        image = self.image_shape is not None
        if isinstance(X, data.LazyInput):
            mean, scale = data.standardization(X.moments, self.standardize, image)
            rows = data.init_rows(X.X)
        else:
            mean, scale = _standardization(X, self.standardize, image)
            rows = X
        with np.errstate(over="ignore"):  # rows that overflow are refused by _train
            Z = (rows - mean) / scale
        self._resolve(Z)  # raises before anything changes
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if distributed.world()[1] > 1:  # random_state=None: one seed for all processes
            self._seed = distributed.broadcast_int(self._seed)
        self.mean_, self.scale_ = mean, scale
        with global_rng(self._seed):  # the weights depend on random_state alone
            self.energy_net_ = self._build_energy_net(X.shape[1])
        self._optimizer_state = None
        self._z_low, self._z_high = np.full(X.shape[1], np.inf), np.full(X.shape[1], -np.inf)
        self._base_mean, self._base_std = Z.mean(axis=0), np.maximum(Z.std(axis=0), 1e-3)
        finite = Z[np.isfinite(Z).all(axis=1)]
        # where annealing starts (log Z, sampling): the data's mixture, made safe at inference
        self._base_means, self._base_covs, self._base_weights = (
            partition.MixtureProposal.fit_params(finite, random_state=self._seed)
            if len(finite) > 1 else (self._base_mean[None], self._base_std[None] ** 2, np.ones(1)))
        self._cache: dict = {}  # lazily computed quantities; cleared by training
        self.loss_curve_: list[float] = []
        self.n_iter_ = 0
        self.t_ = 0
        self._set_envelope(Z)
        self._initial_state(Z)

    def _set_envelope(self, Z: np.ndarray) -> None:
        """The Gaussian mixture envelope of the rows ``Z``, where ``envelope_components`` asks."""
        Z = Z[np.isfinite(Z).all(axis=1)]
        k = envelope.n_components(self.envelope_components, *Z.shape, self._time_conditional)
        if k is not None and self.envelope_std is not None and len(Z):
            self.energy_net_.set_gaussian(*envelope.mixture_fit(Z, k, self._seed))

    def _build_energy_net(self, n_features: int) -> EnvelopedEnergy:
        """A fresh energy network of the kind the parameters (and fitted kind) say."""
        return _energy_network(self.get_params(deep=False), n_features, self._time_conditional)

    def _train(self, X: np.ndarray | data.LazyInput, n_epochs: int, *, cosine: bool,
               cold: bool, before: _Transaction, max_steps: int | None = None) -> None:
        device = fit_device(self.device)
        if isinstance(X, data.LazyInput):  # the box from the streaming pass
            moments = X.moments
            z_low, z_high = self._standardize_finite(np.stack([moments.low, moments.high]))
            rows = data.StandardizedRows(X.X, self.mean_, self.scale_, device)
        else:
            Z = self._standardize_finite(X)  # before any state changes: nothing is lost
            z_low, z_high = Z.min(axis=0), Z.max(axis=0)
            rows = torch.as_tensor(Z, dtype=torch.float32, device=device)
        if distributed.world()[1] > 1:  # what fixes the shuffle and the steps, too
            distributed.check_same(np.concatenate([
                [X.shape[0], self._seed, self.t_, n_epochs, max_steps or 0, self.batch_size],
                self.mean_, z_low, z_high]),
                "the rows, their range, the seed, the step count or the batch size")
        self._z_low = np.minimum(self._z_low, z_low)
        self._z_high = np.maximum(self._z_high, z_high)
        if self.clip_margin is not None:  # the box widens with what partial_fit sees
            self.energy_net_.set_bounds(self._z_low - self.clip_margin,
                                        self._z_high + self.clip_margin)
        objective = self._objective(device)
        generator = seeded_generator((self._seed, 0, self.t_), device)
        settings = training.Settings(
            n_epochs=n_epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            cosine=cosine, max_grad_norm=self.max_grad_norm, compile=self.compile,
            mixed_precision=self.mixed_precision, max_steps=max_steps)
        state = training.FitState(self.t_, self.n_iter_, self.loss_curve_,
                                  self._optimizer_state)
        n_iter_before = self.n_iter_
        self._cache.clear()
        try:
            diverged = training.run(
                self.energy_net_, rows, objective, settings, state, generator,
                name=type(self).__name__, verbose=self.verbose)
        finally:
            self.t_, self.n_iter_ = state.t, state.n_iter
            self._optimizer_state = state.optimizer_state
            self.__dict__.update(objective.fitted_state())
        if diverged:
            self._on_divergence(self.n_iter_ - n_iter_before, cold, before)

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

    def _on_divergence(self, n_completed: int, cold: bool, before: _Transaction) -> None:
        """The documented divergence rule (see ``max_grad_norm`` in the class docstring).

        ``n_completed``: the epochs that this call completed before the one that diverged.
        """
        where = f"epoch {self.n_iter_ + 1}"
        advice = ("Try a smaller learning_rate, a larger energy_reg or max_grad_norm "
                  "(e.g. 10).")
        if n_completed == 0 and cold:
            # nothing was learnt from X: a model at its random initialisation would score
            # and sample as if fitted; the transaction restores the estimator as it was
            raise ValueError(
                f"Training diverged (non-finite loss or gradient) in {where}, before any "
                f"epoch completed; the estimator is left as it was before this call. "
                f"{advice}")
        if n_completed == 0:
            before.rollback()  # the clipping box and the replay buffer too
            what = "left the estimator as it was before this call"
        else:
            what = "restored the weights and optimizer state from the start of that epoch"
        warnings.warn(
            f"Training diverged (non-finite loss or gradient) in {where}; stopped and "
            f"{what}. {advice}", ConvergenceWarning, stacklevel=4,
        )

    # ------------------------------------------------------------------ inference helpers
    def _model_fields(self, device: torch.device) -> dict:
        """What every :class:`~skdcd._models.Model` takes from the estimator."""
        return dict(net=self.energy_net_, device=device, base_mean=self._base_mean,
                    base_std=self._base_std, z_low=self._z_low, z_high=self._z_high,
                    sample_steps=self.sample_steps, sample_step_size=self.sample_step_size,
                    base_mixture=(self._base_means, self._base_covs, self._base_weights)
                    if hasattr(self, "_base_means") else None, seed=self._seed,
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


def _positive_ints(values) -> bool:
    """Whether ``values`` is a flat sequence of positive integers (bools excluded)."""
    return np.ndim(values) == 1 and all(
        isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values)


class _Transaction:
    """Restores an estimator's fitted state if a ``fit`` or ``partial_fit`` fails.

    The state at entry is copied (the network's weights by value); any exception,
    ``KeyboardInterrupt`` included, restores it, so a failed call leaves the estimator
    exactly as it was. :meth:`rollback` restores it without an exception.
    """

    def __init__(self, est: BaseEnergyEstimator) -> None:
        self.est = est
        params = est.get_params(deep=False)
        net = est.__dict__.get("energy_net_")
        self.weights = None if net is None else copy.deepcopy(net.state_dict())
        self.state = {k: v if k in params or k == "energy_net_" else _saved(v)
                      for k, v in est.__dict__.items()}

    def __enter__(self) -> _Transaction:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.rollback()

    def rollback(self) -> None:
        """Put back the state at entry (idempotent)."""
        state = {k: _restored(v) for k, v in self.state.items()}  # before touching est
        for k in [k for k in self.est.__dict__ if k not in state]:
            del self.est.__dict__[k]
        self.est.__dict__.update(state)
        if self.weights is not None:
            net = self.est.energy_net_
            net.load_state_dict(self.weights)
            for p in net.parameters():
                p.grad = None
            net.to("cpu").eval()


def _saved(value):
    """A fitted attribute as a transaction keeps it: what training changes in place is copied.

    Arrays and scalars are only ever replaced, never changed in place, so they are kept as
    they are; ``loss_curve_`` only grows, so its length is kept (no copy per call).
    """
    if isinstance(value, np.ndarray | str | int | float | tuple) or value is None:
        return value
    if isinstance(value, list):
        return _Appended(value, len(value))
    return copy.deepcopy(value)


def _restored(value):
    if isinstance(value, _Appended):
        del value.items[value.length:]
        return value.items
    if isinstance(value, dict | torch.Tensor | list):
        return copy.deepcopy(value)  # a second rollback must find the saved value intact
    return value


class _Appended:
    """A list that training appends to, and its length when the transaction began."""

    def __init__(self, items: list, length: int) -> None:
        self.items, self.length = items, length


def _check_params(est: BaseEstimator, n_features: int, *, check_device: bool = True) -> None:
    """Checks that ``_parameter_constraints`` cannot express, shared by every estimator.

    ``check_device=False`` (at ``load``) accepts a device that this machine lacks.
    """
    params = est.get_params(deep=False)
    for name, constraints in est._parameter_constraints.items():
        if (isinstance(params[name], bool | np.bool_)
                and not {"boolean", "verbose"} & set(map(str, constraints))):
            raise ValueError(f"The '{name}' parameter of {type(est).__name__} must not be a "
                             f"bool, got {params[name]!r}.")
    sizes = params["hidden_layer_sizes"]
    custom = params["energy_net"] is not None
    if not custom and not _positive_ints(sizes):
        raise ValueError(
            f"hidden_layer_sizes must be a sequence of positive integers, got {sizes!r}.")
    shape = params["image_shape"]
    if shape is not None:
        if not (len(shape) == 3 and _positive_ints(shape)):
            raise ValueError(f"image_shape must be None or a tuple (C, H, W) of positive "
                             f"integers, got {shape!r}.")
        if math.prod(shape) != n_features:
            raise ValueError(f"image_shape={shape!r} holds {math.prod(shape)} pixels but X "
                             f"has {n_features} features.")
        channels = params["conv_channels"]
        if not custom and not (_positive_ints(channels) and len(channels) > 0):
            raise ValueError(f"conv_channels must be a non-empty sequence of positive "
                             f"integers, got {channels!r}.")
    if params["log_partition"] == "quadrature" and n_features > 2:
        raise ValueError(
            f"log_partition='quadrature' needs n_features <= 2, got {n_features}; "
            "use 'ais' or 'auto'.")
    if check_device:
        fit_device(params["device"])


def _standardization(X: np.ndarray, standardize: bool,
                     image: bool) -> tuple[np.ndarray, np.ndarray]:
    """``mean_`` and ``scale_`` for ``X`` (one of each for all pixels of an image)."""
    n_features = X.shape[1]
    if not standardize:
        return np.zeros(n_features), np.ones(n_features)
    # per-pixel scaling would blow up the near-constant border pixels of images
    axis = None if image else 0
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
        # in float64 whatever X's dtype: the model's coordinates do not depend on it
        mean = np.broadcast_to(X.mean(axis=axis, dtype=np.float64), (n_features,)).copy()
        scale = np.broadcast_to(X.std(axis=axis, dtype=np.float64), (n_features,)).copy()
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
        raise ValueError(
            "X holds values too large to standardise in float64 (their mean or standard "
            f"deviation overflows; the largest |x| is {np.abs(X).max():.3g}). Rescale X.")
    return mean, scale


def _energy_network(params: dict, n_features: int, conditional: bool) -> EnvelopedEnergy:
    """The energy network that the estimator parameters ``params`` describe."""
    if params["energy_net"] is not None:
        net = params["energy_net"](n_features)
    elif params["image_shape"] is not None:
        net = ConvEnergy(params["image_shape"], tuple(params["conv_channels"]),
                         params["activation"], spectral_norm=params["spectral_norm"],
                         noise_conditional=conditional)
    else:
        net = MLPEnergy(n_features, tuple(params["hidden_layer_sizes"]), params["activation"],
                        noise_conditional=conditional)
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"energy_net must return a torch.nn.Module, got {type(net).__name__}.")
    return EnvelopedEnergy(net.float(), params["envelope_std"], noise_conditional=conditional)
