"""``save``/``load``: malformed files, the global RNG, dtypes (skdcd._persistence).

Every way in which a file can be wrong gives one ``ValueError`` that names it, and the
network is built for real only once the file's tensors fit it (issue 27).
"""

import json
import math
import os
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd._base import BaseEnergyEstimator
from tests.conftest import FAST

ESTIMATORS = [DCDEnergyEstimator, CDEnergyEstimator]


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
    "the optimizer maximizing": lambda p: [g.update(maximize=True)
                                           for g in p["optimizer"]["param_groups"]],
    "an Adam moment of another shape": lambda p: [
        m.update(exp_avg=torch.zeros(7)) for m in p["optimizer"]["state"].values()],
    "covariances not positive definite": lambda p: p["arrays"].update(
        _base_covs=-p["arrays"]["_base_covs"]),
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


# ---------------------------------------------------------------- weights-only persistence
@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_save_and_load_give_identical_results(est_cls, blobs, tmp_path):
    params = {"persistent": True, "buffer_size": 64} if est_cls is CDEnergyEstimator else {
        "noise_std": (0.05, 0.2)}
    est = est_cls(**{**FAST, **params}).fit(blobs)
    est.score(blobs)  # caches log Z, which is saved too
    est.save(tmp_path / "model.pt")
    other = est_cls.load(tmp_path / "model.pt")
    assert other.get_params() == est.get_params()
    assert np.array_equal(est.score_samples(blobs), other.score_samples(blobs))
    assert np.array_equal(est.sample(10, random_state=0), other.sample(10, random_state=0))
    assert np.array_equal(est.denoise(blobs, 0.2, random_state=0),
                          other.denoise(blobs, 0.2, random_state=0))
    # training resumes exactly where it stopped (optimizer state, buffers, step counter)
    est.partial_fit(blobs)
    other.partial_fit(blobs)
    assert np.array_equal(est.energy(blobs), other.energy(blobs))
    assert list(tmp_path.iterdir()) == [tmp_path / "model.pt"]  # no temporary file left


def test_load_uses_weights_only_and_refuses_other_files(blobs, tmp_path):
    est = DCDEnergyEstimator(**FAST).fit(blobs)
    joblib.dump(est, tmp_path / "model.joblib")
    with pytest.raises(ValueError, match="not a file written by DCDEnergyEstimator.save"):
        DCDEnergyEstimator.load(tmp_path / "model.joblib")

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save(Evil(), f)
    with pytest.raises(ValueError, match="not a file written by"):
        DCDEnergyEstimator.load(tmp_path / "evil.pt")  # no code runs
    est.save(tmp_path / "dcd.pt")
    with pytest.raises(ValueError, match="holds a DCDEnergyEstimator.*DCDEnergyEstimator.load"):
        CDEnergyEstimator.load(tmp_path / "dcd.pt")
    with pytest.raises(FileNotFoundError):
        DCDEnergyEstimator.load(tmp_path / "missing.pt")
    with pytest.raises(NotFittedError):
        DCDEnergyEstimator().save(tmp_path / "unfitted.pt")


def test_save_with_a_custom_energy_net_needs_it_at_load(blobs, tmp_path):
    from tests.conftest import QuadraticEnergy

    est = DCDEnergyEstimator(**{**FAST, "energy_net": QuadraticEnergy}).fit(blobs)
    est.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="custom energy_net"):
        DCDEnergyEstimator.load(tmp_path / "m.pt")
    other = DCDEnergyEstimator.load(tmp_path / "m.pt", energy_net=QuadraticEnergy)
    assert np.array_equal(est.energy(blobs), other.energy(blobs))


@pytest.mark.parametrize("how", ["pickle", "save"])
def test_loading_a_model_from_another_version_warns(how, blobs, tmp_path, monkeypatch):
    import skdcd._persistence as base
    from skdcd import InconsistentVersionWarning

    est = DCDEnergyEstimator(**FAST).fit(blobs)
    monkeypatch.setattr(base, "__version__", "0.0.1")
    if how == "pickle":
        blob = pickle.dumps(est)
    else:
        est.save(tmp_path / "m.pt")
    monkeypatch.undo()
    with pytest.warns(InconsistentVersionWarning, match="saved by skdcd 0.0.1"):
        other = (pickle.loads(blob) if how == "pickle"
                 else DCDEnergyEstimator.load(tmp_path / "m.pt"))
    assert np.array_equal(est.energy(blobs), other.energy(blobs))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        pickle.loads(pickle.dumps(est))  # the same version is silent


@pytest.mark.parametrize("how", ["pickle", "save"])
@pytest.mark.parametrize("old, new", [(True, 1), (False, None)])
def test_a_model_saved_with_resample_proposals_loads_with_n_negatives(how, old, new, blobs,
                                                                      tmp_path):
    # resample_proposals (a bool) became n_negatives; files from before must still load, and
    # train on as they did
    est = DCDEnergyEstimator(**FAST).fit(blobs)
    if how == "pickle":
        state = est.__getstate__()
        del state["n_negatives"]
        state["resample_proposals"] = old
        other = DCDEnergyEstimator.__new__(DCDEnergyEstimator)
        other.__setstate__(state)
    else:
        est.save(tmp_path / "m.pt")
        payload = torch.load(tmp_path / "m.pt", weights_only=True)
        params = json.loads(payload["params"])
        del params["n_negatives"]
        payload["params"] = json.dumps({**params, "resample_proposals": old})
        torch.save(payload, tmp_path / "old.pt")
        other = DCDEnergyEstimator.load(tmp_path / "old.pt")
    assert other.n_negatives == new and "resample_proposals" not in other.__dict__
    assert np.array_equal(est.energy(blobs), other.energy(blobs))
    other.partial_fit(blobs)


def test_a_format_2_file_loads_with_an_input_gain_of_one(blobs, tmp_path):
    # format 2 predates MLPEnergy's input_gain: its networks saw x itself
    est = DCDEnergyEstimator(**FAST).fit(blobs)
    est.energy_net_.net.input_gain.fill_(1.0)
    est.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["energy_net"]["net.input_gain"]
    payload["format_version"] = 2
    torch.save(payload, tmp_path / "old.pt")
    other = DCDEnergyEstimator.load(tmp_path / "old.pt")
    assert other.energy_net_.net.input_gain == 1.0
    assert np.array_equal(est.energy(blobs), other.energy(blobs))


def test_save_to_a_file_name_at_the_systems_limit(saved, tmp_path):
    est, _, X = saved
    path = tmp_path / ("m" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 3) + ".pt")
    est.save(path)  # the temporary file's name is short, whatever the target's
    assert np.array_equal(DCDEnergyEstimator.load(path).energy(X), est.energy(X))
    assert os.listdir(tmp_path) == [path.name]



# ---------------------------------------------------------------- found by review
def _item_factory(n_features):
    """A custom network whose initialisation reads a value (impossible on ``meta``)."""
    net = torch.nn.Linear(n_features, 1)
    with torch.no_grad():
        net.weight /= float(net.weight.norm())
    return net


def test_a_custom_network_that_reads_values_at_init_still_loads(saved, tmp_path):
    _, _, X = saved
    est = DCDEnergyEstimator(**{**FAST, "energy_net": _item_factory}).fit(X)
    est.save(tmp_path / "m.pt")
    again = DCDEnergyEstimator.load(tmp_path / "m.pt", energy_net=_item_factory)
    assert np.array_equal(again.energy(X), est.energy(X))


def test_a_version_warning_made_an_error_stays_a_warning(saved, monkeypatch):
    from skdcd import InconsistentVersionWarning, _persistence

    _, path, _ = saved
    monkeypatch.setattr(_persistence, "__version__", "0.0.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        with pytest.raises(InconsistentVersionWarning):
            DCDEnergyEstimator.load(path)


def test_what_save_writes_load_reads(saved, tmp_path):
    _, _, X = saved
    est = DCDEnergyEstimator(**{**FAST, "clip_margin": None}).fit(X)
    est._cache["log_z"] = math.inf  # e.g. an energy unbounded below
    est.set_params(clip_margin=1.0).save(tmp_path / "m.pt")  # the box was never set
    again = DCDEnergyEstimator.load(tmp_path / "m.pt")
    assert "log_z" not in again._cache  # recomputed when asked
    assert np.array_equal(again.energy(X), est.energy(X))


def test_load_reads_an_open_binary_file(saved):
    import io

    est, path, X = saved
    again = DCDEnergyEstimator.load(io.BytesIO(path.read_bytes()))
    assert np.array_equal(again.energy(X), est.energy(X))
