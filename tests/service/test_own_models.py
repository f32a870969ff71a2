"""Serving models made outside the project, over real HTTP: the task shapes the whole API."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io as sio
from fastapi.testclient import TestClient
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from modeltheft.cli.app import main
from modeltheft.service import Settings, create_app
from modeltheft.service.app import SETTINGS_ENV, app_from_env, settings_env
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import get_task
from tests.conftest import KEYS, auth
from tests.service.processes import launch

CANCER = load_breast_cancer()
IRIS = load_iris()


@pytest.fixture(scope="module")
def cancer_skops(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RandomForestClassifier]:
    """A forest on breast cancer saved with plain skops.io.dump, as a user outside would."""
    forest = RandomForestClassifier(n_estimators=30, random_state=0)
    forest.fit(CANCER.data, CANCER.target)
    path = tmp_path_factory.mktemp("own") / "cancer.skops"
    sio.dump(forest, path)
    return path, forest


def settings(model: Path | None, task: str | None = None, **overrides: object) -> Settings:
    return Settings(
        keys=KeyRing.from_pairs(KEYS),
        model_path=model,
        task=task,
        state="memory://",
        seed=3,
        **overrides,
    )


@pytest.fixture
def serve() -> Iterator:
    servers: list[BackgroundServer] = []
    clients: list[httpx.Client] = []

    def start(model: Path | None, task: str | None = None, **overrides: object) -> httpx.Client:
        server = BackgroundServer(create_app(settings(model, task, **overrides))).start()
        servers.append(server)
        clients.append(httpx.Client(base_url=server.url, headers=auth(), timeout=30))
        return clients[-1]

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def predict(http: httpx.Client, rows: np.ndarray | list) -> httpx.Response:
    return http.post("/v1/predict", json={"inputs": np.asarray(rows).tolist()})


def test_serve_a_plain_skops_file_as_a_process(
    cancer_skops: tuple[Path, RandomForestClassifier], tmp_path: Path
) -> None:
    path, forest = cancer_skops
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']}"}
    env.pop(SETTINGS_ENV, None)
    server = launch(["--model", str(path), "--state", "memory://"], tmp_path / "log", env)
    try:
        with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as http:
            info = http.get("/v1/model").json()
            assert info["input_shape"] == [30] and info["classes"] == [0, 1]
            assert info["task"]["n_features"] == 30
            X = CANCER.data[:25]
            answer = predict(http, X)
            assert answer.status_code == 200
            labels = [p["label"] for p in answer.json()["predictions"]]
            assert labels == forest.predict(X).tolist()
            wrong = predict(http, [[0.5] * 64])
            assert wrong.status_code == 422
            assert wrong.json()["detail"] == (
                "inputs[0]: expected 30 values (the model's input width), got 64"
            )
    finally:
        server.kill()
    log = (tmp_path / "log").read_text()
    assert "no metadata file" in log and "cancer.skops" in log
    assert "30 features, 2 classes" in log


def test_bounds_of_a_given_task_are_enforced_by_feature(
    cancer_skops: tuple[Path, RandomForestClassifier], serve
) -> None:
    path, _ = cancer_skops
    http = serve(path, "breast-cancer")
    info = http.get("/v1/model").json()
    assert info["task"]["name"] == "breast-cancer"
    first = info["task"]["features"][0]
    assert first["name"] == "mean radius" and first["lower"] == pytest.approx(6.981)
    row = CANCER.data[0].copy()
    row[0] = 100.0
    refused = predict(http, [CANCER.data[1], row])
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert detail.startswith("inputs[1][0] (mean radius): 100 is outside") and "6.981" in detail
    assert predict(http, CANCER.data[:3]).status_code == 200
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    row_schema = body["schema"]["properties"]["inputs"]["items"]
    assert (row_schema["minItems"], row_schema["maxItems"]) == (30, 30)


@pytest.mark.parametrize("zipmap", [True, False])
def test_an_iris_onnx_file_answers_like_the_sklearn_model(
    tmp_path: Path, serve, zipmap: bool
) -> None:
    lr = LogisticRegression(max_iter=1000).fit(IRIS.data, IRIS.target)
    options = None if zipmap else {id(lr): {"zipmap": False}}
    onnx_model = to_onnx(lr, IRIS.data[:1].astype(np.float32), options=options)
    path = tmp_path / "iris.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    http = serve(path)
    info = http.get("/v1/model").json()
    assert info["input_shape"] == [4] and info["classes"] == [0, 1, 2]
    assert info["inference"] == "onnx"
    answer = predict(http, IRIS.data).json()["predictions"]
    assert [p["label"] for p in answer] == lr.predict(IRIS.data).tolist()
    probabilities = np.array([p["probabilities"] for p in answer])
    assert np.abs(probabilities - lr.predict_proba(IRIS.data)).max() < 1e-5
    assert "expected 4 values" in predict(http, [[1.0] * 5]).json()["detail"]


def test_string_classes_are_answered_as_strings(tmp_path: Path, serve) -> None:
    names = IRIS.target_names[IRIS.target]
    lr = LogisticRegression(max_iter=1000).fit(IRIS.data, names)
    sio.dump(lr, tmp_path / "named.skops")
    http = serve(tmp_path / "named.skops")
    info = http.get("/v1/model").json()
    assert info["classes"] == ["setosa", "versicolor", "virginica"]
    answer = predict(http, IRIS.data[[0, 60, 120]]).json()["predictions"]
    assert [p["label"] for p in answer] == ["setosa", "versicolor", "virginica"]
    spec = http.get("/openapi.json").json()
    label = spec["components"]["schemas"]["Prediction"]["properties"]["label"]
    assert label["enum"] == ["setosa", "versicolor", "virginica"]


def test_a_toml_task_model_is_trained_and_served(tmp_path: Path, serve) -> None:
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 10, size=(120, 2))
    kind = np.where(X[:, 0] > X[:, 1], "left", "right")
    lines = ["u,v,kind"] + [f"{a},{b},{k}" for (a, b), k in zip(X, kind, strict=True)]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    toml = tmp_path / "sides.toml"
    toml.write_text(
        'label = "kind"\n[data]\ntrain = "rows.csv"\n'
        "[features.u]\nlower = 0\nupper = 10\n[features.v]\nlower = 0\nupper = 10\n"
    )
    out = tmp_path / "sides.skops"
    assert main(["train", "--task", str(toml), "--model", "lr", "--out", str(out)]) == 0
    http = serve(out)
    info = http.get("/v1/model").json()
    assert info["task"]["name"] == "sides" and info["classes"] == ["left", "right"]
    assert [p["label"] for p in predict(http, [[9, 1], [1, 9]]).json()["predictions"]] == [
        "left",
        "right",
    ]
    refused = predict(http, [[11, 1]])
    assert refused.status_code == 422 and "(u)" in refused.json()["detail"]


def test_without_a_model_the_service_trains_one_on_the_task(serve) -> None:
    digits = serve(None)
    assert digits.get("/v1/model").json()["input_shape"] == [64]
    wine = serve(None, "wine")
    info = wine.get("/v1/model").json()
    assert info["input_shape"] == [13] and info["classes"] == [0, 1, 2]
    X = get_task("wine").data.X_eval
    labels = [p["label"] for p in predict(wine, X).json()["predictions"]]
    assert np.mean(np.array(labels) == get_task("wine").data.y_eval) > 0.9


def test_workers_get_the_task_from_the_environment(
    cancer_skops: tuple[Path, RandomForestClassifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = cancer_skops
    raw = settings_env(settings(path, "breast-cancer"), None)
    assert json.loads(raw)["task"] == "breast-cancer"
    monkeypatch.setenv(SETTINGS_ENV, raw)
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")
    with TestClient(app_from_env()) as client:
        assert client.get("/v1/model").json()["task"]["name"] == "breast-cancer"


def test_a_task_that_does_not_fit_the_model_is_one_line(
    cancer_skops: tuple[Path, RandomForestClassifier],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = cancer_skops
    argv = ["serve", "--model", str(path), "--task", "wine", "--state", "memory://"]
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: the model expects 30 features, task 'wine' has 13"
