"""The ``skdcd`` command line (``skdcd demo``; also ``python -m skdcd demo``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from skdcd import DCDEnergyEstimator
    from skdcd.datasets import load_toy

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


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``skdcd`` command."""
    from skdcd.datasets import TOY_NAMES

    parser = argparse.ArgumentParser(prog="skdcd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit DCD on a 2-D toy and compare with the true NLL")
    demo.add_argument("--dataset", choices=TOY_NAMES, default="eight_gaussians")
    demo.add_argument("--n-samples", type=int, default=10000, help="training rows")
    demo.add_argument("--n-test", type=int, default=5000, help="held-out rows")
    demo.add_argument("--max-iter", type=int, default=None, help="epochs (default: auto)")
    demo.add_argument("--plot", default="skdcd_demo.png", help="PNG path of the figure")
    demo.add_argument("--no-plot", dest="plot", action="store_const", const=None)
    demo.add_argument("--verbose", type=int, default=1)
    demo.add_argument("--quick", action="store_true",
                      help="small network and cheap evaluation, for a smoke test")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skdcd`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
