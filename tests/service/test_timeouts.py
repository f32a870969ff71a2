"""Slow clients time out: raw sockets against real uvicorn servers on loopback.

The servers run with ``request_timeout`` 0.5 s; a check passes when the server gives up
within ``BOUND`` seconds (the timeout plus slack for a loaded CI machine).
"""

import json
import math
import os
import pickle
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
import uvicorn

from modeltheft.errors import ConfigError
from modeltheft.service import Settings
from modeltheft.service.app import SETTINGS_ENV
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.service.timeouts import HeaderTimeoutProtocol, header_timeout_protocol
from tests.conftest import KEYS, auth
from tests.service.processes import launch

TIMEOUT = 0.5
BOUND = TIMEOUT + 2.5
ROW = [0.5] * 64


@pytest.fixture
def server(live_server: Callable[..., BackgroundServer]) -> BackgroundServer:
    return live_server("none", request_timeout=TIMEOUT)


def connect(server_url: str) -> socket.socket:
    host, port = server_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=BOUND + 5)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    start = time.monotonic()
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


def read_response(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length from ``sock.makefile("rb")``; stays open."""
    status_line = reader.readline()
    assert status_line, "connection closed before a response"
    status = int(status_line.split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return status, headers, body


def predict_request(body: bytes | None = None, connection: str = "keep-alive") -> bytes:
    body = body if body is not None else json.dumps({"inputs": [ROW]}).encode()
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    )
    return head.encode() + body


def test_partial_head_is_closed_with_408(server: BackgroundServer) -> None:
    with connect(server.url) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Ty")
        data, elapsed = read_until_closed(sock)
    assert elapsed < BOUND
    assert data.startswith(b"HTTP/1.1 408 ")
    assert json.loads(data.partition(b"\r\n\r\n")[2]) == {
        "detail": "request head not received within 0.5 s"
    }


def test_silent_connection_is_closed(server: BackgroundServer) -> None:
    with connect(server.url) as sock:
        data, elapsed = read_until_closed(sock)
    assert (data, elapsed < BOUND) == (b"", True)


def test_slowloris_trickle_does_not_extend_the_deadline(server: BackgroundServer) -> None:
    start = time.monotonic()
    with connect(server.url) as sock:
        sock.settimeout(0.1)
        closed = False
        for i in range(200):  # one header line every 0.1 s: the head never completes
            try:
                sock.sendall(f"X-Slow-{i}: x\r\n".encode() if i else b"GET /healthz HTTP/1.1\r\n")
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if time.monotonic() - start > BOUND:
                break
    assert closed and time.monotonic() - start < BOUND


def test_short_body_gets_408_and_close(server: BackgroundServer) -> None:
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    with connect(server.url) as sock:
        sock.sendall(head.encode() + b'{"inputs":')
        data, elapsed = read_until_closed(sock)
    assert elapsed < BOUND
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {"detail": "request body not received within 0.5 s"}


def test_body_in_slow_chunks_within_the_deadline_is_answered(server: BackgroundServer) -> None:
    request = predict_request(connection="close")
    head, _, body = request.partition(b"\r\n\r\n")
    with connect(server.url) as sock:
        sock.sendall(head + b"\r\n\r\n")
        for part in (body[:10], body[10:100], body[100:]):
            time.sleep(0.05)
            sock.sendall(part)
        status, _, answer = read_response(sock.makefile("rb"))
    assert status == 200
    assert len(json.loads(answer)["predictions"]) == 1


def test_normal_clients_are_unaffected(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url, headers=auth()) as client:
        for _ in range(3):
            response = client.post("/v1/predict", json={"inputs": [ROW] * 4})
            assert response.status_code == 200
            assert len(response.json()["predictions"]) == 4
        assert client.get("/healthz").status_code == 200


def test_server_answers_others_while_slow_clients_hang(server: BackgroundServer) -> None:
    warm = httpx.post(f"{server.url}/v1/predict", json={"inputs": [ROW]}, headers=auth())
    assert warm.status_code == 200
    slow = [connect(server.url) for _ in range(5)]
    try:
        for i, sock in enumerate(slow):
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
            else:
                sock.sendall(predict_request()[:-5])  # all but the end of the body
        start = time.monotonic()
        response = httpx.post(
            f"{server.url}/v1/predict", json={"inputs": [ROW]}, headers=auth(), timeout=5
        )
        assert response.status_code == 200
        assert time.monotonic() - start < TIMEOUT  # answered before any slow client timed out
        for sock in slow:
            data, elapsed = read_until_closed(sock)
            assert data.startswith(b"HTTP/1.1 408 ") and elapsed < BOUND
    finally:
        for sock in slow:
            sock.close()


def test_idle_keep_alive_connection_is_kept_past_the_head_timeout(
    server: BackgroundServer,
) -> None:
    """An idle keep-alive connection is uvicorn's business (timeout_keep_alive, 5 s)."""
    with connect(server.url) as sock:
        reader = sock.makefile("rb")
        sock.sendall(predict_request())
        assert read_response(reader)[0] == 200
        time.sleep(TIMEOUT * 2.5)
        sock.sendall(predict_request())
        assert read_response(reader)[0] == 200
        # The next request's head gets its own deadline from its first byte.
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        data, elapsed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ") and elapsed < BOUND


def test_pipelined_requests_still_work(server: BackgroundServer) -> None:
    with connect(server.url) as sock:
        sock.sendall(predict_request() + predict_request(connection="close"))
        reader = sock.makefile("rb")
        assert read_response(reader)[0] == 200
        assert read_response(reader)[0] == 200
        assert reader.read() == b""  # closed after the second, as asked


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_request_timeout_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ConfigError):
        Settings(keys=KeyRing.from_pairs(KEYS), request_timeout=bad)
    with pytest.raises(ConfigError):
        header_timeout_protocol(bad)


def test_protocol_factory_survives_pickling_for_workers() -> None:
    config = uvicorn.Config(
        "modeltheft.service.app:app_from_env", factory=True, http=header_timeout_protocol(3)
    )
    restored = pickle.loads(pickle.dumps(config))
    assert restored.http.func is HeaderTimeoutProtocol
    assert restored.http.keywords == {
        "header_timeout": 3.0,
        "max_head_bytes": 16384,
        "linger_bytes": 1024 * 1024,
    }


@pytest.fixture
def serve_two_workers(victim_path: Path, tmp_path: Path) -> Iterator[str]:
    """``modeltheft serve --workers 2 --request-timeout 0.5`` as a real process group."""
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']}"}
    env.pop(SETTINGS_ENV, None)
    log = tmp_path / "serve.log"
    args = ["--model", str(victim_path), "--state", f"sqlite:///{tmp_path / 'state.db'}"]
    server = launch([*args, "--workers", "2", "--request-timeout", str(TIMEOUT)], log, env)
    try:
        yield server.url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    text = log.read_text()
    assert KEYS["alice"] not in text
    assert "Traceback" not in text and "Exception in ASGI" not in text, text


def test_serve_with_workers_applies_both_timeouts(serve_two_workers: str) -> None:
    url = serve_two_workers
    for _ in range(2):  # both workers, very likely
        with connect(url) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
            data, elapsed = read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 408 ") and elapsed < BOUND
        with connect(url) as sock:
            sock.sendall(predict_request()[:-5])
            data, elapsed = read_until_closed(sock)
        assert b'"request body not received within 0.5 s"' in data and elapsed < BOUND
    response = httpx.post(f"{url}/v1/predict", json={"inputs": [ROW]}, headers=auth(), timeout=5)
    assert response.status_code == 200


class _Recorder:
    """A transport that records what is written to it."""

    def __init__(self, inner: object) -> None:
        self.inner, self.writes = inner, []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[_Recorder]:
    """Every response cycle's connection, recording its writes."""
    from modeltheft.service import timeouts

    made: list[_Recorder] = []
    init = timeouts._CycleTransport.__init__

    def recording(self: object, protocol: object, transport: object) -> None:
        made.append(_Recorder(transport))
        init(self, protocol, made[-1])  # type: ignore[arg-type]

    monkeypatch.setattr(timeouts._CycleTransport, "__init__", recording)
    return made


def test_a_response_leaves_in_one_write(server: BackgroundServer, recorded: list) -> None:
    """uvicorn writes a head and its body apart (two sends, two wake-ups of the client);
    here the head waits for the body. Pipelined and HEAD responses keep their order."""
    with connect(server.url) as sock:
        sock.sendall(predict_request() + predict_request())
        reader = sock.makefile("rb")
        assert read_response(reader)[0] == 200 and read_response(reader)[0] == 200
        head = b"HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        sock.sendall(head)
        status_line = reader.readline()
        rest = reader.read()
    writes = [w for r in recorded for w in r.writes]
    assert len(writes) == 3, writes  # before: 6, a head and a body each
    assert all(w.startswith(b"HTTP/1.1 ") for w in writes), writes
    assert writes[0].endswith(b"}") and writes[1].endswith(b"}")  # head and body together
    assert status_line.startswith(b"HTTP/1.1 ") and rest.endswith(b"\r\n\r\n")  # HEAD: a head
