"""DCDEnergyEstimator: an EBM trained by Diffusion Contrastive Divergence."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from skdcd import diffusion as diff
from skdcd import samplers
from skdcd._base import BaseEnergyEstimator

_PARAMS_DOC = """
    hidden_layer_sizes : tuple of int, default=(128, 128, 128)
        Hidden widths of the default MLP energy.
    activation : {"silu", "softplus", "tanh", "gelu", "elu", "relu"}, default="silu"
        Activation of the default MLP; smooth ones suit Langevin samplers.
    energy_net : callable or None, default=None
        ``n_features -> torch.nn.Module`` building a custom energy network that maps
        ``(n, n_features)`` float32 tensors to ``(n,)`` or ``(n, 1)``. Overrides
        ``hidden_layer_sizes`` and ``activation``.
    learning_rate : float, default=1e-2
        Adam learning rate (the peak of the cosine schedule). With
        ``lr_schedule="constant"`` (and in ``partial_fit``) a smaller one, e.g. ``1e-3``,
        is steadier.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        Cosine decay to zero over one call of ``fit``, or constant.
    batch_size : int, default=256
        Minibatch size (capped at the number of samples).
    max_iter : int or "auto", default="auto"
        Number of epochs. ``"auto"`` picks enough epochs for about 2,000 steps.
    energy_reg : float, default={energy_reg}
        Weight ``λ`` of the penalty ``λ (E(x_pos)² + E(x_neg)²)`` that keeps energies
        bounded; without it training can diverge.
    max_grad_norm : float or None, default=None
        Clip the global norm of each step's gradient to this value; ``None`` does not
        clip. Whatever it is, a non-finite loss or gradient stops ``fit`` and rolls the
        weights and optimizer state back to the start of the epoch in which it happened;
        a ``ConvergenceWarning`` then says so. If that epoch was the model's first, there
        is nothing to roll back to and ``fit`` raises ``ValueError``, leaving the estimator
        unfitted.
    envelope_std : float or None, default=3.0
        ``τ`` of the Gaussian envelope ``‖z‖² / (2τ²)`` added to every energy (standardised
        units) so that ``exp(-E)`` is integrable. ``None`` disables it.
    clip_margin : float or None, default=1.0
        The network sees each feature clipped to the training range widened by this many
        standardised units; beyond that box only the envelope varies. Without it a network
        can fall linearly far from the data, where no negative sample looks, into a spurious
        mode that takes the mass (without clipping, 5 of 36 default fits on the 2-D toys of
        ``benchmarks/`` broke this way). ``None`` disables the clipping.
    well_penalty : float, default=1.0
        Weight of a guard against spurious wells: at each step, 64 points drawn uniformly
        from the clipping box are penalised by ``well_penalty · relu(min E(x_pos) - 1 -
        E(u))²``, i.e. wherever the energy falls more than 1 nat below every data point of
        the batch. Negatives near the data never visit such a well, and one of them can hold
        most of the mass: at a learning rate of 3e-2, DCD fits of two moons reached NLL gaps
        of 46–4,770 nats this way; with the guard, 0.02–0.25 (``benchmarks/``). It costs
        about 10% of a step. ``0`` disables it.
    standardize : bool, default=True
        Fit on ``(X - mean) / std``. All public methods work in input units and
        ``score_samples`` includes the Jacobian.
    log_partition : {"auto", "quadrature", "ais"}, default="auto"
        How ``log Z`` is estimated: quadrature for ``n_features <= 2`` and annealed
        importance sampling otherwise when ``"auto"``.
    quadrature_n_grid : int, default=512
        Grid points per dimension for quadrature.
    ais_n_particles : int, default=1024
        Particles for AIS.
    ais_n_steps : int, default=256
        Temperatures for AIS.
    sample_steps : int, default=256
        Temperatures of the SMC sampler of ``sample`` and MCMC steps of ``denoise``.
    sample_step_size : float, default=0.01
        Initial MALA step (standardised units) for ``sample``, AIS and ``denoise``; adapted.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, minibatches, negatives and log Z; a fixed value makes ``fit``
        bit-identical on the CPU.
    verbose : int, default=0
        Print training progress when positive.
    warm_start : bool, default=False
        Continue from the previous solution when ``fit`` is called again."""

_ATTRIBUTES_DOC = """
    Attributes
    ----------
    energy_net_ : torch.nn.Module
        The fitted energy in standardised coordinates (envelope included), on the CPU.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` had string column names.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        Standardisation (zeros and ones when ``standardize=False``).
    loss_curve_ : list of float
        Mean training loss per epoch.
    n_iter_ : int
        Number of epochs run.
    t_ : int
        Number of optimisation steps run.
    log_partition_ : float
        ``log Z`` of ``exp(-energy(x))`` in input units; computed on first use, cached.
    log_partition_std_ : float
        Its standard error (AIS; 0 for quadrature)."""


class DCDEnergyEstimator(BaseEnergyEstimator):
    __doc__ = f"""Energy-based density estimator trained by Diffusion Contrastive Divergence.

    DCD (Luo et al., 2023) minimises ``KL(p‖q) - KL(k_σ p ‖ k_σ q)`` for a Gaussian
    diffusion kernel ``k_σ``. Its gradient contrasts data with samples of the model
    posterior ``q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²))`` given noised data
    ``x_t``: cheap to sample because it is sharply peaked, and with no dropped gradient
    term, unlike contrastive divergence.

    Parameters
    ----------
    diffusion : {{"ve", "vp"}}, default="ve"
        Variance-exploding (``α = 1``) or variance-preserving (``α = sqrt(1 - σ²)``) kernel.
    noise_std : float or tuple of (float, float), default=0.1
        Kernel noise ``σ`` in standardised units, or a range ``(low, high)`` from which
        ``σ`` is drawn log-uniformly per example. VP needs ``σ < 1``.
    negative_sampler : {{"importance", "langevin", "mala", "laplace"}}, default="importance"
        How posterior negatives are drawn: sampling importance resampling of
        ``n_proposals`` Gaussian proposals (MCMC-free), ``posterior_steps`` of unadjusted
        or Metropolis-adjusted Langevin started at ``x_t / α``, or one Laplace step.
    posterior_steps : int, default=5
        Langevin/MALA steps per negative.
    posterior_step_size : float, default=0.1
        Langevin/MALA step as a fraction of the posterior variance ``σ²/α²``.
    n_proposals : int, default=16
        Proposals per example for the importance sampler.
    resample_proposals : bool, default=False
        Importance sampler only: back-propagate one proposal per example, resampled with
        the importance weights (unbiased for the weighted sum, ``n_proposals`` times
        cheaper to back-propagate, noisier), instead of the weighted sum over all of them.
    {_PARAMS_DOC.replace("{energy_reg}", "0.01")}
    {_ATTRIBUTES_DOC}

    See Also
    --------
    CDEnergyEstimator : The same model trained by (persistent) contrastive divergence.
    sklearn.neighbors.KernelDensity : Non-parametric density estimation.

    Examples
    --------
    >>> from skdcd import DCDEnergyEstimator
    >>> from skdcd.datasets import make_toy
    >>> X = make_toy("two_moons", 500, random_state=0)
    >>> est = DCDEnergyEstimator(max_iter=5, random_state=0).fit(X)
    >>> est.sample(3, random_state=0).shape
    (3, 2)
    >>> bool(est.score(X) < 5)
    True
    """

    _parameter_constraints: dict = {
        **BaseEnergyEstimator._parameter_constraints,
        "diffusion": [StrOptions(set(diff.DIFFUSIONS))],
        "noise_std": [Interval(Real, 0, None, closed="neither"), tuple],
        "negative_sampler": [StrOptions({"importance", "langevin", "mala", "laplace"})],
        "posterior_steps": [Interval(Integral, 1, None, closed="left")],
        "posterior_step_size": [Interval(Real, 0, None, closed="neither")],
        "n_proposals": [Interval(Integral, 1, None, closed="left")],
        "resample_proposals": ["boolean"],
    }

    def __init__(
        self, *, diffusion="ve", noise_std=0.1, negative_sampler="importance",
        posterior_steps=5, posterior_step_size=0.1, n_proposals=16, resample_proposals=False,
        hidden_layer_sizes=(128, 128, 128), activation="silu", energy_net=None,
        learning_rate=1e-2, lr_schedule="cosine", batch_size=256, max_iter="auto",
        energy_reg=0.01, max_grad_norm=None, envelope_std=3.0, clip_margin=1.0,
        well_penalty=1.0, standardize=True, log_partition="auto",
        quadrature_n_grid=512, ais_n_particles=1024, ais_n_steps=256, sample_steps=256,
        sample_step_size=0.01, device="auto", random_state=None, verbose=0, warm_start=False,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation,
            energy_net=energy_net, learning_rate=learning_rate, lr_schedule=lr_schedule,
            batch_size=batch_size, max_iter=max_iter, energy_reg=energy_reg,
            max_grad_norm=max_grad_norm, envelope_std=envelope_std, clip_margin=clip_margin,
            well_penalty=well_penalty, standardize=standardize,
            log_partition=log_partition,
            quadrature_n_grid=quadrature_n_grid, ais_n_particles=ais_n_particles,
            ais_n_steps=ais_n_steps, sample_steps=sample_steps,
            sample_step_size=sample_step_size, device=device, random_state=random_state,
            verbose=verbose, warm_start=warm_start,
        )
        self.diffusion = diffusion
        self.noise_std = noise_std
        self.negative_sampler = negative_sampler
        self.posterior_steps = posterior_steps
        self.posterior_step_size = posterior_step_size
        self.n_proposals = n_proposals
        self.resample_proposals = resample_proposals

    def _check_extra_params(self) -> None:
        sigmas = self.noise_std if isinstance(self.noise_std, tuple) else (self.noise_std,)
        if isinstance(self.noise_std, tuple) and not (
            len(sigmas) == 2
            and all(isinstance(s, Real) and not isinstance(s, bool) for s in sigmas)
            and 0 < sigmas[0] <= sigmas[1] < np.inf
        ):
            raise ValueError(
                f"noise_std must be a positive float or a tuple (low, high) with "
                f"0 < low <= high, got {self.noise_std!r}."
            )
        if self.diffusion == "vp" and max(sigmas) >= 1:
            raise ValueError(
                f"diffusion='vp' needs noise_std < 1 (alpha = sqrt(1 - sigma^2)), "
                f"got {self.noise_std!r}."
            )

    def _noised(self, x_pos: torch.Tensor, generator: torch.Generator):
        sigma = diff.sample_noise_levels(x_pos.shape[0], self.noise_std, generator=generator,
                                         device=x_pos.device, dtype=x_pos.dtype)  # (B, 1)
        alpha = diff.alpha_from_sigma(sigma, self.diffusion)  # (B, 1)
        return diff.perturb(x_pos, alpha, sigma, generator=generator), alpha, sigma  # x_t (B, d)

    def _negative_energies(self, net, x_pos: torch.Tensor,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.negative_sampler != "importance" or self.resample_proposals:
            return super()._negative_energies(net, x_pos, generator)
        # Σ_j w_j E(x'_j) with w = softmax(-E): one forward pass gives weights and gradient
        x_t, alpha, sigma = self._noised(x_pos, generator)
        proposals = samplers.gaussian_proposals(x_t, alpha, sigma, n_proposals=self.n_proposals,
                                                generator=generator)  # (B, M, d)
        batch, n_prop, d = proposals.shape
        energies = net(proposals.reshape(batch * n_prop, d)).reshape(batch, n_prop)  # (B, M)
        weights = samplers.importance_weights(energies)  # (B, M), detached
        return ((weights * energies).sum(dim=1).mean(),
                (weights * energies.pow(2)).sum(dim=1).mean())

    def _negatives(self, energy_fn, x_pos: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        x_t, alpha, sigma = self._noised(x_pos, generator)
        if self.negative_sampler == "importance":
            return samplers.importance_posterior(energy_fn, x_t, alpha, sigma,
                                                 n_proposals=self.n_proposals,
                                                 generator=generator)
        if self.negative_sampler == "laplace":
            return samplers.laplace_posterior(energy_fn, x_t, alpha, sigma, generator=generator)

        def posterior(x: torch.Tensor) -> torch.Tensor:
            return diff.posterior_energy(energy_fn, x, x_t, alpha, sigma)

        mcmc = samplers.ula if self.negative_sampler == "langevin" else samplers.mala
        return mcmc(posterior, x_t / alpha, n_steps=self.posterior_steps,
                    step_size=self.posterior_step_size * (sigma / alpha) ** 2,
                    generator=generator)
