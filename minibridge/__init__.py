"""minibridge: BridgeTower (arXiv 2206.08657) from scratch in NumPy.

Reading order: ops → vision → text → bridge → heads → model → modeling (config and weights load them).
"""

from .config import BridgeTowerConfig, BridgeTowerTextConfig, BridgeTowerVisionConfig, ConfigError
from .modeling import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerModel,
)
from .weights import WeightsError

__version__ = "0.1.0"

__all__ = [
    "BridgeTowerConfig", "BridgeTowerTextConfig", "BridgeTowerVisionConfig", "ConfigError", "WeightsError",
    "BridgeTowerModel", "BridgeTowerForImageAndTextRetrieval", "BridgeTowerForMaskedLM",
    "BridgeTowerForContrastiveLearning",
]
