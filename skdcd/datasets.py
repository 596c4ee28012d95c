"""Two-dimensional toy densities with exact log densities.

Six classic 2-D benchmark distributions for density estimation. Unlike the usual
sample-only generators, each one also has a log density that is exact in closed form
or numerically exact (to about 1e-11). That lets tests, demos and benchmarks report
the true negative log-likelihood (NLL) of held-out samples next to a model's NLL.

=================== ============================================================
name                distribution
=================== ============================================================
``eight_gaussians`` 8 isotropic Gaussians (std 0.1) at angles ``2*pi*k/8`` on the
                    circle of radius 2, equal weights. Closed form.
``rings``           3 concentric rings of radii 1, 2 and 3 with equal weights (1/3
                    each, so the inner ring is the densest), blurred by isotropic
                    Gaussian noise of std 0.1. Closed form (Rice density).
``two_moons``       :func:`sklearn.datasets.make_moons` with ``noise=0.1`` in the
                    continuous limit: sklearn puts the angles on a deterministic
                    ``linspace``; here they are i.i.d. uniform on ``[0, pi]``, so the
                    samples are i.i.d. draws from the density. Gauss-Legendre
                    quadrature over the angle (2048 nodes per moon).
``checkerboard``    Uniform on the 8 unit squares ``[i, i+1) x [j, j+1)``,
                    ``i, j in {-2, -1, 0, 1}``, with ``i + j`` even. Closed form;
                    ``log_prob`` is ``-inf`` outside the support.
``swiss_roll``      The ``(x, z)`` coordinates of
                    :func:`sklearn.datasets.make_swiss_roll` with ``noise=0.5``,
                    divided by 5: the curve ``t (cos t, sin t) / 5``,
                    ``t = 1.5 pi (1 + 2u)``, ``u ~ U(0, 1)``, plus isotropic Gaussian
                    noise of std 0.1. Samples come from sklearn itself.
                    Gauss-Legendre quadrature over ``u`` (4096 nodes).
``pinwheel``        The pinwheel of Johnson et al. (2016): 5 arms,
                    ``r ~ N(1, 0.3^2)``, ``t ~ N(0, 0.05^2)``, the point ``(r, t)``
                    rotated counter-clockwise by ``2 pi k / 5 + 0.25 exp(r)`` (their
                    code rotates clockwise, which mirrors the picture), no extra
                    scaling. ``r`` is truncated to ``|r - 1| <= 9 * 0.3`` (this
                    removes a mass of 2e-19 and bounds the support). The log density
                    is the change-of-variables formula summed over every preimage;
                    preimages are found by bracketing, bisection and Newton steps.
=================== ============================================================

Exactness: the closed forms are exact to rounding. The quadrature rules (composite
Gauss-Legendre, 16 nodes per panel) change the log density by less than 1e-11 wherever
it is above -500. For ``pinwheel``, the only approximation is that two preimages closer
together than the bracketing grid spacing may be missed. That can only happen next to
a fold of the map, where the density is below about 1e-12.

Examples
--------
>>> from skdcd.datasets import load_toy, make_toy
>>> X = make_toy("eight_gaussians", 5, random_state=0)
>>> X.shape
(5, 2)
>>> toy = load_toy("eight_gaussians")
>>> bool(abs(toy.nll(toy.sample(20000, random_state=0)) - 0.31) < 0.05)
True
"""

from __future__ import annotations

import math
import numbers
import os
from numbers import Integral, Real

import numpy as np
from scipy.special import i0e, logsumexp
from sklearn.datasets import make_swiss_roll
from sklearn.utils import check_array, check_random_state

__all__ = ["IMAGE_EXTENSIONS", "TOY_NAMES", "ImageFolder", "ToyDensity", "dequantize",
           "load_digits_images", "load_image_folder", "load_toy", "make_toy"]

TOY_NAMES: tuple[str, ...] = (
    "eight_gaussians",
    "rings",
    "two_moons",
    "checkerboard",
    "swiss_roll",
    "pinwheel",
)

# Boxes (xmin, xmax, ymin, ymax) that hold all but < 1e-6 of each density's mass.
_BOUNDS = {
    "eight_gaussians": (-3.0, 3.0, -3.0, 3.0),
    "rings": (-4.0, 4.0, -4.0, 4.0),
    "two_moons": (-1.5, 2.5, -1.0, 1.5),
    "checkerboard": (-2.0, 2.0, -2.0, 2.0),
    "swiss_roll": (-2.5, 3.0, -3.0, 3.5),
    "pinwheel": (-2.5, 2.5, -2.5, 2.5),
}

_LOG_2PI = float(np.log(2.0 * np.pi))
_NOISE = 0.1  # Gaussian noise std of eight_gaussians, rings, two_moons and swiss_roll

_RING_RADII = np.array([1.0, 2.0, 3.0])

_MOONS_NODES = 2048  # Gauss-Legendre nodes per moon
_SWISS_NODES = 4096  # Gauss-Legendre nodes along the roll
_SWISS_SCALE = 5.0  # make_swiss_roll coordinates are divided by this

_PW_ARMS = 5
_PW_RADIAL_STD = 0.3
_PW_TANGENTIAL_STD = 0.05
_PW_RATE = 0.25
_PW_R_MIN, _PW_R_MAX = 1.0 - 9 * _PW_RADIAL_STD, 1.0 + 9 * _PW_RADIAL_STD
_PW_GRID = np.linspace(_PW_R_MIN, _PW_R_MAX, 401)  # brackets for the roots in r
_PW_BISECTIONS = 12  # bracket width 0.0135 -> 3e-6, then Newton steps
_PW_NEWTON = 3  # -> |error in r| < 1e-13


# ----------------------------------------------------------------------------- helpers
def _check_X(X) -> np.ndarray:
    X = check_array(X, dtype=np.float64, input_name="X")
    if X.shape[1] != 2:
        raise ValueError(f"X must have shape (n_samples, 2); got {X.shape[1]} columns.")
    return X


def _gauss_legendre(n_nodes: int, a: float, b: float, order: int = 16):
    """Nodes and weights of composite Gauss-Legendre quadrature on ``[a, b]``."""
    n_panels = -(-n_nodes // order)
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(a, b, n_panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    mid = 0.5 * (edges[:-1] + edges[1:])[:, None]
    return (mid + half * x).ravel(), (half * w).ravel()


def _log_gaussian_mixture(X, centers, log_weights, std, chunk=128):
    """Exact ``log sum_j w_j N(x; c_j, std^2 I)`` for every row of ``X``."""
    inv_var = 1.0 / std**2
    bias = log_weights - 0.5 * inv_var * np.sum(centers**2, axis=1)
    p0, p1 = centers.T * inv_var
    out = np.empty(X.shape[0])
    for start in range(0, X.shape[0], chunk):  # outer products: faster than BLAS for k=2
        x = X[start : start + chunk]
        a = np.multiply.outer(x[:, 0], p0)
        a += np.multiply.outer(x[:, 1], p1)
        a += bias
        amax = a.max(axis=1, keepdims=True)
        a -= amax
        np.exp(a, out=a)
        out[start : start + chunk] = amax[:, 0] + np.log(a.sum(axis=1))
    return out - 0.5 * inv_var * np.sum(X**2, axis=1) - np.log(2.0 * np.pi * std**2)


def _moons_curve(t):
    """Centre lines of the two moons, parametrised exactly as in ``make_moons``."""
    outer = np.column_stack([np.cos(t), np.sin(t)])
    inner = np.column_stack([1.0 - np.cos(t), 1.0 - np.sin(t) - 0.5])
    return outer, inner


def _swiss_curve(u):
    """Centre line of the scaled swiss roll, parametrised as in ``make_swiss_roll``."""
    t = 1.5 * np.pi * (1.0 + 2.0 * u)
    return np.column_stack([t * np.cos(t), t * np.sin(t)]) / _SWISS_SCALE


def _pinwheel_angle(r, arm):
    return 2.0 * np.pi * arm / _PW_ARMS + _PW_RATE * np.exp(r)


# ----------------------------------------------------------------------------- samplers
def _sample_eight_gaussians(n, rng):
    k = rng.randint(8, size=n)
    angle = 2.0 * np.pi * k / 8
    centers = 2.0 * np.column_stack([np.cos(angle), np.sin(angle)])
    return centers + _NOISE * rng.standard_normal((n, 2))


def _sample_rings(n, rng):
    radius = _RING_RADII[rng.randint(len(_RING_RADII), size=n)]
    theta = rng.uniform(0.0, 2.0 * np.pi, size=n)
    centers = radius[:, None] * np.column_stack([np.cos(theta), np.sin(theta)])
    return centers + _NOISE * rng.standard_normal((n, 2))


def _sample_two_moons(n, rng):
    moon = rng.randint(2, size=n)
    outer, inner = _moons_curve(rng.uniform(0.0, np.pi, size=n))
    centers = np.where(moon[:, None] == 0, outer, inner)
    return centers + _NOISE * rng.standard_normal((n, 2))


def _sample_checkerboard(n, rng):
    cells = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0])
    return cells[rng.randint(len(cells), size=n)] + rng.uniform(size=(n, 2))


def _sample_swiss_roll(n, rng):
    X, _ = make_swiss_roll(n, noise=_NOISE * _SWISS_SCALE, random_state=rng)
    return X[:, [0, 2]] / _SWISS_SCALE


def _sample_pinwheel(n, rng):
    arm = rng.randint(_PW_ARMS, size=n)
    r = 1.0 + _PW_RADIAL_STD * rng.standard_normal(n)
    outside = (r < _PW_R_MIN) | (r > _PW_R_MAX)
    while outside.any():  # truncation; in practice never triggers (probability 2e-19)
        r[outside] = 1.0 + _PW_RADIAL_STD * rng.standard_normal(outside.sum())
        outside = (r < _PW_R_MIN) | (r > _PW_R_MAX)
    t = _PW_TANGENTIAL_STD * rng.standard_normal(n)
    phi = _pinwheel_angle(r, arm)
    cos, sin = np.cos(phi), np.sin(phi)
    return np.column_stack([cos * r - sin * t, sin * r + cos * t])


# ----------------------------------------------------------------------------- log densities
def _log_prob_eight_gaussians(X):
    angle = 2.0 * np.pi * np.arange(8) / 8
    centers = 2.0 * np.column_stack([np.cos(angle), np.sin(angle)])
    return _log_gaussian_mixture(X, centers, np.full(8, -np.log(8.0)), _NOISE)


def _log_prob_rings(X):
    # Rice density: a ring of radius R blurred by N(0, s^2 I) has
    # p(x) = exp(-(|x|^2 + R^2) / (2 s^2)) I0(|x| R / s^2) / (2 pi s^2).
    rho = np.hypot(X[:, 0], X[:, 1])[:, None]
    radius, var = _RING_RADII[None, :], _NOISE**2
    log_ring = (
        -((rho - radius) ** 2) / (2.0 * var)
        + np.log(i0e(rho * radius / var))
        - np.log(2.0 * np.pi * var)
    )
    return logsumexp(log_ring, axis=1) - np.log(len(_RING_RADII))


def _log_prob_two_moons(X, n_nodes=_MOONS_NODES):
    t, w = _gauss_legendre(n_nodes, 0.0, np.pi)
    centers = np.vstack(_moons_curve(t))
    log_w = np.log(np.concatenate([w, w]) / (2.0 * np.pi))  # moon 1/2, angle density 1/pi
    return _log_gaussian_mixture(X, centers, log_w, _NOISE)


def _log_prob_checkerboard(X):
    inside = np.all((X >= -2.0) & (X < 2.0), axis=1)
    even = np.floor(X).sum(axis=1) % 2 == 0
    return np.where(inside & even, -np.log(8.0), -np.inf)


def _log_prob_swiss_roll(X, n_nodes=_SWISS_NODES):
    u, w = _gauss_legendre(n_nodes, 0.0, 1.0)
    return _log_gaussian_mixture(X, _swiss_curve(u), np.log(w), _NOISE)


def _log_prob_pinwheel(X, chunk=128):
    # For arm k, y = R(phi_k(r)) (r, t), so (r, t) = R(-phi_k(r)) y, and r solves
    # h(r) = r - (y0 cos phi_k(r) + y1 sin phi_k(r)) = 0. Every root r in the truncated
    # range is a preimage, with t = y1 cos phi - y0 sin phi and |det J| = |1 - phi'(r) t|.
    n = X.shape[0]
    arms = np.arange(_PW_ARMS)
    phi = _pinwheel_angle(_PW_GRID[None, :], arms[:, None])  # (arms, grid)
    cos, sin = np.cos(phi).ravel(), np.sin(phi).ravel()
    grid = np.tile(_PW_GRID, _PW_ARMS)
    n_grid = len(_PW_GRID)
    terms, rows = [], []
    for start in range(0, n, chunk):
        Y = X[start : start + chunk]
        proj = np.multiply.outer(Y[:, 0], cos)
        proj += np.multiply.outer(Y[:, 1], sin)
        neg = (proj > grid).reshape(len(Y), _PW_ARMS, n_grid)  # h < 0 on the grid
        row, arm, j = np.nonzero(neg[:, :, :-1] != neg[:, :, 1:])
        lo, hi, lo_neg = _PW_GRID[j], _PW_GRID[j + 1], neg[row, arm, j]
        y0, y1 = Y[row, 0], Y[row, 1]
        for _ in range(_PW_BISECTIONS):
            mid = 0.5 * (lo + hi)
            p = _pinwheel_angle(mid, arm)
            right = ((mid - y0 * np.cos(p) - y1 * np.sin(p)) < 0) == lo_neg
            lo, hi = np.where(right, mid, lo), np.where(right, hi, mid)
        r = 0.5 * (lo + hi)
        for _ in range(_PW_NEWTON):  # h'(r) = 1 - phi'(r) t(r); stay inside the bracket
            p = _pinwheel_angle(r, arm)
            cos_p, sin_p = np.cos(p), np.sin(p)
            t = y1 * cos_p - y0 * sin_p
            with np.errstate(divide="ignore", invalid="ignore"):
                step = (r - y0 * cos_p - y1 * sin_p) / (1.0 - _PW_RATE * np.exp(r) * t)
            r_new = r - step
            r = np.where((r_new >= lo) & (r_new <= hi), r_new, r)
        p = _pinwheel_angle(r, arm)
        t = y1 * np.cos(p) - y0 * np.sin(p)
        det = np.abs(1.0 - _PW_RATE * np.exp(r) * t)
        terms.append(
            -0.5 * ((r - 1.0) / _PW_RADIAL_STD) ** 2
            - 0.5 * (t / _PW_TANGENTIAL_STD) ** 2
            - np.log(np.maximum(det, 1e-300))
        )
        rows.append(row + start)
    out = np.full(n, -np.inf)
    np.logaddexp.at(out, np.concatenate(rows), np.concatenate(terms))
    return out - _LOG_2PI - np.log(_PW_RADIAL_STD * _PW_TANGENTIAL_STD * _PW_ARMS)


_SAMPLERS = {name: globals()[f"_sample_{name}"] for name in TOY_NAMES}
_LOG_PROBS = {name: globals()[f"_log_prob_{name}"] for name in TOY_NAMES}


# ----------------------------------------------------------------------------- public API
class ToyDensity:
    """A 2-D toy distribution that can be sampled and whose log density is known.

    Instances are immutable; get one with :func:`load_toy`. The module docstring
    defines each distribution.

    Parameters
    ----------
    name : str
        One of :data:`TOY_NAMES`.

    Attributes
    ----------
    name : str
        Name of the distribution.
    bounds : tuple of float
        ``(xmin, xmax, ymin, ymax)``, a box that holds all but < 1e-6 of the
        probability mass. Useful for plotting and for integrating on a grid.

    Examples
    --------
    >>> from skdcd.datasets import ToyDensity
    >>> toy = ToyDensity("checkerboard")
    >>> toy.log_prob([[0.5, 0.5], [0.5, -0.5]])
    array([-2.07944154,        -inf])
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        if name not in TOY_NAMES:
            raise ValueError(f"Unknown toy density {name!r}; valid names are {TOY_NAMES}.")
        object.__setattr__(self, "_name", name)

    def __setattr__(self, key, value):
        raise AttributeError("ToyDensity is immutable.")

    def __reduce__(self):
        return (ToyDensity, (self._name,))

    def __repr__(self) -> str:
        return f"ToyDensity({self._name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ToyDensity) and other._name == self._name

    def __hash__(self) -> int:
        return hash((ToyDensity, self._name))

    @property
    def name(self) -> str:
        """Name of the distribution, one of :data:`TOY_NAMES`."""
        return self._name

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Box ``(xmin, xmax, ymin, ymax)`` that holds all but < 1e-6 of the mass."""
        return _BOUNDS[self._name]

    def sample(self, n_samples: int = 1000, random_state=None) -> np.ndarray:
        """Draw i.i.d. samples.

        Parameters
        ----------
        n_samples : int, default=1000
            Number of samples, a positive integer.
        random_state : int, RandomState instance or None, default=None
            Seed or generator, as in scikit-learn. Pass an int for reproducible output.

        Returns
        -------
        X : ndarray of shape (n_samples, 2), dtype float64
            The samples.

        Examples
        --------
        >>> from skdcd.datasets import load_toy
        >>> load_toy("rings").sample(3, random_state=0).shape
        (3, 2)
        """
        if (
            not isinstance(n_samples, numbers.Integral)
            or isinstance(n_samples, bool)
            or n_samples < 1
        ):
            raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
        rng = check_random_state(random_state)
        X = _SAMPLERS[self._name](int(n_samples), rng)
        return np.ascontiguousarray(X, dtype=np.float64)

    def log_prob(self, X) -> np.ndarray:
        """Exact log density at each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, 2)
            Finite points in the plane.

        Returns
        -------
        log_prob : ndarray of shape (n_samples,), dtype float64
            ``log p(x)`` for each point. It is ``-inf`` outside a bounded support
            (``checkerboard``, and far away for the truncated ``pinwheel``).

        Examples
        --------
        >>> import numpy as np
        >>> from skdcd.datasets import load_toy
        >>> p = np.exp(load_toy("eight_gaussians").log_prob([[2.0, 0.0]]))
        >>> bool(np.isclose(p[0], 1 / (8 * 2 * np.pi * 0.1**2)))
        True
        """
        return _LOG_PROBS[self._name](_check_X(X))

    def nll(self, X) -> float:
        """Mean negative log-likelihood of ``X`` under the true density.

        Parameters
        ----------
        X : array-like of shape (n_samples, 2)
            Finite points in the plane.

        Returns
        -------
        nll : float
            ``-mean(log_prob(X))`` in nats. For large samples from the density
            itself, this is close to the entropy.

        Examples
        --------
        >>> from skdcd.datasets import load_toy
        >>> load_toy("checkerboard").nll([[0.5, 0.5]])
        2.0794415416798357
        """
        return float(-np.mean(self.log_prob(X)))


def load_toy(name: str) -> ToyDensity:
    """Get a toy density by name.

    Parameters
    ----------
    name : str
        One of :data:`TOY_NAMES`: ``"eight_gaussians"``, ``"rings"``, ``"two_moons"``,
        ``"checkerboard"``, ``"swiss_roll"`` or ``"pinwheel"``.

    Returns
    -------
    toy : ToyDensity
        The distribution.

    Raises
    ------
    ValueError
        If ``name`` is not a known toy.

    Examples
    --------
    >>> from skdcd.datasets import load_toy
    >>> load_toy("two_moons")
    ToyDensity('two_moons')
    """
    return ToyDensity(name)


def make_toy(name: str, n_samples: int = 1000, *, random_state=None) -> np.ndarray:
    """Sample a toy dataset; shorthand for ``load_toy(name).sample(...)``.

    Parameters
    ----------
    name : str
        One of :data:`TOY_NAMES`.
    n_samples : int, default=1000
        Number of samples, a positive integer.
    random_state : int, RandomState instance or None, default=None
        Seed or generator, as in scikit-learn.

    Returns
    -------
    X : ndarray of shape (n_samples, 2), dtype float64
        The samples.

    Examples
    --------
    >>> from skdcd.datasets import make_toy
    >>> X = make_toy("eight_gaussians", 5, random_state=0)
    >>> X.shape
    (5, 2)
    """
    return load_toy(name).sample(n_samples, random_state=random_state)


def dequantize(X, step: float, *, random_state=None) -> np.ndarray:
    """Spread discrete values uniformly over their bins: ``X + step · (U - ½)``, ``U ~ U[0, 1)``.

    A continuous density of data that take a few discrete values (the digits' 17 grey
    levels) can pile all its mass on those values, and its log-likelihood is then unbounded.
    Of dequantised copies it is a proper density; ``score(dequantize(X, step)) + d · log
    step`` is then a lower bound on the log-probability of the discrete rows (Theis et al.,
    2016). Fit and score on dequantised data, or at least score on them.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Rows whose values lie on a grid of spacing ``step``.
    step : float
        The grid's spacing (``1/16`` for the digits scaled to ``[0, 1]``).
    random_state : int, RandomState instance or None, default=None
        Seed or generator of the uniform noise.

    Returns
    -------
    X_dequantized : ndarray of shape (n_samples, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> from skdcd.datasets import dequantize
    >>> X = np.array([[0.0, 1.0], [0.5, 0.25]])
    >>> Y = dequantize(X, 0.25, random_state=0)
    >>> bool(np.all(np.abs(Y - X) <= 0.125))
    True
    """
    X = check_array(X, dtype=np.float64, input_name="X")
    if not (isinstance(step, Real) and np.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive finite number, got {step!r}.")
    rng = check_random_state(random_state)
    return X + step * (rng.random_sample(X.shape) - 0.5)


def load_digits_images() -> tuple[np.ndarray, tuple[int, int, int]]:
    """scikit-learn's 8×8 handwritten digits as flat images with pixels in [0, 1].

    The 1,797 images of :func:`sklearn.datasets.load_digits`, divided by 16 (their 17 grey
    levels become 0, 1/16, ..., 1), ready for ``image_shape=(1, 8, 8)``.

    Returns
    -------
    X : ndarray of shape (1797, 64), dtype float64
        One image per row, row-major.
    image_shape : tuple of int
        ``(1, 8, 8)``.

    Examples
    --------
    >>> from skdcd.datasets import load_digits_images
    >>> X, image_shape = load_digits_images()
    >>> X.shape, image_shape, float(X.min()), float(X.max())
    ((1797, 64), (1, 8, 8), 0.0, 1.0)
    """
    from sklearn.datasets import load_digits

    return load_digits().data / 16.0, (1, 8, 8)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(
    path: str | os.PathLike, image_size: int | tuple[int, int] = 32, *, grayscale: bool = False,
    max_images: int | None = None,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Load a folder of images (e.g. CelebA or CIFAR exported to files) as flat rows.

    Files with an image extension are read recursively in sorted path order, centre-cropped
    to the output's aspect ratio, resized with antialiasing to ``image_size`` and scaled to
    [0, 1]. Needs Pillow (``pip install "skdcd[images]"``). For a folder that does not fit
    in memory, :class:`ImageFolder` reads the same rows on demand, and the estimators fit
    it without loading it.

    Parameters
    ----------
    path : str or path-like
        A directory.
    image_size : int or tuple (H, W), default=32
        Output size.
    grayscale : bool, default=False
        Convert to one grey channel instead of RGB.
    max_images : int or None, default=None
        Read at most this many images (the first in sorted order).

    Returns
    -------
    X : ndarray of shape (n_images, C·H·W), dtype float32
        One image per row, channels first (``X.reshape(-1, C, H, W)``).
    image_shape : tuple of int
        ``(C, H, W)``, to pass as the estimators' ``image_shape``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> pixels = np.random.RandomState(0).randint(0, 256, (40, 60, 3), dtype=np.uint8)
    >>> Image.fromarray(pixels).save(os.path.join(folder, "a.png"))
    >>> X, image_shape = load_image_folder(folder, image_size=16)
    >>> X.shape, image_shape, X.dtype
    ((1, 768), (3, 16, 16), dtype('float32'))
    """
    folder = ImageFolder(path, image_size, grayscale=grayscale, max_images=max_images)
    return folder[:], folder.image_shape


class ImageFolder:
    """The images of a folder as an array of flat rows that are read on demand.

    The rows of :func:`load_image_folder`, decoded only when indexed, so that a folder
    larger than memory can be fitted: the estimators read it a chunk at a time
    (:ref:`scaling`). Needs Pillow (``pip install "skdcd[images]"``).

    Parameters
    ----------
    path : str or path-like
        A directory, searched recursively for files with an image extension.
    image_size : int or tuple (H, W), default=32
        Output size.
    grayscale : bool, default=False
        Convert to one grey channel instead of RGB.
    max_images : int or None, default=None
        Use at most this many images (the first in sorted path order).

    Attributes
    ----------
    files : list of str
        The image files, one per row, in sorted path order.
    image_shape : tuple of int
        ``(C, H, W)``, to pass as the estimators' ``image_shape``.
    shape : tuple of int
        ``(n_images, C·H·W)``.
    dtype : numpy.dtype
        ``float32``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> for name in "abc":
    ...     pixels = np.random.RandomState(0).randint(0, 256, (20, 20), dtype=np.uint8)
    ...     Image.fromarray(pixels).save(os.path.join(folder, name + ".png"))
    >>> images = ImageFolder(folder, image_size=8, grayscale=True)
    >>> images.shape, images.image_shape, images[[0, 2]].shape
    ((3, 64), (1, 8, 8), (2, 64))
    """

    dtype = np.dtype(np.float32)

    def __init__(self, path: str | os.PathLike, image_size: int | tuple[int, int] = 32, *,
                 grayscale: bool = False, max_images: int | None = None) -> None:
        try:
            from PIL import Image  # noqa: F401 - fail here, not at the first read
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Reading image folders needs Pillow: "
                              "pip install 'skdcd[images]'.") from exc
        if isinstance(image_size, Integral) and not isinstance(image_size, bool):
            size = (int(image_size), int(image_size))
        elif (isinstance(image_size, tuple) and len(image_size) == 2
              and all(isinstance(s, Integral) and not isinstance(s, bool) for s in image_size)):
            size = (int(image_size[0]), int(image_size[1]))
        else:
            raise ValueError(f"image_size must be an int or a tuple (H, W), got {image_size!r}.")
        if min(size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}.")
        if max_images is not None and (not isinstance(max_images, Integral)
                                       or isinstance(max_images, bool) or max_images < 1):
            raise ValueError(
                f"max_images must be None or a positive integer, got {max_images!r}.")
        root = os.fspath(path)
        if not os.path.isdir(root):
            raise ValueError(f"{root!r} is not a directory.")
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if max_images is not None:
            files = files[:max_images]
        if not files:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}.")
        self.files = files
        self.grayscale = grayscale
        self.size = size
        self.image_shape = (1 if grayscale else 3, *size)
        self.shape = (len(files), math.prod(self.image_shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ImageFolder({len(self)} images of shape {self.image_shape})"

    def __getitem__(self, rows) -> np.ndarray:
        """The rows ``rows`` (an int, a slice or integer indices), decoded now."""
        if isinstance(rows, tuple):  # X[rows, columns]
            return self[rows[0]][(slice(None), *rows[1:])]
        if isinstance(rows, Integral):
            return self._read(self.files[rows])
        picked = (self.files[rows] if isinstance(rows, slice)
                  else [self.files[i] for i in np.asarray(rows).reshape(-1)])
        out = np.empty((len(picked), self.shape[1]), dtype=np.float32)
        for i, file in enumerate(picked):
            out[i] = self._read(file)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        X = self[:]
        return X if dtype is None else X.astype(dtype)

    def _read(self, file: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        height, width = self.size
        try:
            with Image.open(file) as image:
                image = image.convert("L" if self.grayscale else "RGB")
                w, h = image.size  # the largest centred box of the output's aspect ratio
                crop_w = min(w, round(h * width / height))
                crop_h = min(h, round(w * height / width))
                left, top = (w - crop_w) // 2, (h - crop_h) // 2
                image = image.crop((left, top, left + crop_w, top + crop_h))
                image = image.resize((width, height), Image.Resampling.LANCZOS)
                pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) or (H, W, C)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"Cannot read {file!r} as an image: {exc}") from exc
        return (pixels[None] if self.grayscale else pixels.transpose(2, 0, 1)).reshape(-1)
