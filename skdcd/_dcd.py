"""DCDEnergyEstimator: an EBM trained by Diffusion Contrastive Divergence."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy.spatial.distance import pdist
from sklearn.utils._param_validation import Interval, StrOptions

from skdcd import diffusion as diff
from skdcd import samplers
from skdcd._base import BaseEnergyEstimator
from skdcd._progress import anneal_callback
from skdcd.networks import AtNoiseLevel

_PARAMS_DOC = """
    hidden_layer_sizes : tuple of int, default=(128, 128, 128)
        Hidden widths of the default MLP energy.
    image_shape : tuple (C, H, W) or None, default=None
        Read each row as a flattened image, ``X.reshape(-1, C, H, W)`` (channels first): the
        default energy becomes the convolutional :class:`~skdcd.networks.ConvEnergy`, and
        standardisation uses one mean and one scale for all pixels. ``None``: rows are
        tabular and the energy is an MLP.
    conv_channels : tuple of int, default=(16, 32, 64)
        Channels of each stage of the convolutional energy (with ``image_shape``); each stage
        after the first halves the resolution. Raise them for larger images.
    spectral_norm : bool, default=False
        Spectrally normalise every layer of the convolutional energy (with ``image_shape``).
    activation : {"silu", "softplus", "tanh", "gelu", "elu", "relu"}, default="silu"
        Activation of the default network; smooth ones suit Langevin samplers.
    energy_net : callable or None, default=None
        ``n_features -> torch.nn.Module`` building a custom energy network that maps
        ``(n, n_features)`` float32 tensors to ``(n,)`` or ``(n, 1)`` (with
        ``time_conditional=True``: ``forward(x, sigma)``, ``sigma`` of shape ``(n, 1)``).
        Overrides ``hidden_layer_sizes``, ``image_shape``'s network and ``activation``.
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
    energy_reg : {energy_reg}
        Weight ``λ`` of the penalty ``λ (E(x_pos)² + E(x_neg)²)`` that keeps energies
        bounded; without it training can diverge. A time-conditional DCD model divides it by
        ``sqrt(d / 2)``, the spread of the energy of ``d``-dimensional data.{energy_reg_auto}
    max_grad_norm : float or None, default=None
        Clip the global norm of each step's gradient to this value; ``None`` does not
        clip. Whatever it is, a non-finite loss or gradient stops ``fit`` and rolls the
        weights and optimizer state back to the start of the epoch in which it happened;
        a ``ConvergenceWarning`` then says so. If that epoch was the model's first, there
        is nothing to roll back to and ``fit`` raises ``ValueError``, leaving the estimator
        unfitted.
    envelope_std : float or None, default=3.0
        ``τ`` of the Gaussian envelope ``‖z‖² / (2τ²)`` added to every energy (standardised
        units) so that ``exp(-E)`` is integrable. ``None`` disables it. A time-conditional
        DCD energy's envelope is instead the energy of a Gaussian mixture fit of the
        training data (``envelope_components``) diffused to each level, so that the network
        only learns what the mixture misses; ``None`` disables that one too.
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
        Continue from the previous solution when ``fit`` is called again.
    mixed_precision : bool, default=False
        Train under bfloat16 autocast; the weights stay float32 and inference float32 or
        float64. Faster on GPUs with bfloat16 (Ampere or newer); usually slower on CPUs.
    compile : bool, default=False
        Train through ``torch.compile`` of the energy. Compiling takes tens of seconds at
        each call of ``fit`` or ``partial_fit``, so it pays only for long fits on a GPU."""

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


_ENERGY_REG_AUTO = """
        ``"auto"``: 0.003 with the importance sampler (the default for tabular data), whose
        weighted negatives are accurate enough for a weaker pull, else 0.01. The penalty
        pulls the energies of the data towards one level, that is, towards equal density on
        every mode; at ``σ = 0.1`` alone nothing else sets the weights of separated modes
        (rings of equal mass: the inner ring, the densest, came out 0.5 nats too
        unlikely), which is why ``noise_std="auto"`` mixes in wide levels. At ``σ = 0.1``
        alone and without the penalty, eight Gaussians broke (NLL gap 1.14, one seed)."""

# noise_std="auto" with the importance sampler: a quarter of each batch at σ log-uniform in
# [0.2, 1.0] (standardised units), wide enough to span neighbouring modes, so that their
# relative weights are learnt rather than left to energy_reg's one level (rings, one seed:
# NLL gap 0.072 at σ = 0.1 alone, 0.033 with these levels and data proposals)
_WIDE_NOISE = (0.25, 0.2, 1.0)
# ...up to this many features: 16-D, a mixture of four Gaussians, one seed: NLL gap 0.52
# with the wide levels against 0.66 without; 64-D: 46 against 3.7
_WIDE_MAX_FEATURES = 16
# directions of the Gaussian envelope of a time-conditional energy, and rows that fit them
_ENVELOPE_DIRECTIONS, _ENVELOPE_ROWS = 128, 4096
# envelope_components="auto": a mixture of this many full-covariance Gaussians up to this
# many features (beyond, one probabilistic PCA: full covariances cost d² per component)
_MIXTURE_COMPONENTS, _MIXTURE_MAX_FEATURES = 10, 128
_MIXTURE_FLOOR = 0.3  # added to each component's variances, as a fraction of the data's mean


def _gaussian_fit(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
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


def _mixture_fit(Z: np.ndarray, n_components: int, seed: int) -> tuple:
    """Arguments of ``EnvelopedEnergy.set_gaussian`` for a Gaussian mixture fit of ``Z``.

    Full covariances (``GaussianMixture`` on the same subsample as :func:`_gaussian_fit`),
    each widened by 30 % of the data's mean variance (``reg_covar``), given as eigenvectors
    and eigenvalues; one component is the probabilistic PCA of :func:`_gaussian_fit`. Sharp
    components leave the network little to correct at the narrow levels, and it then
    corrected less than over one Gaussian: on the digits (output layer started at zero),
    widened by 1 % they denoised σ = 0.1 at 23.9 dB (one seed) against 24.0 ± 0.1 dB for one
    Gaussian; widened by 30 %, at 24.1 ± 0.3 dB, and σ = 0.4 at 16.5 dB (15.3 dB for one
    Gaussian; 3 seeds).
    """
    if n_components == 1:
        return _gaussian_fit(Z)
    from sklearn.mixture import GaussianMixture

    Z = Z[:: max(1, math.ceil(len(Z) / _ENVELOPE_ROWS))]
    floor = _MIXTURE_FLOOR * max(float(Z.var(axis=0).sum()), 1e-12) / Z.shape[1]
    gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=floor,
                          random_state=seed).fit(Z)
    var, vec = np.linalg.eigh(gmm.covariances_)  # (K, d), (K, d, d)
    residual = np.full(n_components, floor)  # no direction is left over
    return gmm.means_, vec, np.maximum(var, floor), residual, gmm.weights_


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
        wide for the proposals (64-D, one seed: NLL gap 46 against 3.7 without them).
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
        (``well_penalty``) does not apply. VE only.
        ``"auto"``: ``True`` for images (``image_shape`` set), unless ``diffusion="vp"``
        or ``noise_std`` is one float; ``False`` otherwise. On the digits (3 seeds,
        ``benchmarks/``) a marginal image energy denoised worse than the noisy input
        (18.5 against 20.0 dB at σ = 0.1) and sampled blobs (MMD² 0.69, floor 0); a
        time-conditional one denoised at 24.3 dB and sampled at the floor, in a shorter fit
        (about 4 minutes on 2 CPU cores). A fitted model keeps its kind until the next fit
        that is not a ``warm_start``, whatever its parameters say meanwhile.
    n_noise_levels : int or "auto", default="auto"
        Levels of the noise ladder (``time_conditional=True``). ``"auto"``: neighbouring
        levels a factor of about 1.5 apart, so that each posterior is narrow.
    envelope_components : int or "auto", default="auto"
        Components of the Gaussian mixture fitted to the training data whose energy,
        diffused to each level, is the envelope of a time-conditional energy (with
        ``envelope_std`` not ``None``): the network then learns only what the mixture
        misses, and at wide levels, where the diffused mixture is nearly exact, little.
        ``1``: one Gaussian (probabilistic PCA, up to 128 directions). ``"auto"``: 10
        full-covariance components, fewer with fewer than 20 training rows per feature,
        and one Gaussian beyond 128 features, where full covariances cost too much. On the
        digits (3 seeds each), ``"auto"`` denoised 0.1 / 0.6 / 1.2 dB better than one
        Gaussian at σ = 0.1 / 0.2 / 0.4.
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
        ``"importance"``.
    posterior_steps : int, default=10
        Langevin/MALA steps per negative.
    posterior_step_size : float, default=0.1
        Langevin/MALA step as a fraction of the posterior variance ``σ²/α²``.
    n_proposals : int, default=48
        Proposals per example for the importance sampler
        (:func:`skdcd.samplers.laplace_proposals`): half from the kernel and half from a
        Laplace fit of the posterior or, with the wide levels of ``noise_std="auto"``, a
        third each from these and from the posterior of the batch's own rows (each row
        chosen with its kernel likelihood given ``x_t``, jittered by ``N(0, 0.1² I)``),
        the only ones that reach narrow modes at a wide ``σ``.
        Self-normalised weights of few proposals bias the negatives wherever the
        posterior is narrower than the kernel: with 16 kernel proposals, eight Gaussians
        kept an NLL gap of 0.08 nats whatever the number of steps; with 32, 0.03; with 32
        from the kernel and the Laplace fit, 0.008 (3 seeds each, ``benchmarks/``).
    n_negatives : int or None, default=8
        Importance sampler only: the proposals per example that are back-propagated,
        drawn by systematic resampling with their importance weights
        (:func:`skdcd.samplers.systematic_resample`), so that the gradient is an unbiased
        estimate of the weighted sum over all ``n_proposals`` while the weights need only a
        forward pass. ``None`` back-propagates every proposal with its weight: the lowest
        variance, at 1.5× the step time on a CPU (49 against 33 ms in 2-D) for the same mean
        NLL gap on the six toys (0.019, three seeds each).
    {_PARAMS_DOC.replace("{energy_reg}", 'float or "auto", default="auto"')
                .replace("{energy_reg_auto}", _ENERGY_REG_AUTO)}
    {_ATTRIBUTES_DOC}
    noise_levels_ : ndarray of shape (n_levels,)
        The noise ladder in standardised units, increasing (``time_conditional=True``
        only).

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
        "envelope_components": [Interval(Integral, 1, None, closed="left"),
                                StrOptions({"auto"})],
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
        n_noise_levels="auto", envelope_components="auto",
        recovery_steps=20, negative_sampler="auto",
        posterior_steps=10, posterior_step_size=0.1, n_proposals=48, n_negatives=8,
        hidden_layer_sizes=(128, 128, 128), image_shape=None, conv_channels=(16, 32, 64),
        spectral_norm=False, activation="silu", energy_net=None,
        learning_rate=1e-2, lr_schedule="cosine", batch_size=256, max_iter="auto",
        energy_reg="auto", max_grad_norm=None, envelope_std=3.0, clip_margin=1.0,
        well_penalty=1.0, standardize=True, log_partition="auto",
        quadrature_n_grid=512, ais_n_particles=1024, ais_n_steps=256, sample_steps=256,
        sample_step_size=0.01, device="auto", random_state=None, verbose=0, warm_start=False,
        mixed_precision=False, compile=False,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, image_shape=image_shape,
            conv_channels=conv_channels, spectral_norm=spectral_norm, activation=activation,
            energy_net=energy_net, learning_rate=learning_rate, lr_schedule=lr_schedule,
            batch_size=batch_size, max_iter=max_iter, energy_reg=energy_reg,
            max_grad_norm=max_grad_norm, envelope_std=envelope_std, clip_margin=clip_margin,
            well_penalty=well_penalty, standardize=standardize,
            log_partition=log_partition,
            quadrature_n_grid=quadrature_n_grid, ais_n_particles=ais_n_particles,
            ais_n_steps=ais_n_steps, sample_steps=sample_steps,
            sample_step_size=sample_step_size, device=device, random_state=random_state,
            verbose=verbose, warm_start=warm_start, mixed_precision=mixed_precision,
            compile=compile,
        )
        self.diffusion = diffusion
        self.noise_std = noise_std
        self.time_conditional = time_conditional
        self.n_noise_levels = n_noise_levels
        self.envelope_components = envelope_components
        self.recovery_steps = recovery_steps
        self.negative_sampler = negative_sampler
        self.posterior_steps = posterior_steps
        self.posterior_step_size = posterior_step_size
        self.n_proposals = n_proposals
        self.n_negatives = n_negatives

    _ARRAY_STATE = (*BaseEnergyEstimator._ARRAY_STATE, "noise_levels_")

    @classmethod
    def _upgrade_params(cls, params: dict) -> dict:
        if "resample_proposals" not in params:
            return params
        # skdcd before n_negatives: True back-propagated one resampled proposal, False the
        # weighted sum over all of them, which a warm start should keep training with
        params = dict(params)
        params["n_negatives"] = 1 if params.pop("resample_proposals") else None
        return params

    def _sampler(self) -> str:
        """``negative_sampler`` with ``"auto"`` resolved."""
        if self.negative_sampler != "auto":
            return self.negative_sampler
        return ("mala" if self.image_shape is not None or self._noise_conditional()
                else "importance")

    def _energy_reg(self) -> float:
        """``energy_reg`` with ``"auto"`` resolved."""
        if self.energy_reg != "auto":
            return self.energy_reg
        return 0.003 if self._sampler() == "importance" else 0.01

    def _noise(self) -> float | tuple[float, float]:
        """``noise_std`` with ``"auto"`` resolved (the fitted ladder's ends once fitted)."""
        if not isinstance(self.noise_std, str):
            return self.noise_std
        if not self._noise_conditional():
            return 0.1
        if hasattr(self, "noise_levels_"):
            return float(self.noise_levels_[0]), float(self.noise_levels_[-1])
        return (0.05, 2.0)  # a placeholder for parameter checks before fit

    def _check_extra_params(self) -> None:
        noise = self._noise()
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
        if self.diffusion == "vp" and max(sigmas) >= 1:
            raise ValueError(
                f"diffusion='vp' needs noise_std < 1 (alpha = sqrt(1 - sigma^2)), "
                f"got {self.noise_std!r}."
            )
        if self._noise_conditional():
            if self.diffusion != "ve":
                raise ValueError("time_conditional=True supports diffusion='ve' only.")
            if not (isinstance(noise, tuple) and sigmas[0] < sigmas[1]):
                raise ValueError(
                    f"time_conditional={self.time_conditional!r} needs noise_std='auto' or a "
                    f"range (low, high) with low < high for its noise ladder, got "
                    f"{self.noise_std!r}.")

    # ------------------------------------------------------------------ time-conditional
    def _requested_noise_conditional(self) -> bool:
        """``time_conditional`` with ``"auto"`` resolved."""
        if self.time_conditional != "auto":
            return bool(self.time_conditional)
        # a fixed float noise_std or VP asks for a marginal model
        return (self.image_shape is not None and self.diffusion == "ve"
                and not isinstance(self.noise_std, Real))

    def _initialize(self, X: np.ndarray) -> None:
        super()._initialize(X)
        if not self._noise_conditional():
            self.__dict__.pop("noise_levels_", None)  # from an earlier, time-conditional fit
            return
        low, high = self._noise()
        Z = self._standardize(X)
        Z = Z[np.isfinite(Z).all(axis=1)]  # training refuses the others with a clear error
        if isinstance(self.noise_std, str):  # "auto": up to the data's diameter
            sub = Z[:: max(1, math.ceil(len(Z) / 1000))]
            high = max(float(pdist(sub).max()) if len(sub) > 1 else 0.0, 2 * low)
        n_levels = (int(np.ceil(np.log(high / low) / np.log(1.5))) + 1
                    if self.n_noise_levels == "auto" else self.n_noise_levels)
        self.noise_levels_ = np.geomspace(low, high, max(n_levels, 2))  # standardised units
        if self.envelope_std is not None and len(Z):
            self.energy_net_.set_gaussian(*_mixture_fit(Z, self._envelope_components(Z),
                                                        self._seed))

    def _envelope_components(self, Z: np.ndarray) -> int:
        """``envelope_components`` with ``"auto"`` resolved for the standardised rows ``Z``."""
        n, d = Z.shape
        if self.envelope_components != "auto":
            return min(self.envelope_components, n)
        if d > _MIXTURE_MAX_FEATURES:
            return 1
        # a component's full covariance needs rows; fewer rows, fewer components
        return int(min(_MIXTURE_COMPONENTS, max(1, min(n, _ENVELOPE_ROWS) // (2 * d))))

    def _ladder(self) -> np.ndarray:
        return self.noise_levels_

    def _inference_level(self) -> float:
        return float(self._ladder()[0])

    def _contrastive_terms(self, net, x_pos: torch.Tensor, generator: torch.Generator):
        if not self._noise_conditional():
            return super()._contrastive_terms(net, x_pos, generator)
        # each example's level σ is log-uniform over the ladder's span and is contrasted with
        # σ r, one rung higher (r = σ_{k+1} / σ_k), whose diffused point the negative is a
        # posterior sample given. Trained on the rungs alone, the network was a guess between
        # them: on the digits, Tweedie gained 1.3-1.7 dB over the Wiener filter at rungs
        # 0.06-0.14 and 0.4-0.6 dB halfway between
        ladder = self._ladder()
        low, high = float(ladder[0]), float(ladder[-1])
        u = torch.rand((x_pos.shape[0], 1), generator=generator, device=x_pos.device,
                       dtype=x_pos.dtype)
        sigma = low * (high / low) ** u  # (B, 1)
        sigma_up = sigma * float(ladder[1] / ladder[0])  # (B, 1)
        x_i = diff.perturb(x_pos, torch.ones_like(sigma), sigma, generator=generator)
        delta = torch.sqrt(sigma_up**2 - sigma**2)  # (B, 1) kernel from level i to i + 1
        x_up = diff.perturb(x_i, torch.ones_like(sigma), delta, generator=generator)

        def energy_fn(x: torch.Tensor) -> torch.Tensor:  # E(·, σ_i); proposals come in blocks
            return net(x, sigma.repeat_interleave(x.shape[0] // sigma.shape[0], dim=0))

        start = None
        if self._sampler() in ("langevin", "mala"):
            # chains start at the Tweedie estimate E[x_i | x_up] = x_up - δ² ∇E(x_up, σ r) of
            # the level above (above the ladder, where nothing is trained, the envelope's),
            # plus the envelope posterior's spread. From the mean itself, a mode, 10 MALA
            # moves in 64 dimensions accepted ~30% and left negatives 4 nats below the data's
            # energy even when the envelope was the exact model (Gaussian data): too
            # concentrated negatives trained every wide level too wide
            envelope = self.energy_net_
            _, grad = samplers.energy_and_grad(lambda x: net(x, sigma_up), x_up)
            above = sigma_up.squeeze(1) > high  # (B,) the few rows above the ladder
            if above.any():
                if envelope.envelope_std is None:
                    grad_top = torch.zeros_like(x_up[above])
                else:
                    var_top = sigma_up[above].squeeze(1).pow(2)
                    _, grad_top = samplers.energy_and_grad(
                        lambda x: envelope._envelope(x, var_top), x_up[above])
                grad = grad.index_put((above,), grad_top)
            mean = x_up - delta**2 * grad
            start = mean + envelope.envelope_posterior_noise(x_up, sigma, delta, generator)
        neg_mean, neg_sq = self._posterior_energies(energy_fn, x_up, torch.ones_like(delta),
                                                    delta, generator, start=start)
        e_pos = energy_fn(x_i)  # (B,)
        # the spread of E over the diffused data is about sqrt(d / 2) at every level, and a
        # level's DCD moves with it while the penalty grows with its square: dividing by the
        # spread keeps energy_reg's pull against the fit the same at every dimension (on
        # digits, one seed, undivided 0.01 denoised 0.2-0.4 dB worse than 0.001, with twice
        # the samples' MMD²)
        spread = math.sqrt(x_pos.shape[1] / 2)
        return e_pos, neg_mean, (e_pos.pow(2).mean() + neg_sq) / spread

    def _denoise_method(self, method: str, var: np.ndarray) -> str:
        if not self._noise_conditional() or method in ("posterior_mean", "map"):
            return super()._denoise_method(method, var)
        ladder = self._ladder()
        sigma = float(np.sqrt(var.max()))
        isotropic = np.ptp(var) <= 1e-9 * var.max()
        inside = ladder[0] * (1 - 1e-9) <= sigma <= ladder[-1] * (1 + 1e-9)
        if isotropic and inside:
            return "tweedie"
        if method == "auto":
            return "posterior_mean"
        raise ValueError(
            f"method='tweedie' needs noise of the same standard deviation in every standardised "
            f"feature (true with image_shape) inside the noise ladder [{ladder[0]:.3g}, "
            f"{ladder[-1]:.3g}]; got {sigma:.3g}"
            + ("" if isotropic else " and features of different scales") + ".")

    def _sample_work(self) -> int:
        if not self._noise_conditional():
            return super()._sample_work()
        return self.sample_steps + len(self.noise_levels_) - 1

    def _sample_chunk(self, net, n_samples: int, generator: torch.Generator, bar):
        if not self._noise_conditional():
            return super()._sample_chunk(net, n_samples, generator, bar)
        energy = net.energy  # the full E(x, σ) behind the narrowest level's view
        ladder = self._ladder()
        top = AtNoiseLevel(energy, float(ladder[-1]))
        x = self._smc_sample(top, n_samples, generator, anneal_callback(bar),
                             widen=float(ladder[-1]))
        return samplers.recovery_sample(
            energy, x, ladder[::-1].tolist(), n_steps=self.recovery_steps,
            step_size=self.posterior_step_size * 5, generator=generator,
            start_noise=energy.envelope_posterior_noise, callback=lambda k, x: bar.update(1),
        ).detach()

    # ------------------------------------------------------------------ negatives
    def _wide_noise(self, n_features: int) -> tuple[float, float, float] | None:
        """``(fraction, low, high)`` of the wide levels that ``noise_std="auto"`` mixes in.

        Only up to ``_WIDE_MAX_FEATURES`` features: beyond, a wide level's posterior is too
        wide for a few proposals (64-D, one seed: NLL gap 46 with them, 3.7 without).
        """
        if (self.noise_std == "auto" and self.diffusion == "ve" and not self._noise_conditional()
                and self._sampler() == "importance" and n_features <= _WIDE_MAX_FEATURES):
            return _WIDE_NOISE
        return None

    def _noised(self, x_pos: torch.Tensor, generator: torch.Generator):
        sigma = diff.sample_noise_levels(x_pos.shape[0], self._noise(), generator=generator,
                                         device=x_pos.device, dtype=x_pos.dtype,
                                         wide=self._wide_noise(x_pos.shape[1]))  # (B, 1)
        alpha = diff.alpha_from_sigma(sigma, self.diffusion)  # (B, 1)
        return diff.perturb(x_pos, alpha, sigma, generator=generator), alpha, sigma  # x_t (B, d)

    def _negative_energies(self, net, x_pos: torch.Tensor,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x_t, alpha, sigma = self._noised(x_pos, generator)
        return self._posterior_energies(net, x_t, alpha, sigma, generator,
                                        data=self._proposal_data(x_pos))

    def _posterior_energies(self, energy_fn, x_t: torch.Tensor, alpha: torch.Tensor,
                            sigma: torch.Tensor, generator: torch.Generator,
                            start: torch.Tensor | None = None, data: torch.Tensor | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable mean energy and mean squared energy of the negatives.

        ``data``, the clean batch, lends the importance sampler proposals where it lies.
        """
        if self._sampler() == "importance":
            proposals, log_ratio = samplers.laplace_proposals(
                energy_fn, x_t, alpha, sigma, n_proposals=self.n_proposals,
                generator=generator, data=data)  # (B, M, d), (B, M)
            batch, n_prop, d = proposals.shape
            flat = proposals.reshape(batch * n_prop, d)
            if self.n_negatives is None:
                # Σ_j w_j E(x'_j), w = softmax(-E - log r/N): one forward pass gives both
                energies = energy_fn(flat).reshape(batch, n_prop)
                weights = samplers.importance_weights(energies + log_ratio)  # detached
                return ((weights * energies).sum(dim=1).mean(),
                        (weights * energies.pow(2)).sum(dim=1).mean())
            # the weights need only a forward pass; back-propagating every proposal made a
            # step 1.5× as long. K systematic draws keep Σ_j w_j E(x'_j) in expectation, and
            # a proposal of weight w is drawn ⌊K w⌋ times at least
            with torch.no_grad():
                energies = energy_fn(flat).reshape(batch, n_prop)
            weights = samplers.importance_weights(energies + log_ratio)
            pick = samplers.systematic_resample(weights.log(), generator,
                                                n_draws=self.n_negatives)  # (B, K)
            rows = torch.arange(batch, device=x_t.device).unsqueeze(1)
            e_neg = energy_fn(proposals[rows, pick].reshape(-1, d))  # (B K,) in row blocks
            return e_neg.mean(), e_neg.pow(2).mean()
        e_neg = energy_fn(self._posterior_draw(energy_fn, x_t, alpha, sigma, generator,
                                               start, data).detach())  # (B,)
        return e_neg.mean(), e_neg.pow(2).mean()

    def _posterior_draw(self, energy_fn, x_t: torch.Tensor, alpha: torch.Tensor,
                        sigma: torch.Tensor, generator: torch.Generator,
                        start: torch.Tensor | None = None,
                        data: torch.Tensor | None = None) -> torch.Tensor:
        """A sample of ``q(x' | x_t) ∝ exp(-E(x') - ‖x_t - α x'‖² / (2σ²))`` per row.

        Langevin and MALA chains start at ``start``, by default ``x_t / α``.
        """
        sampler = self._sampler()
        if sampler == "importance":
            return samplers.importance_posterior(energy_fn, x_t, alpha, sigma,
                                                 n_proposals=self.n_proposals,
                                                 generator=generator, data=data)
        if sampler == "laplace":
            return samplers.laplace_posterior(energy_fn, x_t, alpha, sigma, generator=generator)

        def posterior(x: torch.Tensor) -> torch.Tensor:
            return diff.posterior_energy(energy_fn, x, x_t, alpha, sigma)

        mcmc = samplers.ula if sampler == "langevin" else samplers.mala
        return mcmc(posterior, x_t / alpha if start is None else start,
                    n_steps=self.posterior_steps,
                    step_size=self.posterior_step_size * (sigma / alpha) ** 2,
                    generator=generator)

    def _negatives(self, energy_fn, x_pos: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        x_t, alpha, sigma = self._noised(x_pos, generator)
        return self._posterior_draw(energy_fn, x_t, alpha, sigma, generator,
                                    data=self._proposal_data(x_pos))

    def _proposal_data(self, x_pos: torch.Tensor) -> torch.Tensor | None:
        """The batch that lends the importance sampler proposals, with the wide levels only."""
        return x_pos if self._wide_noise(x_pos.shape[1]) is not None else None
