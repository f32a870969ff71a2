"""Per-client state in a worker's memory is bounded; a dropped client is read back from the
store with the same result (:mod:`modeltheft.defenses.clients`)."""

import numpy as np
import pytest

from modeltheft.defenses.base import Answers, DefenseContext, StageEnv
from modeltheft.defenses.clients import ClientCache
from modeltheft.defenses.detection import Prada
from modeltheft.defenses.streams import StreamTest
from modeltheft.state import MemoryStore
from modeltheft.tasks import digits_task


class Held:
    def __init__(self, name: str, nbytes: int = 1) -> None:
        self.name = name
        self.nbytes = nbytes


def test_the_least_recently_used_client_is_dropped() -> None:
    cache: ClientCache[Held] = ClientCache(size=2)
    a, b, c = Held("a"), Held("b"), Held("c")
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)
    assert "b" not in cache and cache.get("a") is a and cache.get("c") is c and len(cache) == 2
    with pytest.raises(ValueError):
        ClientCache(size=0)


def test_the_cache_keeps_to_its_byte_budget_and_drops_idle_clients() -> None:
    """Issue 14: 4,096 clients of 100 KB each were 400 MB a worker; bytes are capped too."""
    now = [0.0]
    cache: ClientCache[Held] = ClientCache(size=100, budget=250, ttl=60.0, clock=lambda: now[0])
    for name in "abc":
        cache.put(name, Held(name, 100))
    assert "a" not in cache and len(cache) == 2 and cache.nbytes == 200
    grown = cache["b"]
    grown.nbytes = 200
    cache.put("b", grown)  # b grew: c, the least recently used, goes
    assert list("b") == [n for n in "abc" if n in cache] and cache.nbytes == 200
    huge = cache.put("d", Held("d", 1000))  # alone over the budget: kept, the rest dropped
    assert cache.get("d") is huge and len(cache) == 1
    now[0] = 61.0
    assert cache.get("d") is None and len(cache) == 0 and cache.nbytes == 0


@pytest.mark.parametrize("stage_type", [Prada, StreamTest])
def test_a_dropped_client_is_read_back_from_the_store(stage_type: type) -> None:
    """Three clients through a stage that keeps two: the first one's next answers and
    statistics are those of a stage that never dropped it."""
    task = digits_task()
    rows = np.asarray(task.data.X_eval, dtype=float)
    small, full = stage_type(), stage_type()
    small._clients = ClientCache(size=2)
    store_small, store_full = MemoryStore(), MemoryStore()
    for stage, store in ((small, store_small), (full, store_full)):
        stage.setup(StageEnv(store, task))
    rng = np.random.default_rng(0)
    for step in range(40):
        client = ["a", "b", "c"][step % 3] if step < 30 else "a"
        X = rows[rng.integers(len(rows), size=3)]
        probabilities = np.full((3, 10), 0.1)
        results = []
        for stage, store in ((small, store_small), (full, store_full)):
            ctx = DefenseContext(client, np.random.default_rng(step), store, inputs=X)
            answers = Answers(probabilities, probabilities.copy())
            results.append(stage.transform(answers, ctx))
        assert np.array_equal(results[0].flagged, results[1].flagged)
        assert len(small._clients) <= 2
    if stage_type is Prada:
        assert small.statistic("a", store_small) == full.statistic("a", store_full)


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
@pytest.mark.parametrize("stage_type", [Prada, StreamTest])
def test_windows_bound_the_store_and_a_fresh_worker_agrees(
    stage_type: type, backend: str, tmp_path, request: pytest.FixtureRequest
) -> None:
    """Issue 14: a client's rows and records are trimmed to a window in the store, and a
    worker that reads the client afresh after trims decides as the one that held it all."""
    from modeltheft.state import RedisStore, SqliteStore

    task = digits_task()
    rows = np.asarray(task.data.X_eval, dtype=float)
    kwargs = {"window": 20, "max_rows": 10} if stage_type is Prada else {"max_rows": 10}
    if backend == "redis":
        namespace = f"test:{request.node.nodeid}:"
        store = RedisStore(request.getfixturevalue("redis_url"), namespace=namespace)
    else:
        store = MemoryStore() if backend == "memory" else SqliteStore(tmp_path / "s.db")
    held, fresh = stage_type(**kwargs), stage_type(**kwargs)
    fresh._clients = ClientCache(size=1)  # two clients: every request reads afresh
    for stage in (held, fresh):
        stage.setup(StageEnv(store, task))
    rng = np.random.default_rng(1)
    list_key = "prada:{}:rows" if stage_type is Prada else "stream:rows:{}"
    for step in range(150):
        X = rows[rng.integers(len(rows), size=int(rng.integers(1, 5)))]
        probabilities = np.eye(10)[rng.integers(10, size=len(X))] * 0.9 + 0.01
        flags = []
        for client, stage in (("held", held), ("fresh", fresh)):
            ctx = DefenseContext(client, np.random.default_rng(step), store, inputs=X)
            flags.append(stage.transform(Answers(probabilities, probabilities.copy()), ctx))
        assert np.array_equal(flags[0].flagged, flags[1].flagged)
        if stage_type is Prada:
            assert held.statistic("held", store) == fresh.statistic("fresh", store)
        for client in ("held", "fresh"):
            items = store.items(list_key.format(client), 0)
            assert sum(len(_rows_of(item)) for item in items) <= 2 * 10 + 4
        if stage_type is Prada:
            assert len(store.items("prada:held:d", 0)) <= 2 * 20 + 4
    total = held._clients["held"]
    if stage_type is Prada:
        assert total.n_records > 300 and total.base.records_from > 0  # windows did move
    else:
        assert total.rows is not None and total.rows.n == 10


def _rows_of(item: bytes) -> np.ndarray:
    from modeltheft.defenses.prada_state import read_rows

    return read_rows(item, labelled=True)[1]


def test_rows_stored_one_per_item_before_are_still_read() -> None:
    """A state written before rows were packed (one row an item) reads as it did."""
    from modeltheft.defenses.keyed import label_prefix
    from modeltheft.defenses.prada_state import JOINED, record

    task = digits_task()
    rows = np.asarray(task.data.X_eval[:30], dtype=float)
    store = MemoryStore()
    store.append("prada:old:rows", [label_prefix(i % 3) + r.tobytes() for i, r in enumerate(rows)])
    store.append("prada:old:d", [record(0, JOINED, 1.0 + i, bytes(8)) for i in range(30)])
    store.append("stream:rows:old", [r.tobytes() for r in rows])
    prada, stream = Prada(), StreamTest()
    for stage in (prada, stream):
        stage.setup(StageEnv(store, task))
    assert prada.statistic("old", store) is not None
    state = prada._clients["old"]
    assert sum(g.n for g in state.growing.values()) == 30 and len(state.distances) == 30
    assert stream._sync(store, "old").rows.n == 30


def test_a_clients_size_is_not_undercounted() -> None:
    """The budget is in bytes the cache counts: PRADA's records must be counted at what they
    hold (the 1 M-query run grew past its budget when they were counted at half of it)."""
    import os
    import tracemalloc

    from modeltheft.defenses.prada_state import JOINED, PradaClient, record

    records = [record(i % 10, JOINED, 1.0 + i, os.urandom(8)) for i in range(2000)]
    PradaClient().fold(0, records[:50])  # NumPy's first-use caches are not the client's
    tracemalloc.start()
    try:
        state = PradaClient()
        for i in range(0, len(records), 7):  # as requests come: a few records at a time
            state.fold(i, records[i : i + 7])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held <= state.nbytes <= 2 * held
