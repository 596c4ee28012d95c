"""Energy networks: small PyTorch modules mapping ``(n, d)`` inputs to ``(n,)`` energies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
}


NOISE_FEATURES = 32  # width of the sinusoidal embedding of log σ
#: Rows per block when :class:`MLPEnergy` runs on the CPU without autograd: one pass over
#: ~10^4 rows ran up to twice as slow as blocks whose activations stay in cache.
CPU_BLOCK_ROWS = 2048


def noise_embedding(sigma: torch.Tensor, n_features: int = NOISE_FEATURES) -> torch.Tensor:
    """Sinusoidal features of ``log σ``, shape ``(n, n_features)``.

    The Transformer's positional encoding (Vaswani et al., 2017) applied to the noise level,
    as in noise-conditional score networks: ``sin`` and ``cos`` of ``log σ`` at
    geometrically spaced frequencies (periods from about 0.4 to 25 in ``log σ``), so that
    levels a factor of 1.5 apart, and levels decades apart, both look different.

    Parameters
    ----------
    sigma : torch.Tensor
        Noise levels, shape ``(n, 1)``, positive.
    n_features : int, default=32
        Even number of output features.

    Examples
    --------
    >>> import torch
    >>> emb = noise_embedding(torch.tensor([[0.1], [1.0]]), 8)
    >>> emb.shape
    torch.Size([2, 8])
    >>> emb[1]  # log 1 = 0: every sine is 0, every cosine 1
    tensor([0., 0., 0., 0., 1., 1., 1., 1.])
    """
    freqs = torch.exp(torch.linspace(math.log(0.25), math.log(16.0), n_features // 2,
                                     device=sigma.device, dtype=sigma.dtype))  # (F/2,)
    angles = torch.log(sigma) * freqs  # (n, F/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (n, F)


class _NoiseFilm(nn.Module):
    """Per-layer biases computed from the noise level: ``h ← h + W_l φ(emb(σ))``."""

    def __init__(self, widths: Sequence[int], activation: str) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(NOISE_FEATURES, 128), ACTIVATIONS[activation]())
        self.heads = nn.ModuleList(nn.Linear(128, w) for w in widths)

    def forward(self, sigma: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(noise_embedding(sigma))  # (n, 128)
        return [head(h) for head in self.heads]  # each (n, width_l)


def default_input_gain(n_features: int) -> float:
    """MLPEnergy's default input gain: ``min(3, max(1, 6 / d))`` for ``d`` features.

    Adam moves each weight by about the learning rate per step, so detail much finer than
    the data's spread takes many steps to resolve; a gain makes first-layer units start
    finer and sharpen faster. But a step moves a unit's input by up to ``gain · lr · Σ|x_i|``,
    which grows with ``d``, so ``gain · d`` stays at most 6, its value at two features, and
    the gain is 1 (the plain network) from 6 features on (:ref:`defaults`).

    Parameters
    ----------
    n_features : int
        Input dimension ``d``.

    Returns
    -------
    gain : float

    Examples
    --------
    >>> default_input_gain(2), default_input_gain(4), default_input_gain(64)
    (3.0, 1.5, 1.0)
    """
    return min(3.0, max(1.0, 6.0 / n_features))


class MLPEnergy(nn.Module):
    """Multi-layer perceptron with a scalar output, used as an energy ``E(x)`` or ``E(x, σ)``.

    Smooth activations (the default SiLU) give smooth energies, which Langevin-type
    samplers need: ``relu`` is available but makes ``∇E`` piecewise constant.

    Parameters
    ----------
    n_features : int
        Input dimension ``d``.
    hidden_layer_sizes : sequence of int
        Widths of the hidden layers.
    activation : str
        One of ``ACTIVATIONS``.
    noise_conditional : bool, default=False
        Take the noise level as a second input, ``forward(x, sigma)``: a
        :func:`noise_embedding` of ``σ`` adds a learnt bias to each hidden layer.
    input_gain : float or None, default=None
        The first layer sees ``input_gain · x``; ``None``: :func:`default_input_gain`.

    Examples
    --------
    >>> import torch
    >>> net = MLPEnergy(2, (16, 16))
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5])
    """

    def __init__(
        self, n_features: int, hidden_layer_sizes: Sequence[int] = (128, 128, 128),
        activation: str = "silu", noise_conditional: bool = False,
        input_gain: float | None = None,
    ) -> None:
        super().__init__()
        gain = default_input_gain(n_features) if input_gain is None else float(input_gain)
        # a buffer, so that saved weights carry the gain they were trained with
        self.register_buffer("input_gain", torch.tensor(gain))
        widths = [n_features, *hidden_layer_sizes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        self.film = _NoiseFilm(widths[1:], activation) if noise_conditional else None
        if noise_conditional:
            _zero_output(layers[-1])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Energy of each row of ``x`` (shape ``(n, d)``), returned with shape ``(n,)``.

        Examples
        --------
        >>> import torch
        >>> net = MLPEnergy(3, (16,))
        >>> x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
        >>> energy = net(x)  # calls forward
        >>> energy.shape, energy.dtype
        (torch.Size([5]), torch.float32)
        >>> net = MLPEnergy(3, (16,), noise_conditional=True)
        >>> net(x, torch.full((5, 1), 0.5)).shape
        torch.Size([5])
        """
        biases = _check_sigma(self.film, x, sigma)
        x = x * self.input_gain.to(x.dtype)
        if x.shape[0] > CPU_BLOCK_ROWS and x.device.type == "cpu" and not torch.is_grad_enabled():
            return torch.cat([
                self._layers(x[a:a + CPU_BLOCK_ROWS],
                             None if biases is None else [b[a:a + CPU_BLOCK_ROWS] for b in biases])
                for a in range(0, x.shape[0], CPU_BLOCK_ROWS)])
        return self._layers(x, biases)

    def _layers(self, x: torch.Tensor, biases: list[torch.Tensor] | None) -> torch.Tensor:
        if biases is None:
            return self.net(x).squeeze(-1)
        h = x
        for i, layer in enumerate(self.net):  # Linear, act, Linear, act, ..., Linear
            h = layer(h)
            if i % 2 == 0 and i // 2 < len(biases):
                h = h + biases[i // 2]  # the level's bias before each activation
        return h.squeeze(-1)

    def __setstate__(self, state: dict) -> None:
        # networks pickled before the gain existed saw x itself
        state["_buffers"].setdefault("input_gain", torch.tensor(1.0))
        super().__setstate__(state)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # weights saved before the gain existed (skdcd weights format < 3) saw x itself
        state_dict.setdefault(prefix + "input_gain", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _zero_output(layer: nn.Module) -> None:
    """Start a noise-conditional network's output layer at zero: the model starts as its envelope.

    The energy at level ``σ`` is ``f / σ²``, so a random initial ``f`` varies by tens of
    nats at the narrowest levels, and the first steps drove every unit into saturation
    there for good (:ref:`defaults`).
    """
    if nn.utils.parametrize.is_parametrized(layer):  # spectral norm divides by ‖W‖: not 0
        return
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()


def _check_sigma(film: _NoiseFilm | None, x: torch.Tensor,
                 sigma: torch.Tensor | None) -> list[torch.Tensor] | None:
    if film is None:
        if sigma is not None:
            raise ValueError("This energy is not noise-conditional; call it without sigma.")
        return None
    if sigma is None or sigma.shape != (x.shape[0], 1):
        raise ValueError(f"A noise-conditional energy needs sigma of shape ({x.shape[0]}, 1), "
                         f"got {None if sigma is None else tuple(sigma.shape)}.")
    return film(sigma)


class ConvEnergy(nn.Module):
    """Small convolutional energy for images given as flat rows, ``E(x)`` or ``E(x, σ)``.

    Rows of ``(n, C·H·W)`` are reshaped to ``(n, C, H, W)``. One 3×3 convolution per stage,
    of stride 2 after the first, each followed by a smooth activation; the last feature
    map is flattened into a two-layer head, so the energy may depend on where things are
    (digits and faces are aligned). Small on purpose: it trains on 8×8 digits on a CPU;
    raise ``channels`` for larger images on a GPU. Optional spectral normalisation of every
    layer bounds its Lipschitz constant, which keeps ``∇E`` tame for Langevin samplers.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)``.
    channels : sequence of int, default=(16, 32, 64)
        Channels of each stage.
    activation : str, default="silu"
        One of ``ACTIVATIONS``.
    spectral_norm : bool, default=False
        Wrap every convolution and linear layer in
        :func:`torch.nn.utils.parametrizations.spectral_norm`.
    noise_conditional : bool, default=False
        Take the noise level as a second input, ``forward(x, sigma)``: a
        :func:`noise_embedding` of ``σ`` adds a learnt bias to each stage's channels.

    Examples
    --------
    >>> import torch
    >>> net = ConvEnergy((1, 8, 8), channels=(8, 16))
    >>> net(torch.zeros(5, 64)).shape
    torch.Size([5])
    >>> net = ConvEnergy((3, 16, 16), channels=(8,), noise_conditional=True)
    >>> net(torch.zeros(2, 3 * 16 * 16), torch.full((2, 1), 0.3)).shape
    torch.Size([2])
    """

    def __init__(
        self, image_shape: Sequence[int], channels: Sequence[int] = (16, 32, 64),
        activation: str = "silu", spectral_norm: bool = False,
        noise_conditional: bool = False, head_width: int = 128,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape

        def wrap(layer: nn.Module) -> nn.Module:
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer

        self.convs = nn.ModuleList()
        fan_in = c
        for k, width in enumerate(channels):
            stride = 1 if k == 0 else 2
            self.convs.append(wrap(nn.Conv2d(fan_in, width, 3, stride=stride, padding=1)))
            fan_in = width
            if k > 0:
                h, w = (h + 1) // 2, (w + 1) // 2
        self.act = ACTIVATIONS[activation]()
        self.hidden = wrap(nn.Linear(fan_in * h * w, head_width))
        self.out = wrap(nn.Linear(head_width, 1))
        self.film = (_NoiseFilm([*channels, head_width], activation) if noise_conditional
                     else None)
        if noise_conditional:
            _zero_output(self.out)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Energy of each flat image row of ``x`` (shape ``(n, C·H·W)``), shape ``(n,)``.

        Examples
        --------
        >>> import torch
        >>> net = ConvEnergy((1, 4, 4), channels=(4,))
        >>> net(torch.ones(3, 16)).shape
        torch.Size([3])
        """
        biases = _check_sigma(self.film, x, sigma)
        h = x.reshape(x.shape[0], *self.image_shape)  # (n, C, H, W)
        for k, conv in enumerate(self.convs):
            h = conv(h)  # (n, C_k, H_k, W_k)
            if biases is not None:
                h = h + biases[k][:, :, None, None]
            h = self.act(h)
        h = self.hidden(h.flatten(1))  # (n, head_width)
        if biases is not None:
            h = h + biases[-1]
        return self.out(self.act(h)).squeeze(-1)



class EnvelopedEnergy(nn.Module):
    """Energy network plus a Gaussian envelope that keeps ``exp(-E)`` integrable.

    ``E(x) = f(clip(x)) + ‖x‖² / (2 τ²)``. A bounded-below network ``f`` alone need not give
    a normalisable density; the envelope guarantees it whenever ``f`` grows slower than
    quadratically, which a network with linear-growth activations does. That alone still
    lets ``f`` fall linearly far from the data, where no negative sample ever looks, into a
    spurious mode that can hold almost all of the mass; clipping the network's input to a box
    around the data (:meth:`set_bounds`) leaves only the envelope to vary out there.

    A noise-conditional energy of data diffused to level ``σ`` (variance-exploding) is

        E(x, σ) = f(clip_σ(x), σ) / σ² + ‖x‖² / (2 (τ² + σ²)),

    the box widened by ``3σ`` and the envelope by the noise, since both describe the data
    blurred by ``N(0, σ² I)``. Dividing by ``σ²`` lets ``f`` stay of one size across levels:
    near the data ``E(x, σ) ≈ ‖x - x_0‖² / (2σ²)``, so ``f ≈ ‖x - x_0‖² / 2``.

    :meth:`set_gaussian` replaces the isotropic envelope by the energy of a Gaussian fit of
    the data (probabilistic PCA: mean ``m``, orthonormal directions ``U`` with variances
    ``λ``, residual variance ``r``) diffused to level ``σ``,

        ½ Σ_k p_k² / (λ_k + σ²) + ½ (‖x - m‖² - ‖p‖²) / (r + σ²),   p = Uᵀ (x - m),

    which is exact for Gaussian data and tends to the truth at wide levels, so that ``f``
    only has to learn what the Gaussian misses (the default is ``m = 0``, no directions and
    ``r = τ²``). Given ``weights``, it is a mixture of such Gaussians, each diffused to level
    ``σ``: ``-log Σ_c π_c exp(-e_c(x, σ))``, with ``e_c`` the energy above of component
    ``c`` plus half the log-determinant of its covariance ``C_c + σ² I``.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(n, d)`` to ``(n,)`` or ``(n, 1)``; when ``noise_conditional``, maps
        ``(x, sigma)`` with ``sigma`` of shape ``(n, 1)``.
    envelope_std : float or None
        ``τ``; ``None`` disables the envelope.
    noise_conditional : bool, default=False
        The energy is ``E(x, σ)``, called as ``forward(x, sigma)``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Zero(nn.Module):
    ...     def forward(self, x):
    ...         return torch.zeros(len(x), 1)
    >>> energy = EnvelopedEnergy(Zero(), envelope_std=2.0)
    >>> energy(torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]]))  # ‖x‖² / (2 · 2²)
    tensor([0.0000, 0.5000, 1.0000])
    """

    def __init__(self, net: nn.Module, envelope_std: float | None,
                 noise_conditional: bool = False) -> None:
        super().__init__()
        self.net = net
        self.envelope_std = envelope_std
        self.noise_conditional = noise_conditional
        # the network sees x clipped to [low, high] (no-op until set_bounds); beyond the box
        # only the envelope varies, so the energy cannot keep falling far from the data
        self.register_buffer("low", torch.tensor(-math.inf))
        self.register_buffer("high", torch.tensor(math.inf))
        # the Gaussian envelope (set_gaussian); no directions: ‖x‖² / (2 (τ² + σ²)). Once
        # set, every buffer has a leading axis of mixture components
        self.register_buffer("center", torch.tensor(0.0))
        self.register_buffer("directions", torch.zeros(0, 0))
        self.register_buffer("variances", torch.zeros(0))
        self.register_buffer("residual_variance",
                             torch.tensor(math.nan if envelope_std is None else envelope_std**2))
        self.register_buffer("log_weights", torch.zeros(1))

    def set_bounds(self, low, high) -> None:
        """Clip the network's inputs to the box ``[low, high]`` (per feature).

        Parameters
        ----------
        low, high : array-like of shape (n_features,)
            Box corners; ``±inf`` leaves a feature unclipped.

        Examples
        --------
        >>> import torch
        >>> energy = EnvelopedEnergy(MLPEnergy(1, (8,)), envelope_std=None)
        >>> energy.set_bounds([-1.0], [1.0])
        >>> far = torch.tensor([[1.0], [5.0], [50.0]])
        >>> bool(torch.allclose(energy(far), energy(far[:1]).expand(3)))
        True
        """
        self.low = torch.as_tensor(low, dtype=self.low.dtype, device=self.low.device).clone()
        self.high = torch.as_tensor(high, dtype=self.high.dtype, device=self.high.device).clone()

    def set_gaussian(self, mean, directions, variances, residual_variance,
                     weights=None) -> None:
        """Make the envelope the energy of a Gaussian, or of a mixture of Gaussians.

        One Gaussian is ``N(mean, U diag(λ) Uᵀ + r (I - U Uᵀ))``; with ``weights``, every
        argument gains a leading axis of components ``c`` with weights ``π_c``.

        Parameters
        ----------
        mean : array-like of shape (n_features,) or (n_components, n_features)
            ``m``.
        directions : array-like of shape ([n_components,] n_features, n_directions)
            ``U``, orthonormal columns.
        variances : array-like of shape ([n_components,] n_directions)
            ``λ``, the variance along each direction.
        residual_variance : float or array-like of shape (n_components,)
            ``r``, the variance in every direction orthogonal to ``U``.
        weights : array-like of shape (n_components,) or None, default=None
            The mixture weights ``π``; ``None``: one Gaussian.

        Examples
        --------
        >>> import torch
        >>> class Zero(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.zeros(len(x), 1)
        >>> energy = EnvelopedEnergy(Zero(), envelope_std=1.0)
        >>> energy.set_gaussian([1.0, 0.0], [[1.0], [0.0]], [4.0], 0.25)
        >>> energy(torch.tensor([[3.0, 0.0], [1.0, 1.0]]))  # 2² / (2·4), 1² / (2·0.25)
        tensor([0.5000, 2.0000])
        >>> energy.set_gaussian([[-3.0, 0.0], [3.0, 0.0]], [[[1.0], [0.0]]] * 2, [[1.0]] * 2,
        ...                     [1.0, 1.0], weights=[0.5, 0.5])
        >>> energy(torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 0.0]]))  # -log Σ π_c e^{-e_c}
        tensor([0.6931, 0.6931, 4.5000])
        """
        def buffer(value, like, ndim):
            value = torch.as_tensor(value, dtype=like.dtype, device=like.device).clone()
            return value if weights is not None else value.reshape(1, *value.shape[:ndim])

        self.center = buffer(mean, self.center, 1)  # (K, d)
        self.directions = buffer(directions, self.directions, 2)  # (K, d, k)
        self.variances = buffer(variances, self.variances, 1)  # (K, k)
        self.residual_variance = buffer(residual_variance, self.residual_variance, 0)  # (K,)
        self.log_weights = (torch.zeros(1, dtype=self.log_weights.dtype,
                                        device=self.log_weights.device)
                            if weights is None else torch.log(buffer(weights, self.log_weights,
                                                                     1)))  # (K,)

    def check_buffers(self, n_features: int) -> None:
        """Raise ``ValueError`` unless the box and envelope buffers fit ``n_features``.

        Loaded buffers take any size (:meth:`_load_from_state_dict`); this says whether
        they make one consistent model.

        Examples
        --------
        >>> energy = EnvelopedEnergy(MLPEnergy(2, (8,)), envelope_std=3.0)
        >>> energy.set_bounds([-1.0, -1.0], [1.0, 1.0])
        >>> energy.check_buffers(2)
        >>> energy.set_bounds([-1.0], [1.0])
        >>> energy.check_buffers(2)
        Traceback (most recent call last):
        ...
        ValueError: the clipping box has shape (1,), expected () or (2,).
        """
        d = n_features
        for name in ("low", "high"):
            box = getattr(self, name)
            if box.shape not in ((), (d,)) or torch.isnan(box).any():
                raise ValueError(f"the clipping box has shape {tuple(box.shape)}, "
                                 f"expected () or ({d},).")
        if not self.directions.numel():  # isotropic: ‖x‖² / (2 (τ² + σ²))
            ok = (self.center.ndim == 0 and self.variances.shape == (0,)
                  and self.residual_variance.ndim == 0 and self.log_weights.shape == (1,)
                  and (self.envelope_std is None or bool(self.residual_variance > 0)))
        else:
            n_comp, dim, k = (self.directions.shape if self.directions.ndim == 3
                              else (0, 0, 0))
            ok = (dim == d and k <= d and self.center.shape == (n_comp, d)
                  and self.variances.shape == (n_comp, k)
                  and self.residual_variance.shape == (n_comp,)
                  and self.log_weights.shape == (n_comp,)
                  and bool((self.variances > 0).all()) and bool(
                      (self.residual_variance > 0).all())
                  and all(bool(torch.isfinite(t).all()) for t in (
                      self.center, self.directions, self.log_weights)))
        if not ok:
            raise ValueError(f"the envelope's buffers do not describe a Gaussian (mixture) "
                             f"in {d} dimensions.")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Load saved buffers of any size: the box's and the envelope's depend on the fit."""
        if prefix + "log_weights" not in state_dict:
            # weights format 1 held one Gaussian without the axis of mixture components
            directions = state_dict.get(prefix + "directions", torch.zeros(0))
            for name, ndim in (("center", 1), ("directions", 2), ("variances", 1),
                               ("residual_variance", 0)):
                if directions.numel() and prefix + name in state_dict:
                    value = state_dict[prefix + name]
                    state_dict[prefix + name] = value.reshape(1, *value.shape[:ndim])
            state_dict[prefix + "log_weights"] = torch.zeros_like(self.log_weights[:1])
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buffer is not None and saved is not None and saved.shape != buffer.shape:
                # with the saved strides: a transposed layout rounds matmuls differently
                self._buffers[name] = torch.empty_like(saved, dtype=buffer.dtype,
                                                       device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _envelope(self, x: torch.Tensor, var: torch.Tensor | float) -> torch.Tensor:
        """The Gaussian envelope's energy at noise variance ``var`` (0 or shape ``(n,)``)."""
        if not self.directions.numel():  # isotropic: the training loop's hot path
            return x.pow(2).sum(dim=1) / (2.0 * (self.residual_variance.to(x.dtype) + var))
        return -torch.logsumexp(-self._component_energies(x, var), dim=1)

    def _component_energies(self, x: torch.Tensor, var: torch.Tensor | float) -> torch.Tensor:
        """``e_c(x, σ) - log π_c`` of every mixture component, shape ``(n, K)``."""
        var = torch.as_tensor(var, dtype=x.dtype, device=x.device).reshape(-1, 1)  # (n|1, 1)
        n_comp, d, k = self.directions.shape
        directions = self.directions.to(x.dtype)
        # p_c = U_cᵀ x - U_cᵀ m_c for all components in one matrix product: as a batched
        # product over (n, K, d) differences it took a fifth of a digits training step
        flat = directions.permute(1, 0, 2).reshape(d, n_comp * k)
        offset = torch.einsum("cd,cdj->cj", self.center.to(x.dtype), directions)  # (K, k)
        p = (x @ flat).reshape(-1, n_comp, k) - offset  # (n, K, k)
        var_k = self.variances.to(x.dtype) + var[..., None]  # (n|1, K, k)
        energy = 0.5 * (p * p / var_k).sum(dim=2)  # (n, K)
        # a row that overflowed (inf in float32) projects to inf - inf = nan: its energy is inf
        sq_x = x.pow(2).sum(dim=1, keepdim=True)  # (n, 1)
        n_rest = d - k
        residual = self.residual_variance.to(x.dtype) + var  # (n|1, K)
        if n_rest:  # the directions orthogonal to U_c: ‖x - m_c‖² - ‖p‖²
            sq = (x[:, None, :] - self.center.to(x.dtype)).pow(2).sum(dim=2)  # (n, K)
            # rounding can take the difference below 0
            rest = (sq - p.pow(2).sum(dim=2)).clamp_min(0.0)
            energy = energy + 0.5 * torch.where(torch.isfinite(sq), rest, sq) / residual
        energy = torch.where(torch.isinf(sq_x), sq_x, energy)
        if self.log_weights.numel() == 1:
            return energy  # one Gaussian: no normalising constant, as the isotropic envelope
        log_det = torch.log(var_k).sum(dim=2) + n_rest * torch.log(residual)  # (n|1, K)
        # only differences between components matter; centring keeps energies near 0
        log_det = log_det - log_det.mean(dim=1, keepdim=True)
        return energy + 0.5 * log_det - self.log_weights.to(x.dtype)

    def envelope_log_normalizer(self, var: float, n_features: int) -> float:
        """``log ∫ exp(-envelope(x, var)) dx``, the envelope's normaliser at noise variance ``var``.

        Examples
        --------
        >>> import math, torch
        >>> energy = EnvelopedEnergy(MLPEnergy(2, (8,)), envelope_std=2.0)
        >>> round(energy.envelope_log_normalizer(0.0, 2), 6) == round(math.log(2 * math.pi * 4), 6)
        True
        """
        if not self.directions.numel():  # isotropic: N(0, (τ² + var) I)
            total = float(self.residual_variance) + var
            return 0.5 * n_features * math.log(2 * math.pi * total)
        k = self.directions.shape[2]
        log_det = (torch.log(self.variances.double() + var).sum(dim=1)
                   + (n_features - k) * torch.log(self.residual_variance.double() + var))
        if self.log_weights.numel() > 1:  # the components' energies are centred (see above)
            log_det = log_det.mean().expand(1)
        return 0.5 * n_features * math.log(2 * math.pi) + 0.5 * float(log_det[0])

    def envelope_sample(self, n: int, var: float, n_features: int,
                        generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws of the envelope's density at noise variance ``var``, ``(n, d)``.

        Examples
        --------
        >>> import torch
        >>> energy = EnvelopedEnergy(MLPEnergy(2, (8,)), envelope_std=2.0)
        >>> x = energy.envelope_sample(20000, 0.0, 2, torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(x.std(dim=0), torch.full((2,), 2.0), atol=0.05))
        True
        """
        dtype, device = self.residual_variance.dtype, self.residual_variance.device
        xi = torch.randn((n, n_features), generator=generator, dtype=dtype, device=device)
        if not self.directions.numel():
            return torch.sqrt(self.residual_variance + var) * xi
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True,
                                 generator=generator)  # (n,)
        u = self.directions[comp]  # (n, d, k)
        coords = torch.einsum("nd,ndk->nk", xi, u)  # (n, k)
        rest = torch.sqrt(self.residual_variance[comp] + var)[:, None]  # (n, 1)
        along = torch.sqrt(self.variances[comp] + var)  # (n, k)
        return (self.center[comp] + rest * xi
                + torch.einsum("nk,ndk->nd", (along - rest) * coords, u))

    def envelope_posterior_noise(self, x: torch.Tensor, sigma: torch.Tensor, delta: torch.Tensor,
                                 generator: torch.Generator) -> torch.Tensor:
        """Zero-mean draws with the envelope posterior's covariance at level ``σ``.

        For the envelope's Gaussian ``N(m, U diag(λ) Uᵀ + r (I - U Uᵀ) + σ² I)`` of level
        ``σ`` observed with ``N(0, δ² I)`` more noise, the posterior covariance has the
        envelope's directions, with variance ``(λ + σ²) δ² / (λ + σ² + δ²)`` along each
        (``r`` for the others). A mixture envelope's posterior is a mixture of such
        Gaussians: each row draws its component from the responsibilities given its
        observation at level ``sqrt(σ² + δ²)``. Added to the posterior mean, this starts a
        posterior chain in the posterior's typical set instead of at its mode, from which
        MALA in many dimensions rejects most moves. Zeros without an envelope.

        Parameters
        ----------
        x : torch.Tensor of shape (n, n_features)
            The observations, at level ``sqrt(σ² + δ²)``; for one Gaussian only their
            shape, dtype and device are used.
        sigma, delta : torch.Tensor of shape (n, 1)
            The level and the observation's extra noise of each row.
        generator : torch.Generator
            Source of randomness.

        Returns
        -------
        torch.Tensor of shape (n, n_features)

        Examples
        --------
        >>> import torch
        >>> energy = EnvelopedEnergy(MLPEnergy(2, (8,), noise_conditional=True), 1.0,
        ...                          noise_conditional=True)
        >>> energy.set_gaussian([0.0, 0.0], [[1.0], [0.0]], [3.0], 0.0)
        >>> s = torch.ones(20000, 1)
        >>> x = torch.zeros(20000, 2)
        >>> noise = energy.envelope_posterior_noise(x, s, s, torch.Generator().manual_seed(0))
        >>> expected = torch.tensor([4 / 5, 1 / 2])  # (λ + σ²) δ² / (λ + σ² + δ²), λ = 3 and 0
        >>> bool(torch.allclose(noise.var(dim=0), expected, atol=0.02))
        True
        """
        if self.envelope_std is None:
            return torch.zeros_like(x)

        def spread(var: torch.Tensor) -> torch.Tensor:  # posterior std for prior variance var
            prior = var + sigma.pow(2)
            return torch.sqrt(prior * delta.pow(2) / (prior + delta.pow(2)))

        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if not self.directions.numel():  # isotropic
            return spread(self.residual_variance.to(x.dtype)) * xi
        if self.log_weights.numel() == 1:
            u = self.directions[0].to(x.dtype)  # (d, k)
            residual = spread(self.residual_variance.to(x.dtype))  # (n, 1)
            along = spread(self.variances.to(x.dtype)) - residual  # (n, k)
            return residual * xi + (along * (xi @ u)) @ u.T
        with torch.no_grad():
            log_resp = -self._component_energies(x, (sigma.pow(2) + delta.pow(2)).squeeze(1))
            # a row too far out for every component (energies inf) draws one uniformly
            log_resp = torch.nan_to_num(log_resp, nan=-torch.finfo(x.dtype).max,
                                        neginf=-torch.finfo(x.dtype).max)
            component = torch.multinomial(torch.softmax(log_resp, dim=1), 1,
                                          generator=generator).squeeze(1)  # (n,)
        u = self.directions[component].to(x.dtype)  # (n, d, k)
        residual = spread(self.residual_variance[component].to(x.dtype)[:, None])  # (n, 1)
        along = spread(self.variances[component].to(x.dtype)) - residual  # (n, k)
        coords = torch.einsum("nd,ndk->nk", xi, u)  # (n, k)
        return residual * xi + torch.einsum("nk,ndk->nd", along * coords, u)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Energy of each row of ``x``, shape ``(n,)`` (at levels ``sigma``, ``(n, 1)``).

        Examples
        --------
        >>> import torch
        >>> net = MLPEnergy(2, (16,))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        >>> energy = EnvelopedEnergy(net, envelope_std=3.0)(x)
        >>> energy.shape
        torch.Size([4])
        >>> bool(torch.allclose(energy, net(x) + x.pow(2).sum(dim=1) / 18))
        True
        >>> bool(torch.equal(EnvelopedEnergy(net, envelope_std=None)(x), net(x)))
        True
        """
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        if not self.noise_conditional:
            energy = self.net(torch.clamp(x, low, high))
        else:
            if sigma is None or sigma.shape != (x.shape[0], 1):
                raise ValueError(f"A noise-conditional energy needs sigma of shape "
                                 f"({x.shape[0]}, 1).")
            clipped = torch.maximum(torch.minimum(x, high + 3.0 * sigma), low - 3.0 * sigma)
            energy = self.net(clipped, sigma)
        if energy.ndim == 2 and energy.shape[1] == 1:
            energy = energy.squeeze(1)
        if energy.shape != x.shape[:1]:
            raise ValueError(
                f"The energy network must map inputs of shape (n, d) to (n,) or (n, 1); "
                f"got output shape {tuple(energy.shape)} for input shape {tuple(x.shape)}."
            )
        var = 0.0
        if self.noise_conditional:
            var = sigma.squeeze(1).pow(2)  # (n,)
            energy = energy / var
        if self.envelope_std is not None:
            envelope = self._envelope(x, var)
            # a row beyond the float range has an infinite envelope, and the network, whose
            # box partial_fit may have widened to inf, can give nan there
            energy = torch.where(torch.isinf(envelope), envelope, energy + envelope)
        return energy


class AtNoiseLevel(nn.Module):
    """A noise-conditional energy frozen at one level: ``x ↦ E(x, σ)``.

    Parameters
    ----------
    energy : torch.nn.Module
        Called as ``energy(x, sigma)``.
    sigma : float
        The level.

    Examples
    --------
    >>> import torch
    >>> net = EnvelopedEnergy(MLPEnergy(2, (8,), noise_conditional=True), 3.0,
    ...                       noise_conditional=True)
    >>> x = torch.zeros(4, 2)
    >>> bool(torch.equal(AtNoiseLevel(net, 0.5)(x), net(x, torch.full((4, 1), 0.5))))
    True
    """

    def __init__(self, energy: nn.Module, sigma: float) -> None:
        super().__init__()
        self.energy = energy
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``E(x, σ)`` for each row of ``x``, shape ``(n,)``."""
        return self.energy(x, torch.full((x.shape[0], 1), self.sigma, dtype=x.dtype,
                                         device=x.device))
