"""In-process state: fine for one worker and for experiments; lost on exit."""

import secrets
import threading
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from modeltheft.state.audit import AuditEntry, select
from modeltheft.state.base import BucketState, refill, withdraw


class MemoryStore:
    """Thread-safe state held in dicts.

    Secrets come from the operating system's entropy; experiments that must be reproducible
    from a seed may pass ``rng`` to draw them instead (never do that in a service).
    """

    transactions = False
    """Whether calls share transactions (batches; group commit: :mod:`modeltheft.state.group`)."""

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng
        self._counters: dict[str, int] = {}
        self._lists: dict[str, list[bytes]] = {}
        self._trimmed: dict[str, int] = {}  # items trimmed from the head of each list
        self._sets: dict[str, set[str]] = {}
        self._secrets: dict[str, bytes] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._audit: deque[AuditEntry] = deque()
        self._lock = threading.Lock()

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        with self._lock:
            value = self._counters.get(key, 0) + amount
            self._counters[key] = value
            return value

    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        with self._lock:
            return self._counters.get(key, 0)

    def raise_to(self, key: str, value: int) -> int:
        """Set counter ``key`` to ``max(current, value)`` and return the result."""
        with self._lock:
            new = max(self._counters.get(key, 0), value)
            self._counters[key] = new
            return new

    def append(self, key: str, items: Sequence[bytes]) -> int:
        """Append ``items`` to list ``key``; return its new length."""
        with self._lock:
            target = self._lists.setdefault(key, [])
            target.extend(bytes(item) for item in items)
            return self._trimmed.get(key, 0) + len(target)

    def items(self, key: str, start: int = 0) -> list[bytes]:
        """Items of list ``key`` from index ``start`` on (a negative start counts from the end)."""
        with self._lock:
            if start >= 0:
                start = max(0, start - self._trimmed.get(key, 0))
            return list(self._lists.get(key, [])[start:])

    def trim(self, key: str, start: int) -> int:
        """Delete the items before index ``start`` (the others keep their indexes)."""
        with self._lock:
            target = self._lists.get(key)
            drop = min(len(target or []), start - self._trimmed.get(key, 0))
            if target is None or drop <= 0:
                return 0
            del target[:drop]
            self._trimmed[key] = self._trimmed.get(key, 0) + drop
            return drop

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the counters, lists, sets and buckets named ``keys``."""
        with self._lock:
            for key in keys:
                for table in (self._counters, self._lists, self._trimmed, self._sets):
                    table.pop(key, None)
                self._buckets.pop(key, None)

    def take_members(self, key: str, count: int) -> list[str]:
        """Remove up to ``count`` members of set ``key`` and return them."""
        with self._lock:
            present = self._sets.get(key, set())
            taken = [present.pop() for _ in range(min(max(0, count), len(present)))]
            if not present:
                self._sets.pop(key, None)
            return taken

    def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to set ``key``."""
        with self._lock:
            self._sets.setdefault(key, set()).add(member)

    def add_new_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """Add ``members`` to set ``key``; for each, whether it was new."""
        with self._lock:
            present = self._sets.setdefault(key, set())
            new = []
            for member in members:
                new.append(member not in present)
                present.add(member)
            return new

    def has_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """For each of ``members``, whether it is in set ``key``."""
        with self._lock:
            present = self._sets.get(key, set())
            return [member in present for member in members]

    def members(self, key: str) -> set[str]:
        """Members of set ``key``."""
        with self._lock:
            return set(self._sets.get(key, set()))

    def secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret created on first use."""
        with self._lock:
            if name not in self._secrets:
                fresh = (
                    secrets.token_bytes(nbytes) if self._rng is None else self._rng.bytes(nbytes)
                )
                self._secrets[name] = fresh
            return self._secrets[name]

    def take_tokens(
        self, key: str, cost: float, capacity: float, refill_per_second: float, now: float
    ) -> BucketState:
        """Withdraw ``cost`` tokens from bucket ``key``."""
        with self._lock:
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = refill(tokens, last, capacity, refill_per_second, now)
            state = withdraw(tokens, cost, capacity, refill_per_second)
            self._buckets[key] = (state.remaining, max(last, now))
            return state

    def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """Add ``entries`` to the audit log (the entries themselves: nothing is encoded)."""
        with self._lock:
            self._audit.extend(entries)

    def audit_entries(
        self, client: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries of ``client`` at or after ``since``, oldest first, the newest ``limit``."""
        with self._lock:
            entries = list(self._audit)
        return select(entries, client, since, limit)

    def audit_prune(self, before: float, limit: int | None = None) -> int:
        """Drop the entries older than ``before`` from the front (the log is in time order),
        ``limit`` at most."""
        removed = 0
        with self._lock:
            while self._audit and self._audit[0].time < before and removed != limit:
                self._audit.popleft()
                removed += 1
        return removed

    def batch(self) -> AbstractContextManager[None]:
        """Each call is atomic under the store's lock already: nothing to group."""
        return nullcontext()

    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to release."""
