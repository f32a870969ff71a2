"""``/metrics`` refuses a client key: its per-request counters are for the operator only.

``modeltheft_answers_altered_total`` rises by exactly the rows that were misinformed, so a
client reading it around each query would know which of its answers were faked.
"""

import logging
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.errors import ConfigError
from modeltheft.service.auth import METRICS_ENV, MetricsKey, hash_key
from tests.conftest import KEYS, METRICS_KEY, auth, metrics_auth


def test_metrics_refuses_a_client_key(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app("recommended")) as client:
        for name in KEYS:
            response = client.get("/metrics", headers=auth(name))
            assert response.status_code == 403
            assert "metrics credential" in response.json()["detail"]
            assert "modeltheft_" not in response.text
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        basic = {"Authorization": f"Basic {METRICS_KEY}"}
        assert client.get("/metrics", headers=basic).status_code == 401
        response = client.get("/metrics", headers=metrics_auth())
        assert response.status_code == 200 and "modeltheft_extraction_alerts" in response.text


def test_metrics_key_in_its_stored_form(make_app: Callable[..., FastAPI]) -> None:
    stored = MetricsKey.from_value(hash_key(METRICS_KEY))
    with TestClient(make_app(metrics_key=stored)) as client:
        assert client.get("/metrics", headers=metrics_auth()).status_code == 200
        assert client.get("/metrics", headers=auth()).status_code == 403


def test_metrics_disabled_without_a_credential(
    make_app: Callable[..., FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="modeltheft.service"):
        app = make_app(metrics_key=None)
    assert METRICS_ENV in caplog.text and "disabled" in caplog.text
    with TestClient(app) as client:
        for headers in ({}, auth(), metrics_auth()):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 404 and METRICS_ENV in response.json()["detail"]


def test_metrics_key_from_the_environment() -> None:
    assert MetricsKey.from_env({}) is None
    assert MetricsKey.from_env({METRICS_ENV: "s3cret"}).verify("s3cret")  # type: ignore[union-attr]
    assert not MetricsKey.from_value("s3cret").verify("s3cret ")
    with pytest.raises(ConfigError, match=METRICS_ENV):
        MetricsKey.from_env({METRICS_ENV: " "})
    with pytest.raises(ConfigError, match="digest"):
        MetricsKey.from_value("sha256$00$abcd")
