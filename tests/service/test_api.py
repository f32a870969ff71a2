"""The /v1/predict contract, in-process: answers, every documented error, never a 500."""

import json
from collections.abc import Callable

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS, auth

ROW = [0.5] * 64


def post(client: TestClient, body: object, headers: dict[str, str] | None = None):
    return client.post("/v1/predict", json=body, headers=headers or auth())


def test_answers_match_the_victim_in_input_order(client: TestClient, victim: LoadedVictim) -> None:
    X = digits_task().data.X_eval[:17]
    response = post(client, {"inputs": X.tolist()})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == victim.model.predict(X).tolist()
    assert np.allclose([p["probabilities"] for p in predictions], victim.model.predict_proba(X))


def test_whole_test_set_through_the_api_scores_0974(client: TestClient) -> None:
    data = digits_task().data
    labels = []
    for start in range(0, 540, 256):
        response = post(client, {"inputs": data.X_eval[start : start + 256].tolist()})
        assert response.status_code == 200
        labels += [p["label"] for p in response.json()["predictions"]]
    assert round(float(np.mean(np.array(labels) == data.y_eval)), 3) == 0.974


def test_integers_are_numbers_too(client: TestClient) -> None:
    assert post(client, {"inputs": [[0] * 32 + [1] * 32]}).status_code == 200


BAD_BODIES = {
    "short row": {"inputs": [[0.5] * 63]},
    "long row": {"inputs": [[0.5] * 65]},
    "ragged rows": {"inputs": [ROW, [0.5] * 10]},
    "boolean": {"inputs": [[True] + [0.5] * 63]},
    "string": {"inputs": [["0.5"] + [0.5] * 63]},
    "null": {"inputs": [[None] + [0.5] * 63]},
    "nested list": {"inputs": [[[0.5]] + [0.5] * 63]},
    "above one": {"inputs": [[1.5] + [0.5] * 63]},
    "negative": {"inputs": [[-0.1] + [0.5] * 63]},
    "empty list": {"inputs": []},
    "empty row": {"inputs": [[]]},
    "no inputs key": {"rows": [ROW]},
    "extra key": {"inputs": [ROW], "defense": "none"},
    "inputs not a list": {"inputs": 5},
    "flat row": {"inputs": ROW},
    "body is a list": [ROW],
    "body is a number": 3,
    "body is null": None,
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_malformed_bodies_get_422_with_a_message(client: TestClient, name: str) -> None:
    response = post(client, BAD_BODIES[name])
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_get_422(client: TestClient, token: str) -> None:
    body = '{"inputs": [[' + token + ", " + ", ".join(["0.5"] * 63) + "]]}"
    response = client.post(
        "/v1/predict", content=body, headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "inputs[0][0]" in response.json()["detail"]


def test_messages_name_the_problem(client: TestClient) -> None:
    assert "inputs[1]" in post(client, {"inputs": [ROW, [0.5] * 10]}).json()["detail"]
    assert "inputs[0][0]" in post(client, {"inputs": [[True] + [0.5] * 63]}).json()["detail"]
    detail = post(client, {"inputs": [[0.5] * 9 + [2] + [0.5] * 54]}).json()["detail"]
    assert detail == "inputs[0][9] (pixel_1_1): 2 is outside the feature's bounds [0, 1]"
    short = post(client, {"inputs": [[0.5] * 30]}).json()["detail"]
    assert short == "inputs[0]: expected 64 values (the model's input width), got 30"


@pytest.mark.parametrize("raw", ["{", "not json", '{"inputs": [[0.5,]]}', "", "\xff"])
def test_invalid_json_gets_422(client: TestClient, raw: str) -> None:
    response = client.post(
        "/v1/predict",
        content=raw.encode("latin-1"),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_gets_422(client: TestClient, content_type: str | None) -> None:
    headers = auth()
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/v1/predict", content=json.dumps({"inputs": [ROW]}), headers=headers)
    assert response.status_code == 422
    assert "Content-Type" in response.json()["detail"]


def test_batches_up_to_the_limit_pass_and_larger_get_413(client: TestClient) -> None:
    assert post(client, {"inputs": [ROW] * 256}).status_code == 200
    response = post(client, {"inputs": [ROW] * 257})
    assert response.status_code == 413
    assert "256" in response.json()["detail"]


def test_oversized_body_gets_413(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("none", max_body_bytes=4096)) as small:
        response = post(small, {"inputs": [ROW] * 100})
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": KEYS["alice"]},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_unknown_keys_get_401(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/v1/predict", json={"inputs": [ROW]}, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"]


def test_auth_is_checked_before_the_body(client: TestClient) -> None:
    response = client.post(
        "/v1/predict", content="garbage", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401


def test_lab_preset_rate_limits_with_retry_after(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("lab")) as lab:
        codes = [post(lab, {"inputs": [ROW]}).status_code for _ in range(150)]
        assert codes == [200] * 150
        later = [post(lab, {"inputs": [ROW]}) for _ in range(100)]
        refused = [r for r in later if r.status_code == 429]
        assert 60 <= len(refused) <= 95
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        assert all("rate limited" in r.json()["detail"] for r in refused)
        # Another client is not affected by alice's history.
        assert post(lab, {"inputs": [ROW]}, auth("bob")).status_code == 200


def test_lab_preset_answers_are_probability_vectors(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("lab")) as lab:
        predictions = post(lab, {"inputs": digits_task().data.X_eval[:50].tolist()}).json()[
            "predictions"
        ]
    probabilities = np.array([p["probabilities"] for p in predictions])
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert [p["label"] for p in predictions] == probabilities.argmax(axis=1).tolist()


def test_model_info_and_health(client: TestClient, make_app: Callable[..., FastAPI]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    with TestClient(make_app("lab")) as lab:
        info = lab.get("/v1/model").json()
    assert info["input_shape"] == [64]
    assert info["classes"] == list(range(10))
    assert info["task"]["name"] == "digits" and info["task"]["n_features"] == 64
    assert info["task"]["features"][0] == {"name": "pixel_0_0", "lower": 0.0, "upper": 1.0}
    assert info["defenses"][0] == "probabilistic_rate_limit"
    text = json.dumps(info)
    assert "0.8" not in text and "150" not in text and "key" not in text.lower()


def test_unknown_routes_and_methods_are_4xx(client: TestClient) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/predict").status_code == 405
    assert client.put("/v1/predict", json={"inputs": [ROW]}, headers=auth()).status_code == 405


def test_openapi_documents_the_predict_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"]
    post = spec["paths"]["/v1/predict"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    row = body["properties"]["inputs"]["items"]
    assert (row["minItems"], row["maxItems"]) == (64, 64)
    assert (row["items"]["minimum"], row["items"]["maximum"]) == (0, 1)
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]
    prediction = spec["components"]["schemas"][answer["$ref"].rsplit("/", 1)[1]]
    label = spec["components"]["schemas"]["Prediction"]["properties"]["label"]
    assert label["enum"] == list(range(10)) and "predictions" in prediction["properties"]
    assert body["properties"]["inputs"]["maxItems"] == 256
    assert set(post["responses"]) == {"200", "401", "403", "408", "413", "422", "429", "503"}
    assert post["security"] == [{"HTTPBearer": []}]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_the_documented_route_answers_like_the_fast_path(
    make_app: Callable[..., FastAPI],
) -> None:
    """Behind a root path (/api/v1/predict) the fast path does not match: FastAPI's route does."""
    with TestClient(make_app(), root_path="/api") as api:
        url = "/api/v1/predict"
        assert api.post(url, json={"inputs": [ROW]}, headers=auth()).status_code == 200
        bad = api.post(url, json={"inputs": [ROW[:3]]}, headers=auth())
        assert bad.status_code == 422 and "inputs[0]" in bad.json()["detail"]
        missing = api.post(url, json={"inputs": [ROW]})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"


def test_onnx_answers_are_scikit_learns_float64_probabilities(
    client: TestClient, victim: LoadedVictim
) -> None:
    """No float32 noise on the wire (0.03999999910593033 for 0.04): the same float64s."""
    assert client.get("/v1/model").json()["inference"] == "onnx"
    X = digits_task().data.X_eval[:100]
    body = client.post("/v1/predict", json={"inputs": X.tolist()}, headers=auth()).json()
    answered = np.array([p["probabilities"] for p in body["predictions"]])
    assert np.array_equal(answered, victim.model.predict_proba(X))
