"""The ``skdcd`` command: fit, score, sample, denoise and plot energy-based models.

Also run as ``python -m skdcd``. DATA is a CSV file (comma-separated, tab-separated for .tsv,
with an optional header row) or a 2-D .npy array, one row per sample. Errors exit with
status 1 (2 for bad usage) and one line on stderr; outputs are written atomically, so a
failed command never leaves a partial file.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skdcd._io import (
    CLIError,
    _check_out,
    _feature_names,
    _save_array,
    read_data,
)
from skdcd._io import write_atomic as _write_atomic

ESTIMATORS = {"dcd": "DCDEnergyEstimator", "cd": "CDEnergyEstimator"}
ARRAY_SUFFIXES = (".npy", ".csv", ".tsv")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
DATA_HELP = ("a CSV file (comma-separated; tab-separated for .tsv; the first row may be "
             "a header) or a 2-D .npy array, one row per sample, no missing values")
LITERALS = {"true": True, "false": False, "none": None}
EXAMPLES = """examples:
  skdcd fit data.csv --estimator dcd --param max_iter=50 --param noise_std=0.1 --out m.joblib
  skdcd score m.joblib test.csv                    # mean log-likelihood (nats per row)
  skdcd score m.joblib test.csv --out loglik.csv   # ... and one value per row
  skdcd sample m.joblib -n 64 --out samples.npy
  skdcd denoise m.joblib noisy.csv --noise-std 0.2 --out clean.csv
  skdcd plot m.joblib --data data.csv --out m.png
  skdcd demo --dataset two_moons
Run `skdcd COMMAND --help` for the options of a command."""


for _obj in (CLIError, read_data):
    _obj.__module__ = __name__  # documented here, with the command they serve


def load_model(path: str) -> Any:
    """Load a fitted skdcd estimator written by ``skdcd fit``.

    Parameters
    ----------
    path : str
        The model file: a ``.pt`` file written by ``save`` (weights and JSON only, safe to
        load from anywhere), or else a joblib file, which is a pickle: load only files you
        trust.

    Returns
    -------
    estimator : fitted DCDEnergyEstimator or CDEnergyEstimator
        The model.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import joblib
    >>> import numpy as np
    >>> from skdcd import CDEnergyEstimator
    >>> from skdcd.datasets import make_toy
    >>> X = make_toy("two_moons", 200, random_state=0)
    >>> est = CDEnergyEstimator(hidden_layer_sizes=(16,), max_iter=2, random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = str(Path(tmp) / "model.joblib")
    ...     _ = joblib.dump(est, path)
    ...     model = load_model(path)
    >>> type(model).__name__, bool(np.allclose(model.energy(X[:3]), est.energy(X[:3])))
    ('CDEnergyEstimator', True)
    """
    import joblib
    from sklearn.utils.validation import check_is_fitted

    from skdcd._base import BaseEnergyEstimator

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"model file not found: {path}")
    if p.suffix.lower() == ".pt":
        return _load_weights_only(p)
    try:
        model = joblib.load(p)
    except Exception as exc:  # a corrupt or foreign file fails in many ways
        raise CLIError(f"cannot read {path} as a model saved by `skdcd fit` "
                       f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, BaseEnergyEstimator):
        raise CLIError(f"{path} holds a {type(model).__name__}, not an skdcd estimator")
    check_is_fitted(model)
    return model


def _load_weights_only(path: Path) -> Any:
    from skdcd._base import BaseEnergyEstimator

    try:
        return BaseEnergyEstimator.load(path)  # the class the file names
    except ValueError as exc:
        raise CLIError(f"cannot read {path} as a model saved by `skdcd fit --out *.pt`: "
                       f"{exc}") from exc


def _check_width(model: Any, X: np.ndarray, path: str) -> None:
    if X.shape[1] != model.n_features_in_:
        raise CLIError(f"{path} has {X.shape[1]} columns but the model was fitted on "
                       f"{model.n_features_in_} features")


# ---------------------------------------------------------------------- parameters
def _estimator_class(name: str) -> type:
    import skdcd

    return getattr(skdcd, ESTIMATORS[name])


def parse_value(text: str) -> Any:
    """A ``--param`` value: a Python literal when it is one, else the string itself.

    Parameters
    ----------
    text : str
        E.g. ``"(64, 64)"``, ``"3e-3"``, ``"vp"``, ``"None"`` or ``"true"``.

    Returns
    -------
    value : object
        The parsed value.

    Examples
    --------
    >>> parse_value("(64, 64)")
    (64, 64)
    >>> parse_value("3e-3"), parse_value("true"), parse_value("None"), parse_value("vp")
    (0.003, True, None, 'vp')
    """
    text = text.strip()
    if text.lower() in LITERALS:
        return LITERALS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_params(pairs: Sequence[str], estimator_cls: type) -> dict[str, Any]:
    """``NAME=VALUE`` strings as keyword arguments of ``estimator_cls`` (names checked).

    Parameters
    ----------
    pairs : sequence of str
        The ``--param`` arguments.
    estimator_cls : type
        The estimator whose ``get_params()`` keys are the valid names.

    Returns
    -------
    params : dict
        Parameter values, parsed by :func:`parse_value`.

    Examples
    --------
    >>> from skdcd import DCDEnergyEstimator
    >>> parse_params(["max_iter=50", "hidden_layer_sizes=(64, 64)", "diffusion=vp"],
    ...              DCDEnergyEstimator)
    {'max_iter': 50, 'hidden_layer_sizes': (64, 64), 'diffusion': 'vp'}
    >>> try:
    ...     parse_params(["max_itr=50"], DCDEnergyEstimator)
    ... except CLIError as error:  # unknown name: bad usage
    ...     print(error.code)
    2
    """
    valid = sorted(estimator_cls().get_params(deep=False))
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CLIError(f"--param expects NAME=VALUE, got {pair!r}", code=2)
        if name not in valid:
            raise CLIError(f"unknown parameter {name!r} for {estimator_cls.__name__}; valid "
                           f"parameters: {', '.join(valid)}", code=2)
        params[name] = parse_value(raw)
    return params


def _image_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W or C,H,W, got {text!r}")
    return shape


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


# ---------------------------------------------------------------------- commands
def _fit(args: argparse.Namespace) -> int:
    cls = _estimator_class(args.estimator)
    params = parse_params(args.param, cls)
    _check_out(args.out)
    from skdcd import _distributed as distributed
    from skdcd._utils import fit_device

    cuda = fit_device(params.get("device", "auto")).type == "cuda"
    if args.nproc > 1:  # data-parallel: one process per shard of each minibatch
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise CLIError("--nproc starts its own processes; under torchrun leave it out")
        distributed.launch(_fit_process, args.nproc, (args,),
                           backend="nccl" if cuda and _cuda_count() >= args.nproc
                           else "gloo")
        return 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of torchrun's processes
        import torch
        import torch.distributed as dist

        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=distributed.TIMEOUT)
        distributed.run_and_leave(_fit_process, args)
        return 0
    _fit_process(args)
    return 0


def _cuda_count() -> int:
    """The number of CUDA devices here."""
    import torch

    return torch.cuda.device_count()


def _fit_process(args: argparse.Namespace) -> None:
    """Fit and, on rank 0 of a distributed fit (or alone), save and report."""
    import joblib

    from skdcd._distributed import world

    cls = _estimator_class(args.estimator)
    params = parse_params(args.param, cls)
    out = _check_out(args.out)
    X = read_data(args.data)
    est = cls(**params)
    saved_verbose = est.verbose
    if "verbose" not in params:
        est.set_params(verbose=args.verbose)
    start = time.perf_counter()
    est.fit(X)
    fit_time = time.perf_counter() - start
    rank, size = world()
    if rank != 0:  # every process holds the same model: rank 0 writes it
        return
    log_z = est.log_partition_  # computed once here (AIS can be slow), saved with the model
    est.set_params(verbose=saved_verbose)
    if out.suffix.lower() == ".pt":  # weights and JSON only; save() is atomic itself
        if est.energy_net is not None:
            raise CLIError("--out *.pt cannot hold a custom energy_net; use a .joblib file")
        est.save(out)
    else:
        _write_atomic(out, lambda f: joblib.dump(est, f))
    loss = f", final loss {est.loss_curve_[-1]:.4g}" if est.loss_curve_ else ""
    std = f" ± {est.log_partition_std_:.2g}" if est.log_partition_std_ else ""
    procs = f" over {size} processes" if size > 1 else ""
    print(f"fitted {cls.__name__} on {X.shape[0]} rows x {X.shape[1]} features in "
          f"{fit_time:.1f} s{procs} ({est.n_iter_} epochs, {est.t_} steps{loss}); "
          f"log Z = {log_z:.4f}{std}", flush=True)
    print(f"wrote {out}", flush=True)


def _load_for_command(args: argparse.Namespace) -> Any:
    model = load_model(args.model)
    model.set_params(verbose=args.verbose)
    return model


def _score(args: argparse.Namespace) -> int:
    to_stdout = args.out == "-"
    out = None if args.out is None or to_stdout else _check_out(args.out, (".csv", ".tsv"))
    model = _load_for_command(args)
    X = read_data(args.data)
    _check_width(model, X, args.data)
    log_likelihood = model.score_samples(X)
    if to_stdout:
        np.savetxt(sys.stdout, log_likelihood, fmt="%.10g", header="log_likelihood",
                   comments="")
        return 0
    std = model.log_partition_std_
    note = f"; log Z by AIS, standard error {std:.2g}" if std else ""
    print(f"mean log-likelihood: {float(np.mean(log_likelihood)):.6f} nats "
          f"({len(log_likelihood)} rows{note})")
    if out is not None:
        _save_array(out, log_likelihood[:, None], ["log_likelihood"])
        print(f"wrote {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    out = _check_out(args.out, ARRAY_SUFFIXES)
    model = _load_for_command(args)
    X = model.sample(args.n_samples, random_state=args.random_state)
    _save_array(out, X, _feature_names(model))
    print(f"wrote {out} ({X.shape[0]} x {X.shape[1]})")
    return 0


def _denoise(args: argparse.Namespace) -> int:
    out = _check_out(args.out, ARRAY_SUFFIXES)
    model = _load_for_command(args)
    X = read_data(args.data)
    _check_width(model, X, args.data)
    X_clean = model.denoise(X, noise_std=args.noise_std, method=args.method,
                            random_state=args.random_state)
    _save_array(out, X_clean, _feature_names(model))
    print(f"wrote {out} ({X_clean.shape[0]} x {X_clean.shape[1]})")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from skdcd import plotting

    out = _check_out(args.out, FIGURE_SUFFIXES)
    model = _load_for_command(args)
    X = None
    if args.data is not None:
        X = read_data(args.data)
        _check_width(model, X, args.data)
    image_shape = args.image_shape or getattr(model, "image_shape", None)
    kind = args.kind
    if kind == "auto":
        kind = ("grid" if image_shape is not None
                else "landscape" if model.n_features_in_ == 2 else "pairwise")
    if kind == "landscape" and model.n_features_in_ != 2:
        raise CLIError(f"--kind landscape needs a 2-feature model, this one has "
                       f"{model.n_features_in_}; use --kind pairwise", code=2)
    if kind == "grid" and image_shape is None:
        raise CLIError("--kind grid needs --image-shape (the model has no image_shape)", code=2)
    n = args.n_samples or (64 if kind == "grid" else 1000)
    samples = model.sample(n, random_state=args.random_state) if kind != "loss" else None
    if kind == "landscape":
        fig = plotting.plot_landscape_2d(model, X, samples)
    elif kind == "pairwise":
        fig = plotting.plot_pairwise(samples, X, max_features=args.max_features,
                                     feature_names=_feature_names(model))
    elif kind == "loss":
        fig = plotting.plot_loss_curve(model)
    else:
        if X is None:
            fig = plotting.plot_sample_grid(samples, image_shape, title="model samples")
        else:
            fig = plotting._new_figure(figsize=(12.0, 6.2))
            ax_data, ax_samples = fig.subplots(1, 2)
            plotting.plot_sample_grid(X[:n], image_shape, ax=ax_data, title="data")
            plotting.plot_sample_grid(samples, image_shape, ax=ax_samples,
                                      title="model samples")
    fmt = out.suffix.lower().lstrip(".")
    _write_atomic(out, lambda f: fig.savefig(f, format=fmt, dpi=args.dpi))
    print(f"wrote {out} ({kind})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from skdcd import DCDEnergyEstimator
    from skdcd.datasets import load_toy

    if args.plot is not None:  # a bad path fails now, not after the fit
        _check_out(args.plot, FIGURE_SUFFIXES, "--plot")
    density = load_toy(args.dataset)
    X_train = density.sample(args.n_samples, random_state=0)
    X_test = density.sample(args.n_test, random_state=1)
    params = {"random_state": 0, "verbose": args.verbose}
    if args.quick:  # smoke-test settings: a small network and cheap log Z and sampling
        params.update(hidden_layer_sizes=(32, 32), quadrature_n_grid=128, sample_steps=64)
    if args.max_iter is not None:
        params["max_iter"] = args.max_iter
    est = DCDEnergyEstimator(**params)
    print(f"Fitting DCDEnergyEstimator on {args.n_samples} rows of {args.dataset!r} ...",
          flush=True)
    start = time.perf_counter()
    est.fit(X_train)
    fit_time = time.perf_counter() - start
    model_nll = -est.score(X_test)
    true_nll = density.nll(X_test)
    print(f"fit time            {fit_time:8.1f} s ({est.t_} steps)")
    print(f"test NLL (model)    {model_nll:8.3f} nats")
    print(f"test NLL (truth)    {true_nll:8.3f} nats")
    print(f"NLL gap             {model_nll - true_nll:8.3f} nats")
    if args.plot is not None:
        try:
            from skdcd.plotting import plot_landscape_2d

            plot_landscape_2d(est, X_test, est.sample(2000, random_state=0), path=args.plot)
            print(f"wrote {args.plot}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install skdcd[plot])")
    return 0


# ---------------------------------------------------------------------- parser
class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps indented (example) paragraphs as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.strip("\n").split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in para.splitlines()) if "\n  " in para
            else textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                               subsequent_indent=indent)
            for para in paragraphs)


def _add_verbose(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--verbose", type=int, default=1, metavar="N",
                        help=f"1 (default): progress bars on stderr during {what}; 0: silent")


def _add_array_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output file; the format follows the suffix: .npy, .csv or .tsv")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``skdcd`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser, one sub-command per action.

    Examples
    --------
    >>> parser = build_parser()
    >>> parser.prog
    'skdcd'
    >>> args = parser.parse_args(["sample", "model.joblib", "-n", "8", "--out", "s.npy"])
    >>> args.command, args.model, args.n_samples, args.out
    ('sample', 'model.joblib', 8, 's.npy')
    """
    from skdcd import __version__

    raw = _HelpFormatter
    parser = argparse.ArgumentParser(prog="skdcd", description=__doc__.replace("``", ""),
                                     epilog=EXAMPLES,
                                     formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"skdcd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (_fit_parser, _score_parser, _sample_parser, _denoise_parser, _plot_parser,
                _demo_parser):
        add(sub, raw)
    return parser


def _fit_parser(sub, raw: type[argparse.HelpFormatter]) -> None:
    fit = sub.add_parser(
        "fit", formatter_class=raw, help="fit an estimator to DATA and save it",
        description="Fit DCDEnergyEstimator (dcd) or CDEnergyEstimator (cd) to DATA and save "
                    "it (joblib, or weights and JSON only when MODEL ends in .pt); log Z is "
                    "computed once here and saved with the model.",
        epilog="examples:\n"
               "  skdcd fit data.csv --out m.joblib\n"
               "  skdcd fit data.npy --estimator cd --param max_iter=100 \\\n"
               "      --param 'hidden_layer_sizes=(64,64)' --param learning_rate=3e-3 "
               "--out m.joblib\n"
               "  skdcd fit data.csv --param diffusion=vp --param 'noise_std=(0.05,0.5)' "
               "--out m.joblib\n"
               "  skdcd fit data.npy --nproc 2 --out m.joblib      # two processes\n"
               "  torchrun --nproc-per-node 4 -m skdcd fit data.npy --out m.pt  # four GPUs\n"
               "parameter names are the estimator's (see `help(skdcd.DCDEnergyEstimator)`); "
               "values are\nPython literals or plain strings.")
    fit.add_argument("data", metavar="DATA", help=DATA_HELP)
    fit.add_argument("--estimator", choices=sorted(ESTIMATORS), default="dcd",
                     help="dcd: Diffusion Contrastive Divergence (default); cd: Contrastive "
                          "Divergence")
    fit.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="an estimator parameter, e.g. max_iter=50 or "
                          "hidden_layer_sizes=(64,64); repeat for several")
    fit.add_argument("--out", required=True, metavar="MODEL",
                     help="where to write the fitted model: model.joblib (a pickle), or "
                          "model.pt (weights and JSON only, safe to share)")
    fit.add_argument("--nproc", type=_positive(int), default=1, metavar="N",
                     help="fit data-parallel in N processes, each taking a shard of every "
                          "minibatch of batch_size x N rows (Gloo on the CPU, NCCL with a "
                          "GPU per process); under torchrun leave it out (default 1)")
    _add_verbose(fit, "training and AIS (the model is saved with the verbose of --param, "
                      "default 0)")
    fit.set_defaults(func=_fit)


def _score_parser(sub, raw: type[argparse.HelpFormatter]) -> None:
    score = sub.add_parser(
        "score", formatter_class=raw, help="log-likelihood of DATA under a model",
        description="Print the mean normalised log-likelihood (nats per row) of DATA under "
                    "MODEL; with --out, also write one log-likelihood per row.",
        epilog="examples:\n  skdcd score m.joblib test.csv\n"
               "  skdcd score m.joblib test.csv --out loglik.csv\n"
               "  skdcd score m.joblib test.csv --out - | head")
    score.add_argument("model", metavar="MODEL", help="a model written by `skdcd fit`")
    score.add_argument("data", metavar="DATA", help=DATA_HELP)
    score.add_argument("--out", metavar="CSV",
                       help="write per-row log-likelihoods to this CSV file (header "
                            "log_likelihood); '-' prints them on stdout instead of the mean")
    _add_verbose(score, "AIS, if log Z is not saved with the model")
    score.set_defaults(func=_score)


def _sample_parser(sub, raw: type[argparse.HelpFormatter]) -> None:
    sample = sub.add_parser(
        "sample", formatter_class=raw, help="draw samples from a model",
        description="Draw samples from MODEL (annealed sequential Monte Carlo) and write them "
                    "as .npy or CSV.",
        epilog="example:\n  skdcd sample m.joblib -n 64 --random-state 0 --out samples.csv")
    sample.add_argument("model", metavar="MODEL", help="a model written by `skdcd fit`")
    sample.add_argument("-n", "--n-samples", type=_positive(int), default=64, metavar="N",
                        help="number of samples (default 64)")
    _add_array_out(sample)
    sample.add_argument("--random-state", type=int, default=None, metavar="SEED",
                        help="seed for reproducible samples (default: fresh randomness)")
    _add_verbose(sample, "sampling")
    sample.set_defaults(func=_sample)


def _denoise_parser(sub, raw: type[argparse.HelpFormatter]) -> None:
    denoise = sub.add_parser(
        "denoise", formatter_class=raw, help="denoise DATA under a model prior",
        description="Estimate clean rows from DATA = clean + NOISE_STD * N(0, I) under the "
                    "model as a prior, and write them as .npy or CSV.",
        epilog="example:\n  skdcd denoise m.joblib noisy.csv --noise-std 0.2 --out clean.csv")
    denoise.add_argument("model", metavar="MODEL", help="a model written by `skdcd fit`")
    denoise.add_argument("data", metavar="DATA", help="the noisy data: " + DATA_HELP)
    denoise.add_argument("--noise-std", type=_positive(float), required=True, metavar="STD",
                         help="standard deviation of the noise, in the units of DATA")
    denoise.add_argument("--method", choices=["auto", "posterior_mean", "map", "tweedie"],
                         default="auto",
                         help="posterior mean (MMSE), mode (MAP), Tweedie's formula "
                              "(time-conditional models), or auto (default): Tweedie where "
                              "it applies, else the posterior mean")
    _add_array_out(denoise)
    denoise.add_argument("--random-state", type=int, default=None, metavar="SEED",
                         help="seed of the MCMC chain of posterior_mean")
    _add_verbose(denoise, "long computations")
    denoise.set_defaults(func=_denoise)


def _plot_parser(sub, raw: type[argparse.HelpFormatter]) -> None:
    plot = sub.add_parser(
        "plot", formatter_class=raw, help="plot a model (needs matplotlib)",
        description="Plot MODEL (needs matplotlib: pip install skdcd[plot]). --kind auto "
                    "chooses a grid of samples for image models, the energy landscape with "
                    "data and samples for 2-D models, else pairwise projections of samples "
                    "(and data) on the first features.",
        epilog="examples:\n  skdcd plot m.joblib --data data.csv --out m.png\n"
               "  skdcd plot m.joblib --kind loss --out loss.png\n"
               "  skdcd plot m.joblib --kind grid --image-shape 8,8 --out samples.png")
    plot.add_argument("model", metavar="MODEL", help="a model written by `skdcd fit`")
    plot.add_argument("--data", metavar="DATA", help="data to overlay: " + DATA_HELP)
    plot.add_argument("--out", required=True, metavar="PNG",
                      help="output figure (.png, .pdf or .svg)")
    plot.add_argument("--kind", choices=["auto", "landscape", "grid", "pairwise", "loss"],
                      default="auto",
                      help="what to draw (default auto; loss: the training loss per epoch)")
    plot.add_argument("-n", "--n-samples", type=_positive(int), default=None, metavar="N",
                      help="model samples to draw (default 64 for grids, else 1000)")
    plot.add_argument("--image-shape", type=_image_shape, default=None, metavar="SHAPE",
                      help="H,W or C,H,W: show rows as images (default: the model's "
                           "image_shape, if any)")
    plot.add_argument("--max-features", type=_positive(int), default=4, metavar="K",
                      help="pairwise projections of the first K features (default 4)")
    plot.add_argument("--random-state", type=int, default=0, metavar="SEED",
                      help="seed of the samples (default 0)")
    plot.add_argument("--dpi", type=_positive(int), default=100, help="resolution (100)")
    _add_verbose(plot, "sampling")
    plot.set_defaults(func=_plot)


def _demo_parser(sub, raw: type[argparse.HelpFormatter]) -> None:
    from skdcd.datasets import TOY_NAMES

    demo = sub.add_parser(
        "demo", formatter_class=raw, help="fit DCD on a 2-D toy and compare with the true NLL",
        description="Fit DCDEnergyEstimator on a 2-D toy density with a known log-density, "
                    "print the test NLL of the model and of the truth, and plot the fit.",
        epilog="example:\n  skdcd demo --dataset two_moons --plot demo.png")
    demo.add_argument("--dataset", choices=TOY_NAMES, default="eight_gaussians",
                      help="the toy density (default eight_gaussians)")
    demo.add_argument("--n-samples", type=_positive(int), default=10000, metavar="N",
                      help="training rows (default 10000)")
    demo.add_argument("--n-test", type=_positive(int), default=5000, metavar="N",
                      help="held-out rows (default 5000)")
    demo.add_argument("--max-iter", type=_positive(int), default=None, metavar="N",
                      help="epochs (default: auto)")
    demo.add_argument("--plot", default="skdcd_demo.png", metavar="PNG",
                      help="path of the figure (default skdcd_demo.png)")
    demo.add_argument("--no-plot", dest="plot", action="store_const", const=None,
                      help="do not plot")
    _add_verbose(demo, "training and sampling")
    demo.add_argument("--quick", action="store_true",
                      help="small network and cheap evaluation, for a smoke test")
    demo.set_defaults(func=_demo)


def _one_line_warning(prefix: str) -> Callable[..., None]:
    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"{prefix}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skdcd`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 1 on an error, 2 on bad usage, 130 when interrupted.

    Examples
    --------
    Fit a small model to a data file, then sample from it (the commands' messages on
    stdout are discarded here):

    >>> import contextlib, io, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skdcd.datasets import make_toy
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     data, model, out = (str(Path(tmp) / f) for f in ("X.npy", "m.joblib", "S.npy"))
    ...     np.save(data, make_toy("two_moons", 200, random_state=0))
    ...     params = ["max_iter=2", "hidden_layer_sizes=(16,)", "quadrature_n_grid=64",
    ...               "sample_steps=16", "random_state=0"]
    ...     with contextlib.redirect_stdout(io.StringIO()):
    ...         fit_status = main(["fit", data, "--estimator", "cd", "--out", model,
    ...                            "--verbose", "0", *(f"--param={p}" for p in params)])
    ...         sample_status = main(["sample", model, "-n", "4", "--random-state", "0",
    ...                               "--out", out, "--verbose", "0"])
    ...     samples = np.load(out)
    >>> fit_status, sample_status, samples.shape
    (0, 0, (4, 2))
    """
    args = build_parser().parse_args(argv)
    prefix = f"skdcd {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(prefix)
        try:
            return args.func(args)
        except CLIError as exc:
            message, code = str(exc), exc.code
        except KeyboardInterrupt:
            message, code = "interrupted", 130
        except (ValueError, TypeError, OSError, ImportError, RuntimeError, MemoryError) as exc:
            message, code = str(exc) or type(exc).__name__, 1
    print(f"{prefix}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
