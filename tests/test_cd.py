"""CD-k and persistent CD negatives."""

import numpy as np
import torch

from skdcd import CDEnergyEstimator
from skdcd._objectives import CDObjective
from skdcd.networks import EnvelopedEnergy
from tests.conftest import FAST, QuadraticEnergy


def test_cd_negatives_are_k_langevin_steps_from_the_data():
    objective = CDObjective(0.0, None, n_steps=1, step_size=0.01)
    net = EnvelopedEnergy(QuadraticEnergy(2).double(), None)
    x = torch.ones(4, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x_neg = objective.negatives(net, x, g)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 2, generator=g, dtype=torch.float64)
    # one ULA step on E = ½‖x‖²: x - η x + sqrt(2η) ξ
    torch.testing.assert_close(x_neg, x - 0.01 * x + np.sqrt(0.02) * noise)


def test_long_cd_chains_reach_the_model():
    objective = CDObjective(0.0, None, n_steps=2000, step_size=0.01)
    net = EnvelopedEnergy(QuadraticEnergy(2, [1.0, -1.0], [0.0, 0.0]).double(), None)
    x = torch.zeros(4000, 2, dtype=torch.float64)
    x_neg = objective.negatives(net, x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_neg.mean(0), torch.tensor([1.0, -1.0], dtype=torch.float64),
                               atol=0.06, rtol=0)


def test_persistent_buffer_is_updated_and_pickled(blobs):
    est = CDEnergyEstimator(**{**FAST, "persistent": True, "buffer_size": 64}).fit(blobs)
    assert est._buffer.shape == (64, 2) and est._buffer.device.type == "cpu"
    before = est._buffer.clone()
    est.partial_fit(blobs)
    assert not torch.equal(before, est._buffer)
    assert np.isfinite(est.score(blobs))


def test_reinit_prob_one_restarts_every_chain_from_the_base(blobs):
    est = CDEnergyEstimator(**{**FAST, "persistent": True, "reinit_prob": 1.0, "n_steps": 1,
                               "step_size": 1e-8}).fit(blobs)
    # each chain restarted from the base then barely moved: buffer ~ N(base_mean, base_std)
    buf = est._buffer.numpy()
    touched = np.abs(buf - buf.mean(0)).sum(1) > 0
    assert touched.all()
    np.testing.assert_allclose(buf.std(0), est._base_std, rtol=0.5)
