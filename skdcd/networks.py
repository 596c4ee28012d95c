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


class MLPEnergy(nn.Module):
    """Multi-layer perceptron with a scalar output, used as an energy ``E(x)``.

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

    Examples
    --------
    >>> import torch
    >>> net = MLPEnergy(2, (16, 16))
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5])
    """

    def __init__(
        self, n_features: int, hidden_layer_sizes: Sequence[int] = (128, 128, 128),
        activation: str = "silu",
    ) -> None:
        super().__init__()
        widths = [n_features, *hidden_layer_sizes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of each row of ``x`` (shape ``(n, d)``), returned with shape ``(n,)``.

        Examples
        --------
        >>> import torch
        >>> net = MLPEnergy(3, (16,))
        >>> x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
        >>> energy = net(x)  # calls forward
        >>> energy.shape, energy.dtype
        (torch.Size([5]), torch.float32)
        """
        return self.net(x).squeeze(-1)


class EnvelopedEnergy(nn.Module):
    """Energy network plus a Gaussian envelope that keeps ``exp(-E)`` integrable.

    ``E(x) = f(clip(x)) + ‖x‖² / (2 τ²)``. A bounded-below network ``f`` alone need not give
    a normalisable density; the envelope guarantees it whenever ``f`` grows slower than
    quadratically, which a network with linear-growth activations does. That alone still
    lets ``f`` fall linearly far from the data, where no negative sample ever looks, into a
    spurious mode that can hold almost all of the mass; clipping the network's input to a box
    around the data (:meth:`set_bounds`) leaves only the envelope to vary out there.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(n, d)`` to ``(n,)`` or ``(n, 1)``.
    envelope_std : float or None
        ``τ``; ``None`` disables the envelope.

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

    def __init__(self, net: nn.Module, envelope_std: float | None) -> None:
        super().__init__()
        self.net = net
        self.envelope_std = envelope_std
        # the network sees x clipped to [low, high] (no-op until set_bounds); beyond the box
        # only the envelope varies, so the energy cannot keep falling far from the data
        self.register_buffer("low", torch.tensor(-math.inf))
        self.register_buffer("high", torch.tensor(math.inf))

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energy of each row of ``x``, shape ``(n,)``.

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
        energy = self.net(torch.clamp(x, self.low.to(x.dtype), self.high.to(x.dtype)))
        if energy.ndim == 2 and energy.shape[1] == 1:
            energy = energy.squeeze(1)
        if energy.shape != x.shape[:1]:
            raise ValueError(
                f"The energy network must map inputs of shape (n, d) to (n,) or (n, 1); "
                f"got output shape {tuple(energy.shape)} for input shape {tuple(x.shape)}."
            )
        if self.envelope_std is not None:
            energy = energy + x.pow(2).sum(dim=1) / (2.0 * self.envelope_std**2)
        return energy
