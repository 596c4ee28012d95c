"""Training data read a chunk at a time: memmaps, HDF5 and zarr datasets, dask arrays.

``fit`` and ``partial_fit`` never ask such an input for all its rows at once: one streaming
pass gives the standardisation, the clipping box and the finiteness check
(:func:`scan`); the settings that look at the data (envelope, noise ladder, annealing
base) see an evenly spaced subsample of at most :data:`INIT_ROWS` rows; each minibatch
reads its rows by a sorted index array (:class:`StandardizedRows`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

INIT_ROWS = 10_000  # rows that the data-dependent settings see
CHUNK_VALUES = 2**22  # values per chunk of the streaming pass (32 MiB in float64)


def is_lazy(X: object) -> bool:
    """Whether ``X`` is read lazily (a memmap, or an array-like such as h5py's or dask's).

    Lazy: a ``numpy.memmap``, or anything with ``shape``, ``dtype`` and slicing that is not
    an in-memory container (ndarray, tensor, list, sparse matrix).
    """
    if isinstance(X, np.memmap):
        return True
    if isinstance(X, np.ndarray | torch.Tensor | list | tuple):
        return False
    import scipy.sparse

    if scipy.sparse.issparse(X):
        return False
    return all(hasattr(X, a) for a in ("shape", "dtype", "__getitem__"))


def check(X: object, n_features: int | None) -> None:
    """Check a lazy input's shape and dtype (``n_features``: what the model expects)."""
    shape = tuple(X.shape)
    if not all(isinstance(n, numbers.Integral) for n in shape):  # e.g. dask's unknown chunks
        raise ValueError(f"X must have a known shape, got {shape}; for a dask array call "
                         "compute_chunk_sizes() first.")
    if len(shape) != 2:
        raise ValueError(f"Expected a 2D array, got an array-like of shape {shape}.")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"Found array with shape {shape}; at least one row and one "
                         "feature are required.")
    kind = np.dtype(X.dtype).kind
    if kind not in "biuf":
        raise ValueError(f"X must hold numbers (bool, integer or float), got dtype "
                         f"{np.dtype(X.dtype)}.")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"X has {shape[1]} features, but this estimator is expecting "
                         f"{n_features} features as input.")


def read(X: object, rows: slice | np.ndarray) -> np.ndarray:
    """``X[rows]`` as a float64 array (``rows``: a slice or a sorted index array)."""
    return np.asarray(X[rows], dtype=np.float64)  # dask arrays compute here, chunk-sized


def chunk_rows(n_features: int) -> int:
    """Rows per chunk of a streaming pass."""
    return max(1, CHUNK_VALUES // n_features)


@dataclass
class Moments:
    """Per-feature count, mean, variance, minimum and maximum of a streaming pass."""

    n: int
    mean: np.ndarray
    var: np.ndarray
    low: np.ndarray
    high: np.ndarray


def scan(X: object) -> Moments:
    """One pass over the rows of ``X`` in chunks (Chan's parallel update of the moments).

    Raises a ``ValueError`` at the first chunk that holds NaN or infinity.
    """
    n_rows, d = X.shape
    step = chunk_rows(d)
    n, mean, m2 = 0, np.zeros(d), np.zeros(d)
    low, high = np.full(d, np.inf), np.full(d, -np.inf)
    for start in range(0, n_rows, step):
        chunk = read(X, slice(start, min(start + step, n_rows)))
        if not np.isfinite(chunk).all():
            raise ValueError(f"Input X contains NaN or infinity (rows {start} to "
                             f"{start + len(chunk) - 1}).")
        k = len(chunk)
        c_mean = chunk.mean(axis=0)
        c_m2 = ((chunk - c_mean) ** 2).sum(axis=0)
        delta = c_mean - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + c_m2 + delta**2 * (n * k / total)
        n = total
        low, high = np.minimum(low, chunk.min(axis=0)), np.maximum(high, chunk.max(axis=0))
    return Moments(n, mean, m2 / n, low, high)


def standardization(moments: Moments, standardize: bool,
                    image: bool) -> tuple[np.ndarray, np.ndarray]:
    """``mean_`` and ``scale_`` from a streaming pass, as ``_base._standardization`` does."""
    d = len(moments.mean)
    if not standardize:
        return np.zeros(d), np.ones(d)
    if image:  # one mean and one scale for all pixels (equal counts per feature)
        mean = float(moments.mean.mean())
        var = float((moments.var + (moments.mean - mean) ** 2).mean())
        mean, scale = np.full(d, mean), np.full(d, math.sqrt(var))
    else:
        mean, scale = moments.mean.copy(), np.sqrt(moments.var)
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
        raise ValueError("X holds values too large to standardise in float64. Rescale X.")
    return mean, scale


def init_rows(X: object) -> np.ndarray:
    """At most :data:`INIT_ROWS` evenly spaced rows of ``X``, in float64."""
    n = X.shape[0]
    return read(X, slice(0, n, max(1, math.ceil(n / INIT_ROWS))))


class LazyInput:
    """A lazy training input, checked, with its streaming pass computed once on demand."""

    def __init__(self, X: object) -> None:
        self.X, self.shape = X, tuple(X.shape)
        self._moments: Moments | None = None

    @property
    def moments(self) -> Moments:
        """The :func:`scan` of ``X`` (one pass, on first use)."""
        if self._moments is None:
            self._moments = scan(self.X)
        return self._moments


class StandardizedRows:
    """The rows of a lazy ``X`` as :func:`skdcd._training.run` indexes a tensor.

    ``rows[index]`` reads the rows ``index`` (in sorted order, as HDF5 asks, then put back
    in the order asked for), standardises them with ``mean`` and ``scale`` and returns a
    float32 tensor on ``device``: the minibatches of an in-memory ``X``.
    """

    def __init__(self, X: object, mean: np.ndarray, scale: np.ndarray,
                 device: torch.device) -> None:
        self.X, self.mean, self.scale, self.device = X, mean, scale, device
        self.shape = tuple(X.shape)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu().numpy()
        order = np.argsort(index)
        rows = np.empty((len(index), self.shape[1]))
        rows[order] = read(self.X, index[order])  # back in the order asked for
        with np.errstate(over="ignore"):
            Z = (rows - self.mean) / self.scale
        if not np.isfinite(Z).all():  # the scan saw these rows finite: X changed since
            raise ValueError("X changed during the fit: a row read for training holds NaN "
                             "or infinity, or overflows once standardised.")
        return torch.as_tensor(Z, dtype=torch.float32).to(self.device)
