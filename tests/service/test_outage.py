"""A state-store outage longer than the store's timeout: 503 at once after the first refusal,
``/healthz`` 503 while it lasts, answers again soon after (:mod:`modeltheft.state.breaker`)."""

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.errors import StateUnavailable, StoreDown
from modeltheft.state import MemoryStore
from modeltheft.state.breaker import Breaker
from tests.conftest import auth

ROW = [0.5] * 64


def test_a_long_lock_is_503_at_once_after_the_first_timeout(
    make_app: Callable[..., FastAPI], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5 s lock (the issue's was 15 s): the first request waits the busy timeout (2 s),
    every later one is refused at once, /healthz says 503 all along; the outage is logged
    once, not once a request; once the lock is gone, answers resume within a second."""
    path = tmp_path / "state.db"
    with TestClient(make_app("recommended", state=f"sqlite:///{path}")) as client:
        body = {"inputs": [ROW]}
        assert client.post("/v1/predict", json=body, headers=auth()).status_code == 200
        waits, statuses, health = [], [], []
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            locked = time.monotonic()
            while time.monotonic() - locked < 5:
                started = time.monotonic()
                answer = client.post("/v1/predict", json=body, headers=auth())
                waits.append(time.monotonic() - started)
                statuses.append(answer.status_code)
                assert "Retry-After" in answer.headers
                health.append(client.get("/healthz").status_code)
                time.sleep(0.1)
            other.execute("ROLLBACK")
        assert set(statuses) == {503} and set(health) == {503}
        assert max(waits) < 2 + 1  # the store's timeout + 1 s, never the lock's length
        assert len(waits) > 10 and sorted(waits)[-2] < 0.5  # only the first one waited
        outage = [r for r in caplog.records if "refusing requests until it is back" in r.message]
        assert len(outage) == 1
        back = time.monotonic()
        while client.post("/v1/predict", json=body, headers=auth()).status_code != 200:
            assert time.monotonic() - back < 1.5
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200


class Flaky(MemoryStore):
    """A memory store whose calls fail while ``broken``."""

    broken = False

    def get(self, key: str) -> int:
        if self.broken:
            raise StateUnavailable("flaky store is down")
        return super().get(key)

    def ping(self) -> None:
        if self.broken:
            raise StateUnavailable("flaky store is down")


def test_breaker_opens_on_failure_and_closes_when_the_probe_succeeds() -> None:
    store = Flaky()
    breaker = Breaker(store, probe_every=0.02)
    store.incr("k", 3)
    assert breaker.get("k") == 3 and not breaker.down
    store.broken = True
    with pytest.raises(StateUnavailable):
        breaker.get("k")
    assert breaker.down
    store.broken = False  # back, but the breaker refuses until its probe has seen it
    with pytest.raises(StoreDown):
        breaker.incr("k")
    deadline = time.monotonic() + 2
    while breaker.down and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not breaker.down and breaker.get("k") == 3
    breaker.close()
