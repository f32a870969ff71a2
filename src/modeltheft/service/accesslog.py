"""The access log's writer: one line per request, queued and written in batches.

:func:`write_access` is what :class:`~modeltheft.service.observability.ObservabilityMiddleware`
calls once a request is answered. With ``serve``'s logging set-up
(:func:`~modeltheft.service.observability.log_config`) the access records go to an
:class:`AccessLogHandler`, which makes each line straight from the record's fields, the very
line the configured formatter would make of a LogRecord, and writes the lines in batches.
``logging`` made a record, formatted it and wrote and flushed the stream once a request: 48
µs of CPU on top of a 140 µs request (``benchmarks/observability.py --app``), 12 µs now. With
any other set-up, records go through ``logging`` as usual.
"""

import logging
import os
import threading
import time
from collections import deque
from typing import Any

access_log = logging.getLogger("modeltheft.access")
ACCESS_MESSAGE = "%s %s %s client=%s rows=%s duration_ms=%s"
"""An access record's message: method, route, status, client, rows, duration in ms."""
ACCESS_FIELDS = ("method", "route", "status", "client", "rows", "duration_ms")
"""The access record's extra fields (the JSON lines' keys), in the message's order."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FLUSH_EVERY = 0.5
"""Seconds between two writes of the access records waiting in :class:`AccessLogHandler`."""


def write_access(
    method: str, route: str, status: int, client: str, rows: int, millis: float
) -> None:
    """Log one access record: straight into the queue of ``serve``'s access handler (the line
    its formatter would make, without a LogRecord), else through ``logging``."""
    fields = (method, route, status, client, rows, millis)
    handlers = access_log.handlers
    if len(handlers) == 1 and not access_log.propagate and not access_log.filters:
        handler = handlers[0]
        if isinstance(handler, AccessLogHandler) and handler.queue_access(fields):
            return
    # makeRecord + handle: Logger.info would also walk the stack for the caller.
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        ACCESS_MESSAGE,
        fields,
        None,
        extra=dict(zip(ACCESS_FIELDS, fields, strict=True)),
    )
    access_log.handle(record)


class AccessLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access records' handler in :func:`log_config`: lines are queued and written in
    batches, every ``interval`` seconds by a thread of its own, at once when ``max_lines``
    wait, and at :meth:`flush` and :meth:`close` (``logging.shutdown`` calls both at exit, so
    a normal stop loses no line; a SIGKILL loses at most ``interval`` seconds of them).

    With :func:`log_config`'s formatters, :func:`write_access` hands it the record's fields
    alone and it makes the line that formatter would make of the LogRecord, without one: the
    text line straight (its time text made once a second), the JSON line from a stand-in
    record of the attributes the JSON formatter reads. Any other formatter gets LogRecords.
    """

    def __init__(
        self, stream: Any = None, interval: float = FLUSH_EVERY, max_lines: int = 10_000
    ) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_lines = max_lines
        self._pending: deque[str] = deque()
        self._flusher: threading.Thread | None = None
        self._stopped = threading.Event()
        self._kind: str | None = None  # "text", "json": a formatter queue_access can stand in for
        self._stamp = (-1, "")  # a second and its time text, for queue_access

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        """Set the formatter; note whether queue_access can stand in for it (the class doc)."""
        super().setFormatter(fmt)
        self._kind = "text" if _is_plain_text(fmt) else "json" if _is_plain_json(fmt) else None

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted record."""
        try:
            self._queue(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def queue_access(self, fields: tuple[Any, ...]) -> bool:
        """Queue the line of an access record of ``fields`` (see :data:`ACCESS_FIELDS`) at
        INFO, as this handler's formatter would make it of a LogRecord made now; False
        (nothing queued) if its formatter is not one of the two that :func:`log_config`
        configures, or it has filters or a level above INFO."""
        formatter = self.formatter
        if self._kind is None or formatter is None or self.filters or self.level > logging.INFO:
            return False
        now = time.time()
        msecs = int((now - int(now)) * 1000) + 0.0  # as LogRecord computes it
        message = ACCESS_MESSAGE % fields
        if self._kind == "json":
            self._queue(formatter.format(_AccessRecord(message, now, msecs, fields)))  # type: ignore[arg-type]
            return True
        second, text = self._stamp
        if second != int(now):
            second = int(now)
            text = time.strftime(formatter.default_time_format, time.localtime(now))
            self._stamp = (second, text)
        stamp = formatter.default_msec_format % (text, msecs)  # type: ignore[operator]
        self._queue(f"{stamp} {logging.getLevelName(logging.INFO)} {access_log.name}: {message}")
        return True

    def _queue(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= self.max_lines:
            self.flush()
        elif self._flusher is None:
            self._start()

    def _start(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._flusher is None and not self._stopped.is_set():
                self._flusher = threading.Thread(
                    target=self._run, name="modeltheft-access-log", daemon=True
                )
                self._flusher.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting, in one write."""
        with self.lock:  # type: ignore[union-attr]
            pending, lines = self._pending, []
            while pending:
                lines.append(pending.popleft())
            stream = self.stream
            if not lines or stream is None:
                return
            try:
                stream.write(self.terminator.join(lines) + self.terminator)
                stream.flush()
            except (OSError, ValueError):
                pass  # the stream is gone (closed, broken pipe): nowhere to write to

    def close(self) -> None:
        """Write what waits and stop the writing thread."""
        self._stopped.set()
        try:
            self.flush()
        finally:
            super().close()


class _AccessRecord:
    """What a pythonjsonlogger formatter reads of an access LogRecord: the same attributes,
    extra fields last (so the JSON keys come in the same order)."""

    exc_info = exc_text = stack_info = None

    def __init__(self, message: str, created: float, msecs: float, fields: tuple[Any, ...]):
        self.name = access_log.name
        self.msg = message
        self.args = ()
        self.levelname = logging.getLevelName(logging.INFO)
        self.levelno = logging.INFO
        self.created = created
        self.msecs = msecs
        self.process = os.getpid()
        self.__dict__.update(zip(ACCESS_FIELDS, fields, strict=True))

    def getMessage(self) -> str:  # noqa: N802 (LogRecord's name)
        """The message (already formatted)."""
        return self.msg


def _is_plain_json(formatter: logging.Formatter | None) -> bool:
    """Whether ``formatter`` is a pythonjsonlogger formatter of :func:`log_config`'s kind:
    its own class, fields of a record that :class:`_AccessRecord` has, every standard
    LogRecord attribute reserved (not copied into the line)."""
    if formatter is None or not type(formatter).__module__.startswith("pythonjsonlogger."):
        return False
    from pythonjsonlogger.core import RESERVED_ATTRS

    required = set(getattr(formatter, "_required_fields", ["?"]))
    skipped = set(getattr(formatter, "_skip_fields", ()))
    return (
        required <= {"levelname", "levelno", "name", "process", "message", "created", "msecs"}
        and set(RESERVED_ATTRS) <= skipped
        and not getattr(formatter, "defaults", None)
    )


def _is_plain_text(formatter: logging.Formatter | None) -> bool:
    """Whether ``formatter`` is ``logging.Formatter(TEXT_FORMAT)`` with default times."""
    return (
        type(formatter) is logging.Formatter
        and formatter._fmt == TEXT_FORMAT
        and formatter.datefmt is None
        and type(formatter._style) is logging.PercentStyle
        and not getattr(formatter._style, "_defaults", None)
        and formatter.converter is time.localtime
        and bool(formatter.default_time_format)
        and bool(formatter.default_msec_format)
    )
