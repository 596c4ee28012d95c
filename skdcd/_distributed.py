"""Data-parallel fits with ``torch.distributed``: every process takes a shard of each minibatch.

A fit runs data-parallel when it is called inside an initialised default process group
(``torchrun``, or :func:`launch`): every process passes the same ``X``, starts from rank
0's seed and weights, draws the same shuffle and reads its own shard of each global
minibatch of ``batch_size × world_size`` rows; the gradients are all-reduced (weighted by
shard size, so that they are those of the whole minibatch) before every optimizer step, and
every process ends with the same weights. Negatives are drawn from each process's own
random stream. Gloo on the CPU, NCCL on CUDA.

The gradients are all-reduced by hand, one flattened ``all_reduce`` per step, rather than
through ``DistributedDataParallel``: the objectives call the network several times per
step (positives, negatives, the well guard, gradients with respect to inputs inside the
samplers), which DDP's reducer supports only with unused-parameter detection and buffer
broadcasts at every call.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from skdcd._utils import cpu_count

TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer fails
LEAVE_TIMEOUT = datetime.timedelta(hours=6)  # rank 0 may still estimate log Z and save


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    """Where collectives of the default group exchange tensors (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank."""
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def broadcast_parameters(net: torch.nn.Module) -> None:
    """Every rank takes rank 0's weights and buffers (in place)."""
    for tensor in [*net.parameters(), *net.buffers()]:
        moved = tensor.data.to(_device())
        dist.broadcast(moved, src=0)
        tensor.data.copy_(moved)


def check_same(values: np.ndarray, what: str) -> None:
    """Raise a ``ValueError`` on every rank unless ``values`` are equal on all ranks."""
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64).ravel(), device=_device())
    low, high = tensor.clone(), tensor.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise ValueError(f"The processes of a distributed fit must pass the same X and "
                         f"settings; {what} differ between them.")


def start(net: torch.nn.Module, n: int, generator: torch.Generator) -> torch.Generator:
    """Start a data-parallel run on ``n`` rows: rank 0's weights everywhere.

    Returns this rank's generator for negatives; ``generator`` (the shuffle) stays shared.
    """
    from skdcd._utils import seeded_generator

    rank, size = world()
    if n < size:
        raise ValueError(f"A distributed fit over {size} processes needs at least {size} "
                         f"rows, got {n}.")
    broadcast_parameters(net)  # one start, whatever each rank built
    return seeded_generator((generator.initial_seed(), rank), generator.device)


def parts(perm: torch.Tensor, n_batches: int) -> list[tuple[torch.Tensor, float]]:
    """The rows of each minibatch of an epoch's shuffle ``perm`` that this rank takes, weighted.

    Minibatches of near-equal size, split into near-equal parts (none empty while
    ``n_batches <= len(perm) // world_size``); the weight, a part's share of its minibatch,
    makes the ranks' weighted losses sum to the minibatch's mean.
    """
    rank, size = world()
    out = []
    for batch in torch.tensor_split(perm, n_batches):
        part = torch.tensor_split(batch, size)[rank]
        out.append((part, len(part) / len(batch)))
    return out


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a scalar tensor."""
    total = value.detach().to(_device(), torch.float64).reshape(1).clone()
    dist.all_reduce(total)
    return total


def all_reduce_gradients(net: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks (missing gradients count as zero)."""
    params = list(net.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_device())
    dist.all_reduce(flat)
    flat = flat.to(params[0].device)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable[..., Any], nproc: int, port: int, backend: str,
            args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    if "OMP_NUM_THREADS" not in os.environ:  # the cores shared out, as joblib's workers do
        torch.set_num_threads(max(1, cpu_count() // nproc))
    dist.init_process_group(backend, rank=rank, world_size=nproc, timeout=TIMEOUT)
    run_and_leave(fn, *args)


def run_and_leave(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in an initialised process group, then leave it with every rank.

    After a successful Gloo run the ranks meet at a barrier before the group is destroyed:
    a Gloo process whose peers have already torn their connections down can abort
    (SIGABRT) in its own teardown. The barrier waits up to ``LEAVE_TIMEOUT`` for rank 0's
    work after the fit (log Z, saving); NCCL's barrier would be bound by ``TIMEOUT``, so
    NCCL ranks leave at once, as before. After a failure the group is destroyed at once
    (the launcher stops the peers, or they fail at their next collective).
    """
    try:
        fn(*args)
    except BaseException:
        dist.destroy_process_group()
        raise
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=LEAVE_TIMEOUT)
    dist.destroy_process_group()


def launch(fn: Callable[..., Any], nproc: int, args: tuple = (), *,
           backend: str | None = None) -> None:
    """Run ``fn(*args)`` in ``nproc`` new processes that form one process group.

    ``backend``: ``"nccl"`` (one GPU per process) or ``"gloo"``; by default NCCL when
    CUDA has at least ``nproc`` devices, else Gloo. ``fn`` must be importable (it is
    pickled by reference). If a process fails or dies, the others are stopped and a
    ``RuntimeError`` names the rank and its error.
    """
    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if torch.cuda.device_count() >= nproc and dist.is_nccl_available() \
            else "gloo"
    try:
        mp.start_processes(_worker, args=(fn, nproc, _free_port(), backend, args),
                           nprocs=nproc, join=True, start_method="spawn")
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1]
        raise RuntimeError(f"process {exc.error_index} of {nproc} failed ({last}); the "
                           "others were stopped.") from None
    except mp.ProcessExitedException as exc:
        raise RuntimeError(f"process {exc.error_index} of {nproc} died (exit code "
                           f"{exc.exit_code}); the others were stopped.") from None
