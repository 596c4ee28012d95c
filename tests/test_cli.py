import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "skdcd", *args], capture_output=True,
                          text=True, timeout=600)


def test_demo_prints_model_and_true_nll_and_writes_a_plot(tmp_path):
    out = tmp_path / "demo.png"
    result = _run("demo", "--dataset", "two_moons", "--n-samples", "500", "--n-test", "200",
                  "--max-iter", "20", "--plot", str(out), "--verbose", "0", "--quick")
    assert result.returncode == 0, result.stderr
    assert "test NLL (model)" in result.stdout and "test NLL (truth)" in result.stdout
    plt = pytest.importorskip("matplotlib.pyplot")
    image = plt.imread(out)
    assert image.shape[0] > 100 and image[..., :3].std() > 0.05  # not a blank canvas


def test_demo_without_plot_and_bad_arguments():
    ok = _run("demo", "--n-samples", "300", "--n-test", "100", "--max-iter", "1", "--no-plot",
              "--quick")
    assert ok.returncode == 0 and "NLL gap" in ok.stdout and "wrote" not in ok.stdout
    bad = _run("demo", "--dataset", "nope")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert _run().returncode == 2


def test_console_script_entry_point():
    from skdcd.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
