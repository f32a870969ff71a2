"""A Redis that refuses commands (full, or holding foreign data) is StateUnavailable, not a
``redis.ResponseError``; a full Redis fails its health ping although it still answers PING."""

import uuid
from collections.abc import Callable, Iterator

import pytest

from modeltheft.errors import StateUnavailable
from modeltheft.state import RedisStore
from modeltheft.state.audit import AuditEntry
from tests.state.damage import full_redis


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore(redis_url, namespace=f"faults-{uuid.uuid4().hex}:")
    yield store
    store.close()


def test_a_full_redis_is_unavailable_then_recovers(store: RedisStore, redis_url: str) -> None:
    entry = AuditEntry(time=1.0, client="alice", outcome="answered", row_hashes=("00" * 8,))
    calls: list[Callable[[], object]] = [
        lambda: store.incr("c"),
        lambda: store.append("l", [b"x"]),
        lambda: store.add_new_members("s", ["m"]),
        lambda: store.take_tokens("b", 1, 10, 1, now=1.0),
        lambda: store.audit_append([entry]),
        store.ping,
    ]
    store.incr("c")
    with full_redis(redis_url):
        for call in calls:
            with pytest.raises(StateUnavailable, match="OutOfMemoryError"):
                call()
        assert store.get("c") == 1  # reads go on
    store.ping()
    assert store.incr("c") == 2


def test_foreign_data_under_a_key_is_unavailable(store: RedisStore, redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as admin:
        admin.set(store._key("l", "history"), b"not a list")  # another program wrote here
    with pytest.raises(StateUnavailable, match="WRONGTYPE"):
        store.append("history", [b"x"])
