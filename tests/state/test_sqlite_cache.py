"""The read cache of a SqliteStore stays within its bound (issue 14, item 2: a worker's RSS):
past ``CACHE_LIMIT`` the oldest reads go, never a write held for the commit, and what the
store answers stays exact."""

import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from modeltheft.state import SqliteStore
from modeltheft.state import sqlite as sqlite_module
from modeltheft.state.sqlite import CACHE_LIMIT
from modeltheft.state.sqlite_cache import Cache
from tests.state.test_sqlite_groups import run_group


def test_the_cache_of_a_store_read_by_many_keys_stays_within_its_bound(tmp_path: Path) -> None:
    """`recommended` reads ~30 keys a client: 10,000 clients are ~300,000 keys. The cache
    holds at most CACHE_LIMIT of them, within ~8 MB (it used to reach 200,000, ~30 MB)."""
    store = SqliteStore(tmp_path / "state.db")
    with store.batch():
        store.incr("stream:k:client-0:rank:3")
    key = "stream:k:client-{:05d}:rank:{}".format
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(CACHE_LIMIT):  # full: the most it holds
            store.get(key(i // 30, i % 30))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    peak = 0
    for i in range(CACHE_LIMIT, 2 * CACHE_LIMIT):
        store.get(key(i // 30, i % 30))
        peak = max(peak, len(store._cache))
    assert peak <= CACHE_LIMIT + 1
    assert len(store._cache) > CACHE_LIMIT // 2  # the newest reads are kept, not all dropped
    assert held < 8e6, f"{held / 1e6:.1f} MB"
    assert store.get("stream:k:client-0:rank:3") == 1
    store.close()


def test_shrinking_drops_the_oldest_reads_and_never_a_held_write() -> None:
    cache = Cache()
    cache.write_counter("held", 7)  # written inside the transaction, not yet committed
    cache.write_bucket("bucket", 1.0, 2.0)
    cache.write_items("list", 0, [b"x"])
    for i in range(100):
        cache.read_counter(f"c{i}", i)
        cache.read_length(f"l{i}", i)
    dropped = cache.shrink(50)
    assert len(cache) <= 50 and dropped == 203 - len(cache)
    assert cache.counters["held"] == 7 and cache.dirty_counters == {"held": 7}
    assert cache.buckets["bucket"] == (1.0, 2.0) and cache.lengths["list"] == 1
    assert "c99" in cache.counters and "c0" not in cache.counters  # the oldest went
    assert "l99" in cache.lengths and "l0" not in cache.lengths
    assert cache.shrink(1000) == 0
    cache.begin_unit()
    assert cache.shrink(10) == 0  # not inside a unit: its undo notes would restore entries
    cache.end_unit()
    assert cache.shrink(10) > 0 and len(cache) <= 10


def test_a_store_whose_cache_shrinks_all_the_time_answers_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores (two workers) on 60 keys with a cache of 8: batches, groups with a failed
    request taken back, and another store's writes; every read agrees with a plain dict."""
    monkeypatch.setattr(sqlite_module, "CACHE_LIMIT", 8)
    path = tmp_path / "state.db"
    stores = [SqliteStore(path), SqliteStore(path)]
    expected: dict[str, int] = {}
    lengths: dict[str, int] = {}
    rng = np.random.default_rng(0)

    def request(store: SqliteStore, keys: list[str], fail: bool) -> None:
        for key in keys:
            store.incr(key, 2)
            store.append(f"l{key}", [key.encode()])
        if fail:
            raise ValueError("taken back")

    for step in range(300):
        store = stores[step % 2]
        keys = [f"k{int(k)}" for k in rng.integers(60, size=3)]
        if step % 3 == 0:  # a group of two requests, the second one fails
            fail = [f"k{int(k)}" for k in rng.integers(60, size=3)]
            ok = partial(request, store, keys, False)
            out = run_group(store, ok, partial(request, store, fail, True))
            assert out[0] is None and isinstance(out[1], ValueError)
        else:
            with store.batch():
                request(store, keys, False)
        for key in keys:
            expected[key] = expected.get(key, 0) + 2
            lengths[f"l{key}"] = lengths.get(f"l{key}", 0) + 1
        assert len(store._cache) <= 8 + 6
        probe = f"k{int(rng.integers(60))}"
        for reader in stores:
            assert reader.get(probe) == expected.get(probe, 0)
            assert len(reader.items(f"l{probe}")) == lengths.get(f"l{probe}", 0)
    for store in stores:
        store.close()


def test_members_known_count_in_the_bound_and_held_ones_stay() -> None:
    cache = Cache()
    cache.add_members("held", ["h1", "h2"])  # added inside the transaction, not yet written
    cache.read_counter("c", 1)
    for i in range(40):
        cache.know_members(f"s{i}", [f"m{j}" for j in range(5)])
    assert cache.member_count == 202 and len(cache) == 1  # bounded apart from the reads
    assert cache.shrink(0) == 1 and cache.member_count == 202
    dropped = cache.shrink_members(100)
    assert cache.member_count <= 100 and dropped == 202 - cache.member_count
    assert cache.members["held"] == {"h1": None, "h2": None} and "held" in cache.held_members
    assert "s39" in cache.members and "s0" not in cache.members  # the oldest went
    cache.begin_unit()
    cache.add_members("new", ["n"])
    cache.know_members("s39", ["extra"])
    cache.undo_unit()
    assert "new" not in cache.members and "new" not in cache.held_members
    assert "extra" not in cache.members["s39"]


def test_the_members_a_store_knows_stay_within_their_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two new rows a request are two members known: bounded by MEMBERS_LIMIT apart from the
    counters, which they never push out; the answers stay exact."""
    monkeypatch.setattr(sqlite_module, "MEMBERS_LIMIT", 40)
    store = SqliteStore(tmp_path / "state.db")
    for i in range(100):
        with store.batch():
            store.incr(f"n{i % 3}")
            assert store.add_new_members(f"seen{i // 10}", [f"r{i}", f"r{i}b"]) == [True, True]
        assert store._cache.member_count <= 40 + 2
    assert set(store._cache.counters) == {"n0", "n1", "n2"}
    assert store.has_members("seen0", ["r0", "r0b", "r99"]) == [True, True, False]
    assert store.add_new_members("seen9", ["r99", "r98b", "x"]) == [False, False, True]
    store.close()
