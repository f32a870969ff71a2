"""A real MLServer 1.7.1 (mlserver-sklearn) on loopback, as the target of `attack` and of
`watermark verify` over the Open Inference Protocol v2.

The server runs from ``.venv-mlserver`` (see :mod:`tests.servers.real`) and serves the session's
digits victim, saved with joblib into tmp by the test itself (the only model files it loads).
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modeltheft.cli.app import main
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.service.runner import BackgroundServer
from modeltheft.state import SqliteStore
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS
from tests.servers.real import free_port, running, venv_python

SKLEARN = "mlserver_sklearn.SKLearnModel"


def model_settings(name: str, model: Path, declare_outputs: bool = False) -> dict[str, Any]:
    """MLServer's minimal scikit-learn config plus the input's shape (`watermark verify` has
    no ``--task``: the width must come from the metadata): ``predict`` answers (labels) unless
    asked for ``predict_proba``. ``declare_outputs`` lists both outputs in the metadata, which
    is what makes the OIP v2 oracle ask for probabilities."""
    settings: dict[str, Any] = {
        "name": name,
        "implementation": SKLEARN,
        "parameters": {"uri": str(model)},
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 64]}],
    }
    if declare_outputs:
        settings["outputs"] = [
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]},
        ]
    return settings


@pytest.fixture(scope="module")
def watermarked(
    tmp_path_factory: pytest.TempPathFactory, victim: LoadedVictim
) -> tuple[Path, LogisticRegression]:
    """Watermark records of a thief (300 noise queries through `recommended` on SQLite) and
    the copy it trained on those answers."""
    db = tmp_path_factory.mktemp("watermarked") / "state.db"
    store = SqliteStore(db)
    guarded = GuardedModel(
        victim.model, load_pipeline("recommended"), store=store, seed=0, task=digits_task()
    )
    X = np.random.default_rng(0).random((300, 64))
    labels = np.concatenate(
        [guarded.answer("mallory", X[i : i + 20]).labels for i in range(0, 300, 20)]
    )
    store.close()
    return db, LogisticRegression(max_iter=1000).fit(X, labels)


@pytest.fixture(scope="module")
def mlserver(
    tmp_path_factory: pytest.TempPathFactory,
    victim: LoadedVictim,
    watermarked: tuple[Path, LogisticRegression],
) -> Iterator[str]:
    """``mlserver start`` on free loopback ports (HTTP, gRPC; no metrics server) with three
    models: ``digits`` (the victim, minimal config), ``digits-proba`` (the victim, outputs
    declared) and ``copy`` (the thief's copy); the base URL once ``/v2/health/ready``."""
    python = venv_python("mlserver")
    folder = tmp_path_factory.mktemp("mlserver")
    joblib.dump(victim.model, folder / "victim.joblib")
    joblib.dump(watermarked[1], folder / "copy.joblib")
    models = {
        "digits": model_settings("digits", folder / "victim.joblib"),
        "digits-proba": model_settings("digits-proba", folder / "victim.joblib", True),
        "copy": model_settings("copy", folder / "copy.joblib"),
    }
    for name, settings in models.items():
        (folder / "models" / name).mkdir(parents=True)
        (folder / "models" / name / "model-settings.json").write_text(json.dumps(settings))
    port = free_port()
    server = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,
    }
    (folder / "models" / "settings.json").write_text(json.dumps(server))
    url = f"http://127.0.0.1:{port}"
    command = [str(python.parent / "mlserver"), "start", str(folder / "models")]
    with running(command, f"{url}/v2/health/ready", folder / "mlserver.log") as seconds:
        print(f"MLServer ready after {seconds:.1f} s")
        yield url


def attack(tmp_path: Path, name: str, argv: list[str]) -> dict[str, Any]:
    """``modeltheft attack ARGV --out tmp_path/NAME``; its results.json."""
    out = tmp_path / name
    assert main(["attack", *argv, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize(("model", "label_mode"), [("digits", "hard"), ("digits-proba", "soft")])
def test_attack_over_oip_v2_gets_what_it_gets_from_our_server(
    mlserver: str,
    live_server: Callable[..., BackgroundServer],
    victim_path: Path,
    tmp_path: Path,
    model: str,
    label_mode: str,
) -> None:
    """The same attack, same seed, against MLServer and against our own `serve --defense none`
    with the same model: the same fidelity (±0.02). Soft labels really are probabilities."""
    common = ["--budget", "200", "--batch-size", "50", "--checkpoints", "200", "--seed", "3"]
    common += ["--task", "digits", "--label-mode", label_mode, "--victim", str(victim_path)]
    theirs = attack(
        tmp_path,
        "mlserver",
        ["--target", mlserver, "--protocol", "oip-v2", "--model-name", model, *common],
    )
    ours_url = live_server("none").url
    ours = attack(tmp_path, "ours", ["--target", ours_url, "--api-key", KEYS["alice"], *common])
    print(
        f"{model}, {label_mode}: fidelity {theirs['metrics']['fidelity']:.3f}, ours "
        f"{ours['metrics']['fidelity']:.3f}"
    )
    assert theirs["metrics"]["answered"] == ours["metrics"]["answered"] == 200
    assert theirs["metrics"]["fidelity"] == pytest.approx(ours["metrics"]["fidelity"], abs=0.02)
    logged = [json.loads(line) for line in (tmp_path / "mlserver" / "queries.jsonl").open()]
    if label_mode == "soft":
        probabilities = np.array([entry["probabilities"] for entry in logged])
        assert probabilities.shape == (200, 10)
        assert np.allclose(probabilities.sum(axis=1), 1)


def test_watermark_verify_over_oip_v2(
    mlserver: str,
    watermarked: tuple[Path, LogisticRegression],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The victim served by MLServer never saw the watermarked answers: no evidence; the
    thief's copy served by MLServer is a copy."""
    db, _ = watermarked
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--suspect", mlserver]
    argv += ["--protocol", "oip-v2", "--model-name"]
    assert main([*argv, "digits"]) == 0
    assert "suspect shows no evidence of copying" in capsys.readouterr().out
    assert main([*argv, "copy"]) == 0
    assert "suspect is a copy" in capsys.readouterr().out
