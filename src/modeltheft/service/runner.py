"""Run the service with uvicorn: on a loopback port in a background thread (demo, tests), or
in worker processes under uvicorn's supervisor (``serve --workers``)."""

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors.multiprocess import Multiprocess

from modeltheft.errors import ModelTheftError
from modeltheft.service.timeouts import header_timeout_protocol, protocol_for


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")``."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
        header_timeout: float | None = None,
    ):
        """``header_timeout`` None: the app's ``settings.request_timeout`` (10 s without one)."""
        self.app = app
        settings = getattr(getattr(app, "state", None), "settings", None)
        self.header_timeout = header_timeout or getattr(settings, "request_timeout", None) or 10.0
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        """Start serving (uvicorn binds the port itself) and wait until it accepts requests."""
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            # A gateway's lifespan closes its upstream connections (and the store) on exit.
            lifespan="on" if getattr(self.app.state, "upstream", None) else "off",
            http=self._protocol(),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ModelTheftError(f"the prediction service did not start on {self.url}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def _protocol(self) -> object:
        """The app's head deadline, head limit and lingering close (defaults without settings)."""
        settings = getattr(self.app.state, "settings", None)
        if settings is None:
            return header_timeout_protocol(self.header_timeout)
        return protocol_for(settings, self.header_timeout)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


WORKER_START_FAILURE = 3
"""The exit code of a worker that cannot start (uvicorn's ``STARTUP_FAILURE``; what
:func:`modeltheft.service.app.app_from_env` exits with)."""


class WorkerStartFailed(ModelTheftError):
    """A worker refused to start; the other workers were stopped."""


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, told at once that a worker died or refused to start.

    uvicorn's parent keeps its copy of each worker's end of the health-ping pipe, so a ping
    sent to a worker that exits before answering waits the whole health-check timeout (60 s
    for ``serve``) instead of seeing the pipe close. Here the parent closes its copy once the
    worker has started, and a worker that exited with :data:`WORKER_START_FAILURE` stops the
    service (uvicorn releases without that check of their own restart it in a loop).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed: int | None = None
        """The pid of a worker that could not start, if one could not."""

    def init_processes(self) -> None:
        """Start the workers and close the parent's copies of their pipe ends."""
        super().init_processes()
        self._release_child_ends()

    def keep_subprocess_alive(self) -> None:
        """Stop if a worker could not start; else uvicorn's check (ping, replace the dead)."""
        self._release_child_ends()
        if self._start_failed():
            return
        super().keep_subprocess_alive()
        self._release_child_ends()
        self._start_failed()

    def _release_child_ends(self) -> None:
        for process in self.processes:
            end = getattr(process, "child_conn", None)
            if process.pid is not None and end is not None and not end.closed:
                end.close()  # the worker has its own copy since start()

    def _start_failed(self) -> bool:
        if self.failed is not None:
            return True
        for process in self.processes:
            if process.exitcode == WORKER_START_FAILURE:
                self.failed = process.pid
                self.should_exit.set()
                return True
        return False


def run_workers(app: str, workers: int, **options: Any) -> None:
    """Serve the app factory ``app`` ("module:function") in ``workers`` processes.

    ``options`` are :class:`uvicorn.Config`'s. Returns when the service is stopped (SIGINT,
    SIGTERM); raises :class:`WorkerStartFailed` within about a second of a worker refusing to
    start (its own log line says why), once the other workers have stopped.
    """
    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    supervisor = _Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    if supervisor.failed is not None:
        raise WorkerStartFailed(
            f"worker {supervisor.failed} could not start (the log above says why); "
            "the service stopped"
        )
