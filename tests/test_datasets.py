"""Tests for skdcd.datasets: samplers agree with the exact log densities."""

import functools
import pickle

import numpy as np
import pytest
from scipy.special import logsumexp

from skdcd import datasets
from skdcd.datasets import TOY_NAMES, ToyDensity, load_toy, make_toy

BIN = 0.25  # histogram bin width; a multiple of every grid step below
# Midpoint-rule steps. For Gaussian-blurred densities the midpoint rule is spectrally
# accurate once the step is below the noise std (0.1). Pinwheel arms are 0.05 wide.
STEP = {"pinwheel": 0.025}
DEFAULT_STEP = 0.05

# True NLL (entropy in nats) of each toy, from the grid quadrature below; the
# test_entropy test checks that these values still hold.
ENTROPY = {
    "eight_gaussians": 0.312,
    "rings": 2.649,
    "two_moons": 1.008,
    "checkerboard": 2.079,
    "swiss_roll": 1.968,
    "pinwheel": 0.244,
}


@functools.cache
def grid_log_prob(name):
    """Log density on the cell midpoints of a regular grid over the toy's bounds."""
    toy = load_toy(name)
    h = STEP.get(name, DEFAULT_STEP)
    x0, x1, y0, y1 = toy.bounds
    nx, ny = round((x1 - x0) / h), round((y1 - y0) / h)
    gx = x0 + h * (np.arange(nx) + 0.5)
    gy = y0 + h * (np.arange(ny) + 0.5)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    return toy.log_prob(grid).reshape(ny, nx), h


def grid_entropy(name):
    log_p, h = grid_log_prob(name)
    p = np.exp(log_p)
    return float(-np.sum(p * np.where(p > 0, log_p, 0.0)) * h * h)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_shapes_and_dtypes(name):
    toy = load_toy(name)
    assert isinstance(toy, ToyDensity)
    assert toy.name == name
    assert len(toy.bounds) == 4
    assert toy.sample().shape == (1000, 2)
    X = make_toy(name, 7, random_state=0)
    assert X.shape == (7, 2)
    assert X.dtype == np.float64
    assert np.isfinite(X).all()
    log_p = toy.log_prob(X)
    assert log_p.shape == (7,)
    assert log_p.dtype == np.float64
    assert np.isfinite(log_p).all()  # samples lie in the support
    nll = toy.nll(X)
    assert type(nll) is float
    assert nll == pytest.approx(-log_p.mean(), rel=1e-12)
    # lists and float32 arrays are accepted
    assert np.allclose(toy.log_prob(X.astype(np.float32).tolist()), log_p, atol=1e-4)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_determinism(name):
    a = make_toy(name, 50, random_state=3)
    assert np.array_equal(a, make_toy(name, 50, random_state=3))
    assert np.array_equal(a, load_toy(name).sample(50, random_state=3))
    assert np.array_equal(a, make_toy(name, 50, random_state=np.random.RandomState(3)))
    assert not np.array_equal(a, make_toy(name, 50, random_state=4))
    rng = np.random.RandomState(0)  # a shared generator advances
    assert not np.array_equal(
        make_toy(name, 50, random_state=rng), make_toy(name, 50, random_state=rng)
    )


@pytest.mark.parametrize("name", TOY_NAMES)
def test_density_integrates_to_one(name):
    log_p, h = grid_log_prob(name)
    total = np.exp(log_p).sum() * h * h
    assert total == pytest.approx(1.0, abs=1e-12 if name == "checkerboard" else 1e-4)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_samples_lie_where_density_is_high(name):
    toy = load_toy(name)
    X = toy.sample(2000, random_state=0)
    x0, x1, y0, y1 = toy.bounds
    inside = (X[:, 0] >= x0) & (X[:, 0] <= x1) & (X[:, 1] >= y0) & (X[:, 1] <= y1)
    assert inside.all()
    U = np.random.RandomState(1).uniform([x0, y0], [x1, y1], size=(2000, 2))
    with np.errstate(invalid="ignore"):
        assert toy.log_prob(X).mean() > toy.log_prob(U).mean() + 1.0


@pytest.mark.parametrize("name", TOY_NAMES)
def test_histogram_of_samples_matches_density(name):
    """Pearson chi-square of 50,000 samples against bin masses of the exact density."""
    toy = load_toy(name)
    log_p, h = grid_log_prob(name)
    k = round(BIN / h)
    ny, nx = log_p.shape
    mass = np.exp(log_p).reshape(ny // k, k, nx // k, k).sum(axis=(1, 3)) * h * h
    x0, x1, y0, y1 = toy.bounds
    n = 50_000
    X = toy.sample(n, random_state=0)
    counts, _, _ = np.histogram2d(
        X[:, 0], X[:, 1], bins=[np.linspace(x0, x1, nx // k + 1), np.linspace(y0, y1, ny // k + 1)]
    )
    observed, expected = counts.T.ravel(), n * mass.ravel()
    assert observed[expected == 0].sum() == 0  # no samples where the density vanishes
    big = expected >= 5
    observed = np.append(observed[big], observed[~big].sum())
    expected = np.append(expected[big], max(expected[~big].sum(), 1e-300))
    chi2 = np.sum((observed - expected) ** 2 / expected)
    dof = len(expected) - 1
    assert dof > 20
    assert chi2 / dof < 1.5, (chi2, dof)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_entropy(name):
    entropy = grid_entropy(name)
    assert entropy == pytest.approx(ENTROPY[name], abs=6e-4)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_sample_nll_matches_entropy(name, record_property):
    """The mean NLL of 20,000 samples is a Monte Carlo estimate of the entropy."""
    toy = load_toy(name)
    nll = toy.nll(toy.sample(20_000, random_state=0))
    entropy = grid_entropy(name)
    record_property("true_nll", entropy)
    record_property("sample_nll", nll)
    print(f"{name}: entropy {entropy:.4f}, NLL of 20000 samples {nll:.4f}")
    assert np.isfinite(nll)
    assert abs(nll - entropy) < 0.05


def test_closed_form_entropies():
    # eight well-separated Gaussians: log 8 + entropy of N(0, 0.1^2 I)
    assert grid_entropy("eight_gaussians") == pytest.approx(
        np.log(8) + 1 + np.log(2 * np.pi * 0.01), abs=1e-6
    )
    assert grid_entropy("checkerboard") == pytest.approx(np.log(8), abs=1e-12)


def test_checkerboard_support():
    toy = load_toy("checkerboard")
    X = [[-1.5, -1.5], [-0.5, -1.5], [0.5, 0.5], [1.5, -0.5], [2.5, 0.5], [1.5, 0.5], [-2, -2]]
    inside = np.array([True, False, True, True, False, False, True])
    assert np.array_equal(toy.log_prob(X), np.where(inside, -np.log(8), -np.inf))


def test_eight_gaussians_matches_explicit_mixture():
    X = np.random.RandomState(0).uniform(-3, 3, size=(100, 2))
    angles = 2 * np.pi * np.arange(8) / 8
    centers = 2 * np.column_stack([np.cos(angles), np.sin(angles)])
    d2 = ((X[:, None, :] - centers[None]) ** 2).sum(-1)
    expected = logsumexp(-d2 / (2 * 0.01), axis=1) - np.log(8 * 2 * np.pi * 0.01)
    assert np.allclose(load_toy("eight_gaussians").log_prob(X), expected, atol=1e-10)


def test_rings_rice_formula_matches_angular_quadrature():
    X = np.vstack([make_toy("rings", 200, random_state=0), [[0.0, 0.0], [5.0, -4.0]]])
    theta = 2 * np.pi * np.arange(4096) / 4096  # periodic: trapezoid is spectrally exact
    terms = []
    for radius in (1.0, 2.0, 3.0):
        c = radius * np.column_stack([np.cos(theta), np.sin(theta)])
        d2 = ((X[:, None, :] - c[None]) ** 2).sum(-1)
        terms.append(logsumexp(-d2 / 0.02, axis=1) - np.log(4096 * 2 * np.pi * 0.01))
    expected = logsumexp(terms, axis=0) - np.log(3)
    assert np.allclose(load_toy("rings").log_prob(X), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "log_prob", "n_nodes"),
    [
        ("two_moons", datasets._log_prob_two_moons, 2048),
        ("swiss_roll", datasets._log_prob_swiss_roll, 4096),
    ],
)
def test_quadrature_has_converged(name, log_prob, n_nodes):
    x0, x1, y0, y1 = load_toy(name).bounds
    X = np.vstack(
        [
            make_toy(name, 300, random_state=0),
            np.random.RandomState(0).uniform([x0, y0], [x1, y1], size=(200, 2)),
        ]
    )
    coarse = log_prob(X, n_nodes=n_nodes)
    assert np.array_equal(coarse, load_toy(name).log_prob(X))  # the default node count
    fine = log_prob(X, n_nodes=4 * n_nodes)
    assert np.abs(coarse - fine).max() < 1e-10
    # a much coarser rule is visibly worse, so the comparison has power
    assert np.abs(log_prob(X, n_nodes=16) - fine).max() > 1e-3


def test_pinwheel_root_bracketing_has_converged(monkeypatch):
    X = np.vstack(
        [
            make_toy("pinwheel", 1000, random_state=0),
            np.random.RandomState(0).uniform(-2.5, 2.5, size=(1000, 2)),
        ]
    )
    default = load_toy("pinwheel").log_prob(X)
    grid = datasets._PW_GRID
    monkeypatch.setattr(datasets, "_PW_GRID", np.linspace(grid[0], grid[-1], 10 * len(grid)))
    monkeypatch.setattr(datasets, "_PW_BISECTIONS", 60)
    fine = load_toy("pinwheel").log_prob(X)
    assert np.array_equal(np.isfinite(default), np.isfinite(fine))
    assert np.abs(default - fine).max() < 1e-8


def test_pinwheel_change_of_variables():
    """Independent forward map: log p(y) >= the term of the preimage that generated y."""
    rng = np.random.RandomState(0)
    n = 2000
    arm = rng.randint(5, size=n)
    r = 1 + 0.3 * rng.standard_normal(n)
    t = 0.05 * rng.standard_normal(n)
    angle = 2 * np.pi * arm / 5 + 0.25 * np.exp(r)
    Y = np.column_stack(
        [np.cos(angle) * r - np.sin(angle) * t, np.sin(angle) * r + np.cos(angle) * t]
    )
    own = (
        -0.5 * ((r - 1) / 0.3) ** 2
        - 0.5 * (t / 0.05) ** 2
        - np.log(2 * np.pi * 0.3 * 0.05 * 5)
        - np.log(np.abs(1 - 0.25 * np.exp(r) * t))
    )
    log_p = load_toy("pinwheel").log_prob(Y)
    assert (log_p >= own - 1e-9).all()
    # arms only overlap near the centre; elsewhere the generating preimage is the only one
    assert np.allclose(log_p[r > 0.7], own[r > 0.7], atol=1e-9)


def test_two_moons_follows_make_moons_curves():
    from sklearn.datasets import make_moons

    X_sk, _ = make_moons(2000, noise=0.1, random_state=0)
    # sklearn's (linspace) samples are typical for the continuous-limit density
    nll = load_toy("two_moons").nll(X_sk)
    assert abs(nll - ENTROPY["two_moons"]) < 0.1


def test_swiss_roll_uses_make_swiss_roll():
    from sklearn.datasets import make_swiss_roll

    X_sk, _ = make_swiss_roll(100, noise=0.5, random_state=0)
    assert np.allclose(make_toy("swiss_roll", 100, random_state=0), X_sk[:, [0, 2]] / 5)


def test_immutable_and_picklable():
    toy = load_toy("rings")
    with pytest.raises(AttributeError):
        toy.name = "pinwheel"
    with pytest.raises(AttributeError):
        toy.extra = 1
    clone = pickle.loads(pickle.dumps(toy))
    assert clone == toy and hash(clone) == hash(toy)
    assert clone != load_toy("pinwheel")
    assert repr(toy) == "ToyDensity('rings')"


def test_unknown_name():
    with pytest.raises(ValueError, match="eight_gaussians"):
        load_toy("spiral")
    with pytest.raises(ValueError, match="pinwheel"):
        make_toy("spiral", 10)


@pytest.mark.parametrize("n_samples", [0, -3, 2.5, True, "10", None])
def test_bad_n_samples(n_samples):
    with pytest.raises(ValueError, match="n_samples"):
        make_toy("rings", n_samples)


def test_numpy_integer_n_samples():
    assert make_toy("rings", np.int64(4), random_state=0).shape == (4, 2)


@pytest.mark.parametrize(
    "X",
    [
        np.zeros((4, 3)),
        np.zeros((4, 1)),
        np.zeros(2),
        np.zeros((0, 2)),
        [[0.0, np.nan]],
        [[np.inf, 0.0]],
        [["a", "b"]],
    ],
)
@pytest.mark.parametrize("name", ["eight_gaussians", "pinwheel"])
def test_bad_X(name, X):
    toy = load_toy(name)
    with pytest.raises(ValueError):
        toy.log_prob(X)
    with pytest.raises(ValueError):
        toy.nll(X)


def test_dequantize_spreads_each_value_uniformly_over_its_bin():
    from skdcd.datasets import dequantize

    X = np.repeat(np.arange(17)[:, None] / 16, 2000, axis=0)  # 17 grey levels
    Y = dequantize(X, 1 / 16, random_state=0)
    offsets = (Y - X) * 16
    assert offsets.min() >= -0.5 and offsets.max() < 0.5
    np.testing.assert_allclose(offsets.mean(), 0.0, atol=0.01)
    np.testing.assert_allclose(offsets.var(), 1 / 12, rtol=0.05)  # uniform on a bin
    np.testing.assert_array_equal(Y, dequantize(X, 1 / 16, random_state=0))
    with pytest.raises(ValueError, match="step"):
        dequantize(X, 0.0)
