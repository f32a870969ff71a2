"""Real model servers (MLServer, KServe) as loopback processes, each from a venv of its own.

``make test`` builds the venvs (``.venv-mlserver``, ``.venv-kserve``: they pin their own
FastAPI, so never the project's venv) and sets ``MODELTHEFT_REAL_SERVERS=1``: a missing venv
then fails the tests. Run alone, a missing venv skips them with the make target to build it.
"""

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from modeltheft.cli.app import main

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


def attack(tmp_path: Path, name: str, argv: list[str]) -> dict[str, Any]:
    """``modeltheft attack ARGV --out tmp_path/NAME``; its results.json."""
    out = tmp_path / name
    assert main(["attack", *argv, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def same_attack_as_ours(
    tmp_path: Path,
    name: str,
    target: list[str],
    ours_url: str,
    api_key: str,
    victim_path: Path,
    label_mode: str,
) -> list[dict[str, Any]]:
    """The same attack (seed, budget, batches) against a real server (``target``: its
    ``--target``, ``--protocol`` and ``--model-name``) and our own server at ``ours_url``:
    both answer all 200 queries and give the same fidelity (±0.02). Returns the real server's
    logged answers (the log's target line left out)."""
    common = ["--budget", "200", "--batch-size", "50", "--checkpoints", "200", "--seed", "3"]
    common += ["--task", "digits", "--label-mode", label_mode, "--victim", str(victim_path)]
    theirs = attack(tmp_path, name, [*target, *common])
    ours = attack(tmp_path, "ours", ["--target", ours_url, "--api-key", api_key, *common])
    print(
        f"{name} {target[-1]}, {label_mode}: fidelity {theirs['metrics']['fidelity']:.3f}, "
        f"ours {ours['metrics']['fidelity']:.3f}"
    )
    assert theirs["metrics"]["answered"] == ours["metrics"]["answered"] == 200
    assert theirs["metrics"]["fidelity"] == pytest.approx(ours["metrics"]["fidelity"], abs=0.02)
    lines = [json.loads(line) for line in (tmp_path / name / "queries.jsonl").open()]
    assert lines[0]["target"]["url"] == target[1]  # the log names what answered it
    logged = [entry for entry in lines if "query" in entry]
    if label_mode == "soft":  # soft labels really are probabilities
        probabilities = np.array([entry["probabilities"] for entry in logged])
        assert probabilities.shape == (200, 10)
        assert np.allclose(probabilities.sum(axis=1), 1)
    return logged


def model_settings(name: str, model: Path, declare_outputs: bool = False) -> dict[str, Any]:
    """An MLServer ``model-settings.json`` for a scikit-learn model saved with joblib.

    MLServer's minimal config plus the input's shape (`watermark verify` has no ``--task``: the
    width must come from the metadata): it answers ``predict`` (labels) unless the request
    names other outputs. ``declare_outputs`` lists ``predict`` and ``predict_proba`` in the
    metadata, which is what makes the OIP v2 oracle ask for probabilities.
    """
    settings: dict[str, Any] = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model)},
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 64]}],
    }
    if declare_outputs:
        settings["outputs"] = [
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]},
        ]
    return settings


@dataclass
class MLServer:
    """A running ``mlserver start FOLDER/models``: its base URL and its model repository."""

    url: str
    folder: Path
    startup_seconds: float

    def add(self, name: str, model: Any, declare_outputs: bool = False) -> None:
        """Save ``model`` (ours) with joblib and load it as ``name`` through the repository API."""
        path = self.folder / f"{name}.joblib"
        joblib.dump(model, path)
        (self.folder / "models" / name).mkdir(parents=True)
        settings = model_settings(name, path, declare_outputs)
        (self.folder / "models" / name / "model-settings.json").write_text(json.dumps(settings))
        answer = httpx.post(f"{self.url}/v2/repository/models/{name}/load", timeout=60)
        assert answer.status_code == 200, answer.text


@contextmanager
def mlserver(folder: Path, models: dict[str, tuple[Any, bool]]) -> Iterator[MLServer]:
    """``mlserver start`` from ``.venv-mlserver`` on free loopback ports (HTTP, gRPC; no
    metrics server, no worker processes) serving ``models`` (name: (estimator,
    declare_outputs)), each saved with joblib into ``folder``; stopped on exit."""
    python = venv_python("mlserver")
    (folder / "models").mkdir(parents=True)
    port = free_port()
    server = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,
    }
    (folder / "models" / "settings.json").write_text(json.dumps(server))
    for name, (model, declare_outputs) in models.items():
        joblib.dump(model, folder / f"{name}.joblib")
        settings = model_settings(name, folder / f"{name}.joblib", declare_outputs)
        (folder / "models" / name).mkdir()
        (folder / "models" / name / "model-settings.json").write_text(json.dumps(settings))
    url = f"http://127.0.0.1:{port}"
    command = [str(python.parent / "mlserver"), "start", str(folder / "models")]
    with running(command, f"{url}/v2/health/ready", folder / "mlserver.log") as seconds:
        yield MLServer(url, folder, seconds)
