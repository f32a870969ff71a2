"""Query strategies, registered by name; each proposes the next queries of an attack."""

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.attacks.strategies.owasp_synthetic import OwaspSynthetic
from modeltheft.attacks.strategies.uniform import UniformNoise
from modeltheft.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (OwaspSynthetic, UniformNoise)}


def make_strategy(name: str) -> Strategy:
    """A strategy by its registered name."""
    if name not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        )
    return STRATEGIES[name]()


__all__ = ["STRATEGIES", "QueryHistory", "Strategy", "make_strategy"]
