"""Build ``RESULTS.md`` from the sections' JSON results, with the issue's targets checked."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np

from benchmarks.common import md_table, read_json, same_package_code

SECTIONS = ("density", "speed", "digits", "baselines", "peer", "reliability", "likelihood",
            "highdim", "realdata", "scaleout", "novelty", "imputation")


# what a section's report raises on a results file written by an older version of it
_OLD_SCHEMA = (KeyError, IndexError, StopIteration, TypeError, ValueError)


def _status(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def targets(results: dict) -> list[list[str]]:
    """One row per target of issue 3: the target, what was measured, met or not."""
    rows = []
    density, baselines, speed = (results.get(k) for k in ("density", "baselines", "speed"))
    if density:
        from benchmarks.density import headline

        h = headline(density)
        dcd = h["per_toy"]["dcd"]
        if dcd:
            mean = float(np.mean(list(dcd.values())))
            rows.append(["DCD (defaults) mean NLL gap over the toys ≤ 0.05", f"{mean:.3f}",
                         _status(mean <= 0.05)])
        if dcd and baselines:
            from benchmarks.baselines import best_gaps

            best = best_gaps(baselines)
            worst = max(dcd[t] - best[t] for t in dcd if t in best)
            rows.append(["DCD within 0.02 of the better of GMM/KDE on each toy",
                         "worst excess " + f"{worst:+.3f} ("
                         + ", ".join(f"{t} {dcd[t] - best[t]:+.3f}" for t in dcd if t in best)
                         + ")", _status(worst <= 0.02)])
        ratios = h["equal_clock"]
        if ratios:
            finite = [v for v in ratios.values() if math.isfinite(v)]
            ok = bool(finite) and np.mean(finite) <= 0.5 and max(finite) <= 1.0
            rows.append(["At DCD's longest fit's wall-clock, DCD gap ≤ ½ CD-10's on average, "
                         "worse on none (gaps: means over seeds)",
                         (f"mean {np.mean(finite):.2f}; " if finite else "")
                         + "ratio " + ", ".join(f"{t} {v:.2f}" for t, v in ratios.items()),
                         _status(ok if finite else None)])
            ttg = h["time_to_goal"]
            pairs = {t: ttg["dcd"][t] / ttg["cd-10"][t] for t in ttg["dcd"]
                     if math.isfinite(ttg["dcd"][t]) and math.isfinite(ttg["cd-10"][t])}
            never = [t for t in ttg["dcd"] if not math.isfinite(ttg["dcd"][t])]
            text = ", ".join(f"{t} {v:.2f}" for t, v in pairs.items()) or "no pair"
            if never:
                text += "; DCD never reached it on " + ", ".join(never)
            only = [t for t in ttg["dcd"]
                    if math.isfinite(ttg["dcd"][t]) and ttg["cd-10"][t] == math.inf]
            if only:
                text += "; only DCD reached it on " + ", ".join(only)
            ok = bool(pairs) and not never and max(pairs.values()) <= 1 / 3
            rows.append(["Time to gap ≤ 0.1: DCD ≤ ⅓ of CD-10 (medians over seeds)",
                         "ratio " + text, _status(ok)])
        if any(r["experiment"] == "robustness" for r in density["rows"]):
            rb, each = h["robust"], h["robust_per_seed"]
            rows.append(["Robustness: DCD's fraction of the grid with gap ≤ 0.1 ≥ 2× CD's",
                         ", ".join(f"{m} {rb[m]:.2f} (per seed "
                                   + " / ".join(f"{f:.2f}" for f in each[m]) + ")"
                                   for m in ("dcd", "cd-10")),
                         _status(rb["dcd"] >= 2 * rb["cd-10"] and rb["dcd"] > 0)])
    if speed:
        by = {(r["method"], r["n_features"]): r for r in speed["rows"]}
        ratio = {d: by[("dcd-importance", d)]["seconds_per_step"]
                 / by[("cd-10", d)]["seconds_per_step"] for d in (2, 64)}
        rows.append(["DCD step ≤ ⅓ of a CD-10 step",
                     f"{ratio[2]:.2f} (2-D), {ratio[64]:.2f} (64-D)",
                     _status(max(ratio.values()) <= 1 / 3)])
        over = {d: by[("overhead", d)]["ratio"] for d in (2, 64)}
        rows.append(["Estimator overhead ≤ 1.10× the bare loop",
                     f"{over[2]:.2f}× (2-D), {over[64]:.2f}× (64-D)",
                     _status(max(over.values()) <= 1.10)])
    for name in ("digits", "reliability"):  # sections that check their own targets
        if results.get(name):
            try:
                rows += importlib.import_module(f"benchmarks.{name}").targets(results[name])
            except _OLD_SCHEMA as exc:
                rows.append([f"the {name} section's targets", f"results/{name}.json has an older "
                             f"schema ({type(exc).__name__}: {exc}); rerun the section",
                             "**unknown**"])
    return rows


def write_report(out: Path) -> Path:
    """Write ``out/RESULTS.md`` (figures in ``out/figures``) from ``out/results/*.json``."""
    results = {name: read_json(out / "results" / f"{name}.json") for name in SECTIONS}
    results = {k: v for k, v in results.items() if v is not None}
    lines = ["# Benchmark results", "",
             "Generated by `python -m benchmarks run` (see `benchmarks/__main__.py`); "
             "every number below is measured, with its settings in `results/<section>.json`.",
             ""]
    if results:
        m = next(iter(results.values()))["meta"]
        lines += [f"Machine: {m['cpu_count']} CPU cores ({m['machine']}), Python {m['python']}, "
                  f"torch {m['torch']}, scikit-learn {m['sklearn']}, skdcd {m['skdcd']}.", ""]
        lines += ["| section | run at | commit | seconds | quick |", "|---|---|---|---|---|"]
        commits = []
        for k, v in results.items():
            for part, m in (v.get("runs") or {"": v["meta"]}).items():
                lines.append(f"| {k} {part} | {m['date']} | {m.get('commit', '?')} | "
                             f"{m['section_seconds']:.0f} | {m['quick']} |")
                commits.append(m.get("commit"))
        lines += ["", "Every part ran with the same `skdcd/` code (the commits differ only outside "
                  "the package)." if same_package_code(*commits) else
                  "The parts ran with different `skdcd/` code (or at unknown commits).", ""]
    missing = [s for s in SECTIONS if s not in results]
    if missing:
        lines += ["Not run yet: " + ", ".join(missing) + ".", ""]
    target_rows = targets(results)
    if target_rows:
        lines += ["## Targets (issue 3)", "", md_table(["target", "measured", ""], target_rows),
                  ""]
    for name, result in results.items():
        if "skipped" in result:
            lines += [f"## {name}", "", f"Skipped: {result['skipped']}.", ""]
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            lines += [module.report(result, out / "figures"), ""]
        except _OLD_SCHEMA as exc:
            lines += [f"## {name}", "",
                      f"`results/{name}.json` was written by an older version of this section "
                      f"and cannot be reported ({type(exc).__name__}: {exc}); rerun "
                      f"`python -m benchmarks run --sections {name}`.", ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines))
    return path
