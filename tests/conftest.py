"""Shared fixtures: one trained victim per session, apps and live servers built from settings."""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing, MetricsKey
from modeltheft.service.runner import BackgroundServer
from modeltheft.state.sqlite import SqliteStore
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim, load_victim, save_victim, train_victim

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210"}
METRICS_KEY = "metrics-key-5550123456789"
"""The operator's credential for ``GET /metrics`` (``MODELTHEFT_METRICS_KEY``) in tests."""


@pytest.fixture(scope="session")
def victim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = train_victim("rf")
    path = tmp_path_factory.mktemp("victim") / "victim.skops"
    save_victim(trained.model, path, trained.metadata)
    return path


@pytest.fixture(scope="session")
def victim(victim_path: Path) -> LoadedVictim:
    return load_victim(victim_path)


@pytest.fixture
def make_app(victim_path: Path) -> Callable[..., FastAPI]:
    def build(defense: str = "none", **overrides: object) -> FastAPI:
        settings = Settings(
            keys=KeyRing.from_pairs(KEYS),
            model_path=victim_path,
            defense=defense,
            seed=7,
            **{"metrics_key": MetricsKey.from_value(METRICS_KEY), **overrides},
        )
        return create_app(settings)

    return build


@pytest.fixture
def client(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(make_app("none")) as test_client:
        yield test_client


@pytest.fixture
def live_server(make_app: Callable[..., FastAPI]) -> Callable[..., BackgroundServer]:
    servers: list[BackgroundServer] = []

    def start(defense: str = "none", **overrides: object) -> BackgroundServer:
        server = BackgroundServer(make_app(defense, **overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def auth(name: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def metrics_auth() -> dict[str, str]:
    """Headers that let the operator read ``GET /metrics``."""
    return {"Authorization": f"Bearer {METRICS_KEY}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a loopback port for the session (skipped if not installed).

    Under CI (the ``CI`` variable set) a missing redis-server fails instead: CI must test Redis.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with redis_server(tmp_path_factory.mktemp("redis"), binary) as (url, _):
        yield url


@contextmanager
def redis_server(
    folder: Path, binary: str | None = None
) -> Iterator[tuple[str, "subprocess.Popen[bytes]"]]:
    """A redis-server of its own on a free loopback port (no persistence): its URL and its
    process (to freeze it with SIGSTOP); stopped at exit, thawed first if frozen. Skipped if
    redis-server is missing (failed under CI)."""
    import redis

    binary = binary or shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    command = [binary, "--port", str(_free_port()), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder)]
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{command[2]}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
                    if client.ping():
                        break
            except redis.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
            time.sleep(0.05)
        yield url, process
    finally:
        with suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def noise_thief(model: Any, db: Path) -> tuple[np.ndarray, np.ndarray]:
    """A thief's 300 noise queries (key ``mallory``, 20 per request) through `recommended`
    with its state in SQLite at ``db``: the rows and the labels answered (watermarked)."""
    store = SqliteStore(db)
    guarded = GuardedModel(
        model, load_pipeline("recommended"), store=store, seed=0, task=digits_task()
    )
    X = np.random.default_rng(0).random((300, 64))
    labels = np.concatenate(
        [guarded.answer("mallory", X[i : i + 20]).labels for i in range(0, 300, 20)]
    )
    store.close()
    return X, labels
