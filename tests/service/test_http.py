"""The service over real HTTP: uvicorn on a loopback port, in a thread and as a process."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import digits_task
from tests.conftest import KEYS, auth


def test_live_server_answers_and_rejects(live_server: Callable[..., BackgroundServer]) -> None:
    server = live_server("none")
    assert server.url.startswith("http://127.0.0.1:")
    X = digits_task().data.X_eval[:5]
    with httpx.Client(base_url=server.url) as http:
        ok = http.post("/v1/predict", json={"inputs": X.tolist()}, headers=auth())
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 5
        assert (
            http.post("/v1/predict", json={"inputs": [[2.0] * 64]}, headers=auth()).status_code
            == 422
        )
        assert http.post("/v1/predict", json={"inputs": X.tolist()}).status_code == 401
        raw = http.post(
            "/v1/predict", content=b"{" * 10, headers={**auth(), "content-type": "application/json"}
        )
        assert raw.status_code == 422


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_modeltheft_serve_process(victim_path: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']}"}
    command = [
        sys.executable,
        "-m",
        "modeltheft.cli.app",
        "serve",
        "--model",
        str(victim_path),
        "--defense",
        "lab",
        "--state",
        "memory://",
        "--port",
        str(port),
        "--seed",
        "1",
    ]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90  # as processes.py: the serve process may start slowly
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        X = digits_task().data.X_eval[:3]
        response = httpx.post(f"{url}/v1/predict", json={"inputs": X.tolist()}, headers=auth())
        assert response.status_code == 200
        probabilities = np.array([p["probabilities"] for p in response.json()["predictions"]])
        assert np.allclose(probabilities.sum(axis=1), 1.0)
        assert httpx.get(f"{url}/v1/model").json()["defenses"][-1] == "normalize"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert KEYS["alice"] not in text


def test_loopback_round_trips_do_not_stall(live_server: Callable[..., BackgroundServer]) -> None:
    """Guards against the ~40 ms Nagle/delayed-ACK stall a hand-bound socket once caused."""
    server = live_server("none")
    with httpx.Client(base_url=server.url) as http:
        durations = []
        for _ in range(21):
            start = time.perf_counter()
            http.get("/healthz")
            durations.append(time.perf_counter() - start)
    assert float(np.median(durations)) < 0.025
