"""Deadlines and limits for clients: a request head and body must arrive in time, a head
must be small, and an early answer must reach a client that is still sending.

uvicorn waits forever for a client that trickles its headers (slowloris) or declares a
``Content-Length`` and never sends the body. Two guards close such connections:

* :class:`BodyTimeoutMiddleware` (pure ASGI): a body not fully received within ``timeout``
  seconds of the request head gets ``408 {"detail": ...}`` and the connection is closed;
* :class:`HeaderTimeoutProtocol` (uvicorn's httptools protocol): a connection that has not
  delivered a complete request head within ``header_timeout`` seconds of connecting, or of
  the first byte of its next request, is closed (with a 408 if part of a head arrived).
  Idle keep-alive connections are still governed by uvicorn's ``timeout_keep_alive``.
  A head over ``max_head_bytes`` gets 431; a connection closed while its request is still
  arriving is closed lingering (half-close, drain up to ``linger_bytes``, then close).

Pass the protocol with ``uvicorn.run(..., http=header_timeout_protocol(seconds))``; the
result is a :func:`functools.partial` of an importable class, so it pickles for ``--workers``.
"""

import asyncio
import functools
import json
import math
from asyncio import TimerHandle
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modeltheft.errors import ConfigError
from modeltheft.service.errors import error_key

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
"""Request line and headers together (nginx allows 4 x 8 KiB, uvicorn's h11 16 KiB)."""
DEFAULT_LINGER_BYTES = 1024 * 1024
"""The least a lingering close drains before it gives up and resets the connection."""


def check_timeout(seconds: float, what: str = "request timeout") -> float:
    """``seconds`` as a float if it is a finite positive number; else a ConfigError."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, got {seconds!r}")
    return value


def check_size(value: int, what: str, minimum: int = 1024) -> int:
    """``value`` if it is an integer >= ``minimum``; else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _seconds(value: float) -> str:
    return f"{value:g}"


def _timeout_response(detail: str, key: str = "detail") -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({key: detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return body, headers


class _BodyTimedOut(BaseException):
    """Raised out of ``receive`` to unwind the app (a BaseException: no handler catches it)."""


def _is_body_timeout(exc: BaseException) -> bool:
    if isinstance(exc, _BodyTimedOut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_body_timeout(inner) for inner in exc.exceptions)
    return False


class BodyTimeoutMiddleware:
    """Answer 408 and close the connection when a request body is not received in time.

    The deadline runs from the moment the request head is complete (when the app is called)
    to the last body chunk. Once the body is complete, ``receive`` is passed through as is.
    """

    def __init__(self, app: ASGIApp, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.app = app
        self.timeout = check_timeout(timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = False
        timed_out = False
        response_started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise _BodyTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out:
                return  # the app is unwinding; the 408 is ours to send
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except BaseException as exc:
            if not (timed_out and _is_body_timeout(exc)):
                raise
            if response_started:
                return  # too late for a 408; uvicorn closes an unfinished response
            body, headers = _timeout_response(
                f"request body not received within {_seconds(self.timeout)} s",
                error_key(scope.get("path", "")),  # {"error": …} on the OIP routes
            )
            await send({"type": "http.response.start", "status": 408, "headers": headers})
            await send({"type": "http.response.body", "body": body})


class _CycleTransport:
    """The transport a request's response cycle sees: ``close()`` lingers (see the protocol),
    and a response's head is held back until its first body part, so both leave in one
    write (uvicorn writes them apart: two sends, each waking the client; on loopback here the
    second costs ~8 µs of CPU)."""

    __slots__ = ("_head", "_hold", "_protocol", "_transport")

    def __init__(self, protocol: "HeaderTimeoutProtocol", transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        self._hold = False  # the next write is a response head: keep it
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        """Write to the connection (with the head held back, if any); nothing once it is
        closing (the client left: uvloop would raise, asyncio warn, for a response nobody
        reads)."""
        if self._hold:
            self._hold, self._head = False, data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        if not self._transport.is_closing():
            self._transport.write(data)

    def hold_head(self, hold: bool) -> None:
        """Keep the next write (a response head) for the write after it (``False``: stop
        waiting for it; a head already kept stays until :meth:`flush`)."""
        self._hold = hold

    def flush(self) -> None:
        """Write a head still held back (a response without a body part written: HEAD)."""
        if self._head is not None:
            self.write(b"")

    def is_closing(self) -> bool:
        """Whether the connection is closing."""
        return self._transport.is_closing()

    def close(self) -> None:
        """Close after the response: at once, or lingering if the request is still arriving."""
        self.flush()
        self._protocol.close_after_response()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request head,
    and a lingering close.

    * Deadline: armed when the connection opens and when the first byte of a later request
      arrives, disarmed once the head is parsed. When it fires the connection is closed; a 408
      is sent first if part of a head was received and no response is under way.
    * Size: a head (request line and headers) longer than ``max_head_bytes`` gets 431 and the
      connection is closed; the parser never holds more than that (plus one read of the
      socket, when a head follows a body in the same read).
    * Lingering close: when a response ends the connection (413, 408, 431, ``Connection:
      close``) while the client is still sending its request, the server half-closes and reads
      and discards up to ``linger_bytes`` for at most ``header_timeout`` seconds before it
      closes, as nginx does, so that a client that writes its whole body before it reads
      (Python's urllib) gets the answer instead of a connection reset.
    """

    def __init__(
        self,
        *args: Any,
        header_timeout: float = DEFAULT_TIMEOUT,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        linger_bytes: int = DEFAULT_LINGER_BYTES,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.header_timeout = check_timeout(header_timeout, "header timeout")
        self.max_head_bytes = check_size(max_head_bytes, "max_head_bytes")
        self.linger_bytes = check_size(linger_bytes, "linger_bytes", minimum=0)
        self._head_deadline: TimerHandle | None = None
        self._head_started = False
        self._in_head = True  # bytes received now belong to a request head
        self._head_bytes = 0
        self._in_message = False  # a request has begun and not been fully received
        self._in_body = False  # its head is parsed, its body is still arriving
        self._linger_left = -1  # >= 0 while lingering: bytes still to discard
        self._linger_timer: TimerHandle | None = None
        self._running: Any = None

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline of the first request head."""
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timers with the connection; tell every unfinished request, not only the
        newest (uvicorn's), that its client left."""
        self._disarm_head_deadline()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        for cycle in [self._running, *(queued for queued, _ in self.pipeline)]:
            if cycle is not None and cycle is not self.cycle and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle  # the request being answered (self.cycle is the newest one)
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting the bytes of each head; discard them while lingering."""
        while data:
            if self._linger_left >= 0:
                self._linger_left -= len(data)
                if self._linger_left < 0:
                    self.transport.close()
                return
            if not self._in_head:
                super().data_received(data)
                return
            room = self.max_head_bytes - self._head_bytes
            part, data = data[:room], data[room:]
            self._head_bytes += len(part)
            if part:
                super().data_received(part)
            if self.transport.is_closing():
                return
            if self._in_head and self._head_bytes >= self.max_head_bytes and data:
                self._head_too_large()
                return

    def on_message_begin(self) -> None:
        """The first byte of a request: its head now has ``header_timeout`` seconds."""
        super().on_message_begin()
        self._head_started = True
        self._in_message = True
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        """The head arrived in time and within its size."""
        self._disarm_head_deadline()
        self._head_started = False
        self._in_head = False
        self._in_body = True
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            transport = _CycleTransport(self, self.transport)
            cycle.transport = transport  # type: ignore[assignment]
            send = cycle.send

            async def send_early_close(message: Any) -> None:
                kind = message["type"]
                if kind == "http.response.start":
                    # Answered before its body arrived (413, 401, …): say so, as this
                    # connection then ends (lingering), so a client does not send its next
                    # request on it.
                    if self._in_body and self.cycle is cycle:
                        cycle.keep_alive = False
                    transport.hold_head(True)  # sent with the first body part
                    try:
                        await send(message)
                    finally:
                        transport.hold_head(False)
                    return
                await send(message)
                if kind == "http.response.body":
                    transport.flush()

            cycle.send = send_early_close  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        """The request is fully received: bytes from now on are the next request's head."""
        self._in_message = self._in_body = False
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Start the next pipelined request, unless the connection is lingering to its end.

        A response sent before its request's body was fully received (an early refusal) ends
        the connection lingering too: the rest of that body is not read without bound.
        """
        early = self._in_body and self.cycle is not None and self.cycle.response_complete
        if early and self._linger_left < 0 and not self.transport.is_closing():
            self._linger()  # the request answered is the one whose body is still arriving
        if self._linger_left >= 0:
            self.server_state.total_requests += 1
            return
        super().on_response_complete()

    def close_after_response(self) -> None:
        """Close now if the request was fully received, else linger."""
        if self._in_message and not self.transport.is_closing():
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Half-close, then discard up to ``linger_bytes`` for ``header_timeout`` s, then close."""
        if self._linger_left >= 0:
            return
        self._linger_left = self.linger_bytes
        self._disarm_head_deadline()
        self.pipeline.clear()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(self.header_timeout, self._end_linger)
        self.flow.resume_reading()

    def _end_linger(self) -> None:
        self._linger_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_too_large(self) -> None:
        """431 and a lingering close; just close if another response is under way."""
        self._disarm_head_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head too large: no room for an answer
            return
        body, headers = _timeout_response(
            f"request head exceeds the limit of {self.max_head_bytes} bytes"
        )
        self._write_response(b"431 Request Header Fields Too Large", headers, body)
        self._in_message = True  # the rest of the head is still coming
        self._linger()

    def _write_response(
        self, status: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(b"HTTP/1.1 " + status + b"\r\n" + head + b"\r\n" + body)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head is late while an earlier response is under way: finish that
            # response, then close.
            self.cycle.keep_alive = False
            return
        if self._head_started:
            body, headers = _timeout_response(
                f"request head not received within {_seconds(self.header_timeout)} s"
            )
            self._write_response(b"408 Request Timeout", headers, body)
        self.transport.close()


def header_timeout_protocol(
    seconds: float = DEFAULT_TIMEOUT,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    linger_bytes: int = DEFAULT_LINGER_BYTES,
) -> Callable[..., HeaderTimeoutProtocol]:
    """The ``http=`` argument of ``uvicorn.run``/``uvicorn.Config``: head deadline and limit."""
    return functools.partial(
        HeaderTimeoutProtocol,
        header_timeout=check_timeout(seconds),
        max_head_bytes=check_size(max_head_bytes, "max_head_bytes"),
        linger_bytes=check_size(linger_bytes, "linger_bytes", minimum=0),
    )


def protocol_for(
    settings: Any, header_timeout: float | None = None
) -> Callable[..., HeaderTimeoutProtocol]:
    """The protocol for a :class:`~modeltheft.service.Settings`: its request timeout (or
    ``header_timeout``) and head limit; a lingering close drains up to twice the body limit
    (at least 1 MiB)."""
    return header_timeout_protocol(
        header_timeout or settings.request_timeout,
        settings.max_header_bytes,
        max(2 * settings.max_body_bytes, DEFAULT_LINGER_BYTES),
    )
