"""`recommended` over real HTTP: honest clients untouched, the lab's thief flagged and misled;
`modeltheft watermark verify` against model files and a served copy."""

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.cli.app import main
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.alerts import STRICT, alerts, client_status
from modeltheft.oracle import HttpOracle
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.state import SqliteStore
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim, save_victim
from tests.conftest import KEYS, auth


def test_honest_client_over_http_gets_the_victims_answers(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    server = live_server("recommended")
    X = digits_task().data.X_eval
    labels = []
    with httpx.Client(base_url=server.url, headers=auth("alice")) as http:
        for batch in np.array_split(X, 27):
            response = http.post("/v1/predict", json={"inputs": batch.tolist()})
            assert response.status_code == 200, response.text
            assert response.headers["RateLimit-Policy"].startswith('"default";q=1000')
            labels += [p["label"] for p in response.json()["predictions"]]
    assert np.mean(np.array(labels) == victim.model.predict(X)) >= 0.995
    assert alerts(server.app.state.guarded.store) == []


def test_lab_thief_over_http_is_flagged_and_misled(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    server = live_server("recommended")
    oracle = HttpOracle(server.url, KEYS["bob"], budget=300)
    try:
        result = extract(
            oracle,
            make_strategy("owasp-synthetic"),
            make_substitute("lr", seed=0),
            300,
            np.random.default_rng(0),
            batch_size=1,  # as the lab sends them
            label_mode="hard",
        )
    finally:
        oracle.close()
    store = server.app.state.guarded.store
    [alert] = alerts(store)
    assert alert["client"] == "bob" and alert["after_queries"] <= 10
    assert client_status(store, "bob") == STRICT
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'modeltheft_extraction_alerts_total{detector="ood_monitor"} 1.0' in metrics
    assert "modeltheft_flagged_clients 1.0" in metrics
    X = digits_task().data.X_eval
    agreement = np.mean(result.model.predict(X) == victim.model.predict(X))
    assert agreement <= 0.2


@pytest.fixture
def stolen(tmp_path: Path, victim: LoadedVictim) -> tuple[Path, Path, Path]:
    """A thief's copy (300 noise queries through `recommended` on SQLite) and an honest model."""
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    guarded = GuardedModel(victim.model, load_pipeline("recommended"), store=store, seed=0)
    X = np.random.default_rng(0).random((300, 64))
    labels = np.concatenate(
        [guarded.answer("mallory", X[i : i + 20]).labels for i in range(0, 300, 20)]
    )
    store.close()
    copy = LogisticRegression(max_iter=1000).fit(X, labels)
    copy_path = (
        save_victim(copy, tmp_path / "copy.skops", {"family": "lr"}) and tmp_path / "copy.skops"
    )
    data = digits_task().data
    own = LogisticRegression(max_iter=1000).fit(data.X_train, data.y_train)
    sio.dump(own, tmp_path / "own.skops")  # a model found elsewhere: no metadata of ours
    return db, copy_path, tmp_path / "own.skops"


def test_watermark_verify_finds_the_copy_and_clears_an_independent_model(
    stolen: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, copy_path, own_path = stolen
    report = tmp_path / "verdict.json"
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--json", str(report)]
    assert main([*argv, "--suspect", str(copy_path)]) == 0
    assert "suspect is a copy" in capsys.readouterr().out
    verdict = json.loads(report.read_text())
    [client] = verdict["clients"]
    assert client["client"] == "mallory" and client["p_value"] < 1e-6
    assert 240 <= client["watermarks"] <= 300 and client["matches"] > client["watermarks"] / 9 * 2
    assert main([*argv, "--suspect", str(own_path)]) == 0
    assert "shows no evidence of copying" in capsys.readouterr().out
    assert json.loads(report.read_text())["clients"][0]["p_value"] > 0.01


def test_watermark_verify_queries_a_served_copy(
    stolen: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, copy_path, _ = stolen
    settings = Settings(keys=KeyRing.from_pairs(KEYS), model_path=copy_path, defense="none")
    server = BackgroundServer(create_app(settings)).start()
    try:
        argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--suspect", server.url]
        assert main([*argv, "--api-key", KEYS["alice"]]) == 0
    finally:
        server.stop()
    assert "suspect is a copy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--client", "nobody"], "no watermark records for nobody"),
        (["--suspect", "/nonexistent.skops"], "neither a model file nor an http URL"),
    ],
)
def test_watermark_verify_bad_input_is_one_line(
    stolen: tuple[Path, Path, Path],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db, copy_path, _ = stolen
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}"]
    if "--suspect" not in extra:
        argv += ["--suspect", str(copy_path)]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
