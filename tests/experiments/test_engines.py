"""Sweep engines on a tiny spec: local processes and a real local Ray give the same records,
sweeps skip finished runs, and a sweep killed mid-write resumes without losing or repeating."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from modeltheft.cli.app import main
from modeltheft.errors import ConfigError
from modeltheft.experiments.engines import Engine, LocalEngine, make_engine
from modeltheft.experiments.results import RESULTS
from modeltheft.experiments.spec import load_spec

TINY = """
name = "tiny"
seed = 11
seeds = {seeds}
budgets = [{budget}]
defenses = ["none", "recommended"]

[[attacks]]
name = "lab"
strategy = "owasp-synthetic"
batch_size = 50
"""


def write_spec(folder: Path, seeds: int = 2, budget: int = 100) -> Path:
    path = folder / "tiny.toml"
    path.write_text(TINY.format(seeds=seeds, budget=budget))
    return path


def run_all(engine: Engine, spec: Path) -> dict[str, dict[str, Any]]:
    records: list[dict[str, Any]] = []
    engine.run(load_spec(spec).tasks(), records.append)
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    return {r["id"]: {k: v for k, v in r.items() if k != "timings"} for r in records}


def lines(path: Path) -> list[dict[str, Any]]:
    """The complete records of a results file (a torn last line is left out)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


@pytest.fixture
def ray_module() -> Iterator[ModuleType]:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def test_local_and_ray_engines_give_identical_records(
    tmp_path: Path, ray_module: ModuleType
) -> None:
    from modeltheft.experiments.ray_engine import RayEngine

    spec = write_spec(tmp_path)
    ids = {t.id for t in load_spec(spec).tasks()}
    one = run_all(LocalEngine(1), spec)
    two = run_all(LocalEngine(2), spec)
    engine = RayEngine(workers=2)
    assert "Ray" in engine.describe()
    on_ray = run_all(engine, spec)
    assert set(one) == set(two) == set(on_ray) == ids and len(ids) == 4
    for run_id in ids:
        assert one[run_id]["metrics"] == two[run_id]["metrics"] == on_ray[run_id]["metrics"]
        assert one[run_id] == two[run_id] == on_ray[run_id]
    # The engine started its own Ray, on loopback only, and stopped it.
    assert engine.node_ip == "127.0.0.1"
    assert not ray_module.is_initialized()


def test_sweep_twice_skips_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "out"
    argv = ["sweep", str(spec), "--out", str(out), "--workers", "2"]
    assert main(argv) == 0
    assert "0 already finished, 4 to run" in capsys.readouterr().out
    first = lines(out / RESULTS)
    assert main(argv) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert lines(out / RESULTS) == first and len(first) == 4
    assert (out / "spec.toml").read_text() == spec.read_text()


def test_killed_sweep_resumes_without_losing_or_repeating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out = write_spec(tmp_path, seeds=4, budget=200), tmp_path / "out"
    results = out / RESULTS
    command = [sys.executable, "-m", "modeltheft.cli.app", "sweep", str(spec)]
    command += ["--out", str(out), "--workers", "1"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(lines(results)) < 2:
            assert process.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no records after 60 s"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its worker process
        process.wait()
    before = lines(results)
    assert 2 <= len(before) < 8
    with results.open("a") as handle:
        handle.write('{"id": "0123456789abcdef", "task": {"sweep": "ti')  # a torn write
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    assert f"{len(before)} already finished, {8 - len(before)} to run" in capsys.readouterr().out
    after = lines(results)
    assert results.read_text().endswith("\n")
    assert len(after) == 8 and len({r["id"] for r in after}) == 8
    assert {r["id"] for r in after} == {t.id for t in load_spec(spec).tasks()}
    assert after[: len(before)] == before  # same ids, same metrics, same everything
    assert all(r["status"] == "ok" for r in after)


def test_engine_errors_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown engine"):
        make_engine("spark")
    with pytest.raises(ConfigError, match="--address is for --engine ray"):
        make_engine("local", 2, "10.0.0.1:6379")
    with pytest.raises(ConfigError, match="workers"):
        make_engine("local", 0)
    with pytest.raises(ConfigError, match="workers"):
        make_engine("ray", 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'modeltheft\[ray\]'"):
        make_engine("ray")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--engine", "spark"], "unknown engine 'spark'"),
        (["--address", "10.0.0.1:6379"], "--address is for --engine ray"),
        (["--workers", "0"], "workers"),
    ],
)
def test_cli_engine_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    spec = write_spec(tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), *options]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / RESULTS).exists()
