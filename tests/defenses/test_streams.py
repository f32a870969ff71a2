"""stream_test: flags the in-distribution thief, leaves honest streams alone, keeps its state
in the store, works on tables, refuses bad parameters."""

import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses import GuardedModel, Pipeline
from modeltheft.defenses.alerts import STRICT, alerts, client_status
from modeltheft.defenses.base import DefenseContext
from modeltheft.defenses.presets import build_stage
from modeltheft.defenses.streams import EDGES, StreamTest
from modeltheft.errors import ConfigError
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import Task, digits_task, get_task


@pytest.fixture(autouse=True)
def quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="modeltheft")


def model(task: Task) -> LogisticRegression:
    return LogisticRegression(max_iter=300).fit(task.data.X_train, task.data.y_train)


def guarded(task: Task, store: MemoryStore, **params: object) -> GuardedModel:
    stage = StreamTest(**params)
    return GuardedModel(model(task), Pipeline([stage]), store=store, seed=0, task=task)


@pytest.fixture(scope="module")
def thief_queries() -> np.ndarray:
    """20 real digits, then renders filtered to the quarter nearest them and blends."""
    task = digits_task().held_out()
    rng = np.random.default_rng(3)
    public = task.data.public_rows(20, rng)
    pool = RenderedDigits().render(1200, rng)[0]
    distances = np.sqrt(((pool[:, None] - public[None]) ** 2).sum(axis=2))
    kept = np.argsort(distances.min(axis=1))[:300]
    lam = rng.uniform(0.3, 0.8, size=(300, 1))
    blends = lam * pool[kept] + (1 - lam) * public[distances[kept].argmin(axis=1)]
    stream = np.empty((600, 64))
    stream[0::2], stream[1::2] = pool[kept], blends
    return np.vstack([public, stream])


def flagged_after(store: MemoryStore, client: str = "thief") -> int | None:
    return next((a["after_queries"] for a in alerts(store) if a["client"] == client), None)


def test_flags_the_in_distribution_thief(thief_queries: np.ndarray) -> None:
    store = MemoryStore(np.random.default_rng(0))
    g = guarded(digits_task().held_out(), store)
    for row in thief_queries:
        g.answer("thief", row[None])
    after = flagged_after(store)
    assert after is not None and 20 < after <= 500
    assert client_status(store, "thief") == STRICT
    [alert] = alerts(store)
    assert alert["detector"] == "stream_test" and "naturalness rank" in alert["reason"]


def test_leaves_honest_streams_of_real_digits_alone() -> None:
    task = digits_task().held_out()
    store = MemoryStore(np.random.default_rng(0))
    g = guarded(task, store)
    X = task.data.X_eval
    for client in range(5):
        rng = np.random.default_rng([7, client])
        order = np.concatenate([rng.permutation(len(X)), rng.permutation(len(X))])
        sent = 0
        while sent < len(order):
            idx = order[sent : sent + int(rng.integers(1, 21))]
            g.answer(f"honest-{client}", X[idx])
            sent += len(idx)
    assert alerts(store) == []
    # Repeats are not counted, nor the rare digit within the novelty radius of another.
    stage = g.pipeline.stages[0]
    ctx = DefenseContext("honest-0", np.random.default_rng(0), store)
    counts, n = stage.counts(ctx)
    assert 0.98 * len(X) <= n <= len(X) and counts.shape == (2, len(EDGES))
    assert stage.p_value(counts, n) > 0.01


def test_state_survives_a_new_guarded_model_on_the_same_store(
    thief_queries: np.ndarray,
) -> None:
    task = digits_task().held_out()
    alone = MemoryStore(np.random.default_rng(0))
    g = guarded(task, alone)
    for row in thief_queries:
        g.answer("thief", row[None])
    shared = MemoryStore(np.random.default_rng(0))
    for start in range(0, len(thief_queries), 50):  # a restart every 50 queries
        g = guarded(task, shared)
        for row in thief_queries[start : start + 50]:
            g.answer("thief", row[None])
    assert flagged_after(shared) == flagged_after(alone) is not None


def test_workers_sharing_a_store_agree_on_the_counted_rows() -> None:
    """Worker B appends between worker A's read and A's own append: A reads B's row back
    instead of taking only its own in (each worker's counted rows are the store's)."""
    task = digits_task()
    store = MemoryStore(np.random.default_rng(0))
    a, b = guarded(task, store), guarded(task, store)
    rows = task.data.X_eval[:200]
    real_append = store.append
    pending: list[np.ndarray] = []

    def append(key: str, items: list[bytes]) -> int:
        if key == "stream:rows:c" and pending:
            b.answer("c", pending.pop())  # B's row lands first
        return real_append(key, items)

    store.append = append  # type: ignore[method-assign]
    for i in range(0, len(rows) - 1, 2):
        pending.append(rows[i + 1][None])
        a.answer("c", rows[i][None])
    store.append = real_append  # type: ignore[method-assign]
    expected = StreamTest()._sync(store, "c").rows.held()
    assert len(expected) > 150
    for worker in (a, b):
        held = worker.pipeline.stages[0]._sync(store, "c").rows.held()
        assert np.array_equal(held, expected)


def test_near_copies_of_a_row_are_not_counted() -> None:
    task = digits_task().held_out()
    store = MemoryStore(np.random.default_rng(0))
    g = guarded(task, store)
    rng = np.random.default_rng(0)
    digit = task.data.X_eval[0]
    for _ in range(30):
        copy = digit.copy()
        pixels = rng.choice(64, 2, replace=False)
        copy[pixels] = np.clip(copy[pixels] + rng.choice([-1, 1], 2) / 16, 0, 1)
        g.answer("copier", np.vstack([copy, digit]))
    stage = g.pipeline.stages[0]
    assert stage.counts(DefenseContext("copier", rng, store))[1] == 1
    # Without a novelty radius only exact repeats are left out.
    store = MemoryStore(np.random.default_rng(0))
    g = guarded(task, store, novelty=0.0)
    g.answer("copier", np.vstack([digit, digit, digit + 1 / 16]))
    assert g.pipeline.stages[0].counts(DefenseContext("copier", rng, store))[1] == 2


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
def test_tabular_tasks(name: str) -> None:
    task = get_task(name)
    store = MemoryStore(np.random.default_rng(0))
    g = guarded(task, store)
    X = task.data.X_eval
    for client in range(10):
        order = np.random.default_rng(client).permutation(len(X))
        for i in range(0, len(X), 7):
            g.answer(f"honest-{client}", X[order[i : i + 7]])
    assert alerts(store) == []
    noise = np.random.default_rng(1).uniform(
        task.data.X_train.min(0), task.data.X_train.max(0), (100, task.n_features)
    )
    for i in range(0, 100, 5):
        g.answer("thief", noise[i : i + 5])
    assert flagged_after(store) is not None


def test_log_only_keeps_testing_but_alerts_once(thief_queries: np.ndarray) -> None:
    store = MemoryStore(np.random.default_rng(0))
    g = guarded(digits_task().held_out(), store, on_alert="log")
    for row in thief_queries:
        g.answer("thief", row[None])
    assert client_status(store, "thief") == 0 and len(alerts(store)) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"score": ["nope"]}, "score must be a non-empty list"),
        ({"score": []}, "score must be"),
        ({"score": "gmm"}, "score must be"),
        ({"score": ["knn", "knn"]}, "score must be"),
        ({"alpha": 0.0}, "alpha must be"),
        ({"tolerance": -0.1}, "tolerance must be"),
        ({"min_queries": 0}, "min_queries must be"),
        ({"novelty": 0.9}, "novelty must be"),
        ({"on_alert": "shout"}, "on_alert must be"),
        ({"scale": "log"}, "scale must be"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_stage({"type": "stream_test", **params})


def test_used_before_setup() -> None:
    ctx = DefenseContext.local(np.random.default_rng(0), np.zeros((2, 64)))
    with pytest.raises(ConfigError, match="before setup"):
        Pipeline([StreamTest()]).transform(np.full((2, 10), 0.1), ctx)
