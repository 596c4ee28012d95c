"""Density quality on the 2-D toys: NLL gap of every method, gap against seconds, robustness.

Run through the suite: ``python -m benchmarks run --sections density [--quick]``.

Protocol: 10,000 training rows (seed ``s``), 5,000 held-out rows (seed ``1000 + s``) of each
toy in :mod:`skdcd.datasets`; the metric is the test NLL from ``score`` minus the true NLL of
the exact density (the "NLL gap", nats). Three experiments share it:

* ``default``: the two headline methods (DCD, CD-10) at their defaults, over all seeds.
* ``variants``: every other negative sampler, diffusion and CD flavour at its defaults.
* ``curve``: DCD and CD-10 with shorter budgets (cosine schedules that end earlier), giving
  NLL gap against fit seconds: the matched-wall-clock comparison.
* ``robustness``: one grid of learning rate × energy penalty × steps; the fraction of settings
  where each method reaches a gap ≤ 0.1.

Each fit is one process with one thread; two run at a time on the two cores, so seconds are
single-thread seconds.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np

from benchmarks.common import fmt, md_table, parallel_map, spread, versions_note
from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.datasets import TOY_NAMES, load_toy

SECTION = "density"
N_TRAIN, N_TEST, BATCH = 10000, 5000, 256
GAP_GOAL = 0.1
FAILED_GAP = 1.0  # a gap above one nat is a broken model (e.g. a spurious mode), not a fit

# (estimator, parameters); the first two are the headline methods
METHODS = {
    "dcd": ("DCD", {}),
    "cd-10": ("CD", {}),
    "dcd-weighted": ("DCD", {"n_negatives": None}),
    "dcd-resampled": ("DCD", {"n_negatives": 1}),
    "dcd-langevin": ("DCD", {"negative_sampler": "langevin", "posterior_steps": 5}),
    "dcd-mala": ("DCD", {"negative_sampler": "mala", "posterior_steps": 5}),
    "dcd-laplace": ("DCD", {"negative_sampler": "laplace"}),
    "dcd-vp": ("DCD", {"diffusion": "vp"}),
    "cd-1": ("CD", {"n_steps": 1}),
    "pcd-10": ("CD", {"persistent": True}),
}
HEADLINE = ("dcd", "cd-10")
CLASSES = {"DCD": DCDEnergyEstimator, "CD": CDEnergyEstimator}

CURVE_STEPS = (125, 250, 500, 1000)  # with the default budget: five points per method
ROBUST_GRID = {"learning_rate": (3e-3, 1e-2, 3e-2), "energy_reg": (0.001, 0.01, 0.1),
               "steps": (500, 2000)}
ROBUST_TOYS = ("eight_gaussians", "two_moons")


def fit_one(*, toy: str, method: str, seed: int, experiment: str, steps: int | None = None,
            params: dict | None = None, n_train: int = N_TRAIN, n_test: int = N_TEST,
            n_grid: int | None = None) -> dict:
    """Fit one model and measure its NLL gap; never raises (failures become NaN rows).

    ``n_grid``: the quadrature grid of ``score`` (the estimator's default when None).
    """
    density = load_toy(toy)
    X = density.sample(n_train, random_state=seed)
    X_test = density.sample(n_test, random_state=1000 + seed)
    true_nll = density.nll(X_test)
    kind, base = METHODS[method]
    all_params = {**base, **(params or {})}
    if steps is not None:
        all_params["max_iter"] = max(1, round(steps / math.ceil(n_train / BATCH)))
    if n_grid is not None:
        all_params["quadrature_n_grid"] = n_grid
    est = CLASSES[kind](random_state=seed, **all_params)
    row = dict(toy=toy, method=method, seed=seed, experiment=experiment,
               params={k: v for k, v in (params or {}).items()}, true_nll=true_nll)
    start = time.perf_counter()
    try:
        est.fit(X)
        row["fit_seconds"] = time.perf_counter() - start
        row["steps"] = est.t_
        row["nll"] = -est.score(X_test)
    except Exception as exc:  # a diverged or failing setting is a result, not a crash
        row.update(fit_seconds=time.perf_counter() - start, steps=getattr(est, "t_", 0),
                   nll=math.nan, error=f"{type(exc).__name__}: {exc}")
    row["gap"] = row["nll"] - true_nll if math.isfinite(row["nll"]) else math.nan
    return row


EXPERIMENTS = ("default", "variants", "curve", "robustness")


def jobs(quick: bool, seeds: list[int], experiments=EXPERIMENTS) -> list[dict]:
    toys = ("eight_gaussians", "two_moons") if quick else TOY_NAMES
    # quick: a coarse quadrature too, or scoring takes most of a quick fit's time
    small = dict(n_train=2000, n_test=1000, n_grid=128) if quick else {}
    scale = 0.05 if quick else 1.0  # quick: tiny budgets that only check the plumbing
    out = []
    if "default" in experiments:
        for toy, method, seed in itertools.product(toys, HEADLINE, seeds):
            out.append(dict(toy=toy, method=method, seed=seed, experiment="default",
                            **({"steps": 50} if quick else {}), **small))
    if "variants" in experiments:  # the headline methods' rows come from "default"
        for toy, method, seed in itertools.product(toys, METHODS, seeds):
            if method not in HEADLINE:
                out.append(dict(toy=toy, method=method, seed=seed, experiment="variants",
                                **({"steps": 50} if quick else {}), **small))
    if "curve" in experiments:
        for toy, method, steps, seed in itertools.product(toys, HEADLINE, CURVE_STEPS, seeds):
            out.append(dict(toy=toy, method=method, seed=seed, experiment="curve",
                            steps=int(scale * steps), **small))
    if "robustness" in experiments:
        grid = ROBUST_GRID if not quick else dict(learning_rate=(1e-3, 3e-3),
                                                  energy_reg=(0.01,), steps=(50,))
        for toy, method, seed in itertools.product(ROBUST_TOYS[:1] if quick else ROBUST_TOYS,
                                                   HEADLINE, seeds):
            for lr, reg, steps in itertools.product(*grid.values()):
                out.append(dict(toy=toy, method=method, seed=seed,
                                experiment="robustness", steps=steps,
                                params={"learning_rate": lr, "energy_reg": reg}, **small))
    return out


def run(*, quick: bool, seeds: list[int], n_jobs: int, experiments=EXPERIMENTS) -> dict:
    job_list = jobs(quick, seeds, experiments)
    # longest jobs first so that the two workers finish together
    job_list.sort(key=lambda job: -(job.get("steps") or 8000))
    rows = parallel_map(fit_one, job_list, n_jobs)
    settings = dict(n_train=N_TRAIN, n_test=N_TEST, methods=METHODS, headline=HEADLINE,
                    experiments=list(experiments),
                    curve_steps=CURVE_STEPS, robust_grid=ROBUST_GRID, robust_toys=ROBUST_TOYS,
                    gap_goal=GAP_GOAL, seeds=seeds, threads_per_fit=1, parallel_fits=n_jobs)
    if quick:
        settings.update(n_train=2000, n_test=1000, note="quick: tiny budgets, not comparable")
    return dict(settings=settings, rows=rows)


# ---------------------------------------------------------------------------------- report
def _select(rows, **where):
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _gap_table(rows, toys, methods, experiment):
    table = []
    for toy in toys:
        cells = [toy]
        for m in methods:
            gaps = [r["gap"] for r in _select(rows, toy=toy, method=m, experiment=experiment)]
            cells.append(fmt(spread(gaps)) if gaps else "—")
        table.append(cells)
    means = [f"**{np.nanmean(list(_mean_gaps(rows, m, experiment).values())):.3f}**"
             for m in methods]
    table.append(["mean over toys"] + means)
    fits = {m: _select(rows, method=m, experiment=experiment) for m in methods}
    table.append(["median over fits"]
                 + [f"{np.nanmedian([r['gap'] for r in fits[m]]):.3f}" for m in methods])
    table.append([f"fits with gap > {FAILED_GAP} (or failed)"]
                 + [f"{sum(not r['gap'] <= FAILED_GAP for r in fits[m])}/{len(fits[m])}"
                    for m in methods])
    seconds = [np.mean([r["fit_seconds"] for r in _select(rows, method=m, experiment=experiment)])
               for m in methods]
    table.append(["fit seconds (mean)"] + [f"{s:.0f}" for s in seconds])
    return table


def _mean_gaps(rows, method, experiment):
    toys = dict.fromkeys(r["toy"] for r in rows)
    out = {}
    for t in toys:
        gaps = [r["gap"] for r in _select(rows, toy=t, method=method, experiment=experiment)]
        if gaps:
            out[t] = float(np.mean(gaps))
    return out


def _curve_figure(rows, toys, fig_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(toys), figsize=(3.2 * len(toys), 3), squeeze=False)
    for ax, toy in zip(axes[0], toys, strict=True):
        for m, colour in zip(HEADLINE, ("C0", "C3"), strict=True):
            pts = sorted(_curve_points(rows, toy, m), key=lambda r: r["fit_seconds"])
            ax.plot([r["fit_seconds"] for r in pts], [max(r["gap"], 1e-3) for r in pts],
                    "o-", color=colour, label=m)
        ax.axhline(GAP_GOAL, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(toy, fontsize=9)
        ax.set_xlabel("fit seconds (1 thread)")
    axes[0][0].set_ylabel("NLL gap (nats)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / "density_gap_vs_seconds.png", dpi=90)
    plt.close(fig)
    return "figures/density_gap_vs_seconds.png"


def _curve_points(rows, toy, method):
    """The curve budgets plus the default budget of the same seed."""
    pts = _select(rows, toy=toy, method=method, experiment="curve")
    if pts:
        pts += _select(rows, toy=toy, method=method, experiment="default", seed=pts[0]["seed"])
    return pts


def _time_to_goal(rows, toy, method):
    """Seconds of the cheapest budget that reached the goal (curve + default, first seed)."""
    pts = _curve_points(rows, toy, method)
    if not pts:
        return math.nan
    ok = [r["fit_seconds"] for r in pts if r["gap"] <= GAP_GOAL]
    return min(ok) if ok else math.inf


def report(result: dict, fig_dir: Path) -> str:
    rows, settings = result["rows"], result["settings"]
    toys = list(dict.fromkeys(r["toy"] for r in rows))
    out = ["## 1. Density quality on the 2-D toys", "",
           f"NLL gap = test NLL from `score` − exact NLL (nats; lower is better; 0 is perfect). "
           f"{settings['n_train']} training rows, {settings['n_test']} test rows. Each fit runs "
           "in its own process with one thread, two at a time.", ""]
    if _select(rows, experiment="default"):
        seeds = sorted({r["seed"] for r in _select(rows, experiment="default")})
        out += ["### Defaults", "",
                f"DCD and CD-10 with every parameter at its default (`max_iter='auto'`); "
                f"mean ± std over seeds {seeds}.", "",
                md_table(["toy", *HEADLINE], _gap_table(rows, toys, HEADLINE, "default")), ""]
    variants = _select(rows, experiment="variants")
    if variants:
        seed = variants[0]["seed"]
        merged = variants + [{**r, "experiment": "variants"}
                             for r in _select(rows, experiment="default", seed=seed)]
        present = [m for m in METHODS if _select(merged, method=m)]
        out += ["### Every method", "",
                "Each negative sampler and diffusion of DCD, CD-1, CD-10 and persistent CD-10, "
                f"all other parameters at their defaults (the same step budget), seed {seed}."]
        runs = result.get("runs", {})
        commits = {e: runs.get(e, {}).get("commit") for e in ("variants", "default")}
        if commits["variants"] != commits["default"]:
            out.append(versions_note(
                f"the variants ran at commit {commits['variants']}, the `{HEADLINE[0]}` and "
                f"`{HEADLINE[1]}` columns (from the defaults experiment) at {commits['default']}",
                commits["variants"], commits["default"]))
        out += ["", md_table(["toy", *present], _gap_table(merged, toys, present, "variants")),
                ""]
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += [f"{len(errors)} fits failed: " + "; ".join(
            f"{r['toy']}/{r['method']}: {r['error'][:80]}" for r in errors[:5]), ""]
    if _select(rows, experiment="curve"):
        out += ["### Gap against wall-clock", "",
                f"DCD and CD-10 with step budgets {list(settings['curve_steps'])} and the "
                "default, first seed. Each point is a separate fit whose cosine schedule ends "
                "at that budget.", "",
                f"![gap vs seconds]({_curve_figure(rows, toys, fig_dir)})", ""]
        table = []
        for toy in toys:
            t_dcd, t_cd = (_time_to_goal(rows, toy, m) for m in HEADLINE)
            table.append([toy, f"{t_dcd:.0f}", f"{t_cd:.0f}",
                          f"{t_dcd / t_cd:.2f}" if math.isfinite(t_dcd / t_cd) else "—"])
        out += [f"Seconds to reach gap ≤ {GAP_GOAL} (∞: no budget did):", "",
                md_table(["toy", "DCD s", "CD-10 s", "DCD / CD"], table), ""]
    robust = _select(rows, experiment="robustness")
    if robust:
        table = []
        for m in HEADLINE:
            mine = _select(robust, method=m)
            ok = sum(r["gap"] <= GAP_GOAL for r in mine)
            diverged = sum(not math.isfinite(r["gap"]) for r in mine)
            gaps = [r["gap"] for r in mine if math.isfinite(r["gap"])]
            table.append([m, f"{ok}/{len(mine)}", f"{ok / max(1, len(mine)):.2f}",
                          f"{sum(g <= 0.5 for g in gaps)}/{len(mine)}",
                          f"{np.median(gaps):.3f}" if gaps else "—",
                          f"{max(gaps):.2f}" if gaps else "—", f"{diverged}"])
        grid = settings["robust_grid"]
        out += ["### Robustness", "",
                f"Grid: learning rate {grid['learning_rate']} × energy penalty "
                f"{grid['energy_reg']} × steps {grid['steps']} on {settings['robust_toys']}, "
                "first seed.", "",
                md_table(["method", f"gap ≤ {GAP_GOAL}", "fraction", "gap ≤ 0.5",
                          "median gap", "worst gap", "non-finite"], table),
                ""]
    return "\n".join(out)


def headline(result: dict) -> dict:
    """Numbers that the targets section compares (empty where an experiment is missing)."""
    rows = result["rows"]
    toys = list(dict.fromkeys(r["toy"] for r in rows))
    per_toy = {m: _mean_gaps(rows, m, "default") for m in HEADLINE}
    robust = {m: float(np.mean([r["gap"] <= GAP_GOAL for r in mine])) if mine else math.nan
              for m in HEADLINE
              for mine in [_select(rows, experiment="robustness", method=m)]}
    ttg = {m: {t: _time_to_goal(rows, t, m) for t in toys} for m in HEADLINE}
    return dict(per_toy=per_toy, robust=robust, time_to_goal=ttg)
