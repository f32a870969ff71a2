"""A `serve --workers` worker answers uvicorn's health ping before its heavy imports.

uvicorn unpickles each worker's config (which names ``modeltheft.service.timeouts``, the HTTP
protocol with the header timeout) before it starts the thread that answers the ping; that
import used to pull in scikit-learn and SciPy through ``modeltheft.service``'s package
import of ``create_app`` (2.2 s here, and workers killed on a busy host)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modeltheft.service.app import SETTINGS_ENV
from modeltheft.service.auth import hash_key
from tests.conftest import KEYS
from tests.service.processes import launch, worker_pids

CHECK = """
import pickle, sys
from modeltheft.service.timeouts import header_timeout_protocol
protocol = pickle.loads(pickle.dumps(header_timeout_protocol(10.0)))
heavy = sorted(m for m in ("sklearn", "scipy", "onnxruntime", "pyarrow") if m in sys.modules)
print(",".join(heavy))
"""


def test_the_worker_config_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", out.stdout


def test_the_package_still_offers_create_app_and_settings() -> None:
    from modeltheft import service
    from modeltheft.service.app import create_app
    from modeltheft.service.settings import Settings

    assert service.create_app is create_app and service.Settings is Settings


RUN_FAILING = """
import sys
from modeltheft.service.runner import run_workers, WorkerStartFailed
try:
    run_workers("tests.service.failing_worker:app", 2, host="127.0.0.1", port=0,
                timeout_worker_healthcheck=60, log_level="info")
except WorkerStartFailed as exc:
    print("error:", exc)
    sys.exit(1)
"""


def test_a_worker_that_cannot_start_stops_the_workers_at_once() -> None:
    """uvicorn's supervisor waited its whole 60 s health-check timeout for the answer to a ping
    sent to a worker that then exited, and the run ended as a success."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", RUN_FAILING], capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - started
    assert out.returncode == 1, out.stderr[-2000:]
    assert "could not start" in out.stdout and "cannot start: test" in out.stderr
    assert took < 20, f"{took:.1f} s"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_worker_without_its_keys_file_stops_serve_in_one_line(
    victim_path: Path, tmp_path: Path
) -> None:
    """The keys file deleted while serving, then a worker restarted: the replacement refuses
    to start in one line and serve stops with exit code 1 (was: a traceback a restart, for
    ever)."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice:{hash_key(KEYS['alice'])}\n")
    env = {key: value for key, value in os.environ.items() if key != SETTINGS_ENV}
    env.pop("MODELTHEFT_API_KEYS", None)
    args = ["--model", str(victim_path), "--keys-file", str(keys), "--workers", "2"]
    server = launch([*args, "--state", f"sqlite:///{tmp_path / 's.db'}"], tmp_path / "log", env)
    try:
        keys.unlink()
        os.kill(worker_pids(server.process.pid)[0], signal.SIGKILL)
        assert server.process.wait(timeout=60) == 1
    finally:
        server.kill()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "cannot start: cannot read keys file" in log
    assert log.strip().splitlines()[-1].startswith("error: worker "), log[-2000:]
