"""The access log's writer (#14 item 1, "the access record gets cheaper too"): serve's access
handler queues lines and writes them in batches, makes them without a LogRecord, and writes
exactly the lines ``logging`` made before, text and JSON; nothing is lost on a normal stop."""

import asyncio
import io
import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modeltheft.service import accesslog
from modeltheft.service.app import SETTINGS_ENV
from modeltheft.service.observability import HttpMetrics, ObservabilityMiddleware, log_config
from tests.conftest import KEYS, auth
from tests.service.processes import launch

FIELDS = [
    ("POST", "/v1/predict", 200, "alice", 3, 0.153),
    ("GET", "other", 404, "-", 0, 12.0),
    ("POST", "/v2/models/{name}/infer", 429, "bob\\x0d\\x0aevil", 256, 1234.5),
]
TIMES = [1_796_596_548.309219, 1_796_596_548.9999, 1_796_596_549.0, 1_700_000_000.0005]


class CountingStream(io.StringIO):
    """A text stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def configure() -> Iterator[Any]:
    """``configure(log_format, handler_class=None)``: apply :func:`log_config` with the access
    records going to a new CountingStream (returned); the logging set-up is restored after."""
    logger = logging.getLogger("modeltheft.access")
    saved = (logger.handlers[:], logger.propagate, logger.level, logger.disabled)

    def apply(log_format: str, handler_class: str | None = None) -> CountingStream:
        stream = CountingStream()
        config = log_config(log_format)
        config["handlers"]["access"]["stream"] = stream
        config["handlers"]["default"]["stream"] = io.StringIO()
        if handler_class is not None:
            config["handlers"]["access"]["class"] = handler_class
        logging.config.dictConfig(config)
        return stream

    yield apply
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.propagate, logger.level, logger.disabled = saved


def _lines_at(monkeypatch: pytest.MonkeyPatch, stream: CountingStream) -> list[str]:
    """Write every FIELDS record at every TIMES instant; the lines written."""
    for now in TIMES:
        monkeypatch.setattr(time, "time", lambda now=now: now)
        monkeypatch.setattr(time, "time_ns", lambda now=now: int(now * 1e9))
        for fields in FIELDS:
            accesslog.write_access(*fields)
    monkeypatch.undo()
    for handler in logging.getLogger("modeltheft.access").handlers:
        handler.flush()
    return stream.getvalue().splitlines()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_lines_are_the_ones_logging_made(
    configure: Any, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    made_by_logging = _lines_at(monkeypatch, configure(log_format, "logging.StreamHandler"))
    ours = _lines_at(monkeypatch, configure(log_format))
    assert len(ours) == len(FIELDS) * len(TIMES)
    assert ours == made_by_logging
    if log_format == "json":
        assert json.loads(ours[0])["duration_ms"] == 0.153


async def _trivial(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_log_record_is_made_and_lines_are_written_in_batches(
    configure: Any, monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    """Before: a LogRecord, a formatting pass and a write + flush of the stream a request
    (the access record was about 45 of 200 µs a request through the whole app)."""
    stream = configure(log_format)
    middleware = ObservabilityMiddleware(_trivial, HttpMetrics(), access_log=True)

    def no_record(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a LogRecord was made")

    monkeypatch.setattr(logging.Logger, "makeRecord", no_record)

    async def requests() -> None:
        for _ in range(500):
            scope = {"type": "http", "method": "GET", "path": "/x", "state": {}}
            await middleware(scope, None, lambda message: _nothing())

    asyncio.run(requests())
    for handler in logging.getLogger("modeltheft.access").handlers:
        handler.flush()
    assert len(stream.getvalue().splitlines()) == 500
    assert stream.writes <= 3  # one a flush (the thread may have written once meanwhile)


async def _nothing() -> None:
    return None


def test_any_other_formatter_gets_log_records(configure: Any) -> None:
    stream = configure("text")
    [handler] = logging.getLogger("modeltheft.access").handlers
    handler.setFormatter(logging.Formatter("%(levelname)s|%(client)s|%(message)s"))
    accesslog.write_access("GET", "/healthz", 200, "-", 0, 0.1)
    handler.flush()
    assert stream.getvalue() == "INFO|-|GET /healthz 200 client=- rows=0 duration_ms=0.1\n"


def test_lines_are_written_every_interval_at_close_and_when_many_wait() -> None:
    stream = CountingStream()
    handler = accesslog.AccessLogHandler(stream, interval=0.05, max_lines=100)
    handler.setFormatter(logging.Formatter(accesslog.TEXT_FORMAT))
    record = logging.makeLogRecord({"msg": "one", "levelno": logging.INFO})
    handler.handle(record)
    assert stream.getvalue() == ""  # queued
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().endswith(": one\n")  # written by the thread, unasked
    slow = accesslog.AccessLogHandler(stream, interval=3600, max_lines=100)
    slow.setFormatter(logging.Formatter("%(message)s"))
    for i in range(99):
        slow.handle(logging.makeLogRecord({"msg": f"line {i}"}))
    assert "line 0\n" not in stream.getvalue()
    slow.handle(logging.makeLogRecord({"msg": "line 99"}))  # the 100th: written at once
    assert stream.getvalue().endswith("line 99\n")
    slow.handle(logging.makeLogRecord({"msg": "last"}))
    slow.close()
    handler.close()
    assert stream.getvalue().endswith("last\n")


EXIT_SCRIPT = """
import logging.config, sys
from modeltheft.service.accesslog import write_access
from modeltheft.service.observability import log_config
logging.config.dictConfig(log_config(sys.argv[1]))
for i in range(1000):
    write_access("POST", "/v1/predict", 200, "alice", i, 0.5)
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_normal_exit_writes_every_queued_line(log_format: str) -> None:
    command = [sys.executable, "-c", EXIT_SCRIPT, log_format]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    lines = result.stderr.splitlines()
    assert len(lines) == 1000 and "rows=999" in lines[-1], result.stderr[-500:]


def test_serve_stopped_with_sigterm_has_logged_every_request(
    victim_path: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']}"}
    env.pop(SETTINGS_ENV, None)
    args = ["--model", str(victim_path), "--state", "memory://", "--inference", "sklearn"]
    server = launch(args, tmp_path / "serve.log", env)
    try:
        with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as client:
            for _ in range(25):
                response = client.post("/v1/predict", json={"inputs": [[0.5] * 64]})
                assert response.status_code == 200
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.kill()
    log = server.log.read_text()
    assert log.count("modeltheft.access: POST /v1/predict 200 client=alice rows=1") == 25, log
