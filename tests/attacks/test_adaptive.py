"""Adaptive attacks: each trick does what it says, deterministic under a seed, fast."""

from collections.abc import Callable

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.attacks import make_strategy, make_substitute
from modeltheft.attacks.adaptive import (
    Canary,
    MetricsReader,
    PradaReplay,
    RotatingOracle,
    Thief,
    TwinFilter,
    http_keys,
    local_keys,
    twin,
    twins,
)
from modeltheft.attacks.base import QueryHistory
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.alerts import STRICT, served_key, status_key
from modeltheft.defenses.detection import Prada
from modeltheft.defenses.presets import pipeline_from_dict
from modeltheft.errors import ConfigError
from modeltheft.oracle import LocalOracle
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task
from modeltheft.victim import train_victim
from tests.conftest import KEYS

TASK = digits_task().held_out()


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return train_victim("rf", split_name="holdout").model


def guarded(model, config: str | dict, seed: int = 0) -> GuardedModel:  # type: ignore[no-untyped-def]
    pipeline = load_pipeline(config) if isinstance(config, str) else pipeline_from_dict(config)
    store = MemoryStore(np.random.default_rng(seed))
    return GuardedModel(model, pipeline, store=store, seed=seed, task=TASK)


def noise(n: int, seed: int) -> np.ndarray:
    """Rows far from any digit (every one out of distribution), with zeros to twin."""
    X = np.random.default_rng(seed).random((n, 64))
    X[:, :8] = 0.0
    return X


def test_a_twin_is_value_equal_with_other_bytes() -> None:
    rng = np.random.default_rng(0)
    row = np.array([0.0, 0.5, 1.0, 0.0])
    copy = twin(row, rng)
    assert np.array_equal(copy, row) and copy.tobytes() != row.tobytes()
    assert np.signbit(copy).sum() == 1
    full = np.array([0.25, 1.0])
    nudged = twin(full, np.random.default_rng(1), upper=1.0)
    assert np.abs(nudged - full).max() == pytest.approx(1e-9) and (nudged <= 1.0).all()


def test_the_twin_filter_drops_misinformed_answers_only(model) -> None:  # type: ignore[no-untyped-def]
    stages = [{"type": "adaptive_misinformation"}, {"type": "watermark", "rate": 0.9}]
    g = guarded(model, {"stages": stages})  # the output stages of `recommended`
    oracle = LocalOracle(g, budget=400)
    X = np.vstack([noise(60, 1), TASK.data.X_eval[:60]])
    rng = np.random.default_rng(2)
    labels = oracle.query(X).labels
    twin_labels = oracle.query(twins(X, rng)).labels
    keep = TwinFilter().keep(labels, twin_labels)
    misinformed = labels != model.predict(X)
    assert misinformed[:60].all() and not misinformed[60:].any()
    # Keyed choices read the canonical row (issue 12): the twin gets the same faked answer,
    # so the filter unmasks nothing and keeps every answer, true or not.
    assert keep.all() and np.array_equal(labels, twin_labels)
    # The filter itself drops exactly the answers whose twin disagrees.
    assert TwinFilter().keep(np.array([1, 2, 3]), np.array([1, 0, 3])).tolist() == [
        True,
        False,
        True,
    ]


def test_key_rotation_changes_client_ids_in_process(model) -> None:  # type: ignore[no-untyped-def]
    g = guarded(model, "none")
    oracle = RotatingOracle(local_keys(g, "sybil"), budget=30, every=9)
    for start in range(0, 28, 4):
        oracle.query(TASK.data.X_eval[start : start + 4])
    oracle.query(TASK.data.X_eval[28:30])
    assert oracle.keys_used == 4 and oracle.spent == 30
    assert oracle.client_ids == ["sybil-0", "sybil-1", "sybil-2", "sybil-3"]
    assert [g.store.get(served_key(c)) for c in oracle.client_ids] == [9, 9, 9, 3]
    oracle.rotate()
    assert oracle.client_ids[-1] == "sybil-4"
    with pytest.raises(ConfigError, match="every must be"):
        RotatingOracle(local_keys(g), budget=3, every=0)


def test_key_rotation_over_http(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("none")) as client:
        factory = http_keys("http://testserver", [KEYS["alice"], KEYS["bob"]], client=client)
        oracle = RotatingOracle(factory, budget=13, every=6)
        answers = oracle.query(TASK.data.X_eval[:12])
        store = client.app.state.store  # type: ignore[attr-defined]
        assert (answers.labels >= 0).all() and oracle.keys_used == 2
        assert store.get(served_key("alice")) == 6 and store.get(served_key("bob")) == 6
        with pytest.raises(ConfigError, match="more than the 2 keys"):
            oracle.query(TASK.data.X_eval[12:13])


def test_the_canary_sees_nothing_on_rows_sent_while_clean(model) -> None:  # type: ignore[no-untyped-def]
    """Under `recommended` a flagged key answers rows it was sent while clean as it did then."""
    g = guarded(model, "recommended")
    rows = TASK.data.X_public[:10]
    clean = LocalOracle(g, budget=100, client_id="thief")
    canary = Canary(rows, clean.query(rows).labels, every=5, n=10)
    rng = np.random.default_rng(3)
    assert not canary.probe(clean, rng)
    g.store.raise_to(status_key("thief"), STRICT)  # what any detector's alert does
    assert not canary.probe(clean, rng)
    assert [flagged for _, flagged in canary.checks] == [False, False]


def test_the_canary_detects_a_key_whose_new_rows_are_all_misled(model) -> None:  # type: ignore[no-untyped-def]
    """With ``strict_fpr = 1`` every new row of a flagged key is misled: rows the thief owns
    but never sent give it away."""
    g = guarded(model, {"stages": [{"type": "adaptive_misinformation", "strict_fpr": 1.0}]})
    rows = TASK.data.X_eval[:10]
    canary = Canary(rows, model.predict(rows), every=5, n=10)
    rng = np.random.default_rng(3)
    g.store.raise_to(status_key("thief"), STRICT)
    assert canary.probe(LocalOracle(g, budget=100, client_id="thief"), rng)
    assert not canary.probe(LocalOracle(g, budget=100, client_id="fresh"), rng)


def test_a_canary_thief_moves_to_a_new_key_when_refused(model) -> None:  # type: ignore[no-untyped-def]
    stages = [{"type": "ood_monitor", "min_queries": 10, "on_alert": "block"}]
    g = guarded(model, {"stages": stages})
    # Its own 20 digits first (clean answers, the canary's rows), then noise the monitor flags.
    strategy = make_strategy("in-distribution", renders=noise(400, 4), keep=1.0, blend_share=0.0)
    thief = Thief(strategy, make_substitute("lr", seed=0), canary_every=15, canary_n=2)
    oracle = RotatingOracle(local_keys(g), budget=120, every=None)
    run = thief.run(oracle, 120, np.random.default_rng(5), task=TASK)
    assert run.canary_flags and run.keys_used == 1 + len(run.canary_flags)
    assert run.dropped["canary"] > 0 and run.spent == 120


def test_prada_replay_matches_the_stage_and_screens_a_stream(model) -> None:  # type: ignore[no-untyped-def]
    stage = Prada(min_queries=20)
    g = GuardedModel(model, pipeline_from_dict({"stages": [{"type": "prada"}]}), task=TASK)
    replay = PradaReplay.of(stage, TASK)
    rng = np.random.default_rng(6)
    base = TASK.data.X_public[:5]
    # Jacobian-like steps around five digits: PRADA's textbook catch.
    X = np.clip(base[rng.integers(5, size=80)] + rng.normal(0, 0.03, (80, 64)), 0, 1)
    oracle = LocalOracle(g, budget=200, client_id="replayed")
    for row in X:
        replay.commit(row[None, :], oracle.query(row[None, :]).labels)
    prada = next(s for s in g.pipeline.stages if isinstance(s, Prada))
    assert replay.statistic() == pytest.approx(prada.statistic("replayed", g.store), abs=1e-12)
    screened = PradaReplay.of(stage, TASK, margin=0.1, tries=8)
    pool = TASK.data.X_public[5:]
    for row in X:
        guess = lambda Z: model.predict(Z)  # noqa: E731
        sent = screened.screen(row[None, :], guess, lambda m: pool[rng.integers(len(pool), size=m)])
        screened.commit(sent, model.predict(sent))
    assert screened.replaced > 0
    assert screened.statistic() > replay.statistic()


@pytest.mark.parametrize("status", [401, 403, 404])
def test_the_metrics_reader_reports_refused(status: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"detail": "no"})

    reader = MetricsReader(
        "http://api", client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    assert reader.read() is None and reader.status == "refused"
    assert reader.read() is None and len(calls) == 1  # asks no more


def test_the_metrics_reader_counts_altered_answers(
    make_app: Callable[..., FastAPI],
    victim,  # type: ignore[no-untyped-def]
) -> None:
    with TestClient(make_app("recommended")) as client:
        reader = MetricsReader("http://testserver", client=client, token=KEYS["alice"])
        before = reader.read()
        if before is None:  # /metrics closed to client keys (issue 12, part 2)
            assert reader.status == "refused"
            return
        X = noise(5, 7)
        response = client.post(
            "/v1/predict",
            json={"inputs": X.tolist()},
            headers={"Authorization": f"Bearer {KEYS['alice']}"},
        )
        labels = np.array([p["label"] for p in response.json()["predictions"]])
        altered = MetricsReader.altered_between(before, reader.read())
        assert altered == int((labels != victim.model.predict(X)).sum()) > 0


def test_in_distribution_asks_its_own_rows_then_rows_near_them() -> None:
    pool = np.vstack([TASK.data.X_eval, noise(200, 8)])
    strategy = make_strategy("in-distribution", renders=pool)
    strategy.setup(TASK, 200)
    history = QueryHistory(task=TASK)
    X = strategy.propose(120, np.random.default_rng(9), history)
    public = {r.tobytes() for r in TASK.data.X_public}
    assert all(r.tobytes() in public for r in X[:20])
    assert not any(r.tobytes() in public for r in X[20:])
    assert np.array_equal(np.round(X * 16), X * 16) and ((X >= 0) & (X <= 1)).all()
    again = make_strategy("in-distribution", renders=pool)
    again.setup(TASK, 200)
    assert np.array_equal(X, again.propose(120, np.random.default_rng(9), QueryHistory(task=TASK)))
    far = (X[20:, :8] > 0.5).all(axis=1)  # a noise render would survive with a constant band
    assert not far.any()


def test_a_rotating_thief_with_twins_counts_every_query(model) -> None:  # type: ignore[no-untyped-def]
    g = guarded(model, "recommended")
    strategy = make_strategy("in-distribution", renders=TASK.data.X_eval)
    thief = Thief(strategy, make_substitute("lr", seed=0), twins=TwinFilter(), min_answers=20)
    oracle = RotatingOracle(local_keys(g), budget=120, every=9)
    truth = model.predict(TASK.data.X_eval)
    run = thief.run(
        oracle,
        120,
        np.random.default_rng(10),
        checkpoints=(60,),
        evaluate=lambda m: {"fidelity": float(np.mean(m.predict(TASK.data.X_eval) == truth))},
        task=TASK,
    )
    assert run.spent == 120 and run.keys_used == 14
    assert set(run.curve) == {60, 120} and run.kept <= 60


def test_a_thief_reading_metrics_over_http_drops_altered_answers(
    make_app: Callable[..., FastAPI],
) -> None:
    from modeltheft.oracle import HttpOracle

    with TestClient(make_app("recommended")) as client:
        reader = MetricsReader("http://testserver", client=client)
        oracle = HttpOracle("http://testserver", KEYS["bob"], budget=60, client=client)
        # Its 20 digits (true answers), then noise (misinformed once flagged or out of range).
        strategy = make_strategy("in-distribution", renders=noise(200, 11), keep=1.0)
        thief = Thief(strategy, make_substitute("lr", seed=0), metrics=reader, min_answers=10)
        run = thief.run(oracle, 60, np.random.default_rng(12), task=TASK)
        if reader.status == "refused":  # /metrics closed to thieves (issue 12, part 2)
            assert run.dropped["metrics"] == 0 and run.metrics_status == "refused"
        else:
            assert run.metrics_status == "ok" and run.dropped["metrics"] >= 30
            assert run.kept <= 30
