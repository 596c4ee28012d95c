"""``save``/``load``: malformed files, the global RNG, dtypes (skdcd._persistence).

Every way in which a file can be wrong gives one ``ValueError`` that names it, and the
network is built for real only once the file's tensors fit it (issue 27).
"""

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd._base import BaseEnergyEstimator
from tests.conftest import FAST


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X = np.random.RandomState(0).randn(120, 2) * [1.0, 3.0]
    est = DCDEnergyEstimator(**FAST).fit(X)
    est.log_partition_  # noqa: B018 - cached, so that the file holds log Z
    path = tmp_path_factory.mktemp("saved") / "m.pt"
    est.save(path)
    return est, path, X


def _json_edit(key, **changes):
    def edit(payload):
        value = json.loads(payload[key])
        value.update(changes)
        payload[key] = json.dumps(value)
    return edit


def _pop(*keys):
    def edit(payload):
        target = payload
        for k in keys[:-1]:
            target = target[k]
        target.pop(keys[-1])
    return edit


TAMPERED = {
    "no params": _pop("params"),
    "no format_version": _pop("format_version"),
    "no arrays": _pop("arrays"),
    "no energy_net": _pop("energy_net"),
    "no state low": _pop("energy_net", "low"),
    "no mean_": _pop("arrays", "mean_"),
    "format_version a string": lambda p: p.update(format_version="3"),
    "format_version a bool": lambda p: p.update(format_version=True),
    "params a list": lambda p: p.update(params="[1, 2]"),
    "params not JSON": lambda p: p.update(params="{"),
    "an unknown parameter": _json_edit("params", bogus=1),
    "a parameter out of range": _json_edit("params", learning_rate=-1),
    "energy_net_ among the scalars": _json_edit("scalars", energy_net_=1),
    "an unknown scalar": _json_edit("scalars", __class__="x"),
    "hidden_layer_sizes a string": _json_edit("params", hidden_layer_sizes="ab"),
    "hidden_layer_sizes with a bool": _json_edit("params", hidden_layer_sizes=[True]),
    "n_features_in_ a string": _json_edit("scalars", n_features_in_="2"),
    "n_features_in_ larger": _json_edit("scalars", n_features_in_=3),
    "n_iter_ negative": _json_edit("scalars", n_iter_=-1),
    "loss_curve_ a string": _json_edit("scalars", loss_curve_="x"),
    "log Z NaN": lambda p: p["cache"].update(log_z=math.nan),
    "log Z a string": lambda p: p["cache"].update(log_z="1"),
    "scale_ zero": lambda p: p["arrays"].update(scale_=torch.zeros(2, dtype=torch.float64)),
    "box infinite": lambda p: p["arrays"].update(
        _z_low=torch.full((2,), -math.inf, dtype=torch.float64)),
    "mean_ an int tensor": lambda p: p["arrays"].update(mean_=torch.zeros(2, dtype=torch.long)),
    "mean_ too long": lambda p: p["arrays"].update(mean_=torch.zeros(3, dtype=torch.float64)),
    "an unknown array": lambda p: p["arrays"].update(evil=torch.zeros(2, dtype=torch.float64)),
    "an unknown tensor": lambda p: p["tensors"].update(evil=torch.zeros(2)),
    "a NaN weight": lambda p: p["energy_net"].update(
        {"net.net.0.bias": torch.full_like(p["energy_net"]["net.net.0.bias"], math.nan)}),
    "a weight of another shape": lambda p: p["energy_net"].update(
        {"net.net.0.weight": torch.zeros(3, 3)}),
    "the clipping box NaN": lambda p: p["energy_net"].update(low=torch.tensor(math.nan)),
    "feature names of another length": lambda p: p.update(feature_names_in=["a"]),
    "feature names not strings": lambda p: p.update(feature_names_in=[1, 2]),
    "the optimizer state a list": lambda p: p.update(optimizer=[1]),
    "the optimizer state of another network": lambda p: p["optimizer"].update(
        param_groups=[{"params": [0]}]),
    "an extra entry": lambda p: p.update(extra=1),
    "the estimator a number": lambda p: p.update(estimator=1),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_file_gives_one_value_error_naming_it(case, saved, tmp_path):
    _, path, _ = saved
    payload = torch.load(path, weights_only=True)
    TAMPERED[case](payload)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        DCDEnergyEstimator.load(bad)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_file_gives_a_value_error_naming_it(keep, saved, tmp_path):
    _, path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[:int(keep * len(data))])
    with pytest.raises(ValueError, match="cut.pt"):
        DCDEnergyEstimator.load(bad)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_load_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        DCDEnergyEstimator.load(fifo)


def test_a_file_declaring_a_huge_network_fails_before_building_it(saved, tmp_path,
                                                                   monkeypatch):
    _, path, _ = saved
    payload = torch.load(path, weights_only=True)
    _json_edit("params", hidden_layer_sizes=[15000, 15000])(payload)
    torch.save(payload, tmp_path / "big.pt")
    built = []
    build = BaseEnergyEstimator._build_energy_net

    def spy(self, n_features):
        net = build(self, n_features)
        built.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(BaseEnergyEstimator, "_build_energy_net", spy)
    with pytest.raises(ValueError, match="big.pt"):
        DCDEnergyEstimator.load(tmp_path / "big.pt")
    assert built == ["meta"]  # 900 MB of weights only on the device that allocates nothing


def test_load_leaves_the_global_torch_generator_alone(saved):
    _, path, _ = saved
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    DCDEnergyEstimator.load(path)
    assert torch.equal(torch.rand(3), expected)


def test_load_refuses_an_energy_net_for_a_model_without_one(saved):
    _, path, _ = saved
    with pytest.raises(ValueError, match="has no custom energy_net"):
        DCDEnergyEstimator.load(path, energy_net=lambda d: torch.nn.Linear(d, 1))


def test_a_valid_file_loads_to_the_same_model(saved):
    est, path, X = saved
    again = DCDEnergyEstimator.load(path)
    assert np.array_equal(again.score_samples(X), est.score_samples(X))
    assert again._cache["log_z"] == est._cache["log_z"]


@pytest.mark.parametrize("cls, params", [
    (DCDEnergyEstimator, {}),
    (DCDEnergyEstimator, {"time_conditional": True, "recovery_steps": 2}),
    (CDEnergyEstimator, {"persistent": True, "buffer_size": 50}),
])
def test_float32_rows_round_trip_exactly(cls, params, tmp_path):
    X = (np.random.RandomState(1).randn(150, 2) * [0.3, 2.0] + 0.1).astype(np.float32)
    est = cls(**FAST, **params).fit(X)
    assert est.mean_.dtype == est.scale_.dtype == np.float64  # whatever X's dtype
    est.save(tmp_path / "m.pt")
    again = cls.load(tmp_path / "m.pt")
    assert np.array_equal(again.score_samples(X), est.score_samples(X))
    noisy = X[:20] + np.float32(0.1)
    a, b = (m.denoise(noisy, 0.1, random_state=0) for m in (est, again))
    assert a.dtype == b.dtype == np.float64 and np.array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.partial_fit(X)
        again.partial_fit(X)
    assert np.array_equal(again.energy(X), est.energy(X))


def test_every_output_is_float64_whatever_the_input_dtype(saved):
    est, _, X = saved
    X32 = X.astype(np.float32)
    for out in (est.energy(X32), est.score_samples(X32), est.sample(3, random_state=0),
                est.denoise(X32[:4], 0.1, random_state=0)):
        assert out.dtype == np.float64
