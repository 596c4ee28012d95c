import sys

import numpy as np
import pytest

from skdcd import DCDEnergyEstimator
from skdcd.plotting import (
    plot_landscape_2d,
    plot_loss_curve,
    plot_pairwise,
    plot_sample_grid,
)
from tests.conftest import FAST

mpl_image = pytest.importorskip("matplotlib.image")


@pytest.fixture(scope="module")
def model_2d():
    X = np.random.RandomState(0).randn(200, 2) * [1.0, 0.5] + [1.0, -2.0]
    return DCDEnergyEstimator(**{**FAST, "max_iter": 3}).fit(X), X


def _pixels(fig, tmp_path, name="fig.png"):
    path = tmp_path / name
    fig.savefig(path, dpi=60)
    return mpl_image.imread(path)[..., :3]  # (H, W, 3) in [0, 1]


def _assert_not_blank(image, min_ink=0.15):
    non_white = (image < 0.95).any(axis=-1).mean()
    colours = len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert non_white > min_ink, non_white
    assert colours > 20, colours


def test_landscape_shows_density_and_overlays(model_2d, tmp_path):
    est, X = model_2d
    samples = est.sample(150, random_state=0)
    fig = plot_landscape_2d(est, X, samples, n_grid=60, path=str(tmp_path / "land.png"))
    density_ax, landscape_ax = fig.axes[:2]
    # the density image is exp(log q) on the grid: its values are a probability density
    mesh = density_ax.collections[0].get_array()
    assert mesh.size == 60 * 60 and np.all(np.asarray(mesh) >= 0) and mesh.max() > 0
    offsets = [np.asarray(c.get_offsets()) for c in landscape_ax.collections]
    assert any(o.shape == X.shape and np.allclose(o, X) for o in offsets)
    assert any(o.shape == samples.shape and np.allclose(o, samples) for o in offsets)
    _assert_not_blank(mpl_image.imread(tmp_path / "land.png")[..., :3])


def test_landscape_without_points_uses_the_training_range(model_2d, tmp_path):
    est, X = model_2d
    fig = plot_landscape_2d(est, n_grid=30)
    x_low, x_high = fig.axes[0].get_xlim()
    assert x_low < X[:, 0].min() and x_high > X[:, 0].max()
    _assert_not_blank(_pixels(fig, tmp_path))


def test_landscape_needs_two_features():
    est = DCDEnergyEstimator(**FAST).fit(np.random.RandomState(0).randn(50, 3))
    with pytest.raises(ValueError, match="2 features"):
        plot_landscape_2d(est)


def test_sample_grid_tiles_grey_images_in_order(tmp_path):
    # image i is constant with value i: after scaling to [0, 1] tile i holds i / (n - 1)
    n, h, w = 6, 4, 5
    X = np.repeat(np.arange(n, dtype=float), h * w).reshape(n, h * w)
    fig = plot_sample_grid(X, image_shape=(h, w), n_cols=3)
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape == (2 * (h + 1) - 1, 3 * (w + 1) - 1)
    for i in range(n):
        r, c = divmod(i, 3)
        tile = mosaic[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w]
        np.testing.assert_allclose(tile, i / (n - 1))
    image = _pixels(fig, tmp_path)
    assert image.std() > 0.1  # tiles from black to white


def test_sample_grid_reads_channels_first(tmp_path):
    # one red image (C, H, W) = (3, 2, 2): channel 0 high, the others low
    x = np.zeros((3, 2, 2))
    x[0] = 1.0
    fig = plot_sample_grid(x.reshape(1, -1), image_shape=(3, 2, 2))
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape == (2, 2, 3)
    np.testing.assert_allclose(mosaic[..., 0], 1.0)
    np.testing.assert_allclose(mosaic[..., 1:], 0.0)
    image = _pixels(fig, tmp_path)
    red = (image[..., 0] > 0.9) & (image[..., 1:] < 0.1).all(axis=-1)
    assert red.mean() > 0.1


@pytest.mark.parametrize("shape, match", [((3, 3), "columns"), ((2, 2, 2), "image_shape"),
                                          ((4,), "image_shape")])
def test_sample_grid_rejects_mismatched_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        plot_sample_grid(np.zeros((2, 8)), image_shape=shape)


def test_pairwise_projections_of_samples_and_data(tmp_path):
    rng = np.random.RandomState(0)
    samples, X = rng.randn(80, 5), rng.randn(60, 5) + 3.0
    fig = plot_pairwise(samples, X, max_features=3)
    assert len(fig.axes) == 9
    below_diagonal = fig.axes[3]  # row 1, column 0: x1 against x0
    data_points, sample_points = (c.get_offsets() for c in below_diagonal.collections)
    np.testing.assert_allclose(data_points, X[:, [0, 1]])
    np.testing.assert_allclose(sample_points, samples[:, [0, 1]])
    assert len(fig.axes[0].patches) > 0  # histograms on the diagonal
    _assert_not_blank(_pixels(fig, tmp_path), min_ink=0.08)
    with pytest.raises(ValueError, match="features"):
        plot_pairwise(samples, X[:, :2])


def test_loss_curve_from_an_estimator(model_2d, tmp_path):
    est, _ = model_2d
    fig = plot_loss_curve(est, path=str(tmp_path / "loss.png"))
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), est.loss_curve_)
    image = mpl_image.imread(tmp_path / "loss.png")[..., :3]
    assert (image < 0.5).any(axis=-1).mean() > 0.005  # axes, labels and the curve are drawn
    with pytest.raises(ValueError, match="loss"):
        plot_loss_curve([])


def test_missing_matplotlib_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"matplotlib.*pip install"):
        plot_loss_curve([1.0, 0.5])


def test_a_failed_save_keeps_the_previous_figure_whole(model_2d, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    est, X = model_2d
    out = tmp_path / "landscape.png"
    out.write_bytes(b"previous figure")

    def broken(self, f, **kwargs):
        f.write(b"half a figure")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_landscape_2d(est, X, path=str(out))
    assert out.read_bytes() == b"previous figure" and [p.name for p in tmp_path.iterdir()] \
        == ["landscape.png"]



def test_a_path_without_a_suffix_gets_matplotlibs_default_one(model_2d, tmp_path):
    est, X = model_2d
    plot_landscape_2d(est, X, path=str(tmp_path / "landscape"))
    assert [p.name for p in tmp_path.iterdir()] == ["landscape.png"]
