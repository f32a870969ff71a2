"""Issue 14: a worker's and the store's per-client state stay bounded as traffic grows:
idle clients are evicted (but keep their status, alerts and quota), random streams are
capped, the service monitor's old epochs are deleted."""

from unittest import mock

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modeltheft.defenses import GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses import guarded as guarded_module
from modeltheft.defenses.alerts import STRICT, client_status, served_key, status_key
from modeltheft.defenses.service_monitor import ServiceMonitor
from modeltheft.state import MemoryStore, SqliteStore
from modeltheft.tasks import digits_task

TASK = digits_task().held_out()
DAY = 86400.0


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    return LogisticRegression(max_iter=300).fit(TASK.data.X_train, TASK.data.y_train)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _keys(store: MemoryStore) -> set[str]:
    return set(store._counters) | set(store._lists) | set(store._sets) | set(store._buckets)


def test_an_idle_client_loses_its_detector_state_but_not_its_status_or_quota(
    model: LogisticRegression,
) -> None:
    clock = Clock(1_000 * DAY)
    store = MemoryStore(np.random.default_rng(0))
    with mock.patch.object(guarded_module.time, "time", clock):
        g = GuardedModel(
            model, load_pipeline("recommended"), store, seed=0, task=TASK, idle_after=DAY
        )
        X = TASK.data.X_eval
        for i in range(6):
            g.answer("sleeper", X[10 * i : 10 * i + 10])
            g.answer("busy", X[10 * i : 10 * i + 10])
        store.raise_to(status_key("sleeper"), STRICT)  # as a detector would
        kinds = ("prada:sleeper:d", "stream:rows:sleeper", "ood:seen:sleeper", "seen:sleeper")
        assert set(kinds) <= _keys(store)
        clock.now += 1.2 * DAY  # busy keeps coming, the sleeper does not
        for i in range(3):
            clock.now += 0.2 * DAY
            g.answer("busy", X[100 + i : 101 + i])
        clock.now += 61
        g.answer("busy", X[200:201])  # a sweep: the sleeper has been idle for 1.8 days
        left = {k for k in _keys(store) if "sleeper" in k and not k.startswith("active:")}
        assert left == {status_key("sleeper"), served_key("sleeper"), "bucket:sleeper"}
        assert client_status(store, "sleeper") == STRICT
        assert store.get(served_key("sleeper")) == 60
        assert "prada:busy:d" in _keys(store) and "sleeper" not in g._rngs
        # It comes back: tested afresh, still strict.
        g.answer("sleeper", X[:5])
        assert client_status(store, "sleeper") == STRICT


def test_a_client_active_in_a_later_epoch_is_not_evicted(model: LogisticRegression) -> None:
    clock = Clock(500 * DAY)
    store = MemoryStore(np.random.default_rng(0))
    with mock.patch.object(guarded_module.time, "time", clock):
        g = GuardedModel(model, load_pipeline("recommended"), store, task=TASK, idle_after=DAY)
        X = TASK.data.X_eval
        for step in range(12):  # one request every 0.2 days, 2.4 days in all
            g.answer("regular", X[step : step + 3])
            clock.now += 0.2 * DAY
        assert g.evict_idle(clock.now) == []
        assert len(store.items("prada:regular:d")) == 36


def test_eviction_does_a_bounded_amount_of_work(model: LogisticRegression, tmp_path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    g = GuardedModel(model, Pipeline([]), store, task=TASK, idle_after=DAY)
    now = 100 * DAY
    epoch = g._epoch(now - 2 * DAY)
    store.add_new_members(f"active:{epoch}", [f"c{i}" for i in range(250)])
    store.raise_to("idle:swept", epoch)
    assert len(g.evict_idle(now, limit=100)) == 100
    assert len(g.evict_idle(now, limit=100)) == 100
    assert len(g.evict_idle(now, limit=100)) == 50
    assert g.evict_idle(now, limit=100) == [] and store.get("idle:swept") > epoch


def test_random_streams_are_capped(model: LogisticRegression) -> None:
    g = GuardedModel(model, Pipeline([]), MemoryStore(), seed=3, task=TASK)
    first = g._rng("c0").random()
    with mock.patch.object(guarded_module, "MAX_RNGS", 10):
        for i in range(50):
            g._rng(f"c{i}")
        assert len(g._rngs) == 10
    again = g._rng("c0").random()  # dropped, then made again from the seed
    assert again == first


def test_the_service_monitor_deletes_epochs_it_no_longer_reads(model: LogisticRegression) -> None:
    store = MemoryStore(np.random.default_rng(0))
    g = GuardedModel(model, Pipeline([ServiceMonitor(window=20, min_rows=10)]), store, task=TASK)
    X = TASK.data.X_eval
    for i in range(61):  # 61 young keys x 3 rows: 10 epochs of 20 rows
        g.answer(f"k{i}", X[3 * i : 3 * i + 3])
    epochs = sorted(int(k.split(":")[2]) for k in store._lists if k.startswith("svc:rows:"))
    assert epochs == [8, 9]  # the two read


def test_seen_sets_keep_two_spans_of_rows(model: LogisticRegression) -> None:
    """The rows a client sent while clean and the OOD monitor's rows seen are kept per span
    of SEEN_SPAN queries, two spans at most; within them, repeats are still recognised."""
    from modeltheft.defenses import base

    store = MemoryStore(np.random.default_rng(0))
    g = GuardedModel(model, load_pipeline("recommended"), store, seed=0, task=TASK)
    X = TASK.data.X_eval
    with mock.patch.object(base, "SEEN_SPAN", 10):
        for i in range(12):  # 60 rows, spans of 10 queries
            g.answer("c", X[5 * i : 5 * i + 5])
            sets = sorted(k for k in store._sets if k.startswith(("seen:c", "ood:seen:c")))
            assert len(sets) <= 4
        assert sets == ["ood:seen:c:5", "seen:c:5"]  # the next batch starts span 6
        n = store.get("ood:n:c")
        g.answer("c", X[50:55])  # sent in the span before: repeats, not counted again
        assert store.get("ood:n:c") == n
        g.answer("c", X[0:5])  # sent 5 spans ago: forgotten, counted as new
        assert store.get("ood:n:c") == n + 5
        ctx = base.DefenseContext("c", np.random.default_rng(0), store, inputs=X[0:10])
        assert ctx.known.tolist() == [True] * 5 + [False] * 5  # X[5:10]: 6 spans ago
