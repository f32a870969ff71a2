"""Old home of the strategies: the recipes (:mod:`modeltheft.attacks.recipes`) by name."""

from modeltheft.attacks.base import QueryHistory, Strategy
from modeltheft.attacks.recipes import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "QueryHistory", "Strategy", "make_strategy"]
