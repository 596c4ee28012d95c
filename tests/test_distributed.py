"""Data-parallel fits over real processes (Gloo on the CPU), as torchrun would start them."""

from __future__ import annotations

import os
import time

import joblib
import numpy as np
import pytest
import torch
import torch.distributed as dist

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd import _distributed as distributed
from skdcd import _training as training
from skdcd.cli import main
from skdcd.datasets import make_toy

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")


class _MeanEnergy:
    """A deterministic objective: the mean squared energy of the positives (no negatives)."""

    def __call__(self, net, x, generator):
        return (net(x) ** 2).mean()

    def checkpoint(self):
        pass

    def rollback(self):
        pass


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1),
                               torch.nn.Flatten(0))


def _run(batch_size: int, out: str) -> None:
    """Train _net on 96 fixed rows (rank 0 saves the weights; every rank its copy)."""
    Z = torch.as_tensor(np.random.RandomState(0).randn(96, 3), dtype=torch.float32)
    net = _net()
    state = training.FitState()
    settings = training.Settings(n_epochs=3, batch_size=batch_size, learning_rate=1e-2,
                                 cosine=True)
    generator = torch.Generator().manual_seed(1)
    training.run(net, Z, _MeanEnergy(), settings, state, generator)
    rank, _ = distributed.world()
    torch.save({"weights": net.state_dict(), "loss": state.loss_curve},
               os.path.join(out, f"rank{rank}.pt"))


def test_a_two_process_step_is_the_step_of_the_whole_minibatch(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _run(32, str(tmp_path / "one"))  # one process, minibatch 32
    distributed.launch(_run, 2, (16, str(tmp_path / "two")), backend="gloo")  # 2 x 16
    one = torch.load(tmp_path / "one" / "rank0.pt")
    two = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2)]
    for name, w in one["weights"].items():
        torch.testing.assert_close(two[0]["weights"][name], w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(two[1]["weights"][name], two[0]["weights"][name],
                                   rtol=0, atol=0)
    np.testing.assert_allclose(two[0]["loss"], one["loss"], rtol=1e-5)


def _fit(cls_name: str, batch_size: int, out: str, X: np.ndarray, max_iter: int = 20,
         random_state: int | None = None) -> None:
    cls = {"dcd": DCDEnergyEstimator, "cd": CDEnergyEstimator}[cls_name]
    est = cls(hidden_layer_sizes=(32, 32), batch_size=batch_size, max_iter=max_iter,
              random_state=random_state).fit(X)
    rank, _ = distributed.world()
    joblib.dump(est, os.path.join(out, f"rank{rank}.joblib"))


@pytest.mark.slow
@pytest.mark.parametrize("cls_name", ["dcd", "cd"])
def test_a_two_process_fit_matches_one_process_with_twice_the_batch(tmp_path, cls_name):
    X = make_toy("two_moons", 1024, random_state=0)
    test = make_toy("two_moons", 2000, random_state=1)
    distributed.launch(_fit, 2, (cls_name, 64, str(tmp_path), X), backend="gloo")
    ranks = [joblib.load(tmp_path / f"rank{r}.joblib") for r in range(2)]
    # random_state=None: rank 0's seed and weights everywhere, so one model
    for a, b in zip(ranks[0].energy_net_.parameters(), ranks[1].energy_net_.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    two = ranks[0]
    assert (two.t_, two.n_iter_) == (20 * 8, 20)  # 8 minibatches of 2 x 64 rows per epoch
    # the same fit in one process with minibatches of 128, over seeds: within their spread
    scores = [type(two)(hidden_layer_sizes=(32, 32), batch_size=128, max_iter=20,
                        random_state=seed).fit(X).score(test) for seed in range(3)]
    spread = max(scores) - min(scores)
    assert abs(two.score(test) - np.mean(scores)) < max(3 * spread, 0.05), (
        two.score(test), scores)


@pytest.mark.parametrize("cls_name", ["dcd", "cd"])
def test_a_fixed_random_state_gives_the_same_distributed_model(tmp_path, cls_name):
    X = make_toy("two_moons", 256, random_state=0)
    models = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        distributed.launch(_fit, 2, (cls_name, 32, str(tmp_path / run), X, 2, 0),
                           backend="gloo")
        models.append(joblib.load(tmp_path / run / "rank0.joblib"))
    np.testing.assert_array_equal(models[0].energy(X), models[1].energy(X))


def _fail_on_rank_one(out: str) -> None:
    class Failing(_MeanEnergy):
        calls = 0

        def __call__(self, net, x, generator):
            Failing.calls += 1
            if distributed.world()[0] == 1 and Failing.calls == 5:
                raise RuntimeError("rank one fails here")
            return super().__call__(net, x, generator)

    Z = torch.randn(64, 3)
    settings = training.Settings(n_epochs=100, batch_size=8, learning_rate=1e-3, cosine=False)
    training.run(_net(), Z, Failing(), settings, training.FitState(), torch.Generator())


def _die_on_rank_one(out: str) -> None:
    if distributed.world()[0] == 1:
        os._exit(3)
    _fail_on_rank_one(out)


@pytest.mark.parametrize("target, message", [(_fail_on_rank_one, "rank one fails here"),
                                             (_die_on_rank_one, "exit code 3")])
def test_a_failing_process_stops_the_others_with_a_clear_error(tmp_path, target, message):
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=f"process 1 of 2 .*{message}"):
        distributed.launch(target, 2, (str(tmp_path),), backend="gloo")
    assert time.perf_counter() - start < 120  # stopped, not waiting for the 10-min timeout


def _linger_on_rank_zero(out: str) -> None:
    """Rank 0 works on after the others are done; every rank notes when it leaves."""
    rank, _ = distributed.world()
    destroy = dist.destroy_process_group

    def noted(*args, **kwargs):
        open(os.path.join(out, f"left{rank}"), "w").write(repr(time.time()))
        return destroy(*args, **kwargs)

    dist.destroy_process_group = noted  # in this spawned process only
    if rank == 0:  # as the CLI's rank 0 estimates log Z and saves
        time.sleep(1.0)
        open(os.path.join(out, "done0"), "w").write(repr(time.time()))


def test_no_rank_tears_down_while_another_still_works(tmp_path):
    # regression: a Gloo rank that left early could make its peer abort (SIGABRT) mid-teardown
    distributed.launch(_linger_on_rank_zero, 2, (str(tmp_path),), backend="gloo")
    done = float((tmp_path / "done0").read_text())
    assert float((tmp_path / "left1").read_text()) >= done
    assert float((tmp_path / "left0").read_text()) >= done


def _fit_own_rows(out: str) -> None:
    rank, _ = distributed.world()
    X = make_toy("two_moons", 100, random_state=rank)
    try:
        DCDEnergyEstimator(hidden_layer_sizes=(8,), max_iter=1, random_state=0).fit(X)
    except ValueError as exc:
        open(os.path.join(out, f"rank{rank}.txt"), "w").write(str(exc))


def test_processes_that_pass_different_data_are_refused(tmp_path):
    distributed.launch(_fit_own_rows, 2, (str(tmp_path),), backend="gloo")
    for r in range(2):
        assert "must pass the same X" in (tmp_path / f"rank{r}.txt").read_text()


def test_the_cli_fits_over_two_processes_and_writes_one_model(tmp_path, capsys):
    data, model = tmp_path / "X.npy", tmp_path / "m.pt"
    np.save(data, make_toy("eight_gaussians", 256, random_state=0))
    status = main(["fit", str(data), "--nproc", "2", "--out", str(model), "--verbose", "0",
                   "--param", "max_iter=2", "--param", "hidden_layer_sizes=(16,)",
                   "--param", "batch_size=32", "--param", "random_state=0"])
    assert status == 0
    est = DCDEnergyEstimator.load(model)
    assert (est.t_, est.n_iter_) == (8, 2)  # 4 minibatches of 2 x 32 rows per epoch
    assert np.isfinite(est.score(make_toy("eight_gaussians", 100, random_state=1)))


def test_torchrun_fits_through_the_cli(tmp_path):
    import subprocess
    import sys

    data, model = tmp_path / "X.npy", tmp_path / "m.pt"
    np.save(data, make_toy("eight_gaussians", 256, random_state=0))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "skdcd", "fit", str(data), "--out", str(model), "--verbose", "0",
         "--param", "max_iter=2", "--param", "hidden_layer_sizes=(16,)",
         "--param", "batch_size=32", "--param", "random_state=0", "--param", "device='cpu'"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote") == 1 and "over 2 processes" in done.stdout
    est = DCDEnergyEstimator.load(model)
    assert (est.t_, est.n_iter_) == (8, 2)


def _fit_tiny(out: str, batch_size: int) -> None:
    rank, _ = distributed.world()
    X = make_toy("two_moons", 3, random_state=0)
    est = DCDEnergyEstimator(hidden_layer_sizes=(8,), batch_size=batch_size, max_iter=2,
                             random_state=0).fit(X)
    joblib.dump(est.t_, os.path.join(out, f"rank{rank}.joblib"))


def test_no_process_gets_an_empty_part_of_a_minibatch(tmp_path):
    # regression: 3 rows, batch_size=1 over 2 processes split into minibatches of 2 and 1
    # rows, and the second left process 1 nothing (a NaN loss, or a hang)
    distributed.launch(_fit_tiny, 2, (str(tmp_path), 1), backend="gloo")
    assert joblib.load(tmp_path / "rank0.joblib") == 2  # one minibatch of 3 rows per epoch


def _fit_own_batch_size(out: str) -> None:
    rank, _ = distributed.world()
    X = make_toy("two_moons", 100, random_state=0)
    try:
        DCDEnergyEstimator(hidden_layer_sizes=(8,), batch_size=16 + rank, max_iter=1,
                           random_state=0).fit(X)
    except ValueError as exc:
        open(os.path.join(out, f"rank{rank}.txt"), "w").write(str(exc))


def test_processes_with_different_settings_are_refused(tmp_path):
    distributed.launch(_fit_own_batch_size, 2, (str(tmp_path),), backend="gloo")
    for r in range(2):
        assert "batch size" in (tmp_path / f"rank{r}.txt").read_text()
