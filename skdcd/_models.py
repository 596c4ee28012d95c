"""The fitted model's maths: chunked energies, log Z, sampling, imputing and denoising.

Everything here is in standardised units; the estimators' :class:`skdcd._inference.InferenceMixin`
validates and converts. A fitted model is a
:class:`Model` (an energy ``E(x)``) or a :class:`LadderModel` (a time-conditional energy
``E(x, σ)`` with its noise ladder): the estimator picks the kind once, and the kind alone
decides how to sample and denoise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from skdcd import conditional, partition, samplers
from skdcd._progress import ProgressBar, anneal_callback
from skdcd._utils import (
    fill_in_chunks,
    generator_from_random_state,
    seeded_generator,
)
from skdcd.networks import AtNoiseLevel

# rows per chunk, so that memory stays flat in the number of rows: without autograd
# (energies, quadrature) and with it (sampling, denoising)
EVAL_BATCH = 8192
GRAD_BATCH = 4096
DENOISE_METHODS = ("auto", "posterior_mean", "map", "tweedie")
PROBES = 256  # draws of the data's Gaussian at which the model's local width is measured
# the annealing base's std over the larger of the data's and the model's: wider than both,
# and not so wide that d dimensions of mismatch exhaust the temperatures
BASE_WIDEN = 1.2
# imputation's data proposals: kernels of this width (standardised units) around the
# nearest of the donor rows
DONORS, DONOR_BANDWIDTH = 32, 0.1
IMPUTE_TOP = 1.0  # time-conditional imputation anneals from the level nearest the data's std


@dataclass
class Model:
    """A fitted energy ``E(x)`` and the settings its inference uses.

    Parameters
    ----------
    net : skdcd.networks.EnvelopedEnergy
        The fitted energy (left untouched: inference works on frozen copies).
    device : torch.device
        Where to compute.
    base_mean, base_std : ndarray of shape (n_features,)
        The mean and std of the training data.
    base_mixture : tuple of ndarray or None
        Means, covariances and weights of a Gaussian mixture fitted to the training data
        (:meth:`~skdcd.partition.MixtureProposal.fit_params`), the start of annealing;
        ``None`` (models fitted before it existed): one Gaussian of ``base_std``.
    z_low, z_high : ndarray of shape (n_features,)
        The training data's box.
    sample_steps : int
        Temperatures of SMC sampling and AIS' progress; MCMC steps of denoising.
    sample_step_size : float
        Initial MALA step of sampling, AIS and denoising.
    seed : int
        The fitted model's seed: log Z and the annealing base are properties of the model,
        computed with generators derived from it.
    name : str
        The estimator's name, for progress bars.
    verbose : int
        Show progress bars when positive.
    """

    net: torch.nn.Module
    device: torch.device
    base_mean: np.ndarray
    base_std: np.ndarray
    z_low: np.ndarray
    z_high: np.ndarray
    sample_steps: int
    sample_step_size: float
    base_mixture: tuple | None = None
    seed: int = 0
    name: str = ""
    verbose: int = 0
    # annealing bases by (widen, dtype): deterministic, and sample() needs one per chunk
    _bases: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ the energy
    def _frozen(self, dtype: torch.dtype) -> torch.nn.Module:
        module = copy.deepcopy(self.net).to(device=self.device, dtype=dtype).eval()
        module.requires_grad_(False)
        return module

    def module(self, dtype: torch.dtype) -> torch.nn.Module:
        """A frozen copy of the energy of the data, ``x ↦ E(x)``, in ``dtype``."""
        return self._frozen(dtype)

    def energies(self, Z: np.ndarray) -> np.ndarray:
        """``E`` of each row of ``Z``, in float64 (batched and row-wise results agree)."""
        net = self.module(torch.float64)
        with torch.no_grad():
            return fill_in_chunks(np.empty(len(Z)), EVAL_BATCH, lambda a, b: net(
                torch.as_tensor(Z[a:b], dtype=torch.float64, device=self.device)).cpu().numpy())

    def annealing_base(self, widen: float = 0.0,
                       dtype: torch.dtype = torch.float64) -> partition.MixtureProposal:
        """The density annealing starts from, in ``dtype`` (standardised units).

        The mixture fitted to the training data, each component at least as wide as the
        model allows (:func:`~skdcd.partition.local_variance`, at draws of the mixture)
        along every feature, blurred by ``widen`` and widened by ``BASE_WIDEN``
        (:meth:`~skdcd.partition.MixtureProposal.from_params`): wider than the model in
        every direction, also where the data are constant. Computed once per model.
        """
        key = (float(widen), dtype)
        if key not in self._bases:
            self._bases[key] = self._annealing_base(widen, dtype)
        return self._bases[key]

    def _annealing_base(self, widen: float, dtype: torch.dtype) -> partition.MixtureProposal:
        means, covs, weights = self.base_mixture or (
            self.base_mean[None], self.base_std[None] ** 2, np.ones(1))
        d = means.shape[1]
        covs = covs + widen**2 * (np.ones(d) if covs.ndim == 2 else np.eye(d))
        generator = seeded_generator((self.seed, 2), self.device)
        probes = partition.MixtureProposal.from_params(
            means, covs, weights, widen=1.0, device=self.device).sample(PROBES, generator)
        floor = partition.local_variance(self.module(torch.float64), probes,
                                         generator=generator).cpu().numpy()
        return partition.MixtureProposal.from_params(means, covs, weights, floor=floor,
                                                     widen=BASE_WIDEN, dtype=dtype,
                                                     device=self.device)

    def log_partition(self, method: str, *, n_grid: int, n_particles: int,
                      n_steps: int) -> partition.LogPartitionEstimate:
        """``log Z`` by ``"quadrature"`` or ``"ais"``, with its error and ESS."""
        net = self.module(torch.float64)
        if method == "quadrature":
            margin = 0.5 * (self.z_high - self.z_low) + 1.0
            log_z, _ = partition.log_partition_quadrature(
                net, self.z_low - margin, self.z_high + margin, n_grid=n_grid,
                device=self.device, batch_size=EVAL_BATCH)
            return partition.LogPartitionEstimate(log_z, 0.0, math.nan, n_grid ** len(margin))
        generator = seeded_generator((self.seed, 1), self.device)
        with ProgressBar(n_steps, f"{self.name} log Z (AIS)", self.verbose) as bar:
            return self._ais(net, n_particles, n_steps, generator, anneal_callback(bar))

    def _ais(self, net, n_particles: int, n_steps: int, generator: torch.Generator,
             callback) -> partition.LogPartitionEstimate:
        """AIS from :meth:`annealing_base`."""
        result = partition.log_partition_from(
            net, self.annealing_base(), n_particles=n_particles, n_steps=n_steps,
            step_size=self.sample_step_size, generator=generator, callback=callback)
        return partition.estimate_from_log_weights(result.log_weights)

    def log_partition_check(self, n_samples: int, n_steps: int) -> partition.LogPartitionEstimate:
        """An independent ``log Z``: AIS from a mixture fitted to samples of the model.

        The base is a Gaussian mixture fitted to ``n_samples`` samples of the model (SMC or
        recovery sampling, not the training data), widened
        (:meth:`~skdcd.partition.MixtureProposal.fit`), and annealed geometrically to the
        model in ``n_steps``: another base, another path and other particles than
        :meth:`log_partition`'s, so where the two agree within their errors both are
        likely right.
        """
        samples = torch.as_tensor(self.sample(n_samples, seeded_generator((self.seed, 3),
                                                                          self.device)))
        proposal = partition.MixtureProposal.fit(samples.to(self.device), random_state=self.seed)
        result = partition.log_partition_from(
            self.module(torch.float64), proposal, n_particles=n_samples, n_steps=n_steps,
            step_size=self.sample_step_size, generator=seeded_generator((self.seed, 4),
                                                                        self.device))
        return partition.estimate_from_log_weights(result.log_weights)

    # ------------------------------------------------------------------ sampling
    def sample_work(self) -> int:
        """Progress-bar units of one chunk of :meth:`sample`."""
        return self.sample_steps

    def sample(self, n_samples: int, generator: torch.Generator) -> np.ndarray:
        """``n_samples`` samples, shape ``(n_samples, n_features)``.

        Independent runs of at most ``GRAD_BATCH`` particles keep memory flat.
        """
        net = self.module(torch.float32)
        n_chunks = -(-n_samples // GRAD_BATCH)
        with ProgressBar(self.sample_work() * n_chunks, f"{self.name} sample",
                         self.verbose) as bar:
            return fill_in_chunks(
                np.empty((n_samples, len(self.base_mean))), GRAD_BATCH,
                lambda a, b: self.sample_chunk(net, b - a, generator, bar).double()
                .cpu().numpy())

    def sample_chunk(self, net: torch.nn.Module, n_samples: int, generator: torch.Generator,
                     bar: ProgressBar) -> torch.Tensor:
        """Sequential Monte Carlo from the Gaussian base to ``exp(-E)``."""
        return self._smc(net, n_samples, generator, anneal_callback(bar))

    def _smc(self, net, n_samples: int, generator: torch.Generator, callback,
             widen: float = 0.0) -> torch.Tensor:
        """SMC from the training data's Gaussian, blurred by ``widen`` and broadened."""
        device = generator.device
        n_particles = max(n_samples, 1024)
        base = self.annealing_base(widen, dtype=torch.float32)
        result = partition.log_partition_from(
            net, base, n_particles=n_particles,
            n_steps=self.sample_steps, step_size=self.sample_step_size, generator=generator,
            resample=True, callback=callback)
        x = result.x[samplers.systematic_resample(result.log_weights, generator)]
        # systematic resampling orders particles by ancestor: shuffle before truncating
        x = x[torch.randperm(n_particles, generator=generator, device=device)[:n_samples]]
        # a few exact MCMC moves at β = 1 separate the copies that resampling made
        step = samplers.tune_mala_step(net, x, self.sample_step_size, generator)
        return samplers.mala(net, x, n_steps=max(1, self.sample_steps // 10), step_size=step,
                             generator=generator).detach()

    # ------------------------------------------------------------------ imputation
    def impute(self, Z: np.ndarray, missing: np.ndarray, n_draws: int,
               sample_posterior: bool, random_state=None,
               donors: np.ndarray | None = None) -> np.ndarray:
        """``Z`` with its ``missing`` entries drawn from the model's conditional (or its mean).

        Proposals from the annealing base's conditional (a mixture fitted to the training
        data, as wide as the model allows) and, given ``donors`` (complete rows), from
        kernels around the nearest donors; importance-resampled and refined by MALA
        (:func:`skdcd.conditional.impute`, ``sample_steps`` moves).
        """
        net = self.module(torch.float64)
        means, covs, weights = self._impute_mixture(net)
        generator = generator_from_random_state(random_state, self.device)
        d = Z.shape[1]
        rows = (None if donors is None
                else torch.as_tensor(donors, dtype=torch.float64, device=self.device))
        # padded d × d matrices per row and component (and per proposal when drawing):
        # bounded memory
        square = d if covs.ndim == 2 else d * d
        batch = max(1, min(GRAD_BATCH // n_draws,
                           (1 << 24) // (max(len(weights), conditional.N_PROPOSALS) * square)))
        moves = self._impute_moves(net, generator)

        def chunk(a: int, b: int) -> np.ndarray:
            x = torch.as_tensor(Z[a:b], dtype=torch.float64, device=self.device)
            gaps = torch.as_tensor(missing[a:b], device=self.device)
            proposal = conditional.GaussianMixtureConditional.from_mixture(
                means, covs, weights, x, gaps)
            if rows is not None:
                proposal = conditional.ProposalMixture((proposal, conditional.DonorKernels.nearest(
                    rows, x, gaps, DONORS, DONOR_BANDWIDTH)))
            return conditional.impute(
                net, proposal, n_steps=self.sample_steps, step_size=self.sample_step_size,
                generator=generator, n_draws=n_draws, sample_posterior=sample_posterior,
                move_starts=moves).cpu().numpy()

        return fill_in_chunks(np.empty_like(Z), batch, chunk)

    def _impute_moves(self, net: torch.nn.Module, generator: torch.Generator):
        """What moves imputation's chain starts before MALA (``None``: nothing)."""
        return None

    def _impute_mixture(self, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
        """Imputation's mixture proposal (means, covariances, weights): the annealing base."""
        base = self.annealing_base(0.0, torch.float64)
        covs = base.chol.pow(2) if base.diagonal else base.chol @ base.chol.mT
        return base.means, covs, base.log_weights.exp()

    # ------------------------------------------------------------------ denoising
    def denoise_method(self, method: str, var: np.ndarray) -> str:
        """``method`` with ``"auto"`` resolved for noise of variance ``var`` (per feature)."""
        if method == "tweedie":
            raise ValueError("method='tweedie' needs a time-conditional model "
                             "(DCDEnergyEstimator(time_conditional=True)).")
        return "posterior_mean" if method == "auto" else method

    def denoise(self, Z: np.ndarray, var: np.ndarray, method: str,
                random_state=None) -> np.ndarray:
        """Clean rows estimated from ``Z = clean + N(0, diag(var))``."""
        net = self.module(torch.float64)  # MAP's descent compares energies closer than float32
        method = self.denoise_method(method, var)
        s2 = torch.as_tensor(var, dtype=torch.float64, device=self.device)
        generator = (generator_from_random_state(random_state, self.device)
                     if method == "posterior_mean" else None)

        def chunk(a: int, b: int) -> np.ndarray:
            y = torch.as_tensor(Z[a:b], dtype=torch.float64, device=self.device)
            if method == "tweedie":
                return tweedie(net, y, s2).cpu().numpy()
            return posterior_estimate(net, y, s2, method, self.sample_steps,
                                      generator).cpu().numpy()

        return fill_in_chunks(np.empty_like(Z), GRAD_BATCH, chunk)


@dataclass
class LadderModel(Model):
    """A fitted time-conditional energy ``E(x, σ)``: the data's model is its narrowest level.

    Parameters
    ----------
    levels : ndarray
        The noise ladder, increasing.
    recovery_steps : int
        MALA moves per level of recovery sampling.
    recovery_step_size : float
        Their initial step, as a fraction of each level's posterior variance.
    """

    levels: np.ndarray | None = None
    recovery_steps: int = 20
    recovery_step_size: float = 0.5

    def module(self, dtype: torch.dtype) -> torch.nn.Module:
        """A frozen copy of the narrowest level, ``x ↦ E(x, σ_min)``."""
        return AtNoiseLevel(self._frozen(dtype), float(self.levels[0]))

    def _ais(self, net, n_particles, n_steps, generator, callback):
        """AIS from the envelope at the narrowest level, to the model at that level.

        The envelope diffused to ``σ_min`` is a normalised Gaussian mixture that can be
        drawn from exactly, and the model there is the envelope plus the network's
        correction ``f(x, σ_min) / σ_min²``, which a geometric path anneals in. (A path down
        the noise ladder from the widest level must contract the particles by the ratio of
        the levels, which one MALA move per temperature cannot follow.) Without an
        envelope, the data's mixture blurred by ``σ_min`` is the base.
        """
        energy, d = net.energy, len(self.base_mean)
        bottom = float(self.levels[0])
        if energy.envelope_std is None:
            result = partition.log_partition_from(
                net, self.annealing_base(widen=bottom), n_particles=n_particles,
                n_steps=n_steps, step_size=self.sample_step_size, generator=generator,
                callback=callback)
            return partition.estimate_from_log_weights(result.log_weights)
        log_z0 = energy.envelope_log_normalizer(bottom**2, d)

        def path_energy(x: torch.Tensor, beta: float) -> torch.Tensor:
            base = energy._envelope(x, bottom**2) + log_z0  # a normalised density's energy
            return base if beta == 0.0 else (1 - beta) * base + beta * net(x)

        result = samplers.anneal_path(
            path_energy, energy.envelope_sample(n_particles, bottom**2, d, generator),
            samplers.sigmoid_schedule(n_steps).tolist(), step_size=self.sample_step_size,
            generator=generator, resample=False, callback=callback)
        return partition.estimate_from_log_weights(result.log_weights)

    def _impute_mixture(self, net: AtNoiseLevel) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
        """The model's own envelope at the narrowest level, where it has a mixture one."""
        level = net
        net = level.energy  # the frozen E(x, σ) behind the narrowest level's view
        if net.envelope_std is None or not net.directions.numel():
            return super()._impute_mixture(level)
        d, s2 = len(self.base_mean), float(self.levels[0]) ** 2
        u = net.directions
        eye = torch.eye(d, dtype=u.dtype, device=u.device)
        covs = (torch.einsum("kdj,kj,kej->kde", u, net.variances, u)
                + net.residual_variance[:, None, None] * (eye - u @ u.mT) + s2 * eye)
        return net.center, covs, net.log_weights.exp()

    def _impute_moves(self, net: AtNoiseLevel, generator: torch.Generator):
        """Anneal the starts down the ladder from the data's scale (``IMPUTE_TOP``).

        Each start is noised to the highest level at most ``IMPUTE_TOP`` (standardised
        units) and recovered level by level (:func:`~skdcd.samplers.recovery_sample`), the
        observed coordinates on a forward noise path (:func:`~skdcd.conditional.
        clamped_ladder`): the wide levels let the chains cross between modes that the
        narrowest level's wells keep apart.
        """
        levels = [float(s) for s in self.levels if s <= IMPUTE_TOP][::-1]  # descending
        if len(levels) < 2:
            return None
        energy = net.energy

        def move(start: torch.Tensor, x: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(start.shape, generator=generator, dtype=start.dtype,
                                device=start.device)
            top = math.sqrt(levels[0] ** 2 - levels[-1] ** 2)
            y = torch.where(gaps, start + top * noise, start)
            return samplers.recovery_sample(
                conditional.clamped_ladder(energy, x, gaps, levels[-1], generator), y,
                levels, n_steps=self.recovery_steps, step_size=self.recovery_step_size,
                generator=generator)

        return move

    def sample_work(self) -> int:
        """SMC's temperatures and one unit per level of recovery."""
        return self.sample_steps + len(self.levels) - 1

    def sample_chunk(self, net, n_samples, generator, bar):
        """SMC at the widest level, then recovery sampling down the ladder."""
        energy = net.energy  # the full E(x, σ) behind the narrowest level's view
        top = float(self.levels[-1])
        x = self._smc(AtNoiseLevel(energy, top), n_samples, generator, anneal_callback(bar),
                      widen=top)
        return samplers.recovery_sample(
            energy, x, self.levels[::-1].tolist(), n_steps=self.recovery_steps,
            step_size=self.recovery_step_size, generator=generator,
            start_noise=energy.envelope_posterior_noise, callback=lambda k, x: bar.update(1),
        ).detach()

    def denoise_method(self, method, var):
        """Tweedie where the noise is isotropic and within the ladder, unless told otherwise."""
        if method in ("posterior_mean", "map"):
            return method
        sigma = float(np.sqrt(var.max()))
        isotropic = np.ptp(var) <= 1e-9 * var.max()
        inside = self.levels[0] * (1 - 1e-9) <= sigma <= self.levels[-1] * (1 + 1e-9)
        if isotropic and inside:
            return "tweedie"
        if method == "auto":
            return "posterior_mean"
        raise ValueError(
            f"method='tweedie' needs noise of the same standard deviation in every standardised "
            f"feature (true with image_shape) inside the noise ladder [{self.levels[0]:.3g}, "
            f"{self.levels[-1]:.3g}]; got {sigma:.3g}"
            + ("" if isotropic else " and features of different scales") + ".")


def tweedie(net: AtNoiseLevel, y: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Tweedie's posterior mean ``y - σ² ∇ₓE(y, σ)`` at the noise's own level ``σ``."""
    level = AtNoiseLevel(net.energy, float(torch.sqrt(s2[0])))
    _, grad = samplers.energy_and_grad(level, y)
    return (y - s2 * grad).detach()


def posterior_estimate(net: torch.nn.Module, y: torch.Tensor, s2: torch.Tensor, method: str,
                       n_steps: int, generator: torch.Generator | None) -> torch.Tensor:
    """Mean (a MALA chain's average) or mode of ``q(x | y) ∝ exp(-E(x) - ‖y - x‖² / 2s²)``."""
    def posterior(z: torch.Tensor) -> torch.Tensor:
        return net(z) + ((y - z).pow(2) / (2.0 * s2)).sum(dim=1)

    # the posterior is no wider than the noise, nor (roughly) than the unit-scale prior
    step0 = 0.1 * min(float(s2.min()), 1.0)
    if method == "map":
        return minimise_rowwise(posterior, y, step0, n_steps).detach().double()
    step = torch.full((y.shape[0], 1), step0, dtype=y.dtype, device=y.device)  # (n, 1)
    return samplers.adaptive_mala(posterior, y, n_steps=n_steps, step_size=step,
                                  generator=generator, burn_in=n_steps // 2).double()


def minimise_rowwise(energy_fn, x: torch.Tensor, step_size: float,
                     n_steps: int) -> torch.Tensor:
    """Gradient descent with a backtracking step per row; each row's energy never rises."""
    step = torch.full((x.shape[0], 1), step_size, dtype=x.dtype, device=x.device)  # (n, 1)
    energy, grad = samplers.energy_and_grad(energy_fn, x)
    for _ in range(n_steps):
        candidate = x - step * grad
        energy_new, grad_new = samplers.energy_and_grad(energy_fn, candidate)
        better = energy_new < energy  # (n,)
        keep = better.unsqueeze(1)
        x = torch.where(keep, candidate, x)
        energy = torch.where(better, energy_new, energy)
        grad = torch.where(keep, grad_new, grad)
        step = torch.where(keep, step * 1.2, step * 0.5)
    return x
