"""Parameter and attribute documentation shared by the estimators' docstrings."""

PARAMS_DOC = """
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
        Minibatch size (capped at the number of samples); per process in a data-parallel
        fit (:ref:`distributed`).
    max_iter : int or "auto", default="auto"
        Number of epochs (passes over the data). ``"auto"``: about 2,000 steps, i.e. enough
        whole epochs, or, beyond 2,000 minibatches per epoch, 2,000 steps of one epoch; but
        at most 64 epochs for a marginal (not time-conditional) model, so that fewer than
        about 8,000 rows get fewer steps rather than being memorised (:ref:`defaults`); ask
        for more with an integer (:ref:`scaling`).
    energy_reg : {energy_reg}
        Weight ``λ`` of the penalty ``λ (E(x_pos)² + E(x_neg)²)`` that keeps energies
        bounded; without it training can diverge. A time-conditional DCD model divides it by
        ``sqrt(d / 2)``, the spread of the energy of ``d``-dimensional data.{energy_reg_auto}
    max_grad_norm : float or None, default=None
        Clip the global norm of each step's gradient to this value; ``None`` does not
        clip. Whatever it is, a non-finite loss or gradient stops ``fit`` and rolls the
        weights, the optimizer state and the CD replay buffer back to the start of the
        epoch in which it happened; a ``ConvergenceWarning`` then says so. If no epoch of
        the call had completed, the whole call is undone: ``partial_fit`` and a warm
        ``fit`` warn and leave the estimator as it was, and a cold ``fit``, which has
        nothing to keep, raises ``ValueError``, also leaving the estimator as it was
        (unfitted, or its earlier fit). Any other failure of ``fit`` or ``partial_fit``,
        an exception from a custom network or a ``KeyboardInterrupt`` included, also
        leaves the estimator exactly as it was before the call.
    envelope_std : float or None, default=3.0
        ``τ`` of the Gaussian envelope ``‖z‖² / (2τ²)`` added to every energy (standardised
        units) so that ``exp(-E)`` is integrable. ``None`` disables it. A time-conditional
        DCD energy's envelope is instead the energy of a Gaussian mixture fit of the
        training data (``envelope_components``) diffused to each level, so that the network
        only learns what the mixture misses; ``None`` disables that one too.
    envelope_components : int, "auto" or None, default="auto"
        Components of a Gaussian mixture fitted to the training data whose energy
        (diffused to each level, for a time-conditional energy) replaces the isotropic
        envelope (with ``envelope_std`` not ``None``): the network then learns only what
        the mixture misses. ``1``: one Gaussian (probabilistic PCA, up to 128
        directions). ``"auto"``: for a time-conditional DCD energy 10 full-covariance
        components, fewer with fewer than 20 training rows per feature, and one Gaussian
        beyond 128 features, where full covariances cost too much (:ref:`defaults`); for
        every other energy (marginal DCD, CD) the isotropic envelope. ``None``: the
        isotropic envelope for every energy. An integer gives any model, CD included, the
        mixture envelope, so that training methods compare on the same model.
    clip_margin : float or None, default=1.0
        The network sees each feature clipped to the training range widened by this many
        standardised units; beyond that box only the envelope varies. Without it a network
        can fall linearly far from the data, where no negative sample looks, into a spurious
        mode that takes the mass (:ref:`defaults`). ``None`` disables the clipping.
    well_penalty : float, default=1.0
        Weight of a guard against spurious wells: at each step, 64 points drawn uniformly
        from the clipping box are penalised by ``well_penalty · relu(min E(x_pos) - 1 -
        E(u))²``, i.e. wherever the energy falls more than 1 nat below every data point of
        the batch. Negatives near the data never visit such a well, and one of them can hold
        most of the mass (:ref:`defaults`). A time-conditional energy is guarded level by
        level instead: at a random level ``σ``, 64 probes drawn from the envelope diffused
        to ``σ`` take 5 Langevin steps on ``E(·, σ)`` and are penalised by ``well_penalty ·
        relu(mean E(x_σ, σ) - margin - E(u, σ))`` against data diffused to ``σ``, with
        ``margin = 1 + d/2 + 3 sqrt(d/2)`` (the energy of samples lies about ``d/2`` below
        the data's at a mode). ``0`` disables it.
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
        each call of ``fit`` or ``partial_fit``, so it pays only for long fits on a GPU.
    n_threads : int or None, default=None
        Threads torch may use in ``fit`` and inference (restored afterwards). ``None``:
        torch's own setting, which honours ``OMP_NUM_THREADS``, threadpoolctl's limits and
        joblib's workers, except in a Dask worker's task, where it is at most the cores
        divided by the worker's threads, so that parallel fits do not oversubscribe the
        machine (:ref:`scaling`)."""

ATTRIBUTES_DOC = """
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
        Number of epochs run (the last may be part of one, with ``max_iter="auto"``).
    t_ : int
        Number of optimisation steps run.
    log_partition_ : float
        ``log Z`` of ``exp(-energy(x))`` in input units; computed on first use, cached.
    log_partition_std_ : float
        Its standard error (AIS; 0 for quadrature)."""


ENERGY_REG_AUTO = """
        ``"auto"``: 0.003 with the importance sampler (the default for tabular data), whose
        weighted negatives are accurate enough for a weaker pull, else 0.01 (fitted as
        ``energy_reg_``). The penalty pulls the energies of the data towards one level,
        that is, towards equal density on every mode (:ref:`defaults`)."""
