"""The estimator contract shared by DCDEnergyEstimator and CDEnergyEstimator."""

import copy
import os
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.datasets import make_toy
from tests.conftest import FAST, gaussian_model

ESTIMATORS = [DCDEnergyEstimator, CDEnergyEstimator]


# ---------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("est_cls", ESTIMATORS)
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(1, 40), d=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64,
                                                                          np.int64]),
       n_new=st.integers(1, 7))
def test_shapes_and_dtypes_of_every_method(est_cls, n, d, dtype, n_new):
    rng = np.random.RandomState(n * 10 + d)
    X = (rng.randn(n, d) * 3).astype(dtype)
    est = est_cls(**FAST).fit(X)
    X_new = rng.randn(n_new, d)
    for values in (est.score_samples(X_new), est.energy(X_new)):
        assert values.shape == (n_new,) and values.dtype == np.float64
        assert np.isfinite(values).all()
    assert isinstance(est.score(X_new), float)
    samples = est.sample(n_new, random_state=0)
    assert samples.shape == (n_new, d) and samples.dtype == np.float64
    assert np.isfinite(samples).all()
    for method in ("posterior_mean", "map"):
        out = est.denoise(X_new, noise_std=0.5, method=method, random_state=0)
        assert out.shape == X_new.shape and np.isfinite(out).all()
    assert isinstance(est.log_partition_, float) and np.isfinite(est.log_partition_)
    assert est.log_partition_std_ >= 0
    assert len(est.loss_curve_) == est.n_iter_ == FAST["max_iter"]


# ---------------------------------------------------------------- normalisation
@pytest.mark.parametrize("est_cls", ESTIMATORS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_score_samples_invariant_to_an_energy_offset(est_cls, d, blobs):
    X = np.random.RandomState(d).randn(100, d)
    est = est_cls(**FAST).fit(X)
    before, energy_before = est.score_samples(X), est.energy(X)
    with torch.no_grad():
        est.energy_net_.net.net[-1].bias += 5.0
    est._cache.clear()
    assert est.energy(X) == pytest.approx(energy_before + 5.0)
    tol = 1e-6 if d <= 2 else 4 * est.log_partition_std_ + 1e-3  # AIS is random
    np.testing.assert_allclose(est.score_samples(X), before, atol=tol, rtol=0)


@pytest.mark.parametrize("est_cls", ESTIMATORS)
@pytest.mark.parametrize("d,method", [(1, "auto"), (2, "auto"), (2, "ais"), (4, "auto")])
def test_score_samples_exact_for_a_gaussian_energy(est_cls, d, method):
    rng = np.random.RandomState(d)
    mean, var = rng.randn(d), np.exp(rng.randn(d))
    est = gaussian_model(est_cls, mean, var, log_partition=method, quadrature_n_grid=256,
                         ais_n_particles=1024, ais_n_steps=128)
    X = rng.randn(20, d)
    exact = multivariate_normal(mean, np.diag(var)).logpdf(X)
    se = est.log_partition_std_
    if d <= 2 and method == "auto":
        assert se == 0
        np.testing.assert_allclose(est.score_samples(X), exact, atol=1e-6)
    else:
        assert 0 < se < 0.1
        np.testing.assert_allclose(est.score_samples(X), exact, atol=3 * se + 1e-3)


def test_score_samples_includes_the_standardisation_jacobian():
    rng = np.random.RandomState(0)
    X = rng.randn(300, 2) * [100.0, 0.01]
    est = DCDEnergyEstimator(**FAST).fit(X)
    # the same model on rescaled inputs differs exactly by the log-Jacobian
    est_scaled = DCDEnergyEstimator(**FAST).fit(X * 10)
    np.testing.assert_allclose(est_scaled.score_samples(X * 10),
                               est.score_samples(X) - 2 * np.log(10), atol=1e-6)


def test_sample_matches_a_gaussian_energy():
    est = gaussian_model(DCDEnergyEstimator, [1.0, -2.0], [0.25, 4.0], sample_steps=64)
    S = est.sample(4000, random_state=0)
    np.testing.assert_allclose(S.mean(0), [1.0, -2.0], atol=0.1)
    np.testing.assert_allclose(S.std(0), [0.5, 2.0], atol=0.1)


@pytest.mark.parametrize("method", ["posterior_mean", "map"])
def test_denoise_matches_the_exact_gaussian_posterior_mean(method):
    # prior N(m, v), y = x + s ε: posterior mean = mode = (m/v + y/s²) / (1/v + 1/s²)
    mean, var, s = np.array([1.0, -2.0]), np.array([0.25, 4.0]), 0.5
    est = gaussian_model(DCDEnergyEstimator, mean, var, sample_steps=400)
    y = np.random.RandomState(0).randn(200, 2) * 2
    exact = (mean / var + y / s**2) / (1 / var + 1 / s**2)
    out = est.denoise(y, noise_std=s, method=method, random_state=0)
    # the MALA average has Monte Carlo error ~ posterior std / sqrt(effective samples)
    if method == "map":
        np.testing.assert_allclose(out, exact, atol=1e-5)
    else:  # a MALA average: Monte Carlo error ~ 0.1 here, and no bias
        assert np.abs(out - exact).max() < 0.4
        assert np.abs(out - exact).mean() < 0.08
        np.testing.assert_allclose((out - exact).mean(0), 0, atol=0.03)


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_refit_with_the_same_random_state_is_bit_identical(est_cls, blobs):
    a = est_cls(**FAST).fit(blobs)
    b = est_cls(**FAST).fit(blobs)
    for (k, va), vb in zip(a.energy_net_.state_dict().items(),
                           b.energy_net_.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert np.array_equal(a.score_samples(blobs), b.score_samples(blobs))
    assert np.array_equal(a.sample(20, random_state=3), b.sample(20, random_state=3))
    assert np.array_equal(a.denoise(blobs, 0.3, random_state=1),
                          b.denoise(blobs, 0.3, random_state=1))
    c = est_cls(**{**FAST, "random_state": 1}).fit(blobs)
    assert not np.array_equal(a.score_samples(blobs), c.score_samples(blobs))


_DETERMINISM_SCRIPT = """
import hashlib, numpy as np
from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.datasets import make_toy
X = np.random.RandomState(0).randn(300, 2)
for cls in (DCDEnergyEstimator, CDEnergyEstimator):
    est = cls(max_iter=3, hidden_layer_sizes=(16, 16), quadrature_n_grid=64, sample_steps=16,
              random_state=7).fit(X)
    h = hashlib.sha256()
    for v in est.energy_net_.state_dict().values():
        h.update(v.numpy().tobytes())
    h.update(est.score_samples(X).tobytes())
    h.update(est.sample(50, random_state=1).tobytes())
    h.update(est.denoise(X[:20], 0.2, random_state=2).tobytes())
    print(h.hexdigest())
"""


def test_fit_sample_and_score_are_bit_identical_across_processes():
    import contextlib
    import io
    import subprocess
    import sys

    other = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], check=True,
                           capture_output=True, text=True).stdout
    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        exec(_DETERMINISM_SCRIPT, {})
    assert here.getvalue() == other and len(other.split()) == 2


def test_torch_global_rng_is_untouched(blobs):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DCDEnergyEstimator(**FAST).fit(blobs).sample(5, random_state=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("est_cls", ESTIMATORS)
@pytest.mark.parametrize("roundtrip", ["clone", "pickle", "joblib"])
def test_roundtrips_give_identical_results(est_cls, roundtrip, blobs, tmp_path):
    est = est_cls(**FAST).fit(blobs)
    if roundtrip == "clone":
        other = clone(est).fit(blobs)
    elif roundtrip == "pickle":
        other = pickle.loads(pickle.dumps(est))
    else:
        joblib.dump(est, tmp_path / "model.joblib")
        other = joblib.load(tmp_path / "model.joblib")
    assert np.array_equal(est.score_samples(blobs), other.score_samples(blobs))
    assert np.array_equal(est.sample(10, random_state=0), other.sample(10, random_state=0))


# ---------------------------------------------------------------- training API
@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_partial_fit_trains_one_epoch_at_a_time(est_cls, blobs):
    est = est_cls(**FAST)
    assert est.partial_fit(blobs) is est
    assert est.n_iter_ == 1
    first = {k: v.clone() for k, v in est.energy_net_.state_dict().items()}
    est.partial_fit(blobs[:50])
    assert est.n_iter_ == 2 and est.t_ == 2
    changed = [not torch.equal(first[k], v) for k, v in est.energy_net_.state_dict().items()]
    assert any(changed)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(blobs[:, :1])


@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_warm_start_continues_training(est_cls, blobs):
    est = est_cls(**{**FAST, "warm_start": True}).fit(blobs)
    net_before = est.energy_net_
    est.fit(blobs)
    assert est.energy_net_ is net_before and est.n_iter_ == 2 * FAST["max_iter"]
    cold = est_cls(**FAST).fit(blobs).fit(blobs)
    assert cold.n_iter_ == FAST["max_iter"]


def test_feature_names_from_a_dataframe(blobs):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(blobs, columns=["a", "b"])
    est = DCDEnergyEstimator(**FAST).fit(df)
    assert list(est.feature_names_in_) == ["a", "b"]
    with pytest.warns(UserWarning, match="feature names"):
        est.score_samples(blobs)


def test_custom_energy_net_factory(blobs):
    def factory(n_features):
        return torch.nn.Sequential(torch.nn.Linear(n_features, 8), torch.nn.Tanh(),
                                   torch.nn.Linear(8, 1))

    est = DCDEnergyEstimator(**{**FAST, "energy_net": factory}).fit(blobs)
    assert isinstance(est.energy_net_.net, torch.nn.Sequential)
    assert np.isfinite(est.score(blobs))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DCDEnergyEstimator(**{**FAST, "energy_net": lambda d: "not a module"}).fit(blobs)
    bad_shape = DCDEnergyEstimator(**{**FAST, "energy_net": lambda d: torch.nn.Linear(d, 3)})
    with pytest.raises(ValueError, match="energy network must map"):
        bad_shape.fit(blobs)


def test_divergence_is_caught_and_the_weights_restored(blobs):
    est = CDEnergyEstimator(**{**FAST, "learning_rate": 1e12, "energy_reg": 0.0,
                               "max_iter": 30, "step_size": 10.0})
    with pytest.warns(ConvergenceWarning, match="diverged"):
        est.fit(blobs * 1e3)
    assert all(torch.isfinite(p).all() for p in est.energy_net_.parameters())


def test_verbose_shows_a_progress_bar_on_stderr_and_quiet_prints_nothing(blobs, capsys):
    DCDEnergyEstimator(**{**FAST, "verbose": 1}).fit(blobs)
    captured = capsys.readouterr()
    assert "epoch" in captured.err and "steps/s" in captured.err and captured.out == ""
    DCDEnergyEstimator(**FAST).fit(blobs)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------- bad input
BAD_X = {
    "nan": (np.array([[0.0, np.nan]] * 3), ValueError, "NaN"),
    "inf": (np.array([[0.0, np.inf]] * 3), ValueError, "infinity"),
    "empty": (np.zeros((0, 2)), ValueError, "0 sample"),
    "1-D": (np.zeros(3), ValueError, "2D array"),
    "strings": (np.array([["a", "b"]] * 3), ValueError, "could not convert|Unable to convert"),
    "complex": (np.ones((3, 2)) + 1j, ValueError, "Complex"),
}


@pytest.mark.parametrize("est_cls", ESTIMATORS)
@pytest.mark.parametrize("case", list(BAD_X))
def test_bad_inputs_raise_clear_errors(est_cls, case, blobs):
    X_bad, error, match = BAD_X[case]
    with pytest.raises(error, match=match):
        est_cls(**FAST).fit(X_bad)
    est = est_cls(**FAST).fit(blobs)
    for method in (est.score_samples, est.score, est.energy, est.partial_fit,
                   lambda X: est.denoise(X, 0.1)):
        with pytest.raises(error, match=match):
            method(X_bad)
    np.testing.assert_array_equal(est.score_samples(blobs[:3]), est.score_samples(blobs[:3]))


@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_wrong_width_unfitted_and_bad_arguments(est_cls, blobs):
    est = est_cls(**FAST)
    for call in (lambda: est.score_samples(blobs), lambda: est.sample(2),
                 lambda: est.denoise(blobs, 0.1), lambda: est.energy(blobs),
                 lambda: est.score(blobs), lambda: est.log_partition_):
        with pytest.raises(NotFittedError):
            call()
    assert not hasattr(est, "log_partition_")
    est.fit(blobs)
    with pytest.raises(ValueError, match="3 features"):
        est.score_samples(np.zeros((4, 3)))
    for n in (0, -1, 2.5, "3", True, None):
        with pytest.raises(ValueError, match="n_samples"):
            est.sample(n)
    for noise in (0, -1.0, np.nan, np.inf, "0.1", None):
        with pytest.raises(ValueError, match="noise_std"):
            est.denoise(blobs, noise)
    with pytest.raises(ValueError, match="method"):
        est.denoise(blobs, 0.1, method="median")


def test_invalid_parameters_are_reported_at_fit(blobs):
    from sklearn.utils._param_validation import InvalidParameterError

    bad = [dict(noise_std=(0.5, 0.1)), dict(noise_std=(0.1, 0.2, 0.3)), dict(noise_std=-1.0),
           dict(diffusion="vp", noise_std=1.5), dict(negative_sampler="gibbs"),
           dict(hidden_layer_sizes=(0, 4)), dict(device="tpu-9000"),
           dict(log_partition="quadrature")]
    for params in bad:
        est = DCDEnergyEstimator(**{**FAST, **params})
        with pytest.raises((ValueError, InvalidParameterError)):
            est.fit(np.random.RandomState(0).randn(20, 3))


# ---------------------------------------------------------------- devices
def test_cuda_fitted_model_falls_back_to_cpu(blobs):
    # simulates loading a model fitted with device="cuda" on a machine without CUDA
    est = DCDEnergyEstimator(**FAST).fit(blobs)
    expected = est.score_samples(blobs)
    est.device = "cuda"
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the fallback cannot be exercised")
    with pytest.warns(RuntimeWarning, match="computing on the CPU"):
        np.testing.assert_allclose(est.score_samples(blobs), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_fit_on_cuda_then_load_and_score_on_cpu(est_cls, blobs, tmp_path, monkeypatch):
    est = est_cls(**{**FAST, "device": "cuda"}).fit(blobs)
    on_gpu = est.score_samples(blobs)
    joblib.dump(est, tmp_path / "m.joblib")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = joblib.load(tmp_path / "m.joblib")
    with pytest.warns(RuntimeWarning):
        on_cpu = loaded.score_samples(blobs)
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=1e-5, atol=1e-5)
    assert next(loaded.energy_net_.parameters()).device.type == "cpu"


# ---------------------------------------------------------------- composition
def test_pipeline_with_a_scaler(blobs):
    pipe = make_pipeline(StandardScaler(), DCDEnergyEstimator(**FAST)).fit(blobs)
    assert pipe.score_samples(blobs).shape == (len(blobs),)
    assert np.isfinite(pipe.score(blobs))


def test_grid_search_in_parallel_picks_the_best_mean_score(blobs):
    grid = {"noise_std": [0.1, 0.3], "diffusion": ["ve", "vp"]}
    search = GridSearchCV(DCDEnergyEstimator(**FAST), grid, cv=2, n_jobs=2).fit(blobs)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all()
    assert search.best_score_ == scores.max()
    serial = GridSearchCV(DCDEnergyEstimator(**FAST), grid, cv=2, n_jobs=1).fit(blobs)
    np.testing.assert_allclose(serial.cv_results_["mean_test_score"], scores, rtol=1e-6)
    assert serial.best_params_ == search.best_params_


def _torch_threads(estimator, X, y=None) -> float:
    """A 'scorer' that reports how many threads torch uses where the fold ran."""
    return float(torch.get_num_threads())


def test_grid_search_workers_share_the_cores_instead_of_oversubscribing(blobs):
    # joblib's process workers cap OpenMP at cpu_count // n_jobs before torch starts, and
    # torch reads that cap: n_jobs workers never run more threads than there are cores
    search = GridSearchCV(DCDEnergyEstimator(**FAST), {"noise_std": [0.1, 0.3]}, cv=2,
                          n_jobs=2, scoring=_torch_threads).fit(blobs)
    threads = search.cv_results_["mean_test_score"]
    assert (threads >= 1).all() and (threads <= max(1, joblib.cpu_count() // 2)).all()


def test_grid_search_prefers_a_trained_model_over_an_untrained_one():
    rng = np.random.RandomState(0)
    X = rng.randn(600, 2) * [2.0, 0.3]
    X[:, 1] += 0.5 * X[:, 0] ** 2 / 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(DCDEnergyEstimator(**{**FAST, "hidden_layer_sizes": (32, 32)}),
                              {"max_iter": [1, 150]}, cv=3).fit(X)
    assert search.best_params_ == {"max_iter": 150}


@pytest.fixture(scope="module")
def fitted_dcd():
    return DCDEnergyEstimator(**FAST).fit(np.random.RandomState(0).randn(100, 3))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), row=st.integers(0, 19), col=st.integers(0, 2),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_any_non_finite_entry_is_rejected_by_every_method(fitted_dcd, n, row, col, bad):
    X = np.random.RandomState(n).randn(n, 3)
    X[row % n, col] = bad
    for method in (fitted_dcd.score_samples, fitted_dcd.energy, fitted_dcd.score,
                   lambda Z: fitted_dcd.denoise(Z, 0.1)):
        with pytest.raises(ValueError, match="NaN|infinity"):
            method(X)


class _FallingLine(torch.nn.Module):
    """``f(z) = -5 z``: falls forever, the shape of the spurious far modes seen in practice."""

    def __init__(self, n_features):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-5.0))

    def forward(self, x):
        return self.w * x[:, 0]


def _frozen_line(clip_margin):
    X = np.random.default_rng(0).standard_normal((500, 1))
    return DCDEnergyEstimator(energy_net=_FallingLine, learning_rate=1e-12, max_iter=1,
                              clip_margin=clip_margin, random_state=0).fit(X)


def test_clipping_stops_a_far_spurious_mode_from_taking_the_mass():
    from scipy.integrate import quad

    est = _frozen_line(1.0)
    low, high = float(est.energy_net_.low[0]), float(est.energy_net_.high[0])

    def density(t):  # exp(-E) with the network frozen at the box edges beyond them
        return np.exp(5.0 * np.clip(t, low, high) - t * t / 18.0)

    exact = np.log(sum(quad(density, a, b, limit=200)[0]
                       for a, b in [(-60, low), (low, high), (high, 60)]))
    # midpoint rule on a 512-point grid across the kinks at the box edges: ~3e-4
    assert est.log_partition_ - np.log(est.scale_[0]) == pytest.approx(exact, abs=1e-3)
    # unclipped, the same line puts its mode at z = 45, e^100 times heavier than the data's
    unclipped = _frozen_line(None)
    assert unclipped.log_partition_ > est.log_partition_ + 50


def test_partial_fit_widens_the_clipping_box():
    rng = np.random.default_rng(0)
    est = DCDEnergyEstimator(**FAST).partial_fit(rng.standard_normal((200, 2)))
    high = est.energy_net_.high.clone()
    est.partial_fit(rng.standard_normal((200, 2)) + 10.0)
    assert torch.all(est.energy_net_.high > high + 5)


# ---------------------------------------------------------------- divergence and clipping
class _NaNAfter(torch.nn.Module):
    """An MLP energy that turns NaN once ``calls`` forward passes have run."""

    def __init__(self, n_features, calls):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 1)
        self.calls, self.seen = calls, 0

    def forward(self, x):
        self.seen += 1
        out = self.linear(x).squeeze(1)
        return out * float("nan") if self.seen > self.calls else out


def test_divergence_in_a_later_epoch_rolls_back_that_epoch_and_warns(blobs):
    est = CDEnergyEstimator(**{**FAST, "batch_size": 32, "max_iter": 1})
    est.fit(blobs)
    weights = {k: v.clone() for k, v in est.energy_net_.state_dict().items()}
    adam = copy.deepcopy(est._optimizer_state)
    t, n_iter, curve = est.t_, est.n_iter_, list(est.loss_curve_)
    est.set_params(learning_rate=1e12, energy_reg=0.0)
    with pytest.warns(ConvergenceWarning, match="diverged.*epoch 2.*as it was before this"):
        est.partial_fit(blobs)
    for k, v in est.energy_net_.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert est._optimizer_state["state"][0]["step"] == adam["state"][0]["step"]
    assert (est.t_, est.n_iter_, est.loss_curve_) == (t, n_iter, curve)
    assert np.isfinite(est.score(blobs))
    est.set_params(learning_rate=1e-3).partial_fit(blobs)  # and it trains on
    assert est.n_iter_ == n_iter + 1


def test_divergence_in_the_first_epoch_raises_and_leaves_the_estimator_unfitted(blobs):
    est = DCDEnergyEstimator(**{**FAST, "batch_size": 32,
                                "energy_net": lambda d: _NaNAfter(d, calls=4)})
    with pytest.raises(ValueError, match="diverged.*before any epoch completed"):
        est.fit(blobs)
    with pytest.raises(NotFittedError):
        est.score(blobs)
    est.set_params(energy_net=None).fit(blobs)  # a fresh fit works
    assert est.n_iter_ == FAST["max_iter"]


def _state(est) -> dict:
    """Every fitted attribute of ``est`` by value (the network's weights included)."""
    params = est.get_params(deep=False)
    state = {k: copy.deepcopy(v) for k, v in vars(est).items()
             if k != "energy_net_" and k not in params}
    if hasattr(est, "energy_net_"):
        state["energy_net_"] = {k: v.clone() for k, v in est.energy_net_.state_dict().items()}
    return state


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(_same(a[k], b[k]) for k in a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b or a is b or (a != a and b != b)


class _Raises(torch.nn.Module):
    """A linear energy whose forward pass raises ``error`` from the ``calls``-th call on."""

    def __init__(self, n_features, error=KeyboardInterrupt, calls=5):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 1)
        self.error, self.calls, self.seen = error, calls, 0

    def forward(self, x):
        self.seen += 1
        if self.seen >= self.calls:
            raise self.error("raised by the network")
        return self.linear(x).squeeze(1)


def _factory_raises(n_features):
    raise RuntimeError("the factory failed")


FAILED_REFITS = {  # (the refit's data, its parameter changes, the error it raises)
    "rows that overflow": (np.array([[0.0, 1.7e308], [1.0, -1.7e308], [2.0, 0.0]]), {},
                           ValueError),
    "3 features with quadrature": (np.ones((20, 3)) * np.arange(20)[:, None],
                                   {"log_partition": "quadrature"}, ValueError),
    "a factory that raises": (np.random.RandomState(0).randn(50, 3),  # a new width, too
                              {"energy_net": _factory_raises}, RuntimeError),
    "an interrupt mid-epoch": (None, {"energy_net": _Raises, "max_iter": 3},
                               KeyboardInterrupt),
    "a network that raises mid-epoch": (
        None, {"energy_net": lambda d: _Raises(d, RuntimeError, 9), "max_iter": 3},
        RuntimeError),
    "divergence before an epoch completed": (
        None, {"energy_net": lambda d: _NaNAfter(d, calls=4), "batch_size": 32}, ValueError),
}


def _fail_after(module, calls, error=None):
    """Make ``module`` raise ``error`` (or return NaN) from its ``calls``-th forward on."""
    forward, seen = module.forward, []

    def failing(*args):
        seen.append(1)
        out = forward(*args)
        if len(seen) >= calls:
            if error is None:
                return out * float("nan")
            raise error("raised by the network")
        return out

    module.forward = failing


@pytest.mark.parametrize("case, how", [  # a warm fit keeps its network: no factory call
    (case, how) for case in FAILED_REFITS for how in ("fit", "warm fit", "partial_fit")
    if how == "fit" or case != "a factory that raises"])
@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_a_failed_fit_leaves_the_estimator_exactly_as_before(est_cls, case, how, blobs):
    X, changes, error = FAILED_REFITS[case]
    X, changes = blobs if X is None else X, dict(changes)
    est = est_cls(**{**FAST, "persistent": True} if est_cls is CDEnergyEstimator else FAST)
    est.fit(blobs)
    est.log_partition_  # noqa: B018 - the cache is part of the state
    before, energies = _state(est), est.energy(blobs)
    if how != "fit" and "energy_net" in changes:  # a warm fit keeps its network ...
        changes.pop("energy_net")
        # ... so that network is made to fail in the same way
        _fail_after(est.energy_net_.net, *{
            "an interrupt mid-epoch": (5, KeyboardInterrupt),
            "a network that raises mid-epoch": (2, RuntimeError)}.get(case, (2,)))
        if case.startswith("divergence"):
            error = ConvergenceWarning  # a fitted model is kept, with a warning
    est.set_params(**changes, warm_start=how == "warm fit")
    call = (lambda: est.partial_fit(X)) if how == "partial_fit" else (lambda: est.fit(X))
    if error is ConvergenceWarning:
        with pytest.warns(error, match="as it was before this call"):
            call()
    else:
        with pytest.raises(error):
            call()
    est.energy_net_.net.__dict__.pop("forward", None)
    after = _state(est)
    assert _same(after, before), [k for k in before if not _same(after.get(k), before[k])]
    assert np.array_equal(est.energy(blobs), energies)


def test_an_interrupted_first_fit_leaves_the_estimator_unfitted(blobs):
    est = DCDEnergyEstimator(**{**FAST, "energy_net": _Raises, "max_iter": 3})
    with pytest.raises(KeyboardInterrupt):
        est.fit(blobs)
    assert vars(est) == vars(DCDEnergyEstimator(**{**FAST, "energy_net": _Raises,
                                                   "max_iter": 3}))


def test_a_diverging_partial_fit_rolls_back_the_box_and_the_replay_buffer(blobs):
    est = CDEnergyEstimator(**{**FAST, "persistent": True, "buffer_size": 64}).fit(blobs)
    before = _state(est)
    _fail_after(est.energy_net_.net, 3)  # NaN energies once the chains have moved
    with pytest.warns(ConvergenceWarning, match="as it was before this call"):
        est.partial_fit(blobs * 3)  # wider rows: a wider box, if it were kept
    est.energy_net_.net.__dict__.pop("forward")
    assert _same(_state(est), before)


def test_divergence_in_a_later_epoch_restores_that_epochs_replay_buffer(blobs, monkeypatch):
    from skdcd import _training

    kw = {**FAST, "persistent": True, "buffer_size": 64, "lr_schedule": "constant",
          "batch_size": 50}
    one = CDEnergyEstimator(**{**kw, "max_iter": 1}).fit(blobs)  # 4 steps
    step, calls = _training._step, []

    def fail_at_the_sixth(*args, **kwargs):
        calls.append(1)
        return False if len(calls) == 6 else step(*args, **kwargs)

    monkeypatch.setattr(_training, "_step", fail_at_the_sixth)
    with pytest.warns(ConvergenceWarning, match="epoch 2"):
        two = CDEnergyEstimator(**{**kw, "max_iter": 2}).fit(blobs)
    assert two.n_iter_ == 1 and torch.equal(two._buffer, one._buffer)
    assert np.array_equal(two.energy(blobs), one.energy(blobs))


@pytest.mark.parametrize("name", ["max_iter", "batch_size", "ais_n_steps", "learning_rate"])
def test_a_bool_is_refused_where_a_number_is_expected(name, blobs):
    with pytest.raises(ValueError, match=f"'{name}' parameter .* must not be a bool"):
        DCDEnergyEstimator(**{**FAST, name: True}).fit(blobs)
    DCDEnergyEstimator(**{**FAST, "verbose": False}).fit(blobs)  # a flag may be a bool


def test_partial_fit_refuses_a_bool_set_after_the_first_call(blobs):
    est = DCDEnergyEstimator(**FAST).partial_fit(blobs)
    est.set_params(batch_size=True)
    with pytest.raises(ValueError, match="must not be a bool"):
        est.partial_fit(blobs)


def test_c_fortran_and_dataframe_rows_fit_bit_identically():
    import pandas as pd

    X = np.random.RandomState(1).randn(300, 3) * [1.0, 2.0, 3.0] + 0.1
    energies = [DCDEnergyEstimator(**FAST).fit(v).energy(X[:20])
                for v in (np.ascontiguousarray(X), np.asfortranarray(X), pd.DataFrame(X))]
    assert all(np.array_equal(energies[0], e) for e in energies[1:])


def test_a_tensor_that_requires_grad_is_accepted(fitted_dcd):
    X = np.random.RandomState(0).randn(4, 3)
    t = torch.tensor(X, requires_grad=True)
    assert np.array_equal(fitted_dcd.score_samples(t), fitted_dcd.score_samples(X))
    assert fitted_dcd.denoise(t, 0.1, method="map").shape == (4, 3)


def test_max_grad_norm_bounds_every_step_and_none_does_not(blobs, monkeypatch):
    norms = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads if g is not None]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    CDEnergyEstimator(**{**FAST, "batch_size": 32}).fit(blobs)
    assert max(norms) > 0.02
    norms.clear()
    CDEnergyEstimator(**{**FAST, "batch_size": 32, "max_grad_norm": 0.01}).fit(blobs)
    assert len(norms) == 14 and max(norms) <= 0.01 * (1 + 1e-5)


# ---------------------------------------------------------------- memory: chunked inference
def test_chunked_denoise_and_sample_match_one_chunk(blobs, monkeypatch):
    import skdcd._models as base

    est = DCDEnergyEstimator(**FAST).fit(blobs)
    whole = est.denoise(blobs[:50], 0.3, method="map")
    one_chunk_samples = est.sample(30, random_state=0)
    monkeypatch.setattr(base, "GRAD_BATCH", 7)
    monkeypatch.setattr(base, "EVAL_BATCH", 7)
    est._cache.clear()
    np.testing.assert_allclose(est.denoise(blobs[:50], 0.3, method="map"), whole,
                               rtol=0, atol=1e-9)  # MAP is row-wise: chunks change nothing
    chunked = est.sample(30, random_state=0)
    assert chunked.shape == (30, 2) and np.isfinite(chunked).all()
    assert len(np.unique(chunked[:, 0])) == 30  # chunks are independent draws, not copies
    # with 5 chunks of 1,024 particles each, the sample is still from the model
    assert abs(chunked.mean() - one_chunk_samples.mean()) < 1.0
    mean = est.denoise(blobs[:50], 0.3, random_state=0)
    assert np.isfinite(mean).all() and len(np.unique(mean[:, 0])) == 50


def test_sample_in_chunks_matches_a_gaussian_energy(monkeypatch):
    import skdcd._models as base

    monkeypatch.setattr(base, "GRAD_BATCH", 1000)
    est = gaussian_model(DCDEnergyEstimator, [1.0, -2.0], [0.25, 4.0], sample_steps=64)
    S = est.sample(4000, random_state=0)
    np.testing.assert_allclose(S.mean(0), [1.0, -2.0], atol=0.1)
    np.testing.assert_allclose(S.std(0), [0.5, 2.0], atol=0.1)


# ---------------------------------------------------------------- found by tests/test_fuzz.py
def test_fit_refuses_data_whose_standardisation_overflows():
    X = np.array([[1e300, 0.0], [-1e300, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="too large to standardise"):
        DCDEnergyEstimator(**FAST).fit(X)


def test_partial_fit_refuses_rows_that_overflow_once_standardised_and_loses_nothing():
    est = DCDEnergyEstimator(**FAST).partial_fit(np.array([[0.0, 1.0], [1.0, 1.0]]))
    before = {k: v.clone() for k, v in est.energy_net_.state_dict().items()}
    with pytest.raises(ValueError, match="overflow float64 once standardised"):
        est.partial_fit(np.array([[1.7e308, 0.0]]))  # (1.7e308 - 0.5) / 0.5 = inf
    for k, v in est.energy_net_.state_dict().items():
        assert torch.equal(v, before[k]), k  # the clipping box included
    assert est.n_iter_ == 1 and np.isfinite(est._z_high).all()
    with pytest.raises(ValueError, match="overflow float64 once standardised"):
        est.denoise(np.array([[1.7e308, 0.0]]), noise_std=0.1)
    assert np.isposinf(est.energy(np.array([[1.7e308, 0.0]]))).all()  # a limit, not NaN


def test_denoise_stays_finite_next_to_the_float64_limit(fitted_dcd):
    y = np.array([[1.7e308, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = fitted_dcd.denoise(y, noise_std=0.1, random_state=0)
    assert np.isfinite(out).all()


def test_denoise_refuses_a_noise_std_whose_variance_overflows(fitted_dcd):
    with pytest.raises(ValueError, match="noise_std=1e\\+300 is out of range"):
        fitted_dcd.denoise(np.zeros((2, 3)), noise_std=1e300)


# ---------------------------------------------------------------- spurious-well guard
class _Well(torch.nn.Module):
    """E(x) = offset - depth · exp(-‖x - c‖² / (2 width²)): a well of the given depth at c."""

    def __init__(self, depth, center, offset=0.0, width=1.0):
        super().__init__()
        self.depth = torch.nn.Parameter(torch.tensor(float(depth)))
        self.center, self.offset, self.width = torch.tensor(center), offset, width

    def forward(self, x):
        r2 = (x - self.center).pow(2).sum(1) / self.width**2
        return self.offset - self.depth * torch.exp(-0.5 * r2)


def test_well_loss_is_the_squared_depth_below_the_floor():
    from skdcd._objectives import WELL_PROBES, WellGuard

    guard = WellGuard(1.0, torch.tensor([-4.0, -4.0]), torch.tensor([8.0, 8.0]))
    e_pos = torch.tensor([0.0, 0.7, 2.0])  # the floor is min - 1 = -1
    g = torch.Generator().manual_seed(0)
    flat = _Well(0.0, [0.0, 0.0], offset=-3.0)  # 2 nats below the floor everywhere
    assert guard(flat, None, e_pos, g).item() == pytest.approx(4.0)
    assert WellGuard(0.5, guard.low, guard.span)(flat, None, e_pos, g).item() == pytest.approx(2.0)
    above = _Well(0.0, [0.0, 0.0], offset=-0.5)  # nowhere below the floor
    assert guard(above, None, e_pos, g).item() == 0.0
    well = _Well(20.0, [3.0, 3.0])
    loss = guard(well, None, e_pos, g)
    loss.backward()
    assert float(loss) > 0 and float(well.depth.grad) > 0  # descent makes the well shallower
    assert WELL_PROBES >= 32


def test_well_penalty_removes_a_well_that_negatives_never_visit(blobs):
    # blobs' standardised data live near the origin; the narrow well sits in the box's
    # corner, where no data point or negative feels more than its tail (with 32 proposals
    # per example its depth moved by 2e-4). noise_std=0.1: the default's wide levels reach
    # the corner and raise the well themselves (depth 7.2 without the penalty)
    def factory(d):
        return _Well(30.0, [2.8, 2.8], width=0.15)

    depths = {}
    for penalty in (0.0, 1.0):
        est = DCDEnergyEstimator(**{**FAST, "energy_net": factory, "well_penalty": penalty,
                                    "learning_rate": 0.5, "lr_schedule": "constant",
                                    "max_iter": 100, "envelope_std": None,
                                    "noise_std": 0.1})
        est.fit(blobs)
        depths[penalty] = float(est.energy_net_.net.depth)
    assert depths[0.0] > 29.9 and depths[1.0] < 20


class _LevelWell(torch.nn.Module):
    """``E(x, σ) = ‖x‖² / 2 - depth · exp(-‖x - c‖² / 2)``: N(0, I) at every level, plus a well."""

    def __init__(self, depth, center):
        super().__init__()
        self.depth = torch.nn.Parameter(torch.tensor(float(depth)))
        self.center = torch.tensor(center)

    def forward(self, x, sigma):
        return (0.5 * x.pow(2).sum(1)
                - self.depth * torch.exp(-0.5 * (x - self.center).pow(2).sum(1)))


def test_level_guard_spares_true_modes_and_penalises_wells():
    from skdcd._objectives import LevelWellGuard
    from skdcd.networks import EnvelopedEnergy, MLPEnergy

    d = 2
    envelope = EnvelopedEnergy(MLPEnergy(d, (4,)), envelope_std=3.0)  # probes start N(0, 9 I)
    guard = LevelWellGuard(1.0, (0.05, 1.0), envelope)
    g = torch.Generator().manual_seed(0)
    x_pos = torch.randn((256, d), generator=g)  # the data are the model: nothing to penalise
    assert guard(_LevelWell(0.0, [0.0] * d), x_pos, None, g).item() == 0.0
    # a well of 100 nats where no data point is but the envelope's probes reach: the
    # penalty is positive, and descent on it makes the well shallower
    well = _LevelWell(100.0, [3.0] + [0.0] * (d - 1))
    loss = guard(well, x_pos, None, g)
    loss.backward()
    assert float(loss) > 1 and float(well.depth.grad) > 0
    # without an envelope the probes start from the data diffused to the widest level
    bare = LevelWellGuard(1.0, (0.05, 1.0), EnvelopedEnergy(MLPEnergy(d, (4,)), None))
    assert float(bare(_LevelWell(100.0, [0.0] * d), x_pos, None, g)) > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_energy_of_a_million_rows_does_not_grow_the_heap():
    # regression: per-chunk outputs kept in a list between the chunks' large activations
    # fragmented glibc's heap, so energy() on 10⁶ rows peaked 600-800 MB above its start
    def status_mb(field):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 1024

    est = DCDEnergyEstimator(max_iter=1, random_state=0).fit(np.random.RandomState(0).randn(50, 2))
    X = np.random.default_rng(0).standard_normal((1_000_000, 2))
    est.energy(X[:10])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak to the current resident set
    before = status_mb("VmRSS")
    est.energy(X)
    assert status_mb("VmHWM") - before < 250  # inputs + output copies are ~50 MB


# ---------------------------------------------------------------- the envelope
@pytest.mark.parametrize("est_cls", ESTIMATORS)
def test_an_integer_envelope_components_gives_any_model_the_mixture_envelope(est_cls, blobs):
    from skdcd._envelope import mixture_fit

    est = est_cls(**FAST, envelope_components=2).fit(blobs)
    net = est.energy_net_
    assert net.center.shape == (2, 2) and net.log_weights.shape == (2,)
    # the envelope is the mixture fitted to the standardised rows, with the model's seed
    Z = (blobs - est.mean_) / est.scale_
    means, _, _, _, weights = mixture_fit(Z, 2, est._seed)
    np.testing.assert_allclose(net.center.numpy(), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.log_weights.exp().numpy(), weights, rtol=1e-5)
    for default in (est_cls(**FAST), est_cls(**FAST, envelope_components=None)):
        assert default.fit(blobs).energy_net_.directions.numel() == 0  # isotropic


def test_a_time_conditional_energy_takes_the_isotropic_envelope_with_none(blobs):
    est = DCDEnergyEstimator(**FAST, time_conditional=True, recovery_steps=2,
                             envelope_components=None).fit(blobs)
    assert est.energy_net_.directions.numel() == 0
    auto = DCDEnergyEstimator(**FAST, time_conditional=True, recovery_steps=2).fit(blobs)
    assert auto.energy_net_.directions.numel() > 0  # "auto": the mixture


def test_fits_in_concurrent_threads_match_serial_fits():
    # regression: the network was seeded on torch's one global generator, so fits running in
    # threads at once (a threaded Dask worker) could draw each other's initial weights
    import threading

    X = make_toy("two_moons", 64, random_state=0)
    kwargs = dict(hidden_layer_sizes=(256, 256, 256, 256), max_iter=1, batch_size=64)
    serial = [DCDEnergyEstimator(random_state=s, **kwargs).fit(X).energy(X) for s in range(6)]
    for _ in range(3):
        threaded = [None] * 6

        def fit(seed, out=threaded):
            out[seed] = DCDEnergyEstimator(random_state=seed, **kwargs).fit(X).energy(X)

        threads = [threading.Thread(target=fit, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for a, b in zip(serial, threaded, strict=True):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- max_iter="auto"
@pytest.mark.parametrize("est_cls", [DCDEnergyEstimator, CDEnergyEstimator])
def test_max_iter_auto_caps_the_epochs_of_a_marginal_model(est_cls, monkeypatch):
    # regression: 2,000 steps were 2,000 passes over 106 rows of wine, and DCD memorised
    # them (validation log-likelihood -2,666 per row against -15 after 50 passes)
    import skdcd._base as base

    monkeypatch.setattr(base, "STEPS_PER_FIT", 40)  # 5 batches an epoch: 8 epochs
    monkeypatch.setattr(base, "AUTO_MAX_EPOCHS", 3)
    X = make_toy("two_moons", 100, random_state=0)
    est = est_cls(hidden_layer_sizes=(8,), batch_size=20, random_state=0).fit(X)
    assert (est.t_, est.n_iter_) == (15, 3)
    est = est_cls(hidden_layer_sizes=(8,), batch_size=20, max_iter=5, random_state=0).fit(X)
    assert (est.t_, est.n_iter_) == (25, 5)  # an integer max_iter is not capped


def test_max_iter_auto_does_not_cap_a_time_conditional_model(monkeypatch):
    import skdcd._base as base

    monkeypatch.setattr(base, "STEPS_PER_FIT", 40)
    monkeypatch.setattr(base, "AUTO_MAX_EPOCHS", 3)
    X = make_toy("two_moons", 100, random_state=0)
    est = DCDEnergyEstimator(time_conditional=True, hidden_layer_sizes=(8,), batch_size=20,
                             random_state=0).fit(X)
    assert (est.t_, est.n_iter_) == (40, 8)
