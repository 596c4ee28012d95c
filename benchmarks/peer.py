"""Peer library: the 2-D NLL-gap protocol with torchebm's ``ContrastiveDivergence`` (CD-10).

The same network as our estimators (``MLPEnergy(2)``, 2→128→128→128→1 SiLU, inside the
Gaussian envelope ``‖z‖²/(2·3²)``, weights drawn from the same seed as ``random_state=seed``
gives our estimators), on standardised data, batch 256, Adam 1e-2 (our default) with cosine
decay to 0,
trained by ``torchebm.losses.ContrastiveDivergence`` with ``torchebm.samplers.LangevinDynamics``
(k = 10 steps, started at the data: torchebm's default ``persistent=False``). The test NLL is
``mean E(z_test) + log Z + Σ log scale`` with ``log Z`` from
:func:`skdcd.partition.log_partition_quadrature` on the box our estimators use.

Two budgets per (toy, seed):

* ``steps`` — as many optimisation steps as our default fit (2000);
* ``wall_clock`` — as many seconds as our default DCD fit took on that toy and seed
  (``fit_seconds`` in ``benchmarks/results/density.json``; 60 s when absent), with the cosine
  decay spread over the step count predicted from the speed of the first 200 steps (or of the
  first tenth of the budget, if shorter); the run stops when the time is up or the decay ends.

Settings chosen for torchebm: k=10, ``noise_scale=1.0`` (its default; with it the update is
exact unadjusted Langevin, ``x ← x − η∇E + √(2η) ξ``), ``persistent=False`` and
``add_noise_to_real=False`` (defaults), and, after a small tuning, ``step_size=0.003`` and
``energy_reg_weight=0.1`` (its defaults are 1e-3 and 1e-3). Tuning on ``eight_gaussians``,
seed 0, NLL gap after a full cosine schedule of 1500 steps at learning rate 1e-3 (the earlier
default), step size / energy_reg_weight:

==========  ==========  ==========
step        reg 0.001   reg 0.1
==========  ==========  ==========
0.001       1.349       1.363
0.003       9.418       1.347
0.01        6.105       1.559
==========  ==========  ==========

and at 4000 steps: 0.001 / 0.001 → 1.350, 0.003 / 0.1 → 1.343. The defaults tie with the best
setting but sit at the edge of stability: three times their step size gives a far worse
model (gap 9.4), while reg 0.1 keeps the gap near 1.35-1.56 over a 10× range of step sizes,
so the full run, over six toys and several seeds, uses 0.003 / 0.1. That happens to be our
CD-10's chain and penalty, so the torchebm column is an independent implementation of the
same algorithm: at matched steps it checks our CD-10, at matched wall clock it adds the cost
of each library's step.

torchebm is an optional dependency of the benchmarks only: without it :func:`run` returns
``{"skipped": ...}``.

Run through the suite: ``python -m benchmarks run --sections peer [--quick]`` (quick: two
toys, 300 steps, 10 s, about a minute on one core). Each fit is one process with one thread.
"""

from __future__ import annotations

import importlib
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import HERE, fmt, md_table, parallel_map, spread
from skdcd.datasets import TOY_NAMES, load_toy
from skdcd.networks import EnvelopedEnergy, MLPEnergy
from skdcd.partition import log_partition_quadrature

SECTION = "peer"

DENSITY_JSON = HERE / "results" / "density.json"

SETTINGS = dict(
    n_train=10000, n_test=5000, batch_size=256, learning_rate=1e-2, envelope_std=3.0,
    max_steps=2000, default_seconds=60.0, rate_probe_steps=200,
    k_steps=10, step_size=0.003, noise_scale=1.0, energy_reg_weight=0.1, persistent=False,
    quadrature_n_grid=512,
)
QUICK = dict(toys=["eight_gaussians", "two_moons"], max_steps=300, default_seconds=10.0)


def _torchebm():
    """The torchebm module, or ``None`` when it is not installed."""
    try:
        return importlib.import_module("torchebm")
    except ImportError:
        return None


# ----------------------------------------------------------------------------- budget
def _density_rows(path: Path | None = None) -> list[dict]:
    path = DENSITY_JSON if path is None else path
    return json.loads(path.read_text()).get("rows", []) if path.exists() else []


def _is_default(row: dict) -> bool:
    # the density section tags its default-budget fits with experiment="default"
    return row.get("experiment", row.get("budget")) == "default"


def dcd_fit_seconds(toy: str, seed: int, path: Path | None = None) -> float | None:
    """Seconds our default DCD fit took on (toy, seed), from the density section, or None."""
    secs = [r["fit_seconds"] for r in _density_rows(path)
            if r.get("method") == "dcd" and _is_default(r) and r.get("toy") == toy
            and r.get("seed") == seed and r.get("fit_seconds")]
    return float(secs[0]) if secs else None


# ----------------------------------------------------------------------------- model
def _energy_model(seed: int):
    """Our enveloped MLP wrapped as a torchebm ``BaseModel``, weights as our estimator's."""
    from torchebm.core import BaseModel

    class TorchEBMEnergy(BaseModel):
        def __init__(self, energy: torch.nn.Module):
            super().__init__()
            self.energy = energy

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.energy(x)

    # our estimators seed torch's init with the first draw of RandomState(random_state):
    # the same draw gives both libraries the same starting weights
    init_seed = int(np.random.RandomState(seed).randint(np.iinfo(np.int32).max))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = MLPEnergy(2)
    return TorchEBMEnergy(EnvelopedEnergy(net, SETTINGS["envelope_std"]))


def _cd_loss(model, settings: dict):
    from torchebm.losses import ContrastiveDivergence
    from torchebm.samplers import LangevinDynamics

    sampler = LangevinDynamics(model, step_size=settings["step_size"],
                               noise_scale=settings["noise_scale"])
    return ContrastiveDivergence(model=model, sampler=sampler, k_steps=settings["k_steps"],
                                 persistent=settings["persistent"],
                                 energy_reg_weight=settings["energy_reg_weight"])


# ----------------------------------------------------------------------------- training
def _cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / total))


def _train(model, loss_fn, Z: torch.Tensor, *, max_steps: int | None, seconds: float | None,
           settings: dict, generator: torch.Generator) -> dict:
    """Train until ``max_steps`` or, for a wall-clock budget, ``seconds`` (or the lr hits 0).

    Epochs of shuffled batches, as our estimators do. The wall-clock speed probe ends after
    ``rate_probe_steps`` steps or a tenth of the budget, whichever comes first. Returns steps,
    seconds and a diverged flag.
    """
    n, batch = Z.shape[0], settings["batch_size"]
    n_batches = math.ceil(n / batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    total = max_steps  # None for a wall-clock budget until the speed probe sets it
    step, diverged, start = 0, False, time.perf_counter()
    perm = torch.randperm(n, generator=generator)
    while True:
        elapsed = time.perf_counter() - start
        if total is None and (step == settings["rate_probe_steps"]
                              or (step > 0 and elapsed >= 0.1 * seconds)):
            # decay over the steps this speed predicts for the whole budget
            total = max(step + 1, int(step * seconds / elapsed))
        if (total is not None and step >= total) or (seconds is not None and elapsed >= seconds):
            break
        b = step % n_batches
        if b == 0 and step > 0:
            perm = torch.randperm(n, generator=generator)
        lr = _cosine_lr(settings["learning_rate"], step,
                        total if total is not None else 10**9)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, x_neg = loss_fn(Z[perm[b * batch:(b + 1) * batch]], generator=generator)
        # torchebm swaps a non-finite loss for 0.1, so divergence shows in the chains instead
        if not (torch.isfinite(x_neg).all() and torch.isfinite(loss)):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    params_ok = all(torch.isfinite(p).all() for p in model.parameters())
    return dict(steps=step, fit_seconds=time.perf_counter() - start,
                diverged=diverged or not params_ok)


def _test_nll(energy: torch.nn.Module, Z: np.ndarray, Z_test: np.ndarray,
              scale: np.ndarray) -> tuple[float, str]:
    """Test NLL in input units by quadrature on our estimators' box; NaN and a note if unsure."""
    net = energy.double().eval().requires_grad_(False)
    z_low, z_high = Z.min(axis=0), Z.max(axis=0)
    margin = 0.5 * (z_high - z_low) + 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_z, _ = log_partition_quadrature(net, z_low - margin, z_high + margin,
                                            n_grid=SETTINGS["quadrature_n_grid"])
    if not math.isfinite(log_z):
        return math.nan, "non-finite log Z"
    with torch.no_grad():
        e_test = float(net(torch.as_tensor(Z_test, dtype=torch.float64)).mean())
    note = "; ".join(str(w.message) for w in caught)
    # q(x) = exp(-E(z)) / Z_z / prod(scale), z = (x - mean) / scale
    return e_test + log_z + float(np.sum(np.log(scale))), note


def fit_one(toy: str, seed: int, budget: str, max_steps: int, seconds: float,
            settings: dict, seconds_note: str = "") -> dict:
    """One (toy, seed, budget) job: train with torchebm CD-k and score the test set."""
    import torchebm

    density = load_toy(toy)
    X = density.sample(settings["n_train"], random_state=seed)
    X_test = density.sample(settings["n_test"], random_state=1000 + seed)
    true_nll = float(density.nll(X_test))
    mean, scale = X.mean(axis=0), X.std(axis=0)
    Z, Z_test = (X - mean) / scale, (X_test - mean) / scale

    notes = [seconds_note] if seconds_note else []
    start = time.perf_counter()
    try:
        model = _energy_model(seed)
        loss_fn = _cd_loss(model, settings)
        generator = torch.Generator().manual_seed(10_000 + seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000 + seed)  # any draw torchebm makes off the generator
            fit = _train(model, loss_fn, torch.as_tensor(Z, dtype=torch.float32),
                         max_steps=max_steps if budget == "steps" else None,
                         seconds=seconds if budget == "wall_clock" else None,
                         settings=settings, generator=generator)
        if fit["diverged"]:
            nll, quad_note = math.nan, "training diverged (non-finite chains or weights)"
        else:
            nll, quad_note = _test_nll(model.energy, Z, Z_test, scale)
    except Exception as exc:  # a failing fit is a result, not a crash of the whole section
        fit = dict(steps=0, fit_seconds=time.perf_counter() - start)
        nll, quad_note = math.nan, f"{type(exc).__name__}: {exc}"
    notes += [quad_note] if quad_note else []
    if not math.isfinite(nll):
        nll = math.nan
    return dict(toy=toy, seed=seed, budget=budget, steps=fit["steps"],
                fit_seconds=fit["fit_seconds"], budget_seconds=seconds, nll=nll,
                true_nll=true_nll, gap=nll - true_nll, torchebm=torchebm.__version__,
                note="; ".join(notes))


# ----------------------------------------------------------------------------- section
def _jobs(toys, seeds, settings: dict) -> list[dict]:
    jobs = []
    for toy in toys:
        for seed in seeds:
            # quick mode keeps its tiny budget: the full run's seconds would take minutes
            seconds = None if settings["quick"] else dcd_fit_seconds(toy, seed)
            note = ("" if seconds is not None else
                    f"quick budget of {settings['default_seconds']:g} s" if settings["quick"]
                    else f"no DCD fit_seconds in density.json: {settings['default_seconds']:g} s")
            for budget in ("steps", "wall_clock"):
                jobs.append(dict(toy=toy, seed=seed, budget=budget,
                                 max_steps=settings["max_steps"],
                                 seconds=seconds if seconds is not None
                                 else settings["default_seconds"],
                                 settings=settings,
                                 seconds_note=note if budget == "wall_clock" else ""))
    return jobs


def run(*, quick: bool, seeds: list[int], n_jobs: int) -> dict:
    """All (toy, seed, budget) jobs; ``{"skipped": ...}`` when torchebm is absent."""
    tebm = _torchebm()
    if tebm is None:
        return {"skipped": "torchebm is not installed"}
    settings = dict(SETTINGS, quick=quick)
    toys = list(TOY_NAMES)
    if quick:
        settings.update({k: v for k, v in QUICK.items() if k != "toys"})
        toys = QUICK["toys"]
    settings.update(toys=toys, seeds=list(seeds), torchebm=tebm.__version__,
                    threads_per_fit=1, parallel_fits=n_jobs)
    rows = parallel_map(fit_one, _jobs(toys, seeds, settings), n_jobs)
    return {"settings": settings, "rows": rows}


def _ours(rows: list[dict], toy: str) -> dict[str, str]:
    """Our default DCD and CD-10 gaps on ``toy`` from the density section's rows."""
    out = {}
    for key, names in (("dcd", ("dcd",)), ("cd", ("cd-10", "cd"))):
        gaps = [r["gap"] for r in rows if r.get("toy") == toy and r.get("method") in names
                and _is_default(r) and r.get("gap") is not None and math.isfinite(r["gap"])]
        if gaps:
            out[key] = fmt(spread(gaps))
    return out


def _cell(rows: list[dict]) -> str:
    gaps = [r["gap"] for r in rows if r["gap"] is not None and math.isfinite(r["gap"])]
    cell = fmt(spread(gaps)) if gaps else "—"
    failed = len(rows) - len(gaps)
    return cell + (f" ({failed} failed)" if failed else "")


def report(result: dict, fig_dir: Path) -> str:
    """Markdown: torchebm CD-10 gap per toy at matched steps and wall clock, beside ours."""
    if "skipped" in result:
        return f"## 6. Peer library: torchebm\n\nSkipped: {result['skipped']}.\n"
    s, rows = result["settings"], result["rows"]
    density_rows = _density_rows()
    have_ours = bool(density_rows)
    header = ["toy", "torchebm CD-10, matched steps", "steps", "torchebm CD-10, matched time",
              "steps in that time", "seconds"]
    if have_ours:
        header += ["skdcd DCD (default)", "skdcd CD-10 (default)"]
    table = []
    for toy in s["toys"]:
        by = {b: [r for r in rows if r["toy"] == toy and r["budget"] == b]
              for b in ("steps", "wall_clock")}
        line = [toy, _cell(by["steps"]),
                f"{np.mean([r['steps'] for r in by['steps']]):.0f}" if by["steps"] else "—",
                _cell(by["wall_clock"]),
                f"{np.mean([r['steps'] for r in by['wall_clock']]):.0f}"
                if by["wall_clock"] else "—",
                f"{np.mean([r['budget_seconds'] for r in by['wall_clock']]):.0f}"
                if by["wall_clock"] else "—"]
        if have_ours:
            ours = _ours(density_rows, toy)
            line += [ours.get("dcd", "—"), ours.get("cd", "—")]
        table.append(line)
    notes = sorted({r["note"] for r in rows if r.get("note")})
    text = [
        "## 6. Peer library: torchebm",
        "",
        f"NLL gap (test NLL minus the exact NLL, nats; mean ± std over seeds {s['seeds']}) of "
        f"our network trained by torchebm {s['torchebm']}'s `ContrastiveDivergence` with "
        f"`LangevinDynamics` (k={s['k_steps']}, step {s['step_size']}, noise "
        f"{s['noise_scale']}, energy_reg_weight {s['energy_reg_weight']}, "
        f"persistent={s['persistent']}), batch {s['batch_size']}, Adam {s['learning_rate']} "
        "with cosine decay. Matched steps: the step count of our default fit; matched time: "
        "the seconds of our default DCD fit on the same toy and seed.",
        "",
        md_table(header, table),
    ]
    if not have_ours:
        text += ["", "_Our gaps are missing: `benchmarks/results/density.json` has not been "
                 "written yet._"]
    if notes:
        text += ["", "Notes: " + " | ".join(notes)]
    if s.get("quick"):
        text += ["", "_Quick mode: few steps and seconds; the numbers only check the plumbing._"]
    return "\n".join(text) + "\n"
