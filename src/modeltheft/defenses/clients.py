"""What a worker keeps in memory per client, for a bounded number of clients.

Stages that mirror a client's history from the state store (PRADA's distances, the stream
test's rows) keep their copy in a :class:`ClientCache`: past ``size`` clients the least
recently seen one is dropped, and read back from the store, which stays the source of truth,
if it returns. A worker's memory then grows with its active clients, not with every key
it ever served (issue 14).
"""

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")

MAX_CLIENTS = 4096
"""Clients whose state a stage keeps in a worker's memory."""


class ClientCache(Generic[V]):
    """A least-recently-used map from client names to their in-memory state."""

    def __init__(self, size: int = MAX_CLIENTS) -> None:
        if size < 1:
            raise ValueError(f"a client cache holds at least 1 client, got {size}")
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, client: str) -> V | None:
        """The client's state, marked as just used; None if not held."""
        value = self._items.get(client)
        if value is not None:
            self._items.move_to_end(client)
        return value

    def put(self, client: str, value: V) -> V:
        """Hold ``value`` for ``client``, dropping the least recently used past ``size``."""
        self._items[client] = value
        self._items.move_to_end(client)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __getitem__(self, client: str) -> V:
        return self._items[client]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, client: object) -> bool:
        return client in self._items
