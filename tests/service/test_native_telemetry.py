"""FastAPI's native OpenTelemetry stays off: it looked up the global providers on every
request (~3 us, 1% of ``recommended``'s CPU) to find none configured (#14)."""

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import auth


def test_a_request_looks_up_no_telemetry_provider(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    lookups: list[str] = []
    real = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: lookups.append("t") or real())
    with TestClient(make_app("none", state="memory://")) as client:
        lookups.clear()  # start-up may look once
        for _ in range(3):
            answer = client.post("/v1/predict", json={"inputs": [[0.0] * 64]}, headers=auth())
            assert answer.status_code == 200
    assert lookups == []
