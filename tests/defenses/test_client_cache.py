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


def test_the_least_recently_used_client_is_dropped() -> None:
    cache: ClientCache[int] = ClientCache(size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    with pytest.raises(ValueError):
        ClientCache(size=0)


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
