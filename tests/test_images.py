"""Image inputs, time-conditional DCD, Tweedie denoising, recovery sampling, image loaders."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd._objectives import LadderObjective, PosteriorNegatives
from skdcd.datasets import load_digits_images, load_image_folder
from skdcd.networks import AtNoiseLevel, ConvEnergy, EnvelopedEnergy, MLPEnergy
from skdcd.samplers import recovery_sample
from tests.conftest import FAST

IMG = dict(FAST, conv_channels=(4, 8), hidden_layer_sizes=(16,))


@pytest.fixture
def images():
    rng = np.random.RandomState(0)
    return rng.rand(60, 2 * 4 * 6)  # 60 images of shape (2, 4, 6)


# ---------------------------------------------------------------------------- image inputs
@pytest.mark.parametrize("cls", [DCDEnergyEstimator, CDEnergyEstimator])
def test_image_models_keep_the_flat_shape_contract(cls, images):
    est = cls(image_shape=(2, 4, 6), **IMG).fit(images)
    assert isinstance(est.energy_net_.net, ConvEnergy)
    assert est.energy(images[:5]).shape == (5,)
    assert est.score_samples(images[:5]).shape == (5,)
    assert est.sample(7, random_state=0).shape == (7, 48)
    assert est.denoise(images[:3], noise_std=0.1, random_state=0).shape == (3, 48)
    assert np.isfinite(est.score(images))


def test_images_share_one_mean_and_scale_over_pixels(images):
    X = images * np.linspace(0.1, 3.0, images.shape[1])  # pixels of very different spread
    est = DCDEnergyEstimator(image_shape=(2, 4, 6), **IMG).fit(X)
    np.testing.assert_allclose(est.mean_, X.mean())
    np.testing.assert_allclose(est.scale_, X.std())
    tabular = DCDEnergyEstimator(**FAST).fit(X)
    np.testing.assert_allclose(tabular.scale_, X.std(axis=0))


@pytest.mark.parametrize("shape, match", [
    ((2, 4, 5), "holds 40 pixels but X has 48"),
    ((48,), "tuple \\(C, H, W\\)"),
    ((2, 4, 6.0), "tuple \\(C, H, W\\)"),
    ((0, 4, 6), "tuple \\(C, H, W\\)"),
])
def test_bad_image_shape_is_a_clear_error(images, shape, match):
    with pytest.raises(ValueError, match=match):
        DCDEnergyEstimator(image_shape=shape, **IMG).fit(images)


def test_bad_conv_channels_is_a_clear_error(images):
    with pytest.raises(ValueError, match="conv_channels"):
        DCDEnergyEstimator(image_shape=(2, 4, 6), **{**IMG, "conv_channels": ()}).fit(images)


def test_conv_energy_spectral_norm_bounds_each_layer():
    torch.manual_seed(0)
    net = ConvEnergy((1, 8, 8), channels=(4, 8), spectral_norm=True)
    net(torch.randn(4, 64))  # power iterations run in training mode
    weight = net.hidden.weight  # the normalised weight
    assert float(torch.linalg.matrix_norm(weight.detach(), ord=2)) == pytest.approx(1.0, rel=0.1)


def test_noise_conditional_networks_need_sigma():
    net = MLPEnergy(3, (8,), noise_conditional=True)
    torch.nn.init.normal_(net.net[-1].weight)  # it starts at zero: see the next test
    with pytest.raises(ValueError, match="sigma of shape"):
        net(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not noise-conditional"):
        MLPEnergy(3, (8,))(torch.zeros(2, 3), torch.ones(2, 1))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    low, high = net(x, torch.full((5, 1), 0.1)), net(x, torch.full((5, 1), 1.0))
    assert not torch.allclose(low, high)  # the level changes the energy


@pytest.mark.parametrize(("net", "d"), [
    (MLPEnergy(3, (8,), noise_conditional=True), 3),
    (ConvEnergy((1, 2, 2), channels=(4,), noise_conditional=True, head_width=8), 4),
], ids=["mlp", "conv"])
def test_noise_conditional_networks_start_at_zero(net, d):
    """The model starts as its envelope: a fresh network's energy is 0 at every level."""
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((5, 1), 0.3)
    assert torch.equal(net(x, sigma), torch.zeros(5))
    energy = EnvelopedEnergy(net, envelope_std=2.0, noise_conditional=True)
    torch.testing.assert_close(energy(x, sigma), x.pow(2).sum(dim=1) / (2 * (4.0 + 0.09)))


def test_enveloped_noise_conditional_energy_formula():
    class Raw(nn.Module):
        def forward(self, x, sigma):
            return x.sum(dim=1)

    energy = EnvelopedEnergy(Raw(), envelope_std=2.0, noise_conditional=True)
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    sigma = torch.tensor([[0.5], [2.0]])
    expected = x.sum(dim=1) / sigma.squeeze(1) ** 2 + x.pow(2).sum(dim=1) / (
        2 * (4.0 + sigma.squeeze(1) ** 2))
    torch.testing.assert_close(energy(x, sigma), expected)
    torch.testing.assert_close(AtNoiseLevel(energy, 0.5)(x[:1]), expected[:1])


# ---------------------------------------------------------------------------- time-conditional
class ExactGaussianLevels(nn.Module):
    """σ² E(x, σ) for data N(0, I) diffused to σ: E = ‖x‖² / (2 (1 + σ²))."""

    def __init__(self, n_features):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # something for Adam to hold

    def forward(self, x, sigma):
        s2 = sigma.squeeze(1) ** 2
        return s2 * x.pow(2).sum(dim=1) / (2 * (1 + s2)) + 0.0 * self.dummy


def _exact_gaussian_model(X):
    return DCDEnergyEstimator(
        time_conditional=True, noise_std=(0.05, 2.0), energy_net=ExactGaussianLevels,
        envelope_std=None, clip_margin=None, standardize=False, max_iter=1,
        learning_rate=1e-6, sample_steps=32, random_state=0).fit(X)


def test_tweedie_denoising_is_exact_for_a_gaussian_prior():
    X = np.random.RandomState(0).randn(300, 3)
    est = _exact_gaussian_model(X)
    y = np.random.RandomState(1).randn(20, 3) * 2
    for sigma in (0.05, 0.3, 1.7):
        # the posterior mean of x ~ N(0, I) given y = x + σ ε is y / (1 + σ²)
        np.testing.assert_allclose(est.denoise(y, sigma, method="tweedie"),
                                   y / (1 + sigma**2), rtol=1e-10)
        np.testing.assert_allclose(est.denoise(y, sigma), y / (1 + sigma**2), rtol=1e-10)


def test_tweedie_outside_the_ladder_or_on_marginal_models_is_an_error():
    X = np.random.RandomState(0).randn(300, 3)
    est = _exact_gaussian_model(X)
    with pytest.raises(ValueError, match="inside the noise ladder"):
        est.denoise(X[:2], 5.0, method="tweedie")
    # "auto" falls back to the posterior mean under the narrowest level's model
    assert est.denoise(X[:2], 5.0, random_state=0).shape == (2, 3)
    marginal = DCDEnergyEstimator(**FAST).fit(X)
    with pytest.raises(ValueError, match="time-conditional"):
        marginal.denoise(X[:2], 0.1, method="tweedie")


def test_recovery_sampling_of_the_exact_gaussian_model_gives_the_data_law():
    X = np.random.RandomState(0).randn(300, 2)
    samples = _exact_gaussian_model(X).sample(3000, random_state=0)
    # the narrowest level is N(0, (1 + 0.05²) I)
    np.testing.assert_allclose(samples.mean(axis=0), 0.0, atol=0.07)
    np.testing.assert_allclose(samples.std(axis=0), math.sqrt(1 + 0.05**2), atol=0.05)


def _mixture_level_energy(x, sigma):
    """Exact E(x, σ) of ½ N(-2, 0.5²) + ½ N(2, 0.5²) diffused by N(0, σ²), 1-D."""
    var = 0.25 + sigma.squeeze(1) ** 2
    left = -(x[:, 0] + 2) ** 2 / (2 * var)
    right = -(x[:, 0] - 2) ** 2 / (2 * var)
    return -(torch.logaddexp(left, right) - 0.5 * torch.log(var))


def test_recovery_sampler_reproduces_the_moments_of_a_mixture():
    g = torch.Generator().manual_seed(0)
    n, top = 4000, 3.0
    # the widest level's exact sample: a mixture draw plus N(0, 0.25 + top²) noise
    x = (torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0)
         + math.sqrt(0.25 + top**2) * torch.randn(n, 1, generator=g)).double()
    sigmas = np.geomspace(top, 0.02, 12).tolist()
    x = recovery_sample(_mixture_level_energy, x, sigmas, n_steps=20, step_size=0.5,
                        generator=g).squeeze(1)
    assert float((x > 0).double().mean()) == pytest.approx(0.5, abs=0.03)
    assert float(x.mean()) == pytest.approx(0.0, abs=0.08)
    assert float(x.var()) == pytest.approx(4.25 + 0.02**2, rel=0.05)
    right = x[x > 0]
    assert float(right.std()) == pytest.approx(0.5, rel=0.07)


@pytest.fixture(scope="module")
def mixture_1d():
    rng = np.random.RandomState(0)
    X = np.where(rng.rand(2000, 1) < 0.5, -2.0, 2.0) + 0.5 * rng.randn(2000, 1)
    # one Gaussian envelope: a mixture one would fit these two modes almost by itself
    est = DCDEnergyEstimator(time_conditional=True, hidden_layer_sizes=(64, 64),
                             envelope_components=1, max_iter=150, random_state=0).fit(X)
    return X, est


@pytest.mark.slow
def test_time_conditional_fit_of_a_1d_mixture_denoises_by_tweedie(mixture_1d):
    X, est = mixture_1d
    noisy = X[:500] + 0.5 * np.random.RandomState(1).randn(500, 1)
    # the noisy input scores 0.25 and the exact posterior mean about 0.125; this short fit
    # (1,200 steps) reached 0.156, and 2,400 steps 0.134
    assert np.mean((est.denoise(noisy, 0.5) - X[:500]) ** 2) < 0.8 * 0.25


@pytest.mark.slow
def test_time_conditional_fit_of_a_1d_mixture_recovers_its_moments(mixture_1d):
    X, est = mixture_1d
    samples = est.sample(2000, random_state=0)[:, 0]
    assert np.mean(samples > 0) == pytest.approx(0.5, abs=0.06)  # both modes, equal mass
    assert samples.mean() == pytest.approx(0.0, abs=0.2)
    assert samples.var() == pytest.approx(X.var(), rel=0.12)


@pytest.mark.slow
@pytest.mark.xfail(reason="known weakness: each mode comes out too wide (std 0.61 after "
                          "1,200 steps, against 0.5; 2 seeds), whatever the number of "
                          "recovery steps", strict=False)
def test_time_conditional_fit_of_a_1d_mixture_recovers_the_width_of_each_mode(mixture_1d):
    X, est = mixture_1d
    samples = est.sample(2000, random_state=0)[:, 0]
    assert samples[samples > 0].std() == pytest.approx(0.5, rel=0.2)


def test_time_conditional_checks_its_parameters(images):
    X = images[:, :3]
    with pytest.raises(ValueError, match="diffusion='ve' only"):
        DCDEnergyEstimator(time_conditional=True, diffusion="vp",
                           noise_std=(0.1, 0.5), **FAST).fit(X)
    with pytest.raises(ValueError, match="noise ladder"):
        DCDEnergyEstimator(time_conditional=True, noise_std=0.1, **FAST).fit(X)


@pytest.mark.parametrize("sampler,n_negatives", [("importance", 8), ("importance", None),
                                                  ("langevin", 8), ("mala", 8), ("laplace", 8)])
def test_time_conditional_fit_works_with_every_sampler(images, sampler, n_negatives):
    # resampled importance negatives come in blocks of n_negatives per row, each at its
    # row's noise level
    est = DCDEnergyEstimator(time_conditional=True, negative_sampler=sampler,
                             n_negatives=n_negatives, image_shape=(2, 4, 6), recovery_steps=2,
                             **IMG).fit(images)
    assert np.isfinite(est.loss_curve_).all()
    assert est.sample(3, random_state=0).shape == (3, 48)


def test_time_conditional_model_round_trips_through_save(images, tmp_path):
    est = DCDEnergyEstimator(time_conditional=True, image_shape=(2, 4, 6), recovery_steps=2,
                             **IMG).fit(images)
    est.save(tmp_path / "m.pt")
    again = DCDEnergyEstimator.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(again.energy(images), est.energy(images))
    np.testing.assert_array_equal(again.sample(4, random_state=1), est.sample(4, random_state=1))


def test_a_format_1_file_with_one_gaussian_envelope_still_loads(images, tmp_path):
    # format 1 stored one Gaussian's buffers without the axis of mixture components
    est = DCDEnergyEstimator(time_conditional=True, image_shape=(2, 4, 6), recovery_steps=2,
                             envelope_components=1, **IMG).fit(images)
    est.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    state = payload["energy_net"]
    for name in ("center", "directions", "variances", "residual_variance"):
        state[name] = state[name][0]
    del state["log_weights"]
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "old.pt")
    again = DCDEnergyEstimator.load(tmp_path / "old.pt")
    np.testing.assert_array_equal(again.energy(images), est.energy(images))


@pytest.mark.parametrize("shape, rows, expected", [
    ((1, 8, 8), 1500, 10),  # the digits: 10 full-covariance components
    ((1, 8, 8), 600, 4),  # fewer rows, fewer components: 2 d rows each
    ((3, 8, 8), 3000, 1),  # beyond 128 features: one Gaussian
])
def test_envelope_components_auto(shape, rows, expected):
    from skdcd._envelope import n_components

    assert n_components("auto", rows, math.prod(shape), conditional=True) == expected
    assert n_components(3, 2, 5, conditional=False) == 2  # never more components than rows


# ---------------------------------------------------------------------------- precision, compile
def test_mixed_precision_trains_to_nearly_the_same_model(images):
    kw = dict(IMG, max_iter=3, learning_rate=1e-3)
    full = DCDEnergyEstimator(image_shape=(2, 4, 6), **kw).fit(images)
    mixed = DCDEnergyEstimator(image_shape=(2, 4, 6), mixed_precision=True, **kw).fit(images)
    e_full, e_mixed = full.energy(images), mixed.energy(images)
    assert next(mixed.energy_net_.parameters()).dtype == torch.float32
    # bfloat16 has 8 bits of mantissa: energies agree to a few percent of their spread
    assert np.max(np.abs(e_full - e_mixed)) < 0.05 * np.ptp(e_full) + 0.05


@pytest.mark.slow
def test_compiled_training_gives_the_same_model(images):
    kw = dict(IMG, max_iter=2, learning_rate=1e-3)
    plain = DCDEnergyEstimator(image_shape=(2, 4, 6), **kw).fit(images)
    compiled = DCDEnergyEstimator(image_shape=(2, 4, 6), compile=True, **kw).fit(images)
    np.testing.assert_allclose(compiled.energy(images), plain.energy(images), rtol=1e-4,
                               atol=1e-4)


# ---------------------------------------------------------------------------- datasets
def test_load_digits_images():
    X, shape = load_digits_images()
    assert X.shape == (1797, 64) and shape == (1, 8, 8)
    assert X.min() == 0.0 and X.max() == 1.0


def _write(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_load_image_folder_reads_generated_pngs(tmp_path):
    pytest.importorskip("PIL")
    red = np.zeros((20, 30, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = np.full((12, 12), 51, dtype=np.uint8)  # 0.2
    _write(str(tmp_path / "b" / "red.png"), red)
    _write(str(tmp_path / "a.png"), grey)
    (tmp_path / "notes.txt").write_text("not an image")
    X, shape = load_image_folder(tmp_path, image_size=8)
    assert shape == (3, 8, 8) and X.shape == (2, 192) and X.dtype == np.float32
    # sorted paths: a.png, then b/red.png; channels first
    np.testing.assert_allclose(X[0], 0.2, atol=1e-6)
    images = X.reshape(-1, *shape)
    np.testing.assert_allclose(images[1, 0], 1.0)
    np.testing.assert_allclose(images[1, 1:], 0.0)
    X, shape = load_image_folder(tmp_path, image_size=(4, 6), grayscale=True, max_images=1)
    assert shape == (1, 4, 6) and X.shape == (1, 24)
    np.testing.assert_allclose(X, 0.2, atol=1e-6)


def test_load_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(ValueError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="No image files"):
        load_image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read"):
        load_image_folder(tmp_path)
    for bad in (0, (8,), "32", 2.5):
        with pytest.raises(ValueError, match="image_size"):
            load_image_folder(tmp_path, image_size=bad)
    with pytest.raises(ValueError, match="max_images"):
        load_image_folder(tmp_path, max_images=0)


def test_digits_fit_with_images_end_to_end():
    X, shape = load_digits_images()
    est = DCDEnergyEstimator(image_shape=shape, time_conditional=True, recovery_steps=2,
                             **IMG).fit(X[:200])
    assert est.sample(5, random_state=0).shape == (5, 64)
    noisy = X[:10] + 0.2 * np.random.RandomState(0).randn(10, 64)
    assert est.denoise(noisy, 0.2).shape == (10, 64)


def test_auto_ladder_spans_the_data_and_steps_by_about_one_and_a_half(images):
    est = DCDEnergyEstimator(time_conditional=True, image_shape=(2, 4, 6), recovery_steps=2,
                             **IMG).fit(images)
    Z = (images - est.mean_) / est.scale_
    from scipy.spatial.distance import pdist

    levels = est.noise_levels_
    assert levels[0] == pytest.approx(0.05)
    assert levels[-1] == pytest.approx(pdist(Z).max())
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0]) and 1.3 < ratios[0] <= 1.5


@pytest.mark.slow
def test_the_widest_level_is_trained_and_sampled_like_the_diffused_data():
    # regression: the widest level was never a positive level (and a penalty on σ²E
    # flattened it), so recovery started from samples uniform in the clipping box
    X = np.random.RandomState(0).randn(2000, 2)
    est = DCDEnergyEstimator(time_conditional=True, hidden_layer_sizes=(32, 32),
                             max_iter=40, random_state=0).fit(X)
    top = est.noise_levels_[-1]
    from skdcd._models import LadderModel
    from skdcd._utils import generator_from_random_state

    model = LadderModel(est.energy_net_, torch.device("cpu"), est._base_mean, est._base_std,
                        est._z_low, est._z_high, est.sample_steps, est.sample_step_size,
                        levels=est.noise_levels_)
    net = model.module(torch.float32).energy
    x = model._smc(AtNoiseLevel(net, top), 2000, generator_from_random_state(0, "cpu"), None,
                   widen=top)
    assert float(x.std()) == pytest.approx(math.sqrt(1 + top**2), rel=0.15)


def ladder_objective(est):
    """The training objective of a fitted time-conditional estimator, from its attributes."""
    posterior = PosteriorNegatives(est.negative_sampler_, est.posterior_steps,
                                   est.posterior_step_size, est.n_proposals, est.n_negatives)
    return LadderObjective(est.energy_reg_, None, levels=tuple(map(float, est.noise_levels_)),
                           posterior=posterior, envelope=est.energy_net_)


class ZeroLevels(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma):
        return 0.0 * self.dummy + x[:, 0] * 0.0


def test_a_time_conditional_envelope_is_the_gaussian_fit_so_tweedie_is_the_wiener_filter():
    # with the network at zero the model is the data's Gaussian fit at every level, so
    # Tweedie's formula is the Wiener filter m + C (C + σ² I)⁻¹ (y - m)
    rng = np.random.RandomState(0)
    Q, _ = np.linalg.qr(rng.randn(4, 4))
    X = rng.randn(4000, 4) @ (Q * [2.0, 1.5, 1.0, 0.7]).T + np.array([1.0, -2.0, 0.5, 3.0])
    est = DCDEnergyEstimator(
        time_conditional=True, noise_std=(0.05, 3.0), energy_net=ZeroLevels, clip_margin=None,
        standardize=False, envelope_components=1, max_iter=1, learning_rate=1e-6,
        random_state=0).fit(X)
    m, C = X.mean(axis=0), np.cov(X.T)
    y = X[:10] + 0.7 * rng.randn(10, 4)
    wiener = m + (y - m) @ np.linalg.solve(C + 0.49 * np.eye(4), C)
    np.testing.assert_allclose(est.denoise(y, 0.7, method="tweedie"), wiener, rtol=1e-6,
                               atol=1e-6)


def test_time_conditional_negatives_have_the_data_energy_when_the_envelope_is_exact():
    # regression: chains started at the posterior mean (a mode) gave negatives ~4 nats below
    # the positives' energy at wide levels of 64-D Gaussian data with the exact model (the
    # envelope, network at zero), which trained every wide level too wide; started in the
    # posterior's typical set, the DCD gradient of an exact model is zero on average
    rng = np.random.RandomState(0)
    d = 32
    X = rng.randn(4096, d) * np.linspace(0.3, 2.0, d)
    est = DCDEnergyEstimator(time_conditional=True, energy_net=ZeroLevels, clip_margin=None,
                             envelope_components=1, max_iter=1, learning_rate=1e-6,
                             random_state=0).fit(X)
    net = est.energy_net_
    x_pos = torch.as_tensor(est._standardize(X), dtype=torch.float32)
    e_pos, neg_mean, _ = ladder_objective(est).terms(net, x_pos, torch.Generator().manual_seed(0))
    # the energies of d-dimensional Gaussian data spread by sqrt(d / 2) = 4 nats
    assert float((e_pos.mean() - neg_mean).detach()) == pytest.approx(0.0, abs=0.25)


def test_time_conditional_negatives_have_the_data_energy_with_an_exact_mixture_envelope():
    # the same with two Gaussian clusters and the exact two-component envelope (that each
    # chain starts with its own component's spread is checked in test_networks.py)
    rng = np.random.RandomState(0)
    d = 16
    centers = np.zeros((2, d))
    centers[:, 0] = [-3.0, 3.0]
    stds = np.stack([np.linspace(0.3, 1.5, d), np.linspace(1.5, 0.3, d)])
    which = rng.randint(2, size=4096)
    X = rng.randn(4096, d) * stds[which] + centers[which]
    est = DCDEnergyEstimator(time_conditional=True, energy_net=ZeroLevels, clip_margin=None,
                             standardize=False, envelope_components=2, noise_std=(0.05, 3.0),
                             max_iter=1, learning_rate=1e-6, random_state=0).fit(X)
    net = est.energy_net_
    net.set_gaussian(centers, np.stack([np.eye(d)] * 2), stds**2, [1.0, 1.0],
                     weights=[0.5, 0.5])
    x_pos = torch.as_tensor(X, dtype=torch.float32)
    e_pos, neg_mean, _ = ladder_objective(est).terms(net, x_pos, torch.Generator().manual_seed(0))
    assert float((e_pos.mean() - neg_mean).detach()) == pytest.approx(0.0, abs=0.25)


def test_a_mixture_envelope_makes_tweedie_the_mixture_posterior_mean():
    # oracle: with the network at zero, Tweedie's formula at level σ is the posterior mean
    # Σ_c r_c(y) (m_c + C_c (C_c + σ² I)⁻¹ (y - m_c)) of the fitted mixture
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.randn(1500, 3) * [1.0, 0.5, 0.3] + [3.0, 0.0, 0.0],
                        rng.randn(1500, 3) * [0.4, 1.0, 0.6] - [3.0, 0.0, 0.0]])
    est = DCDEnergyEstimator(
        time_conditional=True, noise_std=(0.05, 3.0), energy_net=ZeroLevels, clip_margin=None,
        standardize=False, envelope_components=2, max_iter=1, learning_rate=1e-6,
        random_state=0).fit(X)
    net = est.energy_net_.double()
    weights = net.log_weights.exp().numpy()
    U, lam = net.directions.numpy(), net.variances.numpy()
    covs = np.einsum("kdj,kj,kej->kde", U, lam, U)
    y = X[::300] + 0.8 * rng.randn(10, 3)
    from scipy.stats import multivariate_normal

    resp = np.stack([w * multivariate_normal(m, C + 0.64 * np.eye(3)).pdf(y)
                     for w, m, C in zip(weights, net.center.numpy(), covs, strict=True)])
    resp /= resp.sum(axis=0)
    means = np.stack([m + (y - m) @ np.linalg.solve(C + 0.64 * np.eye(3), C)
                      for m, C in zip(net.center.numpy(), covs, strict=True)])
    expected = np.einsum("kn,knd->nd", resp, means)
    np.testing.assert_allclose(est.denoise(y, 0.8, method="tweedie"), expected, rtol=1e-5,
                               atol=1e-5)


def test_recovery_sampling_starts_in_the_posterior_typical_set_with_start_noise():
    # N(0, I) data in 32-D: with the exact posterior spread added to the Tweedie mean, one
    # MALA move per level already gives the data law; from the mean alone it stays too narrow
    d = 32

    def energy_fn(x, sigma):
        return x.pow(2).sum(dim=1) / (2 * (1 + sigma.squeeze(1) ** 2))

    def start_noise(x, sigma, delta, generator):
        prior = 1 + sigma**2
        std = torch.sqrt(prior * delta**2 / (prior + delta**2))
        return std * torch.randn(x.shape, generator=generator)

    sigmas = [3.0, 1.5, 0.7, 0.3, 0.05]
    stds = {}
    for name, noise in (("with", start_noise), ("without", None)):
        g = torch.Generator().manual_seed(0)
        x = math.sqrt(1 + 3.0**2) * torch.randn(4000, d, generator=g)
        x = recovery_sample(energy_fn, x, sigmas, n_steps=1, step_size=0.5, generator=g,
                            start_noise=noise)
        stds[name] = float(x.std())
    assert stds["with"] == pytest.approx(math.sqrt(1 + 0.05**2), abs=0.02)
    assert stds["without"] < 0.9


def test_time_conditional_training_draws_levels_over_the_whole_span():
    # regression: levels drawn from the rungs alone left the network untrained between them
    # (Tweedie at the benchmark's noise levels, which fall between rungs, lost ~1 dB)
    X = np.random.RandomState(0).randn(500, 3)
    est = DCDEnergyEstimator(time_conditional=True, energy_net=ZeroLevels, max_iter=1,
                             learning_rate=1e-6, random_state=0).fit(X)
    seen = []

    def recording(x, sigma):
        seen.append(sigma.detach().reshape(-1))
        return est.energy_net_(x, sigma)

    x_pos = torch.as_tensor(est._standardize(X), dtype=torch.float32)
    ladder_objective(est).terms(recording, x_pos, torch.Generator().manual_seed(0))
    ladder = est.noise_levels_
    levels = torch.cat(seen).double().numpy()
    trained = levels[levels <= ladder[-1] * (1 + 1e-6)]
    assert trained.min() < ladder[0] * 1.1 and trained.max() > ladder[-1] / 1.1
    off_rung = np.abs(np.log(trained[:, None] / ladder[None, :])).min(axis=1) > 1e-3
    assert off_rung.mean() > 0.9
    # log-uniform: about as many levels in each half of the span in log σ
    middle = math.sqrt(ladder[0] * ladder[-1])
    assert 0.4 < (trained < middle).mean() < 0.6


def test_time_conditional_energy_of_a_row_beyond_float32_is_inf_not_nan():
    # regression (fuzzing): after partial_fit on a row of 1.7e308 (inf in float32) the
    # network's box reached inf and its energy there was nan
    est = DCDEnergyEstimator(time_conditional=True, hidden_layer_sizes=(8,), max_iter=1,
                             recovery_steps=2, random_state=0)
    est.partial_fit(np.zeros((1, 2)))
    X = np.array([[0.0, 1.7e308]])
    est.partial_fit(X)
    assert np.isposinf(est.energy(X)).all()


@pytest.mark.parametrize(("params", "time_conditional"), [
    ({"image_shape": (1, 2, 3)}, True),  # "auto": images are time-conditional
    ({"image_shape": (1, 2, 3), "noise_std": 0.1}, False),  # one level: marginal
    ({"image_shape": (1, 2, 3), "diffusion": "vp"}, False),  # time-conditional is VE only
    ({}, False),  # tabular rows
    ({"time_conditional": False, "image_shape": (1, 2, 3)}, False),
])
def test_time_conditional_auto(params, time_conditional):
    X = np.random.default_rng(0).uniform(size=(40, 6))
    est = DCDEnergyEstimator(**{**IMG, **params}).fit(X)
    assert hasattr(est, "noise_levels_") is time_conditional


def test_a_fitted_model_keeps_its_kind_until_a_cold_refit():
    # regression: with time_conditional="auto", setting image_shape after fitting a tabular
    # model made it read as a time-conditional model that was never fitted (test_cli)
    X = np.random.default_rng(0).uniform(size=(40, 6))
    est = DCDEnergyEstimator(**IMG).fit(X)  # marginal: tabular rows
    before = est.denoise(X[:3], 0.1, random_state=0)
    est.set_params(image_shape=(1, 2, 3))
    np.testing.assert_array_equal(est.denoise(X[:3], 0.1, random_state=0), before)
    assert not hasattr(est, "noise_levels_")
    est.set_params(image_shape=None).fit(X)
    est.set_params(image_shape=(1, 2, 3), warm_start=True).fit(X)  # warm: the same kind
    assert not hasattr(est, "noise_levels_")
    est.set_params(warm_start=False).fit(X)  # cold: what the parameters now ask for
    assert hasattr(est, "noise_levels_")
    est.set_params(image_shape=None).fit(X)  # and back, without the old ladder
    assert not hasattr(est, "noise_levels_")
