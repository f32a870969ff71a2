"""Request metrics (Prometheus), the access log and the logging set-up of the service.

:class:`ObservabilityMiddleware` is a pure ASGI middleware: per request it reads the status the
app sends, the matched route template and what the handlers left in ``request.state`` (the
contract: ``client`` set by authentication, ``rows`` and ``altered`` set by ``/v1/predict``
and the OIP v2 / KServe v1 inference routes on an answer), then updates :class:`HttpMetrics`
and writes one access record. Labels are low cardinality by construction: a route template
or ``other``, a known method or ``other``, a status, a refusal reason. API keys and client
names are never labels; the access record has the client name but never headers, the query
string or the raw path.

With ``serve --workers N`` prometheus_client runs in multiprocess mode (the serve command sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start, see :func:`multiprocess_metrics`) and
``/metrics`` adds up every worker's files; with one process the metrics live in a registry of
their own per app.
"""

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from time import perf_counter
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modeltheft.errors import ConfigError
from modeltheft.service.accesslog import TEXT_FORMAT, access_log, write_access

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Request durations from half a millisecond (a cached answer) to a second (a slow store)."""
REFUSALS = {
    401: "unauthenticated",
    403: "blocked",
    408: "timeout",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
LOG_FORMATS = ("text", "json")


_UNSAFE = re.compile(r"[^!-~]")
"""Anything but printable ASCII without the space: escaped in an access record's text."""


@lru_cache(maxsize=1024)
def log_safe(text: str) -> str:
    """``text`` with controls, spaces and non-ASCII characters escaped (``\\x0d``), so one
    access record stays one line whose fields cannot be forged."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def multiprocess_dir() -> str | None:
    """The directory shared by the worker processes, if prometheus_client is in multiprocess mode.

    The mode is fixed when prometheus_client is imported; setting the variable later changes
    nothing, so both must agree.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path and getattr(values.ValueClass, "_multiprocess", False):
        return path
    return None


METRICS_DIR_PREFIX = "modeltheft-metrics-"
_METRICS_DIR = re.compile(re.escape(METRICS_DIR_PREFIX) + r"([1-9]\d{0,9})-[A-Za-z0-9_]+")


@contextmanager
def multiprocess_metrics(parent: Path | None = None) -> Iterator[Path]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a private, empty directory; remove it at exit.

    For the serve command, before it starts worker processes (which inherit the variable and
    import prometheus_client afresh). An empty directory per run: stale files of an earlier
    run would add old counts to the new ones. The directory (in ``parent``, default the temp
    dir) is named ``modeltheft-metrics-<pid>-…`` after this process, so that a later start can
    remove what a killed run left (:func:`remove_stale_metrics_dirs`).
    """
    remove_stale_metrics_dirs(parent)
    previous = os.environ.get(MULTIPROC_ENV)
    path = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-", dir=parent)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield Path(path)
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_metrics_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the metrics directories of runs that died without cleaning up (kill -9).

    Only directories that are ours: named ``modeltheft-metrics-<pid>-…``, owned by this user,
    not symbolic links, and whose ``<pid>`` is no live process. Returns what was removed.
    """
    folder = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _METRICS_DIR.fullmatch(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    if removed:
        logging.getLogger("modeltheft.service").info(
            "removed %d metrics folder(s) left by stopped runs in %s", len(removed), folder
        )
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's, or no pid at all: keep it
        return True
    return True


def reap_dead_workers(path: str) -> None:
    """Drop the live gauges of workers that exited (uvicorn restarts workers without telling us).

    Their counters and histograms stay: what a dead worker counted still happened.
    """
    for entry in os.scandir(path):
        if not entry.name.startswith("gauge_live"):  # livesum, liveall, livemax, …
            continue
        pid = entry.name.rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdigit() and not _pid_alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)


class HttpMetrics:
    """The request metrics of one app, and how to expose them with other collectors."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "modeltheft_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "modeltheft_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "modeltheft_http_requests_in_progress",
            "Requests being answered now (summed over live workers).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.refusals = Counter(
            "modeltheft_refusals",
            "Requests refused, by reason (derived from the status).",
            ["reason"],
            registry=registry,
        )
        self.queries = Counter(
            "modeltheft_queries",
            "Rows answered (/v1/predict, OIP v2 infer, KServe v1 predict).",
            registry=registry,
        )
        self.altered = Counter(
            "modeltheft_answers_altered",
            "Answered rows whose label a defense changed.",
            registry=registry,
        )
        for reason in REFUSALS.values():
            self.refusals.labels(reason)  # exported at 0 before the first refusal
        self._outcomes: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._durations: dict[str, Any] = {}

    def record(
        self, route: str, method: str, status: int, seconds: float, rows: int, altered: int
    ) -> None:
        """Count one finished request (the label children are looked up once and cached)."""
        key = (route, method, status)
        outcome = self._outcomes.get(key)
        if outcome is None:
            reason = REFUSALS.get(status)
            outcome = (
                self.requests.labels(route, method, str(status)),
                self.refusals.labels(reason) if reason else None,
            )
            self._outcomes[key] = outcome
        outcome[0].inc()
        if outcome[1] is not None:
            outcome[1].inc()
        duration = self._durations.get(route)
        if duration is None:
            duration = self._durations[route] = self.duration.labels(route)
        duration.observe(seconds)
        if rows:
            self.queries.inc(rows)
        if altered:
            self.altered.inc(altered)

    def exposition(self, *extra: Collector) -> bytes:
        """Prometheus text of these metrics (all workers' in multiprocess mode) and ``extra``."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiprocess_dir is None:
            registry.register(self.registry)
        else:
            reap_dead_workers(self.multiprocess_dir)
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        for collector in extra:
            registry.register(collector)
        return generate_latest(registry)


class ObservabilityMiddleware:
    """Times and counts every HTTP request; writes the access record if enabled.

    Add it last (outermost) so that it sees the status of every answer, refusals included.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: HttpMetrics,
        routes: Iterable[BaseRoute] = (),
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.access_log = access_log
        self._endpoint_paths: dict[Any, str] = {}

    def _route(self, scope: Scope) -> str:
        """The matched route's template; ``other`` for a path no route matches."""
        route = scope.get("route")  # FastAPI routes
        if route is not None:
            return getattr(route, "path_format", OTHER)
        endpoint = scope.get("endpoint")  # plain Starlette routes (docs, openapi.json)
        if endpoint is None:
            return OTHER
        path = self._endpoint_paths.get(endpoint)
        if path is None:
            for candidate in self.routes:
                if getattr(candidate, "endpoint", None) is endpoint:
                    path = self._endpoint_paths[endpoint] = candidate.path_format
                    break
            else:
                return OTHER
        return path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        status = 0

        def send_status(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        metrics = self.metrics
        metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = perf_counter() - start
            status = status or 500  # no answer sent: the server's error handler sends a 500
            metrics.in_progress.dec()
            route = self._route(scope)
            method = scope["method"]
            if method not in METHODS:
                method = OTHER
            rows = state.get("rows") or 0
            metrics.record(route, method, status, seconds, rows, state.get("altered") or 0)
            if self.access_log and access_log.isEnabledFor(logging.INFO):
                client = log_safe(state.get("client") or "-")  # names are checked; in case
                write_access(method, route, status, client, rows, round(seconds * 1000, 3))


_SECRET = re.compile(
    r"(?i)(\bbearer\s+|\bauthorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?"
    r"|\b(?:api[_-]?key|access[_-]?token|token)[\"']?\s*[:=]\s*[\"']?)"
    r"(?!\[REDACTED\])[^\s\"',;&}\]]+"
)
REDACTED = "[REDACTED]"
_RECORD_FIELDS = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"]
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a bearer token or API key replaced."""
    return _SECRET.sub(lambda m: m.group(1) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Defence in depth: no record leaves a handler with something that looks like a key.

    Nothing in the service logs a key on purpose; this catches what a library or a future
    change might (messages, extra fields, tracebacks).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_FIELDS and isinstance(value, str):
                clean = redact(value)
                if clean != value:
                    setattr(record, name, clean)
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            clean = redact(text)
            if clean != text:
                record.exc_info, record.exc_text = None, clean
        return True


def log_config(log_format: str = "text", level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict for uvicorn's ``log_config`` (applied in workers too).

    One stderr handler with :class:`RedactSecrets`: text or one JSON object per line. It
    serves uvicorn's loggers and, through the root logger, ours (``modeltheft.*``); the access
    records, built only from known fields, have the same stream and format without the filter.
    uvicorn's own access log is off: ``modeltheft.access`` replaces it.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log format must be text or json, got {log_format!r}")
    level = level.upper()
    if log_format == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS

        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
    else:
        formatter = {"()": "logging.Formatter", "fmt": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": f"{__name__}.RedactSecrets"}},
        "formatters": {"default": formatter, "access": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["redact"],
            },
            # Access records hold only a method, a route template, a status, a configured
            # client name and numbers: no redaction pass (four regexes a request). Written
            # in batches every 0.5 s and at exit (AccessLogHandler).
            "access": {
                "class": "modeltheft.service.accesslog.AccessLogHandler",
                "stream": "ext://sys.stderr",
                "formatter": "access",
            },
        },
        "loggers": {
            "modeltheft.access": {"handlers": ["access"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "modeltheft": {"level": level},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def install(app: Any, access_log: bool = True) -> HttpMetrics:
    """Add the middleware to a FastAPI ``app`` (call it after any other middleware)."""
    metrics = HttpMetrics()
    app.state.observability = metrics
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, routes=app.router.routes, access_log=access_log
    )
    return metrics
