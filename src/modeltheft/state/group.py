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
        self._waiters: list[asyncio.Future[None]] | None = None  # the open group's requests

    def join(self) -> "asyncio.Future[None] | None":
        """This request's wait for the current turn's commit (opening it if needed); None
        without transactions. Each request has a future of its own, so that one cancelled
        leaves the others alone without ``asyncio.shield`` (~8 us a request).

        Raises :class:`~modeltheft.errors.StateUnavailable` if the group cannot start."""
        if not self.enabled:
            return None
        loop = asyncio.get_running_loop()
        if self._waiters is None:
            store: GroupStore = self.store  # type: ignore[assignment]
            store.open_group()
            self._waiters = []
            loop.call_soon(self._commit)
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def _commit(self) -> None:
        waiters, self._waiters = self._waiters, None
        if waiters is None:  # pragma: no cover - one callback per group
            return
        store: GroupStore = self.store  # type: ignore[assignment]
        try:
            store.close_group()
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():  # a cancelled request's is
                    waiter.set_exception(exc)
                    waiter.exception()  # retrieved: a request that failed never awaits it
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    @staticmethod
    async def committed(done: "asyncio.Future[None] | None") -> None:
        """Wait for ``done``, this request's own (cancelling it leaves the commit alone)."""
        if done is not None:
            await done
