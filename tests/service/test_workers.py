"""``modeltheft serve --workers 2`` as real processes: shared state counts every query once.

The defense is a rate limit that never refuses (``free_queries`` far away) but counts every
row under the store counter ``queries:<client>``; the tests read that counter straight from
the store and compare it with the rows the server answered.
"""

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modeltheft.cli.app import main
from modeltheft.errors import ConfigError
from modeltheft.service.app import SETTINGS_ENV, app_from_env
from modeltheft.state import SqliteStore, open_store
from tests.conftest import auth
from tests.service.processes import Server, serve_processes

ROWS = [[0.5] * 64, [0.25] * 64, [0.75] * 64]
COUNTING_DEFENSE = """[[stages]]
type = "probabilistic_rate_limit"
free_queries = 100000
refuse_probability = 1.0
"""


@pytest.fixture
def start_server(victim_path: Path, tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Start ``modeltheft serve --workers 2`` with the counting defense; killed at teardown."""
    defense = tmp_path / "counting.toml"
    defense.write_text(COUNTING_DEFENSE)
    with serve_processes(victim_path, tmp_path, str(defense)) as start:
        yield start


def post_rows(url: str) -> int:
    """One request of three rows for alice on a new connection; its HTTP status."""
    response = httpx.post(f"{url}/v1/predict", json={"inputs": ROWS}, headers=auth(), timeout=30)
    return response.status_code


def send_many(url: str, requests: int, threads: int = 6) -> list[int]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: post_rows(url), range(requests)))


def test_two_workers_count_every_row_once_in_sqlite(
    start_server: Callable[[str], Server], tmp_path: Path
) -> None:
    path = tmp_path / "state" / "s.db"
    server = start_server(f"sqlite:///{path}")
    assert send_many(server.url, 60) == [200] * 60
    store = SqliteStore(path)
    try:
        assert store.get("queries:alice") == 180
        assert store.get("queries:bob") == 0
    finally:
        store.close()


def test_two_workers_count_every_row_once_in_redis(
    start_server: Callable[[str], Server], redis_url: str
) -> None:
    store = open_store(redis_url)
    try:
        before = store.get("queries:alice")
        server = start_server(redis_url)
        assert send_many(server.url, 60) == [200] * 60
        assert store.get("queries:alice") - before == 180
    finally:
        store.close()


@dataclass
class Traffic:
    """Rows a background sender sent, and rows answered with 200, up to a kill."""

    sent: int = 0
    answered: int = 0
    other_statuses: int = 0


def test_sigkill_and_restart_lose_no_answered_query(
    start_server: Callable[[str], Server], tmp_path: Path
) -> None:
    path = tmp_path / "s.db"
    state = f"sqlite:///{path}"
    first = start_server(state)
    assert send_many(first.url, 60) == [200] * 60

    traffic, killed = Traffic(), threading.Event()

    def sender() -> None:
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(3) as pool:
            while not killed.is_set() and time.monotonic() < deadline:
                traffic.sent += 3 * 3
                for outcome in pool.map(lambda _: _try_post(first.url), range(3)):
                    if outcome == 200:
                        traffic.answered += 3
                    elif outcome is not None:
                        traffic.other_statuses += 1

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while traffic.answered < 60 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        first.kill()  # mid-traffic: requests in flight are cut off
    finally:
        killed.set()
        thread.join(timeout=90)
    assert traffic.answered >= 60 and traffic.other_statuses == 0

    second = start_server(state)
    assert send_many(second.url, 10) == [200] * 10
    store = SqliteStore(path)
    try:
        count = store.get("queries:alice")
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Every answered row was counted before its answer left; a row cut off by the kill may
    # or may not have been counted.
    assert 180 + traffic.answered + 30 <= count <= 180 + traffic.sent + 30


def _try_post(url: str) -> int | None:
    """The status of one request, or None if the connection failed (the server was killed)."""
    try:
        return post_rows(url)
    except httpx.TransportError:
        return None


def test_workers_with_memory_state_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELTHEFT_API_KEYS", "a:b")
    assert main(["serve", "--workers", "2", "--state", "memory://"]) == 1
    err = capsys.readouterr().err.strip()
    assert "memory state is per process; use sqlite or redis with --workers" in err
    assert len(err.splitlines()) == 1


def test_serve_rejects_a_bad_state_url_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, victim_path: Path
) -> None:
    monkeypatch.setenv("MODELTHEFT_API_KEYS", "a:b")
    argv = ["serve", "--model", str(victim_path), "--state", "postgres://db/x"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "accepted forms" in err and len(err.splitlines()) == 1


def test_app_from_env_needs_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    with pytest.raises(ConfigError, match=SETTINGS_ENV):
        app_from_env()
    monkeypatch.setenv(SETTINGS_ENV, "{not json")
    with pytest.raises(ConfigError, match="malformed"):
        app_from_env()
