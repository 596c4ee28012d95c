"""Fitting data that does not fit in memory: memmaps, HDF5-like datasets, dask arrays."""

from __future__ import annotations

import numpy as np
import pytest

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd import _base as base
from skdcd import _data as data
from skdcd.datasets import ImageFolder, load_image_folder, make_toy


class Dataset:
    """What an HDF5 dataset offers, and no more: it refuses to become one whole array.

    Rows are read by a slice or a sorted index array; every read is logged.
    """

    def __init__(self, X: np.ndarray) -> None:
        self._X = X
        self.shape, self.dtype = X.shape, X.dtype
        self.reads: list[int] = []

    def __getitem__(self, rows):
        if isinstance(rows, np.ndarray):
            assert rows.ndim == 1 and np.all(np.diff(rows) > 0), "HDF5 wants sorted indices"
        else:
            assert isinstance(rows, slice), type(rows)
        out = self._X[rows]
        self.reads.append(len(out))
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("asked for the whole array")


def _memmap(tmp_path, X):
    m = np.memmap(tmp_path / "X.dat", dtype=X.dtype, mode="w+", shape=X.shape)
    m[:] = X
    m.flush()
    return np.memmap(tmp_path / "X.dat", dtype=X.dtype, mode="r", shape=X.shape)


@pytest.mark.parametrize("cls", [DCDEnergyEstimator, CDEnergyEstimator])
def test_a_memmap_fits_as_the_same_rows_in_memory(tmp_path, cls):
    X = make_toy("two_moons", 600, random_state=0)
    kwargs = dict(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
    lazy = cls(**kwargs).fit(_memmap(tmp_path, X))
    eager = cls(**kwargs).fit(X)
    np.testing.assert_array_equal(lazy.mean_, eager.mean_)
    assert lazy.loss_curve_ == eager.loss_curve_
    np.testing.assert_array_equal(lazy.score_samples(X), eager.score_samples(X))


@pytest.mark.parametrize("cls", [DCDEnergyEstimator, CDEnergyEstimator])
def test_an_hdf5_like_dataset_is_only_read_in_chunks(monkeypatch, cls):
    monkeypatch.setattr(data, "CHUNK_VALUES", 80)  # 20 rows of 4 features per chunk
    monkeypatch.setattr(data, "INIT_ROWS", 50)
    X = np.random.RandomState(0).randn(300, 4)
    dataset = Dataset(X)
    est = cls(hidden_layer_sizes=(16,), batch_size=32, max_iter=2, random_state=0).fit(dataset)
    assert max(dataset.reads) <= 50 and len(dataset.reads) > 10
    # the streaming statistics are those of the whole array
    np.testing.assert_allclose(est.mean_, X.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(est.scale_, X.std(axis=0), rtol=1e-12)
    Z = (X - est.mean_) / est.scale_
    np.testing.assert_allclose(est._z_low, Z.min(axis=0))
    np.testing.assert_allclose(est._z_high, Z.max(axis=0))
    assert est.n_features_in_ == 4 and est.t_ == 2 * 10
    # partial_fit reads it the same way
    dataset.reads.clear()
    est.partial_fit(dataset)
    assert max(dataset.reads) <= 32 and est.n_iter_ == 3


def test_the_streaming_pass_matches_numpy_across_chunks(monkeypatch):
    monkeypatch.setattr(data, "CHUNK_VALUES", 21)  # 7 rows of 3 features, uneven last chunk
    X = np.random.RandomState(1).randn(100, 3) * [1.0, 1e3, 1e-3] + [5.0, -2e4, 0.0]
    moments = data.scan(Dataset(X))
    np.testing.assert_allclose(moments.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.var, X.var(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(moments.low, X.min(axis=0))
    np.testing.assert_array_equal(moments.high, X.max(axis=0))
    for image in (False, True):
        for standardize in (False, True):
            np.testing.assert_allclose(
                data.standardization(moments, standardize, image),
                base._standardization(X, standardize, image), rtol=1e-10)


def test_lazy_inputs_are_checked_before_anything_changes():
    est = DCDEnergyEstimator(hidden_layer_sizes=(8,), max_iter=1, random_state=0)
    X = np.random.RandomState(0).randn(50, 3)
    X[37, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        est.fit(Dataset(X))
    assert not hasattr(est, "n_features_in_")
    with pytest.raises(ValueError, match="2D"):
        est.fit(Dataset(np.zeros(5)))
    with pytest.raises(ValueError, match="dtype"):
        est.fit(Dataset(np.array([["a", "b"]])))
    est.fit(Dataset(np.nan_to_num(X)))
    with pytest.raises(ValueError, match="expecting 3 features"):
        est.partial_fit(Dataset(np.zeros((4, 2))))


def test_max_iter_auto_stops_within_an_epoch_when_the_data_are_large(monkeypatch):
    monkeypatch.setattr(base, "STEPS_PER_FIT", 5)
    X = make_toy("two_moons", 200, random_state=0)
    est = DCDEnergyEstimator(hidden_layer_sizes=(8,), batch_size=20, random_state=0).fit(X)
    assert (est.t_, est.n_iter_, len(est.loss_curve_)) == (5, 1, 1)
    monkeypatch.setattr(base, "STEPS_PER_FIT", 25)  # 10 batches an epoch: 3 whole epochs
    est = DCDEnergyEstimator(hidden_layer_sizes=(8,), batch_size=20, random_state=0).fit(X)
    assert (est.t_, est.n_iter_) == (30, 3)


def test_a_real_hdf5_dataset_fits(tmp_path):
    h5py = pytest.importorskip("h5py")
    X = make_toy("eight_gaussians", 400, random_state=0).astype(np.float32)
    with h5py.File(tmp_path / "X.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, 2))
    kwargs = dict(hidden_layer_sizes=(16,), max_iter=2, random_state=0)
    with h5py.File(tmp_path / "X.h5", "r") as f:
        lazy = DCDEnergyEstimator(**kwargs).fit(f["X"])
    eager = DCDEnergyEstimator(**kwargs).fit(X)
    np.testing.assert_array_equal(lazy.score_samples(X), eager.score_samples(X))


def test_a_dask_array_fits_without_being_computed_whole():
    da = pytest.importorskip("dask.array")
    X = make_toy("eight_gaussians", 400, random_state=0)
    lazy = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, random_state=0).fit(
        da.from_array(X, chunks=(100, 2)))
    eager = DCDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, random_state=0).fit(X)
    np.testing.assert_allclose(lazy.score_samples(X), eager.score_samples(X), rtol=1e-6)


def test_an_image_folder_is_read_on_demand_and_fits_as_loaded(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for i in range(12):
        Image.fromarray(rng.randint(0, 256, (10, 12), dtype=np.uint8)).save(
            tmp_path / f"{i:02d}.png")
    folder = ImageFolder(tmp_path, image_size=4, grayscale=True)
    X, shape = load_image_folder(tmp_path, image_size=4, grayscale=True)
    assert folder.shape == X.shape and folder.image_shape == shape
    np.testing.assert_array_equal(folder[[1, 5]], X[[1, 5]])
    np.testing.assert_array_equal(np.asarray(folder), X)
    kwargs = dict(image_shape=shape, conv_channels=(4,), max_iter=2, random_state=0)
    lazy = DCDEnergyEstimator(**kwargs).fit(folder)
    eager = DCDEnergyEstimator(**kwargs).fit(X)
    np.testing.assert_allclose(lazy.mean_, eager.mean_, rtol=1e-12)
    np.testing.assert_allclose(lazy.energy(X), eager.energy(X), rtol=1e-5)


def test_a_lazy_input_of_unknown_shape_is_refused_clearly():
    dataset = Dataset(np.zeros((4, 2)))
    dataset.shape = (float("nan"), 2)  # a dask array with unknown chunk sizes
    with pytest.raises(ValueError, match="known shape"):
        DCDEnergyEstimator(hidden_layer_sizes=(8,), max_iter=1).fit(dataset)
