"""The training loop, which knows nothing of DCD or CD.

Minibatches, the learning-rate schedule, autocast and compile, clipping and the divergence
rule; it steps on an objective, a callable ``(net, x_pos, generator) -> loss`` with
``checkpoint()`` and ``rollback()`` for what it updates besides the weights
(:class:`skdcd._objectives.ContrastiveObjective`).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from skdcd import _distributed as distributed
from skdcd._progress import ProgressBar

if TYPE_CHECKING:
    from skdcd._data import StandardizedRows
    from skdcd._objectives import ContrastiveObjective

logger = logging.getLogger("skdcd")


@dataclass
class FitState:
    """What a fit updates besides the weights, kept current step by step.

    An interrupted run leaves the counters of the steps it made.
    """

    t: int = 0  # optimisation steps run
    n_iter: int = 0  # epochs completed
    loss_curve: list[float] = field(default_factory=list)  # mean loss of each epoch
    optimizer_state: dict | None = None  # Adam's state, on the CPU


@dataclass
class Settings:
    """How :func:`run` steps."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    cosine: bool  # cosine decay to zero over the run, else constant
    max_grad_norm: float | None = None
    compile: bool = False
    mixed_precision: bool = False
    max_steps: int | None = None  # stop after this many steps, within an epoch if need be


def learning_rate(settings: Settings, step: int, total_steps: int) -> float:
    """The learning rate of ``step`` out of ``total_steps`` (cosine decay or constant)."""
    if not settings.cosine:
        return settings.learning_rate
    return 0.5 * settings.learning_rate * (1 + math.cos(math.pi * step / total_steps))


def run(net: torch.nn.Module, Z: torch.Tensor | StandardizedRows,
        objective: ContrastiveObjective,
        settings: Settings, state: FitState, generator: torch.Generator, *,
        name: str = "fit", verbose: int = 0) -> bool:
    """Train ``net`` in place on the rows of ``Z`` (on its device) for ``settings.n_epochs``.

    Each epoch visits the rows in a random order, in minibatches; with
    ``settings.max_steps`` the run stops after that many steps, and its last epoch may be
    incomplete. ``Z`` is a tensor or lazily read rows
    (:class:`skdcd._data.StandardizedRows`). A non-finite loss or gradient stops the run
    and rolls the weights, the optimizer, ``state.t`` and the objective's state
    (:meth:`~skdcd._objectives.ContrastiveObjective.rollback`) back to the start of that
    epoch. The network ends on the CPU in eval mode either way.

    Returns
    -------
    diverged : bool
        Whether the run stopped on a non-finite loss or gradient.
    """
    device = Z.device
    n = Z.shape[0]
    rank, size = distributed.world()  # data-parallel inside a process group
    batch_size, n_batches = minibatches(n, settings.batch_size, size)
    total_steps = min(settings.n_epochs * n_batches, settings.max_steps or math.inf)
    net.to(device).train()
    # the compiled module shares net's parameters; autocast leaves them in float32
    forward = torch.compile(net) if settings.compile else net
    # bfloat16 keeps float32's range, so no loss scaling and no spurious overflow that
    # the divergence rule would mistake for divergence
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=settings.mixed_precision)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    noise = distributed.start(net, n, generator) if size > 1 else generator
    bar = ProgressBar(total_steps, f"{name} fit", verbose if rank == 0 else 0)
    diverged = False
    try:
        for epoch in range(settings.n_epochs):
            # the batches of this epoch that the run makes (all but at max_steps)
            n_run = min(n_batches, total_steps - epoch * n_batches)
            if n_run <= 0:
                break
            snapshot = _checkpoint(net, optimizer, objective, state)
            epoch_loss = 0.0
            perm = torch.randperm(n, generator=generator, device=device)
            parts = (distributed.parts(perm, n_batches) if size > 1 else
                     [(perm[b * batch_size:(b + 1) * batch_size], None) for b in range(n_run)])
            for b in range(n_run):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(settings, epoch * n_batches + b, total_steps)
                index, weight = parts[b]
                loss_value = train_step(net, forward, objective, optimizer, Z[index], weight,
                                        noise, autocast, settings.max_grad_norm)
                diverged = loss_value is None
                if diverged:
                    _rollback(net, optimizer, objective, state, snapshot)
                    break
                epoch_loss += loss_value
                state.t += 1
                bar.update(1, f"epoch {state.n_iter + 1}, loss {epoch_loss / (b + 1):.4g}",
                           force=b == n_run - 1)
            if diverged:
                break
            state.loss_curve.append(epoch_loss / n_run)
            state.n_iter += 1
            logger.debug("%s epoch %d loss %.5f", name, state.n_iter, state.loss_curve[-1])
            if n_run < n_batches:  # max_steps reached within this epoch
                break
    finally:
        bar.close()
        # everything that is pickled stays on the CPU, so a CUDA-fitted model loads anywhere
        state.optimizer_state = _to_cpu(optimizer.state_dict())
        net.to("cpu").eval()
    return diverged


def minibatches(n: int, batch_size: int, world: int) -> tuple[int, int]:
    """The global minibatch size and the minibatches per epoch of ``n`` rows.

    Data-parallel over ``world`` processes: at most ``n // world`` minibatches, so that no
    process's part is empty.
    """
    batch = min(batch_size * world, n)
    return batch, min(math.ceil(n / batch), max(1, n // world))


def _checkpoint(net: torch.nn.Module, optimizer: torch.optim.Optimizer, objective,
                state: FitState) -> tuple:
    """The last state known to be finite (start of an epoch): divergence rolls back to it."""
    snapshot = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict()), state.t
    objective.checkpoint()
    return snapshot


def _rollback(net: torch.nn.Module, optimizer: torch.optim.Optimizer, objective,
              state: FitState, snapshot: tuple) -> None:
    """Back to :func:`_checkpoint`'s state: weights, optimizer, step count, objective."""
    net.load_state_dict(snapshot[0])
    optimizer.load_state_dict(snapshot[1])
    state.t = snapshot[2]
    objective.rollback()  # e.g. CD's replay buffer


def train_step(net: torch.nn.Module, forward, objective, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, weight: float | None, generator: torch.Generator, autocast,
               max_grad_norm: float | None) -> float | None:
    """One optimizer step on the minibatch ``x``: its loss, or None where it diverged.

    ``forward`` is the module the objective calls (``net`` itself or a compiled view);
    ``weight``, this rank's share of a distributed minibatch (None: not distributed).
    """
    with record_function("skdcd.step"):
        with autocast:
            loss = objective(forward, x, generator)
        if weight is not None:  # this rank's share of the minibatch's mean
            loss = loss * weight
            loss_value = float(distributed.all_reduce_sum(loss))
        else:
            loss_value = float(loss.detach())
        if not (math.isfinite(loss_value) and _step(net, optimizer, loss, max_grad_norm,
                                                    reduce=weight is not None)):
            return None
        return loss_value


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
          max_grad_norm: float | None, *, reduce: bool = False) -> bool:
    """Back-propagate ``loss`` and step, unless the gradient is not finite (then False).

    ``reduce``: sum the gradients over the ranks of the process group first.
    """
    optimizer.zero_grad(set_to_none=True)
    with record_function("skdcd.backward"):
        loss.backward()
    if reduce:
        distributed.all_reduce_gradients(net)
    with record_function("skdcd.optimizer"):
        if not math.isfinite(float(_grad_norm(net, max_grad_norm))):
            return False
        optimizer.step()
    return True


def _grad_norm(net: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
    """The global norm of ``net``'s gradients, which are clipped to ``max_norm`` if given."""
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: no rescaling pass by 1
        return torch.nn.utils.get_total_norm(
            [p.grad for p in net.parameters() if p.grad is not None])
    return torch.nn.utils.clip_grad_norm_(net.parameters(), math.inf)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
