"""``modeltheft serve`` as real process groups on loopback, for the multi-worker tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from modeltheft.service.app import SETTINGS_ENV
from tests.conftest import KEYS, METRICS_KEY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_pids(pid: int) -> list[int]:
    """The uvicorn workers among the children of ``pid`` (not multiprocessing's helpers)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


@dataclass
class Server:
    """One ``modeltheft serve`` process group."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole group: the uvicorn supervisor and its workers, no clean-up."""
        with suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def launch(args: list[str], log: Path, env: dict[str, str]) -> Server:
    """``modeltheft serve ARGS`` on a free loopback port, in its own process group, once healthy.

    stdout and stderr go to ``log``; the caller kills the returned server.
    """
    port = free_port()
    command = [sys.executable, "-m", "modeltheft.cli.app", "serve", *args]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"serve did not start: {log.read_text()}")
        time.sleep(0.1)


@contextmanager
def serve_processes(
    victim_path: Path, tmp_path: Path, defense: str, workers: int = 2
) -> Iterator[Callable[[str], Server]]:
    """A starter of ``serve --defense DEFENSE --workers N --state URL``; all killed at exit.

    Keys come from ``MODELTHEFT_API_KEYS``; at exit the logs must not contain any of them.
    """
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']},bob:{KEYS['bob']}"}
    env["MODELTHEFT_METRICS_KEY"] = METRICS_KEY
    env.pop(SETTINGS_ENV, None)
    started: list[Server] = []

    def start(state: str) -> Server:
        args = ["--model", str(victim_path), "--defense", defense, "--state", state]
        log = tmp_path / f"serve-{len(started)}.log"
        server = launch([*args, "--workers", str(workers)], log, env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()
    for server in started:
        text = server.log.read_text()
        assert KEYS["alice"] not in text and KEYS["bob"] not in text
