"""Group commit: the requests a service handles in one turn of its event loop share a commit.

The first request of a turn opens the store's group (one ``BEGIN IMMEDIATE``), the requests after it
in the same turn join it (each a unit of its own, taken back alone if it fails), and a callback
queued behind them commits them all at once. Every request is answered only after that commit, so
the audit-before-answer promise holds, and a commit that fails is a 503 for each of them (nothing of
theirs was kept). Under load many requests share one commit; alone, a request waits one turn of the
loop (microseconds). Stores without transactions (memory, Redis) skip all this.
"""

import asyncio
from typing import Protocol


class GroupStore(Protocol):
    """What group commit needs of a store."""

    transactions: bool

    def open_group(self) -> None: ...

    def close_group(self) -> None: ...


class GroupCommit:
    """Shares one commit among the requests of a turn of the running event loop."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.enabled = bool(getattr(store, "transactions", False))
        self._open: asyncio.Future[None] | None = None

    def join(self) -> "asyncio.Future[None] | None":
        """The current turn's commit (opening it if needed); None without transactions.

        Raises :class:`~modeltheft.errors.StateUnavailable` if the group cannot start."""
        if not self.enabled:
            return None
        if self._open is None:
            store: GroupStore = self.store  # type: ignore[assignment]
            store.open_group()
            loop = asyncio.get_running_loop()
            self._open = loop.create_future()
            loop.call_soon(self._commit)
        return self._open

    def _commit(self) -> None:
        done, self._open = self._open, None
        if done is None:  # pragma: no cover - one callback per group
            return
        store: GroupStore = self.store  # type: ignore[assignment]
        try:
            store.close_group()
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: each waiter raises it, none may be left to
        else:
            done.set_result(None)

    @staticmethod
    async def committed(done: "asyncio.Future[None] | None") -> None:
        """Wait for ``done`` (shielded: a cancelled request leaves the group's commit alone)."""
        if done is not None:
            await asyncio.shield(done)
