"""Every state-store failure is a 503 with one log line while serving, one line and exit 1 at
start-up; never a 500 or a traceback (#14, items 4 and 5).

A damaged SQLite page, a full Redis, a state file made read-only, a state file deleted or
replaced under a running service (one process, then several workers, one of them restarted).
"""

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.cli.app import main
from modeltheft.errors import ConfigError
from modeltheft.service.app import SETTINGS_ENV
from modeltheft.state import SqliteStore
from tests.conftest import KEYS, auth
from tests.service.processes import launch, serve_processes, worker_pids
from tests.state.damage import (
    filled_database,
    full_redis,
    smash_header,
    smash_table,
    touch_other_table,
)

ROW = [0.5] * 64


def predict(client: TestClient) -> httpx.Response:
    return client.post("/v1/predict", json={"inputs": [ROW, ROW]}, headers=auth())


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "state store unavailable" in response.json()["detail"]


def answers_again(client: TestClient) -> bool:
    """Whether the service answers again within 2 s: the store breaker's probe (every
    0.25 s, off the event loop) must first see the store back."""
    deadline = time.monotonic() + 2
    while client.get("/healthz").status_code != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return predict(client).status_code == 200


def one_line_warnings(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= level]
    assert all(len(line.splitlines()) == 1 for line in lines)
    return lines


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A state file whose tables span several pages."""
    return filled_database(tmp_path)


def test_a_damaged_page_while_serving_is_503(
    make_app: Callable[..., FastAPI], filled: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(make_app("none", state=f"sqlite:///{filled}")) as client:
        assert predict(client).status_code == 200
        smash_table(filled, "audit")
        touch_other_table(filled)
        with caplog.at_level(logging.WARNING):
            answers = [predict(client) for _ in range(3)]
    for answer in answers:
        assert_refused(answer)
    lines = one_line_warnings(caplog)
    assert lines and all("malformed" in line for line in lines)


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` fails the test if it gets as far as starting uvicorn."""
    import uvicorn

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started on a state it should have refused")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")


def serve_refuses(
    victim_path: Path, state: Path, capsys: pytest.CaptureFixture[str], defense: str = "none"
) -> str:
    """Run ``serve`` on ``state``: exit 1 and one line on stderr, which is returned."""
    capsys.readouterr()
    argv = ["serve", "--model", str(victim_path), "--defense", defense, "--state", str(state)]
    assert main([*argv, "--inference", "sklearn"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("damage", "table"), [("page", "lists"), ("page", "audit"), ("header", "")]
)
@pytest.mark.usefixtures("no_serving")
def test_a_damaged_database_is_refused_at_start_in_one_line(
    make_app: Callable[..., FastAPI],
    victim_path: Path,
    filled: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    table: str,
) -> None:
    if damage == "page":
        smash_table(filled, table)
    else:
        smash_header(filled)
    message = "is damaged" if damage == "page" else "not a database"
    with pytest.raises(ConfigError, match=message):
        make_app("recommended", state=f"sqlite:///{filled}")
    assert message in serve_refuses(victim_path, filled, capsys, defense="recommended")


def test_a_full_redis_is_503_not_500(
    make_app: Callable[..., FastAPI], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(make_app("recommended", state=redis_url)) as client:
        assert predict(client).status_code == 200
        with full_redis(redis_url), caplog.at_level(logging.WARNING):
            answers = [predict(client) for _ in range(3)]
            health = client.get("/healthz")
            ready = client.get("/v2/health/ready")
        for answer in answers:
            assert_refused(answer)
        assert health.status_code == 503 and ready.status_code == 503
        assert all("OutOfMemoryError" in line for line in one_line_warnings(caplog))
        assert answers_again(client)
        assert client.get("/healthz").status_code == 200


def test_a_state_file_made_read_only_while_serving_is_503(
    make_app: Callable[..., FastAPI], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    with TestClient(make_app("recommended", state=f"sqlite:///{path}")) as client:
        assert predict(client).status_code == 200
        path.chmod(0o444)
        try:
            with caplog.at_level(logging.WARNING):
                answer, health = predict(client), client.get("/healthz")
        finally:
            path.chmod(0o644)
        assert_refused(answer)
        assert health.status_code == 503
        assert [line for line in one_line_warnings(caplog) if "read-only" in line]
        assert answers_again(client)


@pytest.mark.usefixtures("no_serving")
def test_a_read_only_state_file_is_refused_at_start_in_one_line(
    victim_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    path.chmod(0o444)
    assert "read-only" in serve_refuses(victim_path, path, capsys)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_state_file_deleted_or_replaced_while_serving_is_503_for_good(
    make_app: Callable[..., FastAPI],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    path = tmp_path / "state.db"
    with TestClient(make_app("recommended", state=f"sqlite:///{path}")) as client:
        assert predict(client).status_code == 200
        if how == "deleted":
            path.unlink()
        else:
            other = tmp_path / "other.db"
            SqliteStore(other).close()
            os.replace(other, path)
        with caplog.at_level(logging.WARNING):
            answers = [predict(client) for _ in range(3)]
            health, ready = client.get("/healthz"), client.get("/v2/health/ready")
        for answer in answers:
            assert_refused(answer)
        assert health.status_code == 503 and ready.status_code == 503
        errors = one_line_warnings(caplog, logging.ERROR)
        # Logged when found and at the first refusal; the breaker refuses the rest at once.
        assert len(errors) == 2 and all(how in line for line in errors)
        assert path.exists() is (how == "replaced")  # never recreated


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_refuse_a_deleted_state_file_and_the_next_start_warns(
    victim_path: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    statuses: Counter[int] = Counter()

    def send(url: str, n: int) -> None:
        for _ in range(n):
            try:
                response = httpx.post(
                    f"{url}/v1/predict", json={"inputs": [ROW]}, headers=auth(), timeout=30
                )
            except httpx.TransportError:
                statuses[0] += 1  # the service stopped: refused at connect
            else:
                statuses[response.status_code] += 1

    with serve_processes(victim_path, tmp_path, "recommended", workers=2) as start:
        server = start(f"sqlite:///{state}")
        send(server.url, 4)
        assert statuses == {200: 4}
        state.unlink()
        send(server.url, 6)
        assert statuses[503] == 6
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 503
        os.kill(worker_pids(server.process.pid)[0], signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 120
        while server.process.poll() is None and time.monotonic() < deadline:
            send(server.url, 1)
            time.sleep(0.5)
        assert server.process.poll() is not None, "the service went on without its state"
        stopped = time.monotonic() - killed
        log = server.log.read_text()
    # The replacement refuses (it loads the model first): the service stops within seconds,
    # with exit code 1 and one line that says so (was: up to 60 s more, then exit code 0).
    assert server.process.returncode == 1, log[-2000:]
    assert stopped < 30, f"{stopped:.1f} s"
    assert log.strip().splitlines()[-1].startswith("error: worker "), log[-2000:]
    assert not state.exists()
    # The next start (one worker, to be quick): a new, empty state, and a WARNING that says so.
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']}"}
    env.pop(SETTINGS_ENV, None)
    args = ["--model", str(victim_path), "--state", f"sqlite:///{state}", "--inference", "sklearn"]
    again = launch(args, tmp_path / "again.log", env)
    try:
        send(again.url, 2)
    finally:
        again.kill()
    second = again.log.read_text()
    events = "\n".join(line for line in log.splitlines() if "modeltheft.access" not in line)
    # "no state database" for the restarted worker; "was deleted" if it was still starting.
    refusals = [line for line in log.splitlines() if "cannot start: " in line]
    assert refusals and all("deleted" in line for line in refusals), events[-3000:]
    assert "Traceback" not in log and "disk I/O error" not in log, events[-3000:]
    assert set(statuses) <= {0, 200, 503} and statuses[200] == 6, statuses  # no 500, no 502
    assert "created a new, empty state database" in second and "state.db-wal" in second
