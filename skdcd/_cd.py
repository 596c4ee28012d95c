"""CDEnergyEstimator: an EBM trained by (persistent) contrastive divergence."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from skdcd import _models as models
from skdcd._base import BaseEnergyEstimator
from skdcd._docs import ATTRIBUTES_DOC, PARAMS_DOC
from skdcd._objectives import CDObjective


class CDEnergyEstimator(BaseEnergyEstimator):
    __doc__ = f"""Energy-based density estimator trained by contrastive divergence (CD-k).

    Negatives are ``k`` steps of unadjusted Langevin dynamics on ``E`` started at the
    data (CD, Hinton 2002) or at a replay buffer of earlier negatives (persistent CD,
    Tieleman 2008). The practical CD gradient drops a term that comes from the chain
    depending on the model; :class:`DCDEnergyEstimator` has no such term.

    Parameters
    ----------
    n_steps : int, default=10
        Langevin steps ``k`` per negative.
    step_size : float, default=0.003
        Langevin step ``η`` in standardised units: ``x ← x - η∇E + sqrt(2η) ξ``.
    persistent : bool, default=False
        Start chains from a replay buffer instead of the data (PCD).
    buffer_size : int, default=10000
        Size of the replay buffer.
    reinit_prob : float, default=0.05
        Probability that a buffer chain restarts from the Gaussian base.
    {PARAMS_DOC.replace("{energy_reg}", "float, default=0.1").replace("{energy_reg_auto}", "")}
    {ATTRIBUTES_DOC}

    See Also
    --------
    DCDEnergyEstimator : The same model trained by diffusion contrastive divergence.

    Examples
    --------
    >>> from skdcd import CDEnergyEstimator
    >>> from skdcd.datasets import make_toy
    >>> X = make_toy("two_moons", 500, random_state=0)
    >>> est = CDEnergyEstimator(max_iter=5, random_state=0).fit(X)
    >>> est.energy(X[:4]).shape
    (4,)
    """

    _parameter_constraints: dict = {
        **BaseEnergyEstimator._parameter_constraints,
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "step_size": [Interval(Real, 0, None, closed="neither")],
        "persistent": ["boolean"],
        "buffer_size": [Interval(Integral, 1, None, closed="left")],
        "reinit_prob": [Interval(Real, 0, 1, closed="both")],
    }

    def __init__(
        self, *, n_steps=10, step_size=0.003, persistent=False, buffer_size=10000,
        reinit_prob=0.05,
        hidden_layer_sizes=(128, 128, 128), image_shape=None, conv_channels=(16, 32, 64),
        spectral_norm=False, activation="silu", energy_net=None,
        learning_rate=1e-2, lr_schedule="cosine", batch_size=256, max_iter="auto",
        energy_reg=0.1, max_grad_norm=None, envelope_std=3.0, envelope_components="auto",
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
        self.n_steps = n_steps
        self.step_size = step_size
        self.persistent = persistent
        self.buffer_size = buffer_size
        self.reinit_prob = reinit_prob

    _SAVED_STATE = ("_buffer",)

    def _resolve(self, Z: np.ndarray | None) -> None:
        """CD has no ``"auto"`` settings and no checks beyond the shared ones."""

    def _initial_state(self, Z: np.ndarray) -> None:
        """An empty replay buffer, drawn from the Gaussian base at the first persistent step."""
        self._buffer = None

    def _objective(self, device: torch.device) -> CDObjective:
        return CDObjective(
            self.energy_reg, self._well_guard(device), n_steps=self.n_steps,
            step_size=self.step_size, persistent=self.persistent,
            buffer_size=self.buffer_size, reinit_prob=self.reinit_prob,
            base_mean=torch.as_tensor(self._base_mean, dtype=torch.float32),
            base_std=torch.as_tensor(self._base_std, dtype=torch.float32), buffer=self._buffer)

    def _model(self, device: torch.device) -> models.Model:
        return models.Model(**self._model_fields(device))
