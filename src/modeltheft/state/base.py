"""The interface every state store offers to stateful defenses.

Three backends implement it: :class:`~modeltheft.state.memory.MemoryStore` (one process, lost
on exit), :class:`~modeltheft.state.sqlite.SqliteStore` (embedded, WAL mode, shared by the
worker processes of one machine, survives restarts) and
:class:`~modeltheft.state.redis.RedisStore` (shared by replicas). Every operation is atomic,
so ``serve --workers N`` counts a client's queries exactly once.
"""

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from modeltheft.errors import StateUnavailable
from modeltheft.state.audit import AuditEntry

IDLE_AFTER = 7 * 86400.0
"""Seconds without a request after which a client's detector state is evicted (7 days):
``GuardedModel``'s and ``serve``'s default (``--idle-after``)."""

LOST_RETRY_AFTER = 60.0
"""Retry-After of a lost state: it does not come back until an operator acts."""


class StateLost(StateUnavailable):
    """The store's file was deleted or replaced while in use (HTTP 503, logged at ERROR).

    Nothing is recreated while serving: every request is refused until the service is
    restarted on a restored file (or, knowingly, on a new empty one).
    """

    def __init__(self, message: str, retry_after: float = LOST_RETRY_AFTER) -> None:
        super().__init__(message, retry_after)


@dataclass(frozen=True)
class BucketState:
    """Outcome of one token-bucket withdrawal."""

    allowed: bool
    remaining: float
    """Tokens left after the withdrawal (or before it, if refused)."""
    retry_after: float
    """Seconds until ``cost`` tokens are available (0 if allowed; inf if cost > capacity)."""


class StateStore(Protocol):
    """Counters, append-only lists, sets, secrets and token buckets, all updated atomically."""

    def batch(self) -> AbstractContextManager[None]:
        """The calls inside as one unit where the backend has transactions (SQLite: one
        commit); elsewhere each call stays atomic on its own."""
        ...

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        ...

    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        ...

    def raise_to(self, key: str, value: int) -> int:
        """Set counter ``key`` to ``max(current, value)`` and return the result."""
        ...

    def append(self, key: str, items: Sequence[bytes]) -> int:
        """Append ``items`` to list ``key`` in order; return the list's new length."""
        ...

    def items(self, key: str, start: int = 0) -> list[bytes]:
        """Items of list ``key`` from index ``start`` on (empty if none)."""
        ...

    def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to set ``key``."""
        ...

    def members(self, key: str) -> set[str]:
        """Members of set ``key``."""
        ...

    def add_new_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """Add ``members`` to set ``key``; for each, whether it was new (a repeat is not)."""
        ...

    def has_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """For each of ``members``, whether it is in set ``key`` (the set is not changed)."""
        ...

    def trim(self, key: str, start: int) -> int:
        """Delete the items of list ``key`` before index ``start``; return how many went.

        Indexes do not move: the items kept keep theirs, ``items(key, i)`` still means the
        items at index ``i`` and later, and ``append`` still returns the number of items ever
        appended (so a reader that keeps an offset reads on as before). Used to keep a window
        of a list (a detector's last rows). SQLite keeps a list's newest item whatever
        ``start`` (its length is that item's index + 1): read from ``start``, never from 0.
        """
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the counters, lists, sets and token buckets named ``keys`` (a list deleted
        starts again at index 0): the eviction of an idle client's detector state."""
        ...

    def take_members(self, key: str, count: int) -> list[str]:
        """Remove up to ``count`` members of set ``key`` (any of them) and return them."""
        ...

    def secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret created on first use and the same for every later caller."""
        ...

    def take_tokens(
        self, key: str, cost: float, capacity: float, refill_per_second: float, now: float
    ) -> BucketState:
        """Withdraw ``cost`` tokens from bucket ``key`` (full at first, refilled continuously)."""
        ...

    def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """Add ``entries`` to the audit log, in order."""
        ...

    def audit_entries(
        self, client: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries of ``client`` (all if None) at or after ``since``, oldest first.

        ``limit`` keeps the newest ``limit`` of them.
        """
        ...

    def audit_prune(self, before: float, limit: int | None = None) -> int:
        """Delete the audit entries older than ``before`` (epoch seconds), the oldest ``limit``
        of them at most where the backend can bound it; return how many."""
        ...

    def ping(self) -> None:
        """Raise :class:`~modeltheft.errors.StateUnavailable` unless the store can be written."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def refill(tokens: float, last: float, capacity: float, rate: float, now: float) -> float:
    """Tokens at ``now`` in a bucket that held ``tokens`` at ``last`` (no refill backwards)."""
    return min(capacity, tokens + max(0.0, now - last) * rate)


def withdraw(tokens: float, cost: float, capacity: float, rate: float) -> BucketState:
    """The decision of a withdrawal from a bucket holding ``tokens`` (after refill)."""
    if cost <= tokens:
        return BucketState(True, tokens - cost, 0.0)
    if cost > capacity or rate <= 0:
        return BucketState(False, tokens, float("inf"))
    return BucketState(False, tokens, (cost - tokens) / rate)
