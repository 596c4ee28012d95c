"""Energy-based models trained with Diffusion Contrastive Divergence, the scikit-learn way.

The two estimators, :class:`DCDEnergyEstimator` and :class:`CDEnergyEstimator`, learn an
unnormalised density ``q(x) ∝ exp(-E(x))`` whose energy ``E`` is a PyTorch network, and
offer ``fit``, ``score_samples``, ``score``, ``sample`` and ``denoise``.
"""

from skdcd._cd import CDEnergyEstimator
from skdcd._dcd import DCDEnergyEstimator

__version__ = "0.1.0"

__all__ = ["CDEnergyEstimator", "DCDEnergyEstimator", "__version__"]
