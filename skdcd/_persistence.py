"""The weights-only ``.pt`` format of ``save``/``load``, its versions, and version warnings.

A file holds tensors, numbers and strings only, read back with
``torch.load(..., weights_only=True)``: loading runs no code from the file. It stores the
constructor parameters (JSON), the energy network's ``state_dict``, the optimizer's state,
and every other fitted attribute: arrays, tensors, and JSON scalars. Upgrades of older
files live where the knowledge is: renamed parameters in the estimator's
``_PARAM_UPGRADES``, network buffers in the network's ``_load_from_state_dict``, settings
resolved at ``fit`` in the estimator's ``_resolve``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import stat
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from skdcd import __version__
from skdcd._io import write_atomic
from skdcd._utils import global_rng

WEIGHTS_FORMAT = "skdcd-weights"
# 2: the envelope's buffers have an axis of mixture components; 3: MLPEnergy's input_gain
WEIGHTS_FORMAT_VERSION = 3
# held apart from the other fitted attributes, or not saved (the cache of log Z is)
_APART = ("energy_net_", "_optimizer_state", "_cache", "feature_names_in_")
# every entry of a file, since format 1
_PAYLOAD_KEYS = {"format", "format_version", "skdcd_version", "estimator", "params",
                 "energy_net", "optimizer", "arrays", "scalars", "tensors", "feature_names_in",
                 "cache"}


class InconsistentVersionWarning(UserWarning):
    """A model saved by one version of skdcd is loaded by another.

    Its results may differ or be wrong; refit it with the running version when you can.
    """


def warn_if_other_version(name: str, saved: str) -> None:
    """Warn that a model saved by skdcd ``saved`` is loaded by this version, if they differ."""
    if saved != __version__:
        warnings.warn(
            f"This {name} was saved by skdcd {saved} and is loaded by skdcd {__version__}; "
            "its results may differ or be wrong. Refit it with this version when you can.",
            InconsistentVersionWarning, stacklevel=4,
        )


def pickled_state(state: dict) -> dict:
    """The estimator's ``__getstate__``, stamped with this skdcd's version."""
    return {**state, "_skdcd_version": __version__}


def unpickled_state(cls, state: dict) -> dict:
    """A pickled state, after a warning if another skdcd wrote it, in today's names."""
    state = dict(state)
    warn_if_other_version(cls.__name__, state.pop("_skdcd_version", "unknown"))
    return upgrade_params(cls, state)


def upgrade_params(cls, params: dict) -> dict:
    """Constructor parameters saved by an earlier skdcd, in today's names."""
    params = dict(params)
    for old, (new, convert) in cls._PARAM_UPGRADES.items():
        if old in params:
            params[new] = convert(params.pop(old))
    return params


def save_estimator(est, path: str | os.PathLike) -> None:
    """Write the fitted estimator ``est`` to ``path`` (see ``BaseEnergyEstimator.save``)."""
    params = est.get_params(deep=False)
    params["energy_net"] = None if est.energy_net is None else "custom"
    if not isinstance(params["random_state"], Integral | None):
        params["random_state"] = None
    params["device"] = str(params["device"])
    arrays, tensors, scalars = {}, {}, {}
    for name, value in vars(est).items():
        if name in params or name in _APART:
            continue
        if isinstance(value, np.ndarray):  # float64, as fit computes them
            arrays[name] = torch.from_numpy(np.asarray(value, dtype=np.float64))
        elif isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            scalars[name] = _to_json(value)
    payload = {
        "format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION,
        "skdcd_version": __version__, "estimator": type(est).__name__,
        "params": json.dumps(_to_json(params)),
        "energy_net": est.energy_net_.state_dict(),
        "optimizer": est._optimizer_state,
        "arrays": arrays, "scalars": json.dumps(scalars), "tensors": tensors,
        "feature_names_in": (list(map(str, est.feature_names_in_))
                             if hasattr(est, "feature_names_in_") else None),
        # a non-finite log Z is not saved (load refuses it); it is recomputed when asked
        "cache": ({k: float(v) for k, v in est._cache.items()}
                  if math.isfinite(est._cache.get("log_z", 0.0)) else {}),
    }
    write_atomic(path, lambda f: torch.save(payload, f))


def load_estimator(cls, path: str | os.PathLike, energy_net=None):
    """Read an estimator of class ``cls`` (or, for the base class, the file's own) from ``path``.

    Every way in which the file can be wrong, truncated or tampered with raises one
    ``ValueError`` that names it; the network is built only once its sizes match the
    file's tensors (checked on the ``meta`` device, which allocates nothing).
    """
    name = _name(path)
    payload = _read(cls, path)
    if inspect.isabstract(cls):  # the base class: whichever estimator the file holds
        cls = {c.__name__: c for c in cls.__subclasses__()}.get(payload["estimator"], cls)
    if payload["estimator"] != cls.__name__:
        raise ValueError(f"{name!r} holds a {payload['estimator']}; load it "
                         f"with {payload['estimator']}.load.")
    # outside the try: a warning that a caller turned into an error stays itself
    warn_if_other_version(cls.__name__, payload["skdcd_version"])
    try:
        return _from_payload(cls, payload, energy_net)
    except Exception as exc:  # a malformed entry fails in many ways: one error for all
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot load {name!r}: {message}") from exc


def _name(path) -> str:
    """How errors name ``path`` (a path, or an open binary file)."""
    return os.fspath(path) if isinstance(path, str | os.PathLike) else repr(path)


def _from_payload(cls, payload: dict, energy_net):
    """The estimator that a checked payload describes (raises on any inconsistency)."""
    params = _json_dict(payload["params"], "params")
    custom = params.get("energy_net")
    if custom not in ("custom", None):
        raise ValueError(f"params: energy_net must be 'custom' or null, got {custom!r}.")
    if custom == "custom" and energy_net is None:
        raise ValueError("this model was fitted with a custom energy_net; pass the same "
                         "factory as load(path, energy_net=...).")
    if custom is None and energy_net is not None:
        raise ValueError("this model has no custom energy_net; leave energy_net=None.")
    params["energy_net"] = energy_net
    params = upgrade_params(cls, params)
    unknown = sorted(set(params) - set(cls().get_params(deep=False)))
    if unknown:
        raise ValueError(f"params: unknown parameters {unknown}.")
    est = cls(**params)
    est._validate_params()  # the constraints of fit, before anything is built
    state = _fitted_state(cls, payload)
    n_features = state["n_features_in_"]
    from skdcd._base import _check_params  # the shared cross-parameter checks

    _check_params(est, n_features, check_device=False)
    est.__dict__.update(state)
    names = payload["feature_names_in"]
    if names is not None:
        if not (isinstance(names, list) and len(names) == n_features
                and all(isinstance(n, str) for n in names)):
            raise ValueError("feature_names_in must be null or one string per feature.")
        est.feature_names_in_ = np.asarray(names, dtype=object)
    est.energy_net_ = _network(est, n_features, payload["energy_net"])
    est._optimizer_state = _optimizer_state(est.energy_net_, payload["optimizer"])
    est._cache = _cache(payload["cache"])
    est._upgrade_resolved()
    return est


def _fitted_state(cls, payload: dict) -> dict:
    """The fitted attributes of ``scalars``, ``arrays`` and ``tensors``, each checked."""
    scalars = _json_dict(payload["scalars"], "scalars")
    arrays, tensors = payload["arrays"], payload["tensors"]
    if not (isinstance(arrays, dict) and isinstance(tensors, dict)):
        raise ValueError("arrays and tensors must be dictionaries.")
    allowed = set(_COMMON_STATE) | set(cls._RESOLVED) | set(cls._SAVED_STATE)
    entries = {**scalars, **arrays, **tensors}
    if len(entries) != len(scalars) + len(arrays) + len(tensors):
        raise ValueError("a fitted attribute is stored twice.")
    unknown = sorted(set(entries) - allowed)
    missing = sorted(set(_REQUIRED_STATE) - set(entries))
    if unknown or missing:
        raise ValueError(f"unknown fitted attributes {unknown}, missing {missing}.")
    d = scalars["n_features_in_"]
    if not _is_int(d, 1):
        raise ValueError(f"n_features_in_ must be a positive integer, got {d!r}.")
    state = {}
    for key, value in scalars.items():
        if not _SCALAR_CHECKS.get(key, _is_none)(value):
            raise ValueError(f"scalars: {key} = {value!r} is not valid.")
        state[key] = value
    for key, value in arrays.items():
        state[key] = _array(key, value, d)
    mixture = [state.get(k) for k in ("_base_means", "_base_covs", "_base_weights")]
    if any(m is not None for m in mixture) and not (
            all(m is not None for m in mixture)
            and mixture[0].shape[0] == mixture[1].shape[0] == mixture[2].shape[0]):
        raise ValueError("arrays: the base mixture needs means, covariances and weights of "
                         "as many components.")
    for key, value in tensors.items():
        if value is None and key == "_buffer":  # older files keep an undrawn buffer here
            state[key] = value
            continue
        if not (key == "_buffer" and isinstance(value, torch.Tensor) and value.ndim == 2
                and value.shape[0] >= 1 and value.shape[1] == d and value.dtype == torch.float32
                and bool(torch.isfinite(value).all())):
            raise ValueError(f"tensors: {key} is not a finite float32 (n ≥ 1, {d}) tensor.")
        state[key] = value
    return state


def _array(key: str, value, d: int) -> np.ndarray:
    """A fitted array of the file, checked for its dtype, shape and values."""
    if not (isinstance(value, torch.Tensor) and value.dtype in (torch.float64, torch.float32)):
        raise ValueError(f"arrays: {key} is not a float tensor.")
    a = value.numpy()
    shapes = {"_base_means": (None, d), "_base_covs": (None, d), "_base_weights": (None,),
              "noise_levels_": (None,)}
    shape = shapes.get(key, (d,))
    if key == "_base_covs" and a.ndim == 3:  # full covariances
        shape = (None, d, d)
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape,
                                                                              strict=True)):
        raise ValueError(f"arrays: {key} has shape {a.shape}, expected {shape}.")
    if not np.isfinite(a).all() or a.size == 0:
        raise ValueError(f"arrays: {key} is empty or not finite.")
    positive = (a > 0).all() if key != "_base_covs" or a.ndim == 2 else all(
        np.allclose(c, c.T) and (np.linalg.eigvalsh(c) > 0).all() for c in a)
    if key in ("scale_", "_base_std", "noise_levels_", "_base_weights", "_base_covs") \
            and not positive:
        raise ValueError(f"arrays: {key} must be positive (definite).")
    return a


def _network(est, n_features: int, weights) -> torch.nn.Module:
    """The fitted network, built for real only once the file's weights fit its shape."""
    if not (isinstance(weights, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())):
        raise ValueError("energy_net must map names to tensors.")
    for key, value in weights.items():  # the envelope's buffers are checked below
        if key.startswith("net.") and value.is_floating_point() and not bool(
                torch.isfinite(value).all()):
            raise ValueError(f"energy_net: {key} is not finite.")
    # the network's initialisation must not move torch's global generator
    with global_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta parameter", category=UserWarning)
        if est.energy_net is None:  # sizes from the file's parameters: check them first
            with torch.device("meta"):  # sizes and names only, nothing allocated
                est._build_energy_net(n_features).load_state_dict(weights)
        net = est._build_energy_net(n_features)  # a custom factory is the caller's code
    net.load_state_dict(weights)  # the network upgrades older buffers itself
    net.check_buffers(n_features)
    box = (net.low, net.high)
    if est.clip_margin is not None and any(b.ndim for b in box) and not all(
            bool(torch.isfinite(b).all()) for b in box):  # 0-d ±inf: never clipped
        raise ValueError("energy_net: the clipping box is not finite.")
    return net.eval()


def _optimizer_state(net: torch.nn.Module, state) -> dict | None:
    """Adam's saved state, checked by loading it into an optimizer of ``net``."""
    if state is None:
        return None
    if not isinstance(state, dict):
        raise ValueError("optimizer must be a dictionary or null.")
    adam = torch.optim.Adam(net.parameters())
    defaults = dict(adam.param_groups[0])
    adam.load_state_dict(state)
    for group in adam.param_groups:  # training sets lr; the rest must be ours
        for key in ("betas", "eps", "weight_decay", "amsgrad", "maximize"):
            if key in group and tuple(np.atleast_1d(group[key])) != tuple(
                    np.atleast_1d(defaults[key])):
                raise ValueError(f"optimizer: {key} = {group[key]!r} is not skdcd's.")
    for p, moments in adam.state.items():
        for key, value in moments.items():
            if key != "step" and not (isinstance(value, torch.Tensor)
                                      and value.shape == p.shape
                                      and bool(torch.isfinite(value).all())):
                raise ValueError(f"optimizer: a {key} does not match its parameter.")
    return state


def _cache(cache) -> dict:
    """The cached log Z and its error, whose values must be numbers (log Z finite)."""
    if not (isinstance(cache, dict) and set(cache) <= {"log_z", "log_z_std", "log_z_ess"}
            and all(isinstance(v, float) for v in cache.values())):
        raise ValueError(f"cache holds unknown entries or values: {cache!r}.")
    if not math.isfinite(cache.get("log_z", 0.0)) or cache.get("log_z_std", 0.0) < 0:
        raise ValueError("cache: log Z must be finite and its standard error not negative.")
    return dict(cache)


def _json_dict(text, what: str) -> dict:
    """A JSON object of the file, decoded (tuples restored)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a JSON string.")
    value = _from_json(json.loads(text))
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object.")
    return value


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value, low: float = -math.inf) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= low)


def _is_none(value) -> bool:
    return value is None


def _is_range(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(_is_number(v, 0) for v in value)


# the fitted attributes of every estimator, with the checks of their saved values
_SCALAR_CHECKS = {
    "n_features_in_": lambda v: _is_int(v, 1), "_seed": _is_int, "n_iter_": _is_int,
    "t_": _is_int,
    "loss_curve_": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    "negative_sampler_": lambda v: isinstance(v, str),
    "energy_reg_": lambda v: _is_number(v, 0),
    "noise_std_": lambda v: _is_number(v, 0) or _is_range(v),
    "wide_noise_": lambda v: v is None or (  # (fraction of rows, low, high)
        isinstance(v, tuple) and len(v) == 3 and 0 <= v[0] <= 1 and _is_range(v[1:])),
    "_buffer": _is_none,  # a replay buffer not yet drawn; a drawn one is a tensor
}
_REQUIRED_STATE = ("n_features_in_", "_seed", "n_iter_", "t_", "loss_curve_", "mean_",
                   "scale_", "_z_low", "_z_high", "_base_mean", "_base_std")
_COMMON_STATE = (*_REQUIRED_STATE, "_base_means", "_base_covs", "_base_weights")


def _read(cls, path) -> dict:
    """The payload of ``path``, or a ``ValueError`` naming it if it is not of this format."""
    name = _name(path)
    is_path = isinstance(path, str | os.PathLike)
    # before opening: a FIFO would block, a device read without end; a missing or
    # unreadable file says so itself (OSError)
    if is_path and not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{name!r} is not a regular file.")
    with open(path, "rb") if is_path else contextlib.nullcontext(path) as f:
        try:
            with warnings.catch_warnings():  # torch's note on foreign pickle protocols
                warnings.filterwarnings("ignore", message=".*pickle protocol",
                                        category=UserWarning)
                payload = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling, zip, truncation: not a file of ours
            raise ValueError(
                f"{name!r} is not a file written by {cls.__name__}.save "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
            ) from exc
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{name!r} is not a file written by {cls.__name__}.save.")
    version = payload.get("format_version")
    if not _is_int(version, 1):
        raise ValueError(f"{name!r}: format_version must be a positive integer, "
                         f"got {version!r}.")
    if version > WEIGHTS_FORMAT_VERSION:
        raise ValueError(
            f"{name!r} uses format version {version}; this skdcd ({__version__}) reads up "
            f"to {WEIGHTS_FORMAT_VERSION}. Upgrade skdcd.")
    if set(payload) != _PAYLOAD_KEYS:
        raise ValueError(f"{name!r} is not a complete file of format {version}: its entries "
                         f"are {sorted(payload)}, expected {sorted(_PAYLOAD_KEYS)}.")
    if not all(isinstance(payload[k], str) for k in ("skdcd_version", "estimator")):
        raise ValueError(f"{name!r}: skdcd_version and estimator must be strings.")
    return payload


def _to_json(obj):
    """Values as JSON values; tuples are tagged so that :func:`_from_json` restores them."""
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


class PersistenceMixin:
    """``save``/``load`` and pickling with version stamps, for the estimators."""

    # renamed parameters of files and pickles from earlier versions: old -> (new, convert)
    _PARAM_UPGRADES: dict = {}
    # the fitted attributes that _resolve sets (re-derived for models saved before them)
    _RESOLVED: tuple[str, ...] = ()
    # the estimator's other fitted attributes that a file may hold (beyond the shared ones)
    _SAVED_STATE: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        return pickled_state(super().__getstate__())

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(unpickled_state(type(self), state))
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
        save_estimator(self, path)

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
        return load_estimator(cls, path, energy_net)
