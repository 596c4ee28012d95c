"""DCD: the estimator's gradient against the closed-form Gaussian DCD, and its samplers."""

import warnings

import numpy as np
import pytest
import torch

from skdcd import DCDEnergyEstimator
from skdcd._objectives import DCDObjective, PosteriorNegatives
from skdcd.diffusion import gaussian_dcd
from skdcd.networks import EnvelopedEnergy
from tests.conftest import FAST, QuadraticEnergy

MEAN_P, VAR_P = np.array([0.5, -1.0]), np.array([0.8, 0.3])
MEAN_Q, LOG_PREC_Q = np.array([0.0, 0.0]), np.array([0.3, -0.2])


def _closed_form_grad(sigma, diffusion, h=1e-5):
    """Central finite differences of the exact DCD in (mean, log_prec) of the model."""
    theta = np.r_[MEAN_Q, LOG_PREC_Q]

    def dcd(t):
        return gaussian_dcd(MEAN_P, np.diag(VAR_P), t[:2], np.diag(np.exp(-t[2:])), sigma,
                            diffusion)

    return np.array([(dcd(theta + h * e) - dcd(theta - h * e)) / (2 * h)
                     for e in np.eye(len(theta))])


def _objective(diffusion="ve", noise_std=0.1, sampler="importance", n_proposals=48,
               steps=10, step_size=0.1, n_negatives=8, wide=None):
    """The DCD objective of these settings (no penalty, no well guard)."""
    return DCDObjective(0.0, None, diffusion=diffusion, noise_std=noise_std, wide=wide,
                        data_proposals=wide is not None,
                        posterior=PosteriorNegatives(sampler, steps, step_size, n_proposals,
                                                     n_negatives))


def _estimator_grad(objective, n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = EnvelopedEnergy(QuadraticEnergy(2, MEAN_Q, LOG_PREC_Q).double(), None)
    x_pos = (torch.as_tensor(MEAN_P) + torch.as_tensor(np.sqrt(VAR_P))
             * torch.randn(n, 2, generator=g, dtype=torch.float64))
    neg_mean, _ = objective.negative_energies(net, x_pos, g)  # what the training loop uses
    loss = net(x_pos).mean() - neg_mean  # the surrogate, without the penalty
    loss.backward()
    q = net.net
    return np.r_[q.mean.grad.numpy(), q.log_prec.grad.numpy()]


@pytest.mark.parametrize("diffusion,sigma", [("ve", 0.7), ("vp", 0.6)])
@pytest.mark.parametrize("sampler,n_negatives", [("importance", None), ("importance", 8),
                                                  ("importance", 1), ("mala", None)])
def test_gradient_matches_finite_difference_of_closed_form_dcd(diffusion, sigma, sampler,
                                                               n_negatives):
    objective = _objective(diffusion=diffusion, noise_std=sigma, sampler=sampler,
                           n_proposals=256, steps=60, step_size=0.3, n_negatives=n_negatives)
    expected = _closed_form_grad(sigma, diffusion)
    got = np.mean([_estimator_grad(objective, seed=s) for s in range(3)], axis=0)
    assert np.abs(expected).max() > 0.1  # the oracle is not trivially zero
    np.testing.assert_allclose(got, expected, atol=0.02)


def test_gradient_of_the_wrong_kernel_does_not_match():
    # guards the test above: VE negatives do not reproduce the VP gradient
    objective = _objective(noise_std=0.6, sampler="mala", steps=60, step_size=0.3)
    got = np.mean([_estimator_grad(objective, seed=s) for s in range(3)], axis=0)
    assert np.abs(got - _closed_form_grad(0.6, "vp")).max() > 0.05


@pytest.mark.parametrize("diffusion", ["ve", "vp"])
def test_the_four_negative_samplers_agree_on_a_gaussian_model(diffusion):
    """For a Gaussian energy the posterior q(x'|x_t) is Gaussian with known moments."""
    sigma, n = 0.1, 20000
    prec = np.exp(LOG_PREC_Q)
    alpha = 1.0 if diffusion == "ve" else np.sqrt(1 - sigma**2)
    x0 = torch.tensor([[0.4, -0.3]], dtype=torch.float64).repeat(n, 1)
    net = EnvelopedEnergy(QuadraticEnergy(2, MEAN_Q, LOG_PREC_Q).double(), None)
    post_prec = prec + alpha**2 / sigma**2
    # ULA's stationary std is inflated by 1/sqrt(1 - η·prec/2): small steps keep that < 1%
    step = {"langevin": (300, 0.02), "mala": (40, 0.2)}
    for sampler in ["importance", "langevin", "mala", "laplace"]:
        n_steps, step_size = step.get(sampler, (1, 0.1))
        objective = _objective(diffusion=diffusion, noise_std=sigma, sampler=sampler,
                               n_proposals=64, steps=n_steps, step_size=step_size)
        g = torch.Generator().manual_seed(0)
        # fix x_t: subtract the noise the sampler adds by drawing it ourselves
        x_neg = objective.posterior.draw(net, *objective.noised(x0, g), g).numpy()
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(n, 2, generator=g, dtype=torch.float64).numpy()
        x_t = alpha * x0.numpy() + sigma * noise
        post_mean = (prec * MEAN_Q + alpha * x_t / sigma**2) / post_prec
        resid = x_neg - post_mean  # ~ N(0, 1/post_prec) for an exact sampler
        np.testing.assert_allclose(resid.mean(0), 0, atol=3e-3, err_msg=sampler)
        np.testing.assert_allclose(resid.std(0), 1 / np.sqrt(post_prec), rtol=0.05,
                                   err_msg=sampler)


def test_noise_ladder_and_vp_fit(blobs):
    for params in (dict(noise_std=(0.05, 0.5)), dict(diffusion="vp", noise_std=0.3)):
        for sampler in ("importance", "langevin", "mala", "laplace"):
            est = DCDEnergyEstimator(**{**FAST, **params, "negative_sampler": sampler})
            assert np.isfinite(est.fit(blobs).score(blobs))
    weighted = DCDEnergyEstimator(**{**FAST, "n_negatives": None}).fit(blobs)
    assert np.isfinite(weighted.score(blobs))


def test_gaussian_fit_recovers_the_covariance_and_floors_missing_directions():
    from skdcd._envelope import gaussian_fit

    rng = np.random.RandomState(0)
    Q, _ = np.linalg.qr(rng.randn(3, 3))
    Z = rng.randn(3000, 3) @ (Q * [2.0, 1.0, 0.5]).T + 4.0
    mean, U, lam, r = gaussian_fit(Z)
    np.testing.assert_allclose(mean, Z.mean(axis=0))
    np.testing.assert_allclose(U @ np.diag(lam) @ U.T, np.cov(Z.T), atol=1e-12)
    # fewer rows than features: the directions the sample cannot see get the floor, 1 % of
    # the mean variance, rather than zero
    Z = rng.randn(20, 50)
    _, U, lam, r = gaussian_fit(Z)
    floor = 0.01 * Z.var(axis=0, ddof=1).sum() / 50
    assert U.shape == (50, 20) and np.allclose(U.T @ U, np.eye(20))
    assert lam[-1] == pytest.approx(floor) and r == pytest.approx(floor)
    assert lam[0] > 10 * floor


def _fitted(d=2, **params):
    X = np.random.RandomState(0).randn(40, d)
    return DCDEnergyEstimator(max_iter=1, hidden_layer_sizes=(4,), conv_channels=(2,),
                              recovery_steps=1, random_state=0, **params).fit(X)


@pytest.mark.parametrize(("params", "expected"), [
    ({}, 0.003),  # importance negatives: the weaker pull of the benchmarks' best mean gap
    ({"negative_sampler": "mala"}, 0.01),
    ({"image_shape": (1, 1, 2)}, 0.01),  # images draw MALA negatives
    ({"energy_reg": 0.2}, 0.2),
])
def test_energy_reg_auto(params, expected):
    assert _fitted(**params).energy_reg_ == expected


@pytest.mark.parametrize(("params", "wide"), [
    ({}, True),  # tabular, importance negatives, VE: the data proposals reach wide levels
    ({"noise_std": 0.1}, False),  # an explicit σ is kept as given
    ({"noise_std": (0.1, 0.5)}, False),
    ({"diffusion": "vp"}, False),  # VP would need σ < 1
    ({"negative_sampler": "mala"}, False),  # chains do not cross modes at wide levels
    ({"image_shape": (1, 1, 2)}, False),  # time-conditional: its own ladder
    ({"d": 64}, False),  # too many features for a wide posterior
])
def test_auto_noise_mixes_in_wide_levels_only_for_importance_negatives(params, wide):
    est = _fitted(**params)
    assert (est.wide_noise_ is not None) == wide
    if not est.time_conditional_:
        assert est.noise_std_ == params.get("noise_std", 0.1)


@pytest.mark.parametrize("wide", [(0.25, 0.2, 1.0), None])
def test_wide_levels_take_their_fraction_of_the_batch_and_lend_it_proposals(wide):
    objective = _objective(wide=wide)
    _, _, sigma = objective.noised(torch.zeros(4000, 2), torch.Generator().manual_seed(0))
    assert abs(float((sigma > 0.1).float().mean()) - (0.25 if wide else 0.0)) < 0.03
    calls = []

    def laplace_proposals(*args, data=None, **kwargs):
        calls.append(data)
        raise StopIteration

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("skdcd.samplers.laplace_proposals", laplace_proposals)
        with pytest.raises(StopIteration):
            objective.negative_energies(lambda x: x.sum(1), torch.zeros(3, 2),
                                        torch.Generator().manual_seed(0))
    assert (calls[0] is not None) == (wide is not None)


@pytest.mark.parametrize(("noise_std", "expected"), [
    ((0.05, 0.7), True),  # regression: an explicit range had no data proposals (bias -0.35)
    (0.4, True), ("auto", True), (0.1, False), ((0.01, 0.1), False)])
def test_data_proposals_whenever_a_level_reaches_across_modes(noise_std, expected):
    X = np.random.default_rng(0).standard_normal((64, 2))
    est = DCDEnergyEstimator(noise_std=noise_std, max_iter=1, random_state=0).fit(X)
    assert est._objective(torch.device("cpu")).data_proposals is expected


def test_partial_fit_on_rows_at_the_float_limit_does_not_crash_the_data_proposals():
    # regression (hypothesis): after a fit on zeros, a row at the float32 limit made every
    # data-proposal probability NaN and torch.multinomial raised a RuntimeError
    est = DCDEnergyEstimator(**FAST)
    est.partial_fit(np.array([[0.0, 0.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            est.partial_fit(np.array([[3.40282357e38, 3.40282357e38]]))
        except ValueError:  # a clear refusal (divergence) is fine; a crash is not
            pass


@pytest.mark.parametrize("n_negatives", [8, None])
def test_only_the_resampled_negatives_are_back_propagated(n_negatives):
    # the cost that n_negatives saves: the forward pass over all proposals runs without a
    # graph, and the graph holds n_negatives rows per example
    posterior = PosteriorNegatives("importance", 10, 0.1, 48, n_negatives)
    net = EnvelopedEnergy(QuadraticEnergy(2, MEAN_Q, LOG_PREC_Q).double(), None)
    calls = []

    def energy_fn(x):
        calls.append((x.shape[0], torch.is_grad_enabled()))
        return net(x)

    x_t = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    one = torch.ones(16, 1, dtype=torch.float64)
    posterior.energies(energy_fn, x_t, one, 0.1 * one, torch.Generator().manual_seed(1))
    graphs = [rows for rows, grad in calls if grad and rows != 16]  # not the Laplace fit's
    assert graphs == [16 * (n_negatives or 48)]
    if n_negatives:
        assert (16 * 48, False) in calls
