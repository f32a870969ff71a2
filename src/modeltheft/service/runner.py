"""Run the service with uvicorn on a loopback port in a background thread (demo, tests)."""

import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

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
