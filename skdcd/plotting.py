"""Optional matplotlib helpers (install the ``plot`` extra: ``pip install skdcd[plot]``).

* :func:`plot_landscape_2d` — the fitted density and log-density of a 2-D model, with data
  and samples overlaid.
* :func:`plot_sample_grid` — rows of ``(n_samples, n_pixels)`` tiled as images.
* :func:`plot_pairwise` — pairwise projections of samples (and data) on the first features.
* :func:`plot_loss_curve` — the training loss per epoch.

Every function returns a :class:`matplotlib.figure.Figure` (built without ``pyplot``, so no
global state or backend is touched) and writes it to ``path`` when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from skdcd._io import write_atomic

MATPLOTLIB_MISSING = ("Plotting needs matplotlib, which is not installed; install it with "
                      "`pip install matplotlib` or `pip install skdcd[plot]`.")


def _new_figure(**kwargs: Any) -> Any:
    """A fresh :class:`matplotlib.figure.Figure`, or an ImportError naming matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(MATPLOTLIB_MISSING) from exc
    return Figure(**kwargs)


def _save(fig: Any, path: str | None, dpi: int = 100) -> Any:
    if path is not None:  # atomically: a failure keeps any earlier file whole
        path = Path(path)
        if not path.suffix:  # as matplotlib does: its default format's suffix
            import matplotlib

            path = path.with_name(f"{path.name}.{matplotlib.rcParams['savefig.format']}")
        fmt = path.suffix.lower().lstrip(".")
        write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return fig


def _as_2d(X: ArrayLike, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}.")
    return X


def plot_landscape_2d(estimator: Any, X: ArrayLike | None = None,
                      samples: ArrayLike | None = None, *, path: str | None = None,
                      n_grid: int = 200) -> Any:
    """Fitted density of a 2-D estimator, and its log-density with data and samples on top.

    Left: the model density ``q(x) = exp(-E(x)) / Z``. Right: the log-density landscape
    ``log q(x)`` (clipped 12 nats below its maximum) with ``X`` and ``samples`` overlaid.

    Parameters
    ----------
    estimator : fitted DCDEnergyEstimator or CDEnergyEstimator
        A model with two features.
    X : array-like of shape (n_samples, 2), optional
        Data to overlay.
    samples : array-like of shape (n, 2), optional
        Model samples to overlay.
    path : str, optional
        Write the figure here (format from the suffix, e.g. ``.png``).
    n_grid : int, default=200
        Resolution of the density image.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, with two axes.

    Examples
    --------
    >>> import numpy as np
    >>> from skdcd import DCDEnergyEstimator
    >>> X = np.random.RandomState(0).randn(100, 2)
    >>> est = DCDEnergyEstimator(max_iter=1, hidden_layer_sizes=(8,), quadrature_n_grid=32,
    ...                          random_state=0).fit(X)
    >>> fig = plot_landscape_2d(est, X, n_grid=40)
    >>> len(fig.axes)
    3
    """
    if getattr(estimator, "n_features_in_", None) != 2:
        raise ValueError("plot_landscape_2d needs a fitted estimator with 2 features, got "
                         f"{getattr(estimator, 'n_features_in_', 'an unfitted one')}.")
    fig = _new_figure(figsize=(10.0, 4.4), layout="constrained")
    points = [_as_2d(a, name) for a, name in ((X, "X"), (samples, "samples")) if a is not None]
    if points:
        stacked = np.concatenate(points)
        low, high = np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
    else:  # the range of the training data
        low = estimator._z_low * estimator.scale_ + estimator.mean_
        high = estimator._z_high * estimator.scale_ + estimator.mean_
    margin = 0.15 * (high - low) + 1e-9
    low, high = low - margin, high + margin
    gx, gy = np.meshgrid(np.linspace(low[0], high[0], n_grid),
                         np.linspace(low[1], high[1], n_grid))  # (n_grid, n_grid) each
    log_q = estimator.score_samples(np.c_[gx.ravel(), gy.ravel()]).reshape(gx.shape)
    ax_density, ax_landscape = fig.subplots(1, 2, sharex=True, sharey=True)
    mesh = ax_density.pcolormesh(gx, gy, np.exp(log_q), shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax_density, shrink=0.8)
    ax_density.set_title("model density q(x)")
    top = float(np.nanmax(log_q))
    ax_landscape.contourf(gx, gy, np.clip(log_q, top - 12.0, top), levels=20, cmap="magma")
    ax_landscape.set_title("log q(x) with data and samples")
    if X is not None:
        ax_landscape.scatter(points[0][:, 0], points[0][:, 1], s=3, alpha=0.5,
                             color="tab:cyan", label="data")
    if samples is not None:
        ax_landscape.scatter(points[-1][:, 0], points[-1][:, 1], s=3, alpha=0.5,
                             color="white", label="samples")
    if points:
        ax_landscape.legend(loc="upper right", markerscale=4, fontsize="small")
    for ax in (ax_density, ax_landscape):
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_aspect("equal")
    return _save(fig, path)


def _tile(X: np.ndarray, image_shape: tuple[int, ...], n_cols: int) -> np.ndarray:
    """Rows of ``X`` as a mosaic of shape ``(rows·(H+1)-1, n_cols·(W+1)-1, C)`` in [0, 1]."""
    if len(image_shape) == 2:
        images = X.reshape(-1, 1, *image_shape)  # (n, 1, H, W)
    else:
        images = X.reshape(-1, *image_shape)  # (n, C, H, W)
    images = images.transpose(0, 2, 3, 1)  # (n, H, W, C)
    finite = images[np.isfinite(images)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    images = np.clip((images - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    images = np.nan_to_num(images)
    n, h, w, c = images.shape
    n_rows = math.ceil(n / n_cols)
    mosaic = np.ones((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1, c))  # white separators
    for i in range(n):
        r, col = divmod(i, n_cols)
        mosaic[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = images[i]
    return mosaic


def plot_sample_grid(X: ArrayLike, image_shape: Sequence[int], *, n_cols: int | None = None,
                     ax: Any = None, title: str | None = None, path: str | None = None) -> Any:
    """Tile the rows of ``X`` as images on one grid.

    Pixel values are scaled to [0, 1] by the global minimum and maximum of ``X``, so
    intensities are comparable across tiles.

    Parameters
    ----------
    X : array-like of shape (n_images, n_pixels)
        One flattened image per row, ``n_pixels = prod(image_shape)``.
    image_shape : tuple of int
        ``(H, W)`` for grey images or ``(C, H, W)`` (channels first) with ``C`` 1 or 3.
    n_cols : int, optional
        Tiles per row (default: about the square root of ``n_images``).
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    title : str, optional
        Title of the axes.
    path : str, optional
        Write the figure here.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the grid.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.RandomState(0).rand(6, 3 * 8 * 8)
    >>> fig = plot_sample_grid(X, image_shape=(3, 8, 8), n_cols=3)
    >>> fig.axes[0].images[0].get_array().shape
    (17, 26, 3)
    """
    X = _as_2d(X, "X")
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) not in (2, 3) or (len(image_shape) == 3 and image_shape[0] not in (1, 3)):
        raise ValueError(f"image_shape must be (H, W) or (C, H, W) with C in (1, 3), got "
                         f"{image_shape}.")
    if X.shape[1] != math.prod(image_shape):
        raise ValueError(f"X has {X.shape[1]} columns but image_shape {image_shape} needs "
                         f"{math.prod(image_shape)}.")
    if len(X) == 0:
        raise ValueError("X has no rows to show.")
    n_cols = min(len(X), n_cols or math.ceil(math.sqrt(len(X))))
    mosaic = _tile(X, image_shape, n_cols)
    if ax is None:
        height, width = mosaic.shape[:2]
        scale = 6.0 / max(height, width)
        fig = _new_figure(figsize=(max(2.0, width * scale), max(2.0, height * scale)))
        ax = fig.subplots()
    fig = ax.get_figure()
    if mosaic.shape[2] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return _save(fig, path)


def plot_pairwise(samples: ArrayLike, X: ArrayLike | None = None, *, max_features: int = 4,
                  feature_names: Sequence[str] | None = None, path: str | None = None) -> Any:
    """Pairwise scatter plots (and marginal histograms) of the first features.

    Parameters
    ----------
    samples : array-like of shape (n, n_features)
        Model samples.
    X : array-like of shape (n_samples, n_features), optional
        Data, drawn under the samples.
    max_features : int, default=4
        Show at most this many leading features.
    feature_names : sequence of str, optional
        Axis labels (default ``x0, x1, ...``).
    path : str, optional
        Write the figure here.

    Returns
    -------
    matplotlib.figure.Figure
        A ``k × k`` grid of axes, ``k = min(max_features, n_features)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> fig = plot_pairwise(rng.randn(50, 5), rng.randn(50, 5), max_features=3)
    >>> len(fig.axes)
    9
    """
    samples = _as_2d(samples, "samples")
    arrays = [("data", _as_2d(X, "X"), "tab:blue")] if X is not None else []
    arrays.append(("samples", samples, "tab:orange"))
    if X is not None and arrays[0][1].shape[1] != samples.shape[1]:
        raise ValueError(f"X has {arrays[0][1].shape[1]} features but samples have "
                         f"{samples.shape[1]}.")
    k = min(int(max_features), samples.shape[1])
    if k < 1:
        raise ValueError(f"max_features must be positive, got {max_features}.")
    names = (list(feature_names) if feature_names is not None
             else [f"x{j}" for j in range(samples.shape[1])])
    fig = _new_figure(figsize=(2.4 * k + 0.6, 2.4 * k + 0.3))
    axes = np.atleast_2d(fig.subplots(k, k, squeeze=False))
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            bins = np.histogram_bin_edges(np.concatenate([A[:, j] for _, A, _ in arrays]), 40)
            for label, A, color in arrays:
                if i == j:
                    ax.hist(A[:, j], bins=bins, density=True, alpha=0.5, color=color,
                            label=label)
                else:
                    ax.scatter(A[:, j], A[:, i], s=2, alpha=0.4, color=color, label=label)
            if i == k - 1:
                ax.set_xlabel(names[j])
            if j == 0:
                ax.set_ylabel(names[i] if k > 1 else "density")
    axes[0, -1].legend(loc="upper right", fontsize="small", markerscale=4)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_curve(loss: Any, *, ax: Any = None, path: str | None = None) -> Any:
    """Training loss per epoch.

    Parameters
    ----------
    loss : fitted estimator or sequence of float
        An estimator with ``loss_curve_``, or the losses themselves.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of on a new figure.
    path : str, optional
        Write the figure here.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the curve.

    Examples
    --------
    >>> fig = plot_loss_curve([0.5, 0.2, 0.1, 0.05])
    >>> fig.axes[0].lines[0].get_ydata().tolist()
    [0.5, 0.2, 0.1, 0.05]
    """
    values = np.asarray(getattr(loss, "loss_curve_", loss), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("plot_loss_curve needs a non-empty 1-D loss history "
                         f"(estimator.loss_curve_), got shape {values.shape}.")
    if ax is None:
        ax = _new_figure(figsize=(5.0, 3.4)).subplots()
    fig = ax.get_figure()
    ax.plot(np.arange(1, values.size + 1), values, marker="o" if values.size < 30 else None,
            markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("loss curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
