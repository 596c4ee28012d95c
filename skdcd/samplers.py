"""Samplers for energies ``U``: pure functions on tensors.

Every MCMC sampler shares one signature, ``sampler(energy_fn, x, *, n_steps, step_size,
generator) -> x``, where ``energy_fn`` maps ``(n, d)`` to ``(n,)`` and ``step_size`` is a
float or an ``(n, 1)`` tensor (one step per chain). The Langevin building blocks
(:func:`ula`, :func:`mala_step`, :func:`mala`, :func:`adapt_step_size`) and one adaptive
MALA loop (:func:`adaptive_mala`, with :func:`tune_mala_step`), whose step also serves
:func:`anneal` and :func:`recovery_sample`, live in ``skdcd._mcmc`` and are documented
here. The posterior samplers used by DCD (:func:`laplace_proposals` with
:func:`importance_weights`, :func:`importance_posterior`, :func:`laplace_posterior`), the
annealed sampler (:func:`anneal`, shared by sequential Monte Carlo sampling and AIS) and
the recovery sampler of noise-conditional energies (:func:`recovery_sample`) build on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from skdcd._mcmc import (
    TARGET_ACCEPTANCE,
    _adaptive_mala_step,
    _randn_like,
    adapt_step_size,
    adaptive_mala,
    energy_and_grad,
    mala,
    mala_step,
    tune_mala_step,
    ula,
)
from skdcd.diffusion import EnergyFn

__all__ = [
    "TARGET_ACCEPTANCE", "AnnealResult", "adapt_step_size", "adaptive_mala", "anneal",
    "anneal_path",
    "energy_and_grad", "gaussian_proposals", "importance_posterior", "importance_weights",
    "laplace_posterior", "laplace_proposals", "mala", "mala_step", "recovery_sample",
    "sigmoid_schedule", "systematic_resample", "tune_mala_step", "ula",
]
for _f in (adapt_step_size, adaptive_mala, energy_and_grad, mala, mala_step, tune_mala_step, ula):
    _f.__module__ = __name__  # documented here, where users import them from

_DATA_CENTRES = 1024  # at most this many rows of data behind the data proposals


def gaussian_proposals(
    x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, n_proposals: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Proposals ``x'_j = (x_t + σ ξ_j) / α`` for the posterior ``q(x' | x_t)``, ``(n, M, d)``.

    They follow the Gaussian factor of ``q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²))``
    exactly, so their self-normalised importance weights are ``w_j ∝ exp(-E(x'_j))``
    (:func:`importance_weights`; the estimator of Energy Discrepancy).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x_t = torch.full((2, 2), 0.8)
    >>> alpha, sigma = torch.full((2, 1), 0.8), torch.full((2, 1), 0.6)
    >>> proposals = gaussian_proposals(x_t, alpha, sigma, n_proposals=4000, generator=g)
    >>> proposals.shape
    torch.Size([2, 4000, 2])
    >>> bool(torch.allclose(proposals.mean(dim=1), torch.ones(2, 2), atol=0.05))  # x_t / α
    True
    >>> bool(torch.allclose(proposals.std(dim=1), torch.full((2, 2), 0.75), atol=0.05))  # σ/α
    True
    """
    n, d = x_t.shape
    noise = torch.randn((n, n_proposals, d), generator=generator, device=x_t.device,
                        dtype=x_t.dtype)
    return (x_t.unsqueeze(1) + sigma.unsqueeze(1) * noise) / alpha.unsqueeze(1)  # (n, M, d)


def laplace_proposals(
    energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
    n_proposals: int, generator: torch.Generator, data: torch.Tensor | None = None,
    bandwidth: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals for ``q(x' | x_t)`` from the kernel, a Laplace fit and data, with their log ratio.

    Without ``data``, half of the proposals follow the posterior's Gaussian factor ``N(m, s² I)``
    (:func:`gaussian_proposals`; ``m = x_t / α``, ``s = σ / α``), half a Laplace fit of the
    posterior: a Newton step from ``m`` with ``h``, the curvature of ``E`` along its
    gradient, estimated by a finite difference of ``∇E`` over the Laplace step
    ``s² ∇E(m)`` (:func:`laplace_posterior`). That fit is ``N(m - v ∇E(m), v I)`` with
    ``v = s² / (1 + s² h)``, exact for an isotropic quadratic energy.
    The first half keeps the weights safe where the fit is poor (a mixture proposal whose
    density never falls below half the kernel's).

    Where the posterior is narrower than the kernel, kernel proposals alone rarely land in
    it and their self-normalised weights are biased; the Laplace half lands there.

    Given ``data`` (the clean batch, ``(n_data, d)``; a random 1,024 of its rows if it has
    more), a third of the proposals instead come from the data's own posterior: a row
    ``x_i`` of ``data`` drawn with probability ``∝ N(x_t; α x_i, σ² I)``, plus
    ``N(0, bandwidth² I)``. Where ``σ`` reaches across several narrow modes, neither the
    kernel nor a Newton step from ``m`` finds them all, but the data lie in them
    (``tests/test_samplers.py`` measures both biases).

    Returns
    -------
    proposals : torch.Tensor
        Shape ``(n, M, d)``, detached.
    log_ratio : torch.Tensor
        Shape ``(n, M)``: ``log r(x'_j) - log N(x'_j; m, s² I)`` for the mixture density
        ``r``, so that the importance weights are ``softmax(-E(x'_j) - log_ratio_j)``
        (:func:`importance_weights`).

    Examples
    --------
    With ``E(x) = ‖x‖² / 2``, ``α = σ = 1`` and ``x_t = 2`` the posterior is
    ``N(1, I / 2)``, and the Laplace half proposes from it exactly:

    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> x_t, ones = torch.full((1000, 2), 2.0), torch.ones(1000, 1)
    >>> proposals, log_ratio = laplace_proposals(energy_fn, x_t, ones, ones, n_proposals=8,
    ...                                          generator=g)
    >>> proposals.shape, log_ratio.shape
    (torch.Size([1000, 8, 2]), torch.Size([1000, 8]))
    >>> fit = proposals[:, 4:].reshape(-1, 2)
    >>> bool(torch.allclose(fit.mean(dim=0), torch.ones(2), atol=0.02))
    True
    >>> bool(torch.allclose(fit.var(dim=0), torch.full((2,), 0.5), atol=0.02))
    True
    """
    n, d = x_t.shape
    centre, scale = x_t / alpha, sigma / alpha  # (n, d), (n, 1)
    var0 = scale.pow(2)
    _, grad = energy_and_grad(energy_fn, centre)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # beyond the envelope's box
    step = var0 * grad  # the Laplace step of the linearised energy (laplace_posterior)
    _, grad_step = energy_and_grad(energy_fn, centre - step)
    # E's curvature along the gradient, by a finite difference over that step; for a narrow
    # mode the step overshoots it, and the curvature shortens the step to Newton's
    along = (step * grad).sum(dim=1, keepdim=True)
    curvature = ((grad - grad_step) * grad).sum(dim=1, keepdim=True) / along.clamp_min(1e-30)
    curvature = torch.nan_to_num(torch.where(along > 0, curvature, 0.0), nan=0.0,
                                 posinf=0.0).clamp_min(0.0)  # (n, 1)
    var = var0 / (1 + var0 * curvature)  # (n, 1) the Laplace fit's variance; mean m - v ∇E
    n_data = n_proposals // 3 if data is not None else 0
    n_kernel = (n_proposals - n_data) // 2
    n_gauss = n_proposals - n_data  # n_kernel from the kernel, then the fit's
    # one draw for all parts, scaled in place; the Gaussian parts' squared distances to both
    # centres follow from the draws' norms and their projections on ∇E: no pass over the
    # (n, M, d) proposals per component, which cost more than the draws in 64-D
    z = torch.randn((n, n_proposals, d), generator=generator, device=x_t.device,
                    dtype=x_t.dtype)
    z2 = torch.linalg.vector_norm(z[:, :n_gauss], dim=2).square()  # (n, G) ‖ξ‖²
    zg = torch.bmm(z[:, :n_gauss], grad.unsqueeze(2)).squeeze(2)  # (n, G) ξ·∇E
    shift2 = var.pow(2) * grad.pow(2).sum(dim=1, keepdim=True)  # ‖v ∇E‖², the fit's shift
    fit_sd = var.sqrt()
    k, f = slice(0, n_kernel), slice(n_kernel, n_gauss)
    # kernel: x' = m + s ξ; fit: x' = m - v ∇E + √v ξ; squared distances to m and m - v ∇E
    to_centre = [var0 * z2[:, k], var * z2[:, f] - 2 * var * fit_sd * zg[:, f] + shift2]
    to_fit = [var0 * z2[:, k] + 2 * scale * var * zg[:, k] + shift2, var * z2[:, f]]
    z[:, k].mul_(scale.unsqueeze(1))
    z[:, f].mul_(fit_sd.unsqueeze(1)).sub_((var * grad).unsqueeze(1))
    z[:, :n_gauss].add_(centre.unsqueeze(1))
    if n_data:
        centres = _data_centres(x_t, alpha, sigma, data, n_data, generator)  # (n, n_data, d)
        z[:, n_gauss:].mul_(bandwidth).add_(centres)
        offset = z[:, n_gauss:] - centre.unsqueeze(1)  # (n, n_data, d)
        to_centre.append(offset.pow(2).sum(dim=2))
        to_fit.append(to_centre[-1] + 2 * var * torch.bmm(offset, grad.unsqueeze(2)).squeeze(2)
                      + shift2)
    proposals = z  # (n, M, d)
    # rounding can take a squared distance below 0; NaN (overflowing ∇E) has no density
    log_kernel = _log_isotropic_normal(torch.cat(to_centre, dim=1), var0, d)  # (n, M)
    logs = [(n_kernel, log_kernel),
            (n_gauss - n_kernel, _log_isotropic_normal(torch.cat(to_fit, dim=1), var, d))]
    if n_data:
        dist = torch.cdist(proposals, centres).pow(2)  # (n, M, n_data)
        log_data = (torch.logsumexp(-dist / (2 * bandwidth**2), dim=2)
                    - math.log(n_data) - d * math.log(bandwidth))
        logs.append((n_data, log_data))
    log_mixture = torch.logsumexp(torch.stack(
        [math.log(k / n_proposals) + log_r for k, log_r in logs if k]), dim=0)
    return proposals, log_mixture - log_kernel


def _data_centres(x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                  data: torch.Tensor, n_data: int, generator: torch.Generator) -> torch.Tensor:
    """``n_data`` rows of ``data`` per row of ``x_t``, drawn with ``π_i ∝ N(x_t; α x_i, σ² I)``.

    Given the draw, the data proposals follow an equal mixture around these centres, whose
    density costs ``n_data`` terms instead of one per row of data.
    """
    if data.shape[0] > _DATA_CENTRES:  # a random subset keeps the cost O(n), not O(n N)
        data = data[torch.randperm(data.shape[0], generator=generator,
                                   device=data.device)[:_DATA_CENTRES]]
    log_pi = -torch.cdist(x_t / alpha, data).pow(2) * (alpha / sigma).pow(2) / 2  # (n, N)
    # non-finite distances (data near the float limit): no row preferred over another
    log_pi = torch.nan_to_num(log_pi, nan=-torch.inf)
    log_pi = torch.where(torch.isinf(log_pi).all(dim=1, keepdim=True), 0.0, log_pi)
    pick = torch.multinomial(torch.softmax(log_pi, dim=1), n_data, replacement=True,
                             generator=generator)
    return data[pick]


def _log_isotropic_normal(dist2: torch.Tensor, var: torch.Tensor, d: int) -> torch.Tensor:
    """``log N`` up to ``-d/2 log 2π`` of points at squared distances ``dist2`` from the mean."""
    dist2 = torch.nan_to_num(dist2, nan=torch.inf).clamp_min(0.0)
    return -dist2 / (2 * var) - 0.5 * d * torch.log(var)


def importance_weights(energies: torch.Tensor) -> torch.Tensor:
    """Self-normalised weights ``softmax(-E)`` along the last axis, detached.

    NaN energies get zero weight; a row whose energies are all infinite gets uniform
    weights rather than NaN.

    Examples
    --------
    >>> import math, torch
    >>> energies = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)],
    ...                          [math.nan, 1.0], [math.inf, math.inf]])
    >>> weights = importance_weights(energies)
    >>> weights
    tensor([[0.5000, 0.5000],
            [0.7500, 0.2500],
            [0.0000, 1.0000],
            [0.5000, 0.5000]])
    >>> bool(torch.allclose(weights.sum(dim=1), torch.ones(4)))
    True
    """
    log_w = torch.nan_to_num(-energies.detach(), nan=-torch.inf)
    log_w = torch.where(torch.isinf(log_w).all(dim=-1, keepdim=True), 0.0, log_w)
    return torch.softmax(log_w, dim=-1)


def importance_posterior(
    energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
    n_proposals: int, generator: torch.Generator, data: torch.Tensor | None = None,
    bandwidth: float = 0.1,
) -> torch.Tensor:
    """MCMC-free posterior draw by sampling importance resampling.

    One of ``n_proposals`` :func:`laplace_proposals` is resampled per row with its
    :func:`importance_weights` (:func:`systematic_resample` with one draw); its gradient is
    an unbiased estimate of the weighted sum ``Σ_j w_j ∇E(x'_j)``. ``data`` and
    ``bandwidth`` are :func:`laplace_proposals`'.

    Returns
    -------
    torch.Tensor
        Shape ``(n, d)``, detached.

    Examples
    --------
    With ``E(x) = ‖x‖² / 2``, ``α = σ = 1`` and ``x_t = 2`` the posterior is
    ``N(1, I / 2)``:

    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> x_t, ones = torch.full((4000, 2), 2.0), torch.ones(4000, 1)
    >>> x = importance_posterior(energy_fn, x_t, ones, ones, n_proposals=64, generator=g)
    >>> x.shape
    torch.Size([4000, 2])
    >>> bool(torch.allclose(x.mean(dim=0), torch.ones(2), atol=0.1))
    True
    """
    n, d = x_t.shape
    proposals, log_ratio = laplace_proposals(energy_fn, x_t, alpha, sigma,
                                             n_proposals=n_proposals, generator=generator,
                                             data=data, bandwidth=bandwidth)
    with torch.no_grad():
        weights = importance_weights(energy_fn(proposals.reshape(n * n_proposals, d))
                                     .reshape(n, n_proposals) + log_ratio)
    choice = systematic_resample(weights.log(), generator, n_draws=1).squeeze(1)  # (n,)
    return proposals[torch.arange(n, device=x_t.device), choice]


def laplace_posterior(
    energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
    generator: torch.Generator,
) -> torch.Tensor:
    """One-step posterior draw from the Laplace (linearised-energy) approximation.

    Linearising ``E`` at ``m = x_t / α`` makes ``q(x' | x_t)`` Gaussian with mean
    ``m - (σ²/α²) ∇E(m)`` and covariance ``(σ²/α²) I``; exact as ``σ → 0``.

    Examples
    --------
    With ``E(x) = ‖x‖² / 2``, ``x_t = 1`` and ``σ = 0.1`` (VE) the mean is
    ``1 - σ² = 0.99``, close to the exact posterior mean ``1 / (1 + σ²)``:

    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = laplace_posterior(energy_fn, torch.ones(10000, 2), torch.ones(10000, 1),
    ...                       torch.full((10000, 1), 0.1), generator=g)
    >>> x.shape
    torch.Size([10000, 2])
    >>> bool(torch.allclose(x.mean(dim=0), torch.full((2,), 0.99), atol=0.01))
    True
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

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> result = anneal(energy_fn, torch.zeros(2), torch.ones(2), n_particles=64, n_steps=16,
    ...                 step_size=0.1, generator=torch.Generator().manual_seed(0),
    ...                 resample=False)
    >>> isinstance(result, AnnealResult), result.x.shape, result.log_weights.shape
    (True, torch.Size([64, 2]), torch.Size([64]))
    >>> isinstance(result.log_normalizer, float)
    True
    """

    x: torch.Tensor
    log_weights: torch.Tensor
    log_normalizer: float


def sigmoid_schedule(n_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures ``0 = β_0 < … < β_K = 1`` on a sigmoid curve (Grosse et al.).

    Denser at both ends, where the annealed density changes fastest.

    Examples
    --------
    >>> betas = sigmoid_schedule(8)
    >>> betas.shape, float(betas[0]), float(betas[-1])
    (torch.Size([9]), 0.0, 1.0)
    >>> bool((betas.diff() > 0).all())
    True
    """
    s = torch.sigmoid(torch.linspace(-sharpness, sharpness, n_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _logmeanexp(v: torch.Tensor) -> float:
    return float(torch.logsumexp(v, dim=0) - math.log(v.numel()))


def systematic_resample(log_weights: torch.Tensor, generator: torch.Generator,
                        n_draws: int | None = None) -> torch.Tensor:
    """Indices of a systematic resampling (lowest variance of the standard schemes).

    Resamples along the last axis, independently for every leading index: ``n_draws``
    indices (default: as many as there are weights) on a grid of spacing ``1 / n_draws``
    with one uniform offset per row, so that index ``i`` is drawn ``n_draws w_i`` times on
    average and ``⌊n_draws w_i⌋`` times at least.

    Examples
    --------
    Each particle is copied ``n w_i`` times, rounded up or down:

    >>> import torch
    >>> log_w = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0]))
    >>> idx = systematic_resample(log_w, torch.Generator().manual_seed(0))
    >>> torch.bincount(idx, minlength=4)
    tensor([2, 1, 1, 0])

    Rows are resampled separately:

    >>> log_w = torch.log(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]))
    >>> systematic_resample(log_w, torch.Generator().manual_seed(0), n_draws=2)
    tensor([[0, 0],
            [1, 2]])
    """
    n = log_weights.shape[-1]
    n_draws = n if n_draws is None else n_draws
    w = torch.softmax(log_weights.double(), dim=-1)
    cdf = torch.cumsum(w, dim=-1)
    cdf[..., -1] = 1.0
    u0 = torch.rand((*w.shape[:-1], 1), generator=generator, device=w.device, dtype=w.dtype)
    points = (u0 + torch.arange(n_draws, device=w.device, dtype=w.dtype)) / n_draws
    return torch.searchsorted(cdf, points.contiguous()).clamp_(max=n - 1)


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

    Examples
    --------
    Sequential Monte Carlo from a wide base to a standard normal, whose normaliser is
    ``log ∫ exp(-‖x‖² / 2) dx = log 2π`` in two dimensions:

    >>> import math, torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> result = anneal(energy_fn, torch.zeros(2), torch.full((2,), 2.0), n_particles=256,
    ...                 n_steps=32, step_size=0.1, generator=torch.Generator().manual_seed(0),
    ...                 resample=True)
    >>> result.x.shape
    torch.Size([256, 2])
    >>> abs(result.log_normalizer - math.log(2 * math.pi)) < 0.2
    True
    """
    d = base_mean.numel()

    def log_base(x: torch.Tensor) -> torch.Tensor:
        z = (x - base_mean) / base_std
        return (-0.5 * z.pow(2).sum(dim=1) - torch.log(base_std).sum()
                - 0.5 * d * math.log(2 * math.pi))

    def path_energy(x: torch.Tensor, beta: float) -> torch.Tensor:
        if beta == 0.0:  # the base alone: no energy, which may be inf far out
            return -log_base(x)
        return beta * energy_fn(x) - (1.0 - beta) * log_base(x)

    x = base_mean + base_std * torch.randn((n_particles, d), generator=generator,
                                           device=base_mean.device, dtype=base_mean.dtype)
    return anneal_path(path_energy, x, sigmoid_schedule(n_steps).tolist(),
                       step_size=step_size, generator=generator, resample=resample,
                       ess_threshold=ess_threshold, callback=callback)


def anneal_path(
    path_energy: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor,
    schedule: Sequence[float], *, step_size: float, generator: torch.Generator,
    resample: bool, ess_threshold: float = 0.5,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> AnnealResult:
    """Anneal along any path of energies ``U_t``, from ``t = schedule[0]`` to ``schedule[-1]``.

    ``x`` holds exact draws of the *normalised* density ``exp(-U_{t_0})``. At each next
    ``t_k`` the particles' log-weights gain ``U_{t_{k-1}}(x) - U_{t_k}(x)`` (annealed
    importance sampling, Neal 2001), then one adaptive MALA move targets ``exp(-U_{t_k})``;
    with ``resample=True`` particles are resampled whenever the effective sample size falls
    below ``ess_threshold · n`` (sequential Monte Carlo). The result's ``log_normalizer``
    estimates ``log ∫ exp(-U_{t_K})``.

    Parameters
    ----------
    path_energy : callable
        ``U(x, t)``, mapping ``(n, d)`` and a float to ``(n,)``.
    x : torch.Tensor
        Draws of ``exp(-U_{t_0})``, shape ``(n, d)``.
    schedule : sequence of float
        The values ``t_0 < t_1 < … < t_K``.
    step_size, generator, resample, ess_threshold, callback
        As in :func:`anneal`.

    Returns
    -------
    AnnealResult

    Examples
    --------
    From ``N(0, 4 I)`` to ``exp(-‖x‖²/2)`` along the widths ``2 - t``, in two dimensions
    (``log ∫ exp(-‖x‖²/2) = log 2π``):

    >>> import math, torch
    >>> def path_energy(x, t):  # N(0, (2 - t)² I), normalised only at t = 0
    ...     extra = math.log(2 * math.pi * 4) if t == 0 else 0.0
    ...     return x.pow(2).sum(dim=1) / (2 * (2 - t) ** 2) + extra
    >>> g = torch.Generator().manual_seed(0)
    >>> x = 2 * torch.randn(512, 2, generator=g)
    >>> result = anneal_path(path_energy, x, torch.linspace(0, 1, 33).tolist(),
    ...                      step_size=0.5, generator=g, resample=False)
    >>> abs(result.log_normalizer - math.log(2 * math.pi)) < 0.1
    True
    """
    n_particles, dtype = x.shape[0], x.dtype
    log_w = torch.zeros(n_particles, device=x.device, dtype=dtype)
    log_normalizer = 0.0
    step = torch.tensor(float(step_size), device=x.device, dtype=dtype)
    with torch.no_grad():
        energy_prev = path_energy(x, float(schedule[0]))
    for k in range(1, len(schedule)):
        def target(y: torch.Tensor, t: float = float(schedule[k])) -> torch.Tensor:
            return path_energy(y, t)

        energy, grad = energy_and_grad(target, x)  # serve the weight and the move
        log_w = torch.nan_to_num(log_w + energy_prev - energy, nan=-torch.inf)
        if resample:
            ess = 1.0 / torch.softmax(log_w, dim=0).pow(2).sum()
            if ess < ess_threshold * n_particles:
                log_normalizer += _logmeanexp(log_w)
                idx = systematic_resample(log_w, generator)
                x, energy, grad = x[idx], energy[idx], grad[idx]
                log_w = torch.zeros_like(log_w)
        x, energy_prev, _, step = _adaptive_mala_step(target, x, energy, grad, step, generator)
        if callback is not None:
            callback(k, x)
    return AnnealResult(x=x, log_weights=log_w, log_normalizer=log_normalizer + _logmeanexp(log_w))


def recovery_sample(
    energy_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
    sigmas: Sequence[float], *, n_steps: int, step_size: float, generator: torch.Generator,
    start_noise: Callable[..., torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Recovery sampling (Gao et al., 2021) down a variance-exploding noise ladder.

    ``x`` holds samples of the widest level ``σ_0 = sigmas[0]``. For each next level
    ``σ_{k+1} < σ_k`` the sample is drawn from the model posterior

        q(x_{k+1} | x_k) ∝ exp(-E(x_{k+1}, σ_{k+1}) - ‖x_k - x_{k+1}‖² / (2 δ²)),
        δ² = σ_k² - σ_{k+1}²,

    by ``n_steps`` MALA moves (one adaptive step size per chain, started at
    ``step_size · δ²``) from the Tweedie estimate ``x_k - δ² ∇E(x_k, σ_k)`` of the posterior
    mean, plus ``start_noise``. Each posterior is narrower than ``δ``, so few steps suffice
    once the chains start in its typical set; at its mean, a mode, MALA in many dimensions
    rejects most moves.

    Parameters
    ----------
    energy_fn : callable
        ``E(x, sigma)`` with ``x`` of shape ``(n, d)`` and ``sigma`` of shape ``(n, 1)``.
    x : torch.Tensor
        Samples at level ``sigmas[0]``, shape ``(n, d)``.
    sigmas : sequence of float
        Decreasing noise levels.
    n_steps : int
        MALA moves per level.
    step_size : float
        Initial MALA step as a fraction of ``δ²``.
    generator : torch.Generator
        Source of randomness.
    start_noise : callable, optional
        ``start_noise(y, sigma, delta, generator)`` → zero-mean draws of shape ``(n, d)``
        with about the spread of the posterior at level ``sigma`` (shape ``(n, 1)``) given
        the points ``y`` of the level ``delta`` above, e.g.
        :meth:`~skdcd.networks.EnvelopedEnergy.envelope_posterior_noise`. ``None``: start
        at the mean.
    callback : callable, optional
        Called as ``callback(k, x)`` after each level.

    Returns
    -------
    torch.Tensor
        Samples at level ``sigmas[-1]``, shape ``(n, d)``, detached.

    Examples
    --------
    For data ``N(0, I)`` the level-``σ`` energy is ``‖x‖² / (2 (1 + σ²))``; recovery from
    level 3 down to 0.01 gives back a standard normal:

    >>> import torch
    >>> energy_fn = lambda x, s: x.pow(2).sum(dim=1) / (2 * (1 + s.squeeze(1) ** 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> x = (1 + 3.0**2) ** 0.5 * torch.randn(4000, 2, generator=g)
    >>> x = recovery_sample(energy_fn, x, [3.0, 1.0, 0.3, 0.1, 0.01], n_steps=20,
    ...                     step_size=0.5, generator=g)
    >>> x.shape
    torch.Size([4000, 2])
    >>> bool(x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.05)
    True
    """
    x = x.detach()
    n = x.shape[0]
    for k in range(len(sigmas) - 1):
        hi = torch.full((n, 1), float(sigmas[k]), dtype=x.dtype, device=x.device)
        lo = torch.full((n, 1), float(sigmas[k + 1]), dtype=x.dtype, device=x.device)
        var = float(sigmas[k]) ** 2 - float(sigmas[k + 1]) ** 2  # δ²
        y = x

        def posterior(z: torch.Tensor, y: torch.Tensor = y, lo: torch.Tensor = lo,
                      var: float = var) -> torch.Tensor:
            return energy_fn(z, lo) + (y - z).pow(2).sum(dim=1) / (2.0 * var)

        _, grad_hi = energy_and_grad(lambda z, hi=hi: energy_fn(z, hi), y)
        x = y - var * grad_hi  # Tweedie: E[x_{k+1} | x_k] under the level-k model
        if start_noise is not None:
            x = x + start_noise(y, lo, torch.full_like(lo, math.sqrt(var)), generator)
        x = adaptive_mala(posterior, x, n_steps=n_steps, generator=generator,
                          step_size=torch.full((n, 1), step_size * var, dtype=x.dtype,
                                               device=x.device))
        if callback is not None:
            callback(k, x)
    return x
