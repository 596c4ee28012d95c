"""Samplers against Gaussian oracles."""

import math

import pytest
import torch

from skdcd import samplers


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64)


def gaussian_energy(x):
    return 0.5 * ((x - MEAN) / STD).pow(2).sum(dim=1)


def test_energy_and_grad_matches_analytic():
    x = torch.randn(5, 2, dtype=torch.float64)
    energy, grad = samplers.energy_and_grad(gaussian_energy, x)
    torch.testing.assert_close(energy, gaussian_energy(x))
    torch.testing.assert_close(grad, (x - MEAN) / STD**2)
    assert not energy.requires_grad and not grad.requires_grad


def test_mala_reproduces_gaussian_moments():
    x0 = torch.zeros(4000, 2, dtype=torch.float64)
    x = samplers.mala(gaussian_energy, x0, n_steps=400, step_size=0.1, generator=_gen())
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), STD, atol=0.08, rtol=0)


def test_ula_reproduces_gaussian_moments_up_to_its_step_bias():
    # ULA on N(m, s²) with step η has stationary variance s² / (1 - η / (2 s²))
    x0 = torch.zeros(4000, 2, dtype=torch.float64)
    eta = 0.02
    x = samplers.ula(gaussian_energy, x0, n_steps=1500, step_size=eta, generator=_gen(1))
    biased_std = STD / torch.sqrt(1 - eta / (2 * STD**2))
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), biased_std, atol=0.06, rtol=0)


def test_mala_per_chain_step_sizes_and_rejects_nan_proposals():
    def energy(x):
        e = 0.5 * x.pow(2).sum(1)
        return torch.where(x[:, 0] > 3, torch.full_like(e, float("nan")), e)

    x0 = torch.zeros(100, 2, dtype=torch.float64)
    steps = torch.linspace(0.01, 1.0, 100, dtype=torch.float64).unsqueeze(1)
    x = samplers.mala(energy, x0, n_steps=50, step_size=steps, generator=_gen())
    assert torch.isfinite(x).all() and (x[:, 0] <= 3).all()


def _gaussian_posterior(x_t, alpha, sigma):
    """Exact q(x'|x_t) for prior N(MEAN, STD²): precision 1/s² + α²/σ²."""
    prec = 1 / STD**2 + alpha**2 / sigma**2
    mean = (MEAN / STD**2 + alpha * x_t / sigma**2) / prec
    return mean, 1 / torch.sqrt(prec)


@pytest.mark.parametrize("alpha", [1.0, 0.8])
def test_importance_posterior_matches_exact_posterior(alpha):
    n, sigma = 20000, 0.5
    x_t = torch.tensor([[0.5, 0.0]], dtype=torch.float64).repeat(n, 1)
    a = torch.full((n, 1), alpha, dtype=torch.float64)
    s = torch.full((n, 1), sigma, dtype=torch.float64)
    x = samplers.importance_posterior(gaussian_energy, x_t, a, s, n_proposals=256,
                                      generator=_gen())
    mean, std = _gaussian_posterior(x_t[0], alpha, sigma)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0), std, atol=0.02, rtol=0)


def test_laplace_proposals_ratio_is_the_mixture_density_over_the_kernel():
    # E_r[N / r] = ∫ N = 1 for proposals x ~ r: an oracle for log_ratio
    n = 4000
    x_t = torch.randn(n, 2, dtype=torch.float64, generator=_gen(3))
    a = torch.full((n, 1), 0.8, dtype=torch.float64)
    s = torch.full((n, 1), 0.6, dtype=torch.float64)
    _, log_ratio = samplers.laplace_proposals(gaussian_energy, x_t, a, s, n_proposals=64,
                                              generator=_gen())
    assert torch.exp(-log_ratio).mean().item() == pytest.approx(1.0, abs=0.01)


def test_data_proposals_ratio_is_the_mixture_density_over_the_kernel():
    n = 4000
    x_t = torch.randn(n, 2, dtype=torch.float64, generator=_gen(3))
    data = 1.5 * torch.randn(300, 2, dtype=torch.float64, generator=_gen(4))
    a = torch.full((n, 1), 0.8, dtype=torch.float64)
    s = torch.full((n, 1), 0.6, dtype=torch.float64)
    proposals, log_ratio = samplers.laplace_proposals(
        gaussian_energy, x_t, a, s, n_proposals=48, generator=_gen(), data=data, bandwidth=0.2)
    assert proposals.shape == (n, 48, 2)
    assert torch.exp(-log_ratio).mean().item() == pytest.approx(1.0, abs=0.01)


def test_data_proposals_weigh_modes_that_the_kernel_misses():
    # two narrow 2-D modes one apart, weighted 3 : 1 and seen at σ = 0.8: the posterior is a
    # mixture of the two, with the heavier mode's mass π N(x_t; μ, S² + σ²) / Σ(...)
    S, sigma, n = 0.05, 0.8, 4000
    mu = torch.tensor([[0.5, 0.0], [-0.5, 0.0]], dtype=torch.float64)
    log_pi = torch.tensor([0.75, 0.25], dtype=torch.float64).log()

    def energy(x):
        return -torch.logsumexp(log_pi - (x[:, None] - mu).pow(2).sum(-1) / (2 * S**2), dim=1)

    g = _gen(1)
    data = (mu[(torch.rand(256, generator=g, dtype=torch.float64) > 0.75).long()]
            + S * torch.randn(256, 2, dtype=torch.float64, generator=g))
    x_t = (data[torch.randint(256, (n,), generator=g)]
           + sigma * torch.randn(n, 2, dtype=torch.float64, generator=g))
    exact = torch.softmax(log_pi - (x_t[:, None] - mu).pow(2).sum(-1) / (2 * (S**2 + sigma**2)),
                          dim=1)[:, 0]
    one, s = torch.ones(n, 1, dtype=torch.float64), torch.full((n, 1), sigma,
                                                                dtype=torch.float64)

    def heavier_mass(proposals, log_ratio):
        e = energy(proposals.reshape(-1, 2)).reshape(n, -1)
        return (samplers.importance_weights(e + log_ratio) * (proposals[..., 0] > 0)).sum(1)

    without = heavier_mass(*samplers.laplace_proposals(energy, x_t, one, s, n_proposals=48,
                                                       generator=_gen(2)))
    with_data = heavier_mass(*samplers.laplace_proposals(
        energy, x_t, one, s, n_proposals=48, generator=_gen(2), data=data))
    assert (without - exact).mean().item() < -0.08  # pulled towards equal weights
    assert abs((with_data - exact).mean().item()) < 0.02
    assert (with_data - exact).abs().mean() < 0.5 * (without - exact).abs().mean()


def test_data_proposals_use_a_bounded_subset_of_large_data():
    # regression: all rows of data used to enter an (n, N) matrix, 3.2 GB for the
    # 20,000-row negatives of test_dcd's sampler check
    n, big = 2000, 5000
    data = torch.arange(big, dtype=torch.float64).unsqueeze(1).repeat(1, 2)
    x_t = data[:n] + 0.1 * torch.randn(n, 2, dtype=torch.float64, generator=_gen())
    one = torch.ones(n, 1, dtype=torch.float64)
    proposals, log_ratio = samplers.laplace_proposals(
        gaussian_energy, x_t, one, 50 * one, n_proposals=6, generator=_gen(), data=data,
        bandwidth=1e-3)
    centres = torch.unique(proposals[:, 4:, 0].round())
    assert len(centres) <= samplers._DATA_CENTRES < big
    assert torch.isfinite(log_ratio).all()


@pytest.mark.parametrize("alpha", [1.0, 0.8])
def test_laplace_proposals_fit_a_gaussian_posterior_exactly(alpha):
    # a Gaussian energy with equal standard deviations is isotropic across its gradient
    def energy(x):
        return 0.5 * ((x - MEAN) / 0.3).pow(2).sum(dim=1)

    n, sigma = 4000, 0.5
    x_t = torch.tensor([[0.5, 0.0]], dtype=torch.float64).repeat(n, 1)
    a = torch.full((n, 1), alpha, dtype=torch.float64)
    s = torch.full((n, 1), sigma, dtype=torch.float64)
    proposals, _ = samplers.laplace_proposals(energy, x_t, a, s, n_proposals=8,
                                              generator=_gen())
    fit = proposals[:, 4:].reshape(-1, 2)
    prec = 1 / 0.3**2 + alpha**2 / sigma**2
    mean = (MEAN / 0.3**2 + alpha * x_t[0] / sigma**2) / prec
    torch.testing.assert_close(fit.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(fit.std(0), torch.full((2,), prec**-0.5, dtype=torch.float64),
                               atol=0.01, rtol=0)


def test_laplace_proposals_cut_the_weights_bias_of_a_narrow_posterior():
    # data from a mode of std s/2 in 2-D, noised by s: the kernel's proposals rarely land in
    # the posterior, and 32 of them overestimate its mean energy by about a third
    def energy(x):
        return 0.5 * x.pow(2).sum(dim=1) / 0.05**2

    n, sigma = 20000, 0.1
    g = _gen(1)
    x_t = (0.05 * torch.randn(n, 2, dtype=torch.float64, generator=g)
           + sigma * torch.randn(n, 2, dtype=torch.float64, generator=g))
    one, s = torch.ones(n, 1, dtype=torch.float64), torch.full((n, 1), sigma,
                                                                dtype=torch.float64)
    var = 1 / (1 / 0.05**2 + 1 / sigma**2)  # exact posterior N(x_t var / σ², var I)
    exact = (0.5 * ((x_t * var / sigma**2).pow(2).sum(1) + 2 * var) / 0.05**2).mean()

    def weighted_energy(proposals, log_ratio):
        e = energy(proposals.reshape(-1, 2)).reshape(n, -1)
        return (samplers.importance_weights(e + log_ratio) * e).sum(1).mean()

    laplace = weighted_energy(*samplers.laplace_proposals(energy, x_t, one, s, n_proposals=32,
                                                          generator=g))
    kernel = samplers.gaussian_proposals(x_t, one, s, n_proposals=32, generator=g)
    assert (laplace / exact).item() == pytest.approx(1.0, abs=0.02)
    assert (weighted_energy(kernel, torch.zeros(n, 32, dtype=torch.float64)) / exact) > 1.2


@pytest.mark.parametrize("with_data", [False, True])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_laplace_proposals_log_ratio_holds_in_float32_in_64_dimensions(with_data, tau):
    # the ratio comes from the draws' norms, not from the proposals: a direct float64
    # evaluation of the mixture over the returned proposals is the oracle. A narrow
    # or wide isotropic mode (std τ) makes the Laplace fit exact: v = s² / (1 + s²/τ²)
    d, n, m, bw = 64, 256, 48, 0.1
    g = _gen(5)
    x_t = torch.randn(n, d, generator=g)
    data = torch.randn(300, d, generator=g) if with_data else None
    a, s = torch.full((n, 1), 0.9), torch.rand(n, 1, generator=g) * 0.5 + 0.05
    proposals, log_ratio = samplers.laplace_proposals(
        lambda x: 0.5 * x.pow(2).sum(dim=1) / tau**2, x_t, a, s, n_proposals=m,
        generator=_gen(), data=data, bandwidth=bw)
    x, centre, var0 = proposals.double(), (x_t / a).double(), (s / a).double().pow(2)
    var = var0 / (1 + var0 / tau**2)
    mean = centre - var * centre / tau**2

    def log_normal(mu, v):  # (n, M)
        return -(x - mu.unsqueeze(1)).pow(2).sum(-1) / (2 * v) - 0.5 * d * v.log()

    n_data = m // 3 if with_data else 0
    n_kernel = (m - n_data) // 2
    parts = [(n_kernel, log_normal(centre, var0)), (m - n_data - n_kernel, log_normal(mean, var))]
    if with_data:  # the data part's centres: each data proposal's nearest row
        near = torch.cdist(proposals[:, m - n_data:], data.unsqueeze(0).expand(n, -1, -1))
        centres = data.double()[near.argmin(dim=2)]  # (n, n_data, d)
        dist = torch.cdist(x, centres).pow(2)
        parts.append((n_data, torch.logsumexp(-dist / (2 * bw**2), dim=2)
                      - math.log(n_data) - d * math.log(bw)))
    log_r = torch.logsumexp(torch.stack([math.log(k / m) + lr for k, lr in parts]), dim=0)
    torch.testing.assert_close(log_ratio.double(), log_r - parts[0][1], atol=2e-3, rtol=1e-5)

def test_laplace_proposals_survive_non_finite_gradients():
    def energy(x):  # infinite beyond x0 > 1, as past a clipping box
        e = 0.5 * x.pow(2).sum(dim=1)
        return torch.where(x[:, 0] > 1, e * float("inf"), e)

    x_t = torch.linspace(-3, 3, 50, dtype=torch.float64).unsqueeze(1).repeat(1, 2)
    one = torch.ones(50, 1, dtype=torch.float64)
    proposals, log_ratio = samplers.laplace_proposals(energy, x_t, one, one, n_proposals=8,
                                                      generator=_gen())
    e = energy(proposals.reshape(-1, 2)).reshape(50, 8)
    weights = samplers.importance_weights(e + log_ratio)
    assert torch.isfinite(proposals).all() and torch.isfinite(log_ratio).all()
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(50, dtype=torch.float64))


def test_laplace_posterior_is_exact_in_the_small_noise_limit():
    n, sigma = 20000, 0.05
    x_t = torch.tensor([[0.5, 0.0]], dtype=torch.float64).repeat(n, 1)
    a = torch.ones(n, 1, dtype=torch.float64)
    s = torch.full((n, 1), sigma, dtype=torch.float64)
    x = samplers.laplace_posterior(gaussian_energy, x_t, a, s, generator=_gen())
    mean, std = _gaussian_posterior(x_t[0], 1.0, sigma)
    torch.testing.assert_close(x.mean(0), mean, atol=2e-3, rtol=0)
    torch.testing.assert_close(x.std(0), std, atol=2e-3, rtol=0)


def test_importance_posterior_survives_infinite_energies():
    def energy(x):
        return torch.full((x.shape[0],), float("inf"), dtype=x.dtype)

    x_t = torch.zeros(10, 2, dtype=torch.float64)
    one = torch.ones(10, 1, dtype=torch.float64)
    x = samplers.importance_posterior(energy, x_t, one, one, n_proposals=4, generator=_gen())
    assert torch.isfinite(x).all()


def test_sigmoid_schedule_is_monotone_from_zero_to_one():
    betas = samplers.sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()


def test_systematic_resample_counts_follow_weights():
    w = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    idx = samplers.systematic_resample(torch.log(w).repeat_interleave(250), _gen())
    counts = torch.bincount(idx // 250, minlength=4)
    # systematic resampling is exact to within one particle per stratum
    assert (counts - 1000 * w).abs().max() <= 1


def test_systematic_resample_rows_are_unbiased_and_keep_heavy_proposals():
    # 4,000 rows of the same 6 weights, 4 draws each: the mean count of index j is 4 w_j,
    # and an index with 4 w_j >= m is drawn at least m times in every row
    w = torch.tensor([0.55, 0.3, 0.1, 0.03, 0.02, 0.0], dtype=torch.float64)
    log_w = torch.log(w).expand(4000, 6)
    idx = samplers.systematic_resample(log_w, _gen(), n_draws=4)
    assert idx.shape == (4000, 4)
    counts = torch.nn.functional.one_hot(idx, 6).sum(dim=1).double()  # (4000, 6)
    assert torch.allclose(counts.mean(dim=0), 4 * w, atol=0.02)
    assert (counts[:, 0] >= 2).all() and (counts[:, 1] >= 1).all() and (counts[:, 5] == 0).all()
    # one offset per row: rows differ
    assert len({tuple(r) for r in idx.tolist()}) > 1


def test_anneal_estimates_log_normalizer_and_mode_weights():
    # mixture 0.8 N(-3, 0.3²) + 0.2 N(3, 0.3²), total mass Z = 2 (unnormalised)
    def energy(x):
        comps = torch.stack([
            math.log(0.8) - 0.5 * ((x[:, 0] + 3) / 0.3) ** 2,
            math.log(0.2) - 0.5 * ((x[:, 0] - 3) / 0.3) ** 2,
        ])
        return -(torch.logsumexp(comps, 0) + math.log(2 / (0.3 * math.sqrt(2 * math.pi))))

    base_mean = torch.zeros(1, dtype=torch.float64)
    base_std = torch.full((1,), 4.0, dtype=torch.float64)
    smc = samplers.anneal(energy, base_mean, base_std, n_particles=4000, n_steps=200,
                          step_size=0.1, generator=_gen(), resample=True)
    resampled = smc.x[samplers.systematic_resample(smc.log_weights, _gen(2))]
    assert abs(float((resampled[:, 0] > 0).double().mean()) - 0.2) < 0.03
    assert abs(smc.log_normalizer - math.log(2)) < 0.1
    ais = samplers.anneal(energy, base_mean, base_std, n_particles=4000, n_steps=200,
                          step_size=0.1, generator=_gen(1), resample=False)
    assert abs(ais.log_normalizer - math.log(2)) < 0.1
    w = torch.softmax(ais.log_weights, 0)
    assert abs(float(w[ais.x[:, 0] > 0].sum()) - 0.2) < 0.03
