"""Small helpers shared by the estimator modules: seeded generators, chunked loops, threads."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
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


_GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def global_rng(seed: int | None = None) -> Iterator[None]:
    """Run the block on a fork of torch's global generator (seeded if ``seed`` is given).

    torch initialises layers from its global generator. Forking leaves the caller's global
    state untouched, and the lock keeps fits in concurrent threads (a threaded Dask worker)
    from seeding the one global generator in between each other's draws.
    """
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


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


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _dask_worker_threads() -> int | None:
    """The number of task threads of the Dask worker running this code, else None.

    ``distributed`` is only looked at when something imported it already.
    """
    if "distributed" not in sys.modules:
        return None
    try:
        worker = sys.modules["distributed"].get_worker()
    except ValueError:  # not inside a worker's task
        return None
    state = getattr(worker, "state", worker)
    return int(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1))


def resolve_threads(n_threads: int | None) -> int:
    """The torch intra-op threads a call may use under the ``n_threads`` parameter.

    An integer is taken as it is. ``None`` keeps torch's current setting, which already
    honours ``OMP_NUM_THREADS``, threadpoolctl's limits and the limits joblib's loky workers
    set, except in a Dask worker's task, where it is at most the cores divided by the
    worker's task threads: a worker with several threads (or a threaded cluster) sets no
    limit of its own, so each task's torch would use every core.
    """
    if n_threads is not None:
        return int(n_threads)
    current = torch.get_num_threads()
    worker_threads = _dask_worker_threads()
    if worker_threads is None:
        return current
    return max(1, min(current, cpu_count() // max(1, worker_threads)))


@contextlib.contextmanager
def thread_budget(n_threads: int | None) -> Iterator[int]:
    """Run the block with torch limited to :func:`resolve_threads` threads.

    torch's OpenMP setting belongs to the calling thread (threads started later inherit the
    last one set), so each call restores its own thread's value on the way out, and
    concurrent fits in a threaded Dask worker do not undo each other's limits.
    """
    threads = resolve_threads(n_threads)
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


F = TypeVar("F", bound=Callable)


def uses_threads(method: F) -> F:
    """Run an estimator method under :func:`thread_budget` of its ``n_threads`` parameter."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with thread_budget(getattr(self, "n_threads", None)):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
