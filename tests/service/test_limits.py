"""Connections on the wire: 431 for a long request head, an early 413 that every client
reads (lingering close), clients that leave mid-pipeline. Raw sockets and urllib against real
uvicorn servers on loopback."""

import json
import logging
import os
import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import httpx
import pytest

from modeltheft.errors import ConfigError
from modeltheft.service import Settings
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.service.timeouts import DEFAULT_MAX_HEAD_BYTES, header_timeout_protocol
from tests.conftest import KEYS, auth
from tests.service.test_timeouts import connect, read_response, read_until_closed

CHUNK = b"a" * 65536


def head_with(header_bytes: int, path: str = "/healthz") -> bytes:
    """A complete GET head whose ``X-Pad`` header value is ``header_bytes`` long."""
    head = f"GET {path} HTTP/1.1\r\nHost: test\r\nX-Pad: ".encode()
    return head + b"a" * header_bytes + b"\r\n\r\n"


def rss_bytes() -> int:
    """Resident memory of this process (the live servers run in it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_head_over_the_limit_gets_431_and_close(
    live_server: Callable[..., BackgroundServer],
) -> None:
    server = live_server("none")
    with connect(server.url) as sock:
        sock.sendall(head_with(DEFAULT_MAX_HEAD_BYTES + 100))
        data, elapsed = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {"detail": "request head exceeds the limit of 16384 bytes"}
    assert elapsed < 2


def test_head_within_the_limit_is_answered(live_server: Callable[..., BackgroundServer]) -> None:
    server = live_server("none")
    with connect(server.url) as sock:
        sock.sendall(head_with(DEFAULT_MAX_HEAD_BYTES - 200))
        assert read_response(sock.makefile("rb"))[0] == 200


def test_head_limit_comes_from_the_settings(live_server: Callable[..., BackgroundServer]) -> None:
    server = live_server("none", max_header_bytes=2048)
    with connect(server.url) as sock:
        sock.sendall(head_with(1500))
        assert read_response(sock.makefile("rb"))[0] == 200
    with connect(server.url) as sock:
        # Sent a few bytes at a time: the limit counts the whole head, not one read.
        for i in range(0, 3000, 100):
            sock.sendall(head_with(3000)[i : i + 100])
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")


def test_a_long_head_after_a_request_on_the_same_connection_gets_431(
    live_server: Callable[..., BackgroundServer],
) -> None:
    server = live_server("none")
    with connect(server.url) as sock:
        reader = sock.makefile("rb")
        sock.sendall(head_with(100))
        assert read_response(reader)[0] == 200
        sock.sendall(head_with(DEFAULT_MAX_HEAD_BYTES))
        assert read_response(reader)[0] == 431


def _flood(url: str, total: int, results: list[tuple[bytes, float]]) -> None:
    """Send a head of up to ``total`` bytes; stop when the server answers or closes."""
    start = time.monotonic()
    sent = 0
    with connect(url) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        except OSError:
            pass  # the server closed after its answer (read below)
        data, _ = read_until_closed(sock)
    results.append((data, time.monotonic() - start))


def test_eight_connections_with_48_mb_heads_get_431_quickly(
    live_server: Callable[..., BackgroundServer],
) -> None:
    """Unauthenticated header floods cost neither memory nor the other clients' time."""
    server = live_server("none")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    before = rss_bytes()
    results: list[tuple[bytes, float]] = []
    threads = [
        threading.Thread(target=_flood, args=(server.url, 48_000_000, results)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    during = httpx.get(f"{server.url}/healthz", timeout=5)
    for thread in threads:
        thread.join(timeout=30)
    assert during.status_code == 200
    assert len(results) == 8
    for data, elapsed in results:
        assert data.startswith(b"HTTP/1.1 431 "), data[:80]
        assert elapsed < 3
    assert rss_bytes() - before < 16_000_000  # was +38 MB for 8 x 48 MB: heads are not kept
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_body_over_the_limit_gets_its_413_with_urllib(
    live_server: Callable[..., BackgroundServer],
) -> None:
    """urllib writes the whole body before it reads: the server drains it (lingering close)."""
    server = live_server("none")
    body = b"x" * 3_900_000  # over the 2 MB default; within the 4 MB the server drains
    statuses = []
    for _ in range(30):
        request = urllib.request.Request(
            f"{server.url}/v1/predict",
            data=body,
            headers={"Content-Type": "application/json", **auth()},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)
            assert "exceeds the limit" in json.loads(error.read())["detail"]
    assert statuses == [413] * 30


def test_early_413_on_a_keep_alive_connection_drains_only_up_to_the_cap(
    live_server: Callable[..., BackgroundServer],
) -> None:
    """A client that declares 1 GB keeps the connection only while the cap lasts."""
    server = live_server("none")
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    ).encode()
    sent = 0
    with connect(server.url) as sock:
        sock.sendall(head)
        reader = sock.makefile("rb")
        status, _, _ = read_response(reader)
        try:
            while sent < 100_000_000:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        except OSError:
            pass
    assert status == 413
    assert sent < 20_000_000  # the cap (4 MB) plus the socket buffers


def test_normal_requests_keep_their_connection(
    live_server: Callable[..., BackgroundServer],
) -> None:
    server = live_server("none")
    with httpx.Client(base_url=server.url, headers=auth()) as client:
        for _ in range(3):
            response = client.post("/v1/predict", json={"inputs": [[0.5] * 64]})
            assert response.status_code == 200
        too_big = client.post("/v1/predict", content=b"x" * 2_100_000)
        assert too_big.status_code == 413
        # Answered before its body arrived: the connection ends, and the answer says so (a
        # client that reused it raced the lingering close: RemoteProtocolError under load).
        assert too_big.headers["connection"] == "close"
        assert client.post("/v1/predict", json={"inputs": [[0.5] * 64]}).status_code == 200


@pytest.mark.parametrize("bad", [0, 1023, 2.5e4, True, "16384"])
def test_max_header_bytes_is_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_header_bytes"):
        Settings(keys=KeyRing.from_pairs(KEYS), max_header_bytes=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_head_bytes"):
        header_timeout_protocol(1.0, max_head_bytes=bad)  # type: ignore[arg-type]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """What the server's loggers (uvicorn's, ours, asyncio's) write, whatever propagates."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "modeltheft", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_pipelining_then_leaving_logs_no_error(
    live_server: Callable[..., BackgroundServer], server_log: list[logging.LogRecord]
) -> None:
    """The client resets the connection while the first of two pipelined answers is written:
    nobody reads it, and nothing is an error (was two ERROR tracebacks each)."""
    server = live_server("none")
    first = b"GET /docs-assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: test\r\n\r\n"  # 1.5 MB
    second = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
    for delay in (0, 0.001, 0.002, 0.005) * 4:
        with connect(server.url) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(first + second)
            time.sleep(delay)
    time.sleep(0.3)  # the server notices the resets
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    bad = [r for r in server_log if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def test_a_pipelined_request_whose_body_is_still_arriving_is_answered(
    live_server: Callable[..., BackgroundServer],
) -> None:
    """The first answer completes while the second request's body arrives: no early close."""
    server = live_server("none")
    body = json.dumps({"inputs": [[0.5] * 64]}).encode()
    second = (
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with connect(server.url) as sock:
        reader = sock.makefile("rb")
        sock.sendall(head_with(10) + second[:-20])
        assert read_response(reader)[0] == 200
        time.sleep(0.1)
        sock.sendall(second[-20:])
        assert read_response(reader)[0] == 200
