"""Small helpers shared by the estimator modules: seeded generators and chunked loops."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from sklearn.utils import check_random_state

Out = TypeVar("Out", np.ndarray, torch.Tensor)


def seeded_generator(entropy: tuple[int, ...], device: torch.device) -> torch.Generator:
    """A torch generator whose seed is derived from ``entropy`` (reproducible, independent)."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % (2**63))
    return generator


def generator_from_random_state(random_state, device: torch.device) -> torch.Generator:
    """A torch generator seeded from a scikit-learn ``random_state`` (None, int, RandomState)."""
    rng = check_random_state(random_state)
    return seeded_generator((int(rng.randint(np.iinfo(np.int32).max)),), device)


def fill_in_chunks(out: Out, batch_size: int, chunk: Callable[[int, int], object]) -> Out:
    """Fill ``out[start:stop] = chunk(start, stop)`` over its rows, ``batch_size`` at a time.

    Memory then stays flat in the number of rows, and each chunk's result goes into the
    preallocated ``out`` at once: small long-lived tensors between the chunks' large
    short-lived ones fragment glibc's heap.

    Examples
    --------
    >>> import numpy as np
    >>> fill_in_chunks(np.empty(5), 2, lambda start, stop: np.arange(start, stop) * 10.0)
    array([ 0., 10., 20., 30., 40.])
    """
    n = out.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        out[start:stop] = chunk(start, stop)
    return out


def fit_device(device: str | torch.device) -> torch.device:
    """The torch device of the ``device`` parameter, checked."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available.")
    return resolved


def runtime_device(device: str | torch.device) -> torch.device:
    """Device for inference; a CUDA-fitted model falls back to CPU where CUDA is absent."""
    try:
        return fit_device(device)
    except ValueError:
        warnings.warn(f"device={device!r} is unavailable here; computing on the CPU.",
                      RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
