"""The training objectives: where the paper maps to code.

Each objective is a callable ``(net, x_pos, generator) -> loss`` (score_sde's
``get_sde_loss_fn`` style), built once per call of ``fit`` from resolved settings; the
training loop only steps on it. All of them minimise the contrastive surrogate

    mean E(x_pos) - mean E(stopgrad(x_neg)) + λ (mean E(x_pos)² + mean E(x_neg)²)

and differ in the negatives ``x_neg`` (``DESIGN.md`` §1):

* :class:`CDObjective` — ``k`` Langevin steps on ``E`` from the data or a replay buffer
  (CD-k, persistent CD).
* :class:`DCDObjective` — a sample of the model posterior
  ``q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²))`` given data diffused to ``x_t``
  (:class:`PosteriorNegatives`).
* :class:`LadderObjective` — DCD between neighbouring levels of a time-conditional energy
  ``E(x, σ)``: positives at level ``σ``, negatives posterior samples given the level above.

Energies here are in standardised units; ``net`` is the training module (maybe compiled).
The parts of a step are labelled (``skdcd.noise``, ``skdcd.proposals``, ``skdcd.weights``,
``skdcd.chains``, ``skdcd.negatives``, ``skdcd.positives``, ``skdcd.guard``) for
:mod:`torch.profiler`; ``benchmarks/speed.py`` breaks a step down by them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function as part

from skdcd import diffusion as diff
from skdcd import samplers
from skdcd.diffusion import EnergyFn

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
WELL_PROBES = 64  # uniform points per step at which the well guard looks for spurious wells


@dataclass
class WellGuard:
    """``penalty · mean relu(min E(x_pos) - 1 - E(u))²`` over points ``u`` uniform in a box.

    No point of the box should sit more than 1 nat below every data point of the batch:
    posterior or short-run negatives, which stay near the data, never visit such a well, so
    nothing else in the loss pushes it back up. Zero when there is no such well.
    """

    penalty: float
    low: torch.Tensor  # (d,) the box's corner
    span: torch.Tensor  # (d,) its widths

    def __call__(self, net: EnergyFn, x_pos: torch.Tensor, e_pos: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        u = self.low + self.span * torch.rand((WELL_PROBES, self.low.shape[0]),
                                              generator=generator,
                                              device=self.low.device)  # (P, d)
        floor = e_pos.detach().min() - 1.0
        return self.penalty * torch.relu(floor - net(u)).pow(2).mean().float()


@dataclass
class LevelWellGuard:
    """The well guard of a time-conditional energy ``E(x, σ)``, one level per step.

    A box's uniform points almost never land in a well in many dimensions, and each level is
    its own density. Instead, at a level ``σ`` drawn log-uniformly over the ladder,
    ``WELL_PROBES`` probes start from the envelope diffused to ``σ`` (broad: it covers the
    space between the data) and take ``steps`` of unadjusted Langevin on ``E(·, σ)``, which
    carries them into any deep well nearby. The penalty is

        penalty · mean relu(mean E(x_σ, σ) - margin - E(u, σ)),

    ``x_σ`` as many rows of the batch diffused to ``σ``: no probe may sit far below the
    diffused data of its level. ``margin = 1 + d/2 + 3 sqrt(d/2)``: a model sample's energy
    lies below the data's mean by about ``d/2`` at a mode and by a few ``sqrt(d/2)`` across
    the typical set, so the guard leaves true modes alone and catches wells. Both sides
    carry gradient: a floor held fixed would let the penalty lift every energy together,
    the floor with them, without bound; the hinge is linear so that a deep well found late
    does not swamp the step.
    """

    penalty: float
    levels: tuple[float, float]  # the ladder's narrowest and widest level
    envelope: torch.nn.Module  # the EnvelopedEnergy: the probes' starting distribution
    steps: int = 5
    step_size: float = 0.1  # ULA step as a fraction of σ²

    def __call__(self, net: EnergyFn, x_pos: torch.Tensor, e_pos: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        n, d = min(WELL_PROBES, x_pos.shape[0]), x_pos.shape[1]
        low, high = self.levels
        # the level stays on the device: a Python float would sync a GPU every step
        u01 = torch.rand((), generator=generator, device=x_pos.device).double()
        sigma = (low * (high / low) ** u01).to(x_pos.dtype).expand(n, 1)
        x_sigma = diff.perturb(x_pos[:n], torch.ones_like(sigma), sigma, generator=generator)
        if self.envelope.envelope_std is None:  # no envelope: the data at the widest level
            start, spread = x_pos[:n], torch.full_like(sigma, high)
        else:
            start, spread = self.envelope.envelope_sample(n, 0.0, d, generator), sigma
        # the envelope diffused to σ is the envelope's draw plus N(0, σ² I)
        probes = diff.perturb(start.to(x_pos.dtype), torch.ones_like(sigma), spread,
                              generator=generator)

        def energy_fn(x: torch.Tensor) -> torch.Tensor:
            return net(x, sigma)

        probes = samplers.ula(energy_fn, probes, n_steps=self.steps,
                              step_size=self.step_size * sigma**2, generator=generator)
        floor = energy_fn(x_sigma).mean() - (1.0 + d / 2 + 3.0 * math.sqrt(d / 2))
        return self.penalty * torch.relu(floor - energy_fn(probes.detach())).mean().float()


@dataclass
class ContrastiveObjective(ABC):
    """The contrastive surrogate; subclasses say what the terms are.

    Parameters
    ----------
    energy_reg : float
        ``λ``, the weight of the energy-magnitude penalty.
    well : WellGuard, LevelWellGuard or None
        The spurious-well guard, added to the loss when given.
    """

    energy_reg: float
    well: WellGuard | LevelWellGuard | None

    def __call__(self, net: EnergyFn, x_pos: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """The loss of one batch ``x_pos`` (shape ``(B, d)``), a differentiable scalar."""
        e_pos, neg_mean, square = self.terms(net, x_pos, generator)
        e_pos = e_pos.float()
        loss = e_pos.mean() - neg_mean.float() + self.energy_reg * square.float()
        if self.well is not None:
            with part("skdcd.guard"):
                loss = loss + self.well(net, x_pos, e_pos, generator)
        return loss

    @abstractmethod
    def terms(self, net: EnergyFn, x_pos: torch.Tensor, generator: torch.Generator) -> Terms:
        """Positive energies ``(B,)``, the mean negative energy, and what ``λ`` weighs."""

    def fitted_state(self) -> dict:
        """Estimator attributes that the objective updated during training (none here)."""
        return {}

    def checkpoint(self) -> None:
        """Mark the start of an epoch, which :meth:`rollback` returns to (nothing here)."""
        return None

    def rollback(self) -> None:
        """Undo what the objective changed since :meth:`checkpoint` (nothing here)."""
        return None


@dataclass
class _MarginalObjective(ContrastiveObjective):
    """Terms of an energy ``E(x)``: positives, and negatives from :meth:`negative_energies`."""

    def terms(self, net: EnergyFn, x_pos: torch.Tensor, generator: torch.Generator) -> Terms:
        neg_mean, neg_sq = self.negative_energies(net, x_pos, generator)
        with part("skdcd.positives"):
            e_pos = net(x_pos)  # (B,)
        return e_pos, neg_mean, e_pos.pow(2).mean() + neg_sq

    @abstractmethod
    def negative_energies(self, net: EnergyFn, x_pos: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable mean energy and mean squared energy of the batch's negatives."""


@dataclass
class CDObjective(_MarginalObjective):
    """Contrastive divergence: negatives are ``n_steps`` of ULA on ``E`` (Hinton, 2002).

    Chains start at the data, or, when ``persistent``, at a replay buffer of earlier
    negatives (Tieleman, 2008), each restarting from the Gaussian base with probability
    ``reinit_prob``. ``buffer`` is the replay buffer (on the CPU), drawn from the base at
    the first persistent step and updated in place.
    """

    n_steps: int = 10
    step_size: float = 0.003
    persistent: bool = False
    buffer_size: int = 10000
    reinit_prob: float = 0.05
    base_mean: torch.Tensor | None = None  # (d,) the Gaussian base of restarts
    base_std: torch.Tensor | None = None
    buffer: torch.Tensor | None = None
    # (rows, their values) overwritten since the last checkpoint, newest last
    _undo: list | None = field(default=None, init=False, repr=False)
    _undrawn: bool = field(default=False, init=False, repr=False)

    def _base_draw(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        mean, std = self.base_mean.to(device), self.base_std.to(device)
        return mean + std * torch.randn((n, mean.numel()), generator=generator, device=device)

    def negatives(self, net: EnergyFn, x_pos: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        """Negatives for the batch ``x_pos``, detached, shape ``(B, d)``."""
        device, n = x_pos.device, x_pos.shape[0]
        if not self.persistent:
            start = x_pos
        else:
            if self.buffer is None:  # kept on the CPU so that the estimator pickles anywhere
                self.buffer = self._base_draw(self.buffer_size, generator, device).cpu()
            idx = torch.randint(self.buffer.shape[0], (n,), generator=generator,
                                device=device).cpu()
            start = self.buffer[idx].to(device)  # (B, d)
            restart = torch.rand((n, 1), generator=generator, device=device) < self.reinit_prob
            start = torch.where(restart, self._base_draw(n, generator, device), start)
        with part("skdcd.chains"):
            x_neg = samplers.ula(net, start, n_steps=self.n_steps, step_size=self.step_size,
                                 generator=generator)
        if self.persistent:
            if self._undo is not None and not self._undrawn:
                self._undo.append((idx, self.buffer[idx].clone()))
            self.buffer[idx] = x_neg.detach().cpu()
        return x_neg

    def fitted_state(self) -> dict:
        """The replay buffer, which outlives the fit."""
        return {"_buffer": self.buffer}

    def checkpoint(self) -> None:
        """Start an undo log of the replay buffer's rows (no copy of the whole buffer)."""
        self._undo, self._undrawn = [], self.buffer is None

    def rollback(self) -> None:
        """Put back the replay buffer's rows that changed since :meth:`checkpoint`."""
        if self._undo is None:
            return
        if self._undrawn:
            self.buffer = None
        else:
            for idx, rows in reversed(self._undo):
                self.buffer[idx] = rows
        self._undo = []

    def negative_energies(self, net, x_pos, generator):
        """Mean and mean squared energy of :meth:`negatives`."""
        x_neg = self.negatives(net, x_pos, generator).detach()
        with part("skdcd.negatives"):
            e_neg = net(x_neg)  # (B,)
        return e_neg.mean(), e_neg.pow(2).mean()


@dataclass
class PosteriorNegatives:
    """Samples of the model posterior ``q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²))``.

    Parameters
    ----------
    sampler : {"importance", "langevin", "mala", "laplace"}
        Self-normalised importance weights of ``n_proposals``
        :func:`~skdcd.samplers.laplace_proposals` (MCMC-free), ``steps`` of ULA or MALA
        with a step of ``step_size · σ²/α²``, or one Laplace step.
    steps, step_size : int, float
        The chains' length and relative step.
    n_proposals : int
        Proposals per example (importance).
    n_negatives : int or None
        Importance: proposals per example resampled with their weights and
        back-propagated; ``None``: every proposal, weighted.
    """

    sampler: str
    steps: int
    step_size: float
    n_proposals: int
    n_negatives: int | None

    def energies(self, energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor,
                 sigma: torch.Tensor, generator: torch.Generator,
                 start: torch.Tensor | None = None, data: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable mean energy and mean squared energy of the negatives.

        ``data``, the clean batch, lends the importance sampler proposals where it lies;
        ``start`` is where chains start (default ``x_t / α``).
        """
        if self.sampler != "importance":
            with part("skdcd.chains"):
                x_neg = self.draw(energy_fn, x_t, alpha, sigma, generator, start, data).detach()
            with part("skdcd.negatives"):
                e_neg = energy_fn(x_neg)  # (B,)
            return e_neg.mean(), e_neg.pow(2).mean()
        with part("skdcd.proposals"):
            proposals, log_ratio = samplers.laplace_proposals(
                energy_fn, x_t, alpha, sigma, n_proposals=self.n_proposals,
                generator=generator, data=data)  # (B, M, d), (B, M)
        batch, n_prop, d = proposals.shape
        flat = proposals.reshape(batch * n_prop, d)
        if self.n_negatives is None:
            # Σ_j w_j E(x'_j), w = softmax(-E - log r/N): one forward pass gives both
            with part("skdcd.negatives"):
                energies = energy_fn(flat).reshape(batch, n_prop)
            weights = samplers.importance_weights(energies + log_ratio)  # detached
            return ((weights * energies).sum(dim=1).mean(),
                    (weights * energies.pow(2)).sum(dim=1).mean())
        # the weights need only a forward pass; K systematic draws keep Σ_j w_j E(x'_j) in
        # expectation, and a proposal of weight w is drawn ⌊K w⌋ times at least
        with part("skdcd.weights"), torch.no_grad():
            energies = energy_fn(flat).reshape(batch, n_prop)
            weights = samplers.importance_weights(energies + log_ratio)
            pick = samplers.systematic_resample(weights.log(), generator,
                                                n_draws=self.n_negatives)  # (B, K)
        rows = torch.arange(batch, device=x_t.device).unsqueeze(1)
        with part("skdcd.negatives"):
            e_neg = energy_fn(proposals[rows, pick].reshape(-1, d))  # (B K,) in row blocks
        return e_neg.mean(), e_neg.pow(2).mean()

    def draw(self, energy_fn: EnergyFn, x_t: torch.Tensor, alpha: torch.Tensor,
             sigma: torch.Tensor, generator: torch.Generator,
             start: torch.Tensor | None = None,
             data: torch.Tensor | None = None) -> torch.Tensor:
        """One posterior sample per row of ``x_t``, shape ``(B, d)``."""
        if self.sampler == "importance":
            return samplers.importance_posterior(energy_fn, x_t, alpha, sigma,
                                                 n_proposals=self.n_proposals,
                                                 generator=generator, data=data)
        if self.sampler == "laplace":
            return samplers.laplace_posterior(energy_fn, x_t, alpha, sigma, generator=generator)

        def posterior(x: torch.Tensor) -> torch.Tensor:
            return diff.posterior_energy(energy_fn, x, x_t, alpha, sigma)

        mcmc = samplers.ula if self.sampler == "langevin" else samplers.mala
        return mcmc(posterior, x_t / alpha if start is None else start, n_steps=self.steps,
                    step_size=self.step_size * (sigma / alpha) ** 2, generator=generator)


@dataclass
class DCDObjective(_MarginalObjective):
    """Diffusion contrastive divergence of a marginal energy ``E(x)`` (Luo et al., 2023).

    Each example is diffused by the kernel ``N(α x, σ² I)`` at a level drawn by
    :func:`~skdcd.diffusion.sample_noise_levels` (``noise_std``, plus the ``wide`` levels),
    and its negative is a posterior sample given the result.
    """

    diffusion: str = "ve"
    noise_std: float | tuple[float, float] = 0.1
    wide: tuple[float, float, float] | None = None
    posterior: PosteriorNegatives | None = None
    data_proposals: bool = False  # the batch's rows lend the importance sampler proposals

    def noised(self, x_pos: torch.Tensor, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x_t`` ``(B, d)`` of the batch, with the kernel's ``α`` and ``σ`` ``(B, 1)``."""
        sigma = diff.sample_noise_levels(x_pos.shape[0], self.noise_std, generator=generator,
                                         device=x_pos.device, dtype=x_pos.dtype,
                                         wide=self.wide)  # (B, 1)
        alpha = diff.alpha_from_sigma(sigma, self.diffusion)  # (B, 1)
        return diff.perturb(x_pos, alpha, sigma, generator=generator), alpha, sigma

    def negative_energies(self, net, x_pos, generator):
        """Mean and mean squared energy of posterior negatives given the diffused batch."""
        with part("skdcd.noise"):
            x_t, alpha, sigma = self.noised(x_pos, generator)
        # the batch's rows lend proposals that reach narrow modes at the wide levels
        data = x_pos if self.data_proposals else None
        return self.posterior.energies(net, x_t, alpha, sigma, generator, data=data)


@dataclass
class LadderObjective(ContrastiveObjective):
    """DCD between neighbouring levels of a time-conditional energy ``E(x, σ)`` (VE).

    Each example's level ``σ`` is log-uniform over the ladder's span and is contrasted with
    ``σ r``, one rung higher (``r = σ_1 / σ_0``): the negative is a posterior sample of
    level ``σ`` given the example diffused on to ``σ r``. Levels between the rungs are
    trained too, so that the network is no guess between them.

    Parameters
    ----------
    levels : torch.Tensor
        The noise ladder, increasing.
    posterior : PosteriorNegatives
        How the negatives are drawn.
    envelope : skdcd.networks.EnvelopedEnergy
        The energy module itself (not a compiled view): its envelope lends chains their
        start above the ladder and their spread.
    """

    levels: tuple[float, ...] = ()
    posterior: PosteriorNegatives | None = None
    envelope: torch.nn.Module | None = None

    def terms(self, net, x_pos, generator):
        """Energies at level ``σ``; what ``λ`` weighs is divided by ``sqrt(d / 2)``."""
        low, high = self.levels[0], self.levels[-1]
        u = torch.rand((x_pos.shape[0], 1), generator=generator, device=x_pos.device,
                       dtype=x_pos.dtype)
        sigma = low * (high / low) ** u  # (B, 1)
        sigma_up = sigma * (self.levels[1] / self.levels[0])  # (B, 1)
        with part("skdcd.noise"):
            x_i = diff.perturb(x_pos, torch.ones_like(sigma), sigma, generator=generator)
            delta = torch.sqrt(sigma_up**2 - sigma**2)  # (B, 1) kernel from level i to i + 1
            x_up = diff.perturb(x_i, torch.ones_like(sigma), delta, generator=generator)

        def energy_fn(x: torch.Tensor) -> torch.Tensor:  # E(·, σ_i); proposals come in blocks
            return net(x, sigma.repeat_interleave(x.shape[0] // sigma.shape[0], dim=0))

        start = None
        if self.posterior.sampler in ("langevin", "mala"):
            with part("skdcd.chains"):
                start = self._chain_start(net, x_up, sigma, sigma_up, delta, generator)
        neg_mean, neg_sq = self.posterior.energies(energy_fn, x_up, torch.ones_like(delta),
                                                   delta, generator, start=start)
        with part("skdcd.positives"):
            e_pos = energy_fn(x_i)  # (B,)
        # the spread of E over the diffused data is about sqrt(d / 2) at every level, and a
        # level's DCD moves with it while the penalty grows with its square: dividing keeps
        # energy_reg's pull against the fit the same in every dimension
        spread = math.sqrt(x_pos.shape[1] / 2)
        return e_pos, neg_mean, (e_pos.pow(2).mean() + neg_sq) / spread

    def _chain_start(self, net, x_up, sigma, sigma_up, delta, generator) -> torch.Tensor:
        """Tweedie's ``E[x_i | x_up] = x_up - δ² ∇E(x_up, σ r)`` plus the posterior's spread.

        Above the ladder, where nothing is trained, the gradient is the envelope's. Started
        at the mean itself, a mode, MALA in many dimensions rejects most moves and leaves
        negatives too concentrated, which trains every wide level too wide.
        """
        envelope = self.envelope
        _, grad = samplers.energy_and_grad(lambda x: net(x, sigma_up), x_up)
        above = sigma_up.squeeze(1) > self.levels[-1]  # (B,) the few rows above the ladder
        if above.any():
            if envelope.envelope_std is None:
                grad_top = torch.zeros_like(x_up[above])
            else:
                var_top = sigma_up[above].squeeze(1).pow(2)
                _, grad_top = samplers.energy_and_grad(
                    lambda x: envelope._envelope(x, var_top), x_up[above])
            grad = grad.index_put((above,), grad_top)
        mean = x_up - delta**2 * grad
        return mean + envelope.envelope_posterior_noise(x_up, sigma, delta, generator)
