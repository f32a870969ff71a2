"""Domain errors mapped to HTTP answers in one place.

Every error body is ``{"detail": str}``, except on the Open Inference Protocol and KServe
routes (``/v2…``, ``/v1/models/…``), whose clients read ``{"error": str}``.
"""

import logging
import math
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from modeltheft.errors import (
    AuthError,
    Blocked,
    InputError,
    ModelTheftError,
    PayloadTooLarge,
    RateLimited,
    StateUnavailable,
    StoreDown,
    UpstreamError,
    UpstreamTimeout,
)
from modeltheft.state.base import StateLost

log = logging.getLogger("modeltheft.service")

STATUS: list[tuple[type[ModelTheftError], int]] = [
    (AuthError, 401),
    (Blocked, 403),
    (PayloadTooLarge, 413),
    (InputError, 422),
    (RateLimited, 429),
    (StateUnavailable, 503),
    (UpstreamTimeout, 504),  # before its base class
    (UpstreamError, 502),
]

UNAVAILABLE = "the service cannot record requests right now (state store unavailable); retry later"


OIP_PREFIXES = ("/v2/", "/v1/models/")


def error_key(path: str) -> str:
    """The key of the error message in an error body on ``path``: ``error`` or ``detail``."""
    return "error" if path == "/v2" or path.startswith(OIP_PREFIXES) else "detail"


def _error(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    key = error_key(request.scope.get("path", ""))
    return JSONResponse({key: detail}, status_code=status, headers=headers)


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            headers = None
            if isinstance(exc, RateLimited):
                retry = exc.retry_after if math.isfinite(exc.retry_after) else 3600.0
                headers = {**exc.headers, "Retry-After": str(max(1, math.ceil(retry)))}
            elif isinstance(exc, StateUnavailable):
                # The reason (a path, a host) is for the operator's log, not for clients;
                # a lost state file needs the operator: ERROR; during a known outage the
                # breaker logged it once already.
                level = logging.ERROR if isinstance(exc, StateLost) else logging.WARNING
                if isinstance(exc, StoreDown):
                    level = logging.DEBUG
                log.log(level, "state store unavailable: %s", exc)
                after = str(max(1, math.ceil(exc.retry_after)))
                return _error(request, status, UNAVAILABLE, {"Retry-After": after})
            elif isinstance(exc, AuthError):
                headers = {"WWW-Authenticate": "Bearer"}
            return _error(request, status, str(exc), headers)
    log.error("unmapped domain error: %s", type(exc).__name__)
    return _error(request, 500, "internal error")


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(request, 422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    """The client went away before sending its whole body: nobody reads this answer.

    499 (nginx's "client closed request") keeps it out of the 5xx counts and the error log.
    """
    log.info("client disconnected before its request body was complete")
    return _error(request, 499, "client closed the request")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(request, 500, "internal error")


HANDLERS: list[tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]] = [
    (ModelTheftError, _domain),
    (RequestValidationError, _validation),
    (StarletteHTTPException, _http),
    (ClientDisconnect, _disconnected),
    (Exception, _unexpected),
]


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to HTTP answers."""
    for cls, handler in HANDLERS:
        app.add_exception_handler(cls, handler)


async def error_response(request: Request, exc: Exception) -> Response:
    """The answer to ``exc`` by the same mapping (for code that runs outside the handlers)."""
    for cls, handler in HANDLERS:
        if isinstance(exc, cls):
            return await handler(request, exc)
    return await _unexpected(request, exc)  # pragma: no cover - Exception matches all
