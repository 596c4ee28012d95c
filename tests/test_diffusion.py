"""Diffusion kernels and the closed-form DCD value."""

import numpy as np
import pytest
import torch

from skdcd import diffusion


def test_alpha_ve_and_vp():
    sigma = torch.tensor([0.1, 0.6])
    torch.testing.assert_close(diffusion.alpha_from_sigma(sigma, "ve"), torch.ones(2))
    torch.testing.assert_close(diffusion.alpha_from_sigma(sigma, "vp"), torch.sqrt(1 - sigma**2))
    with pytest.raises(ValueError):
        diffusion.alpha_from_sigma(sigma, "subvp")


def test_noise_levels_fixed_and_log_uniform():
    g = torch.Generator().manual_seed(0)
    fixed = diffusion.sample_noise_levels(5, 0.3, generator=g)
    assert fixed.shape == (5, 1) and (fixed == 0.3).all()
    ladder = diffusion.sample_noise_levels(20000, (0.01, 1.0), generator=g)
    assert ladder.min() >= 0.01 and ladder.max() <= 1.0
    # log-uniform: log10 σ is uniform on [-2, 0], so its mean is -1 and a quarter lies below -1.5
    log10 = torch.log10(ladder)
    assert abs(float(log10.mean()) + 1) < 0.02
    assert abs(float((log10 < -1.5).float().mean()) - 0.25) < 0.02


def test_noise_levels_mix_in_a_wide_fraction():
    g = torch.Generator().manual_seed(0)
    sigma = diffusion.sample_noise_levels(20000, 0.1, generator=g, wide=(0.25, 0.2, 1.0))
    wide = sigma != 0.1
    assert abs(float(wide.float().mean()) - 0.25) < 0.01
    assert sigma[wide].min() >= 0.2 and sigma[wide].max() <= 1.0
    # log-uniform on [0.2, 1]: half of the wide levels lie below sqrt(0.2)
    assert abs(float((sigma[wide] < 0.2**0.5).float().mean()) - 0.5) < 0.03


def test_perturb_has_kernel_moments():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((50000, 2), 2.0, dtype=torch.float64)
    alpha, sigma = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    x_t = diffusion.perturb(x0, alpha, sigma, generator=g)
    assert abs(float(x_t.mean()) - 1.6) < 0.01 and abs(float(x_t.std()) - 0.6) < 0.01


def test_posterior_energy_adds_the_gaussian_term():
    x, x_t = torch.ones(3, 2), torch.zeros(3, 2)
    sigma = torch.full((3, 1), 0.5)
    alpha = torch.ones(3, 1)
    e = diffusion.posterior_energy(lambda z: z.sum(1), x, x_t, alpha, sigma)
    torch.testing.assert_close(e, torch.full((3,), 2.0 + 2.0 / (2 * 0.25)))


def test_gaussian_dcd_is_a_divergence():
    rng = np.random.RandomState(0)
    for _ in range(20):
        a = rng.randn(3, 3)
        cov_p, cov_q = a @ a.T + 0.1 * np.eye(3), np.diag(np.exp(rng.randn(3)))
        mean_p, mean_q = rng.randn(3), rng.randn(3)
        for kind, sigma in [("ve", 2.0), ("vp", 0.7)]:
            value = diffusion.gaussian_dcd(mean_p, cov_p, mean_q, cov_q, sigma, kind)
            assert value > 0
            assert value < diffusion.gaussian_kl(mean_p, cov_p, mean_q, cov_q)
            assert diffusion.gaussian_dcd(mean_p, cov_p, mean_p, cov_p, sigma, kind) == (
                pytest.approx(0, abs=1e-12))


def test_gaussian_dcd_small_noise_limit_is_half_fisher_divergence():
    # DCD_σ / σ² → ½ E_p‖∇log p - ∇log q‖² as σ → 0 (score matching)
    mean_p, mean_q = np.array([0.0, 1.0]), np.array([0.5, -0.5])
    cov_p, cov_q = np.diag([1.0, 0.5]), np.diag([2.0, 1.0])
    prec_p, prec_q = np.linalg.inv(cov_p), np.linalg.inv(cov_q)
    # ∇log p - ∇log q = (P_q - P_p) x + P_p m_p - P_q m_q, averaged over x ~ p
    a, b = prec_q - prec_p, prec_p @ mean_p - prec_q @ mean_q
    fisher = np.trace(a @ cov_p @ a.T) + np.sum((a @ mean_p + b) ** 2)
    sigma = 1e-3
    value = diffusion.gaussian_dcd(mean_p, cov_p, mean_q, cov_q, sigma)
    assert value / sigma**2 == pytest.approx(0.5 * fisher, rel=1e-3)
