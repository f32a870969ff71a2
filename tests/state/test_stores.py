"""One contract for every state store (memory, SQLite, Redis), plus persistence and processes."""

import math
import multiprocessing
import re
import socket
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from modeltheft.errors import ConfigError
from modeltheft.state import MemoryStore, RedisStore, SqliteStore, StateStore, open_store

Opener = Callable[[], StateStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens store objects on one fresh backend; all objects it opens share the same state."""
    opened: list[StateStore] = []
    if request.param == "memory":
        shared = MemoryStore()

        def opener() -> StateStore:
            return shared
    elif request.param == "sqlite":

        def opener() -> StateStore:
            return SqliteStore(tmp_path / "state" / "s.db")
    else:
        url = request.getfixturevalue("redis_url")
        namespace = f"test:{request.node.nodeid}:"

        def opener() -> StateStore:
            return RedisStore(url, namespace=namespace)

    def tracked() -> StateStore:
        store = opener()
        opened.append(store)
        return store

    yield tracked
    for store in opened:
        store.close()


@pytest.fixture
def store(open_backend: Opener) -> StateStore:
    return open_backend()


def test_counters_add_and_read(store: StateStore) -> None:
    assert store.get("c") == 0
    assert store.incr("c") == 1
    assert store.incr("c", 5) == 6
    assert store.incr("c", -2) == 4
    assert store.get("c") == 4
    assert store.get("other") == 0


def test_raise_to_only_rises(store: StateStore) -> None:
    assert store.raise_to("r", 5) == 5
    assert store.raise_to("r", 3) == 5
    assert store.get("r") == 5
    assert store.raise_to("r", 9) == 9
    assert store.incr("r") == 10
    assert store.raise_to("new", -1) == 0  # an unset counter is 0
    store.incr("negative", -5)
    assert store.raise_to("negative", -2) == -2


def test_append_and_items_with_offsets(store: StateStore) -> None:
    assert store.items("l") == []
    assert store.append("l", [b"a", b"b"]) == 2
    assert store.append("l", [b"c"]) == 3
    assert store.append("l", []) == 3
    assert store.items("l") == [b"a", b"b", b"c"]
    assert store.items("l", 1) == [b"b", b"c"]
    assert store.items("l", 3) == []
    assert store.items("l", 10) == []
    assert store.items("l", -2) == [b"b", b"c"]
    assert store.append("bin", [bytes(range(256))]) == 1
    assert store.items("bin") == [bytes(range(256))]


def test_kinds_do_not_collide(store: StateStore) -> None:
    store.incr("same", 2)
    store.append("same", [b"x"])
    store.add_member("same", "m")
    assert (store.get("same"), store.items("same"), store.members("same")) == (2, [b"x"], {"m"})


def test_sets(store: StateStore) -> None:
    assert store.members("s") == set()
    store.add_member("s", "a")
    store.add_member("s", "b")
    store.add_member("s", "a")
    assert store.members("s") == {"a", "b"}
    assert store.members("t") == set()


def test_add_new_members_says_which_were_new_across_stores(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()
    assert first.add_new_members("seen", ["a", "b", "a"]) == [True, True, False]
    assert second.add_new_members("seen", ["b", "c"]) == [False, True]
    assert first.add_new_members("seen", []) == []
    assert first.members("seen") == {"a", "b", "c"}
    assert second.add_new_members("other", ["a"]) == [True]


def test_has_members_reads_without_adding(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()
    first.add_new_members("seen", ["a", "b"])
    assert second.has_members("seen", ["b", "x", "a", "b"]) == [True, False, True, True]
    assert second.has_members("seen", []) == [] and second.has_members("none", ["a"]) == [False]
    assert first.members("seen") == {"a", "b"}
    many = [str(i) for i in range(1200)]
    first.add_new_members("many", many[::2])
    assert first.has_members("many", many) == [i % 2 == 0 for i in range(1200)]


def test_secret_is_stable_and_shared(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()
    secret = first.secret("hmac")
    assert len(secret) == 32
    assert first.secret("hmac") == secret
    assert second.secret("hmac") == secret
    assert len(second.secret("other", 16)) == 16
    assert first.secret("other") != secret


def test_counters_and_lists_are_shared(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()
    first.incr("n", 2)
    second.append("l", [b"x"])
    assert second.get("n") == 2
    assert first.items("l") == [b"x"]


def test_threads_share_one_store(store: StateStore) -> None:
    def work(_: int) -> list[int]:
        lengths = []
        for _ in range(50):
            store.incr("t")
            lengths.append(store.append("tl", [b"x"]))
        return lengths

    with ThreadPoolExecutor(8) as pool:
        lengths = [n for part in pool.map(work, range(8)) for n in part]
    assert store.get("t") == 400
    assert sorted(lengths) == list(range(1, 401))


def test_token_bucket(store: StateStore) -> None:
    full = store.take_tokens("b", 1, capacity=4, refill_per_second=2, now=100.0)
    assert (full.allowed, full.remaining, full.retry_after) == (True, 3.0, 0.0)
    assert store.take_tokens("b", 3, 4, 2, 100.0).remaining == 0.0
    empty = store.take_tokens("b", 3, 4, 2, 100.0)
    assert not empty.allowed and empty.remaining == 0.0
    assert empty.retry_after == pytest.approx(1.5)
    # Half a second refills one token; a refused withdrawal takes nothing.
    partial = store.take_tokens("b", 3, 4, 2, 100.5)
    assert not partial.allowed and partial.remaining == pytest.approx(1.0)
    assert partial.retry_after == pytest.approx(1.0)
    refilled = store.take_tokens("b", 3, 4, 2, 101.5)
    assert refilled.allowed and refilled.remaining == pytest.approx(0.0)
    # Never more than the capacity, however long the bucket rested.
    assert store.take_tokens("b", 0, 4, 2, 10_000.0).remaining == pytest.approx(4.0)


def test_cost_above_capacity_is_never_allowed(store: StateStore) -> None:
    state = store.take_tokens("big", 5, capacity=4, refill_per_second=1, now=0.0)
    assert not state.allowed and math.isinf(state.retry_after)
    assert state.remaining == pytest.approx(4.0)


def test_clock_going_backwards_mints_no_tokens(store: StateStore) -> None:
    assert store.take_tokens("k", 4, 4, 1, now=100.0).allowed
    back = store.take_tokens("k", 1, 4, 1, now=50.0)
    assert not back.allowed and back.remaining == pytest.approx(0.0)
    # The bucket remembers the latest time seen: returning to 100 still gives nothing.
    assert not store.take_tokens("k", 1, 4, 1, now=100.0).allowed
    assert store.take_tokens("k", 1, 4, 1, now=101.0).allowed


def test_sqlite_keeps_everything_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "state.db"
    store = SqliteStore(path)
    store.incr("c", 7)
    store.raise_to("r", 11)
    store.append("l", [b"a", b"b"])
    store.add_member("s", "m")
    secret = store.secret("k")
    store.take_tokens("b", 3, 4, 1, now=10.0)
    store.close()
    store.close()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        store.get("c")
    again = SqliteStore(path)
    try:
        assert again.get("c") == 7 and again.get("r") == 11
        assert again.items("l") == [b"a", b"b"] and again.members("s") == {"m"}
        assert again.secret("k") == secret
        assert again.take_tokens("b", 2, 4, 1, now=10.0).allowed is False
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        again.close()


def test_sqlite_rejects_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are not the pages of a database " * 200)
    with pytest.raises(ConfigError, match="not a database"):
        SqliteStore(bad)
    with pytest.raises(ConfigError, match="state database"):
        SqliteStore(tmp_path)  # a folder


# --- several processes at once -------------------------------------------------------------


def _hammer(url: str, barrier: Barrier, results: "Queue[list[int]]") -> None:
    """One worker process: 200 increments and 50 single-item appends on shared keys."""
    store = open_store(url)
    try:
        barrier.wait(timeout=60)
        lengths = []
        for i in range(200):
            store.incr("hits")
            if i % 4 == 0:
                lengths.append(store.append("log", [f"{i}".encode()]))
        results.put(lengths)
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_processes_count_exactly(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    before = open_store(url)
    base_hits, base_log = before.get("hits"), len(before.items("log"))
    before.close()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_hammer, args=(url, barrier, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    lengths = [length for _ in workers for length in results.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    store = open_store(url)
    try:
        assert store.get("hits") - base_hits == 800
        assert len(store.items("log")) - base_log == 200
        # Each append got its own index: the lengths returned are 200 consecutive values.
        assert sorted(lengths) == list(range(base_log + 1, base_log + 201))
    finally:
        store.close()


# --- open_store ----------------------------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    absolute = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(absolute, SqliteStore) and (tmp_path / "a.db").exists()
    absolute.close()
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///sub/rel.db")
    assert (tmp_path / "sub" / "rel.db").exists()
    relative.close()
    plain = open_store(str(tmp_path / "plain.db"))
    assert isinstance(plain, SqliteStore)
    plain.close()


def test_open_store_redis(redis_url: str) -> None:
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "accepted forms"),
        ("postgres://db/x", "accepted forms"),
        ("memory://somewhere", "memory://"),
        ("sqlite://relative.db", "sqlite:///"),
        ("sqlite:///", "sqlite:///"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        open_store(url)


def test_unreachable_redis_is_a_config_error_without_the_password() -> None:
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            open_store(f"redis://user:hunter2-secret@127.0.0.1:{port}/0")
    message = str(info.value)
    assert "hunter2-secret" not in message and len(message.splitlines()) == 1
    assert f"127.0.0.1:{port}" in message and "user:***@" in message


def test_trim_keeps_the_indexes_of_the_items_left(open_backend: Opener) -> None:
    """Issue 14: a list trimmed to a window still counts from its first item ever, so a
    reader with an offset (another worker, another store object) reads on as before."""
    store, other = open_backend(), open_backend()
    assert store.append("w", [b"0", b"1", b"2", b"3", b"4"]) == 5
    assert other.items("w", 3) == [b"3", b"4"]  # caches the length where it does
    assert store.trim("w", 3) == 3
    assert store.trim("w", 2) == 0  # nothing before 2 is left
    assert store.items("w", 3) == [b"3", b"4"] == other.items("w", 3)
    assert store.items("w", 0) == [b"3", b"4"]  # the items left, not from a new index 0
    assert other.items("w", -1) == [b"4"]
    assert store.append("w", [b"5"]) == 6 and other.append("w", [b"6"]) == 7
    assert store.items("w", 5) == [b"5", b"6"] == other.items("w", 5)
    assert store.trim("w", 100) >= 1  # SQLite keeps the newest item: the list's length
    assert store.items("w", 100) == []
    assert store.append("w", [b"7"]) == 8
    assert other.items("w", 7) == [b"7"]


def test_delete_removes_every_kind_and_lists_start_again(open_backend: Opener) -> None:
    store, other = open_backend(), open_backend()
    store.incr("gone", 3)
    store.append("gone", [b"a", b"b"])
    store.trim("gone", 1)
    store.add_member("gone", "m")
    store.take_tokens("gone", 5, 10, 1, now=0.0)
    store.incr("kept", 2)
    assert other.get("gone") == 3 and other.items("gone", 1) == [b"b"]
    store.delete(["gone", "never-there"])
    assert other.get("gone") == 0 and store.get("gone") == 0
    assert other.items("gone") == [] and other.members("gone") == set()
    assert store.take_tokens("gone", 10, 10, 1, now=0.0).allowed  # a full bucket again
    assert other.append("gone", [b"x"]) == 1 and store.items("gone") == [b"x"]
    assert other.get("kept") == 2
    store.delete([])


def test_take_members_removes_what_it_returns(open_backend: Opener) -> None:
    store, other = open_backend(), open_backend()
    store.add_new_members("t", ["a", "b", "c"])
    first = store.take_members("t", 2)
    assert len(first) == 2 and set(first) <= {"a", "b", "c"}
    rest = other.take_members("t", 5)
    assert sorted(first + rest) == ["a", "b", "c"]
    assert store.take_members("t", 5) == [] and other.members("t") == set()
    assert store.take_members("t", 0) == []
