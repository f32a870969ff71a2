"""Extraction attacks: query strategies, substitute models and the one extraction loop."""

from modeltheft.attacks.extraction import ExtractionResult, extract
from modeltheft.attacks.strategies import STRATEGIES, make_strategy
from modeltheft.attacks.substitutes import SUBSTITUTES, make_substitute

__all__ = [
    "STRATEGIES",
    "SUBSTITUTES",
    "ExtractionResult",
    "extract",
    "make_strategy",
    "make_substitute",
]
