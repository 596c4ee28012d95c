import argparse
import os
import re
import subprocess
import sys

import joblib
import numpy as np
import pytest

from skdcd import CDEnergyEstimator, DCDEnergyEstimator
from skdcd.cli import build_parser, load_model, main, parse_value
from skdcd.datasets import make_toy
from tests.conftest import FAST

# small settings for every fit in this file: a few steps, a small network, cheap log Z
PARAMS = ["max_iter=3", "hidden_layer_sizes=(16,)", "quadrature_n_grid=64", "sample_steps=16",
          "ais_n_particles=64", "ais_n_steps=16", "random_state=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "skdcd", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=ENV)


def _params(*extra):
    return [a for p in [*PARAMS, *extra] for a in ("--param", p)]


def _error_line(stderr, command):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"skdcd {command}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def data_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    X = np.random.RandomState(0).randn(120, 2) * [1.0, 0.5] + [1.0, -2.0]
    path = folder / "train.csv"
    np.savetxt(path, X, delimiter=",", header="height,weight", comments="")
    return folder, path, X


@pytest.fixture(scope="module")
def fitted_2d(data_2d):
    folder, data, X = data_2d
    model = folder / "model.joblib"
    result = _run("fit", data, "--estimator", "dcd", *_params(), "--out", model)
    return folder, data, X, model, result


# ---------------------------------------------------------------- the commands, end to end
def test_fit_writes_the_model_and_shows_progress(fitted_2d):
    _, _, X, model_path, result = fitted_2d
    assert result.returncode == 0, result.stderr
    assert "fitted DCDEnergyEstimator on 120 rows x 2 features" in result.stdout
    # verbose=1 (the command's default): a tqdm bar on stderr with the loss and the rate
    assert re.search(r"DCDEnergyEstimator fit: 100%.*3/3.*steps/s.*loss", result.stderr)
    model = joblib.load(model_path)
    assert isinstance(model, DCDEnergyEstimator)
    # the parameters were parsed to their types
    assert model.hidden_layer_sizes == (16,) and model.max_iter == 3
    assert model.n_iter_ == 3 and model.n_features_in_ == 2
    assert model.verbose == 0  # saved with the estimator's own verbose
    assert np.isfinite(model.score(X))


def test_fit_is_silent_with_verbose_0_and_takes_npy_and_cd(tmp_path):
    X = np.random.RandomState(1).randn(60, 3)
    np.save(tmp_path / "x.npy", X)
    result = _run("fit", tmp_path / "x.npy", "--estimator", "cd", *_params("verbose=0"),
                  "--out", tmp_path / "cd.joblib")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no bar for training nor for AIS (3 features)
    model = joblib.load(tmp_path / "cd.joblib")
    assert isinstance(model, CDEnergyEstimator) and model.n_features_in_ == 3
    assert "log Z = " in result.stdout and "±" in result.stdout  # AIS with a standard error


def test_score_prints_the_mean_and_writes_per_row_values(fitted_2d, tmp_path):
    _, data, X, model_path, _ = fitted_2d
    out = tmp_path / "loglik.csv"
    result = _run("score", model_path, data, "--out", out, "--verbose", "0")
    assert result.returncode == 0, result.stderr
    mean = float(re.search(r"mean log-likelihood: (\S+) nats \(120 rows", result.stdout)[1])
    lines = out.read_text().splitlines()
    assert lines[0] == "log_likelihood"
    per_row = np.array([float(v) for v in lines[1:]])
    expected = joblib.load(model_path).score_samples(X)
    np.testing.assert_allclose(per_row, expected, rtol=1e-8)
    assert mean == pytest.approx(expected.mean(), abs=1e-5)


def test_sample_writes_csv_or_npy_by_suffix(fitted_2d, tmp_path):
    _, _, _, model_path, _ = fitted_2d
    result = _run("sample", model_path, "-n", 17, "--random-state", 3, "--out",
                  tmp_path / "s.csv")
    assert result.returncode == 0, result.stderr
    assert "sample: 100%" in result.stderr and "steps/s" in result.stderr  # annealing bar
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "x0,x1"
    from_csv = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert from_csv.shape == (17, 2) and np.isfinite(from_csv).all()
    # same seed, .npy output: the same samples
    assert main(["sample", str(model_path), "-n", "17", "--random-state", "3", "--verbose", "0",
                 "--out", str(tmp_path / "s.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), from_csv, rtol=1e-8)


def test_denoise_writes_one_clean_row_per_noisy_row(fitted_2d, tmp_path):
    _, _, X, model_path, _ = fitted_2d
    noisy = X[:30] + 0.2 * np.random.RandomState(0).randn(30, 2)
    np.save(tmp_path / "noisy.npy", noisy)
    result = _run("denoise", model_path, tmp_path / "noisy.npy", "--noise-std", 0.2,
                  "--method", "map", "--out", tmp_path / "clean.npy", "--verbose", "0")
    assert result.returncode == 0, result.stderr
    clean = np.load(tmp_path / "clean.npy")
    expected = joblib.load(model_path).denoise(noisy, noise_std=0.2, method="map")
    np.testing.assert_allclose(clean, expected, rtol=1e-8)
    assert not np.allclose(clean, noisy)


def test_plot_draws_the_landscape_of_a_2d_model(fitted_2d, tmp_path):
    mpl_image = pytest.importorskip("matplotlib.image")
    _, data, _, model_path, _ = fitted_2d
    out = tmp_path / "plot.png"
    result = _run("plot", model_path, "--data", data, "-n", 200, "--out", out, "--verbose", "0")
    assert result.returncode == 0, result.stderr
    assert "(landscape)" in result.stdout
    image = mpl_image.imread(out)[..., :3]
    assert image.shape[0] > 200 and image.std() > 0.1
    assert (image < 0.95).any(axis=-1).mean() > 0.2  # density images, not an empty canvas


def test_demo_prints_model_and_true_nll_and_writes_a_plot(tmp_path):
    out = tmp_path / "demo.png"
    result = _run("demo", "--dataset", "two_moons", "--n-samples", "500", "--n-test", "200",
                  "--max-iter", "20", "--plot", str(out), "--verbose", "0", "--quick")
    assert result.returncode == 0, result.stderr
    assert "test NLL (model)" in result.stdout and "test NLL (truth)" in result.stdout
    mpl_image = pytest.importorskip("matplotlib.image")
    image = mpl_image.imread(out)
    assert image.shape[0] > 100 and image[..., :3].std() > 0.05  # not a blank canvas


def test_demo_without_plot_and_bad_arguments():
    ok = _run("demo", "--n-samples", "300", "--n-test", "100", "--max-iter", "1", "--no-plot",
              "--quick", "--verbose", "0")
    assert ok.returncode == 0 and "NLL gap" in ok.stdout and "wrote" not in ok.stdout
    bad = _run("demo", "--dataset", "nope")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert _run().returncode == 2


# ---------------------------------------------------------------- errors
def test_malformed_csv_fails_in_one_line_without_output(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1.0,2.0\n3.0,oops\n")
    out = tmp_path / "model.joblib"
    result = _run("fit", tmp_path / "bad.csv", *_params(), "--out", out)
    assert result.returncode == 1
    line = _error_line(result.stderr, "fit")
    assert "line 3, column 2" in line and "oops" in line
    assert os.listdir(tmp_path) == ["bad.csv"]  # no model, no temporary file


def test_wrong_width_for_the_model_fails_in_one_line(fitted_2d, tmp_path):
    _, _, _, model_path, _ = fitted_2d
    np.save(tmp_path / "wide.npy", np.zeros((5, 3)))
    result = _run("denoise", model_path, tmp_path / "wide.npy", "--noise-std", 0.1,
                  "--out", tmp_path / "out.npy")
    assert result.returncode == 1
    assert "3 columns but the model was fitted on 2 features" in _error_line(result.stderr,
                                                                            "denoise")
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("content, message", [
    ("1,2\n3,nan\n", "line 2, column 2: nan"),
    ("x,y\n1,2\n3,\n", "line 3, column 2: empty field"),
    ("1,2\n3,4,5\n", "line 2: expected 2 fields"),
    ("x,y\n", "no data rows"),
])
def test_bad_csv_contents(tmp_path, capsys, content, message):
    (tmp_path / "d.csv").write_text(content)
    code = main(["fit", str(tmp_path / "d.csv"), *_params(), "--out", str(tmp_path / "m")])
    assert code == 1
    assert message in _error_line(capsys.readouterr().err, "fit")
    assert not (tmp_path / "m").exists()


def test_nan_rows_in_npy_and_missing_files(fitted_2d, tmp_path, capsys):
    _, data, _, model_path, _ = fitted_2d
    X = np.ones((4, 2))
    X[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", X)
    assert main(["score", str(model_path), str(tmp_path / "nan.npy")]) == 1
    assert "row 3" in _error_line(capsys.readouterr().err, "score")
    assert main(["score", str(model_path), str(tmp_path / "missing.csv")]) == 1
    assert "data file not found" in _error_line(capsys.readouterr().err, "score")
    assert main(["sample", str(tmp_path / "missing.joblib"), "--out",
                 str(tmp_path / "s.npy")]) == 1
    assert "model file not found" in _error_line(capsys.readouterr().err, "sample")
    # a file that is not a model
    assert main(["sample", str(data), "--out", str(tmp_path / "s.npy")]) == 1
    assert "cannot read" in _error_line(capsys.readouterr().err, "sample")
    assert not (tmp_path / "s.npy").exists()


def test_unknown_and_invalid_parameters(data_2d, tmp_path, capsys):
    _, data, _ = data_2d
    out = tmp_path / "m.joblib"
    assert main(["fit", str(data), "--param", "n_layers=3", "--out", str(out)]) == 2
    line = _error_line(capsys.readouterr().err, "fit")
    assert "unknown parameter 'n_layers'" in line and "hidden_layer_sizes" in line
    assert main(["fit", str(data), "--param", "max_iter", "--out", str(out)]) == 2
    assert "NAME=VALUE" in _error_line(capsys.readouterr().err, "fit")
    # an invalid value is reported by the estimator's own validation, in one line
    assert main(["fit", str(data), *_params("learning_rate=-1"), "--out", str(out)]) == 1
    assert "learning_rate" in _error_line(capsys.readouterr().err, "fit")
    assert not out.exists()


def test_bad_output_paths_fail_before_any_work(fitted_2d, tmp_path, capsys):
    _, _, _, model_path, _ = fitted_2d
    assert main(["sample", str(model_path), "--out", str(tmp_path / "s.txt")]) == 2
    assert ".npy, .csv" in _error_line(capsys.readouterr().err, "sample")
    assert main(["sample", str(model_path), "--out", str(tmp_path / "no" / "s.npy")]) == 1
    assert "does not exist" in _error_line(capsys.readouterr().err, "sample")
    assert main(["plot", str(model_path), "--out", str(tmp_path / "p.jpg")]) == 2
    assert ".png" in _error_line(capsys.readouterr().err, "plot")


def test_a_failed_write_leaves_no_partial_file(fitted_2d, tmp_path, capsys, monkeypatch):
    _, _, _, model_path, _ = fitted_2d
    out = tmp_path / "s.npy"
    out.write_bytes(b"previous")

    def broken_save(f, X):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    assert main(["sample", str(model_path), "--verbose", "0", "--out", str(out)]) == 1
    assert "disk full" in _error_line(capsys.readouterr().err, "sample")
    assert out.read_bytes() == b"previous"  # untouched
    assert os.listdir(tmp_path) == ["s.npy"]  # the temporary file is gone


def test_plot_without_matplotlib_names_it(fitted_2d, tmp_path, capsys, monkeypatch):
    _, _, _, model_path, _ = fitted_2d
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "p.png"
    assert main(["plot", str(model_path), "-n", "10", "--verbose", "0", "--out", str(out)]) == 1
    line = _error_line(capsys.readouterr().err, "plot")
    assert "matplotlib" in line and "pip install" in line
    assert not out.exists()


# ---------------------------------------------------------------- in-process details
def test_score_to_stdout_and_pairwise_grid_and_loss_plots(fitted_2d, tmp_path, capsys):
    mpl_image = pytest.importorskip("matplotlib.image")
    _, data, X, model_path, _ = fitted_2d
    assert main(["score", str(model_path), str(data), "--out", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "log_likelihood" and len(lines) == 1 + len(X)
    # an image model (image_shape set) gets a grid of samples, next to the data
    X16 = np.random.RandomState(0).rand(40, 16)
    # a tabular fit posing as an image model: it stays the marginal model it was fitted as
    est = DCDEnergyEstimator(**{**FAST, "hidden_layer_sizes": (8,)}).fit(X16)
    est.image_shape = (4, 4)
    joblib.dump(est, tmp_path / "img.joblib")
    np.save(tmp_path / "img.npy", X16)
    for args, kind in [(["--data", str(tmp_path / "img.npy")], "grid"),
                       (["--kind", "pairwise", "--max-features", "3"], "pairwise"),
                       (["--kind", "loss"], "loss")]:
        out = tmp_path / f"{kind}.png"
        assert main(["plot", str(tmp_path / "img.joblib"), *args, "-n", "16", "--verbose", "0",
                     "--out", str(out)]) == 0
        assert f"({kind})" in capsys.readouterr().out
        image = mpl_image.imread(out)[..., :3]
        assert (image < 0.9).any(axis=-1).mean() > 0.02 and image.std() > 0.05, kind


def test_progress_bars_for_fit_ais_and_sampling(capsys):
    X = np.random.RandomState(0).randn(50, 3)
    est = DCDEnergyEstimator(**{**FAST, "verbose": 1}).fit(X)
    est.log_partition_  # noqa: B018 - AIS (3 features)
    est.sample(5, random_state=0)
    captured = capsys.readouterr()
    assert captured.out == ""  # bars go to stderr
    for label in ("fit: 100%", "log Z (AIS): 100%", "sample: 100%"):
        assert label in captured.err
    assert "loss" in captured.err and "steps/s" in captured.err
    quiet = DCDEnergyEstimator(**FAST).fit(X)
    quiet.log_partition_  # noqa: B018
    quiet.sample(5, random_state=0)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("text, value", [
    ("(64,64)", (64, 64)), ("3e-3", 0.003), ("vp", "vp"), ("(0.05,0.5)", (0.05, 0.5)),
    ("None", None), ("true", True), ("cuda:0", "cuda:0"), ("'auto'", "auto"), ("50", 50),
])
def test_parameter_values_are_parsed_to_their_types(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_every_command_has_complete_help(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"fit", "score", "sample", "denoise", "plot", "demo"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: skdcd {name}" in text and "example" in text
        for action in sub._actions:
            assert all(opt in text for opt in action.option_strings)


def test_console_script_entry_point():
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_fit_to_a_pt_file_saves_weights_only_and_every_command_reads_it(tmp_path):
    data = tmp_path / "d.csv"
    np.savetxt(data, make_toy("two_moons", 300, random_state=0), delimiter=",")
    model = tmp_path / "m.pt"
    assert _run("fit", data, "--param", "max_iter=2", "--param", "hidden_layer_sizes=(8,)",
                "--param", "quadrature_n_grid=32", "--out", model).returncode == 0
    est = DCDEnergyEstimator.load(model)  # a weights-only file, not a pickle
    assert load_model(str(model)).n_iter_ == est.n_iter_ == 2
    done = _run("score", model, data)
    mean = float(re.search(r"mean log-likelihood: (\S+) nats", done.stdout)[1])
    assert done.returncode == 0
    assert mean == pytest.approx(est.score(np.loadtxt(data, delimiter=",")), abs=1e-3)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    done = _run("score", tmp_path / "bad.pt", data)
    assert done.returncode == 1 and "cannot read" in done.stderr


# ---------------------------------------------------------------- hardening (issue 27)
def test_a_tampered_pt_file_fails_in_one_line(data_2d, tmp_path, capsys):
    import json

    import torch

    _, data, X = data_2d
    DCDEnergyEstimator(**FAST).fit(X).save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["params"] = json.dumps({**json.loads(payload["params"]), "bogus": 1})
    torch.save(payload, tmp_path / "bad.pt")
    data_bytes = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data_bytes[:len(data_bytes) // 2])
    for name in ("bad.pt", "cut.pt"):
        assert main(["score", str(tmp_path / name), str(data)]) == 1
        assert name in _error_line(capsys.readouterr().err, "score")


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_out_refuses_a_device_or_a_fifo(fitted_2d, tmp_path, capsys):
    _, data, _, model_path, _ = fitted_2d
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    assert main(["sample", str(model_path), "--verbose", "0", "--out", str(fifo)]) == 1
    assert "not a regular file" in _error_line(capsys.readouterr().err, "sample")
    assert main(["fit", str(data), *_params(), "--out", "/dev/null"]) == 1
    assert "not a regular file" in _error_line(capsys.readouterr().err, "fit")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_out_keeps_the_permissions_of_an_existing_file(fitted_2d, tmp_path, capsys):
    _, _, _, model_path, _ = fitted_2d
    out = tmp_path / "s.npy"
    out.write_bytes(b"previous")
    os.chmod(out, 0o600)
    assert main(["sample", str(model_path), "-n", "2", "--verbose", "0", "--out",
                 str(out)]) == 0
    assert os.stat(out).st_mode & 0o777 == 0o600 and np.load(out).shape == (2, 2)


def test_data_that_is_not_a_regular_file_is_refused(fitted_2d, tmp_path, capsys):
    _, _, _, model_path, _ = fitted_2d
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    for source in (str(fifo), "/dev/zero"):  # would block, or grow without end
        assert main(["score", str(model_path), source]) == 1
        assert "not a regular file" in _error_line(capsys.readouterr().err, "score")


def test_demo_checks_the_plot_path_before_fitting(tmp_path):
    done = _run("demo", "--plot", tmp_path / "nodir" / "x.png", "--verbose", "0")
    assert done.returncode == 1 and "Fitting" not in done.stdout
    assert "--plot" in _error_line(done.stderr, "demo") and "does not exist" in done.stderr


def test_a_failed_figure_write_keeps_the_previous_figure(fitted_2d, tmp_path, capsys,
                                                         monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    _, _, _, model_path, _ = fitted_2d
    out = tmp_path / "p.png"
    out.write_bytes(b"previous figure")

    def broken(self, f, **kwargs):
        f.write(b"half a figure")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    assert main(["plot", str(model_path), "--verbose", "0", "--out", str(out)]) == 1
    assert "disk full" in _error_line(capsys.readouterr().err, "plot")
    assert out.read_bytes() == b"previous figure" and os.listdir(tmp_path) == ["p.png"]


def test_a_bool_where_a_number_is_expected_fails_in_one_line(data_2d, tmp_path, capsys):
    _, data, _ = data_2d
    assert main(["fit", str(data), *_params("max_iter=True"), "--out",
                 str(tmp_path / "m.pt")]) == 1
    assert "must not be a bool" in _error_line(capsys.readouterr().err, "fit")



def test_out_below_a_file_fails_in_one_line(fitted_2d, tmp_path, capsys):
    _, _, _, model_path, _ = fitted_2d
    (tmp_path / "file.txt").write_text("x")
    assert main(["sample", str(model_path), "--out", str(tmp_path / "file.txt" / "s.npy")]) == 1
    assert "does not exist" in _error_line(capsys.readouterr().err, "sample")
