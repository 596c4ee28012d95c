"""log Z oracles: quadratic energies have log Z = d/2 log 2π + Σ log s."""

import math

import numpy as np
import pytest
import torch

from skdcd import partition


def _quadratic(mean, std):
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)

    def energy(x):
        return 0.5 * ((x - mean) / std).pow(2).sum(dim=1) + 1.7  # offset: log Z shifts by -1.7

    exact = 0.5 * len(mean) * math.log(2 * math.pi) + float(torch.log(std).sum()) - 1.7
    return energy, exact


@pytest.mark.parametrize("mean,std", [([0.3], [0.2]), ([1.0, -1.0], [0.5, 2.0])])
def test_quadrature_is_exact_for_quadratic_energies(mean, std):
    energy, exact = _quadratic(mean, std)
    # a box that is too small on purpose: it must grow until the edge mass is negligible
    log_z, edge = partition.log_partition_quadrature(energy, np.full(len(mean), -1.0),
                                                     np.full(len(mean), 1.0), n_grid=256)
    assert edge < partition.EDGE_MASS_WARN
    assert log_z == pytest.approx(exact, abs=1e-6)


def test_quadrature_warns_when_the_mass_escapes():
    def flat(x):
        return torch.zeros(x.shape[0], dtype=x.dtype)

    with pytest.warns(RuntimeWarning, match="edge"):
        partition.log_partition_quadrature(flat, [-1.0], [1.0], n_grid=32, max_expansions=1)


def test_quadrature_rejects_high_dimensions():
    with pytest.raises(ValueError, match="1 or 2"):
        partition.log_partition_quadrature(lambda x: x.sum(1), [0, 0, 0], [1, 1, 1])


@pytest.mark.parametrize("d", [1, 5])
def test_ais_within_three_standard_errors(d):
    rng = np.random.RandomState(d)
    energy, exact = _quadratic(rng.randn(d), np.exp(0.3 * rng.randn(d)))
    g = torch.Generator().manual_seed(0)
    log_z, se, ess, n = partition.log_partition_ais(
        energy, torch.zeros(d, dtype=torch.float64), torch.full((d,), 2.0, dtype=torch.float64),
        n_particles=512, n_steps=200, generator=g)
    assert 0 < se < 0.1 and 10 < ess <= n == 512
    assert abs(log_z - exact) < 3 * se + 1e-3


def test_the_standard_error_grows_without_bound_when_groups_disagree():
    # regression: the weights were rescaled to mean 1 before their std was taken, so even
    # complete collapse read as "s.e. 1.0"; groups of particles that disagree by 40 nats
    # must say so
    log_w = torch.zeros(1024, dtype=torch.float64)
    log_w[:128] = 40.0  # one group of eight carries all the mass
    est = partition.estimate_from_log_weights(log_w)
    assert est.ess == pytest.approx(128.0) and est.std_err > 4


def test_collapsed_weights_warn():
    log_w = torch.zeros(1024, dtype=torch.float64)
    log_w[0] = 40.0
    with pytest.warns(RuntimeWarning, match="collapsed"):
        est = partition.estimate_from_log_weights(log_w)
    assert est.ess < 1.01


def test_local_variance_sees_the_model_where_the_data_are_constant():
    def energy(x):  # N(0, diag(0.05², 1, 4))
        return 0.5 * (x / torch.tensor([0.05, 1.0, 2.0], dtype=x.dtype)).pow(2).sum(dim=1)

    var = partition.local_variance(energy, torch.zeros(64, 3, dtype=torch.float64),
                                   generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(var.numpy(), [0.05**2, 1.0, 4.0], rtol=1e-4)


def test_ais_from_a_mixture_fitted_to_samples_is_within_its_errors():
    energy, exact = _quadratic([0.5, -1.0, 2.0], [0.3, 1.0, 2.0])
    rows = torch.as_tensor(np.random.RandomState(0).randn(2000, 3) * [0.3, 1.0, 2.0]
                           + [0.5, -1.0, 2.0])
    result = partition.log_partition_from(energy, partition.MixtureProposal.fit(rows),
                                          n_particles=1024, n_steps=32, step_size=0.1,
                                          generator=torch.Generator().manual_seed(0))
    est = partition.estimate_from_log_weights(result.log_weights)
    assert abs(est.log_z - exact) < 3 * est.std_err < 0.1
