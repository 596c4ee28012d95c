"""Log partition function ``log Z = log ∫ exp(-E(x)) dx`` of an energy.

* :func:`log_partition_quadrature` — midpoint rule on a grid, ``d ≤ 2``; the box grows until
  the mass near its edge is negligible.
* :func:`log_partition_ais` — annealed importance sampling (Neal, 2001), any ``d``, with a
  standard error and the effective sample size (:class:`LogPartitionEstimate`).
* :func:`log_partition_from` — AIS from a :class:`MixtureProposal` base (fitted to the data
  or to samples of the model).
* :func:`local_variance` — the per-feature width a model allows, which a base of annealing
  must cover.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from skdcd import samplers
from skdcd.diffusion import EnergyFn
from skdcd.samplers import anneal, energy_and_grad

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


def local_variance(energy_fn: EnergyFn, x: torch.Tensor, *, generator: torch.Generator,
                   n_probes: int = 8, h: float = 1e-3, max_var: float = 9.0) -> torch.Tensor:
    """Per-feature variance that ``exp(-E)`` allows around the rows ``x``: ``1 / E''``.

    The diagonal of ``∇²E`` at each row by Hutchinson's estimator ``E[v ⊙ ∇²E v]`` with
    Rademacher probes ``v``, each ``∇²E v`` a central difference of ``∇E`` (step ``h``);
    its median over the rows, floored at ``1 / max_var``, inverted. A base for annealing
    must be at least this wide: the data's own spread is zero along constant features,
    where the model is not.

    Returns
    -------
    torch.Tensor of shape (n_features,)

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * (x / torch.tensor([0.1, 2.0])).pow(2).sum(dim=1)
    >>> var = local_variance(energy_fn, torch.zeros(16, 2, dtype=torch.float64),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> [round(v, 4) for v in var.tolist()]
    [0.01, 4.0]
    """
    diag = torch.zeros_like(x)
    for _ in range(n_probes):
        v = 2.0 * torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) - 1
        _, grad_plus = energy_and_grad(energy_fn, x + h * v)
        _, grad_minus = energy_and_grad(energy_fn, x - h * v)
        diag += v * (grad_plus - grad_minus) / (2 * h)
    curvature = torch.nan_to_num(diag / n_probes, nan=0.0).median(dim=0).values  # (d,)
    return 1.0 / curvature.clamp_min(1.0 / max_var)


class LogPartitionEstimate(NamedTuple):
    """An estimate of ``log Z`` with its standard error and effective sample size.

    Attributes
    ----------
    log_z : float
        The estimate.
    std_err : float
        Its standard error: the larger of the delta-method error of the pooled weights,
        ``sqrt(1/ess - 1/n)``, and the spread of ``log Z`` over ``N_GROUPS`` independent
        groups of particles, ``std / sqrt(N_GROUPS)``. Unlike the first alone, which never
        exceeds about 1 nat, the second grows without bound when the groups disagree.
    ess : float
        Effective sample size of the importance weights, ``(Σw)² / Σw²``.
    n_samples : int
        Particles or samples behind the estimate.

    Examples
    --------
    >>> import torch
    >>> est = estimate_from_log_weights(torch.zeros(64))  # equal weights: exact
    >>> est.log_z, est.std_err, est.ess, est.n_samples
    (0.0, 0.0, 64.0, 64)
    """

    log_z: float
    std_err: float
    ess: float
    n_samples: int


N_GROUPS = 8  # independent groups of particles behind the spread of log Z
ESS_WARN = 0.01  # an ESS below this fraction of the samples (or 10) gives a warning


def estimate_from_log_weights(log_weights: torch.Tensor,
                              log_z0: float = 0.0) -> LogPartitionEstimate:
    """``log Z = log_z0 + log mean(w)`` of importance weights ``w``, with its error and ESS.

    Warns (``RuntimeWarning``) when the effective sample size is below ``ESS_WARN`` of the
    samples, or 10: the weights have collapsed onto a few samples and the estimate (and
    both parts of its standard error) cannot be trusted.

    Examples
    --------
    >>> import math, torch
    >>> est = estimate_from_log_weights(torch.log(torch.tensor([1.0, 3.0] * 32)))
    >>> round(est.log_z, 6) == round(math.log(2.0), 6), round(est.ess, 1)
    (True, 51.2)
    """
    log_w = torch.nan_to_num(log_weights.detach().double(), nan=-torch.inf)
    n = log_w.numel()
    log_z = log_z0 + float(torch.logsumexp(log_w, dim=0)) - math.log(n)
    if not math.isfinite(log_z):
        return LogPartitionEstimate(log_z, math.inf, 0.0, n)
    w = torch.softmax(log_w, dim=0)
    ess = float(1.0 / w.pow(2).sum())
    delta = math.sqrt(max(1.0 / ess - 1.0 / n, 0.0))
    spread = 0.0
    if n >= 2 * N_GROUPS:
        groups = log_w[: n - n % N_GROUPS].reshape(N_GROUPS, -1)
        group_log_z = torch.logsumexp(groups, dim=1)
        spread = (float(group_log_z.std() / math.sqrt(N_GROUPS))
                  if torch.isfinite(group_log_z).all() else math.inf)
    if ess < max(10.0, ESS_WARN * n):
        warnings.warn(
            f"The importance weights collapsed (effective sample size {ess:.1f} of {n}): "
            "log Z is unreliable. Raise ais_n_steps (or ais_n_particles).",
            RuntimeWarning, stacklevel=3)
    return LogPartitionEstimate(log_z, max(delta, spread), ess, n)


def log_partition_ais(
    energy_fn: EnergyFn, base_mean: torch.Tensor, base_std: torch.Tensor, *,
    n_particles: int = 1024, n_steps: int = 256, step_size: float = 0.1,
    generator: torch.Generator, callback: Callable[[int, torch.Tensor], None] | None = None,
) -> LogPartitionEstimate:
    """``log Z`` by annealed importance sampling from a diagonal Gaussian base.

    ``Ẑ = mean(w)`` is unbiased for ``Z``; the error and the ESS come from
    :func:`estimate_from_log_weights`. ``callback(k, x)`` is passed on to
    :func:`~skdcd.samplers.anneal` (progress reporting). The base must be at least as wide
    as the model in every direction: a base too narrow somewhere leaves mass that no
    particle reaches, and the error bar cannot tell.

    Returns
    -------
    LogPartitionEstimate

    Examples
    --------
    >>> import math, torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)  # Z = 2π in two dimensions
    >>> est = log_partition_ais(
    ...     energy_fn, torch.zeros(2, dtype=torch.float64),
    ...     torch.full((2,), 1.5, dtype=torch.float64), n_particles=64, n_steps=16,
    ...     generator=torch.Generator().manual_seed(0))
    >>> abs(est.log_z - math.log(2 * math.pi)) < 3 * est.std_err < 0.3
    True
    """
    result = anneal(energy_fn, base_mean, base_std, n_particles=n_particles, n_steps=n_steps,
                    step_size=step_size, generator=generator, resample=False,
                    callback=callback)
    return estimate_from_log_weights(result.log_weights)


class MixtureProposal:
    """A Gaussian mixture on tensors: exact draws and log-densities (a base or a proposal).

    Parameters
    ----------
    means : torch.Tensor of shape (K, d)
    covariances : torch.Tensor of shape (K, d, d), or (K, d) for diagonal ones
    weights : torch.Tensor of shape (K,)

    Examples
    --------
    >>> import torch
    >>> mix = MixtureProposal(torch.zeros(1, 2), torch.eye(2)[None], torch.ones(1))
    >>> mix.sample(5, torch.Generator().manual_seed(0)).shape
    torch.Size([5, 2])
    >>> round(float(mix.log_prob(torch.zeros(1, 2))), 4)  # -log 2π
    -1.8379
    >>> diag = MixtureProposal(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1))
    >>> round(float(diag.log_prob(torch.zeros(1, 2))), 4)
    -1.8379
    """

    def __init__(self, means: torch.Tensor, covariances: torch.Tensor,
                 weights: torch.Tensor) -> None:
        self.means = means
        self.diagonal = covariances.ndim == 2
        if self.diagonal:
            self.chol = covariances.sqrt()  # (K, d)
        else:
            self.chol = torch.linalg.cholesky(covariances)  # (K, d, d)
            eye = torch.eye(means.shape[1], dtype=means.dtype, device=means.device)
            self.chol_inv = torch.linalg.solve_triangular(self.chol, eye.expand_as(self.chol),
                                                          upper=False)  # (K, d, d)
        self.log_weights = torch.log(weights / weights.sum())

    @staticmethod
    def fit_params(rows: np.ndarray, *, n_components: int = 8,
                   random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means, covariances and weights of a Gaussian mixture fitted to ``rows``.

        Up to ``n_components`` components (1, 2, 4 or 8, as the BIC prefers), with full
        covariances where there are at least ``10 d`` rows per component (fewer estimate a
        ``d × d`` covariance poorly, too narrow in some directions), else diagonal ones, one
        per 20 rows at most. One Gaussian in one or two features (sequential Monte Carlo
        resamples there, and quadrature needs no base) and beyond 128 (EM in thousands of
        dimensions takes seconds). At most 1,024 evenly spaced rows are used.
        """
        from sklearn.mixture import GaussianMixture

        rows = rows[:: max(1, math.ceil(len(rows) / 1024))]
        n, d = rows.shape
        full = d <= 128 and n >= 10 * d
        floor = 1e-6 * max(float(rows.var(axis=0).mean()), 1e-12)
        if d <= 2 or d > 128:  # one Gaussian: SMC resamples in 2-D; EM in 10³ dims is slow
            mean = rows.mean(axis=0)
            cov = (np.cov(rows.T, bias=True).reshape(d, d) + floor * np.eye(d) if full
                   else rows.var(axis=0) + floor)
            return mean[None], cov[None], np.ones(1)
        k_max = max(1, min(n_components, n // ((10 * d) if full else 20)))
        best = None
        for k in (1, 2, 4, 8):  # the number of components by BIC
            if k > k_max:
                break
            gmm = GaussianMixture(k, covariance_type="full" if full else "diag",
                                  reg_covar=floor, max_iter=50, tol=1e-2,
                                  random_state=random_state).fit(rows)
            bic = gmm.bic(rows)
            if best is None or bic < best[0]:
                best = (bic, gmm)
        gmm = best[1]
        return gmm.means_, gmm.covariances_, gmm.weights_

    @classmethod
    def from_params(cls, means: np.ndarray, covariances: np.ndarray, weights: np.ndarray, *,
                    floor: np.ndarray | None = None, widen: float = 1.2,
                    dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> MixtureProposal:
        """The mixture ``fit_params`` gave, made safe to anneal or sample from.

        Each component's variance along each feature is raised to at least ``floor`` (say,
        the width the model allows there: :func:`local_variance`) and multiplied by
        ``widen²``; a tenth of the mass goes to one more component, the Gaussian of the
        whole mixture widened by ``2 · widen``, so that the tails are heavier than the
        model's.
        """
        means, covs, weights = map(np.asarray, (means, covariances, weights))
        d = means.shape[1]
        floor = np.zeros(d) if floor is None else np.asarray(floor)
        diagonal = covs.ndim == 2
        if diagonal:
            covs = np.maximum(covs, floor)
        else:
            diag = np.einsum("kii->ki", covs)
            covs = covs + np.einsum("ki,ij->kij", np.maximum(floor - diag, 0.0), np.eye(d))
        w = weights / weights.sum()
        centre = w @ means
        spread = means - centre
        if diagonal:
            total = w @ (covs + spread**2)
        else:
            total = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", spread, spread))
        as_tensor = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return cls(as_tensor(np.concatenate([means, centre[None]])),
                   as_tensor(np.concatenate([covs * widen**2, (2 * widen) ** 2 * total[None]])),
                   as_tensor(np.concatenate([0.9 * w, [0.1]])))

    @classmethod
    def fit(cls, x: torch.Tensor, *, widen: float = 1.2, random_state: int = 0,
            floor: np.ndarray | None = None) -> MixtureProposal:
        """A mixture fitted to the rows ``x`` (e.g. samples of a model), widened for safety."""
        params = cls.fit_params(x.detach().double().cpu().numpy(), random_state=random_state)
        return cls.from_params(*params, floor=floor, widen=widen, dtype=x.dtype,
                               device=x.device)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws, shape ``(n, d)``.

        Examples
        --------
        >>> import torch
        >>> mix = MixtureProposal(torch.zeros(1, 2), 4 * torch.ones(1, 2), torch.ones(1))
        >>> x = mix.sample(20000, torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(x.std(dim=0), torch.full((2,), 2.0), atol=0.05))
        True
        """
        d = self.means.shape[1]
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True,
                                 generator=generator)  # (n,)
        xi = torch.randn((n, d), generator=generator, dtype=self.means.dtype,
                         device=self.means.device)
        if self.diagonal:
            return self.means[comp] + self.chol[comp] * xi
        return self.means[comp] + torch.einsum("nij,nj->ni", self.chol[comp], xi)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of each row of ``x``, shape ``(n,)``.

        Examples
        --------
        >>> import math, torch
        >>> mix = MixtureProposal(torch.zeros(2, 1), torch.ones(2, 1, 1), torch.ones(2))
        >>> float(mix.log_prob(torch.zeros(1, 1))) - -0.5 * math.log(2 * math.pi) < 1e-6
        True
        """
        d = self.means.shape[1]
        diff = x[:, None, :] - self.means  # (n, K, d)
        if self.diagonal:
            z = diff / self.chol
            log_det = torch.log(self.chol).sum(dim=1)  # (K,)
        else:
            z = torch.einsum("kij,nkj->nki", self.chol_inv, diff)  # (n, K, d)
            log_det = torch.log(torch.diagonal(self.chol, dim1=1, dim2=2)).sum(dim=1)
        log_comp = (-0.5 * z.pow(2).sum(dim=2) - log_det - 0.5 * d * math.log(2 * math.pi)
                    + self.log_weights)
        return torch.logsumexp(log_comp, dim=1)


def log_partition_from(energy_fn: EnergyFn, base: MixtureProposal, *, n_particles: int,
                       n_steps: int, step_size: float, generator: torch.Generator,
                       resample: bool = False, callback=None) -> samplers.AnnealResult:
    """Anneal draws of a mixture ``base`` to ``exp(-E)`` along ``base^{1-β} exp(-βE)``.

    With ``resample=False``, :func:`estimate_from_log_weights` of the result's weights is
    AIS's ``log Z``; with ``resample=True`` the particles are a sequential Monte Carlo
    sample of the model (see :func:`~skdcd.samplers.anneal_path`).

    Examples
    --------
    >>> import math, torch
    >>> base = MixtureProposal(torch.zeros(1, 2, dtype=torch.float64),
    ...                        4 * torch.ones(1, 2, dtype=torch.float64),
    ...                        torch.ones(1, dtype=torch.float64))
    >>> result = log_partition_from(lambda x: 0.5 * x.pow(2).sum(dim=1), base, n_particles=256,
    ...                             n_steps=32, step_size=0.5,
    ...                             generator=torch.Generator().manual_seed(0))
    >>> est = estimate_from_log_weights(result.log_weights)
    >>> abs(est.log_z - math.log(2 * math.pi)) < 3 * est.std_err < 0.1
    True
    """
    def path_energy(x: torch.Tensor, beta: float) -> torch.Tensor:
        log_base = base.log_prob(x)
        return -log_base if beta == 0.0 else beta * energy_fn(x) - (1.0 - beta) * log_base

    return samplers.anneal_path(path_energy, base.sample(n_particles, generator),
                                samplers.sigmoid_schedule(n_steps).tolist(),
                                step_size=step_size, generator=generator, resample=resample,
                                callback=callback)
