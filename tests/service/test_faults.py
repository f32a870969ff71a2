"""Faults of the state store and of the process: 503 not 500, fail closed, clean SIGTERM.

A locked SQLite database and an unreachable Redis refuse requests with 503 and Retry-After
(nothing is answered without its state being recorded, nothing stored is touched); a bad state
at start-up is one line and exit 1; SIGTERM mid-traffic drains the open requests, exits 0, and
leaves exactly one audit entry per acknowledged answer.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.cli.app import main
from modeltheft.defenses.alerts import served_key
from modeltheft.state import SqliteStore
from modeltheft.state.audit import row_hashes
from tests.conftest import KEYS, auth
from tests.service.processes import free_port, serve_processes

ROW = [0.5] * 64


def predict(client: TestClient, rows: list[list[float]]) -> httpx.Response:
    return client.post("/v1/predict", json={"inputs": rows}, headers=auth())


def test_locked_database_is_503_then_recovers(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    path = tmp_path / "state.db"
    with TestClient(make_app("none", state=f"sqlite:///{path}")) as client:
        assert predict(client, [ROW, ROW]).status_code == 200
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            started = time.monotonic()
            refused = predict(client, [ROW])
            waited = time.monotonic() - started
            health = client.get("/healthz")
            other.execute("ROLLBACK")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "state store unavailable" in refused.json()["detail"]
        assert str(path) not in refused.text  # the reason is logged, not told to clients
        assert 1.5 < waited < 5  # the busy timeout (2 s), not 10 s and not at once
        assert health.status_code == 503 and "Retry-After" in health.headers
        back = time.monotonic() + 2  # the breaker's probe finds the store back (0.25 s)
        while client.get("/healthz").status_code != 200 and time.monotonic() < back:
            time.sleep(0.05)
        assert predict(client, [ROW]).status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        store = client.app.state.store
        assert store.get(served_key("alice")) == 3  # the refused row was never counted
        assert [e.rows for e in store.audit_entries()] == [2, 1]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test alone, which the test may stop."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=1) as probe:
                if probe.ping():
                    break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
    yield url, process
    process.kill()
    process.wait(timeout=10)


def test_unreachable_redis_is_503_not_500(
    make_app: Callable[..., FastAPI], own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, process = own_redis
    with TestClient(make_app("recommended", state=url)) as client:
        assert predict(client, [ROW]).status_code == 200
        process.terminate()
        process.wait(timeout=10)
        started = time.monotonic()
        refused = predict(client, [ROW])
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 10
        health = client.get("/healthz")
        assert health.status_code == 503 and set(health.json()) == {"detail"}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--state", "not-a-db", "not a database"),
        ("--state", "below-a-file/x.db", "cannot create the folder"),
        ("--audit-retention", "a week", "invalid --audit-retention"),
    ],
)
def test_serve_refuses_a_bad_state_in_one_line(
    victim_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    (tmp_path / "not-a-db").write_bytes(b"these are not the pages of a database " * 200)
    (tmp_path / "below-a-file").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")
    argv = ["serve", "--model", str(victim_path), "--inference", "sklearn", option, value]
    if option != "--state":
        argv += ["--state", "memory://"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_mid_traffic_drains_and_exits_cleanly(
    victim_path: Path, tmp_path: Path, workers: int
) -> None:
    """Every request is answered in full or refused at connect; one audit entry per answer."""
    state = tmp_path / "state.db"
    with serve_processes(victim_path, tmp_path, "none", workers=workers) as start:
        server = start(f"sqlite:///{state}")
        answered: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
        refused, failures, count = [0], [], iter(range(10**6))
        lock = threading.Lock()

        def send() -> None:
            while True:
                with lock:
                    i = next(count)
                rows = np.random.default_rng([1, i]).random((2, 64))
                try:
                    response = httpx.post(
                        f"{server.url}/v1/predict",
                        json={"inputs": rows.tolist()},
                        headers=auth(),
                        timeout=30,
                    )
                except httpx.ConnectError:
                    with lock:
                        refused[0] += 1
                    return  # the listening socket is closed: the server is going away
                except httpx.TransportError as exc:
                    # Dropped before any byte of a response (an accept raced the close) is a
                    # refusal too; a response cut in its middle is not.
                    if "complete message body" in str(exc):
                        failures.append(repr(exc))
                    with lock:
                        refused[0] += 1
                    return
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    return
                labels = [p["label"] for p in response.json()["predictions"]]
                assert len(labels) == 2
                with lock:
                    answered.append((row_hashes(rows), tuple(labels)))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(answered) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(server.process.pid, signal.SIGTERM)  # as systemd or Kubernetes would
        stopped = time.monotonic()
        code = server.process.wait(timeout=30)
        took = time.monotonic() - stopped
        for thread in threads:
            thread.join(timeout=30)
        log = server.log.read_text()
    assert code == 0, log
    assert took < 15, took
    assert failures == [], failures
    assert len(answered) >= 40
    print(
        f"workers={workers}: {len(answered)} answered, {refused[0]} refused, exit in {took:.2f} s"
    )
    store = SqliteStore(state, create=False)
    try:
        entries = store.audit_entries(client="alice")
        assert store.get(served_key("alice")) == 2 * len(entries)
    finally:
        store.close()
    assert all(e.outcome == "answered" for e in entries)
    logged = Counter((e.row_hashes, e.labels) for e in entries)
    assert logged == Counter(answered)  # exactly one entry per acknowledged answer
