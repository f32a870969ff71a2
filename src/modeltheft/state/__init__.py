"""Per-client state kept by stateful defenses."""

from modeltheft.state.base import StateStore
from modeltheft.state.memory import MemoryStore

__all__ = ["MemoryStore", "StateStore"]
