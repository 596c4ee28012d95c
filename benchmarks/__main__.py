"""The benchmark suite: ``python -m benchmarks run [--quick] [--sections ...]``.

Each section writes ``<out>/<section>.json`` (settings, seeds, versions, rows); the report
(``RESULTS.md`` with tables, targets and figures) is rebuilt from whatever JSON files exist,
so sections can be run separately and ``python -m benchmarks report`` redraws it. The full
run writes into ``benchmarks/`` (committed); ``--quick`` into ``benchmarks/quick/``
(ignored by git) with tiny budgets that only check that everything runs.

Finished fits are journaled in ``<out>/results/.journal/<section>/`` as they end (with
progress printed): a stopped section, run again with unchanged code, runs only the fits it
had not finished. The journal is removed when the section completes.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from benchmarks.common import HERE, journal, merge_models, meta, read_json, write_json
from benchmarks.report import SECTIONS, write_report

MODEL_SECTIONS = ("digits", "highdim")  # sections whose run() takes models=[...]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run sections, then rebuild the report")
    run_p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test")
    run_p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    run_p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run_p.add_argument("--jobs", type=int, default=2, help="parallel one-thread fits")
    run_p.add_argument("--experiments", nargs="+", default=None,
                       help="density only: a subset of default/variants/curve/robustness; "
                       "their rows replace those of the same experiments and seeds in "
                       "density.json")
    run_p.add_argument("--models", nargs="+", default=None,
                       help="digits and highdim only: rerun these methods (e.g. dcd-tc) "
                       "alone; their rows replace those of the same methods in the "
                       "section's JSON")
    run_p.add_argument("--out", type=Path, default=None,
                       help="results folder (default: benchmarks/ or benchmarks/quick/)")
    rep_p = sub.add_parser("report", help="rebuild RESULTS.md from the JSON results")
    rep_p.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)

    if args.command == "report":
        print(f"wrote {write_report(args.out)}")
        return
    out = args.out or (HERE / "quick" if args.quick else HERE)
    seeds = args.seeds[:1] if args.quick else args.seeds
    for name in args.sections:
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        print(f"[benchmarks] {name} ...", flush=True)
        kwargs = {"experiments": args.experiments} if name == "density" and args.experiments else {}
        if name in MODEL_SECTIONS and args.models:
            kwargs = {"models": args.models}
        with journal(out / "results" / ".journal" / name):  # a stopped run resumes
            result = module.run(quick=args.quick, seeds=seeds, n_jobs=args.jobs, **kwargs)
        seconds = time.perf_counter() - start
        result = {"meta": {**meta(), "quick": args.quick, "section_seconds": seconds}, **result}
        path = out / "results" / f"{name}.json"
        if "experiments" in kwargs and path.exists():
            result = _merge_experiments(read_json(path), result)
        elif "models" in kwargs:
            if not path.exists():
                parser.error(f"--models replaces rows of an earlier full {name} run; none found")
            result = merge_models(read_json(path), result)
        write_json(path, result)
        print(f"[benchmarks] {name} done in {seconds:.0f} s", flush=True)
    print(f"wrote {write_report(out)}")


def _merge_experiments(old: dict, new: dict) -> dict:
    """Replace the rows of the (experiment, seed) pairs just run, keep the others.

    ``runs`` maps a label such as ``"variants seeds 1 2"`` to the metadata of the run that
    wrote those rows (with its ``experiment`` and ``seeds``), so that a report can say at
    which commits each part of an experiment ran.
    """
    seeds = new["settings"]["seeds"]
    ran = {(e, s) for e in new["settings"]["experiments"] for s in seeds}
    kept = [r for r in old["rows"] if (r["experiment"], r.get("seed")) not in ran]
    earlier = old.get("runs") or {e: old["meta"] for e in old["settings"]["experiments"]}
    runs = {}
    for label, m in earlier.items():
        experiment = m.get("experiment", label)  # results written before per-seed merging
        had = m.get("seeds") or sorted({r.get("seed") for r in old["rows"]
                                        if r["experiment"] == experiment})
        left = [s for s in had if (experiment, s) not in ran]
        if left:
            runs[_run_label(experiment, left)] = {**m, "experiment": experiment, "seeds": left}
    for e in new["settings"]["experiments"]:
        runs[_run_label(e, seeds)] = {**new["meta"], "experiment": e, "seeds": list(seeds)}
    experiments = sorted({e for e, _ in ran} | {r["experiment"] for r in kept})
    all_seeds = sorted({r.get("seed") for r in kept + new["rows"]} | set(seeds),
                       key=lambda s: (s is None, s))
    settings = {**new["settings"], "experiments": experiments, "seeds": all_seeds}
    return {**new, "settings": settings, "rows": kept + new["rows"], "runs": runs}


def _run_label(experiment: str, seeds) -> str:
    return f"{experiment} seeds {' '.join(str(s) for s in seeds)}"


if __name__ == "__main__":
    main()
