"""Real model servers (MLServer, KServe) as loopback processes, each from a venv of its own.

``make test`` builds the venvs (``.venv-mlserver``, ``.venv-kserve``: they pin their own
FastAPI, so never the project's venv) and sets ``MODELTHEFT_REAL_SERVERS=1``: a missing venv
then fails the tests. Run alone, a missing venv skips them with the make target to build it.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_ENV = "MODELTHEFT_REAL_SERVERS"


def venv_python(name: str) -> Path:
    """``ROOT/.venv-NAME/bin/python``; skips (fails under make test or CI) if not installed."""
    venv = ROOT / f".venv-{name}"
    if (venv / ".installed").is_file():
        return venv / "bin" / "python"
    message = f"{venv} is not installed: run `make {venv.name}/.installed` (make test does)"
    if os.environ.get(REQUIRED_ENV) or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment of a server process: ours, less what would point it at our venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def running(command: list[str], ready: str, log: Path, timeout: float = 90) -> Iterator[float]:
    """Run ``command`` in its own process group until ``GET ready`` answers 200; yields the
    start-up time in seconds. The group is stopped on exit (SIGTERM, then SIGKILL), whatever
    happened in between."""
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=log.parent,
            env=server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            with suppress(httpx.TransportError):
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() - started > timeout:
                raise AssertionError(f"{command[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield time.monotonic() - started
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
