"""Langevin MCMC on energies ``U``: the building blocks of :mod:`skdcd.samplers`.

Pure functions on tensors, re-exported (and documented) as ``skdcd.samplers.*``.
"""

from __future__ import annotations

import torch

from skdcd.diffusion import EnergyFn

TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance rate (Roberts & Rosenthal, 1998)


def energy_and_grad(energy_fn: EnergyFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U(x)`` (shape ``(n,)``) and ``∇U(x)`` (shape ``(n, d)``), both detached.

    Only ``x`` is differentiated, so no gradient reaches network parameters.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    >>> energy, grad = energy_and_grad(energy_fn, x)
    >>> energy
    tensor([2.5000, 0.5000])
    >>> torch.equal(grad, x), grad.requires_grad  # ∇(‖x‖² / 2) = x, detached
    (True, False)
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = energy_fn(x)
        grad = None
        if energy.requires_grad:  # else an energy constant in x
            (grad,) = torch.autograd.grad(energy.sum(), x, allow_unused=True)
    return energy.detach(), torch.zeros_like(x) if grad is None else grad.detach()


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ula(
    energy_fn: EnergyFn, x: torch.Tensor, *, n_steps: int, step_size: float | torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Unadjusted Langevin algorithm: ``x ← x - η ∇U(x) + sqrt(2η) ξ``.

    The chain targets ``exp(-U)`` up to an ``O(η)`` bias; there is no accept/reject step.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)  # standard normal target
    >>> g = torch.Generator().manual_seed(0)
    >>> x = ula(energy_fn, torch.full((2000, 2), 3.0), n_steps=200, step_size=0.05,
    ...         generator=g)
    >>> x.shape
    torch.Size([2000, 2])
    >>> bool(abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1)
    True
    """
    x = x.detach()
    noise_scale = torch.sqrt(2.0 * torch.as_tensor(step_size, dtype=x.dtype, device=x.device))
    for _ in range(n_steps):
        _, grad = energy_and_grad(energy_fn, x)
        x = x - step_size * grad + noise_scale * _randn_like(x, generator)
    return x


def mala_step(
    energy_fn: EnergyFn, x: torch.Tensor, energy: torch.Tensor, grad: torch.Tensor,
    step_size: float | torch.Tensor, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Metropolis-adjusted Langevin step (Roberts & Tweedie, 1996).

    Proposal ``x' = x - η ∇U(x) + sqrt(2η) ξ``, accepted with probability
    ``min(1, exp(U(x) - U(x')) q(x | x') / q(x' | x))``, where
    ``log q(x' | x) = -‖x' - x + η ∇U(x)‖² / (4η)``.

    Returns
    -------
    x, energy, grad : torch.Tensor
        The new state, its energy and gradient.
    accepted : torch.Tensor
        Boolean, shape ``(n,)``.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.zeros(4, 2)
    >>> energy, grad = energy_and_grad(energy_fn, x)
    >>> x, energy, grad, accepted = mala_step(energy_fn, x, energy, grad, 0.1, g)
    >>> x.shape, accepted.shape, accepted.dtype
    (torch.Size([4, 2]), torch.Size([4]), torch.bool)
    >>> bool(torch.allclose(energy, energy_fn(x)))  # the state carries its own energy
    True
    """
    step = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    proposal = x - step * grad + torch.sqrt(2.0 * step) * _randn_like(x, generator)
    energy_new, grad_new = energy_and_grad(energy_fn, proposal)
    step_rows = step.reshape(-1) if step.ndim else step  # (n,) or scalar

    def log_q(to: torch.Tensor, frm: torch.Tensor, grad_frm: torch.Tensor) -> torch.Tensor:
        return -(to - frm + step * grad_frm).pow(2).sum(dim=1) / (4.0 * step_rows)

    log_accept = (energy - energy_new + log_q(x, proposal, grad_new)
                  - log_q(proposal, x, grad))
    u = torch.rand(log_accept.shape, generator=generator, device=x.device, dtype=x.dtype)
    accepted = torch.log(u) < log_accept  # NaN proposals are rejected
    keep = accepted.unsqueeze(1)
    return (torch.where(keep, proposal, x), torch.where(accepted, energy_new, energy),
            torch.where(keep, grad_new, grad), accepted)


def mala(
    energy_fn: EnergyFn, x: torch.Tensor, *, n_steps: int, step_size: float | torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Metropolis-adjusted Langevin algorithm: :func:`mala_step` repeated ``n_steps`` times.

    Exact for ``exp(-U)`` in the limit of many steps, for any step size.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)  # standard normal target
    >>> g = torch.Generator().manual_seed(0)
    >>> x = mala(energy_fn, torch.full((2000, 2), 3.0), n_steps=100, step_size=0.5,
    ...          generator=g)
    >>> x.shape
    torch.Size([2000, 2])
    >>> bool(abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1)
    True
    """
    x = x.detach()
    energy, grad = energy_and_grad(energy_fn, x)
    for _ in range(n_steps):
        x, energy, grad, _ = mala_step(energy_fn, x, energy, grad, step_size, generator)
    return x


def adapt_step_size(step_size: torch.Tensor, acceptance: torch.Tensor) -> torch.Tensor:
    """Robbins–Monro style update toward :data:`TARGET_ACCEPTANCE` (works per chain too).

    Examples
    --------
    >>> import torch
    >>> step = torch.tensor(0.1)
    >>> bool(adapt_step_size(step, torch.tensor(0.9)) > step)  # accepts too often: grow
    True
    >>> bool(adapt_step_size(step, torch.tensor(0.1)) < step)  # too rarely: shrink
    True
    >>> bool(torch.isclose(adapt_step_size(step, torch.tensor(TARGET_ACCEPTANCE)), step))
    True
    """
    return step_size * torch.exp(2.0 * (acceptance - TARGET_ACCEPTANCE))


def _adaptive_mala_step(
    energy_fn: EnergyFn, x: torch.Tensor, energy: torch.Tensor, grad: torch.Tensor,
    step_size: torch.Tensor, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mala_step`, then :func:`adapt_step_size` per chain (step ``(n, 1)``) or not."""
    x, energy, grad, accepted = mala_step(energy_fn, x, energy, grad, step_size, generator)
    rate = accepted.to(x.dtype)
    step_size = adapt_step_size(step_size, rate.unsqueeze(1) if step_size.ndim else rate.mean())
    return x, energy, grad, step_size


def adaptive_mala(
    energy_fn: EnergyFn, x: torch.Tensor, *, n_steps: int, step_size: torch.Tensor,
    generator: torch.Generator, burn_in: int | None = None,
) -> torch.Tensor:
    """MALA whose step adapts toward :data:`TARGET_ACCEPTANCE`.

    ``step_size`` is one step for all chains (a scalar tensor) or one per chain (``(n, 1)``).
    With ``burn_in=None`` the step adapts throughout and the last state is returned; else it
    adapts during the first ``burn_in`` steps, and the running mean of the states after
    them is returned (a posterior-mean estimate).

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * (x - 1).pow(2).sum(dim=1)  # N(1, I)
    >>> mean = adaptive_mala(energy_fn, torch.zeros(500, 2), n_steps=400,
    ...                      step_size=torch.full((500, 1), 0.1),
    ...                      generator=torch.Generator().manual_seed(0), burn_in=100)
    >>> bool(torch.allclose(mean.mean(dim=0), torch.ones(2), atol=0.05))
    True
    """
    x = x.detach()
    energy, grad = energy_and_grad(energy_fn, x)
    n_adapt = n_steps if burn_in is None else burn_in
    mean = torch.zeros_like(x)
    for k in range(n_steps):
        if k < n_adapt:
            x, energy, grad, step_size = _adaptive_mala_step(energy_fn, x, energy, grad,
                                                             step_size, generator)
        else:
            x, energy, grad, _ = mala_step(energy_fn, x, energy, grad, step_size, generator)
            # a running mean: a sum of rows near the float64 limit would overflow
            mean += (x - mean) / (k - n_adapt + 1)
    return x if burn_in is None else mean


def tune_mala_step(energy_fn: EnergyFn, x: torch.Tensor, step_size: float,
                   generator: torch.Generator, n_rounds: int = 20) -> torch.Tensor:
    """One MALA step for the states ``x``, adapted on ``n_rounds`` moves that are discarded.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)  # N(0, I) in 100 dimensions
    >>> g = torch.Generator().manual_seed(0)
    >>> bool(tune_mala_step(energy_fn, torch.randn(256, 100, generator=g), 1.0, g) < 0.5)
    True
    """
    step = torch.tensor(float(step_size), dtype=x.dtype, device=x.device)
    energy, grad = energy_and_grad(energy_fn, x)
    for _ in range(n_rounds):
        _, _, _, step = _adaptive_mala_step(energy_fn, x, energy, grad, step, generator)
    return step
