import math

import pytest
import torch

from skdcd.networks import ACTIVATIONS, EnvelopedEnergy, MLPEnergy


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_mlp_energy_shapes(activation):
    net = MLPEnergy(3, (8, 4), activation)
    assert net(torch.zeros(5, 3)).shape == (5,)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 8), (8, 4), (4, 1)]


@pytest.mark.parametrize("conditional", [False, True])
def test_mlp_first_layer_sees_the_input_times_its_gain(conditional):
    torch.manual_seed(0)
    gained = MLPEnergy(3, (8,), noise_conditional=conditional, input_gain=3.0)
    plain = MLPEnergy(3, (8,), noise_conditional=conditional, input_gain=1.0)
    plain.load_state_dict({**gained.state_dict(), "input_gain": torch.tensor(1.0)})
    x, sigma = torch.randn(5, 3), torch.full((5, 1), 0.5)
    args = (sigma,) if conditional else ()
    torch.testing.assert_close(gained(x, *args), plain(3.0 * x, *args))
    assert MLPEnergy(2).input_gain == 3.0 and MLPEnergy(64).input_gain == 1.0  # the default


@pytest.mark.parametrize("conditional", [False, True])
def test_a_large_pass_without_autograd_in_blocks_gives_the_same_energies(conditional):
    from skdcd import networks

    torch.manual_seed(0)
    net = MLPEnergy(3, (16, 16), noise_conditional=conditional)
    torch.nn.init.normal_(net.net[-1].weight)  # a conditional net starts with a zero output
    n = 2 * networks.CPU_BLOCK_ROWS + 5  # three blocks, the last a partial one
    x = torch.randn(n, 3)
    sigma = torch.rand(n, 1) + 0.1 if conditional else None
    whole = net(x, sigma)  # with autograd: one pass
    with torch.no_grad():
        blocked = net(x, sigma)
    assert blocked.shape == (n,)
    torch.testing.assert_close(blocked, whole.detach(), rtol=1e-5, atol=1e-6)
    if conditional:  # sigma's shape is checked before the rows are split
        with pytest.raises(ValueError, match="sigma of shape"), torch.no_grad():
            net(x, sigma[:5])


def test_an_mlp_pickled_before_the_input_gain_unpickles_with_a_gain_of_one():
    torch.manual_seed(0)
    net = MLPEnergy(2, (8,))
    state = {**net.__dict__, "_buffers": {k: v for k, v in net._buffers.items()
                                          if k != "input_gain"}}
    old = MLPEnergy.__new__(MLPEnergy)
    old.__setstate__(state)
    x = torch.randn(4, 2)
    assert old.input_gain == 1.0
    torch.testing.assert_close(old(x), net(x / 3.0))


def test_envelope_adds_a_quadratic():
    net = EnvelopedEnergy(torch.nn.Linear(2, 1), envelope_std=2.0)
    x = torch.randn(6, 2)
    torch.testing.assert_close(net(x), net.net(x).squeeze(1) + x.pow(2).sum(1) / 8)
    assert torch.equal(EnvelopedEnergy(net.net, None)(x), net.net(x).squeeze(1))


def test_envelope_rejects_bad_output_shapes():
    with pytest.raises(ValueError, match="energy network must map"):
        EnvelopedEnergy(torch.nn.Linear(2, 2), 1.0)(torch.zeros(3, 2))


def test_bounds_clip_only_the_network_input():
    torch.manual_seed(0)
    net = MLPEnergy(2, (16,))
    energy = EnvelopedEnergy(net, envelope_std=2.0)
    energy.set_bounds([-1.0, -2.0], [1.0, 2.0])
    inside = torch.tensor([[0.3, -1.5], [-0.9, 1.9]])
    assert torch.allclose(energy(inside), net(inside).reshape(-1) + inside.pow(2).sum(1) / 8)
    far = torch.tensor([[7.0, -9.0]])
    corner = torch.tensor([[1.0, -2.0]])
    # out there the network is frozen at the box corner and only the envelope moves
    assert torch.allclose(energy(far), net(corner).reshape(-1) + far.pow(2).sum(1) / 8)
    assert torch.equal(EnvelopedEnergy(net, None)(far), net(far).reshape(-1))  # default: none


def test_gaussian_envelope_is_the_diffused_gaussian_energy():
    # oracle: ½ (x - m)ᵀ (C + σ² I)⁻¹ (x - m) with C = U diag(λ) Uᵀ + r (I - U Uᵀ)
    gen = torch.Generator().manual_seed(0)
    d, k = 5, 2
    U, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    lam, r = torch.tensor([3.0, 0.5], dtype=torch.float64), 0.2
    m = torch.randn(d, generator=gen, dtype=torch.float64)
    C = U @ torch.diag(lam) @ U.T + r * (torch.eye(d, dtype=torch.float64) - U @ U.T)

    class Zero(torch.nn.Module):
        def forward(self, x, sigma=None):
            return torch.zeros(len(x), dtype=x.dtype)

    x = torch.randn(7, d, generator=gen, dtype=torch.float64)
    for conditional, sigma in ((False, 0.0), (True, 0.3), (True, 4.0)):
        energy = EnvelopedEnergy(Zero(), envelope_std=1.0, noise_conditional=conditional)
        energy.set_gaussian(m, U, lam, r)
        u = x - m
        precision = torch.linalg.inv(C + sigma**2 * torch.eye(d, dtype=x.dtype))
        expected = 0.5 * (u @ precision * u).sum(1)
        got = energy(x, torch.full((7, 1), sigma, dtype=x.dtype)) if conditional else energy(x)
        torch.testing.assert_close(got, expected)


def test_gaussian_envelope_of_a_huge_row_is_inf_not_nan():
    # regression: ‖u‖² - ‖p‖² was inf - inf for a row of 1e300 (fuzzing found it)
    energy = EnvelopedEnergy(torch.nn.Linear(2, 1).double(), envelope_std=1.0,
                             noise_conditional=False)
    energy.set_gaussian([0.0, 0.0], [[1.0], [0.0]], [2.0], 0.5)
    energy.set_bounds([-1.0, -1.0], [1.0, 1.0])
    out = energy(torch.tensor([[1e300, 0.0], [0.0, 1e300]], dtype=torch.float64))
    assert torch.isinf(out).all() and (out > 0).all()


def test_envelope_posterior_noise_has_the_gaussian_posterior_covariance():
    # oracle: prior N(m, C + σ² I), observation with δ² more noise → posterior covariance
    # (C + σ² I) δ² (C + σ² I + δ² I)⁻¹
    gen = torch.Generator().manual_seed(0)
    d = 4
    U, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=torch.float64))
    lam, r = torch.tensor([3.0, 0.5], dtype=torch.float64), 0.2
    C = U @ torch.diag(lam) @ U.T + r * (torch.eye(d, dtype=torch.float64) - U @ U.T)
    energy = EnvelopedEnergy(torch.nn.Linear(d, 1), envelope_std=1.0, noise_conditional=True)
    energy.set_gaussian(torch.zeros(d), U, lam, r)
    n, sigma, delta = 200_000, 0.7, 0.4
    x = torch.zeros(n, d, dtype=torch.float64)
    noise = energy.envelope_posterior_noise(x, torch.full((n, 1), sigma, dtype=x.dtype),
                                            torch.full((n, 1), delta, dtype=x.dtype), gen)
    prior = C + sigma**2 * torch.eye(d, dtype=x.dtype)
    expected = prior @ torch.linalg.inv(prior + delta**2 * torch.eye(d, dtype=x.dtype)) * delta**2
    torch.testing.assert_close(noise.mean(0), torch.zeros(d, dtype=x.dtype), atol=5e-3, rtol=0)
    torch.testing.assert_close(noise.T @ noise / n, expected, atol=5e-3, rtol=0)
    without = EnvelopedEnergy(torch.nn.Linear(d, 1), envelope_std=None, noise_conditional=True)
    assert not without.envelope_posterior_noise(x[:3], torch.ones(3, 1), torch.ones(3, 1),
                                                gen).any()


def _two_component_envelope(conditional=True):
    gen = torch.Generator().manual_seed(1)
    d = 3
    U = torch.stack([torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
                     for _ in range(2)])  # (2, d, d)
    lam = torch.tensor([[2.0, 0.5, 0.1], [1.0, 0.3, 0.2]], dtype=torch.float64)
    m = torch.tensor([[-4.0, 0.0, 1.0], [4.0, 1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)

    class Zero(torch.nn.Module):
        def forward(self, x, sigma=None):
            return torch.zeros(len(x), dtype=x.dtype)

    energy = EnvelopedEnergy(Zero(), envelope_std=1.0, noise_conditional=conditional).double()
    energy.set_gaussian(m, U, lam, [0.1, 0.1], weights=w)
    covs = U @ torch.diag_embed(lam) @ U.transpose(1, 2)
    return energy, m, covs, w


def test_mixture_envelope_is_the_diffused_mixture_energy():
    # oracle: -log Σ_c π_c N(x; m_c, C_c + σ² I), up to a constant per level
    energy, m, covs, w = _two_component_envelope()
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(9, 3, generator=gen, dtype=torch.float64)
    for sigma in (0.05, 0.4, 3.0):
        eye = torch.eye(3, dtype=x.dtype)
        log_p = torch.logsumexp(torch.stack([
            torch.log(w[c]) + torch.distributions.MultivariateNormal(
                m[c], covs[c] + sigma**2 * eye).log_prob(x) for c in range(2)]), dim=0)
        got = energy(x, torch.full((9, 1), sigma, dtype=x.dtype))
        torch.testing.assert_close(got - got[0], -(log_p - log_p[0]))


def test_mixture_envelope_posterior_noise_follows_each_rows_component():
    # observations at a component's mean get that component's posterior covariance
    # (C_c + σ² I) δ² (C_c + σ² I + δ² I)⁻¹
    energy, m, covs, _ = _two_component_envelope()
    gen = torch.Generator().manual_seed(0)
    n, sigma, delta = 100_000, 0.5, 0.7
    eye = torch.eye(3, dtype=torch.float64)
    for c in range(2):
        y = m[c].expand(n, 3)
        noise = energy.envelope_posterior_noise(y, torch.full((n, 1), sigma, dtype=y.dtype),
                                                torch.full((n, 1), delta, dtype=y.dtype), gen)
        prior = covs[c] + sigma**2 * eye
        expected = prior @ torch.linalg.inv(prior + delta**2 * eye) * delta**2
        torch.testing.assert_close(noise.T @ noise / n, expected, atol=1e-2, rtol=0)


def test_mixture_envelope_posterior_noise_of_a_huge_row_is_finite_shaped():
    # regression (fuzzing): a row of 1e300 made every component's energy inf, and the
    # responsibilities nan
    energy, *_ = _two_component_envelope()
    y = torch.tensor([[1e300, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    ones = torch.ones(2, 1, dtype=y.dtype)
    noise = energy.envelope_posterior_noise(y, ones, ones, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 3) and torch.isfinite(noise).all()


def test_gaussian_envelope_of_an_overflowed_row_is_inf_not_nan():
    # regression (fuzzing): 1.7e308 is inf in float32, and inf · 0 in the projection was nan
    energy = EnvelopedEnergy(torch.nn.Linear(2, 1), envelope_std=1.0)
    energy.set_gaussian([0.0, 0.0], [[1.0], [0.0]], [2.0], 0.5)
    out = energy._envelope(torch.tensor([[0.0, math.inf]]), 0.0)
    assert torch.isinf(out).all() and (out > 0).all()
