"""The Open Inference Protocol v2 front door and KServe v1 ``:predict``: every route, its
errors with OIP bodies, the defenses and metrics as on /v1/predict, and real clients
(``tritonclient[http]``, our own oip-v2 and kserve-v1 oracles) against a real uvicorn."""

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.defenses.alerts import alerts
from modeltheft.errors import ConfigError
from modeltheft.oracle import HttpOracle
from modeltheft.oracle.protocols import make_oracle
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS, auth, metrics_auth
from tests.service.test_observability import samples, value

NAME = "victim"  # the served file is victim.skops
INFER = f"/v2/models/{NAME}/infer"
KSERVE = f"/v1/models/{NAME}:predict"


def tensor(X: np.ndarray, datatype: str = "FP64", nested: bool = False) -> dict[str, object]:
    data = X.tolist() if nested else X.ravel().tolist()
    return {"name": "input-0", "shape": list(X.shape), "datatype": datatype, "data": data}


def infer(client: TestClient, body: object, headers: dict[str, str] | None = None, **kw):
    return client.post(INFER, json=body, headers=auth() if headers is None else headers, **kw)


def outputs(response: httpx.Response) -> dict[str, tuple[list[int], list[object]]]:
    assert response.status_code == 200, response.text
    return {o["name"]: (o["shape"], o["data"]) for o in response.json()["outputs"]}


def test_health_server_and_model_metadata_need_no_key(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/").json() == {"status": "alive"}  # KServe v1
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "modeltheft"
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 64]}]
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]},
    ]
    assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    assert client.get(f"/v1/models/{NAME}").json() == {"name": NAME, "ready": True}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/other"),
        ("GET", "/v2/models/other/ready"),
        ("POST", "/v2/models/other/infer"),
        ("GET", "/v1/models/other"),
        ("POST", "/v1/models/other:predict"),
    ],
)
def test_a_wrong_model_name_is_a_404_naming_the_served_model(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, path, headers=auth(), json={"inputs": []})
    assert response.status_code == 404
    assert response.json() == {"error": f"model 'other' not found; this server serves '{NAME}'"}


def test_infer_answers_as_v1_predict_flat_nested_fp32_fp64_int(
    client: TestClient, victim: LoadedVictim
) -> None:
    X = digits_task().data.X_eval[:9]
    v1 = client.post("/v1/predict", json={"inputs": X.tolist()}, headers=auth()).json()
    v1_proba = [p["probabilities"] for p in v1["predictions"]]
    both = [{"name": "predict_proba"}, {"name": "predict"}]
    for body in (
        {"id": "req-1", "inputs": [tensor(X)], "outputs": both},
        {"id": "req-1", "inputs": [tensor(X, nested=True)], "outputs": both},
    ):
        response = infer(client, body)
        assert response.json()["id"] == "req-1" and response.json()["model_name"] == NAME
        got = outputs(response)
        assert got["predict"] == ([9, 1], victim.model.predict(X).tolist())
        shape, data = got["predict_proba"]
        assert shape == [9, 10] and np.array(data).reshape(9, 10).tolist() == v1_proba
        assert [o["name"] for o in response.json()["outputs"]] == ["predict_proba", "predict"]
    # FP32 data is read as FP32: the answers of the float32-rounded rows.
    X32 = X + 1e-9
    got = outputs(infer(client, {"inputs": [tensor(X32, "FP32")], "outputs": both}))
    assert got["predict"][1] == victim.model.predict(X32.astype(np.float32)).tolist()
    # Integer datatypes: whole numbers (the pixels are in [0, 1]: 0 and 1 here).
    Xi = X.round()
    got = outputs(infer(client, {"inputs": [tensor(Xi, "INT64")]}))
    assert got["predict"][1] == victim.model.predict(Xi).tolist()
    # Without outputs: labels only, as MLServer answers; no id asked, none echoed.
    response = infer(client, {"inputs": [tensor(X)]})
    assert list(outputs(response)) == ["predict"] and "id" not in response.json()
    kserve = client.post(KSERVE, json={"instances": X.tolist()}, headers=auth())
    assert kserve.json() == {"predictions": victim.model.predict(X).tolist()}


def test_the_binary_tensor_extension(client: TestClient, victim: LoadedVictim) -> None:
    X = digits_task().data.X_eval[:4].astype(np.float32)
    head = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [4, 64],
                "datatype": "FP32",
                "parameters": {"binary_data_size": X.nbytes},
            }
        ],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
    }
    raw = orjson.dumps(head)
    headers = {**auth(), "Inference-Header-Content-Length": str(len(raw))}
    response = client.post(INFER, content=raw + X.tobytes(), headers=headers)
    assert outputs(response)["predict"][1] == victim.model.predict(X).tolist()
    bad = client.post(INFER, content=raw + X.tobytes()[:-4], headers=headers)
    assert bad.status_code == 422 and "binary_data_size" in bad.json()["error"]


@pytest.mark.parametrize("path", [INFER, KSERVE])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": KEYS["alice"]}],
)
def test_inference_needs_a_key(client: TestClient, path: str, headers: dict[str, str]) -> None:
    X = np.zeros((1, 64))
    response = client.post(
        path, json={"inputs": [tensor(X)], "instances": X.tolist()}, headers=headers
    )
    assert response.status_code == 401
    assert set(response.json()) == {"error"} and response.headers["WWW-Authenticate"] == "Bearer"


ROW = [0.0] * 64
BAD_BODIES: list[tuple[str, object, int, str]] = [
    ("wrong width", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                                 "data": [1, 2, 3]}]}, 422, "expected 64"),
    ("shape and data disagree", {"inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP64",
                                             "data": ROW}]}, 422, "its shape says 128"),
    ("bad datatype", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "BYTES",
                                  "data": ROW}]}, 422, "send FP32 or FP64"),
    ("no datatype", {"inputs": [{"name": "x", "shape": [1, 64], "data": ROW}]}, 422, "datatype"),
    ("empty inputs", {"inputs": []}, 422, "non-empty"),
    ("no inputs", {}, 422, "non-empty"),
    ("empty data", {"inputs": [{"name": "x", "shape": [0, 64], "datatype": "FP64",
                                "data": []}]}, 422, "n >= 1"),
    ("a string", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                              "data": ["a", *ROW[1:]]}]}, 422, "not a number"),
    ("a boolean", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                               "data": [True, *ROW[1:]]}]}, 422, "true, not a number"),
    ("a null", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                            "data": [None, *ROW[1:]]}]}, 422, "null"),
    ("a fraction as INT64", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT64",
                                         "data": [0.5, *ROW[1:]]}]}, 422, "INT64 integers"),
    ("out of bounds", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                                   "data": [99.0, *ROW[1:]]}]}, 422, "outside"),
    ("two tensors", {"inputs": [{"name": "x"}, {"name": "y"}]}, 422, "one input tensor"),
    ("datatype a list", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": [],
                                     "data": ROW}]}, 422, "datatype [] is not supported"),
    ("datatype an object", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": {},
                                        "data": ROW}]}, 422, "not supported"),
    ("output name an object", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                                           "data": ROW}], "outputs": [{"name": {}}]}, 422,
     "unknown output {}"),
    ("unknown output", {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                                    "data": ROW}], "outputs": [{"name": "logits"}]}, 422,
     "unknown output 'logits'"),
    ("id not a string", {"id": 5, "inputs": []}, 422, "id must be a string"),
    ("not an object", [1, 2], 422, "JSON object"),
    ("too many rows", {"inputs": [{"name": "x", "shape": [257, 64], "datatype": "FP64",
                                   "data": ROW * 257}]}, 413, "257 rows"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "words"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
def test_bad_requests_get_oip_error_bodies(
    client: TestClient, body: object, status: int, words: str
) -> None:
    response = infer(client, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "content_type", "words"),
    [
        (b'{"inputs": [{"shape": [1, 64], "datatype": "FP64", "data": [NaN]}]}', None, "NaN"),
        (b"{not json", None, "invalid JSON"),
        (orjson.dumps({"inputs": [tensor(np.zeros((1, 64)))]}), "text/plain", "Content-Type"),
    ],
)
def test_nan_bad_json_and_content_type(
    client: TestClient, content: bytes, content_type: str | None, words: str
) -> None:
    headers = auth() | ({"Content-Type": content_type} if content_type else {})
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 422 and words in response.json()["error"]
    kserve = client.post(KSERVE, content=b'{"instances": [[NaN]]}', headers=auth())
    assert kserve.status_code == 422 and "NaN" in kserve.json()["error"]


def test_kserve_errors(client: TestClient) -> None:
    for body, words in [
        ({"instances": [[1, 2, 3]]}, "instances[0]: expected 64 values"),
        ({"instances": []}, "instances"),
        ({"inputs": [ROW]}, '{"instances"'),
    ]:
        response = client.post(KSERVE, json=body, headers=auth())
        assert response.status_code == 422 and words in response.json()["error"], response.text


def test_hard_label_hides_predict_proba_before_anything_is_counted(
    make_app: Callable[..., FastAPI], tmp_path: Path, victim: LoadedVictim
) -> None:
    path = tmp_path / "hard.toml"
    path.write_text('[[stages]]\ntype = "hard_label"\n')
    X = digits_task().data.X_eval[:3]
    with TestClient(make_app(defense=str(path))) as client:
        meta = client.get(f"/v2/models/{NAME}").json()
        assert [o["name"] for o in meta["outputs"]] == ["predict"]
        refused = infer(client, {"inputs": [tensor(X)], "outputs": [{"name": "predict_proba"}]})
        assert refused.status_code == 422 and "withholds probabilities" in refused.json()["error"]
        assert client.app.state.guarded.store.audit_entries() == []  # nothing answered
        labels = outputs(infer(client, {"inputs": [tensor(X)]}))["predict"][1]
        assert labels == victim.model.predict(X).tolist()


def test_recommended_treats_v2_exactly_as_v1_predict(make_app: Callable[..., FastAPI]) -> None:
    """The same client sending the same noise rows through either door gets the same
    (misinformed) answers, the same alerts and the same audit trail."""
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, size=(10, 64)) for _ in range(8)]
    results = []
    for door in ("v1", "v2"):
        with TestClient(make_app("recommended")) as client:
            labels, probabilities = [], []
            for X in batches:
                if door == "v1":
                    r = client.post("/v1/predict", json={"inputs": X.tolist()}, headers=auth())
                    labels += [p["label"] for p in r.json()["predictions"]]
                    probabilities += [p["probabilities"] for p in r.json()["predictions"]]
                else:
                    both = [{"name": "predict"}, {"name": "predict_proba"}]
                    got = outputs(infer(client, {"inputs": [tensor(X)], "outputs": both}))
                    labels += got["predict"][1]
                    probabilities += np.array(got["predict_proba"][1]).reshape(-1, 10).tolist()
            store = client.app.state.guarded.store
            audit = [(e.outcome, e.rows, e.altered, e.status_after) for e in store.audit_entries()]
            found = [(a["client"], a["detector"]) for a in alerts(store)]
            scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
            altered = value(scrape, "modeltheft_answers_altered_total")
            results.append((labels, probabilities, audit, found, altered))
    assert results[0] == results[1]
    labels, _, audit, found, altered = results[1]
    assert found and altered > 0 and any(e[2] for e in audit)  # flagged and misinformed


def test_metrics_count_the_oip_routes(client: TestClient) -> None:
    X = np.zeros((3, 64))
    assert infer(client, {"inputs": [tensor(X)]}).status_code == 200
    assert client.post(KSERVE, json={"instances": X.tolist()}, headers=auth()).status_code == 200
    assert infer(client, {"inputs": [tensor(X)]}, headers={}).status_code == 401
    assert infer(client, {"inputs": []}).status_code == 422
    assert client.get(f"/v2/models/{NAME}").status_code == 200
    scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
    requests = "modeltheft_http_requests_total"
    route = "/v2/models/{name}/infer"
    assert value(scrape, requests, route=route, method="POST", status="200") == 1
    assert value(scrape, requests, route=route, method="POST", status="401") == 1
    assert value(scrape, requests, route=route, method="POST", status="422") == 1
    assert (
        value(scrape, requests, route="/v1/models/{name}:predict", method="POST", status="200") == 1
    )
    assert value(scrape, requests, route="/v2/models/{name}", method="GET", status="200") == 1
    assert value(scrape, "modeltheft_queries_total") == 6
    assert value(scrape, "modeltheft_refusals_total", reason="unauthenticated") == 1
    assert value(scrape, "modeltheft_refusals_total", reason="invalid") == 1


def test_tritonclient_drives_the_front_door(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    server = live_server("none")
    X = digits_task().data.X_eval[:5]
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.is_model_ready(NAME) and not triton.is_model_ready("other")
        meta = triton.get_model_metadata(NAME)
        assert meta["inputs"][0]["shape"] == [-1, 64]
        assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
        expected = victim.model.predict_proba(X)
        for datatype, dtype in (("FP32", np.float32), ("FP64", np.float64)):
            for binary in (True, False):
                given = httpclient.InferInput("input-0", list(X.shape), datatype)
                given.set_data_from_numpy(X.astype(dtype), binary_data=binary)
                asked = [
                    httpclient.InferRequestedOutput("predict_proba", binary_data=binary),
                    httpclient.InferRequestedOutput("predict", binary_data=binary),
                ]
                result = triton.infer(NAME, [given], outputs=asked, headers=auth(), request_id="7")
                assert result.get_response()["id"] == "7"
                assert np.allclose(result.as_numpy("predict_proba"), expected, atol=1e-6)
                assert (
                    result.as_numpy("predict").ravel().tolist() == victim.model.predict(X).tolist()
                )
        with pytest.raises(InferenceServerException, match="missing Authorization"):
            triton.infer(NAME, [given])
        with pytest.raises(InferenceServerException, match="this server serves 'victim'"):
            triton.get_model_metadata("other")
    finally:
        triton.close()


@pytest.mark.parametrize("label_mode", ["hard", "soft"])
def test_our_oracles_attack_the_front_door_as_v1_predict(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim, label_mode: str
) -> None:
    server = live_server("none")
    X = digits_task().data.X_eval
    fidelities = []
    for protocol in ("modeltheft", "oip-v2", "kserve-v1"):
        if protocol == "kserve-v1" and label_mode == "soft":
            continue  # KServe v1 answers labels only
        if protocol == "modeltheft":
            oracle = HttpOracle(server.url, KEYS["bob"], budget=200, task=digits_task())
        else:
            oracle = make_oracle(
                protocol, server.url, budget=200, model_name=NAME, api_key=KEYS["bob"],
                task=digits_task(),  # the thief knows the task's bounds (OIP says none)
            )  # fmt: skip
        try:
            result = extract(
                oracle,
                make_strategy("uniform"),
                make_substitute("lr", seed=0),
                200,
                np.random.default_rng(0),
                batch_size=50,
                label_mode=label_mode,
            )
        finally:
            oracle.close()
        fidelities.append(float(np.mean(result.model.predict(X) == victim.model.predict(X))))
        soft = result.probabilities is not None
        assert soft == (protocol != "kserve-v1")  # probabilities come back over OIP too
    assert len(set(fidelities)) == 1, fidelities


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
TENSOR = st.fixed_dictionaries(
    {
        "name": st.just("input-0"),
        "shape": st.lists(st.integers(-1, 70), max_size=3) | JSON,
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "UINT8", "BYTES", "BOOL"]) | JSON,
        "data": st.lists(st.floats(0, 1) | st.integers(0, 1), max_size=130) | JSON,
    },
    optional={"parameters": JSON},
)
BODY = st.fixed_dictionaries(
    {"inputs": st.lists(TENSOR, max_size=2) | JSON},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=14)}))
              | JSON, "id": JSON},
)  # fmt: skip


def test_no_body_is_a_server_error(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("none"), raise_server_exceptions=False) as client:

        @settings(max_examples=150, derandomize=True, deadline=None)
        @given(body=BODY | JSON)
        def check(body: object) -> None:
            for path in (INFER, KSERVE):
                response = client.post(path, content=json.dumps(body), headers=auth())
                assert response.status_code in (200, 413, 422), response.text
                answer = response.json()
                assert set(answer) == {"error"} if response.is_error else bool(answer)

        check()


def test_kserve_rest_client_drives_both_protocols(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    """KServe 0.21's REST client, from its own venv (``KSERVE_PYTHON``; skipped without)."""
    python = os.environ.get("KSERVE_PYTHON")
    if not python:
        pytest.skip("KSERVE_PYTHON is not set (a python with kserve==0.21.0 installed)")
    server = live_server("none")
    X = digits_task().data.X_eval[:3]
    script = Path(__file__).with_name("kserve_client.py")
    command = [python, str(script), server.url, KEYS["alice"], NAME, json.dumps(X.tolist())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    labels = victim.model.predict(X).tolist()
    assert found["v1_live"] and found["v1_ready"] and found["v2_live"] and found["v2_ready"]
    assert found["v1_predictions"] == labels
    for datatype in ("FP32", "FP64"):
        for binary in ("False", "True"):
            assert found[f"v2_{datatype}_{binary}"] == {"predict": labels}
    assert "401" in found["v2_no_key"] and "missing Authorization" in found["v2_no_key"]


def test_the_model_name_can_be_chosen(make_app: Callable[..., FastAPI]) -> None:
    """``serve --model-name``: the OIP v2 and KServe v1 routes use it; a bad name is refused."""
    with TestClient(make_app("none", model_name="digits-v2")) as client:
        assert client.get("/v2/models/digits-v2").json()["name"] == "digits-v2"
        assert client.get(f"/v2/models/{NAME}").status_code == 404
        body = {"instances": [[0.0] * 64]}
        assert client.post("/v1/models/digits-v2:predict", json=body, headers=auth()).is_success
    for bad in ("", "a/b", "-x", "x" * 129):
        with pytest.raises(ConfigError, match="model name must be"):
            make_app("none", model_name=bad)
