"""The interface every state store offers to stateful defenses."""

from typing import Protocol


class StateStore(Protocol):
    """Named integer counters, updated atomically."""

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        ...

    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        ...
