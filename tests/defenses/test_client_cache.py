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
