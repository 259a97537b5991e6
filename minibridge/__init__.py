"""minibridge: BridgeTower (arXiv 2206.08657) from scratch in NumPy.

Reading order: tokenizer → image_processing → ops → vision → text → bridge → heads → model → modeling (config and weights load them).
"""

from .tokenizer import RobertaTokenizer
from .image_processing import BridgeTowerImageProcessor
from .processing import BridgeTowerProcessor
from .config import BridgeTowerConfig, BridgeTowerTextConfig, BridgeTowerVisionConfig, ConfigError
from .modeling import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerModel,
)
from .weights import WeightsError
from .hub import HubError
from .convert import ConvertError
from .infer import InferResult, infer

__version__ = "0.1.0"

__all__ = [
    "BridgeTowerConfig", "BridgeTowerTextConfig", "BridgeTowerVisionConfig", "ConfigError", "WeightsError",
    "BridgeTowerModel", "BridgeTowerForImageAndTextRetrieval", "BridgeTowerForMaskedLM",
    "BridgeTowerForContrastiveLearning", "infer", "InferResult", "HubError", "ConvertError", "RobertaTokenizer", "BridgeTowerImageProcessor", "BridgeTowerProcessor",
]
