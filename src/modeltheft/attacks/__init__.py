"""Extraction attacks: sources, selectors, named recipes, substitutes and the one loop."""

from modeltheft.attacks.extraction import ExtractionResult, attack_task, extract
from modeltheft.attacks.recipes import STRATEGIES, make_strategy
from modeltheft.attacks.selectors import SELECTORS
from modeltheft.attacks.sources import SOURCES
from modeltheft.attacks.substitutes import SUBSTITUTES, make_substitute

__all__ = [
    "SELECTORS",
    "SOURCES",
    "STRATEGIES",
    "SUBSTITUTES",
    "ExtractionResult",
    "attack_task",
    "extract",
    "make_strategy",
    "make_substitute",
]

from modeltheft.attacks import adaptive  # noqa: F401 - registers the in-distribution recipe
