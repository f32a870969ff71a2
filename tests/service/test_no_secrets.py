"""Nothing secret in the public endpoints, the error answers or the logs.

The ``recommended`` preset on a SQLite store whose HMAC keys the test reads back; every
public answer (model facts, schema, health, metrics) and every error (401, 403, 404, 405,
413, 422, 429) is searched for those keys (raw, hex, base64), the API keys, the model and
state paths, and the preset's parameters as name/value pairs.
"""

import base64
import json
import logging
import re
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.defenses.alerts import BLOCKED, status_key
from tests.conftest import KEYS, auth, metrics_auth

SECRET_NAMES = ("watermark-key", "misinformation-key")
ROW = [0.5] * 64
# Answers that publish the token bucket's size on purpose (RFC 9331-style rate-limit headers).
PUBLIC_HEADERS = re.compile(r"^(x-)?ratelimit|^retry-after$", re.IGNORECASE)


def preset_parameters() -> list[tuple[str, object]]:
    """``(name, value)`` of every stage parameter of the recommended preset (not its types)."""
    source = resources.files("modeltheft.defenses") / "presets" / "recommended.toml"
    return [
        (name, value)
        for stage in tomllib.loads(source.read_text())["stages"]
        for name, value in stage.items()
        if name != "type"
    ]


def encodings(secret: bytes) -> list[str]:
    """The ways a key could show up in a text answer."""
    forms = [secret.hex(), secret.hex().upper()]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(secret).decode()
        forms += [text, text.rstrip("=")]
    forms.append(secret.decode("latin-1"))
    return forms


@pytest.fixture
def service(
    make_app: Callable[..., FastAPI], tmp_path: Path, victim_path: Path
) -> Iterator[tuple[TestClient, FastAPI, Path]]:
    state = tmp_path / "state" / "defenses.db"
    app = make_app("recommended", state=f"sqlite:///{state}")
    with TestClient(app) as client:
        yield client, app, state


def collect(client: TestClient, app: FastAPI) -> dict[str, httpx.Response]:
    """One response per public endpoint and per error status, named by what it shows."""
    json_headers = {**auth(), "Content-Type": "application/json"}
    app.state.store.raise_to(status_key("bob"), BLOCKED)
    seen = {
        "model": client.get("/v1/model"),
        "openapi": client.get("/openapi.json"),
        "healthz": client.get("/healthz"),
        "metrics": client.get("/metrics", headers=metrics_auth()),
        "ok": client.post("/v1/predict", json={"inputs": [ROW]}, headers=auth()),
        "401 none": client.post("/v1/predict", json={"inputs": [ROW]}),
        "401 unknown": client.post(
            "/v1/predict", json={"inputs": [ROW]}, headers={"Authorization": "Bearer nope"}
        ),
        "401 scheme": client.post(
            "/v1/predict",
            json={"inputs": [ROW]},
            headers={"Authorization": f"Basic {KEYS['alice']}"},
        ),
        "403": client.post("/v1/predict", json={"inputs": [ROW]}, headers=auth("bob")),
        "404": client.get("/v1/secrets", headers=auth()),
        "405 get": client.get("/v1/predict", headers=auth()),
        "405 delete": client.delete("/v1/model", headers=auth()),
        "413 batch": client.post("/v1/predict", json={"inputs": [ROW] * 257}, headers=auth()),
        "413 body": client.post("/v1/predict", content=b" " * 2_000_100, headers=json_headers),
        "422 json": client.post("/v1/predict", content=b"{nope", headers=json_headers),
        "422 shape": client.post("/v1/predict", json={"inputs": [[0.5] * 3]}, headers=auth()),
        "422 range": client.post("/v1/predict", json={"inputs": [[7.0] * 64]}, headers=auth()),
        "422 extra": client.post("/v1/predict", json={"inputs": [ROW], "fpr": 0.5}, headers=auth()),
        "422 type": client.post(
            "/v1/predict", content=b"inputs=1", headers={**auth(), "Content-Type": "text/plain"}
        ),
    }
    for _ in range(10):  # 250 rows each against a 1,000-query bucket
        response = client.post("/v1/predict", json={"inputs": [ROW] * 250}, headers=auth())
        if response.status_code == 429:
            seen["429"] = response
            break
    return seen


def shown(response: httpx.Response) -> str:
    """The body and the headers a client sees, as one text (rate-limit headers excluded)."""
    headers = "\n".join(
        f"{k}: {v}" for k, v in response.headers.items() if not PUBLIC_HEADERS.match(k)
    )
    return headers + "\n" + response.content.decode("latin-1")


def parameter_patterns(params: list[tuple[str, object]]) -> dict[str, re.Pattern[str]]:
    """``fpr: 0.01``, ``"fpr": 0.01``, ``fpr=0.01``, ``on_alert = "strict"``… for each parameter."""
    patterns = {}
    for name, value in params:
        shown_value = re.escape(json.dumps(value)).replace('"', '"?')
        patterns[f"{name}={value}"] = re.compile(
            rf"(?<!\w){re.escape(name)}\W{{0,4}}{shown_value}(?!\w)"
        )
    return patterns


def test_the_parameter_check_would_see_a_leak() -> None:
    params = preset_parameters()
    assert {"fpr", "delta", "rate", "capacity", "on_alert"} <= {name for name, _ in params}
    patterns = parameter_patterns(params)
    for leak in ('{"fpr": 0.01}', "delta=0.75", 'on_alert = "strict"', "capacity: 1000"):
        assert any(p.search(leak) for p in patterns.values()), leak
    assert not any(p.search('{"defenses": ["prada"], "max_batch": 256}') for p in patterns.values())


def json_keys(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from json_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_keys(item)


def test_no_secret_in_any_answer(
    service: tuple[TestClient, FastAPI, Path],
    victim_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, app, state = service
    caplog.set_level(logging.DEBUG)
    responses = collect(client, app)
    statuses = {name: r.status_code for name, r in responses.items()}
    expected = {"model": 200, "openapi": 200, "healthz": 200, "metrics": 200, "ok": 200}
    expected |= {name: int(name[:3]) for name in responses if name[:3].isdigit()}
    assert statuses == expected
    assert "429" in responses, "the token bucket never refused"

    secrets = [app.state.store.secret(name) for name in SECRET_NAMES]
    assert all(len(s) >= 16 for s in secrets)
    forbidden = {
        f"secret {i} as {form!r}": form for i, s in enumerate(secrets) for form in encodings(s)
    }
    forbidden |= {f"API key of {name}": key for name, key in KEYS.items()}
    forbidden |= {
        "model path": str(victim_path),
        "model folder": str(victim_path.parent),
        "state path": str(state),
        "state folder": str(state.parent),
    }
    params = preset_parameters()
    pairs = parameter_patterns(params)
    for what, response in responses.items():
        text = shown(response)
        for label, needle in forbidden.items():
            assert needle not in text, f"{label} in the {what} answer"
        for name, pattern in pairs.items():
            assert not pattern.search(text), f"{name} in the {what} answer"
        if "json" in response.headers.get("content-type", ""):
            names = {"threshold", "min_distances", *(name for name, _ in params)}
            leaked = names & set(json_keys(response.json()))
            assert not leaked, f"defense parameter keys {leaked} in the {what} answer"
        if response.status_code >= 400:
            assert set(response.json()) == {"detail"}, what
            assert "Traceback" not in response.text

    logged = "\n".join(record.getMessage() for record in caplog.records)
    for label, needle in forbidden.items():
        if label.startswith(("secret", "API key")):
            assert needle not in logged, f"{label} in the logs"


def test_model_facts_name_the_defenses_only(service: tuple[TestClient, FastAPI, Path]) -> None:
    client, _, _ = service
    facts = client.get("/v1/model").json()
    assert set(facts) == {
        "name",
        "input_shape",
        "classes",
        "defenses",
        "max_batch",
        "inference",
        "task",
    }
    assert "sha256" not in json.dumps(facts)
    assert all(isinstance(name, str) and " " not in name for name in facts["defenses"])
