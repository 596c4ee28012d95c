"""Samplers for energies ``U``: pure functions on tensors.

Every MCMC sampler shares one signature, ``sampler(energy_fn, x, *, n_steps, step_size,
generator) -> x``, where ``energy_fn`` maps ``(n, d)`` to ``(n,)`` and ``step_size`` is a
float or an ``(n, 1)`` tensor (one step per chain). The posterior samplers used by DCD
(:func:`importance_posterior`, :func:`laplace_posterior`) and the annealed sampler
(:func:`anneal`, shared by sequential Monte Carlo sampling and AIS) build on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skdcd.diffusion import EnergyFn

TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance rate (Roberts & Rosenthal, 1998)


def energy_and_grad(energy_fn: EnergyFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``U(x)`` (shape ``(n,)``) and ``∇U(x)`` (shape ``(n, d)``), both detached.

    Only ``x`` is differentiated, so no gradient reaches network parameters.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = energy_fn(x)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad.detach()


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ula(
    energy_fn: EnergyFn, x: torch.Tensor, *, n_steps: int, step_size: float | torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Unadjusted Langevin algorithm: ``x ← x - η ∇U(x) + sqrt(2η) ξ``.

    The chain targets ``exp(-U)`` up to an ``O(η)`` bias; there is no accept/reject step.
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
    """
    x = x.detach()
    energy, grad = energy_and_grad(energy_fn, x)
    for _ in range(n_steps):
        x, energy, grad, _ = mala_step(energy_fn, x, energy, grad, step_size, generator)
    return x


def adapt_step_size(step_size: torch.Tensor, acceptance: torch.Tensor) -> torch.Tensor:
    """Robbins–Monro style update toward :data:`TARGET_ACCEPTANCE` (works per chain too)."""
    return step_size * torch.exp(2.0 * (acceptance - TARGET_ACCEPTANCE))


def gaussian_proposals(
    x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, n_proposals: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Proposals ``x'_j = (x_t + σ ξ_j) / α`` for the posterior ``q(x' | x_t)``, ``(n, M, d)``.

    They follow the Gaussian factor of ``q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²))``
    exactly, so their self-normalised importance weights are ``w_j ∝ exp(-E(x'_j))``
    (:func:`importance_weights`; the estimator of Energy Discrepancy).
    """
    n, d = x_t.shape
    noise = torch.randn((n, n_proposals, d), generator=generator, device=x_t.device,
                        dtype=x_t.dtype)
    return (x_t.unsqueeze(1) + sigma.unsqueeze(1) * noise) / alpha.unsqueeze(1)  # (n, M, d)


def importance_weights(energies: torch.Tensor) -> torch.Tensor:
    """Self-normalised weights ``softmax(-E)`` along the last axis, detached.

    NaN energies get zero weight; a row whose energies are all infinite gets uniform
    weights rather than NaN.
    """
    log_w = torch.nan_to_num(-energies.detach(), nan=-torch.inf)
    log_w = torch.where(torch.isinf(log_w).all(dim=-1, keepdim=True), 0.0, log_w)
    return torch.softmax(log_w, dim=-1)


def importance_posterior(
    energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
    n_proposals: int, generator: torch.Generator,
) -> torch.Tensor:
    """MCMC-free posterior draw by sampling importance resampling.

    One of ``n_proposals`` :func:`gaussian_proposals` is resampled per row with its
    :func:`importance_weights`; its gradient is an unbiased estimate of the weighted sum
    ``Σ_j w_j ∇E(x'_j)``.

    Returns
    -------
    torch.Tensor
        Shape ``(n, d)``, detached.
    """
    n, d = x_t.shape
    proposals = gaussian_proposals(x_t, alpha, sigma, n_proposals=n_proposals,
                                   generator=generator)  # (n, M, d)
    with torch.no_grad():
        weights = importance_weights(energy_fn(proposals.reshape(n * n_proposals, d))
                                     .reshape(n, n_proposals))
    choice = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (n,)
    return proposals[torch.arange(n, device=x_t.device), choice]


def laplace_posterior(
    energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
    generator: torch.Generator,
) -> torch.Tensor:
    """One-step posterior draw from the Laplace (linearised-energy) approximation.

    Linearising ``E`` at ``m = x_t / α`` makes ``q(x' | x_t)`` Gaussian with mean
    ``m - (σ²/α²) ∇E(m)`` and covariance ``(σ²/α²) I``; exact as ``σ → 0``.
    """
    mean = x_t / alpha
    _, grad = energy_and_grad(energy_fn, mean)
    scale = sigma / alpha
    return mean - scale**2 * grad + scale * _randn_like(mean, generator)


@dataclass
class AnnealResult:
    """Output of :func:`anneal`.

    Attributes
    ----------
    x : torch.Tensor
        Final particles, shape ``(n, d)``.
    log_weights : torch.Tensor
        Log importance weights accumulated since the last resampling, shape ``(n,)``.
    log_normalizer : float
        Estimate of ``log ∫ exp(-E)`` (the base density is normalised).
    """

    x: torch.Tensor
    log_weights: torch.Tensor
    log_normalizer: float


def sigmoid_schedule(n_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures ``0 = β_0 < … < β_K = 1`` on a sigmoid curve (Grosse et al.).

    Denser at both ends, where the annealed density changes fastest.
    """
    s = torch.sigmoid(torch.linspace(-sharpness, sharpness, n_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _logmeanexp(v: torch.Tensor) -> float:
    return float(torch.logsumexp(v, dim=0) - math.log(v.numel()))


def systematic_resample(log_weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of a systematic resampling (lowest variance of the standard schemes)."""
    n = log_weights.numel()
    w = torch.softmax(log_weights.double(), dim=0)
    cdf = torch.cumsum(w, dim=0)
    cdf[-1] = 1.0
    u0 = torch.rand((), generator=generator, device=w.device, dtype=w.dtype)
    points = (u0 + torch.arange(n, device=w.device, dtype=w.dtype)) / n
    return torch.searchsorted(cdf, points).clamp_(max=n - 1)


def anneal(
    energy_fn: EnergyFn, base_mean: torch.Tensor, base_std: torch.Tensor, *, n_particles: int,
    n_steps: int, step_size: float, generator: torch.Generator, resample: bool,
    ess_threshold: float = 0.5,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> AnnealResult:
    """Anneal from a Gaussian base to ``exp(-E)`` along ``base^{1-β} exp(-βE)``.

    With ``resample=False`` this is annealed importance sampling (Neal, 2001); with
    ``resample=True`` particles are resampled systematically whenever the effective sample
    size falls below ``ess_threshold · n`` (sequential Monte Carlo, Del Moral et al., 2006),
    which keeps the mass of each mode right where plain MCMC would get stuck. Each
    temperature applies one MALA step whose size adapts to an acceptance rate near 0.57.

    Parameters
    ----------
    energy_fn : callable
        ``E``, mapping ``(n, d)`` to ``(n,)``.
    base_mean, base_std : torch.Tensor
        Diagonal Gaussian base, shape ``(d,)`` each.
    n_particles, n_steps : int
        Number of particles and of temperatures.
    step_size : float
        Initial MALA step.
    generator : torch.Generator
        Source of randomness.
    resample : bool
        SMC (True) or AIS (False).
    ess_threshold : float
        Fraction of ``n`` below which SMC resamples.
    callback : callable, optional
        Called as ``callback(k, x)`` after each temperature.

    Returns
    -------
    AnnealResult
    """
    d = base_mean.numel()
    device, dtype = base_mean.device, base_mean.dtype
    betas = sigmoid_schedule(n_steps).to(device=device, dtype=dtype)

    def log_base(x: torch.Tensor) -> torch.Tensor:
        z = (x - base_mean) / base_std
        return (-0.5 * z.pow(2).sum(dim=1) - torch.log(base_std).sum()
                - 0.5 * d * math.log(2 * math.pi))

    x = base_mean + base_std * torch.randn((n_particles, d), generator=generator,
                                           device=device, dtype=dtype)
    log_w = torch.zeros(n_particles, device=device, dtype=dtype)
    log_normalizer = 0.0
    step = torch.tensor(float(step_size), device=device, dtype=dtype)
    for k in range(1, n_steps + 1):
        beta_prev, beta = betas[k - 1], betas[k]
        energy, grad = energy_and_grad(energy_fn, x)  # E and ∇E serve weight and move
        base = log_base(x)
        log_w = torch.nan_to_num(log_w + (beta - beta_prev) * (-energy - base), nan=-torch.inf)
        if resample:
            ess = 1.0 / torch.softmax(log_w, dim=0).pow(2).sum()
            if ess < ess_threshold * n_particles:
                log_normalizer += _logmeanexp(log_w)
                idx = systematic_resample(log_w, generator)
                x, energy, grad, base = x[idx], energy[idx], grad[idx], base[idx]
                log_w = torch.zeros_like(log_w)

        def tempered(y: torch.Tensor, beta: torch.Tensor = beta) -> torch.Tensor:
            return beta * energy_fn(y) - (1.0 - beta) * log_base(y)

        grad_base = -(x - base_mean) / base_std**2  # ∇ log_base
        x, _, _, accepted = mala_step(tempered, x, beta * energy - (1.0 - beta) * base,
                                      beta * grad - (1.0 - beta) * grad_base, step, generator)
        step = adapt_step_size(step, accepted.to(dtype).mean())
        if callback is not None:
            callback(k, x)
    return AnnealResult(x=x, log_weights=log_w, log_normalizer=log_normalizer + _logmeanexp(log_w))
