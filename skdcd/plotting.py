"""Optional matplotlib helpers (install the ``plot`` extra: ``pip install skdcd[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised without matplotlib only
        raise ImportError(
            "Plotting needs matplotlib; install it with `pip install skdcd[plot]`."
        ) from exc
    return plt


def plot_landscape_2d(estimator, X: np.ndarray, samples: np.ndarray | None = None, *,
                      path: str | None = None, n_grid: int = 200) -> Any:
    """Data, model samples and the fitted log-density of a 2-D estimator, side by side.

    Parameters
    ----------
    estimator : fitted DCDEnergyEstimator or CDEnergyEstimator
        A model with two features.
    X : ndarray of shape (n_samples, 2)
        Data to show.
    samples : ndarray of shape (n, 2), optional
        Model samples to show.
    path : str, optional
        Write a PNG here.
    n_grid : int, default=200
        Resolution of the density image.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    X = np.asarray(X)
    low, high = X.min(axis=0), X.max(axis=0)
    margin = 0.15 * (high - low)
    low, high = low - margin, high + margin
    gx, gy = np.meshgrid(np.linspace(low[0], high[0], n_grid), np.linspace(low[1], high[1], n_grid))
    log_density = estimator.score_samples(np.c_[gx.ravel(), gy.ravel()]).reshape(gx.shape)
    panels = 3 if samples is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), sharex=True, sharey=True)
    axes[0].scatter(X[:, 0], X[:, 1], s=2, alpha=0.4)
    axes[0].set_title("data")
    if samples is not None:
        axes[1].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="C1")
        axes[1].set_title("model samples")
    axes[-1].pcolormesh(gx, gy, np.exp(log_density), shading="auto", cmap="viridis")
    axes[-1].set_title("model density exp(-E) / Z")
    for ax in axes:
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_aspect("equal")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
