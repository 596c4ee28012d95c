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


def validation_gap(toy: str, seed: int, params: dict) -> float:
    """NLL gap of ``DCDEnergyEstimator(**params)`` on validation rows of ``toy``.

    For choosing settings: the validation rows are their own draw (seed ``2000 + seed``),
    never the section's test rows (``1000 + seed``). E.g. ``[validation_gap(t, s,
    {"n_proposals": 24, "n_negatives": 4}) for t in TOY_NAMES for s in (0, 1)]``.
    """
    density = load_toy(toy)
    X = density.sample(N_TRAIN, random_state=seed)
    X_val = density.sample(N_TEST, random_state=2000 + seed)
    est = DCDEnergyEstimator(random_state=seed, **params).fit(X)
    return -est.score(X_val) - density.nll(X_val)


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
            for seed in _seeds(rows, "curve"):  # each seed's budgets, faint
                pts = sorted(_curve_points(rows, toy, m, seed), key=lambda r: r["fit_seconds"])
                ax.plot([r["fit_seconds"] for r in pts], [max(r["gap"], 1e-3) for r in pts],
                        ".-", color=colour, alpha=0.3, lw=0.8)
            med = _curve_medians(rows, toy, m)
            ax.plot([p[0] for p in med], [max(p[1], 1e-3) for p in med], "o-", color=colour,
                    label=f"{m} (median over seeds)")
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


def _seeds(rows, experiment):
    return sorted({r["seed"] for r in _select(rows, experiment=experiment)})


def _curve_points(rows, toy, method, seed):
    """One seed's curve budgets plus the default budget of the same seed."""
    pts = _select(rows, toy=toy, method=method, experiment="curve", seed=seed)
    if pts:
        pts += _select(rows, toy=toy, method=method, experiment="default", seed=seed)
    return pts


def _curve_medians(rows, toy, method):
    """(median seconds, median gap) of each budget over the seeds, in order of budget."""
    by_steps = {}
    for seed in _seeds(rows, "curve"):
        for r in _curve_points(rows, toy, method, seed):
            by_steps.setdefault(r["steps"], []).append(r)
    return [(float(np.median([r["fit_seconds"] for r in pts])),
             float(np.median([r["gap"] for r in pts])))
            for _, pts in sorted(by_steps.items())]


def _seed_time_to_goal(rows, toy, method, seed):
    """Seconds of the cheapest budget of one seed that reached the goal (∞ if none did)."""
    pts = _curve_points(rows, toy, method, seed)
    if not pts:
        return math.nan
    ok = [r["fit_seconds"] for r in pts if r["gap"] <= GAP_GOAL]
    return min(ok) if ok else math.inf


def _time_to_goal(rows, toy, method):
    """Median over seeds of :func:`_seed_time_to_goal` (∞ when most seeds never got there)."""
    times = [_seed_time_to_goal(rows, toy, method, s) for s in _seeds(rows, "curve")]
    times = [t for t in times if not math.isnan(t)]
    return float(np.median(times)) if times else math.nan


def _versions_lines(result, *experiments) -> list[str]:
    """The report's code-version line (and a blank) when ``experiments`` ran in several runs."""
    runs = result.get("runs") or {e: result["meta"] for e in result["settings"]["experiments"]}
    parts = {label: m.get("commit") for label, m in runs.items()
             if m.get("experiment", label) in experiments}
    if len(set(parts.values())) <= 1:
        return []
    return [versions_note(", ".join(f"{label} at {c}" for label, c in parts.items()),
                          *parts.values()), ""]


def _gap_at(rows, toy, method, seconds, seed):
    """Best gap among one seed's fits of ``method`` that finished within ``seconds`` (5% slack)."""
    ok = [r["gap"] for r in _curve_points(rows, toy, method, seed)
          if r["fit_seconds"] <= 1.05 * seconds and math.isfinite(r["gap"])]
    return min(ok) if ok else math.nan


def equal_clock_ratios(rows) -> dict:
    """Per toy: DCD's gap over CD-10's, each at DCD's longest fit's seconds, means over seeds.

    The budget of each seed is DCD's default fit of that seed (its longest); the gaps are
    averaged over the seeds before the ratio, so that one seed's tiny CD gap cannot dominate.
    """
    ratios = {}
    for toy in dict.fromkeys(r["toy"] for r in _select(rows, experiment="curve")):
        gaps = {m: [] for m in HEADLINE}
        for seed in _seeds(rows, "curve"):
            budget = [r["fit_seconds"] for r in _curve_points(rows, toy, HEADLINE[0], seed)]
            if budget:
                for m in HEADLINE:
                    gaps[m].append(_gap_at(rows, toy, m, max(budget), seed))
        if gaps[HEADLINE[1]] and not all(math.isnan(g) for g in gaps[HEADLINE[1]]):
            g_dcd, g_cd = (float(np.nanmean(gaps[m])) for m in HEADLINE)
            ratios[toy] = g_dcd / g_cd if g_cd > 0 else math.nan
    return ratios


def _robust_fractions(rows, method):
    """Fraction of the grid reaching the goal: over all (setting, seed) fits, and per seed."""
    mine = _select(rows, experiment="robustness", method=method)
    per_seed = [float(np.mean([r["gap"] <= GAP_GOAL for r in _select(mine, seed=s)]))
                for s in _seeds(mine, "robustness")]
    overall = float(np.mean([r["gap"] <= GAP_GOAL for r in mine])) if mine else math.nan
    return overall, per_seed


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
        seeds = _seeds(rows, "variants")
        merged = variants + [{**r, "experiment": "variants"}
                             for r in _select(rows, experiment="default") if r["seed"] in seeds]
        present = [m for m in METHODS if _select(merged, method=m)]
        out += ["### Every method", "",
                "Each negative sampler and diffusion of DCD, CD-1, CD-10 and persistent CD-10, "
                f"all other parameters at their defaults (the same step budget); mean ± std "
                f"over seeds {seeds} (the `{HEADLINE[0]}` and `{HEADLINE[1]}` columns are the "
                "defaults experiment's fits of these seeds).", "",
                *_versions_lines(result, "variants", "default"),
                md_table(["toy", *present], _gap_table(merged, toys, present, "variants")), ""]
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += [f"{len(errors)} fits failed: " + "; ".join(
            f"{r['toy']}/{r['method']}: {r['error'][:80]}" for r in errors[:5]), ""]
    if _select(rows, experiment="curve"):
        seeds = _seeds(rows, "curve")
        out += ["### Gap against wall-clock", "",
                f"DCD and CD-10 with step budgets {list(settings['curve_steps'])} and the "
                f"default, seeds {seeds}. Each point is a separate fit whose cosine schedule "
                "ends at that budget; faint lines are single seeds, bold ones the medians "
                "over seeds of each budget's seconds and gap.", ""]
        out += _versions_lines(result, "curve", "default")
        out += [f"![gap vs seconds]({_curve_figure(rows, toys, fig_dir)})", ""]
        table = []
        for toy in toys:
            cells, medians = [toy], []
            for m in HEADLINE:
                each = [_seed_time_to_goal(rows, toy, m, s) for s in seeds]
                medians.append(_time_to_goal(rows, toy, m))
                cells.append(f"{medians[-1]:.1f} (" + ", ".join(f"{t:.1f}" for t in each) + ")")
            ratio = medians[0] / medians[1]
            cells.append(f"{ratio:.2f}" if all(map(math.isfinite, medians)) else "—")
            table.append(cells)
        out += [f"Seconds to reach gap ≤ {GAP_GOAL}: the median over seeds of each seed's "
                "cheapest budget that reached it (each seed in brackets; inf: no budget did):",
                "", md_table(["toy", "DCD s", "CD-10 s", "DCD / CD (medians)"], table), ""]
    robust = _select(rows, experiment="robustness")
    if robust:
        table = []
        for m in HEADLINE:
            mine = _select(robust, method=m)
            ok = sum(r["gap"] <= GAP_GOAL for r in mine)
            overall, per_seed = _robust_fractions(rows, m)
            diverged = sum(not math.isfinite(r["gap"]) for r in mine)
            gaps = [r["gap"] for r in mine if math.isfinite(r["gap"])]
            table.append([m, f"{ok}/{len(mine)}", f"{overall:.2f}",
                          ", ".join(f"{f:.2f}" for f in per_seed),
                          f"{sum(g <= 0.5 for g in gaps)}/{len(mine)}",
                          f"{np.median(gaps):.3f}" if gaps else "—",
                          f"{max(gaps):.2f}" if gaps else "—", f"{diverged}"])
        grid, seeds = settings["robust_grid"], _seeds(rows, "robustness")
        out += ["### Robustness", "",
                f"Grid: learning rate {grid['learning_rate']} × energy penalty "
                f"{grid['energy_reg']} × steps {grid['steps']} on {settings['robust_toys']}, "
                f"seeds {seeds}; every (setting, seed) is one fit.", ""]
        out += _versions_lines(result, "robustness")
        out += [md_table(["method", f"fits with gap ≤ {GAP_GOAL}", "fraction", "per seed",
                          "gap ≤ 0.5", "median gap", "worst gap", "non-finite"], table), "",
                "<details><summary>Each setting: fits with gap ≤ 0.1 out of the seeds, and "
                "the median gap</summary>", "",
                md_table(["toy", "learning rate", "energy penalty", "steps", *HEADLINE],
                         _robust_settings(robust)), "", "</details>", ""]
    return "\n".join(out)


def _robust_settings(robust):
    keys = sorted({(r["toy"], r["params"]["learning_rate"], r["params"]["energy_reg"],
                    r["steps"]) for r in robust})
    table = []
    for toy, lr, reg, steps in keys:
        cells = [toy, lr, reg, steps]
        for m in HEADLINE:
            gaps = [r["gap"] for r in _select(robust, toy=toy, method=m, steps=steps)
                    if r["params"] == {"learning_rate": lr, "energy_reg": reg}]
            cells.append(f"{sum(g <= GAP_GOAL for g in gaps)}/{len(gaps)}, "
                         f"{np.median(gaps):.3f}" if gaps else "—")
        table.append(cells)
    return table


def headline(result: dict) -> dict:
    """Numbers that the targets section compares (empty where an experiment is missing)."""
    rows = result["rows"]
    toys = list(dict.fromkeys(r["toy"] for r in rows))
    per_toy = {m: _mean_gaps(rows, m, "default") for m in HEADLINE}
    robust = {m: _robust_fractions(rows, m) for m in HEADLINE}
    ttg = {m: {t: _time_to_goal(rows, t, m) for t in toys} for m in HEADLINE}
    return dict(per_toy=per_toy, robust={m: f for m, (f, _) in robust.items()},
                robust_per_seed={m: each for m, (_, each) in robust.items()}, time_to_goal=ttg,
                equal_clock=equal_clock_ratios(rows))
