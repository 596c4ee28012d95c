"""BaseEnergyEstimator: the scikit-learn contract shared by the DCD and CD estimators.

One training loop minimises the contrastive surrogate

    mean E(x_pos) - mean E(stopgrad(x_neg)) + λ (mean E(x_pos)² + mean E(x_neg)²),

and subclasses only say how negatives ``x_neg`` are drawn (:meth:`_negatives`). All maths
runs in standardised coordinates ``z = (x - mean_) / scale_``; public methods convert.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skdcd import __version__, partition, samplers
from skdcd._io import write_atomic
from skdcd._progress import ProgressBar, anneal_callback
from skdcd.networks import ACTIVATIONS, AtNoiseLevel, ConvEnergy, EnvelopedEnergy, MLPEnergy

# optimisation steps that max_iter="auto" aims for; with learning_rate=1e-2 (cosine) 2,000
# steps matched or beat 8,000 at 1e-3 on the 2-D toys (benchmarks/RESULTS.md)
STEPS_PER_FIT = 2000
# rows per chunk of the inference methods, so that memory stays flat in the number of rows:
# without autograd (energies, quadrature) and with it (sampling, denoising). Each chunk's
# result is copied into a preallocated array at once: small long-lived tensors between the
# chunks' large short-lived ones fragment glibc's heap, which then grew by ~600 MB per 10⁶ rows
EVAL_BATCH = 8192
GRAD_BATCH = 4096
WELL_PROBES = 64  # uniform points per step at which well_penalty looks for spurious wells

logger = logging.getLogger("skdcd")

WEIGHTS_FORMAT = "skdcd-weights"
# 2: the envelope's buffers have an axis of mixture components; 3: MLPEnergy's input_gain
WEIGHTS_FORMAT_VERSION = 3
_ENVELOPE_BUFFERS = ("center", "directions", "variances", "residual_variance", "log_weights")


class InconsistentVersionWarning(UserWarning):
    """A model saved by one version of skdcd is loaded by another.

    Its results may differ or be wrong; refit it with the running version when you can.
    """


def _seeded_generator(entropy: tuple[int, ...], device: torch.device) -> torch.Generator:
    """A torch generator whose seed is derived from ``entropy`` (reproducible, independent)."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % (2**63))
    return generator


def _generator_from_random_state(random_state, device: torch.device) -> torch.Generator:
    rng = check_random_state(random_state)
    return _seeded_generator((int(rng.randint(np.iinfo(np.int32).max)),), device)


class BaseEnergyEstimator(DensityMixin, BaseEstimator):
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

    # fitted state beyond the energy network and the optimizer, saved by :meth:`save`
    _ARRAY_STATE = ("mean_", "scale_", "_z_low", "_z_high", "_base_mean", "_base_std")
    _SCALAR_STATE = ("n_features_in_", "n_iter_", "t_", "_seed", "loss_curve_")
    _TENSOR_STATE: tuple[str, ...] = ()  # subclass state that is a tensor or None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_skdcd_version"] = __version__
        return state

    def __setstate__(self, state: dict) -> None:
        _warn_if_other_version(type(self).__name__, state.pop("_skdcd_version", "unknown"))
        super().__setstate__(self._upgrade_params(state))

    @classmethod
    def _upgrade_params(cls, params: dict) -> dict:
        """Constructor parameters saved by an earlier skdcd, in today's names."""
        return params

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
        params = self.get_params(deep=False)
        params["energy_net"] = None if self.energy_net is None else "custom"
        if not isinstance(params["random_state"], Integral | None):
            params["random_state"] = None
        params["device"] = str(params["device"])
        payload = {
            "format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION,
            "skdcd_version": __version__, "estimator": type(self).__name__,
            "params": json.dumps(_to_json(params)),
            "energy_net": self.energy_net_.state_dict(),
            "optimizer": self._optimizer_state,
            "arrays": {k: torch.from_numpy(np.asarray(getattr(self, k), dtype=np.float64))
                       for k in self._ARRAY_STATE if hasattr(self, k)},
            "scalars": json.dumps({k: _to_json(getattr(self, k)) for k in self._SCALAR_STATE}),
            "tensors": {k: getattr(self, k) for k in self._TENSOR_STATE},
            "feature_names_in": (list(map(str, self.feature_names_in_))
                                 if hasattr(self, "feature_names_in_") else None),
            "cache": {k: float(v) for k, v in self._cache.items()},
        }
        write_atomic(path, lambda f: torch.save(payload, f))

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
        try:
            with warnings.catch_warnings():  # torch's note on foreign pickle protocols
                warnings.filterwarnings("ignore", message=".*pickle protocol",
                                        category=UserWarning)
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:  # a missing or unreadable file says so itself
            raise
        except Exception as exc:  # an unpickling error, a zip error, ...: not our format
            raise ValueError(
                f"{os.fspath(path)!r} is not a file written by {cls.__name__}.save "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a file written by "
                             f"{cls.__name__}.save.")
        if payload["format_version"] > WEIGHTS_FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} uses format version {payload['format_version']}; this "
                f"skdcd ({__version__}) reads up to {WEIGHTS_FORMAT_VERSION}. Upgrade skdcd.")
        if cls is BaseEnergyEstimator:  # whichever estimator the file holds
            cls = {c.__name__: c for c in cls.__subclasses__()}.get(payload["estimator"], cls)
        if payload["estimator"] != cls.__name__:
            raise ValueError(f"{os.fspath(path)!r} holds a {payload['estimator']}; load it "
                             f"with {payload['estimator']}.load.")
        _warn_if_other_version(cls.__name__, payload["skdcd_version"])
        params = _from_json(json.loads(payload["params"]))
        if params["energy_net"] == "custom" and energy_net is None:
            raise ValueError("This model was fitted with a custom energy_net; pass the same "
                             "factory as load(path, energy_net=...).")
        params["energy_net"] = energy_net if params["energy_net"] == "custom" else None
        est = cls(**cls._upgrade_params(params))
        for k, v in json.loads(payload["scalars"]).items():
            setattr(est, k, v)
        for k, v in payload["arrays"].items():
            setattr(est, k, v.numpy())
        for k, v in payload["tensors"].items():
            setattr(est, k, v)
        if payload["feature_names_in"] is not None:
            est.feature_names_in_ = np.asarray(payload["feature_names_in"], dtype=object)
        net = est._build_energy_net(est.n_features_in_)
        state = payload["energy_net"]
        if payload["format_version"] < 3:  # MLPEnergy saw x itself: a gain of 1
            state = {**{k: torch.tensor(1.0) for k in net.state_dict()
                        if k.endswith("input_gain")}, **state}
        net.set_bounds(state["low"], state["high"])  # sizes the clipping box's buffers
        if "log_weights" not in state and state.get("directions", torch.zeros(0)).numel():
            # format 1 held one Gaussian, without the axis of mixture components
            net.set_gaussian(state["center"], state["directions"], state["variances"],
                             state["residual_variance"])
        else:
            for name in _ENVELOPE_BUFFERS:  # sizes the envelope's buffers
                if name in state:
                    setattr(net, name, state[name])
        net.load_state_dict({**net.state_dict(), **state,
                             **{name: getattr(net, name) for name in _ENVELOPE_BUFFERS}})
        est.energy_net_ = net.eval()
        est._optimizer_state = payload["optimizer"]
        est._cache = dict(payload["cache"])
        return est

    def __sklearn_is_fitted__(self) -> bool:
        # a fit that diverges before its first epoch leaves mean_ etc. but no energy
        return hasattr(self, "energy_net_")

    # ------------------------------------------------------------------ subclass hooks
    def _negatives(self, energy_fn, x_pos: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        """Negative samples for the batch ``x_pos`` (standardised units), detached."""
        raise NotImplementedError

    def _negative_energies(self, net, x_pos: torch.Tensor,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable mean energy and mean squared energy of the negatives.

        Subclasses whose negative term is a weighted average override this.
        """
        e_neg = net(self._negatives(net, x_pos, generator).detach())  # (N,)
        return e_neg.mean(), e_neg.pow(2).mean()

    def _contrastive_terms(self, net, x_pos: torch.Tensor, generator: torch.Generator
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positive energies ``(B,)``, mean negative energy, and what ``energy_reg`` weighs.

        The last is ``mean E(x_pos)² + mean E(x_neg)²`` unless a subclass rescales it.
        """
        neg_mean, neg_sq = self._negative_energies(net, x_pos, generator)
        e_pos = net(x_pos)  # (B,)
        return e_pos, neg_mean, e_pos.pow(2).mean() + neg_sq

    def _noise_conditional(self) -> bool:
        """Whether the energy takes the noise level as an input, ``E(x, σ)``.

        A fitted model keeps the kind it was fitted as: parameters changed after ``fit``
        (``image_shape`` under ``time_conditional="auto"``, say) apply at the next cold fit.
        """
        net = self.__dict__.get("energy_net_")
        if net is not None and not self.__dict__.get("_refitting", False):
            return bool(net.noise_conditional)
        return self._requested_noise_conditional()

    def _requested_noise_conditional(self) -> bool:
        """What the parameters ask for (``_noise_conditional`` before fit)."""
        return False

    def _energy_reg(self) -> float:
        """``energy_reg`` with any ``"auto"`` resolved."""
        return self.energy_reg

    def _inference_level(self) -> float:
        """The noise level at which a noise-conditional energy models the data."""
        raise NotImplementedError

    def _check_extra_params(self) -> None:
        """Cross-parameter checks that ``_parameter_constraints`` cannot express."""

    def _init_extra_state(self) -> None:
        """Reset estimator-specific state on a fresh (cold) fit, e.g. a replay buffer."""

    # ------------------------------------------------------------------ validation
    def _check_params(self, n_features: int) -> None:
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
        self._check_extra_params()

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
        keep = self.warm_start and hasattr(self, "energy_net_")
        X = self._validate_X(X, reset=not keep)
        # a cold refit checks and builds what the parameters ask for, not the fitted kind
        self._refitting = not keep
        try:
            self._check_params(X.shape[1])
            if not keep:
                self._initialize(X)
        finally:
            del self._refitting
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
            self._initialize(X)
        self._train(X, 1, cosine=False)
        return self

    def _initialize(self, X: np.ndarray) -> None:
        rng = check_random_state(self.random_state)
        self._seed = int(rng.randint(np.iinfo(np.int32).max))
        n_features = X.shape[1]
        if self.standardize:
            # images share one mean and scale over all pixels: per-pixel scaling would blow up
            # the near-constant border pixels and distort the image that the convolutions see
            axis = None if self.image_shape is not None else 0
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
                self.mean_ = np.broadcast_to(X.mean(axis=axis), (n_features,)).copy()
                scale = np.broadcast_to(X.std(axis=axis), (n_features,)).copy()
            self.scale_ = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(self.mean_)),
                                   scale, 1.0)
        else:
            self.mean_, self.scale_ = np.zeros(n_features), np.ones(n_features)
        if not (np.isfinite(self.mean_).all() and np.isfinite(self.scale_).all()):
            del self.mean_, self.scale_
            raise ValueError(
                "X holds values too large to standardise in float64 (their mean or standard "
                f"deviation overflows; the largest |x| is {np.abs(X).max():.3g}). Rescale X.")
        Z = self._standardize(X)
        # torch initialises layers from its global generator: fork it so that the global
        # state is untouched and the weights depend on random_state alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            self.energy_net_ = self._build_energy_net(n_features)
        self._optimizer_state = None
        self._z_low, self._z_high = np.full(n_features, np.inf), np.full(n_features, -np.inf)
        self._base_mean, self._base_std = Z.mean(axis=0), np.maximum(Z.std(axis=0), 1e-3)
        self._cache: dict = {}  # lazily computed quantities; cleared by training
        self.loss_curve_: list[float] = []
        self.n_iter_ = 0
        self.t_ = 0
        self._init_extra_state()

    def _build_energy_net(self, n_features: int) -> EnvelopedEnergy:
        conditional = self._noise_conditional()
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
        Z_np = self._standardize_finite(X)  # before any state changes: nothing is lost
        self._z_low = np.minimum(self._z_low, Z_np.min(axis=0))
        self._z_high = np.maximum(self._z_high, Z_np.max(axis=0))
        if self.clip_margin is not None:  # the box widens with what partial_fit sees
            self.energy_net_.set_bounds(self._z_low - self.clip_margin,
                                        self._z_high + self.clip_margin)
        Z = torch.as_tensor(Z_np, dtype=torch.float32, device=device)  # (n, d)
        margin = 1.0 if self.clip_margin is None else self.clip_margin
        box_low = torch.as_tensor(self._z_low - margin, dtype=torch.float32, device=device)
        box_span = torch.as_tensor(self._z_high - self._z_low + 2 * margin,
                                   dtype=torch.float32, device=device)
        n = Z.shape[0]
        batch_size = min(self.batch_size, n)
        n_batches = math.ceil(n / batch_size)
        total_steps = n_epochs * n_batches
        generator = _seeded_generator((self._seed, 0, self.t_), device)
        net = self.energy_net_.to(device)
        net.train()
        # the compiled module shares net's parameters; autocast leaves them in float32
        forward = torch.compile(net) if self.compile else net
        # bfloat16 keeps float32's range, so no loss scaling and no spurious overflow that
        # the divergence rule below would mistake for divergence
        autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                  enabled=self.mixed_precision)
        guard_wells = self.well_penalty > 0 and not self._noise_conditional()
        energy_reg = self._energy_reg()
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        if self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
        self._cache.clear()
        bar = ProgressBar(total_steps, f"{type(self).__name__} fit", self.verbose)
        diverged = False
        try:
            for epoch in range(n_epochs):
                # the last state known to be finite: divergence rolls back to it
                snapshot = (copy.deepcopy(net.state_dict()),
                            copy.deepcopy(optimizer.state_dict()), self.t_)
                epoch_loss = 0.0
                perm = torch.randperm(n, generator=generator, device=device)
                for b in range(n_batches):
                    step = epoch * n_batches + b
                    lr = (0.5 * self.learning_rate * (1 + math.cos(math.pi * step / total_steps))
                          if cosine else self.learning_rate)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x_pos = Z[perm[b * batch_size:(b + 1) * batch_size]]  # (B, d)
                    with autocast:
                        e_pos, neg_mean, square = self._contrastive_terms(forward, x_pos,
                                                                          generator)
                        e_pos = e_pos.float()
                        loss = (e_pos.mean() - neg_mean.float()
                                + energy_reg * square.float())
                        if guard_wells:
                            loss = loss + self.well_penalty * _well_loss(
                                forward, e_pos, box_low, box_span, generator).float()
                    loss_value = float(loss.detach())
                    diverged = not math.isfinite(loss_value)
                    if not diverged:
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        grad_norm = _grad_norm(net, self.max_grad_norm)
                        diverged = not math.isfinite(float(grad_norm))
                    if diverged:
                        net.load_state_dict(snapshot[0])
                        optimizer.load_state_dict(snapshot[1])
                        self.t_ = snapshot[2]
                        break
                    optimizer.step()
                    epoch_loss += loss_value
                    self.t_ += 1
                    bar.update(1, f"epoch {self.n_iter_ + 1}, loss {epoch_loss / (b + 1):.4g}",
                               force=b == n_batches - 1)
                if diverged:
                    break
                self.loss_curve_.append(epoch_loss / n_batches)
                self.n_iter_ += 1
                logger.debug("%s epoch %d loss %.5f", type(self).__name__, self.n_iter_,
                             self.loss_curve_[-1])
        finally:
            bar.close()
            # keep everything that is pickled on the CPU, so a CUDA-fitted model loads anywhere
            self._optimizer_state = _to_cpu(optimizer.state_dict())
            self.energy_net_ = net.to("cpu").eval()
        if diverged:
            self._on_divergence()

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

    # ------------------------------------------------------------------ evaluation helpers
    def _energy_module(self, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        """A frozen copy of the energy on ``device`` in ``dtype`` (the fitted one is untouched)."""
        module = copy.deepcopy(self.energy_net_).to(device=device, dtype=dtype).eval()
        module.requires_grad_(False)
        if self._noise_conditional():
            return AtNoiseLevel(module, self._inference_level())
        return module

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

    def _energy_z(self, Z: np.ndarray) -> np.ndarray:
        # float64: batched and row-by-row evaluations then agree to ~1e-15
        device = self._runtime_device()
        net = self._energy_module(torch.float64, device)
        out = np.empty(len(Z))
        with torch.no_grad():
            for i in range(0, len(Z), EVAL_BATCH):
                z = torch.as_tensor(Z[i:i + EVAL_BATCH], dtype=torch.float64, device=device)
                out[i:i + EVAL_BATCH] = net(z).cpu().numpy()
        return out

    def _compute_log_partition(self) -> None:
        n_features = self.n_features_in_
        method = self.log_partition
        if method == "auto":
            method = "quadrature" if n_features <= 2 else "ais"
        device = self._runtime_device()
        net = self._energy_module(torch.float64, device)
        if method == "quadrature":
            span = self._z_high - self._z_low
            margin = 0.5 * span + 1.0
            log_z, _ = partition.log_partition_quadrature(
                net, self._z_low - margin, self._z_high + margin,
                n_grid=self.quadrature_n_grid, device=device, batch_size=EVAL_BATCH)
            std_err = 0.0
        else:
            with ProgressBar(self.ais_n_steps, f"{type(self).__name__} log Z (AIS)",
                             self.verbose) as bar:
                log_z, std_err = partition.log_partition_ais(
                    net,
                    torch.as_tensor(self._base_mean, dtype=torch.float64, device=device),
                    torch.as_tensor(1.5 * self._base_std, dtype=torch.float64, device=device),
                    n_particles=self.ais_n_particles, n_steps=self.ais_n_steps,
                    step_size=self.sample_step_size,
                    generator=_seeded_generator((self._seed, 1), device),
                    callback=anneal_callback(bar),
                )
        # from standardised to input units: dz = dx / prod(scale)
        self._cache["log_z"] = log_z + float(np.sum(np.log(self.scale_)))
        self._cache["log_z_std"] = std_err

    @property
    def log_partition_(self) -> float:
        """``log Z`` of ``exp(-energy(x))`` in input units (computed once, then cached)."""
        check_is_fitted(self)
        if "log_z" not in self._cache:
            self._compute_log_partition()
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
        return self._energy_z(self._standardize(X))

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
        generator = _generator_from_random_state(random_state, device)
        net = self._energy_module(torch.float32, device)
        # independent SMC runs of at most GRAD_BATCH particles keep memory flat in n_samples
        sizes = [min(GRAD_BATCH, n_samples - i) for i in range(0, n_samples, GRAD_BATCH)]
        with ProgressBar(self._sample_work() * len(sizes), f"{type(self).__name__} sample",
                         self.verbose) as bar:
            out = np.empty((n_samples, self.n_features_in_))
            for i, size in zip(range(0, n_samples, GRAD_BATCH), sizes, strict=True):
                x = self._sample_chunk(net, size, generator, bar)
                out[i:i + size] = x.double().cpu().numpy()
        return out * self.scale_ + self.mean_

    def _sample_work(self) -> int:
        """Progress-bar units of :meth:`_sample_chunk`."""
        return self.sample_steps

    def _sample_chunk(self, net, n_samples: int, generator: torch.Generator,
                      bar: ProgressBar) -> torch.Tensor:
        """``n_samples`` samples (standardised units) of the energy module ``net``."""
        return self._smc_sample(net, n_samples, generator, anneal_callback(bar))

    def _smc_sample(self, net, n_samples: int, generator: torch.Generator,
                    callback, widen: float = 0.0) -> torch.Tensor:
        device = generator.device
        n_particles = max(n_samples, 1024)
        # the base: a Gaussian fitted to the training data, blurred by ``widen`` and broadened
        base_std = 1.5 * np.sqrt(self._base_std**2 + widen**2)
        result = samplers.anneal(
            net, torch.as_tensor(self._base_mean, dtype=torch.float32, device=device),
            torch.as_tensor(base_std, dtype=torch.float32, device=device),
            n_particles=n_particles, n_steps=self.sample_steps,
            step_size=self.sample_step_size, generator=generator, resample=True,
            callback=callback,
        )
        x = result.x[samplers.systematic_resample(result.log_weights, generator)]
        # systematic resampling orders particles by ancestor: shuffle before truncating
        x = x[torch.randperm(n_particles, generator=generator, device=device)[:n_samples]]
        # a few exact MCMC moves at β = 1 separate the copies that resampling made
        step = _tune_mala_step(net, x, self.sample_step_size, generator)
        return samplers.mala(net, x, n_steps=max(1, self.sample_steps // 10), step_size=step,
                             generator=generator).detach()

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
        if method not in ("auto", "posterior_mean", "map", "tweedie"):
            raise ValueError(f"method must be 'auto', 'posterior_mean', 'map' or 'tweedie', "
                             f"got {method!r}.")
        if (not isinstance(noise_std, Real) or isinstance(noise_std, bool)
                or not np.isfinite(noise_std) or noise_std <= 0):
            raise ValueError(f"noise_std must be a positive finite number, got {noise_std!r}.")
        X = self._validate_X(X, reset=False)
        device = self._runtime_device()
        # float64: MAP's descent test compares energies that differ by less than float32 eps
        net = self._energy_module(torch.float64, device)
        Z = self._standardize_finite(X)
        with np.errstate(over="ignore"):
            var = (noise_std / self.scale_) ** 2  # (d,) noise variance in standardised units
        if not np.isfinite(var).all() or not (var > 0).all():
            raise ValueError(f"noise_std={noise_std!r} is out of range for data on the scale "
                             f"of this model (scale_ up to {self.scale_.max():.3g}).")
        method = self._denoise_method(method, var)
        s2 = torch.as_tensor(var, dtype=torch.float64, device=device)
        generator = (_generator_from_random_state(random_state, device)
                     if method == "posterior_mean" else None)
        out = np.empty_like(Z)
        for i in range(0, len(Z), GRAD_BATCH):
            y = torch.as_tensor(Z[i:i + GRAD_BATCH], dtype=torch.float64, device=device)
            out[i:i + GRAD_BATCH] = self._denoise_chunk(net, y, s2, method,
                                                        generator).cpu().numpy()
        return out * self.scale_ + self.mean_

    def _denoise_method(self, method: str, var: np.ndarray) -> str:
        """Resolve ``"auto"`` for noise of variance ``var`` (standardised units)."""
        if method == "tweedie":
            raise ValueError("method='tweedie' needs a time-conditional model "
                             "(DCDEnergyEstimator(time_conditional=True)).")
        return "posterior_mean" if method == "auto" else method

    def _denoise_chunk(self, net, y: torch.Tensor, s2: torch.Tensor, method: str,
                       generator: torch.Generator | None) -> torch.Tensor:
        if method == "tweedie":  # the level-σ view of a time-conditional energy
            level = AtNoiseLevel(net.energy, float(torch.sqrt(s2[0])))
            _, grad = samplers.energy_and_grad(level, y)
            return (y - s2 * grad).detach()
        def posterior(z: torch.Tensor) -> torch.Tensor:
            return net(z) + ((y - z).pow(2) / (2.0 * s2)).sum(dim=1)

        # the posterior is no wider than the noise, nor (roughly) than the unit-scale prior
        step0 = 0.1 * min(float(s2.min()), 1.0)
        if method == "map":
            z = _minimise_rowwise(posterior, y, step0, self.sample_steps)
        else:
            z = _mala_mean(posterior, y, step0, self.sample_steps, generator)
        return z.detach().double()


def _grad_norm(net: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
    """The global norm of ``net``'s gradients, which are clipped to ``max_norm`` if given."""
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: no rescaling pass by 1
        return torch.nn.utils.get_total_norm(
            [p.grad for p in net.parameters() if p.grad is not None])
    return torch.nn.utils.clip_grad_norm_(net.parameters(), math.inf)


def _positive_ints(values) -> bool:
    """Whether ``values`` is a flat sequence of positive integers (bools excluded)."""
    return np.ndim(values) == 1 and all(
        isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values)


def _well_loss(net, e_pos: torch.Tensor, box_low: torch.Tensor, box_span: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
    """``mean relu(min E(x_pos) - 1 - E(u))²`` over points ``u`` uniform in the box.

    No point of the box should sit more than 1 nat below every data point of the batch:
    posterior or short-run negatives, which stay near the data, never visit such a well, so
    nothing else in the loss pushes it back up. Zero when there is no such well.
    """
    u = box_low + box_span * torch.rand((WELL_PROBES, box_low.shape[0]), generator=generator,
                                        device=box_low.device)  # (P, d)
    floor = e_pos.detach().min() - 1.0
    return torch.relu(floor - net(u)).pow(2).mean()


def _warn_if_other_version(name: str, saved: str) -> None:
    if saved != __version__:
        warnings.warn(
            f"This {name} was saved by skdcd {saved} and is loaded by skdcd {__version__}; "
            "its results may differ or be wrong. Refit it with this version when you can.",
            InconsistentVersionWarning, stacklevel=3,
        )


def _to_json(obj):
    """Parameters as JSON values; tuples are tagged so that :func:`_from_json` restores them."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_json(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(v) for v in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _tune_mala_step(energy_fn, x: torch.Tensor, step_size: float,
                    generator: torch.Generator, n_rounds: int = 20) -> torch.Tensor:
    """Adapt one MALA step size on throw-away moves so acceptance is near 0.57."""
    step = torch.tensor(float(step_size), dtype=x.dtype, device=x.device)
    energy, grad = samplers.energy_and_grad(energy_fn, x)
    for _ in range(n_rounds):
        _, _, _, accepted = samplers.mala_step(energy_fn, x, energy, grad, step, generator)
        step = samplers.adapt_step_size(step, accepted.to(x.dtype).mean())
    return step


def _mala_mean(energy_fn, x: torch.Tensor, step_size: float, n_steps: int,
               generator: torch.Generator) -> torch.Tensor:
    """Posterior mean as the average of a MALA chain per row (per-row steps tuned in burn-in)."""
    step = torch.full((x.shape[0], 1), step_size, dtype=x.dtype, device=x.device)  # (n, 1)
    energy, grad = samplers.energy_and_grad(energy_fn, x)
    burn_in = n_steps // 2
    mean = torch.zeros_like(x)
    for k in range(n_steps):
        x, energy, grad, accepted = samplers.mala_step(energy_fn, x, energy, grad, step,
                                                       generator)
        if k < burn_in:
            step = samplers.adapt_step_size(step, accepted.to(x.dtype).unsqueeze(1))
        else:  # a running mean: a sum of rows near the float64 limit would overflow
            mean += (x - mean) / (k - burn_in + 1)
    return mean


def _minimise_rowwise(energy_fn, x: torch.Tensor, step_size: float,
                      n_steps: int) -> torch.Tensor:
    """Gradient descent with a backtracking step per row; each row's energy never rises."""
    step = torch.full((x.shape[0], 1), step_size, dtype=x.dtype, device=x.device)  # (n, 1)
    energy, grad = samplers.energy_and_grad(energy_fn, x)
    for _ in range(n_steps):
        candidate = x - step * grad
        energy_new, grad_new = samplers.energy_and_grad(energy_fn, candidate)
        better = energy_new < energy  # (n,)
        keep = better.unsqueeze(1)
        x = torch.where(keep, candidate, x)
        energy = torch.where(better, energy_new, energy)
        grad = torch.where(keep, grad_new, grad)
        step = torch.where(keep, step * 1.2, step * 0.5)
    return x
