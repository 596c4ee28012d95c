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

import inspect
import json
import os
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from skdcd import __version__
from skdcd._io import write_atomic

WEIGHTS_FORMAT = "skdcd-weights"
# 2: the envelope's buffers have an axis of mixture components; 3: MLPEnergy's input_gain
WEIGHTS_FORMAT_VERSION = 3
# held apart from the other fitted attributes, or not saved (the cache of log Z is)
_APART = ("energy_net_", "_optimizer_state", "_cache", "feature_names_in_")


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
        if isinstance(value, np.ndarray):
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
        "cache": {k: float(v) for k, v in est._cache.items()},
    }
    write_atomic(path, lambda f: torch.save(payload, f))


def load_estimator(cls, path: str | os.PathLike, energy_net=None):
    """Read an estimator of class ``cls`` (or, for the base class, the file's own) from ``path``."""
    payload = _read(cls, path)
    if inspect.isabstract(cls):  # the base class: whichever estimator the file holds
        cls = {c.__name__: c for c in cls.__subclasses__()}.get(payload["estimator"], cls)
    if payload["estimator"] != cls.__name__:
        raise ValueError(f"{os.fspath(path)!r} holds a {payload['estimator']}; load it "
                         f"with {payload['estimator']}.load.")
    warn_if_other_version(cls.__name__, payload["skdcd_version"])
    params = _from_json(json.loads(payload["params"]))
    if params["energy_net"] == "custom" and energy_net is None:
        raise ValueError("This model was fitted with a custom energy_net; pass the same "
                         "factory as load(path, energy_net=...).")
    params["energy_net"] = energy_net if params["energy_net"] == "custom" else None
    est = cls(**upgrade_params(cls, params))
    for k, v in _from_json(json.loads(payload["scalars"])).items():
        setattr(est, k, v)
    for k, v in payload["arrays"].items():
        setattr(est, k, v.numpy())
    for k, v in payload["tensors"].items():
        setattr(est, k, v)
    if payload["feature_names_in"] is not None:
        est.feature_names_in_ = np.asarray(payload["feature_names_in"], dtype=object)
    net = est._build_energy_net(est.n_features_in_)
    net.load_state_dict(payload["energy_net"])  # the network upgrades older buffers itself
    est.energy_net_ = net.eval()
    est._optimizer_state = payload["optimizer"]
    est._cache = dict(payload["cache"])
    est._upgrade_resolved()
    return est


def _read(cls, path) -> dict:
    """The payload of ``path``, or a ``ValueError`` if it is not a file of this format."""
    try:
        with warnings.catch_warnings():  # torch's note on foreign pickle protocols
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # a missing or unreadable file says so itself
        raise
    except Exception as exc:  # an unpickling error, a zip error, ...: not our format
        raise ValueError(
            f"{os.fspath(path)!r} is not a file written by {cls.__name__}.save "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a file written by {cls.__name__}.save.")
    if payload["format_version"] > WEIGHTS_FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} uses format version {payload['format_version']}; this "
            f"skdcd ({__version__}) reads up to {WEIGHTS_FORMAT_VERSION}. Upgrade skdcd.")
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
