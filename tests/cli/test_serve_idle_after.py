"""``serve --idle-after``: checked before anything else, and handed to every stage that
evicts idle clients, with one worker or several (issue 14, bounded state)."""

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from modeltheft.cli.app import main
from modeltheft.errors import ConfigError
from modeltheft.service import Settings, runner
from modeltheft.service.app import SETTINGS_ENV, app_from_env
from modeltheft.service.auth import KeyRing
from modeltheft.service.settings import IDLE_AFTER
from tests.conftest import KEYS


@pytest.mark.parametrize(
    ("bad", "says"),
    [("0", "must be > 0"), ("0s", "must be > 0"), ("-5", "invalid"), ("soon", "invalid")],
)
def test_a_bad_idle_after_is_one_line(
    bad: str, says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEYS", raising=False)  # named before the missing keys
    assert main(["serve", "--idle-after", bad]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--idle-after" in err and says in err, err
    assert len(err.splitlines()) == 1, err


def test_settings_refuse_a_non_positive_idle_after() -> None:
    with pytest.raises(ConfigError, match="idle_after"):
        Settings(keys=KeyRing.from_pairs(KEYS), idle_after=0)


def idle_limits(app: FastAPI) -> tuple[float | None, list[float | None]]:
    """The service's eviction age and the age after which each stage drops a client's copy."""
    guarded = app.state.guarded
    stages = [stage for stage in guarded.pipeline.stages if hasattr(stage, "_clients")]
    assert stages  # recommended has stages that keep clients in memory (PRADA, streams)
    return guarded.idle_after, [stage._clients.ttl for stage in stages]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The app ``serve`` hands to uvicorn (one worker), or the settings its workers read."""
    import uvicorn

    seen: dict[str, Any] = {}

    def run_workers(app: object, workers: int, **options: object) -> None:
        seen["env"] = os.environ[SETTINGS_ENV]

    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(app=app))
    monkeypatch.setattr(runner, "run_workers", run_workers)
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    return seen


@pytest.mark.parametrize(("given", "seconds"), [(None, IDLE_AFTER), ("1h", 3600.0), ("90", 90.0)])
def test_idle_after_reaches_the_stages(
    captured: dict[str, Any], victim_path: Path, tmp_path: Path, given: str | None, seconds: float
) -> None:
    argv = ["serve", "--model", str(victim_path), "--inference", "sklearn"]
    argv += ["--defense", "recommended", "--state", f"sqlite:///{tmp_path}/s.db"]
    argv += [] if given is None else ["--idle-after", given]
    assert main(argv) == 0
    assert idle_limits(captured["app"]) == (seconds, [seconds, seconds])


def test_idle_after_reaches_the_workers(
    captured: dict[str, Any],
    victim_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["serve", "--model", str(victim_path), "--inference", "sklearn", "--workers", "2"]
    argv += ["--defense", "recommended", "--state", f"sqlite:///{tmp_path}/s.db"]
    assert main([*argv, "--idle-after", "12h"]) == 0
    monkeypatch.setenv(SETTINGS_ENV, captured["env"])
    app = app_from_env()  # what each worker builds
    try:
        assert idle_limits(app) == (12 * 3600.0, [12 * 3600.0] * 2)
    finally:
        app.state.store.close()
