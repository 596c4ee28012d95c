"""skdcd.conditional: the Gaussian mixture's conditional against closed forms, and imputation
by an energy against the exact conditional of a Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from skdcd.conditional import (
    DonorKernels,
    GaussianMixtureConditional,
    ProposalMixture,
    clamped,
    impute,
)

D = torch.float64


def _spd(rng, d, scale=1.0):
    a = rng.randn(d, d)
    return scale * (a @ a.T / d + 0.2 * np.eye(d))


def _mixture(rng, k=3, d=5):
    means = rng.randn(k, d) * 2
    covs = np.stack([_spd(rng, d, s) for s in np.linspace(0.5, 2.0, k)])
    weights = rng.dirichlet(np.ones(k) * 2)
    return means, covs, weights


def _patterns(rng, n, d):
    missing = rng.rand(n, d) < 0.5
    missing[0] = False  # nothing missing
    missing[1] = True
    missing[1, 0] = False  # one observed value
    return missing


def _exact(means, covs, weights, x, miss):
    """Conditional mean and responsibilities of one row, by the textbook formulas."""
    o, m = ~miss, miss
    log_r = np.array([np.log(w) + (multivariate_normal(mu[o], c[np.ix_(o, o)]).logpdf(x[o])
                                   if o.any() else 0.0)
                      for mu, c, w in zip(means, covs, weights, strict=True)])
    r = np.exp(log_r - logsumexp(log_r))
    cond = []
    for mu, c in zip(means, covs, strict=True):
        mean = mu.copy()
        mean[o] = x[o]
        if m.any() and o.any():
            mean[m] = mu[m] + c[np.ix_(m, o)] @ np.linalg.solve(c[np.ix_(o, o)], x[o] - mu[o])
        cond.append(mean)
    return r, np.array(cond)


def _conditional(means, covs, weights, x, missing):
    t = lambda a: torch.as_tensor(a, dtype=D)  # noqa: E731
    return GaussianMixtureConditional.from_mixture(t(means), t(covs), t(weights), t(x),
                                                   torch.as_tensor(missing))


def test_mixture_conditional_matches_the_closed_form():
    rng = np.random.RandomState(0)
    means, covs, weights = _mixture(rng)
    x = rng.randn(40, 5) * 2
    missing = _patterns(rng, 40, 5)
    cond = _conditional(means, covs, weights, np.where(missing, np.nan, x), missing)
    for i in range(len(x)):
        r, cond_means = _exact(means, covs, weights, x[i], missing[i])
        np.testing.assert_allclose(cond.log_resp[i].exp().numpy(), r, atol=1e-10)
        np.testing.assert_allclose(cond.means[i].numpy(), cond_means, atol=1e-10)
        np.testing.assert_allclose(cond.mean()[i].numpy(), r @ cond_means, atol=1e-10)


def test_mixture_conditional_log_prob_and_draws():
    rng = np.random.RandomState(1)
    means, covs, weights = _mixture(rng, k=2, d=4)
    row = rng.randn(4)
    miss = np.array([False, True, False, True])
    n = 20000
    cond = _conditional(means, covs, weights, np.tile(row, (n, 1)), np.tile(miss, (n, 1)))
    draws = cond.sample(1, torch.Generator().manual_seed(0))  # (n, 1, d)
    assert torch.equal(draws[:, 0, ~torch.as_tensor(miss)],
                       torch.as_tensor(row[~miss]).expand(n, 2))
    # log_prob: the joint's density over the observed marginal's, at a few draws
    joint = [multivariate_normal(mu, c) for mu, c in zip(means, covs, strict=True)]
    o = ~miss
    marginal = [multivariate_normal(mu[o], c[np.ix_(o, o)])
                for mu, c in zip(means, covs, strict=True)]
    for y in draws[:5, 0].numpy():
        exact = (logsumexp([np.log(w) + j.logpdf(y) for w, j in zip(weights, joint, strict=True)])
                 - logsumexp([np.log(w) + m.logpdf(row[o])
                              for w, m in zip(weights, marginal, strict=True)]))
        got = float(cond.log_prob(torch.as_tensor(y[None, None]).expand(n, 1, 4))[0, 0])
        assert abs(got - exact) < 1e-9
    # the draws' mean and covariance: the mixture of the components' conditionals
    r, cond_means = _exact(means, covs, weights, row, miss)
    m = miss
    comp_covs = [c[np.ix_(m, m)] - c[np.ix_(m, o)] @ np.linalg.solve(c[np.ix_(o, o)],
                                                                      c[np.ix_(o, m)])
                 for c in covs]
    mean = r @ cond_means[:, m]
    cov = sum(w * (cc + np.outer(mu[m] - mean, mu[m] - mean))
              for w, cc, mu in zip(r, comp_covs, cond_means, strict=True))
    got = draws[:, 0, torch.as_tensor(miss)].numpy()
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(got.mean(axis=0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(got.T), cov, atol=4 * np.sqrt(2 / n) * np.diag(cov).max())


def test_diagonal_mixtures_take_the_same_conditional_as_their_full_matrices():
    rng = np.random.RandomState(2)
    means = rng.randn(2, 6)
    var = rng.uniform(0.3, 3.0, (2, 6))
    x = rng.randn(30, 6)
    missing = _patterns(rng, 30, 6)
    weights = np.array([0.3, 0.7])
    diag = _conditional(means, var, weights, x, missing)
    full = _conditional(means, np.stack([np.diag(v) for v in var]), weights, x, missing)
    torch.testing.assert_close(diag.means, full.means)
    torch.testing.assert_close(diag.log_resp, full.log_resp)
    y = full.sample(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(diag.log_prob(y), full.log_prob(y))


def test_clamped_energy_moves_only_the_missing_coordinates():
    energy_fn = lambda x: (x * torch.arange(1.0, 4.0)).sum(dim=1)  # noqa: E731
    x = torch.tensor([[1.0, 2.0, 3.0]])
    missing = torch.tensor([[False, True, False]])
    y = torch.tensor([[10.0, 0.5, -10.0]], requires_grad=True)
    clamped(energy_fn, x, missing)(y).sum().backward()
    assert float(clamped(energy_fn, x, missing)(y.detach())) == 1 + 2 * 0.5 + 9
    torch.testing.assert_close(y.grad, torch.tensor([[0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("sample_posterior", [False, True])
def test_impute_draws_the_exact_conditional_of_a_gaussian_energy(sample_posterior):
    # the energy is N(μ, Σ); the proposal a wrong Gaussian (N(0, I)): the resampling and
    # MALA must make up the difference
    rng = np.random.RandomState(3)
    d, n = 4, 3000
    mu, cov = rng.randn(d), _spd(rng, d)
    prec = torch.as_tensor(np.linalg.inv(cov), dtype=D)
    mu_t = torch.as_tensor(mu, dtype=D)

    def energy_fn(x):
        z = x - mu_t
        return 0.5 * ((z @ prec) * z).sum(dim=1)

    row = rng.randn(d)
    miss = np.array([True, False, True, False])
    cond = _conditional(np.zeros((1, d)), np.eye(d)[None], np.ones(1),
                        np.tile(row, (n, 1)), np.tile(miss, (n, 1)))
    filled = impute(energy_fn, cond, n_steps=64, step_size=0.1,
                    generator=torch.Generator().manual_seed(0), n_draws=4,
                    sample_posterior=sample_posterior).numpy()
    o, m = ~miss, miss
    mean = mu[m] + cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)], row[o] - mu[o])
    c = cov[np.ix_(m, m)] - cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)],
                                                               cov[np.ix_(o, m)])
    np.testing.assert_array_equal(filled[:, o], np.tile(row[o], (n, 1)))
    got = filled[:, m]
    if sample_posterior:  # independent draws: mean within 4 s.e., covariance too
        assert np.all(np.abs(got.mean(axis=0) - mean) < 4 * np.sqrt(np.diag(c) / n))
        np.testing.assert_allclose(np.cov(got.T), c, atol=4 * np.sqrt(2 / n) * np.diag(c).max())
    else:  # posterior means: unbiased, each far tighter than the conditional's spread
        spread = got.std(axis=0)
        assert np.all(np.abs(got.mean(axis=0) - mean) < 4 * spread / np.sqrt(n))
        assert np.all(spread < 0.3 * np.sqrt(np.diag(c)))


def test_donor_kernels_pick_the_nearest_on_observed_coordinates_and_normalise():
    rng = np.random.RandomState(4)
    rows = torch.as_tensor(rng.randn(200, 3), dtype=D)
    x = torch.as_tensor(rng.randn(5, 3), dtype=D)
    missing = torch.zeros(5, 3, dtype=torch.bool)
    missing[:, 2] = True
    missing[0, 1] = True
    kernels = DonorKernels.nearest(rows, torch.where(missing, torch.nan, x), missing, k=4,
                                   bandwidth=0.3)
    for i in range(5):
        o = ~missing[i]
        dist = ((rows[:, o] - x[i, o]) ** 2).sum(dim=1)
        expected = set(dist.argsort()[:4].tolist())
        got = {int(torch.nonzero((rows == r).all(dim=1))[0]) for r in kernels.donors[i]}
        assert got == expected
    # the density integrates to 1 over the missing coordinates: row 1 has one (a grid)
    grid = torch.linspace(-6, 6, 4001, dtype=D)
    y = x[1].repeat(len(grid), 1)
    y[:, 2] = grid
    dens = torch.stack([kernels.log_prob(y[None, j:j + 1].expand(5, 1, 3))[1, 0]
                        for j in range(len(grid))]).exp()
    assert abs(float(torch.trapezoid(dens, grid)) - 1.0) < 1e-6
    draws = kernels.sample(7, torch.Generator().manual_seed(0))
    assert draws.shape == (5, 7, 3)
    assert torch.equal(draws[~missing[:, None, :].expand(5, 7, 3)],
                       x[:, None, :].expand(5, 7, 3)[~missing[:, None, :].expand(5, 7, 3)])


def test_a_proposal_mixture_is_the_average_of_its_parts():
    rng = np.random.RandomState(5)
    means, covs, weights = _mixture(rng, k=2, d=3)
    x = rng.randn(4, 3)
    missing = _patterns(rng, 4, 3)
    missing[0, 1] = True
    gmm = _conditional(means, covs, weights, x, missing)
    kernels = DonorKernels.nearest(torch.as_tensor(rng.randn(50, 3), dtype=D),
                                   torch.as_tensor(x, dtype=D), torch.as_tensor(missing), 5, 0.5)
    mix = ProposalMixture((gmm, kernels))
    y = mix.sample(9, torch.Generator().manual_seed(0))
    assert y.shape == (4, 9, 3)
    # 9 draws: 5 from the first part and 4 from the second, which weigh 5/9 and 4/9 (the
    # density the draws came from; equal weights would bias the importance weights)
    expected = torch.logaddexp(gmm.log_prob(y) + np.log(5 / 9), kernels.log_prob(y) + np.log(4 / 9))
    torch.testing.assert_close(mix.log_prob(y), expected)
    torch.testing.assert_close(mix.log_prob(y[:, :8]), torch.logaddexp(
        gmm.log_prob(y[:, :8]), kernels.log_prob(y[:, :8])) - np.log(2))
