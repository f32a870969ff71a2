"""Query strategies, registered by name; each proposes the next queries of an attack."""

from typing import Any

from modeltheft.attacks.strategies.active import ActiveSelection
from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.attacks.strategies.equation_solving import EquationSolving
from modeltheft.attacks.strategies.jacobian import JacobianAugmentation
from modeltheft.attacks.strategies.natural_patches import NaturalPatches
from modeltheft.attacks.strategies.owasp_synthetic import OwaspSynthetic
from modeltheft.attacks.strategies.rendered_digits import RenderedDigits
from modeltheft.attacks.strategies.uniform import UniformNoise
from modeltheft.registry import build

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        OwaspSynthetic,
        UniformNoise,
        ActiveSelection,
        EquationSolving,
        NaturalPatches,
        JacobianAugmentation,
        RenderedDigits,
    )
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """A strategy by its registered name, with keyword parameters checked against its signature."""
    return build(STRATEGIES, name, params, "strategy")


__all__ = ["STRATEGIES", "QueryHistory", "Strategy", "make_strategy"]
