"""Substitute models the thief trains: plain scikit-learn estimators, chosen by name."""

from collections.abc import Callable

from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression

from modeltheft.errors import ConfigError

SUBSTITUTES: dict[str, Callable[[int], ClassifierMixin]] = {
    # The lab's copy: LogisticRegression(max_iter=1000).
    "lr": lambda seed: LogisticRegression(max_iter=1000),
}


def make_substitute(name: str, seed: int = 0) -> ClassifierMixin:
    """An unfitted substitute; ``seed`` feeds estimators that have a random_state."""
    if name not in SUBSTITUTES:
        raise ConfigError(
            f"unknown substitute {name!r}; choose one of {', '.join(sorted(SUBSTITUTES))}"
        )
    return SUBSTITUTES[name](seed)
