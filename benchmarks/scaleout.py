"""Scale out (issue 29): a search on a Dask cluster, one fit over processes, lazily read data.

Run through the suite (``python -m benchmarks run --sections scaleout``) on an idle machine;
``python -m benchmarks.scaleout --gpus`` runs the data-parallel part alone on every GPU
of a CUDA machine (NCCL), to record when one is lent.

* **Search.** The same ``GridSearchCV`` (4 candidates × 3 folds = 12 fits of a DCD model,
  200 steps on 2,000 rows of two moons) with ``n_jobs=1``, with joblib's loky workers
  (``n_jobs=2``), on a local Dask cluster of 2 worker processes with 1 thread each, and on
  a threaded Dask cluster (1 worker, 2 threads, ``processes=False``) with the default
  ``n_threads=None`` (the thread budget) and with ``n_threads=2`` (what each fit would use
  without it), and on the process cluster again with the nanny's
  ``MALLOC_TRIM_THRESHOLD_`` left out of the workers' environment. Wall-clock times
  exclude starting the cluster; best parameters and mean test scores are compared with
  ``n_jobs=1``'s. The torch threads seen inside each kind of worker are measured by a
  task, and one fit of the search's model run alone in a worker (median of 2) gives each
  backend's cost per fit apart from the parallelism.
* **One fit over processes.** The 8×8 digits image model (time-conditional DCD, the default
  convolutional energy) fitted for a fixed number of steps in 1 process with
  ``batch_size=256`` and in 2 Gloo processes with ``batch_size=128`` each (the same
  minibatch of 256 rows) and with 256 each (512 rows): steps and rows per second of the
  fit, measured inside rank 0, excluding the start of the processes.
* **Lazily read data.** 10⁶ rows × 64 features (float32, 256 MB) written once as a
  ``.npy`` memmap and as an HDF5 dataset (chunks of 1,024 rows): seconds per read of a
  minibatch of 256 random rows (sorted), and the seconds per step of a DCD fit on each
  against the same rows in memory (``max_iter="auto"``: 2,000 steps, half a pass; the
  files are fresh, so mostly in the page cache).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV

from benchmarks.common import md_table, report_head, versions_note
from skdcd import DCDEnergyEstimator
from skdcd import _distributed as distributed
from skdcd._utils import cpu_count, resolve_threads
from skdcd.datasets import load_digits_images, make_toy

SECTION = "scaleout"
GRID = {"noise_std": [0.05, 0.1], "diffusion": ["ve", "vp"]}


def _probe() -> dict:
    """What a task sees: OMP_NUM_THREADS, torch's threads, the estimators' budget."""
    return dict(omp=os.environ.get("OMP_NUM_THREADS"), torch=torch.get_num_threads(),
                budget=resolve_threads(None))


def _timed_fit(X: np.ndarray, steps: int) -> float:
    """Seconds of one fit of the search's model (200 steps) where the task runs."""
    start = time.perf_counter()
    DCDEnergyEstimator(max_iter=max(1, steps * 256 // len(X)), random_state=0).fit(X)
    return time.perf_counter() - start


def _search(X: np.ndarray, steps: int, n_grid: int, n_jobs: int,
            n_threads: int | None = None) -> tuple[float, dict]:
    n_epochs = max(1, steps * 256 // len(X))
    est = DCDEnergyEstimator(max_iter=n_epochs, quadrature_n_grid=n_grid, random_state=0,
                             n_threads=n_threads)
    search = GridSearchCV(est, GRID, cv=3, n_jobs=n_jobs)
    start = time.perf_counter()
    search.fit(X)
    return time.perf_counter() - start, dict(
        best_params=search.best_params_, scores=search.cv_results_["mean_test_score"].tolist())


def search_rows(quick: bool) -> list[dict]:
    import dask
    from distributed import Client, LocalCluster

    steps, n_grid = (20, 64) if quick else (200, 512)
    X = make_toy("two_moons", 2000, random_state=0)
    rows = []

    def row(backend, seconds, out, probe, **extra):
        rows.append(dict(kind="search", backend=backend, seconds=seconds, probe=probe,
                         best_params=out["best_params"], scores=out["scores"], **extra))

    def one_fit(n_jobs=2):  # one fit at a time, in a worker of the current backend
        return float(np.median([joblib.Parallel(n_jobs=n_jobs)(
            [joblib.delayed(_timed_fit)(X, steps)])[0] for _ in range(2)]))

    seconds, out = _search(X, steps, n_grid, 1)
    row("serial (n_jobs=1)", seconds, out, _probe(), one_fit_seconds=one_fit(1))
    seconds, out = _search(X, steps, n_grid, 2)
    probe = joblib.Parallel(n_jobs=2)(joblib.delayed(_probe)() for _ in range(2))[0]
    row("loky (n_jobs=2)", seconds, out, probe, one_fit_seconds=one_fit())
    # the threaded cluster first: a nanny sets OMP_NUM_THREADS=1 in this process's own
    # environment too, and it stays set after the cluster closes
    # (likewise MALLOC_TRIM_THRESHOLD_, so the cluster without it comes before the default)
    lean = {"distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}}
    for processes, threads, config in ((False, 2, {}), (True, 1, lean), (True, 1, {})):
        start = time.perf_counter()
        with (dask.config.set(config),
              LocalCluster(n_workers=2 if processes else 1, threads_per_worker=threads,
                           processes=processes, dashboard_address=None) as cluster,
              Client(cluster) as client):
            started = time.perf_counter() - start
            probe = client.submit(_probe, pure=False).result()
            for n_threads in ((None,) if processes else (None, 2)):
                with joblib.parallel_backend("dask"):
                    seconds, out = _search(X, steps, n_grid, -1, n_threads)
                    single = one_fit(-1) if n_threads is None else None
                name = ("dask, 2 worker processes × 1 thread" if processes else
                        "dask, threaded (1 worker × 2 threads)")
                if config:
                    name += ", no MALLOC_TRIM_THRESHOLD_"
                row(name, seconds, out, probe, cluster_start_seconds=started,
                    n_threads=n_threads, one_fit_seconds=single)
    return rows


def _digits_fit(batch_size: int, steps: int, out: str) -> None:
    X, shape = load_digits_images()
    est = DCDEnergyEstimator(image_shape=shape, batch_size=batch_size, random_state=0)
    batch = batch_size * distributed.world()[1]
    n_epochs = max(1, round(steps * batch / len(X)))
    est.set_params(max_iter=n_epochs)
    start = time.perf_counter()
    est.fit(X)
    seconds = time.perf_counter() - start
    rank, size = distributed.world()
    if rank == 0:
        joblib.dump(dict(processes=size, batch_per_process=batch_size, steps=est.t_,
                         seconds=seconds, threads=torch.get_num_threads(),
                         rows_per_step=batch), os.path.join(out, f"fit{size}_{batch_size}.pkl"))


def distributed_rows(quick: bool, *, backend: str = "gloo", nproc: int = 2) -> list[dict]:
    steps = 10 if quick else 150
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(1, 256), (nproc, 256 // nproc), (nproc, 256)] if nproc > 1 else [(1, 256)]
        for size, batch in runs:
            if size == 1:
                threads = torch.get_num_threads()
                _digits_fit(batch, steps, tmp)
                torch.set_num_threads(threads)
            else:
                distributed.launch(_digits_fit, size, (batch, steps, tmp), backend=backend)
            r = joblib.load(os.path.join(tmp, f"fit{size}_{batch}.pkl"))
            rows.append(dict(kind="distributed", backend=backend if size > 1 else "none",
                             **r, steps_per_second=r["steps"] / r["seconds"],
                             rows_per_second=r["steps"] * r["rows_per_step"] / r["seconds"]))
    return rows


def lazy_rows(quick: bool) -> list[dict]:
    import h5py

    n, d = (5_000, 64) if quick else (1_000_000, 64)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npy, h5 = Path(tmp) / "X.npy", Path(tmp) / "X.h5"
        memmap = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, d))
        with h5py.File(h5, "w") as f:
            ds = f.create_dataset("X", shape=(n, d), dtype=np.float32, chunks=(1024, d))
            for start in range(0, n, 100_000):
                block = rng.standard_normal((min(100_000, n - start), d)).astype(np.float32)
                memmap[start:start + len(block)] = block
                ds[start:start + len(block)] = block
        memmap.flush()
        del memmap
        with h5py.File(h5, "r") as f:
            sources = {"in memory": np.load(npy), "memmap (.npy)": np.load(npy, mmap_mode="r"),
                       "HDF5 (h5py)": f["X"]}
            for name, X in sources.items():
                reads = []
                for _ in range(5 if quick else 50):
                    index = np.sort(rng.choice(len(X), 256, replace=False))
                    start = time.perf_counter()
                    np.asarray(X[index], dtype=np.float64)
                    reads.append(time.perf_counter() - start)
                # max_iter="auto": 2,000 steps, part of one pass over 10^6 rows
                est = DCDEnergyEstimator(batch_size=256, random_state=0,
                                         max_iter=1 if quick else "auto")
                start = time.perf_counter()
                est.fit(X)
                fit_seconds = time.perf_counter() - start
                n_rows = len(X)
                rows.append(dict(kind="lazy", source=name, n_rows=n_rows, n_features=d,
                                 read_seconds=float(np.median(reads)), fit_seconds=fit_seconds,
                                 steps=est.t_, seconds_per_step=fit_seconds / est.t_))
    return rows


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    rows = search_rows(quick) + distributed_rows(quick) + lazy_rows(quick)
    return dict(settings=dict(grid=GRID, folds=3, cpu_count=cpu_count(), quick=quick), rows=rows)


def targets(result: dict) -> list[list[str]]:
    rows = [r for r in result["rows"] if r["kind"] == "search"]
    serial = rows[0]
    out = []
    for r in rows[1:]:
        same = r["best_params"] == serial["best_params"]
        diff = float(np.max(np.abs(np.subtract(r["scores"], serial["scores"]))))
        out.append([f"{r['backend']}{'' if r.get('n_threads') is None else ', n_threads=2'}: "
                    "same best parameters and scores as n_jobs=1",
                    f"{same}; largest score difference {diff:.2g}",
                    "**met**" if same and diff < 1e-9 else "**not met**"])
    return out


def report(result: dict, fig_dir: Path) -> str:
    rows = result["rows"]
    search = [r for r in rows if r["kind"] == "search"]
    serial = search[0]["seconds"]
    table = [[r["backend"] + ("" if r.get("n_threads") is None else
                              f" (n_threads={r['n_threads']})"),
              f"{r['seconds']:.1f}", f"{serial / r['seconds']:.2f}×",
              "—" if r.get("one_fit_seconds") is None else f"{r['one_fit_seconds']:.1f}",
              f"{r.get('cluster_start_seconds', 0):.1f}",
              f"{r['probe']['omp']}", f"{r['probe']['torch']}", f"{r['probe']['budget']}"]
             for r in search]
    dist_rows = [r for r in rows if r["kind"] == "distributed"]
    one = dist_rows[0]["steps_per_second"]
    dist_table = [[r["processes"], r["backend"], r["batch_per_process"], r["rows_per_step"],
                   r["threads"], r["steps"], f"{r['steps_per_second']:.2f}",
                   f"{r['rows_per_second']:.0f}", f"{r['steps_per_second'] / one:.2f}×"]
                  for r in dist_rows]
    lazy = [r for r in rows if r["kind"] == "lazy"]
    mem = next(r for r in lazy if r["source"] == "in memory")["seconds_per_step"]
    lazy_table = [[r["source"], f"{r['n_rows']:,}", f"{1e3 * r['read_seconds']:.2f}",
                   r["steps"], f"{1e3 * r['seconds_per_step']:.1f}",
                   f"{r['seconds_per_step'] / mem:.2f}×"] for r in lazy]
    head = report_head(SECTION, __doc__, versions_note("every part", result["meta"].get("commit")),
                       targets(result))
    return "\n".join([
        *head,
        f"### Search ({result['settings']['cpu_count']} cores)", "",
        md_table(["backend", "seconds", "speed-up over n_jobs=1",
                  "one fit alone in a worker, s", "cluster start s",
                  "OMP_NUM_THREADS in a task", "torch threads in a task",
                  "estimators' budget in a task"], table), "",
        "### One fit over processes (8×8 digits, time-conditional DCD)", "",
        md_table(["processes", "backend", "batch per process", "rows per step",
                  "torch threads per process", "steps", "steps/s", "rows/s",
                  "steps/s vs 1 process"], dist_table), "",
        "### Lazily read data", "",
        md_table(["source", "rows", "ms per minibatch read (256 rows)", "steps",
                  "ms per fit step", "vs in memory"], lazy_table), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout")
    parser.add_argument("--gpus", action="store_true",
                        help="the data-parallel fit on every GPU here (NCCL), printed")
    args = parser.parse_args(argv)
    if args.gpus:
        n = torch.cuda.device_count()
        if n < 1:
            parser.error("no CUDA device")
        for r in distributed_rows(False, backend="nccl", nproc=n):
            print(r)


if __name__ == "__main__":
    main()
