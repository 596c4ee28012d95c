"""Searches on a real Dask cluster through joblib, and the torch thread budget in its workers."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd._utils import cpu_count
from skdcd.datasets import make_toy

distributed = pytest.importorskip("distributed")

THREADS_SEEN: list[int] = []


class _ThreadProbe(torch.nn.Module):
    """A small energy that records torch's thread setting at every forward pass."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_features, 8), torch.nn.SiLU(),
                                       torch.nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        THREADS_SEEN.append(torch.get_num_threads())
        return self.net(x).squeeze(-1)


def _search(estimator, X, **kwargs):
    grid = {"noise_std": [0.1, 0.3]} if isinstance(estimator, DCDEnergyEstimator) else {
        "n_steps": [2, 4]}
    return GridSearchCV(estimator, grid, cv=2, **kwargs).fit(X)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DCDEnergyEstimator, CDEnergyEstimator])
def test_a_search_on_a_local_cluster_matches_the_serial_one(cls):
    X = make_toy("two_moons", 200, random_state=0)
    est = cls(hidden_layer_sizes=(16,), max_iter=3, random_state=0, n_threads=1)
    serial = _search(est, X, n_jobs=1)
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        with joblib.parallel_backend("dask"), distributed.get_task_stream(client) as stream:
            parallel = _search(est, X, n_jobs=-1)
        assert len(stream.data) >= 4  # the four fits of the search ran on the cluster
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(parallel.best_estimator_.score_samples(X),
                                  serial.best_estimator_.score_samples(X))


def _fit_and_report(seed: int, n_threads: int | None = None) -> tuple[list[int], int]:
    THREADS_SEEN.clear()
    X = make_toy("two_moons", 100, random_state=seed)
    DCDEnergyEstimator(energy_net=_ThreadProbe, max_iter=1, random_state=seed,
                       n_threads=n_threads).fit(X)
    return sorted(set(THREADS_SEEN)), torch.get_num_threads()


def test_fits_in_a_threaded_dask_worker_share_the_cores():
    before = torch.get_num_threads()
    expected = max(1, min(before, cpu_count() // 2))
    with (distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                   dashboard_address=None) as cluster,
          distributed.Client(cluster)):
        with joblib.parallel_backend("dask"):
            seen = joblib.Parallel(n_jobs=-1)(joblib.delayed(_fit_and_report)(s)
                                              for s in range(2))
    for threads, _ in seen:
        assert threads == [expected]
    assert torch.get_num_threads() == before  # restored once both fits left


def test_an_explicit_n_threads_wins_inside_a_worker():
    before = torch.get_num_threads()
    with (distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                   dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        assert client.submit(_fit_and_report, 0, 1).result()[0] == [1]
    assert torch.get_num_threads() == before
