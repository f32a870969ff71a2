"""``serve --max-header-bytes``: checked before anything else, handed to the server (one
worker or several) and applied on the wire."""

import os
from pathlib import Path
from typing import Any

import pytest

from modeltheft.cli.app import main
from modeltheft.service import runner
from modeltheft.service.app import SETTINGS_ENV
from modeltheft.service.timeouts import DEFAULT_MAX_HEAD_BYTES
from tests.conftest import KEYS
from tests.service.processes import launch
from tests.service.test_limits import head_with
from tests.service.test_timeouts import connect, read_response, read_until_closed


@pytest.mark.parametrize(
    ("bad", "says"), [("100", "1024"), ("1023", "1024"), ("-5", "1024"), ("16k", "integer")]
)
def test_a_bad_max_header_bytes_is_one_line(
    bad: str, says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEYS", raising=False)  # named before the missing keys
    assert main(["serve", "--max-header-bytes", bad]) == 1
    err = capsys.readouterr().err.strip()
    assert "--max-header-bytes" in err and says in err and len(err.splitlines()) == 1, err


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``serve`` would hand to uvicorn (one worker) or to ``run_workers``."""
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    monkeypatch.setattr(runner, "run_workers", lambda app, workers, **options: seen.update(options))
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    return seen


@pytest.mark.parametrize("workers", ["1", "2"])
def test_max_header_bytes_reaches_the_server(
    captured: dict[str, Any], victim_path: Path, tmp_path: Path, workers: str
) -> None:
    base = ["serve", "--model", str(victim_path), "--state", f"sqlite:///{tmp_path}/s.db"]
    assert main([*base, "--workers", workers, "--max-header-bytes", "4096"]) == 0
    assert captured["http"].keywords["max_head_bytes"] == 4096
    captured.clear()
    assert main([*base, "--workers", workers]) == 0
    assert captured["http"].keywords["max_head_bytes"] == DEFAULT_MAX_HEAD_BYTES


def test_serve_answers_a_long_head_with_431(victim_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']}"}
    env.pop(SETTINGS_ENV, None)
    args = ["--model", str(victim_path), "--state", "memory://", "--inference", "sklearn"]
    server = launch([*args, "--max-header-bytes", "2048"], tmp_path / "serve.log", env)
    try:
        with connect(server.url) as sock:
            sock.sendall(head_with(1500))
            assert read_response(sock.makefile("rb"))[0] == 200
        with connect(server.url) as sock:
            sock.sendall(head_with(3000))  # within the default 16 KiB
            data, _ = read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 431 "), data[:80]
    finally:
        server.kill()
