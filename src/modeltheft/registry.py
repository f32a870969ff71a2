"""Build a registered class from a name and keyword parameters, rejecting unknown ones by name."""

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from modeltheft.errors import ConfigError

T = TypeVar("T")


def build(registry: Mapping[str, type[T]], name: str, params: Mapping[str, Any], kind: str) -> T:
    """``registry[name](**params)``; an unknown name or parameter is a ConfigError naming it."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(registry))}")
    cls = registry[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(
            f"{kind} {name!r} has no parameter {', '.join(unknown)} (it takes: {known})"
        )
    return cls(**params)
