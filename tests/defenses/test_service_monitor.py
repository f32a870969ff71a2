"""The service-wide monitor: quiet on honest populations, a watch against a key-rotating thief."""

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses import GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses.alerts import SERVICE, STRICT, alerts, client_status, raise_service_alert
from modeltheft.defenses.service_monitor import ServiceMonitor
from modeltheft.errors import ConfigError
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task
from tests.conftest import metrics_auth

TASK = digits_task().held_out()


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    return LogisticRegression(max_iter=300).fit(TASK.data.X_train, TASK.data.y_train)


def guarded(model: LogisticRegression, **params: object) -> GuardedModel:
    store = MemoryStore(np.random.default_rng(0))
    return GuardedModel(model, Pipeline([ServiceMonitor(**params)]), store, seed=0, task=TASK)


def honest_traffic(g: GuardedModel, clients: int, queries: int, seed: int = 0) -> None:
    """Clients sending test digits in their own order, batches of 1–20, interleaved."""
    rng = np.random.default_rng(seed)
    X = TASK.data.X_eval
    left = {c: rng.permutation(len(X))[:queries] for c in range(clients)}
    while left:
        c = list(left)[int(rng.integers(len(left)))]
        size = int(rng.integers(1, 21))
        g.answer(f"honest-{c}", X[left[c][:size]])
        left[c] = left[c][size:]
        if not len(left[c]):
            del left[c]


@lru_cache(maxsize=4)
def thief_rows(n: int, seed: int = 1) -> np.ndarray:
    """20 owned digits, then filtered renders alternating with blends (the issue's thief)."""
    rng = np.random.default_rng(seed)
    real = TASK.data.public_rows(20, rng)
    renders = RenderedDigits().render(4 * n, rng)[0]
    distance = np.sqrt(((renders[:, None, :] - real[None]) ** 2).sum(-1))
    keep = distance.min(axis=1) <= np.quantile(distance.min(axis=1), 0.25)
    filtered, near = renders[keep], distance.argmin(axis=1)[keep]
    lam = rng.uniform(0.3, 0.7, size=(len(filtered), 1))
    blends = lam * filtered[::-1] + (1 - lam) * real[near[::-1]]
    mixed = np.empty((2 * len(filtered), real.shape[1]))
    mixed[0::2], mixed[1::2] = filtered, blends
    rows = np.vstack([real, mixed])[:n]
    rows.flags.writeable = False
    return rows


def service_alerts(g: GuardedModel) -> list[dict]:
    return [a for a in alerts(g.store) if a["client"] == SERVICE]


def test_an_honest_population_raises_no_alert(model: LogisticRegression) -> None:
    g = guarded(model)
    honest_traffic(g, clients=150, queries=40)
    assert g.store.get("svc:young") > 2000  # the window was full many times over
    assert alerts(g.store) == []


def test_a_rotating_thief_starts_a_watch_that_escalates_young_keys_only(
    model: LogisticRegression,
) -> None:
    g = guarded(model)
    honest_traffic(g, clients=10, queries=40)  # established keys, no longer young
    alert_at = None
    for i, row in enumerate(thief_rows(300)):
        reply = g.answer(f"sybil-{i // 9}", row[None])
        if service_alerts(g):
            alert_at = i + 1
            assert reply.answers.flagged.all()  # the alerting batch is escalated
            break
    assert alert_at is not None and alert_at <= 300
    (record,) = service_alerts(g)
    assert record["detector"] == "service_monitor" and record["episode"] == 1
    assert g.store.get("alerts:service_monitor") == 1
    young = g.answer("newcomer", TASK.data.X_eval[:5])
    old = g.answer("honest-0", TASK.data.X_eval[:5])
    assert young.answers.flagged.all() and not old.answers.flagged.any()
    assert client_status(g.store, "newcomer") == 0  # without mark_keys, no status change


def test_the_watch_ends_after_quiet_rows_and_mark_keys_keeps_keys_strict(
    model: LogisticRegression,
) -> None:
    g = guarded(model, window=200, short_window=0, quiet=40, mark_keys=True)
    for i, row in enumerate(thief_rows(300)[:250]):
        g.answer(f"sybil-{i // 9}", row[None])
    assert len(service_alerts(g)) == 1
    assert client_status(g.store, "sybil-27") == STRICT
    honest_traffic(g, clients=30, queries=20, seed=3)  # 600 honest young rows
    late = g.answer("late-newcomer", TASK.data.X_eval[:3])
    assert not late.answers.flagged.any()
    assert len(service_alerts(g)) == 1


def test_two_workers_sharing_a_store_see_one_window_and_one_watch(
    model: LogisticRegression,
) -> None:
    first = guarded(model, window=200, short_window=0)
    second = GuardedModel(
        model, Pipeline([ServiceMonitor(window=200, short_window=0)]), first.store, task=TASK
    )
    for i, row in enumerate(thief_rows(300)[:250]):
        (first, second)[i % 2].answer(f"sybil-{i // 9}", row[None])
    assert len(service_alerts(first)) == 1  # one alert for the watch, whichever worker saw it
    assert len(second.pipeline.stages[0]._cache.sync(first.store, 1)) == 250
    for worker in (first, second):
        assert worker.answer("newcomer", TASK.data.X_eval[:2]).answers.flagged.all()


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="min_rows"):
        ServiceMonitor(window=100, min_rows=200)
    with pytest.raises(ConfigError):
        ServiceMonitor(on_alert="block")


def test_recommended_runs_the_monitor_before_misinformation() -> None:
    names = load_pipeline("recommended").stage_names
    assert names.index("prada") < names.index("service_monitor")
    assert names.index("service_monitor") < names.index("adaptive_misinformation")


def test_service_alerts_are_counted_at_metrics(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("recommended")) as client:
        store = client.app.state.guarded.store
        assert raise_service_alert(store, "service_monitor", "test", "watch", 1)
        assert not raise_service_alert(store, "service_monitor", "test", "watch", 1)
        text = client.get("/metrics", headers=metrics_auth()).text
    assert 'modeltheft_extraction_alerts_total{detector="service_monitor"} 1.0' in text
    assert "modeltheft_flagged_clients 0.0" in text  # the service is not a client
