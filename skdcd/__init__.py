"""Energy-based models trained with Diffusion Contrastive Divergence, the scikit-learn way.

The two estimators, :class:`DCDEnergyEstimator` and :class:`CDEnergyEstimator`, learn an
unnormalised density ``q(x) ∝ exp(-E(x))`` whose energy ``E`` is a PyTorch network, and
offer ``fit``, ``score_samples``, ``score``, ``sample`` and ``denoise``;
:class:`EnergyOutlierDetector` flags rows of low density, and :class:`EnergyImputer` fills
missing values from the density's conditional.
"""

__version__ = "0.1.0"  # before the imports: the estimators record it in saved models

from skdcd._cd import CDEnergyEstimator  # noqa: E402
from skdcd._dcd import DCDEnergyEstimator  # noqa: E402
from skdcd._imputer import EnergyImputer  # noqa: E402
from skdcd._outlier import EnergyOutlierDetector  # noqa: E402
from skdcd._persistence import InconsistentVersionWarning  # noqa: E402

__all__ = ["CDEnergyEstimator", "DCDEnergyEstimator", "EnergyImputer", "EnergyOutlierDetector",
           "InconsistentVersionWarning", "__version__"]
