"""The Gaussian (mixture) envelope fitted to the training data (``envelope_components``).

The envelope's energy is added to the network's (:meth:`skdcd.networks.EnvelopedEnergy.
set_gaussian`), so that the network learns only what the mixture misses. The constants are
the ``"auto"`` rules; the user guide's "why these defaults" page says why.
"""

from __future__ import annotations

import math

import numpy as np

# directions of the Gaussian envelope , and rows that fit them
_ENVELOPE_DIRECTIONS, _ENVELOPE_ROWS = 128, 4096
# envelope_components="auto": a mixture of this many full-covariance Gaussians up to this
# many features (beyond, one probabilistic PCA: full covariances cost d² per component)
_MIXTURE_COMPONENTS, _MIXTURE_MAX_FEATURES = 10, 128
_MIXTURE_FLOOR = 0.3  # added to each component's variances, as a fraction of the data's mean


def n_components(envelope_components: int | str | None, n: int, d: int,
                 conditional: bool) -> int | None:
    """``envelope_components`` resolved for ``n`` rows of ``d`` features (None: isotropic).

    ``"auto"``: a mixture for a time-conditional energy, the isotropic envelope otherwise.

    Examples
    --------
    >>> n_components("auto", 1500, 64, conditional=True), n_components("auto", 1500, 64, False)
    (10, None)
    >>> n_components(3, 2, 5, conditional=False)  # never more components than rows
    2
    """
    if envelope_components is None or (envelope_components == "auto" and not conditional):
        return None
    if envelope_components != "auto":
        return min(envelope_components, n)
    if d > _MIXTURE_MAX_FEATURES:
        return 1
    # a component's full covariance needs rows; fewer rows, fewer components
    return int(min(_MIXTURE_COMPONENTS, max(1, min(n, _ENVELOPE_ROWS) // (2 * d))))


def gaussian_fit(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Probabilistic PCA of the rows of ``Z``: mean, directions, their variances, residual.

    The leading ``_ENVELOPE_DIRECTIONS`` principal directions of an evenly spaced subsample
    of at most ``_ENVELOPE_ROWS`` rows, and the mean variance of the rest. Variances are
    floored at 1 % of the mean variance: the envelope may be too wide, which the network
    corrects near the data, but never so narrow that directions the sample missed (constant
    features; all but ``n - 1`` directions when ``n ≤ d``) cost more than the data suggests.
    """
    Z = Z[:: max(1, math.ceil(len(Z) / _ENVELOPE_ROWS))]
    mean = Z.mean(axis=0)
    n, d = Z.shape
    _, s, vt = np.linalg.svd(Z - mean, full_matrices=False)
    var = s**2 / max(n - 1, 1)  # (min(n, d),) descending
    k = min(_ENVELOPE_DIRECTIONS, len(var))
    total = max(float((Z - mean).var(axis=0, ddof=min(1, n - 1)).sum()), 1e-12)
    floor = 1e-2 * total / d
    residual = (total - var[:k].sum()) / (d - k) if d > k else floor
    return mean, vt[:k].T, np.maximum(var[:k], floor), max(float(residual), floor)


def mixture_fit(Z: np.ndarray, n_components: int, seed: int) -> tuple:
    """Arguments of ``EnvelopedEnergy.set_gaussian`` for a Gaussian mixture fit of ``Z``.

    Full covariances (``GaussianMixture`` on the same subsample as :func:`gaussian_fit`),
    each widened by 30 % of the data's mean variance (``reg_covar``), given as eigenvectors
    and eigenvalues; one component is the probabilistic PCA of :func:`gaussian_fit`. Sharp
    components leave the network little to correct at the narrow levels (the user guide's
    "why these defaults").
    """
    if n_components == 1:
        return gaussian_fit(Z)
    from sklearn.mixture import GaussianMixture

    Z = Z[:: max(1, math.ceil(len(Z) / _ENVELOPE_ROWS))]
    floor = _MIXTURE_FLOOR * max(float(Z.var(axis=0).sum()), 1e-12) / Z.shape[1]
    gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=floor,
                          random_state=seed).fit(Z)
    var, vec = np.linalg.eigh(gmm.covariances_)  # (K, d), (K, d, d)
    residual = np.full(n_components, floor)  # no direction is left over
    return gmm.means_, vec, np.maximum(var, floor), residual, gmm.weights_


