"""Deadlines for slow clients: a request head and a request body must arrive in time.

uvicorn waits forever for a client that trickles its headers (slowloris) or declares a
``Content-Length`` and never sends the body. Two guards close such connections:

* :class:`BodyTimeoutMiddleware` (pure ASGI): a body not fully received within ``timeout``
  seconds of the request head gets ``408 {"detail": ...}`` and the connection is closed;
* :class:`HeaderTimeoutProtocol` (uvicorn's httptools protocol): a connection that has not
  delivered a complete request head within ``header_timeout`` seconds of connecting, or of
  the first byte of its next request, is closed (with a 408 if part of a head arrived).
  Idle keep-alive connections are still governed by uvicorn's ``timeout_keep_alive``.

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


def check_timeout(seconds: float, what: str = "request timeout") -> float:
    """``seconds`` as a float if it is a finite positive number; else a ConfigError."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, got {seconds!r}")
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


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request head.

    The deadline is armed when the connection opens and when the first byte of a later
    request arrives, and disarmed once the head is parsed. When it fires the connection is
    closed; a 408 is sent first if part of a head was received and no response is under way.
    """

    def __init__(self, *args: Any, header_timeout: float = DEFAULT_TIMEOUT, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout = check_timeout(header_timeout, "header timeout")
        self._head_deadline: TimerHandle | None = None
        self._head_started = False

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
        """Drop the deadline with the connection."""
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """The first byte of a request: its head now has ``header_timeout`` seconds."""
        super().on_message_begin()
        self._head_started = True
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        """The head arrived in time."""
        self._disarm_head_deadline()
        self._head_started = False
        super().on_headers_complete()

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
            head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n" + head + b"\r\n" + body)
        self.transport.close()


def header_timeout_protocol(
    seconds: float = DEFAULT_TIMEOUT,
) -> Callable[..., HeaderTimeoutProtocol]:
    """The ``http=`` argument of ``uvicorn.run``/``uvicorn.Config`` for a head deadline."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=check_timeout(seconds))
