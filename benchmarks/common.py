"""Shared plumbing of the benchmark suite: metadata, parallel runs, summaries, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def meta() -> dict:
    """Versions and machine facts recorded with every result."""
    import sklearn
    import torch

    import skdcd

    return dict(skdcd=skdcd.__version__, commit=_commit(), torch=torch.__version__,
                sklearn=sklearn.__version__, numpy=np.__version__,
                python=platform.python_version(), machine=platform.machine(),
                cpu_count=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def _commit() -> str:
    """The checkout's commit (``+dirty`` when the package has uncommitted changes)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "skdcd"], cwd=HERE,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def same_package_code(*commits: str | None, repo: Path = HERE) -> bool:
    """Whether the commits hold the same ``skdcd/`` code, docstrings and comments aside.

    Results of different commits stay comparable when only tests, docs, the benchmarks or
    the package's docstrings and comments changed between them: a changed Python file
    counts as the same when its syntax tree without docstrings (and ``__doc__ = ...``)
    is; any other changed file counts as different. Unknown or dirty commits, or no git,
    count as different.
    """
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    if any(not c or c == "unknown" or c.endswith("+dirty") for c in commits):
        return False
    first, *rest = commits
    for other in rest:
        if other == first:
            continue
        try:
            # :(top) anchors the path at the repository's root, not at ``repo`` (benchmarks/)
            diff = git("diff", "--name-only", first, other, "--", ":(top)skdcd")
            if diff.returncode != 0:  # a commit git does not know
                return False
            for path in diff.stdout.split():
                texts = [git("show", f"{c}:{path}") for c in (first, other)]
                if (not path.endswith(".py") or any(t.returncode != 0 for t in texts)
                        or _code_of(texts[0].stdout) != _code_of(texts[1].stdout)):
                    return False
        except OSError:
            return False
    return True


def _code_of(source: str) -> str | None:
    """The syntax tree of Python ``source`` without its docstrings (None if it does not parse)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)) or not body:
            continue
        node.body = [stmt for i, stmt in enumerate(body) if not _is_doc(stmt, i)] or [ast.Pass()]
    return ast.dump(tree)


def _is_doc(stmt, index: int) -> bool:
    import ast

    if isinstance(stmt, ast.Assign):  # ``__doc__ = f"..."``: a docstring built from parts
        return [getattr(t, "id", None) for t in stmt.targets] == ["__doc__"]
    return (index == 0 and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, (ast.Constant, ast.JoinedStr))
            and isinstance(getattr(stmt.value, "value", ""), str))


def versions_note(where: str, *commits: str | None) -> str:
    """A report line saying at which ``commits`` the parts described by ``where`` ran."""
    if same_package_code(*commits):
        return f"**Same package code:** {where}, with the same `skdcd/`."
    return f"**Mixed code versions:** {where}."


def _one_thread_call(fn: Callable, kwargs: dict):
    # Each worker owns one core: two torch processes with two threads each oversubscribe a
    # two-core machine and slow down by an order of magnitude.
    # In this process (n_jobs=1) the threads are restored: a later section timed here, or
    # a test after this one, would otherwise run on one thread.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(**kwargs)
    finally:
        torch.set_num_threads(threads)


def parallel_map(fn: Callable, jobs: Iterable[dict], n_jobs: int) -> list:
    """Run ``fn(**kwargs)`` for each kwargs, ``n_jobs`` processes of one thread each.

    Inside :func:`journal`, every finished job is recorded, jobs recorded by the same code
    are not run again, and progress is printed as jobs finish.
    """
    from joblib import Parallel, delayed

    jobs = list(jobs)
    done = {i: r for i, r in enumerate(_JOURNAL.recall(fn, kw) for kw in jobs)
            if r is not _MISSING} if _JOURNAL else {}
    todo = [i for i in range(len(jobs)) if i not in done]
    start = time.perf_counter()
    if _JOURNAL and done:
        print(f"[benchmarks] {len(done)}/{len(jobs)} jobs recalled from {_JOURNAL.folder}",
              flush=True)

    def finished(i: int, result) -> None:
        done[i] = result
        if _JOURNAL:
            _JOURNAL.record(fn, jobs[i], result)
            print(f"[benchmarks] {len(done)}/{len(jobs)} jobs done "
                  f"({(time.perf_counter() - start) / 60:.1f} min)", flush=True)

    if n_jobs == 1:
        for i in todo:
            finished(i, _one_thread_call(fn, jobs[i]))
    else:
        for i, result in Parallel(n_jobs=n_jobs, backend="loky", verbose=0,
                                  return_as="generator_unordered")(
                delayed(_indexed_call)(fn, i, jobs[i]) for i in todo):
            finished(i, result)
    return [done[i] for i in range(len(jobs))]


def _indexed_call(fn: Callable, index: int, kwargs: dict) -> tuple:
    return index, _one_thread_call(fn, kwargs)


_MISSING = object()


class _Journal:
    """Finished jobs of one section, one pickle each, keyed by the code and the job."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.code = _code_fingerprint()

    def _path(self, fn: Callable, kwargs: dict) -> Path:
        job = json.dumps([fn, kwargs], sort_keys=True, default=_job_part)
        return self.folder / (hashlib.sha1((self.code + job).encode()).hexdigest() + ".pkl")

    def recall(self, fn: Callable, kwargs: dict):
        import joblib

        path = self._path(fn, kwargs)
        return joblib.load(path) if path.exists() else _MISSING

    def record(self, fn: Callable, kwargs: dict, result) -> None:
        import joblib

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(fn, kwargs)
        joblib.dump(result, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)  # a killed run leaves no half record


def _job_part(value) -> str:
    """A stable text for what JSON cannot hold: arrays by content, functions by name."""
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {value.shape} " + hashlib.sha1(
            np.ascontiguousarray(value).tobytes()).hexdigest()
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


_JOURNAL: _Journal | None = None


@contextlib.contextmanager
def journal(folder: Path) -> Iterator[None]:
    """Record the finished jobs of :func:`parallel_map` in ``folder`` within the block.

    A run that is stopped keeps its finished jobs: run it again (same code: ``skdcd/`` and
    ``benchmarks/`` unchanged) and only the rest run. The folder is removed when the block
    completes.
    """
    global _JOURNAL
    _JOURNAL = _Journal(folder)
    try:
        yield
    finally:
        _JOURNAL = None
    shutil.rmtree(folder, ignore_errors=True)


def _code_fingerprint() -> str:
    """A hash of every Python file of the package and of the benchmark suite."""
    digest = hashlib.sha1()
    for root in (HERE.parent / "skdcd", HERE):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(HERE.parent)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def merge_models(old: dict, new: dict) -> dict:
    """``old`` with the rows of the methods that ``new`` reran replaced by ``new``'s.

    For sections whose ``run`` takes ``models`` (``--models``): the other methods, and what
    was tuned for them, stay as they were; ``runs`` records which code version produced
    which methods.
    """
    if new["settings"]["seeds"] != old["settings"]["seeds"]:
        raise ValueError("rerun the models with the seeds of the full run: "
                         f"{old['settings']['seeds']}")
    ran = set(new["settings"]["models"])
    rows = [r for r in old["rows"] if r["method"] not in ran] + new["rows"]
    earlier = old.get("runs") or {"": old["meta"]}
    models = old["settings"].get("models")
    settings = old["settings"] if models is None else {  # methods new to the section too
        **old["settings"], "models": [*models, *(m for m in new["settings"]["models"]
                                                if m not in models)]}
    return {**old, "settings": settings, "rows": rows,
            "runs": {**earlier, " ".join(sorted(ran)): new["meta"]}}


def spread(values) -> dict:
    """Mean, standard deviation, min, max and count of a list of numbers."""
    v = np.asarray(list(values), dtype=float)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
                min=float(v.min()), max=float(v.max()), n=int(v.size))


def fmt(s: dict, digits: int = 3) -> str:
    """``mean ± std`` of a :func:`spread` dict (± omitted for a single value)."""
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def report_head(section: str, doc: str, versions: str, targets: list[list[str]]) -> list[str]:
    """A section report's opening lines: title, the module docstring's body, the code
    versions and the targets table."""
    return [f"## {section}", "", doc.split("\n\n", 1)[1].strip(), "", versions, "",
            "### Targets", "", md_table(["target", "measured", ""], targets), ""]


def md_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
