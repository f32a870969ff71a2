"""Gateway mode (``serve --upstream``) in front of stand-in model servers on loopback.

The stand-ins (:mod:`tests.oracle.standins`) speak OIP v2 (shaped like MLServer), KServe v1
and modeltheft's own API, and can be scripted to fail; tests/servers/test_gateway_mlserver.py
puts the gateway in front of a real MLServer.
"""

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from sklearn.base import ClassifierMixin

from modeltheft.cli.app import main
from modeltheft.defenses.alerts import served_key
from modeltheft.errors import ConfigError
from modeltheft.service import Settings, create_app
from modeltheft.service.app import SETTINGS_ENV, app_from_env, settings_env
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.service.upstream import UPSTREAM_KEY_ENV, UpstreamConfig
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import get_task
from tests.conftest import KEYS, auth
from tests.oracle.standins import fitted_models, kserve_app, oip_app, ours_app, reset

BC = get_task("breast-cancer")
ROWS = np.asarray(BC.data.X_eval[:6]) if BC.data is not None else np.empty((0, 30))


@pytest.fixture(scope="module")
def models() -> dict[str, ClassifierMixin]:
    return fitted_models()


@pytest.fixture(scope="module")
def upstreams(models: dict[str, ClassifierMixin]) -> Iterator[dict[str, BackgroundServer]]:
    """One stand-in server per protocol for the module, reset by :func:`upstream`."""
    servers = {
        "oip-v2": BackgroundServer(oip_app(models)).start(),
        "kserve-v1": BackgroundServer(kserve_app(models)).start(),
        "modeltheft": BackgroundServer(ours_app(models["bc"], BC.without_data())).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def upstream(upstreams: dict[str, BackgroundServer]) -> Callable[..., BackgroundServer]:
    def configure(protocol: str = "oip-v2", **config: Any) -> BackgroundServer:
        server = upstreams[protocol]
        reset(server.app, **config)
        return server

    return configure


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The breast-cancer training rows, the operator's reference data."""
    path = tmp_path_factory.mktemp("reference") / "rows.npy"
    assert BC.data is not None
    np.save(path, np.asarray(BC.data.X_train))
    return path


def gateway(
    url: str,
    protocol: str = "oip-v2",
    model_name: str | None = "bc",
    defense: str = "none",
    **options: Any,
) -> FastAPI:
    """A gateway app in front of ``url`` (``options``: UpstreamConfig's, then Settings')."""
    fields = set(UpstreamConfig.__dataclass_fields__)
    config = UpstreamConfig(
        url=url,
        protocol=protocol,
        model_name=model_name,
        **{k: v for k, v in options.items() if k in fields},
    )
    settings = Settings(
        keys=KeyRing.from_pairs(KEYS),
        defense=defense,
        seed=3,
        upstream=config,
        **{k: v for k, v in options.items() if k not in fields},
    )
    return create_app(settings)


def infer_body(rows: np.ndarray, outputs: tuple[str, ...] = ("predict_proba",)) -> dict[str, Any]:
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP64"}
    return {
        "inputs": [tensor | {"data": rows.ravel().tolist()}],
        "outputs": [{"name": name} for name in outputs],
    }


def audit(app: FastAPI) -> list[Any]:
    return list(app.state.store.audit_entries())


# --- answering -----------------------------------------------------------------------------


def test_answers_are_the_upstream_models_on_every_route(
    upstream: Callable[..., BackgroundServer], models: dict[str, ClassifierMixin]
) -> None:
    """No defense: /v1/predict, OIP v2 and KServe v1 give the upstream model's probabilities
    and labels, one upstream request per batch, asking for the probability output only."""
    server = upstream("oip-v2")
    expected = models["bc"].predict_proba(ROWS)
    with TestClient(gateway(server.url)) as client:
        calls = server.app.state.calls  # after the start-up probe
        answer = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert answer.status_code == 200, answer.text
        got = np.array([p["probabilities"] for p in answer.json()["predictions"]])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        labels = [p["label"] for p in answer.json()["predictions"]]
        assert labels == models["bc"].predict(ROWS).tolist()
        assert server.app.state.calls == calls + 1
        assert [o["name"] for o in server.app.state.bodies[-1]["outputs"]] == ["predict_proba"]

        oip = client.post("/v2/models/bc/infer", json=infer_body(ROWS), headers=auth())
        assert oip.status_code == 200, oip.text
        data = np.array(oip.json()["outputs"][0]["data"]).reshape(expected.shape)
        np.testing.assert_allclose(data, expected, rtol=0, atol=1e-12)

        kserve = client.post(
            "/v1/models/bc:predict", json={"instances": ROWS.tolist()}, headers=auth()
        )
        assert kserve.status_code == 200, kserve.text
        assert kserve.json()["predictions"] == labels

        info = client.get("/v1/model").json()
        assert info["inference"] == "upstream" and info["input_shape"] == [30]
        assert info["classes"] == [0, 1]


@pytest.mark.parametrize("protocol", ["kserve-v1", "modeltheft"])
def test_other_upstream_protocols(
    upstream: Callable[..., BackgroundServer],
    models: dict[str, ClassifierMixin],
    reference: Path,
    protocol: str,
) -> None:
    """KServe v1 (width from the reference rows) and modeltheft's own API (a Bearer key)
    answer as the model does."""
    key = "upstream-secret-0123456789" if protocol == "modeltheft" else None
    server = upstream(protocol, api_key=key)
    name = "bc" if protocol == "kserve-v1" else None
    app = gateway(server.url, protocol, name, reference=reference, api_key=key)
    with TestClient(app) as client:
        answer = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert answer.status_code == 200, answer.text
        got = np.array([p["probabilities"] for p in answer.json()["predictions"]])
        np.testing.assert_allclose(got, models["bc"].predict_proba(ROWS), atol=1e-12)


def test_reference_rows_become_the_tasks_data(
    upstream: Callable[..., BackgroundServer], models: dict[str, ClassifierMixin], reference: Path
) -> None:
    """--reference rows, labelled by the upstream at start-up, are the data the OOD stages
    compare queries with: `recommended` serves a tabular model it knows nothing else of."""
    server = upstream("oip-v2")
    app = gateway(server.url, defense="recommended", reference=reference)
    task = app.state.guarded.task
    assert task.data is not None
    rows = np.load(reference)
    np.testing.assert_array_equal(task.data.X_train, rows)
    np.testing.assert_array_equal(task.data.y_train, models["bc"].predict(rows))
    with TestClient(app) as client:
        answer = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert answer.status_code == 200, answer.text


def test_without_reference_the_ood_stages_say_what_they_need(
    upstream: Callable[..., BackgroundServer],
) -> None:
    server = upstream("oip-v2")
    with pytest.raises(ConfigError, match="reference"):
        gateway(server.url, defense="recommended")


def test_labels_only_upstream(
    upstream: Callable[..., BackgroundServer],
    models: dict[str, ClassifierMixin],
    tmp_path: Path,
    reference: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream that refuses predict_proba: the stages that need probabilities say so in
    one start-up line; clients get labels only, and OIP's metadata stops listing them."""
    server = upstream("oip-v2", outputs=("predict",), declare_outputs=False)
    defense = tmp_path / "rounding.toml"
    defense.write_text('[[stages]]\ntype = "rounding"\ndecimals = 1\n')
    with pytest.raises(ConfigError, match="does not say its classes"):
        gateway(server.url, defense=str(defense))  # one probe row shows one class
    with caplog.at_level(logging.WARNING, "modeltheft.service"):
        app = gateway(server.url, defense=str(defense), reference=reference)
    lines = [r.getMessage() for r in caplog.records if "labels only" in r.getMessage()]
    assert len(lines) == 1 and "rounding" in lines[0] and "\n" not in lines[0]
    assert app.state.upstream.labels_only
    with TestClient(app) as client:
        answer = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["label"] for p in predictions] == models["bc"].predict(ROWS).tolist()
        assert all(p["probabilities"] is None for p in predictions)
        outputs = client.get("/v2/models/bc").json()["outputs"]
        assert [o["name"] for o in outputs] == ["predict"]
        refused = client.post("/v2/models/bc/infer", json=infer_body(ROWS), headers=auth())
        assert refused.status_code == 422 and "withholds probabilities" in refused.json()["error"]


# --- upstream failures ---------------------------------------------------------------------


def not_json() -> Response:
    return Response(b"<html>upstream gateway error</html>", media_type="text/html")


def wrong_shape() -> JSONResponse:
    tensor = {"name": "predict_proba", "datatype": "FP64", "shape": [5, 2], "data": [0.5] * 10}
    return JSONResponse({"model_name": "bc", "outputs": [tensor]})


def not_distributions() -> JSONResponse:
    data = [3.0, -2.0] * len(ROWS)
    tensor = {"name": "predict_proba", "datatype": "FP64", "shape": [len(ROWS), 2], "data": data}
    return JSONResponse({"model_name": "bc", "outputs": [tensor]})


def unknown_class() -> JSONResponse:
    tensor = {"name": "predict", "datatype": "INT64", "shape": [len(ROWS), 1], "data": [7] * 6}
    return JSONResponse({"model_name": "bc", "outputs": [tensor]})


def server_error() -> JSONResponse:
    return JSONResponse({"error": "secret internal detail at 10.0.0.7"}, status_code=500)


def missing_model() -> JSONResponse:
    return JSONResponse({"error": "Model bc not found"}, status_code=404)


@pytest.mark.parametrize(
    ("scripted", "words"),
    [
        (not_json, "answered something that is not"),
        (wrong_shape, "answered something that is not"),
        (not_distributions, "do not sum to 1"),
        (unknown_class, "answered something that is not"),
        (server_error, "answered HTTP 500"),
        (missing_model, "answered HTTP 404"),
    ],
)
def test_garbage_and_errors_from_the_upstream_are_502(
    upstream: Callable[..., BackgroundServer],
    scripted: Callable[[], Response],
    words: str,
) -> None:
    """A bad answer is a 502 naming the upstream (not its address, not its error text);
    nothing is answered, counted as served or remembered; the audit says ``failed``; the
    next request is answered."""
    server = upstream("oip-v2")
    app = gateway(server.url, defense="none")
    with TestClient(app) as client:
        server.app.state.script = [scripted()]
        failed = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert failed.status_code == 502, failed.text
        message = failed.json()["detail"]
        assert "upstream model 'bc' (oip-v2)" in message and words in message
        assert "127.0.0.1" not in message and "secret" not in message
        store: MemoryStore = app.state.store
        assert store.get(served_key("alice")) == 0
        entries = audit(app)
        assert [e.outcome for e in entries] == ["failed"]
        assert entries[0].labels is None and len(entries[0].row_hashes) == len(ROWS)
        again = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert again.status_code == 200
        assert [e.outcome for e in audit(app)] == ["failed", "answered"]
        assert store.get(served_key("alice")) == len(ROWS)


def test_upstream_down_is_502_on_every_route() -> None:
    """The upstream stops after start-up: 502 with OIP's error body on the OIP routes."""
    stand_in = BackgroundServer(oip_app(fitted_models())).start()
    try:
        app = gateway(stand_in.url)
    finally:
        stand_in.stop()
    with TestClient(app) as client:
        for route, body, key in [
            ("/v1/predict", {"inputs": ROWS.tolist()}, "detail"),
            ("/v2/models/bc/infer", infer_body(ROWS), "error"),
            ("/v1/models/bc:predict", {"instances": ROWS.tolist()}, "error"),
        ]:
            answer = client.post(route, json=body, headers=auth())
            assert answer.status_code == 502, answer.text
            assert "upstream model 'bc' (oip-v2) is unreachable" in answer.json()[key]


def slow_upstream() -> FastAPI:
    """An OIP v2 model server whose inference takes ``app.state.delay`` seconds."""
    app = oip_app(fitted_models())
    app.state.delay = 0.0

    @app.middleware("http")
    async def slow(request: Any, call_next: Any) -> Any:
        if request.url.path.endswith("/infer") and app.state.delay:
            await asyncio.sleep(app.state.delay)
        return await call_next(request)

    return app


def test_upstream_timeout_is_504() -> None:
    with BackgroundServer(slow_upstream()) as server:
        app = gateway(server.url, timeout=0.3)
        server.app.state.delay = 2.0
        with TestClient(app) as client:
            answer = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
            assert answer.status_code == 504, answer.text
            assert (
                answer.json()["detail"]
                == "upstream model 'bc' (oip-v2) did not answer within 0.3 s"
            )
            assert [e.outcome for e in audit(app)] == ["failed"]
            server.app.state.delay = 0.0
            ok = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
            assert ok.status_code == 200


def test_refused_requests_never_reach_the_upstream(
    upstream: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    """Admission runs before the upstream is asked: a 429 costs the upstream nothing."""
    server = upstream("oip-v2")
    defense = tmp_path / "bucket.toml"
    defense.write_text('[[stages]]\ntype = "token_bucket"\ncapacity = 6\nrefill_per_hour = 1\n')
    with TestClient(gateway(server.url, defense=str(defense))) as client:
        calls = server.app.state.calls
        first = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert first.status_code == 200
        second = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert second.status_code == 429
        assert server.app.state.calls == calls + 1


# --- start-up and configuration ------------------------------------------------------------


def test_start_up_errors_are_one_line(upstream: Callable[..., BackgroundServer]) -> None:
    with pytest.raises(ConfigError, match=r"cannot use the upstream at http://127\.0\.0\.1:9/"):
        gateway("http://127.0.0.1:9/")
    server = upstream("oip-v2")
    with pytest.raises(ConfigError, match=r"not served there|answered 404"):
        gateway(server.url, model_name="no-such-model")
    with pytest.raises(ConfigError, match="needs --model-name"):
        UpstreamConfig(url=server.url, protocol="oip-v2")
    with pytest.raises(ConfigError, match="MODELTHEFT_UPSTREAM_KEY"):
        UpstreamConfig(url=server.url, protocol="modeltheft")
    with pytest.raises(ConfigError, match="starting with http"):
        UpstreamConfig(url="ftp://x", model_name="bc")
    kserve = upstream("kserve-v1")
    with pytest.raises(ConfigError, match="give --task"):
        gateway(kserve.url, "kserve-v1")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--reference", "rows.npy"], "--reference goes with --upstream"),
        (
            ["--upstream", "http://127.0.0.1:9", "--model", "m.skops", "--model-name", "m"],
            "exclude",
        ),
        (["--upstream", "http://127.0.0.1:9"], "needs --model-name"),
        (["--upstream", "http://127.0.0.1:9", "--model-name", "m"], "cannot use the upstream"),
    ],
)
def test_cli_errors(
    argv: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MODELTHEFT_API_KEYS", "alice:alice-key-0123456789")
    monkeypatch.chdir(tmp_path)
    assert main(["serve", *argv, "--state", "memory://"]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_workers_rebuild_the_gateway_without_the_key_in_the_environment_json(
    upstream: Callable[..., BackgroundServer], monkeypatch: pytest.MonkeyPatch, reference: Path
) -> None:
    server = upstream("modeltheft", api_key="upstream-secret-0123456789")
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "upstream-secret-0123456789")
    monkeypatch.setenv("MODELTHEFT_API_KEYS", ",".join(f"{k}:{v}" for k, v in KEYS.items()))
    config = UpstreamConfig(
        url=server.url, protocol="modeltheft", api_key="upstream-secret-0123456789"
    )
    settings = Settings(keys=KeyRing.from_pairs(KEYS), upstream=config, state="memory://")
    text = settings_env(settings, None)
    assert "upstream-secret" not in text
    assert json.loads(text)["upstream"]["url"] == server.url
    monkeypatch.setenv(SETTINGS_ENV, text)
    app = app_from_env()
    assert app.state.upstream.config.api_key == "upstream-secret-0123456789"
    with TestClient(app) as client:
        answer = client.post("/v1/predict", json={"inputs": ROWS.tolist()}, headers=auth())
        assert answer.status_code == 200, answer.text


def test_a_key_blocked_while_its_request_is_upstream_gets_no_answer(
    models: dict[str, ClassifierMixin],
) -> None:
    """A concurrent request blocks (or flags) the key while this one awaits the upstream:
    this one is refused (or answered under the strict policy), never answered as before."""
    from modeltheft.defenses import GuardedModel, load_pipeline
    from modeltheft.defenses.alerts import BLOCKED, STRICT, status_key
    from modeltheft.errors import Blocked

    task = BC.without_data()
    for raised, outcome in ((BLOCKED, "blocked"), (STRICT, "answered")):
        store = MemoryStore()
        guarded = GuardedModel(
            None, load_pipeline("none"), store=store, task=task, seed=1, audit_retention=3600
        )

        async def predict(
            X: np.ndarray, level: int = raised, store: MemoryStore = store
        ) -> np.ndarray:
            store.raise_to(status_key("alice"), level)  # meanwhile, elsewhere
            return models["bc"].predict_proba(X)

        if raised == BLOCKED:
            with pytest.raises(Blocked):
                asyncio.run(guarded.answer_async("alice", ROWS, predict))
        else:
            reply = asyncio.run(guarded.answer_async("alice", ROWS, predict))
            assert reply.answers.strict
        entries = store.audit_entries()
        assert [e.outcome for e in entries] == [outcome]
        assert store.get(served_key("alice")) == (0 if raised == BLOCKED else len(ROWS))
