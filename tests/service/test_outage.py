"""A state-store outage longer than the store's timeout: 503 at once after the first refusal,
``/healthz`` 503 while it lasts, answers again soon after (:mod:`modeltheft.state.breaker`)."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.errors import StateUnavailable, StoreDown
from modeltheft.state import MemoryStore, SqliteStore
from modeltheft.state.breaker import Breaker
from modeltheft.state.group import GroupCommit
from tests.conftest import auth, redis_server

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


REDIS_TIMEOUT = 5.0
"""RedisStore's default socket timeout, the one ``serve --state redis://…`` configures."""


def _frozen_traffic(
    client: TestClient, redis_process: "subprocess.Popen[bytes]", seconds: float
) -> tuple[list[tuple[float, int, str | None]], list[int]]:
    """Freeze Redis (SIGSTOP) for ``seconds`` while 3 clients post and /healthz is polled;
    thaw it. Every request's (wait, status, Retry-After) (status -1: /healthz; 0: a request
    still in flight when the thaw began, which Redis may answer), the health statuses."""
    body = {"inputs": [ROW]}
    frozen = threading.Event()
    outcomes: list[tuple[float, int, str | None]] = []
    health: list[int] = []

    def post_while_frozen() -> None:
        while frozen.is_set():
            started = time.monotonic()
            answer = client.post("/v1/predict", json=body, headers=auth())
            wait = time.monotonic() - started
            status = answer.status_code if frozen.is_set() else 0  # 0: it met the thaw
            outcomes.append((wait, status, answer.headers.get("Retry-After")))
            time.sleep(0.05)

    os.kill(redis_process.pid, signal.SIGSTOP)
    frozen.set()
    threads = [threading.Thread(target=post_while_frozen) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.monotonic()
            health.append(client.get("/healthz").status_code)
            outcomes.append((time.monotonic() - started, -1, None))
            time.sleep(0.1)
    finally:
        frozen.clear()
        os.kill(redis_process.pid, signal.SIGCONT)
        for thread in threads:
            thread.join(timeout=60)
    return outcomes, health


def test_a_redis_freeze_is_503_within_its_timeout(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    """A Redis frozen (SIGSTOP) for 7 s under 3 clients and /healthz: no request waits longer
    than the Redis timeout + 1 s (only the first ones wait it), each gets 503 + Retry-After,
    /healthz says 503, and answers resume soon after the thaw. Without the breaker, calls
    made on the event loop one after the other stalled requests 15-30 s."""
    body = {"inputs": [ROW]}
    with (
        redis_server(tmp_path) as (url, redis_process),
        TestClient(make_app("recommended", state=url)) as client,
    ):
        assert client.post("/v1/predict", json=body, headers=auth()).status_code == 200
        outcomes, health = _frozen_traffic(client, redis_process, seconds=7)
        thawed = time.monotonic()
        waits = sorted(wait for wait, _, _ in outcomes)
        assert waits[-1] < REDIS_TIMEOUT + 1, waits[-5:]
        assert waits[len(waits) // 2] < 0.5, waits  # the rest are refused at once
        answers = [(status, retry) for _, status, retry in outcomes if status > 0]
        assert len(answers) > 10
        assert all(status == 503 and retry and int(retry) >= 1 for status, retry in answers)
        assert set(health) == {503}
        while client.post("/v1/predict", json=body, headers=auth()).status_code != 200:
            assert time.monotonic() - thawed < REDIS_TIMEOUT + 1.5
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


def test_a_request_checks_the_breaker_once_and_a_stage_failure_trips_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stages' ~30 store calls run inside the request's batch, which checked the breaker
    and trips it for them: they skip its wrapper (#14), and an outage met there still opens
    it, so the next request is refused at once."""
    from modeltheft.defenses import GuardedModel, load_pipeline
    from modeltheft.tasks import digits_task
    from modeltheft.victim import train_victim

    through: list[str] = []
    real_guarded = Breaker._guarded

    def counted(self: Breaker, method: Callable[..., object]) -> Callable[..., object]:
        wrapped = real_guarded(self, method)
        return lambda *args, **kwargs: through.append(method.__name__) or wrapped(*args, **kwargs)

    class ListsDown(MemoryStore):  # only the stages use lists (PRADA's, the stream test's)
        broken = False

        def append(self, key: str, items: Sequence[bytes]) -> int:
            if self.broken:
                raise StateUnavailable("lists are down")
            return super().append(key, items)

        def ping(self) -> None:
            pass

    monkeypatch.setattr(Breaker, "_guarded", counted)
    store = ListsDown()
    breaker = Breaker(store, probe_every=60.0)
    trained = train_victim()
    pipeline = load_pipeline("recommended")
    guarded = GuardedModel(trained.model, pipeline, store=breaker, task=digits_task())
    X = np.full((1, 64), 0.5)
    guarded.answer("c", X)
    through.clear()
    guarded.answer("c", X)
    assert 1 <= len(through) <= 6, through  # the calls outside the stages, not ~30
    store.broken = True  # the store fails under a stage
    with pytest.raises(StateUnavailable):
        guarded.answer("c", X)
    assert breaker.down
    store.broken = False
    with pytest.raises(StoreDown):  # refused by the breaker, before any store call
        guarded.answer("c", X)
    breaker.close()


def test_a_batch_that_cannot_start_or_end_trips_the_breaker() -> None:
    """Entering the store's batch (its BEGIN) or leaving it (its COMMIT) can meet the outage
    too: either trips the breaker, and an error of the caller's own leaves it closed."""

    class Failing(MemoryStore):
        fail: str | None = None

        @contextmanager
        def batch(self) -> Iterator[None]:
            if self.fail == "enter":
                raise StateUnavailable("cannot begin")
            yield
            if self.fail == "exit":
                raise StateUnavailable("cannot commit")

        def ping(self) -> None:
            raise StateUnavailable("still down")

    for where in ("enter", "exit"):
        store = Failing()
        breaker = Breaker(store, probe_every=60.0)
        with pytest.raises(ValueError), breaker.batch():
            raise ValueError("the caller's own error")
        assert not breaker.down
        store.fail = where
        with pytest.raises(StateUnavailable, match="cannot"), breaker.batch():
            pass
        assert breaker.down, where
        with pytest.raises(StoreDown):
            breaker.batch()
        breaker.close()


def test_a_group_that_met_the_outage_is_closed_and_the_store_comes_back(tmp_path: Path) -> None:
    """A store failure inside a group trips the breaker; the group's commit must still reach
    the store (taking the group back), or the store stays in the group: the probe never
    succeeds and every later request is refused (before: 503 for good)."""
    inner = SqliteStore(tmp_path / "state.db")
    store = Breaker(inner, probe_every=0.02)

    async def group(fail: bool) -> object:
        commits = GroupCommit(store)
        done = commits.join()
        try:
            with store.batch():
                store.incr("n")
                if fail:
                    raise StateUnavailable("a read failed mid-group")
        except StateUnavailable:
            pass
        try:
            await GroupCommit.committed(done)
        except StateUnavailable as exc:
            return exc
        return store.get("n")

    assert isinstance(asyncio.run(group(fail=True)), StateUnavailable)
    assert store.down and not inner._group  # closed, its increment taken back
    deadline = time.monotonic() + 2
    while store.down and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not store.down  # the probe's ping succeeded
    assert asyncio.run(group(fail=False)) == 1
    store.close()
