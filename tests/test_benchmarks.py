"""The benchmark suite's bookkeeping: summaries, merging of runs and the target verdicts."""

import math
import shutil
import subprocess

import numpy as np
import pytest

from benchmarks import common
from benchmarks.__main__ import _merge_experiments
from benchmarks.common import merge_models, same_package_code, spread, write_json
from benchmarks.digits import generation_excess
from benchmarks.report import targets, write_report
from skdcd import DCDEnergyEstimator


def test_spread_uses_sample_std():
    s = spread([1.0, 2.0, 3.0])
    assert (s["mean"], s["std"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 1.0, 3.0, 3)
    assert spread([5.0])["std"] == 0.0


@pytest.fixture
def commit(tmp_path):
    """``commit(path, text)`` writes a file in a fresh git repository at ``tmp_path``, commits
    it and returns the short commit hash."""
    if shutil.which("git") is None:
        pytest.skip("needs git")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    def write_and_commit(path, text):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(text)
        git("add", path)
        git("commit", "-qm", path)
        return git("rev-parse", "--short", "HEAD").strip()

    git("init", "-q")
    return write_and_commit


def test_same_package_code_ignores_changes_outside_the_package(tmp_path, commit):
    first = commit("skdcd/a.py", "x = 1\n")
    docs = commit("docs/b.rst", "words\n")
    code = commit("skdcd/a.py", "x = 2\n")
    assert same_package_code(first, docs, repo=tmp_path)
    assert same_package_code(first, first, repo=tmp_path)
    assert not same_package_code(first, docs, code, repo=tmp_path)
    assert not same_package_code(docs + "+dirty", docs, repo=tmp_path)
    assert not same_package_code(first, "0123456", repo=tmp_path)  # unknown to git
    assert not same_package_code(first, None, repo=tmp_path)
    # from a subfolder, as the suite calls it from benchmarks/ (regression: the path was
    # taken relative to it, so no commits ever differed)
    (tmp_path / "benchmarks").mkdir()
    assert not same_package_code(first, code, repo=tmp_path / "benchmarks")
    assert same_package_code(first, docs, repo=tmp_path / "benchmarks")


def test_same_package_code_ignores_docstrings_and_comments_only(tmp_path, commit):
    source = ('"""Module."""\n\nclass A:\n    __doc__ = f"""{1} is one."""\n\n'
              '    def f(self):\n        """Doc."""\n        return 1  # why\n')
    first = commit("skdcd/a.py", source)
    reworded = commit("skdcd/a.py", source.replace("Module", "The module")
                      .replace("is one", "is 1").replace("Doc.", "More.")
                      .replace("# why", "# because"))
    no_doc = commit("skdcd/a.py", source.replace('        """Doc."""\n', ""))
    code = commit("skdcd/a.py", source.replace("return 1", "return 2"))
    data = commit("skdcd/b.txt", "table\n")
    assert not same_package_code(first, code, repo=tmp_path)
    assert not same_package_code(code, data, repo=tmp_path)  # not Python: byte for byte
    assert same_package_code(first, reworded, no_doc, repo=tmp_path)


def test_merge_replaces_only_the_rerun_experiments():
    old = {"rows": [{"experiment": "variants", "seed": 0, "v": 1},
                    {"experiment": "curve", "seed": 0, "v": 1}],
           "settings": {"experiments": ["variants", "curve"], "seeds": [0]},
           "meta": {"date": "a"}}
    new = {"rows": [{"experiment": "curve", "seed": 0, "v": 2}],
           "settings": {"experiments": ["curve"], "seeds": [0]}, "meta": {"date": "b"}}
    merged = _merge_experiments(old, new)
    assert sorted((r["experiment"], r["v"]) for r in merged["rows"]) == [
        ("curve", 2), ("variants", 1)]
    assert merged["settings"]["experiments"] == ["curve", "variants"]
    assert merged["runs"]["curve seeds 0"]["date"] == "b"
    assert merged["runs"]["variants seeds 0"]["date"] == "a"  # the earlier run keeps its metadata


def test_merge_adds_new_seeds_and_keeps_the_old_ones():
    old = {"rows": [{"experiment": "variants", "seed": 0, "v": 1},
                    {"experiment": "default", "seed": 0, "v": 1},
                    {"experiment": "default", "seed": 1, "v": 1}],
           "settings": {"experiments": ["variants", "default"], "seeds": [0, 1]},
           "runs": {"variants": {"date": "a", "commit": "x"},  # written before per-seed runs
                    "default": {"date": "a", "commit": "x"}},
           "meta": {"date": "a"}}
    new = {"rows": [{"experiment": "variants", "seed": s, "v": 2} for s in (1, 2)],
           "settings": {"experiments": ["variants"], "seeds": [1, 2]},
           "meta": {"date": "b", "commit": "y"}}
    merged = _merge_experiments(old, new)
    assert sorted((r["experiment"], r["seed"], r["v"]) for r in merged["rows"]) == [
        ("default", 0, 1), ("default", 1, 1), ("variants", 0, 1), ("variants", 1, 2),
        ("variants", 2, 2)]
    assert merged["settings"]["seeds"] == [0, 1, 2]
    runs = merged["runs"]
    assert set(runs) == {"variants seeds 0", "variants seeds 1 2", "default seeds 0 1"}
    assert runs["variants seeds 0"]["commit"] == "x"
    assert runs["variants seeds 1 2"] == {"date": "b", "commit": "y", "experiment": "variants",
                                          "seeds": [1, 2]}
    # rerunning seed 0 retires the old part entirely
    again = _merge_experiments(merged, {**new, "rows": [{"experiment": "variants", "seed": 0}],
                                        "settings": {"experiments": ["variants"], "seeds": [0]}})
    assert set(again["runs"]) == {"variants seeds 0", "variants seeds 1 2", "default seeds 0 1"}
    assert again["runs"]["variants seeds 0"]["commit"] == "y"
    assert len([r for r in again["rows"] if r["experiment"] == "variants"]) == 3


def _job(a, rows):
    return {"a": a, "sum": float(rows.sum()), "missing": float("nan")}


def test_a_stopped_run_resumes_from_its_journal(tmp_path):
    jobs = [dict(a=i, rows=np.arange(5.0) * i) for i in range(3)]
    folder = tmp_path / "journal"
    with pytest.raises(KeyboardInterrupt), common.journal(folder):
        first = common.parallel_map(_job, jobs, 1)
        raise KeyboardInterrupt  # stopped after its jobs finished
    assert len(list(folder.glob("*.pkl"))) == 3
    calls = []

    def counted(a, rows):
        calls.append(a)
        return _job(a, rows)

    counted.__module__, counted.__qualname__ = _job.__module__, _job.__qualname__
    changed = dict(a=1, rows=np.arange(5.0) * 7)  # same settings, other data: runs again
    with common.journal(folder):
        again = common.parallel_map(counted, [*jobs, changed], 1)
    assert calls == [1]
    assert [r["sum"] for r in again] == [r["sum"] for r in first] + [70.0]
    assert not folder.exists()  # a completed run leaves no journal



def test_an_in_process_job_runs_on_one_thread_and_gives_the_threads_back():
    # regression: n_jobs=1 left this process on one thread, so a later timing, or the
    # golden record's bit-exact fits in the test suite, ran with one thread
    import torch

    before = torch.get_num_threads()
    seen = common.parallel_map(lambda: torch.get_num_threads(), [{}], 1)
    assert seen == [1] and torch.get_num_threads() == before

def test_the_gpu_timings_run_on_any_device_and_the_profile_names_every_part():
    from benchmarks import speed

    rows = speed.run_tabular("cpu", quick=True, methods=("dcd-importance", "cd-10"))
    assert {(r["method"], r["n_features"], r["batch_size"]) for r in rows} == {
        (m, d, b) for m in ("dcd-importance", "cd-10") for d in (2, 64) for b in (256, 4096)}
    assert all(r["seconds_per_step"] > 0 for r in rows)
    X = np.random.RandomState(0).rand(512, 2)
    profiled = speed.profile_step(DCDEnergyEstimator, {}, X, 2)
    assert {"proposals", "weights", "negatives", "positives", "backward", "optimizer"} <= set(
        profiled["parts"]) <= set(speed.PARTS)
    assert sum(profiled["parts"].values()) <= profiled["step_ms"]


def test_every_density_experiment_runs_every_seed():
    from benchmarks.density import CURVE_STEPS, METHODS, ROBUST_GRID, ROBUST_TOYS, jobs

    runs = jobs(quick=False, seeds=[0, 1, 2])
    for experiment, per_seed in [("default", 6 * 2), ("variants", 6 * (len(METHODS) - 2)),
                                 ("curve", 6 * 2 * len(CURVE_STEPS)),
                                 ("robustness", len(ROBUST_TOYS) * 2 * 18)]:
        for seed in (0, 1, 2):
            mine = [j for j in runs if j["experiment"] == experiment and j["seed"] == seed]
            assert len(mine) == per_seed, (experiment, seed)
    assert math.prod(map(len, ROBUST_GRID.values())) == 18


def test_digits_merge_replaces_only_the_rerun_models():
    old = {"rows": [{"method": "dcd-tc", "v": 1}, {"method": "kpca", "v": 1}],
           "settings": {"seeds": [0, 1], "models": ["dcd-tc", "dcd"]}, "meta": {"date": "a"},
           "chosen": {"kpca": 1}}
    new = {"rows": [{"method": "dcd-tc", "v": 2}],
           "settings": {"seeds": [0, 1], "models": ["dcd-tc"]}, "meta": {"date": "b"},
           "chosen": None}
    merged = merge_models(old, new)
    assert sorted((r["method"], r["v"]) for r in merged["rows"]) == [("dcd-tc", 2), ("kpca", 1)]
    assert merged["chosen"] == {"kpca": 1} and merged["settings"] == old["settings"]
    assert merged["runs"] == {"": {"date": "a"}, "dcd-tc": {"date": "b"}}
    with pytest.raises(ValueError, match="seeds"):
        merge_models(old, {**new, "settings": {"seeds": [0], "models": ["dcd-tc"]}})


def _row(toy, method, gap, seconds, experiment="default", seed=0, **extra):
    return dict(toy=toy, method=method, gap=gap, fit_seconds=seconds,
                experiment=experiment, seed=seed, **extra)


def _verdicts(results):
    return {row[0].split(":")[0]: row for row in targets(results)}


@pytest.fixture
def results():
    density = [
        _row("a", "dcd", 0.04, 100), _row("a", "cd-10", 0.10, 100),
        _row("b", "dcd", 0.06, 100), _row("b", "cd-10", 0.20, 100),
        # curves: DCD reaches 0.1 after 20 s, CD-10 after 100 s (a) and never (b)
        _row("a", "dcd", 0.09, 20, "curve"), _row("a", "cd-10", 0.5, 20, "curve"),
        _row("b", "dcd", 0.08, 20, "curve"), _row("b", "cd-10", 0.6, 20, "curve"),
        _row("a", "dcd", 0.3, 10, "robustness"), _row("a", "dcd", 0.05, 10, "robustness"),
        _row("a", "cd-10", 0.3, 10, "robustness"), _row("a", "cd-10", math.nan, 10,
                                                         "robustness"),
    ]
    baselines = [dict(toy=t, method=m, gap=g) for t, m, g in
                 [("a", "gmm_bic", 0.03), ("a", "kde_cv", 0.05),
                  ("b", "gmm_bic", 0.01), ("b", "kde_cv", 0.02)]]
    speed = [dict(method="dcd-importance", n_features=d, seconds_per_step=0.01) for d in (2, 64)]
    speed += [dict(method="cd-10", n_features=d, seconds_per_step=0.04) for d in (2, 64)]
    speed += [dict(method="overhead", n_features=2, ratio=1.05),
              dict(method="overhead", n_features=64, ratio=1.2)]
    return {"density": {"rows": density}, "baselines": {"rows": baselines},
            "speed": {"rows": speed}}


def test_target_verdicts_follow_the_measurements(results):
    v = _verdicts(results)
    mean = v["DCD (defaults) mean NLL gap over the toys ≤ 0.05"]
    assert mean[1] == "0.050" and "**met**" == mean[2]
    # excess over the better baseline: a 0.04-0.03 = +0.01, b 0.06-0.01 = +0.05
    close = v["DCD within 0.02 of the better of GMM/KDE on each toy"]
    assert "+0.050" in close[1] and close[2] == "**not met**"
    # at DCD's longest fit (100 s) the gaps are the defaults': 0.4 and 0.3 of CD's
    clock = next(r for k, r in v.items() if k.startswith("At DCD"))
    assert "a 0.40" in clock[1] and "b 0.30" in clock[1] and clock[2] == "**met**"
    ttg = next(r for k, r in v.items() if k.startswith("Time to gap"))
    assert "a 0.20" in ttg[1] and ttg[2] == "**met**"
    robust = next(r for k, r in v.items() if k.startswith("Robustness"))
    assert robust[1] == "dcd 0.50 (per seed 0.50), cd-10 0.00 (per seed 0.00)"
    assert robust[2] == "**met**"
    step = v["DCD step ≤ ⅓ of a CD-10 step"]
    assert step[1] == "0.25 (2-D), 0.25 (64-D)" and step[2] == "**met**"
    assert v["Estimator overhead ≤ 1.10× the bare loop"][2] == "**not met**"


def test_curve_and_robustness_verdicts_aggregate_over_seeds():
    rows = []
    for seed, (d, c, d20, c20) in enumerate([(0.04, 0.10, 0.09, 0.5), (0.06, 0.20, 0.2, 0.05),
                                             (0.05, 0.30, 0.08, 0.5)]):
        rows += [_row("a", "dcd", d, 100, seed=seed), _row("a", "cd-10", c, 50, seed=seed),
                 _row("a", "dcd", d20, 20, "curve", seed=seed),
                 _row("a", "cd-10", c20, 20, "curve", seed=seed)]
    for seed, (dcd, cd) in enumerate([((0.05, 0.3), (0.3, math.nan)),
                                      ((0.05, 0.05), (0.05, 0.3))]):
        rows += [_row("a", m, g, 10, "robustness", seed=seed)
                 for m, gaps in (("dcd", dcd), ("cd-10", cd)) for g in gaps]
    v = _verdicts({"density": {"rows": rows}})
    # the cheapest budget reaching 0.1, per seed: DCD 20, 100, 20 s (median 20);
    # CD-10 50, 20 s and never (median 50)
    ttg = next(r for k, r in v.items() if k.startswith("Time to gap"))
    assert ttg[1] == "ratio a 0.40" and ttg[2] == "**not met**"
    # within 100 s, the best gap per seed: DCD 0.04, 0.06, 0.05; CD-10 0.10, 0.05, 0.30
    clock = next(r for k, r in v.items() if k.startswith("At DCD"))
    assert clock[1] == "mean 0.33; ratio a 0.33" and clock[2] == "**met**"
    robust = next(r for k, r in v.items() if k.startswith("Robustness"))
    assert robust[1] == "dcd 0.75 (per seed 0.50 / 1.00), cd-10 0.25 (per seed 0.00 / 0.50)"
    assert robust[2] == "**met**"


def test_missing_sections_give_no_verdict(results):
    assert targets({}) == []
    only_speed = targets({"speed": results["speed"]})
    assert [r[0] for r in only_speed] == ["DCD step ≤ ⅓ of a CD-10 step",
                                         "Estimator overhead ≤ 1.10× the bare loop"]


def test_generation_excess_is_the_difference_of_means_with_its_standard_error():
    excess, se = generation_excess([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    assert excess == pytest.approx(1.0)
    assert se == pytest.approx(math.sqrt(1.0 / 3 + 3.0 / 3))
    assert math.isnan(generation_excess([1.0], [0.0])[1])  # one seed: no spread to judge by


def test_report_survives_a_results_file_of_an_older_schema(tmp_path):
    # an old reliability.json whose grid row lacks fields that the section now reports
    meta = dict(cpu_count=2, machine="x", python="3", torch="t", sklearn="s", skdcd="0",
                date="d", section_seconds=1.0, quick=False)
    write_json(tmp_path / "results" / "reliability.json",
               {"meta": meta, "settings": {}, "rows": [{"kind": "grid_search"}]})
    text = write_report(tmp_path).read_text()
    assert "older version of this section" in text
    assert "--sections reliability" in text and "**unknown**" in text


@pytest.mark.slow
def test_quick_suite_runs_every_section_and_writes_the_report(tmp_path):
    # the CI smoke test of `python -m benchmarks run --quick`: every section runs end to end
    # on tiny budgets (torchebm's is skipped without it) and the report renders them all
    from benchmarks.__main__ import main
    from benchmarks.common import read_json
    from benchmarks.report import SECTIONS

    main(["run", "--quick", "--out", str(tmp_path)])
    for name in SECTIONS:
        result = read_json(tmp_path / "results" / f"{name}.json")
        assert result is not None, name
        assert result["meta"]["quick"] is True
        assert "skipped" in result or result["rows"], name
    density = read_json(tmp_path / "results" / "density.json")
    assert not [r for r in density["rows"] if r.get("error")]
    assert {r["experiment"] for r in density["rows"]} == {"default", "variants", "curve",
                                                          "robustness"}
    text = (tmp_path / "RESULTS.md").read_text()
    assert "older version of this section" not in text
    assert "## Targets (issue 3)" in text and "## Real images: 8×8 digits" in text
    assert (tmp_path / "figures" / "digits_samples.png").exists()


def test_highdim_densities_match_scipy_and_sum_over_rotated_blocks():
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from benchmarks.highdim import Density
    from skdcd.datasets import TOY_NAMES, load_toy

    for name in ("gaussian-8", "mixture-16"):
        density = Density(name)
        X = density.sample(500, 0)
        exact = logsumexp([math.log(w) + multivariate_normal(m, L @ L.T).logpdf(X)
                           for w, m, L in zip(density.weights, density.means, density.chols,
                                              strict=True)], axis=0)
        assert np.allclose(density.log_prob(X), exact, rtol=0, atol=1e-9)
    density = Density("toys-4")
    X = density.sample(300, 0)
    Z = X @ density.rotation  # back to the blocks
    blocks = [load_toy(TOY_NAMES[0]), load_toy(TOY_NAMES[1])]
    assert np.allclose(density.log_prob(X), blocks[0].log_prob(Z[:, :2])
                       + blocks[1].log_prob(Z[:, 2:]), atol=1e-12)
    assert np.allclose(density.rotation @ density.rotation.T, np.eye(4), atol=1e-12)



def test_highdim_report_shows_methods_that_a_rerun_added():
    from benchmarks import highdim

    rows = [dict(dataset="gaussian-8", method=m, seed=0, fit_seconds=1.0, gap_per_dim=g)
            for m, g in (("dcd", 0.02), ("gmm", 0.0), ("dcd-env", 0.03))]
    result = {"meta": {"commit": "abc"}, "rows": rows,
              "settings": {"datasets": ["gaussian-8"], "methods": ["dcd", "gmm"]},
              "runs": {"": {"commit": "abc"}, "dcd-env": {"commit": "def"}}}
    header = [line for line in highdim.report(result, None).splitlines()
              if line.startswith("| data |")]
    assert header[0] == "| data | dcd | gmm | dcd-env |"  # the gap table's header


def test_realdata_splits_are_disjoint_standardised_and_dequantised():
    from benchmarks.realdata import load

    train, val, test = load("digits", 0)
    assert (len(train), len(val), len(test)) == (1078, 359, 360) and train.shape[1] == 64
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-12)
    rows = np.vstack([train, val, test])
    assert len(np.unique(rows, axis=0)) == len(rows)  # dequantised: no two rows alike
    again, other = load("digits", 0)[0], load("digits", 1)[0]
    assert np.array_equal(again, train) and not np.array_equal(other, train)


def test_gmm_posterior_mean_is_the_wiener_filter_for_one_gaussian_and_mixes_for_two():
    from benchmarks.digits import gmm_posterior_mean

    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3))
    C, m, var = A @ A.T + np.eye(3), np.array([1.0, -1.0, 0.5]), 0.3
    Y = rng.standard_normal((5, 3))
    wiener = m + (Y - m) @ np.linalg.solve(C + var * np.eye(3), C)
    np.testing.assert_allclose(gmm_posterior_mean(Y, m[None], C[None], np.ones(1), var),
                               wiener, rtol=1e-10)
    # two far-apart components: each observation is denoised by its own component
    means = np.array([[-50.0, 0, 0], [50.0, 0, 0]])
    out = gmm_posterior_mean(means + 0.1, means, np.stack([C, C]), np.array([0.3, 0.7]), var)
    for i in range(2):
        own = means[i] + np.full(3, 0.1) @ np.linalg.solve(C + var * np.eye(3), C)
        np.testing.assert_allclose(out[i], own, rtol=1e-8)


def test_the_envelope_prior_denoises_as_the_time_conditional_model_at_its_start():
    from benchmarks.digits import _envelope_prior, gmm_posterior_mean, load_split, noisy

    X = load_split()[0][:300]
    est = DCDEnergyEstimator(image_shape=(1, 8, 8), time_conditional=True, max_iter=1,
                             learning_rate=1e-9, recovery_steps=2, random_state=3).fit(X)
    Y = noisy(X[:20], 0.2, 0)
    expected = gmm_posterior_mean(Y, *_envelope_prior(X, 3), 0.2**2)
    np.testing.assert_allclose(est.denoise(Y, 0.2, method="tweedie"), expected, atol=2e-3)
