"""Conditional sampling with some coordinates observed: the maths of imputation.

Pure functions on tensors, each row with its own pattern of missing coordinates
(``missing``, a boolean ``(n, d)`` tensor). Proposals for the missing coordinates given the
observed ones: :class:`GaussianMixtureConditional`, the exact conditional of a Gaussian
mixture (right where the mixture is), :class:`DonorKernels`, kernels around the nearest
complete rows (where the data are), and :class:`ProposalMixture` of both. :func:`impute`
draws from the conditional of an energy ``exp(-U(x))``: importance resampling of a
proposal's draws, then MALA on the missing coordinates with the observed ones clamped
(:func:`~skdcd.samplers.adaptive_mala`, one signature with every sampler).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skdcd._mcmc import adaptive_mala
from skdcd.diffusion import EnergyFn

N_PROPOSALS = 64  # proposals per row for the resampling (impute's default)

__all__ = ["DonorKernels", "GaussianMixtureConditional", "ProposalMixture", "clamped",
           "clamped_ladder", "impute"]


def clamped(energy_fn: EnergyFn, x: torch.Tensor, missing: torch.Tensor) -> EnergyFn:
    """The energy of the missing coordinates, the others held at ``x``.

    ``y ↦ U(where(missing, y, x))``: a chain over all of ``y`` leaves the observed
    coordinates' values unused, and their gradient is zero, so the MALA proposal along them
    is symmetric and cancels from the acceptance ratio; the missing coordinates see the
    exact conditional.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x: 0.5 * x.pow(2).sum(dim=1)
    >>> x = torch.tensor([[1.0, 2.0]])
    >>> missing = torch.tensor([[False, True]])
    >>> clamped(energy_fn, x, missing)(torch.tensor([[9.0, 0.0]]))  # x₀ stays 1
    tensor([0.5000])
    """
    def energy(y: torch.Tensor) -> torch.Tensor:
        return energy_fn(torch.where(missing, y, x))

    return energy


def clamped_ladder(energy_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   x: torch.Tensor, missing: torch.Tensor, sigma_min: float,
                   generator: torch.Generator) -> Callable[[torch.Tensor, torch.Tensor],
                                                           torch.Tensor]:
    """A noise-conditional energy of the missing coordinates, the others on a noise path.

    ``(y, σ) ↦ E(where(missing, y, x + sqrt(σ² - σ_min²) ξ), σ)`` with one ``ξ ~ N(0, I)``
    per row: at each level the observed coordinates are where the forward (variance
    exploding) process would have taken them, so the level-``σ`` energy sees data of its
    own level; at ``σ_min`` they are ``x``. For annealing down a noise ladder with
    :func:`~skdcd.samplers.recovery_sample`.

    Examples
    --------
    >>> import torch
    >>> energy_fn = lambda x, s: x.pow(2).sum(dim=1) / (2 * (1 + s.squeeze(1) ** 2))
    >>> x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    >>> f = clamped_ladder(energy_fn, x, torch.tensor([[False, True]]), 0.5,
    ...                    torch.Generator().manual_seed(0))
    >>> float(f(torch.zeros(1, 2, dtype=torch.float64), torch.full((1, 1), 0.5,
    ...       dtype=torch.float64)))  # x₀ = 1 at σ_min: 1 / (2 · 1.25)
    0.4
    """
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def energy(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        spread = torch.sqrt(torch.clamp(sigma.pow(2) - sigma_min**2, min=0.0))  # (n, 1)
        return energy_fn(torch.where(missing, y, x + spread * xi), sigma)

    return energy


@dataclass
class GaussianMixtureConditional:
    """The conditional ``p(x_m | x_o)`` of a Gaussian mixture, one per row.

    Built by :meth:`from_mixture`; each row's conditional is a mixture of Gaussians over its
    missing coordinates, with the components' responsibilities given its observed ones.
    Full ``d × d`` matrices are padded to every row's pattern, so rows of any pattern are
    handled in one batch (memory ``n K d²``: call it on chunks of rows).

    Attributes
    ----------
    x : torch.Tensor of shape (n, d)
        The rows (missing coordinates set to 0).
    missing : torch.Tensor of shape (n, d)
        Which coordinates are missing.
    means : torch.Tensor of shape (n, K, d)
        Each component's conditional mean (observed coordinates: the observed values).
    chol : torch.Tensor of shape (n, K, d, d) or (n, K, d)
        The Cholesky factor of each component's conditional precision, padded with the
        identity on the observed coordinates (diagonal mixtures: its diagonal).
    log_resp : torch.Tensor of shape (n, K)
        The log-responsibilities of the components given the observed coordinates.
    """

    x: torch.Tensor
    missing: torch.Tensor
    means: torch.Tensor
    chol: torch.Tensor
    log_resp: torch.Tensor

    @classmethod
    def from_mixture(cls, means: torch.Tensor, covariances: torch.Tensor,
                     weights: torch.Tensor, x: torch.Tensor,
                     missing: torch.Tensor) -> GaussianMixtureConditional:
        """Condition the mixture ``Σ_c π_c N(μ_c, Σ_c)`` on each row's observed coordinates.

        Parameters
        ----------
        means : torch.Tensor of shape (K, d)
        covariances : torch.Tensor of shape (K, d, d), or (K, d) for diagonal ones
        weights : torch.Tensor of shape (K,)
        x : torch.Tensor of shape (n, d)
            Rows; their missing coordinates are ignored (NaN allowed there).
        missing : torch.Tensor of shape (n, d), bool

        Examples
        --------
        >>> import torch
        >>> cov = torch.tensor([[[1.0, 0.8], [0.8, 1.0]]], dtype=torch.float64)
        >>> x = torch.tensor([[1.0, float("nan")]], dtype=torch.float64)
        >>> cond = GaussianMixtureConditional.from_mixture(
        ...     torch.zeros(1, 2, dtype=torch.float64), cov, torch.ones(1, dtype=torch.float64),
        ...     x, torch.tensor([[False, True]]))
        >>> cond.mean()  # E[x₁ | x₀ = 1] = 0.8
        tensor([[1.0000, 0.8000]], dtype=torch.float64)
        """
        x = torch.where(missing, torch.zeros_like(x), x)
        obs = (~missing).to(x.dtype)[:, None, :]  # (n, 1, d)
        miss = missing.to(x.dtype)[:, None, :]
        resid = obs * (x[:, None, :] - means)  # (n, K, d): x_o - μ_o, zero where missing
        n_obs = obs.sum(dim=2)  # (n, 1)
        if covariances.ndim == 2:  # diagonal: the missing coordinates are independent
            var = covariances[None]  # (1, K, d)
            cond_means = torch.where(missing[:, None, :], means, x[:, None, :])
            chol = torch.where(missing[:, None, :], var.rsqrt(), torch.ones_like(var))
            log_lik = -0.5 * (resid.pow(2) / var + obs * torch.log(var)).sum(dim=2)
        else:
            precision = torch.linalg.inv(covariances)  # (K, d, d)
            # Λ_mm padded with the identity on the observed coordinates
            a = miss[..., :, None] * precision * miss[..., None, :] + torch.diag_embed(obs)
            chol = torch.linalg.cholesky(a)  # (n, K, d, d)
            rhs = miss * torch.einsum("kij,nkj->nki", precision, resid)  # Λ_mo (x_o - μ_o)
            shift = torch.cholesky_solve(-rhs[..., None], chol).squeeze(-1)  # zero on obs
            cond_means = torch.where(missing[:, None, :], means + shift, x[:, None, :])
            # the observed coordinates' marginal N(μ_o, Σ_oo), padded likewise
            b = obs[..., :, None] * covariances * obs[..., None, :] + torch.diag_embed(miss)
            chol_b = torch.linalg.cholesky(b)
            white = torch.linalg.solve_triangular(chol_b, resid[..., None], upper=False)
            log_det = 2.0 * torch.log(torch.diagonal(chol_b, dim1=-2, dim2=-1)).sum(dim=2)
            log_lik = -0.5 * (white.squeeze(-1).pow(2).sum(dim=2) + log_det)
        log_lik = log_lik - 0.5 * n_obs * math.log(2 * math.pi)
        log_resp = torch.log_softmax(torch.log(weights) + log_lik, dim=1)
        return cls(x, missing, cond_means, chol, log_resp)

    def mean(self) -> torch.Tensor:
        """The conditional mean of each row (observed coordinates: their values), ``(n, d)``."""
        return torch.einsum("nk,nkd->nd", self.log_resp.exp(), self.means)

    def sample(self, n_draws: int, generator: torch.Generator) -> torch.Tensor:
        """``n_draws`` exact draws per row, ``(n, n_draws, d)``, observed coordinates kept."""
        n, n_comp, d = self.means.shape
        comp = torch.multinomial(self.log_resp.exp(), n_draws, replacement=True,
                                 generator=generator)  # (n, D)
        rows = torch.arange(n, device=comp.device)[:, None]
        xi = torch.randn((n, n_draws, d), generator=generator, dtype=self.x.dtype,
                         device=self.x.device)
        chol = self.chol[rows, comp]  # (n, D, d, d) or (n, D, d)
        if chol.ndim == 3:
            z = xi / chol
        else:  # z = L⁻ᵀ ξ ~ N(0, (L Lᵀ)⁻¹)
            z = torch.linalg.solve_triangular(chol.transpose(-1, -2), xi[..., None],
                                              upper=True).squeeze(-1)
        return torch.where(self.missing[:, None, :], self.means[rows, comp] + z,
                           self.x[:, None, :])

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``log p(y_m | x_o)`` of draws ``y`` of shape ``(n, D, d)``, ``(n, D)``."""
        diff = torch.where(self.missing[:, None, None, :],
                           y[:, :, None, :] - self.means[:, None], 0.0)  # (n, D, K, d)
        if self.chol.ndim == 3:  # diagonal
            white = diff * self.chol[:, None]
            log_det = torch.log(self.chol).sum(dim=-1)[:, None]
        else:  # ‖Lᵀ diff‖², the precision's quadratic form, without expanding L over D
            white = torch.einsum("nkji,ndkj->ndki", self.chol, diff)
            log_det = torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(dim=-1)[:, None]
        n_miss = self.missing.sum(dim=1).to(y.dtype)[:, None, None]  # (n, 1, 1)
        log_comp = (-0.5 * white.pow(2).sum(dim=-1) + log_det
                    - 0.5 * n_miss * math.log(2 * math.pi))  # (n, D, K)
        return torch.logsumexp(self.log_resp[:, None] + log_comp, dim=-1)


@dataclass
class DonorKernels:
    """Gaussian kernels around the missing coordinates of each row's nearest complete rows.

    A data proposal: for each row, the ``k`` donors (complete rows, e.g. training data)
    nearest on the row's observed coordinates, and a kernel ``N(donor_m, h² I)`` over the
    missing coordinates of each, equally weighted. Draws land where the data are, which a
    model's narrow wells need; the choice of donors depends on the observed coordinates
    only, so importance weights against it are exact.

    Attributes
    ----------
    x : torch.Tensor of shape (n, d)
    missing : torch.Tensor of shape (n, d)
    donors : torch.Tensor of shape (n, k, d)
        Each row's donors.
    bandwidth : float
        ``h``.
    """

    x: torch.Tensor
    missing: torch.Tensor
    donors: torch.Tensor
    bandwidth: float

    @classmethod
    def nearest(cls, rows: torch.Tensor, x: torch.Tensor, missing: torch.Tensor, k: int,
                bandwidth: float) -> DonorKernels:
        """The ``k`` rows of ``rows`` nearest to each row of ``x`` on its observed coordinates.

        Examples
        --------
        >>> import torch
        >>> rows = torch.tensor([[0.0, 0.0], [1.0, 5.0], [2.0, 9.0]])
        >>> x = torch.tensor([[1.1, float("nan")]])
        >>> kernels = DonorKernels.nearest(rows, x, torch.isnan(x), k=1, bandwidth=0.1)
        >>> kernels.donors
        tensor([[[1., 5.]]])
        """
        x = torch.where(missing, torch.zeros_like(x), x)
        obs = (~missing).to(x.dtype)
        # ‖(x - r) ⊙ o‖² = x·x∘o - 2 x∘o·r + o·r²: no (n, N, d) difference tensor
        d2 = ((x * x * obs).sum(dim=1, keepdim=True) - 2.0 * (x * obs) @ rows.T
              + obs @ (rows * rows).T)  # (n, N)
        nearest = d2.topk(min(k, len(rows)), dim=1, largest=False).indices  # (n, k)
        return cls(x, missing, rows[nearest], float(bandwidth))

    def sample(self, n_draws: int, generator: torch.Generator) -> torch.Tensor:
        """``n_draws`` draws per row, ``(n, n_draws, d)``, observed coordinates kept."""
        n, k, d = self.donors.shape
        pick = torch.randint(k, (n, n_draws), generator=generator, device=self.x.device)
        centre = self.donors[torch.arange(n, device=self.x.device)[:, None], pick]
        xi = torch.randn((n, n_draws, d), generator=generator, dtype=self.x.dtype,
                         device=self.x.device)
        return torch.where(self.missing[:, None, :], centre + self.bandwidth * xi,
                           self.x[:, None, :])

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``log`` of the kernel mixture at the missing coordinates of ``y``, ``(n, D)``."""
        diff = torch.where(self.missing[:, None, None, :],
                           y[:, :, None, :] - self.donors[:, None], 0.0)  # (n, D, k, d)
        h2 = self.bandwidth**2
        n_miss = self.missing.sum(dim=1).to(y.dtype)[:, None]  # (n, 1)
        return (torch.logsumexp(-0.5 * diff.pow(2).sum(dim=-1) / h2, dim=-1)
                - math.log(self.donors.shape[1])
                - 0.5 * n_miss * math.log(2 * math.pi * h2))


@dataclass
class ProposalMixture:
    """An equal-weight mixture of proposals (each with ``sample`` and ``log_prob``).

    ``sample`` draws an equal share from each part (a deterministic mixture: importance
    weights against the mixture's density stay exact, with less variance than random
    picks), ``log_prob`` is the mixture's.
    """

    parts: tuple

    @property
    def x(self) -> torch.Tensor:
        """The rows (of the first part; every part has the same)."""
        return self.parts[0].x

    @property
    def missing(self) -> torch.Tensor:
        """Which coordinates are missing."""
        return self.parts[0].missing

    def _shares(self, n_draws: int) -> list[int]:
        """How many of ``n_draws`` draws each part gives (as equal as they can be)."""
        return [len(c) for c in torch.arange(n_draws).tensor_split(len(self.parts))]

    def sample(self, n_draws: int, generator: torch.Generator) -> torch.Tensor:
        """``n_draws`` draws per row, ``(n, n_draws, d)``: an equal share from each part."""
        shares = self._shares(n_draws)
        return torch.cat([p.sample(s, generator) for p, s in zip(self.parts, shares,
                                                                 strict=True) if s], dim=1)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """The log-density of the mixture that ``sample`` drew ``y`` from, ``(n, D)``.

        Each part weighs its share of the ``D`` draws (equal shares when ``D`` is a
        multiple of the number of parts).
        """
        shares = self._shares(y.shape[1])
        parts = torch.stack([p.log_prob(y) + math.log(s / y.shape[1])
                             for p, s in zip(self.parts, shares, strict=True) if s])
        return torch.logsumexp(parts, dim=0)


def impute(
    energy_fn: EnergyFn, proposal: GaussianMixtureConditional | DonorKernels | ProposalMixture,
    *, n_steps: int,
    step_size: float, generator: torch.Generator, n_draws: int = 8,
    n_proposals: int = N_PROPOSALS,
    sample_posterior: bool = False,
    move_starts: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fill the missing coordinates from the conditional of ``exp(-U(x))`` given the others.

    ``n_proposals`` draws per row of the mixture's conditional ``proposal``, weighted by
    ``exp(-U) / proposal`` and resampled into ``n_draws`` chains per row (the mixture finds
    the modes, the weights correct it towards the energy), then ``n_steps`` adaptive MALA
    moves on the missing coordinates with the observed ones clamped (:func:`clamped`).

    Parameters
    ----------
    energy_fn : callable
        ``U``, mapping ``(n, d)`` to ``(n,)``.
    proposal : GaussianMixtureConditional, DonorKernels or ProposalMixture
        The rows, which coordinates are missing, and the proposal (anything with ``x``,
        ``missing``, ``sample`` and ``log_prob`` as these have).
    n_steps : int
        MALA moves per chain; the first half adapt the step.
    step_size : float
        The initial MALA step.
    generator : torch.Generator
        Source of randomness.
    n_draws : int, default=8
        Chains per row for the posterior mean (a draw, ``sample_posterior=True``, takes
        one).
    n_proposals : int, default=64
        Proposals per row for the resampling.
    sample_posterior : bool, default=False
        ``False``: the posterior mean (every chain's average after the burn-in, averaged
        over the chains); ``True``: one draw (one chain's last state).
    move_starts : callable, optional
        ``move_starts(starts, x, missing) -> starts``, applied to the chains' starts (and
        the rows and patterns repeated alike) before MALA, e.g. annealing down a noise
        ladder with :func:`clamped_ladder`.

    Returns
    -------
    torch.Tensor of shape (n, d)
        The rows, missing coordinates filled.

    Examples
    --------
    >>> import torch
    >>> cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    >>> precision = torch.linalg.inv(cov)
    >>> energy_fn = lambda x: 0.5 * ((x @ precision) * x).sum(dim=1)  # N(0, cov)
    >>> x = torch.ones(500, 2, dtype=torch.float64)
    >>> missing = torch.zeros(500, 2, dtype=torch.bool)
    >>> missing[:, 1] = True
    >>> rough = GaussianMixtureConditional.from_mixture(  # a wrong proposal: N(0, I)
    ...     torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None],
    ...     torch.ones(1, dtype=torch.float64), x, missing)
    >>> g = torch.Generator().manual_seed(0)
    >>> filled = impute(energy_fn, rough, n_steps=100, step_size=0.1, generator=g)
    >>> abs(float(filled[:, 1].mean()) - 0.8) < 0.02  # E[x₁ | x₀ = 1] = 0.8
    True
    >>> draws = impute(energy_fn, rough, n_steps=100, step_size=0.1, generator=g,
    ...                sample_posterior=True)
    >>> abs(float(draws[:, 1].var()) - 0.36) < 0.05  # Var[x₁ | x₀] = 1 - 0.8²
    True
    """
    x, missing = proposal.x, proposal.missing
    n, d = x.shape
    candidates = proposal.sample(n_proposals, generator)  # (n, P, d)
    with torch.no_grad():
        energies = energy_fn(candidates.reshape(n * n_proposals, d)).reshape(n, n_proposals)
        log_w = -energies - proposal.log_prob(candidates)
    # NaN weights count as impossible; a row with no possible candidate resamples uniformly
    log_w = torch.nan_to_num(log_w, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    log_w = torch.where(torch.isinf(log_w).all(dim=1, keepdim=True), 0.0, log_w)
    n_draws = 1 if sample_posterior else n_draws  # a draw is one chain's last state
    pick = torch.multinomial(torch.softmax(log_w, dim=1), n_draws, replacement=True,
                             generator=generator)  # (n, D)
    start = candidates[torch.arange(n, device=x.device)[:, None], pick].reshape(n * n_draws, d)
    fixed, gaps = x.repeat_interleave(n_draws, 0), missing.repeat_interleave(n_draws, 0)
    if move_starts is not None:
        start = move_starts(start, fixed, gaps)
    step = torch.full((n * n_draws, 1), float(step_size), dtype=x.dtype, device=x.device)
    chains = adaptive_mala(clamped(energy_fn, fixed, gaps), start, n_steps=n_steps,
                           step_size=step, generator=generator,
                           burn_in=None if sample_posterior else n_steps // 2)
    chains = chains.reshape(n, n_draws, d)
    filled = chains[:, 0] if sample_posterior else chains.mean(dim=1)
    return torch.where(missing, filled, x)
