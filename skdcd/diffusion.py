"""Gaussian diffusion kernels ``k_t(x_t | x_0) = N(α x_0, σ² I)`` and the DCD posterior.

Two families, parametrised here by the noise standard deviation ``σ``:

* **VE** (variance exploding): ``α = 1``.
* **VP** (variance preserving): ``α = sqrt(1 - σ²)`` (``β = σ²`` in DDPM notation), so the
  marginal of standardised data keeps unit variance.

For an EBM ``q(x) ∝ exp(-E(x))`` the diffusion contrastive divergence
``DCD = KL(p‖q) - KL(k p ‖ k q)`` has gradient
``E_p[∇E(x)] - E[∇E(x')]`` with ``x'`` drawn from the model posterior

    q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²)),

whose energy is :func:`posterior_energy`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

EnergyFn = Callable[[torch.Tensor], torch.Tensor]

DIFFUSIONS = ("ve", "vp")


def alpha_from_sigma(sigma: torch.Tensor, diffusion: str) -> torch.Tensor:
    """Signal coefficient ``α`` of the kernel with noise std ``σ``.

    Parameters
    ----------
    sigma : torch.Tensor
        Noise standard deviations, any shape; VP needs ``σ < 1``.
    diffusion : {"ve", "vp"}
        Kernel family.

    Returns
    -------
    torch.Tensor
        ``1`` (VE) or ``sqrt(1 - σ²)`` (VP), shaped like ``sigma``.

    Examples
    --------
    >>> import torch
    >>> sigma = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    >>> alpha_from_sigma(sigma, "ve")
    tensor([1., 1., 1.], dtype=torch.float64)
    >>> alpha_from_sigma(sigma, "vp")
    tensor([1.0000, 0.8000, 0.6000], dtype=torch.float64)
    >>> bool(torch.allclose(alpha_from_sigma(sigma, "vp") ** 2 + sigma**2,
    ...                     torch.ones(3, dtype=torch.float64)))  # VP keeps unit variance
    True
    """
    if diffusion == "ve":
        return torch.ones_like(sigma)
    if diffusion == "vp":
        return torch.sqrt(1.0 - sigma**2)
    raise ValueError(f"diffusion must be one of {DIFFUSIONS}, got {diffusion!r}.")


def sample_noise_levels(
    n: int, noise_std: float | tuple[float, float], *, generator: torch.Generator,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    wide: tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Noise levels for a batch: one fixed ``σ``, or ``σ`` log-uniform in ``(low, high)``.

    A log-uniform ladder spends equal effort per octave of noise: small ``σ`` fits local
    shape (score-matching limit), large ``σ`` fits the relative weights of distant modes.
    ``wide=(fraction, low, high)`` redraws about that fraction of the rows log-uniformly in
    ``(low, high)``: most of the batch stays at ``noise_std``, where the detail is learnt,
    while the rest reaches from one mode to the next.

    Returns
    -------
    torch.Tensor
        Shape ``(n, 1)``, ready to broadcast against ``(n, d)`` data.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> sample_noise_levels(3, 0.1, generator=g).flatten()
    tensor([0.1000, 0.1000, 0.1000])
    >>> sigma = sample_noise_levels(1000, (0.01, 1.0), generator=g)
    >>> sigma.shape
    torch.Size([1000, 1])
    >>> bool((sigma > 0.0099).all() and (sigma < 1.0001).all())
    True
    >>> sigma = sample_noise_levels(1000, 0.1, generator=g, wide=(0.25, 0.2, 1.0))
    >>> wide = sigma > 0.1
    >>> abs(float(wide.float().mean()) - 0.25) < 0.05, bool((sigma[wide] >= 0.2).all())
    (True, True)
    """
    if np.isscalar(noise_std):
        sigma = torch.full((n, 1), float(noise_std), device=device, dtype=dtype)
    else:
        sigma = _log_uniform(n, *noise_std, generator=generator, device=device, dtype=dtype)
    if wide is None:
        return sigma
    fraction, low, high = wide
    redraw = torch.rand(n, 1, generator=generator, device=device, dtype=dtype) < fraction
    return torch.where(redraw, _log_uniform(n, low, high, generator=generator, device=device,
                                            dtype=dtype), sigma)  # (n, 1)


def _log_uniform(n, low, high, *, generator, device, dtype) -> torch.Tensor:
    u = torch.rand(n, 1, generator=generator, device=device, dtype=dtype)
    return torch.exp(np.log(float(low)) + u * (np.log(float(high)) - np.log(float(low))))


def perturb(
    x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``x_t ~ k_t(· | x_0) = N(α x_0, σ² I)``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x_t = perturb(torch.ones(10000, 2), torch.tensor(0.8), torch.tensor(0.6), generator=g)
    >>> x_t.shape
    torch.Size([10000, 2])
    >>> bool(torch.allclose(x_t.mean(dim=0), torch.tensor([0.8, 0.8]), atol=0.05))  # α x_0
    True
    >>> bool(torch.allclose(x_t.std(dim=0), torch.tensor([0.6, 0.6]), atol=0.05))  # σ
    True
    """
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return alpha * x0 + sigma * noise


def posterior_energy(
    energy_fn: EnergyFn, x: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Energy of the model posterior: ``E(x) + ‖x_t - α x‖² / (2σ²)``, shape ``(n,)``.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> sigma = torch.full((3, 1), 0.5)
    >>> alpha = alpha_from_sigma(sigma, "ve")
    >>> posterior_energy(energy_fn, torch.zeros(3, 2), torch.ones(3, 2), alpha, sigma)
    tensor([4., 4., 4.])
    """
    return energy_fn(x) + (x_t - alpha * x).pow(2).sum(dim=1) / (2.0 * sigma.squeeze(1) ** 2)


def gaussian_kl(mean_p: np.ndarray, cov_p: np.ndarray, mean_q: np.ndarray,
                cov_q: np.ndarray) -> float:
    """``KL(N(mean_p, cov_p) ‖ N(mean_q, cov_q))`` in nats.

    Examples
    --------
    >>> import numpy as np
    >>> gaussian_kl(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    0.0
    >>> round(gaussian_kl(np.zeros(1), np.eye(1), np.ones(1), np.eye(1)), 6)  # ‖Δμ‖² / 2
    0.5
    """
    d = len(mean_p)
    cov_q_inv = np.linalg.inv(cov_q)
    diff = mean_q - mean_p
    _, logdet_p = np.linalg.slogdet(cov_p)
    _, logdet_q = np.linalg.slogdet(cov_q)
    return 0.5 * float(
        np.trace(cov_q_inv @ cov_p) + diff @ cov_q_inv @ diff - d + logdet_q - logdet_p
    )


def gaussian_dcd(
    mean_p: np.ndarray, cov_p: np.ndarray, mean_q: np.ndarray, cov_q: np.ndarray,
    sigma: float, diffusion: str = "ve",
) -> float:
    """Exact ``DCD = KL(p‖q) - KL(k p ‖ k q)`` between two Gaussians.

    A Gaussian kernel maps ``N(m, S)`` to ``N(α m, α² S + σ² I)``, so both KL terms are
    closed-form. Used as the analytic oracle for the estimator's gradient.

    Examples
    --------
    >>> import numpy as np
    >>> I = np.eye(2)
    >>> round(gaussian_dcd(np.zeros(2), I, np.ones(2), 2 * I, sigma=0.5), 4)
    0.1054
    """
    alpha = float(alpha_from_sigma(torch.tensor(sigma, dtype=torch.float64), diffusion))
    eye = np.eye(len(mean_p))

    def diffuse(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return alpha * mean, alpha**2 * cov + sigma**2 * eye

    return gaussian_kl(mean_p, cov_p, mean_q, cov_q) - gaussian_kl(
        *diffuse(mean_p, cov_p), *diffuse(mean_q, cov_q)
    )
