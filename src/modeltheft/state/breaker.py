"""A circuit breaker around a state store: during an outage, refuse at once instead of waiting.

Without it, every request meets the outage on its own: a locked SQLite database makes each
wait the busy timeout (2 s) on the event loop, one after the other, so a 15 s lock stalls the
whole worker for its length. With it, the first call that fails opens the breaker (one
WARNING line); from then on every call raises
:class:`~modeltheft.errors.StateUnavailable` at once (HTTP 503 + Retry-After, ``/healthz``
503 too), and a background thread pings the store every ``probe_every`` seconds, off the
event loop. The first ping that succeeds closes it (one INFO line). So no request waits
longer than the store's own timeout, and the service answers again within ``probe_every``
of the store's return.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from modeltheft.errors import StateUnavailable, StoreDown
from modeltheft.state.base import StateStore

log = logging.getLogger("modeltheft.state")

PROBE_EVERY = 0.25
"""Seconds between two pings of a store that is down."""
_OWN = frozenset({"close", "ping"})


class Breaker:
    """``store``'s calls, refused at once while it is known to be down (see the module doc)."""

    def __init__(self, store: StateStore, probe_every: float = PROBE_EVERY) -> None:
        self.store = store
        self.probe_every = probe_every
        self._down: str | None = None
        self._since = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def inner(self) -> StateStore:
        """The store itself, for the calls made inside :meth:`batch`: the batch checked the
        breaker and trips it for them (measured: ~25 wrapped calls a request before, <= 6 after)."""
        return self.store

    @property
    def down(self) -> bool:
        """Whether the store is known to be unavailable now."""
        return self._down is not None

    def _check(self) -> None:
        reason = self._down
        if reason is not None:
            raise StoreDown(reason, retry_after=1.0)

    def _trip(self, exc: StateUnavailable) -> None:
        with self._lock:
            if self._down is not None or self._closed.is_set():
                return
            self._down, self._since = str(exc), time.monotonic()
        log.warning("state store unavailable, refusing requests until it is back: %s", exc)
        threading.Thread(target=self._probe, name="modeltheft-store-probe", daemon=True).start()

    def _probe(self) -> None:
        while not self._closed.wait(self.probe_every):
            try:
                self.store.ping()
            except StateUnavailable:
                continue
            except Exception as exc:
                log.warning("state store probe failed: %s", type(exc).__name__)
                continue
            with self._lock:
                self._down = None
            log.info("state store available again after %.1f s", time.monotonic() - self._since)
            return

    def _guarded(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._down is not None:  # _check's own first test, inline: every wrapped call
                self._check()
            try:
                return method(*args, **kwargs)
            except StateUnavailable as exc:
                self._trip(exc)
                raise

        return call

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if name.startswith("_") or not callable(attribute) or name in _OWN:
            return attribute
        guarded = self._guarded(attribute)
        setattr(self, name, guarded)  # built once: later lookups find it without __getattr__
        return guarded

    def batch(self) -> AbstractContextManager[None]:
        """The store's batch, refused at once while it is down."""
        self._check()
        return _Batch(self)

    def close_group(self) -> None:
        """Commit the open group, even while the breaker is down: a group that met the outage
        must reach the store to be closed (its work taken back), or the store would stay in
        it and refuse every later group."""
        try:
            self.store.close_group()  # type: ignore[attr-defined]
        except StateUnavailable as exc:
            self._trip(exc)
            raise

    def ping(self) -> None:
        """StateUnavailable while down (``/healthz`` reports the outage); else the store's ping."""
        self._guarded(self.store.ping)()

    def close(self) -> None:
        """Stop probing and close the store."""
        self._closed.set()
        self.store.close()


class _Batch:
    """The store's batch: a store failure entering, inside or leaving it trips the breaker.
    (A class, not a ``@contextmanager`` generator: 0.8 µs a batch instead of 1.4 in a loop.)"""

    __slots__ = ("_breaker", "_inner")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._inner: AbstractContextManager[None] | None = None

    def __enter__(self) -> None:
        try:
            self._inner = self._breaker.store.batch()
            self._inner.__enter__()
        except StateUnavailable as exc:
            self._breaker._trip(exc)
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        assert self._inner is not None  # entered
        try:
            suppressed = self._inner.__exit__(kind, error, trace)
        except StateUnavailable as exc:
            self._breaker._trip(exc)
            raise
        if not suppressed and isinstance(error, StateUnavailable):
            self._breaker._trip(error)
        return suppressed
