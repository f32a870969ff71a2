"""Detectors, misinformation and watermarks on real digits and real attack queries."""

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from modeltheft.attacks.strategies import QueryHistory, make_strategy
from modeltheft.defenses import GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses.alerts import BLOCKED, NORMAL, STRICT, alerts, client_status
from modeltheft.defenses.detection import OodRateMonitor, Prada
from modeltheft.defenses.keyed import canonical
from modeltheft.defenses.misinformation import AdaptiveMisinformation, relabel
from modeltheft.defenses.watermark import (
    Watermark,
    load_records,
    records_key,
    verify,
    watermarked_clients,
)
from modeltheft.errors import Blocked, ConfigError
from modeltheft.state.memory import MemoryStore
from modeltheft.state.sqlite import SqliteStore
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim


def honest_batches(seed: int, n: int = 540, batch: int = 10) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(digits_task().data.X_eval))[:n]
    X = digits_task().data.X_eval[order]
    return [X[i : i + batch] for i in range(0, n, batch)]


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 64))


def guarded(
    victim: LoadedVictim, *stages, store: MemoryStore | SqliteStore | None = None
) -> GuardedModel:
    return GuardedModel(
        victim.model,
        Pipeline(list(stages)),
        store=store or MemoryStore(),
        seed=0,
        task=digits_task(),
    )


def test_ood_monitor_leaves_honest_clients_alone(victim: LoadedVictim) -> None:
    g = guarded(victim, OodRateMonitor())
    for X in honest_batches(0):
        g.answer("honest", X)
    assert client_status(g.store, "honest") == NORMAL and alerts(g.store) == []


def test_ood_monitor_flags_noise_at_min_queries_and_logs_without_keys(
    victim: LoadedVictim, caplog: pytest.LogCaptureFixture
) -> None:
    g = guarded(victim, OodRateMonitor(min_queries=10))
    with caplog.at_level(logging.WARNING, logger="modeltheft.alerts"):
        for i in range(10):
            g.answer("thief", noise(1, i))
    assert client_status(g.store, "thief") == STRICT
    [alert] = alerts(g.store)
    assert alert["detector"] == "ood_monitor" and alert["after_queries"] == 10
    assert g.store.get("alerts:ood_monitor") == 1
    assert "client=thief" in caplog.text
    for _ in range(3):  # one alert per client and detector, however long it goes on
        g.answer("thief", noise(5, 99))
    assert len(alerts(g.store)) == 1


def test_block_action_refuses_the_client_with_blocked(victim: LoadedVictim) -> None:
    g = guarded(victim, OodRateMonitor(min_queries=5, on_alert="block"))
    g.answer("thief", noise(5))
    assert client_status(g.store, "thief") == BLOCKED
    with pytest.raises(Blocked):
        g.answer("thief", digits_task().data.X_eval[:1])
    g.answer("someone-else", digits_task().data.X_eval[:1])


def test_prada_quiet_on_honest_digits_and_flags_jacobian_style_queries(
    victim: LoadedVictim,
) -> None:
    for seed in range(3):
        g = guarded(victim, Prada(delta=0.8))
        for X in honest_batches(seed):
            g.answer("honest", X)
        assert client_status(g.store, "honest") == NORMAL
    # Papernot-style synthetic queries: real seeds, then small signed steps around them.
    rng = np.random.default_rng(1)
    seeds = digits_task().data.X_eval[:10]
    g = guarded(victim, Prada(delta=0.8))
    g.answer("thief", seeds)
    current = seeds
    for _ in range(6):
        current = np.clip(current + 0.1 * np.sign(rng.normal(size=current.shape)), 0, 1)
        g.answer("thief", current)
    assert client_status(g.store, "thief") == STRICT
    assert alerts(g.store)[0]["detector"] == "prada"


def test_prada_state_survives_a_new_worker(victim: LoadedVictim) -> None:
    store = MemoryStore()
    first = Prada()
    g = guarded(victim, first, store=store)
    for X in honest_batches(4, n=200):
        g.answer("c", X)
    again = Prada()  # a fresh process: empty cache, same store
    assert again.statistic("c", store) == pytest.approx(first.statistic("c", store))
    assert len(again._clients["c"].distances) == len(first._clients["c"].distances)


def test_prada_workers_sharing_a_store_agree(victim: LoadedVictim) -> None:
    """Worker B appends between worker A's read and A's write: nobody skips B's records."""
    store = MemoryStore()
    a, b = guarded(victim, Prada(), store=store), guarded(victim, Prada(), store=store)
    batches = honest_batches(6, n=300)
    real_append = store.append
    interleave = {"pending": [], "busy": False}

    def append(key: str, items: list[bytes]) -> int:
        if key == "prada:c:d" and interleave["pending"] and not interleave["busy"]:
            interleave["busy"] = True
            b.answer("c", interleave["pending"].pop())
            interleave["busy"] = False
        return real_append(key, items)

    store.append = append  # type: ignore[method-assign]
    for i in range(0, len(batches) - 1, 2):
        interleave["pending"].append(batches[i + 1])
        a.answer("c", batches[i])
    expected = Prada()._sync(store, "c").distances
    assert len(store.items("prada:c:d")) == 300 and len(expected) > 250
    for worker in (a, b):
        assert worker.pipeline.stages[0]._sync(store, "c").distances == expected


def test_prada_tests_once_per_test_every_new_distances(
    victim: LoadedVictim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modeltheft.defenses import detection

    calls: list[int] = []
    real = detection.stats.shapiro
    monkeypatch.setattr(detection.stats, "shapiro", lambda d: calls.append(len(d)) or real(d))
    g = guarded(victim, Prada(test_every=10))
    for row in digits_task().data.X_eval[:200]:
        g.answer("c", row[None, :])  # one query per request
    distances = len(g.pipeline.stages[0]._clients["c"].distances)
    assert 0 < len(calls) <= distances // 10 + 1
    assert all(b - a >= 10 for a, b in itertools.pairwise(calls))


def test_prada_ignores_repeats_of_growing_set_queries(victim: LoadedVictim) -> None:
    g = guarded(victim, Prada())
    X = digits_task().data.X_eval[:1]
    for _ in range(5):  # the first query of its class joins the growing set; repeats are at 0
        g.answer("c", X)
    state = g.pipeline.stages[0]._clients["c"]
    assert state.distances == [] and state.n_records == 5


def test_misinformation_answers_real_digits_truthfully_and_noise_misleadingly(
    victim: LoadedVictim,
) -> None:
    g = guarded(victim, AdaptiveMisinformation())
    split = digits_task().data
    truth = victim.model.predict(split.X_eval)
    answered = g.answer("honest", split.X_eval).labels
    assert np.mean(answered != truth) <= 0.005
    X = noise(200)
    reply = g.answer("thief", X)
    P = victim.model.predict_proba(X)
    assert reply.answers.flagged.all()
    # every answer is one of the classes the victim finds least likely, as confident as the truth
    assert all(P[i, label] == P[i].min() for i, label in enumerate(reply.labels))
    assert np.allclose(np.sort(reply.answers.probabilities, 1), np.sort(P, 1))
    again = g.answer("thief", X).labels  # deterministic per query
    assert np.array_equal(again, reply.labels)


def test_relabel_keeps_values_and_puts_label_on_top() -> None:
    P = np.array([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]])
    out = relabel(P, np.array([True, False]), np.array([3, 0]), [bytes(range(32))] * 2)
    assert out[0].argmax() == 3 and sorted(out[0]) == sorted(P[0])
    assert np.array_equal(out[1], P[1])


def test_watermark_scope_and_records(victim: LoadedVictim) -> None:
    store = MemoryStore(np.random.default_rng(0))  # a fixed watermark key: reproducible
    g = guarded(victim, AdaptiveMisinformation(), Watermark(rate=0.5), store=store)
    honest = g.answer("honest", digits_task().data.X_eval[:100])
    assert not honest.answers.flagged.any() and watermarked_clients(store) == []
    X = noise(400)
    reply = g.answer("thief", X)
    g.answer("thief", X[:50])  # repeats are recorded again but count once
    records = load_records(store, "thief")
    assert 150 < len(records.labels) < 250 and watermarked_clients(store) == ["thief"]
    victim_labels = victim.model.predict(records.X)
    assert (records.labels != victim_labels).all()
    # Records keep each query's canonical row (the one its keyed label was chosen for).
    index = {row.tobytes(): i for i, row in enumerate(canonical(X, digits_task().resolution))}
    given = np.array([reply.labels[index[row.tobytes()]] for row in records.X])
    assert np.array_equal(given, records.labels)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_watermark_records_keep_a_window_of_the_newest(
    victim: LoadedVictim, kind: str, tmp_path: Path
) -> None:
    """Bounded state (#14): a thief's records stop growing at 2 * max_records; the newest are
    kept and still verify (before: every record ever, ~530 B each)."""
    store = (
        MemoryStore(np.random.default_rng(0))
        if kind == "memory"
        else SqliteStore(tmp_path / "s.db")
    )
    g = guarded(victim, AdaptiveMisinformation(), Watermark(rate=1.0, max_records=30), store=store)
    batches = [noise(25, seed=i) for i in range(8)]
    for X in batches:
        g.answer("thief", X)
    stored = store.items(records_key("thief"))
    assert 30 <= len(stored) <= 60  # 200 recorded
    records = load_records(store, "thief")
    newest = canonical(batches[-1], digits_task().resolution)
    held = {row.tobytes() for row in records.X}
    assert all(row.tobytes() in held for row in newest)  # the last batch is all there
    assert (records.labels != victim.model.predict(records.X)).all()


def test_verify_separates_a_copy_from_an_independent_model() -> None:
    rng = np.random.default_rng(0)
    from modeltheft.defenses.watermark import WatermarkRecords

    labels = rng.integers(0, 10, 200)
    records = WatermarkRecords("thief", rng.random((200, 64)), labels)
    copy = labels.copy()
    copy[:120] = (labels[:120] + 1) % 10  # reproduces 80 of 200 watermarks
    assert verify(records, copy, 10).p_value < 1e-15
    chance = [verify(records, rng.integers(0, 10, 200), 10).p_value for _ in range(50)]
    assert min(chance) > 1e-3 and np.mean(np.array(chance) < 0.05) <= 0.1
    assert verify(records, copy, 10).chance == pytest.approx(1 / 9)


def test_recommended_preset_end_to_end(victim: LoadedVictim) -> None:
    store = MemoryStore()
    g = GuardedModel(
        victim.model, load_pipeline("recommended"), store=store, seed=0, task=digits_task()
    )
    split = digits_task().data
    truth = victim.model.predict(split.X_eval)
    labels = np.concatenate(
        [g.answer("honest", X).labels for X in np.array_split(split.X_eval, 27)]
    )
    assert np.mean(labels == truth) >= 0.995
    synthetic = make_strategy("owasp-synthetic").propose(
        20, np.random.default_rng(0), QueryHistory()
    )
    for row in synthetic:
        g.answer("thief", row[None, :])
    assert alerts(store)[0]["after_queries"] <= 20
    assert client_status(store, "honest") == NORMAL


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (OodRateMonitor, {"fpr": 0}),
        (OodRateMonitor, {"on_alert": "shout"}),
        (Prada, {"delta": 1.5}),
        (Prada, {"min_queries": 2}),
        (Prada, {"test_every": 0}),
        (AdaptiveMisinformation, {"fpr": 0.9}),
        (Watermark, {"rate": 0}),
        (Watermark, {"scope": "everyone"}),
    ],
)
def test_bad_parameters_are_config_errors(cls: type, params: dict) -> None:
    with pytest.raises(ConfigError):
        cls(**params)


def test_bad_reference_is_a_config_error(tmp_path) -> None:
    stage = AdaptiveMisinformation(reference=str(tmp_path / "nope.npy"))
    with pytest.raises(ConfigError, match="reference"):
        GuardedModel(victim_model(), Pipeline([stage]), task=digits_task())


def victim_model():
    from sklearn.linear_model import LogisticRegression

    split = digits_task().data
    return LogisticRegression(max_iter=200).fit(split.X_train[:300], split.y_train[:300])


def test_seeded_memory_store_makes_keyed_answers_reproducible(victim: LoadedVictim) -> None:
    """Experiments may draw the secrets from a seeded rng; a service never does."""
    X = noise(50)
    runs = [
        GuardedModel(
            victim.model,
            load_pipeline("recommended"),
            store=MemoryStore(np.random.default_rng(3)),
            seed=3,
            task=digits_task(),
        ).answer("thief", X)
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].answers.probabilities, runs[1].answers.probabilities)
    assert MemoryStore().secret("k") != MemoryStore().secret("k")


def test_prada_ignores_exact_repeats_of_any_earlier_query(victim: LoadedVictim) -> None:
    """A client cycling through a few digits (a page refreshing) is not an extraction attack.

    The repeats of digits that did not join a growing set have a non-zero distance, so before
    repeats were recognised they filled D with a handful of values and W fell below delta.
    """
    g = guarded(victim, Prada())
    digits = digits_task().data.X_eval[0::48]  # the load benchmark's first key: W was 0.64 after 21
    for _ in range(20):
        for row in digits:
            g.answer("refresher", row[None, :])
    assert client_status(g.store, "refresher") == NORMAL and alerts(g.store) == []
    state = g.pipeline.stages[0]._sync(g.store, "refresher")
    assert len(g.store.items("prada:refresher:d")) == 20 * len(digits)  # all still recorded
    assert len(state.distances) < len(digits)
    assert len(set(state.digests.held().tolist())) == len(digits)


def test_prada_state_grows_in_place_and_matches_a_fresh_reader(victim: LoadedVictim) -> None:
    """A worker's incremental state equals the state another worker rebuilds from the store."""
    g = guarded(victim, Prada())
    rng = np.random.default_rng(3)
    for X in honest_batches(1, n=300, batch=7):
        g.answer("c", X)
        g.answer("c", rng.random((2, 64)))
    mine = g.pipeline.stages[0]._sync(g.store, "c")
    fresh = Prada()._sync(g.store, "c")
    assert mine.distances == fresh.distances
    assert np.array_equal(mine.digests.held(), fresh.digests.held())
    assert {c: r.n for c, r in mine.growing.items()} == {c: r.n for c, r in fresh.growing.items()}
    assert mine.thresholds == fresh.thresholds


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_knn_scores_equal_scikit_learn_neighbours(batch: int) -> None:
    """Scores equal an exact k-NN search, one row at a time (its own path) or in batches."""
    from sklearn.neighbors import NearestNeighbors

    from modeltheft.defenses.ood import knn_scorer, reference_rows

    def reference_data(name: str) -> np.ndarray:
        return reference_rows(name, digits_task())

    scorer = knn_scorer("lab", 5, digits_task())
    rng = np.random.default_rng(batch)
    X = np.vstack([digits_task().data.X_eval, rng.random((200, 64)), rng.random((50, 64)) * 0.1])
    X = np.vstack([X, reference_data("lab")[:20]])  # training digits themselves: a distance 0
    exact = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(reference_data("lab"))
    expected = exact.kneighbors(X)[0].mean(axis=1)
    got = np.concatenate([scorer.score(X[i : i + batch]) for i in range(0, len(X), batch)])
    assert np.allclose(got, expected, rtol=0, atol=1e-6)  # |x|^2 + |r|^2 - 2x.r rounding


def test_ood_monitor_counts_each_distinct_query_once(victim: LoadedVictim) -> None:
    """The load benchmark's key 47 repeated one odd test digit among 12: 16 of 174 hits."""
    g = guarded(victim, OodRateMonitor())
    digits = digits_task().data.X_eval[47::48]
    for _ in range(18):
        for row in digits:
            g.answer("refresher", row[None, :])
    assert client_status(g.store, "refresher") == NORMAL and alerts(g.store) == []
    assert g.store.get("ood:n:refresher") == len(digits)
    g.answer("refresher", np.vstack([digits[:2], noise(3), noise(1)]))  # 3 new rows, 1 repeat
    assert g.store.get("ood:n:refresher") == len(digits) + 3
