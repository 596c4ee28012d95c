"""Log partition function ``log Z = log ∫ exp(-E(x)) dx`` of an energy.

* :func:`log_partition_quadrature` — midpoint rule on a grid, ``d ≤ 2``; the box grows until
  the mass near its edge is negligible.
* :func:`log_partition_ais` — annealed importance sampling (Neal, 2001), any ``d``, with a
  standard error from the spread of the importance weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from skdcd.diffusion import EnergyFn
from skdcd.samplers import anneal

EDGE_MASS_TOL = 1e-6  # rim mass at which the box stops growing
EDGE_MASS_WARN = 1e-4  # rim mass that makes the estimate worth a warning


def _grid_log_mass(
    energy_fn: EnergyFn, low: np.ndarray, high: np.ndarray, n_grid: int,
    device: torch.device | str, dtype: torch.dtype, batch_size: int,
) -> tuple[float, float]:
    """Midpoint-rule ``log ∫_box exp(-E)`` and the fraction of it in the outer 5% rim."""
    d = len(low)
    axes = [low[j] + (np.arange(n_grid) + 0.5) * (high[j] - low[j]) / n_grid for j in range(d)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)  # (n_grid**d, d)
    rim = np.zeros(len(mesh), dtype=bool)
    for j in range(d):
        width = 0.05 * (high[j] - low[j])
        rim |= (mesh[:, j] < low[j] + width) | (mesh[:, j] > high[j] - width)
    neg_energy = torch.empty(len(mesh), dtype=torch.float64)  # filled in place: no heap churn
    with torch.no_grad():
        for i in range(0, len(mesh), batch_size):
            x = torch.as_tensor(mesh[i:i + batch_size], device=device, dtype=dtype)
            neg_energy[i:i + batch_size] = -energy_fn(x).double().cpu()
    neg_energy = torch.nan_to_num(neg_energy, nan=-torch.inf)
    log_cell = float(np.sum(np.log((high - low) / n_grid)))
    log_total = float(torch.logsumexp(neg_energy, dim=0)) + log_cell
    log_rim = float(torch.logsumexp(neg_energy[torch.as_tensor(rim)], dim=0)) + log_cell
    return log_total, math.exp(log_rim - log_total) if np.isfinite(log_total) else 1.0


def log_partition_quadrature(
    energy_fn: EnergyFn, low: np.ndarray, high: np.ndarray, *, n_grid: int = 512,
    max_expansions: int = 8, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64, batch_size: int = 65536,
) -> tuple[float, float]:
    """``log Z`` by the midpoint rule on an ``n_grid^d`` grid, for ``d ∈ {1, 2}``.

    The box ``[low, high]`` grows by half its width about its centre while more than
    :data:`EDGE_MASS_TOL` of the mass lies in its outer rim; a warning says when more than
    :data:`EDGE_MASS_WARN` remains there (the estimate is then a lower bound).

    Returns
    -------
    log_z : float
        The estimate.
    edge_mass : float
        Fraction of the mass in the outer 5% rim of the final box.

    Examples
    --------
    >>> import torch, math
    >>> log_z, _ = log_partition_quadrature(lambda x: 0.5 * x.pow(2).sum(1),
    ...                                     low=[-3, -3], high=[3, 3], n_grid=200)
    >>> round(log_z, 4) == round(math.log(2 * math.pi), 4)
    True
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if low.ndim != 1 or len(low) not in (1, 2):
        raise ValueError(f"Quadrature needs 1 or 2 dimensions, got {low.shape}.")
    for _ in range(max_expansions + 1):
        log_z, edge_mass = _grid_log_mass(energy_fn, low, high, n_grid, device, dtype,
                                          batch_size)
        if edge_mass <= EDGE_MASS_TOL:
            return log_z, edge_mass
        centre, half = (low + high) / 2, 0.75 * (high - low)
        low, high = centre - half, centre + half
    if edge_mass <= EDGE_MASS_WARN:
        return log_z, edge_mass
    warnings.warn(
        f"Quadrature box still holds {edge_mass:.2g} of the mass near its edge after "
        f"{max_expansions} expansions; log Z may be underestimated (is the envelope off?).",
        RuntimeWarning, stacklevel=2,
    )
    return log_z, edge_mass


def log_partition_ais(
    energy_fn: EnergyFn, base_mean: torch.Tensor, base_std: torch.Tensor, *,
    n_particles: int = 1024, n_steps: int = 256, step_size: float = 0.1,
    generator: torch.Generator, callback: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[float, float]:
    """``log Z`` by annealed importance sampling from a diagonal Gaussian base.

    ``Ẑ = mean(w)`` is unbiased for ``Z``; the reported standard error of ``log Ẑ`` is the
    delta-method ``std(w) / (sqrt(n) mean(w))``. ``callback(k, x)`` is passed on to
    :func:`~skdcd.samplers.anneal` (progress reporting).

    Returns
    -------
    log_z, std_err : float

    Examples
    --------
    >>> import math, torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)  # Z = 2π in two dimensions
    >>> log_z, std_err = log_partition_ais(
    ...     energy_fn, torch.zeros(2, dtype=torch.float64),
    ...     torch.full((2,), 1.5, dtype=torch.float64), n_particles=64, n_steps=16,
    ...     generator=torch.Generator().manual_seed(0))
    >>> abs(log_z - math.log(2 * math.pi)) < 0.2, 0 < std_err < 0.2
    (True, True)
    """
    result = anneal(energy_fn, base_mean, base_std, n_particles=n_particles, n_steps=n_steps,
                    step_size=step_size, generator=generator, resample=False,
                    callback=callback)
    w = torch.softmax(result.log_weights.double(), dim=0) * n_particles  # normalised to mean 1
    std_err = float(w.std() / math.sqrt(n_particles))
    return result.log_normalizer, std_err
