"""DCDEnergyEstimator: an EBM trained by Diffusion Contrastive Divergence."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy.spatial.distance import pdist
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from skdcd import _models as models
from skdcd import diffusion as diff
from skdcd._base import BaseEnergyEstimator
from skdcd._docs import ATTRIBUTES_DOC, ENERGY_REG_AUTO, PARAMS_DOC
from skdcd._objectives import (
    ContrastiveObjective,
    DCDObjective,
    LadderObjective,
    LevelWellGuard,
    PosteriorNegatives,
)

# ---- the "auto" rules' constants (the user guide's "why these defaults" page says why)
_AUTO_NOISE = 0.1  # noise_std of a marginal model
# energy_reg: weighted importance negatives are accurate enough for a weaker pull
_AUTO_ENERGY_REG = {"importance": 0.003, "other": 0.01}
# noise_std="auto" with importance negatives: a quarter of each batch at σ log-uniform in
# [0.2, 1.0], wide enough to span neighbouring modes, so that their relative weights are
# learnt; beyond 16 features such posteriors are too wide for the proposals
_WIDE_NOISE = (0.25, 0.2, 1.0)
_WIDE_MAX_FEATURES = 16
# the auto ladder of a time-conditional model: from 0.05 to the data's diameter (on a
# subsample), neighbouring levels about 1.5 apart so that each posterior is narrow
_LADDER_LOW, _LADDER_RATIO, _DIAMETER_ROWS = 0.05, 1.5, 1000


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
    noise_std : float, tuple of (float, float) or "auto", default="auto"
        Kernel noise ``σ`` in standardised units, or a range ``(low, high)`` from which
        ``σ`` is drawn log-uniformly per example. VP needs ``σ < 1``. For a
        time-conditional model it must be a range: the narrowest and widest levels of
        the noise ladder. ``"auto"``: ``0.1``, or, for a time-conditional model, a ladder
        from ``0.05`` to the largest distance between two training rows (standardised; on
        a subsample of 1,000 rows), wide enough that the widest level is nearly Gaussian.
        With the importance sampler, VE and at most 16 features, ``"auto"`` also draws a
        quarter of each batch log-uniformly in ``[0.2, 1.0]``: at ``σ = 0.1`` alone the
        posterior never spans two modes, so their relative weights go unlearnt (left to
        ``energy_reg``, which pulls every mode to one level), while wide levels let each
        example's negatives weigh its neighbouring modes against one another, from the
        data proposals of ``n_proposals``. Beyond 16 features their posteriors are too
        wide for the proposals (:ref:`defaults`). Fitted as ``noise_std_`` and
        ``wide_noise_``.
    time_conditional : bool or "auto", default="auto"
        Learn a time-dependent energy ``E(x, σ)``, one EBM per noise level ``σ`` in the span
        of ``noise_std``, each the model of the data diffused (VE) to that level. Each
        example trains a level ``σ`` drawn log-uniformly over the span by DCD against
        ``σ r``, one rung higher on a geometric ladder of ``n_noise_levels`` levels
        (``r`` the ratio of its neighbouring levels): negatives are posterior samples given
        the data diffused to ``σ r``.
        ``sample`` then runs recovery sampling from the widest level down to
        the narrowest, ``denoise`` uses Tweedie's formula at the noise's own level, and
        ``score_samples`` is the density of the narrowest level (the data blurred by
        ``noise_std[0]``). The energy reports ``E(x, σ_min)``. The well guard
        (``well_penalty``) works level by level, with probes from the envelope.
        VE only.
        ``"auto"``: ``True`` for images (``image_shape`` set), unless ``diffusion="vp"``
        or ``noise_std`` is one float; ``False`` otherwise: a marginal image energy
        denoised worse than the noisy input on the digits (:ref:`defaults`). A fitted
        model keeps its kind (``time_conditional_``) until the next fit that is not a
        ``warm_start``, whatever its parameters say meanwhile.
    n_noise_levels : int or "auto", default="auto"
        Levels of the noise ladder (``time_conditional=True``). ``"auto"``: neighbouring
        levels a factor of about 1.5 apart, so that each posterior is narrow.
    recovery_steps : int, default=20
        MALA moves per level of recovery sampling (``time_conditional=True``).
    negative_sampler : {{"auto", "importance", "langevin", "mala", "laplace"}}, default="auto"
        How posterior negatives are drawn: importance weights of ``n_proposals``
        proposals from the kernel and from a Laplace fit of the posterior (MCMC-free),
        ``posterior_steps`` of unadjusted or Metropolis-adjusted Langevin started at
        ``x_t / α`` (time-conditional: at the Tweedie estimate of the posterior mean from
        the level above plus the envelope posterior's spread), or one Laplace step.
        ``"auto"``: ``"mala"`` for images (``image_shape``) and time-conditional models,
        whose posteriors are too wide or too high-dimensional for a few proposals, else
        ``"importance"`` (fitted as ``negative_sampler_``).
    posterior_steps : int, default=10
        Langevin/MALA steps per negative.
    posterior_step_size : float, default=0.1
        Langevin/MALA step as a fraction of the posterior variance ``σ²/α²``.
    n_proposals : int, default=48
        Proposals per example for the importance sampler
        (:func:`skdcd.samplers.laplace_proposals`): half from the kernel and half from a
        Laplace fit of the posterior or, wherever levels reach 0.2 (the wide levels of
        ``noise_std="auto"``, or a ``noise_std`` of 0.2 or more), a third each from these
        and from the posterior of the batch's own rows (each row
        chosen with its kernel likelihood given ``x_t``, jittered by ``N(0, 0.1² I)``),
        the only ones that reach narrow modes at a wide ``σ``. Self-normalised weights of
        few proposals bias the negatives wherever the posterior is narrower than the
        kernel (:ref:`defaults`).
    n_negatives : int or None, default=8
        Importance sampler only: the proposals per example that are back-propagated,
        drawn by systematic resampling with their importance weights
        (:func:`skdcd.samplers.systematic_resample`), so that the gradient is an unbiased
        estimate of the weighted sum over all ``n_proposals`` while the weights need only a
        forward pass. ``None`` back-propagates every proposal with its weight: the lowest
        variance, at a longer step for the same accuracy (:ref:`defaults`).
    {PARAMS_DOC.replace("{energy_reg}", 'float or "auto", default="auto"')
                .replace("{energy_reg_auto}", ENERGY_REG_AUTO)}
    {ATTRIBUTES_DOC}
    noise_levels_ : ndarray of shape (n_levels,)
        The noise ladder in standardised units, increasing (time-conditional models only).
    time_conditional_ : bool
        Whether the fitted energy is time-conditional, ``E(x, σ)``.
    negative_sampler_ : str
        ``negative_sampler`` with ``"auto"`` resolved.
    energy_reg_ : float
        ``energy_reg`` with ``"auto"`` resolved.
    noise_std_ : float or tuple of (float, float)
        The noise level, or the range of levels, of training (for a time-conditional
        model, the ends of its ladder).
    wide_noise_ : tuple of (float, float, float) or None
        ``(fraction, low, high)``: the fraction of each batch whose levels are drawn
        log-uniformly in ``[low, high]`` besides ``noise_std_`` (``noise_std="auto"``), or
        ``None``.

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
        "noise_std": [Interval(Real, 0, None, closed="neither"), tuple, StrOptions({"auto"})],
        "time_conditional": ["boolean", StrOptions({"auto"})],
        "n_noise_levels": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"})],
        "recovery_steps": [Interval(Integral, 1, None, closed="left")],
        "negative_sampler": [StrOptions({"auto", "importance", "langevin", "mala", "laplace"})],
        "posterior_steps": [Interval(Integral, 1, None, closed="left")],
        "posterior_step_size": [Interval(Real, 0, None, closed="neither")],
        "n_proposals": [Interval(Integral, 1, None, closed="left")],
        "n_negatives": [Interval(Integral, 1, None, closed="left"), None],
        "energy_reg": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
    }

    def __init__(
        self, *, diffusion="ve", noise_std="auto", time_conditional="auto",
        n_noise_levels="auto", recovery_steps=20, negative_sampler="auto",
        posterior_steps=10, posterior_step_size=0.1, n_proposals=48, n_negatives=8,
        hidden_layer_sizes=(128, 128, 128), image_shape=None, conv_channels=(16, 32, 64),
        spectral_norm=False, activation="silu", energy_net=None,
        learning_rate=1e-2, lr_schedule="cosine", batch_size=256, max_iter="auto",
        energy_reg="auto", max_grad_norm=None, envelope_std=3.0, envelope_components="auto",
        clip_margin=1.0,
        well_penalty=1.0, standardize=True, log_partition="auto",
        quadrature_n_grid=512, ais_n_particles=1024, ais_n_steps=256, sample_steps=256,
        sample_step_size=0.01, device="auto", random_state=None, verbose=0, warm_start=False,
        mixed_precision=False, compile=False, n_threads=None,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, image_shape=image_shape,
            conv_channels=conv_channels, spectral_norm=spectral_norm, activation=activation,
            energy_net=energy_net, learning_rate=learning_rate, lr_schedule=lr_schedule,
            batch_size=batch_size, max_iter=max_iter, energy_reg=energy_reg,
            max_grad_norm=max_grad_norm, envelope_std=envelope_std,
            envelope_components=envelope_components, clip_margin=clip_margin,
            well_penalty=well_penalty, standardize=standardize,
            log_partition=log_partition,
            quadrature_n_grid=quadrature_n_grid, ais_n_particles=ais_n_particles,
            ais_n_steps=ais_n_steps, sample_steps=sample_steps,
            sample_step_size=sample_step_size, device=device, random_state=random_state,
            verbose=verbose, warm_start=warm_start, mixed_precision=mixed_precision,
            compile=compile, n_threads=n_threads,
        )
        self.diffusion = diffusion
        self.noise_std = noise_std
        self.time_conditional = time_conditional
        self.n_noise_levels = n_noise_levels
        self.recovery_steps = recovery_steps
        self.negative_sampler = negative_sampler
        self.posterior_steps = posterior_steps
        self.posterior_step_size = posterior_step_size
        self.n_proposals = n_proposals
        self.n_negatives = n_negatives



    _PARAM_UPGRADES = {  # resample_proposals=True back-propagated one resampled proposal
        "resample_proposals": ("n_negatives", lambda resample: 1 if resample else None)}
    _RESOLVED = ("negative_sampler_", "energy_reg_", "noise_std_", "wide_noise_")
    _SAVED_STATE = ("noise_levels_",)

    @property
    def time_conditional_(self) -> bool:
        """Whether the fitted energy is time-conditional, ``E(x, σ)`` (it has a noise ladder)."""
        check_is_fitted(self)
        return self._time_conditional

    def _resolve(self, Z: np.ndarray | None) -> None:
        """Every ``"auto"`` of DCD, resolved once into fitted attributes."""
        conditional = self._time_conditional if Z is None else (
            bool(self.time_conditional) if self.time_conditional != "auto"
            # images, unless a fixed float noise_std or VP asks for a marginal model
            else (self.image_shape is not None and self.diffusion == "ve"
                  and not isinstance(self.noise_std, Real)))
        self._check_noise(conditional)
        sampler = self.negative_sampler
        if sampler == "auto":  # chains for images and ladders: too wide for a few proposals
            sampler = "mala" if self.image_shape is not None or conditional else "importance"
        energy_reg = self.energy_reg
        if energy_reg == "auto":
            energy_reg = _AUTO_ENERGY_REG["importance" if sampler == "importance" else "other"]
        auto_noise = isinstance(self.noise_std, str)
        levels = None
        if conditional:
            levels = self.noise_levels_ if Z is None else self._noise_ladder(Z)
            noise = (float(levels[0]), float(levels[-1]))
        else:
            noise = _AUTO_NOISE if auto_noise else self.noise_std
        wide = (_WIDE_NOISE if auto_noise and self.diffusion == "ve" and not conditional
                and sampler == "importance" and self.n_features_in_ <= _WIDE_MAX_FEATURES
                else None)
        self.negative_sampler_, self.energy_reg_ = sampler, energy_reg
        self.noise_std_, self.wide_noise_ = noise, wide
        if levels is None:
            self.__dict__.pop("noise_levels_", None)  # from an earlier, time-conditional fit
        else:
            self.noise_levels_ = levels  # standardised units

    def _check_noise(self, conditional: bool) -> None:
        noise = self.noise_std
        sigmas = noise if isinstance(noise, tuple) else (noise,)
        if isinstance(noise, tuple) and not (
            len(sigmas) == 2
            and all(isinstance(s, Real) and not isinstance(s, bool) for s in sigmas)
            and 0 < sigmas[0] <= sigmas[1] < np.inf
        ):
            raise ValueError(
                f"noise_std must be a positive float or a tuple (low, high) with "
                f"0 < low <= high, got {self.noise_std!r}."
            )
        if self.diffusion == "vp" and noise != "auto" and max(sigmas) >= 1:
            raise ValueError(
                f"diffusion='vp' needs noise_std < 1 (alpha = sqrt(1 - sigma^2)), "
                f"got {self.noise_std!r}."
            )
        if conditional:
            if self.diffusion != "ve":
                raise ValueError("time_conditional=True supports diffusion='ve' only.")
            if not (noise == "auto" or (isinstance(noise, tuple) and sigmas[0] < sigmas[1])):
                raise ValueError(
                    f"time_conditional={self.time_conditional!r} needs noise_std='auto' or a "
                    f"range (low, high) with low < high for its noise ladder, got "
                    f"{self.noise_std!r}.")

    def _noise_ladder(self, Z: np.ndarray) -> np.ndarray:
        """The noise ladder of a time-conditional model of the standardised rows ``Z``."""
        if isinstance(self.noise_std, str):  # "auto": up to the data's diameter
            Z = Z[np.isfinite(Z).all(axis=1)]  # training refuses the others with a clear error
            sub = Z[:: max(1, math.ceil(len(Z) / _DIAMETER_ROWS))]
            low = _LADDER_LOW
            high = max(float(pdist(sub).max()) if len(sub) > 1 else 0.0, 2 * low)
        else:
            low, high = self.noise_std
        n_levels = (int(np.ceil(np.log(high / low) / np.log(_LADDER_RATIO))) + 1
                    if self.n_noise_levels == "auto" else self.n_noise_levels)
        return np.geomspace(low, high, max(n_levels, 2))

    def _initial_state(self, Z: np.ndarray) -> None:
        """DCD keeps no state beyond the shared one (the envelope is set by the base)."""

    def _objective(self, device: torch.device) -> ContrastiveObjective:
        posterior = PosteriorNegatives(
            self.negative_sampler_, self.posterior_steps, self.posterior_step_size,
            self.n_proposals, self.n_negatives)
        if self._time_conditional:
            guard = (LevelWellGuard(self.well_penalty,
                                    (float(self.noise_levels_[0]), float(self.noise_levels_[-1])),
                                    self.energy_net_)
                     if self.well_penalty > 0 else None)
            return LadderObjective(self.energy_reg_, guard,
                                   levels=tuple(float(s) for s in self.noise_levels_),
                                   posterior=posterior, envelope=self.energy_net_)
        # data proposals wherever a level reaches across modes: without them the importance
        # weights of a wide posterior favour the modes nearest x_t (issue 26: -0.35 bias)
        top = float(np.max(self.noise_std_))
        return DCDObjective(self.energy_reg_, self._well_guard(device),
                            diffusion=self.diffusion, noise_std=self.noise_std_,
                            wide=self.wide_noise_, posterior=posterior,
                            data_proposals=bool(self.wide_noise_ is not None
                            or top >= _WIDE_NOISE[1]))

    def _model(self, device: torch.device) -> models.Model:
        fields = self._model_fields(device)
        if not self._time_conditional:
            return models.Model(**fields)
        return models.LadderModel(**fields, levels=self.noise_levels_,
                                     recovery_steps=self.recovery_steps,
                                     recovery_step_size=5 * self.posterior_step_size)
