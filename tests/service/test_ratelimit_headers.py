"""The token-bucket limit over HTTP: RateLimit headers on 200 and 429, Retry-After, JSON detail."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modeltheft.defenses.ratelimit import TokenBucketRateLimit
from tests.conftest import auth

ROW = [0.5] * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bucket_app(
    make_app: Callable[..., FastAPI], tmp_path: Path, clock: FakeClock
) -> Iterator[Callable[[str], TestClient]]:
    """Build an app whose only defense is the token bucket configured by ``stage_lines``."""
    with ExitStack() as stack:

        def build(stage_lines: str) -> TestClient:
            path = tmp_path / "bucket.toml"
            path.write_text(f'[[stages]]\ntype = "token_bucket"\n{stage_lines}\n')
            app = make_app(defense=str(path))
            for stage in app.state.guarded.pipeline.stages:
                if isinstance(stage, TokenBucketRateLimit):
                    stage.clock = clock
            return stack.enter_context(TestClient(app))

        yield build


def predict(client: TestClient, rows: int, who: str = "alice"):
    return client.post("/v1/predict", json={"inputs": [ROW] * rows}, headers=auth(who))


def test_headers_on_every_admitted_response(bucket_app, clock: FakeClock) -> None:
    client = bucket_app('capacity = 10\nrefill_per_hour = 360\npolicy_name = "per-key"')
    first = predict(client, 3)
    assert first.status_code == 200
    assert len(first.json()["predictions"]) == 3
    assert first.headers["RateLimit-Policy"] == '"per-key";q=10;w=100'
    assert first.headers["RateLimit"] == '"per-key";r=7;t=30'
    assert "Retry-After" not in first.headers
    clock.now += 10  # one token back
    second = predict(client, 1)
    assert second.headers["RateLimit"] == '"per-key";r=7;t=30'
    other = predict(client, 2, who="bob")  # bob's bucket is his own
    assert other.headers["RateLimit"] == '"per-key";r=8;t=20'


def test_an_exhausted_bucket_answers_429_with_retry_after_and_headers(
    bucket_app, clock: FakeClock
) -> None:
    client = bucket_app("capacity = 5\nrefill_per_hour = 360")  # one token per 10 s
    assert predict(client, 5).status_code == 200
    refused = predict(client, 2)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "20"
    assert refused.headers["RateLimit-Policy"] == '"default";q=5;w=50'
    assert refused.headers["RateLimit"] == '"default";r=0;t=20'
    detail = refused.json()["detail"]
    assert set(refused.json()) == {"detail"}
    assert "2 queries but only 0 remain" in detail and "in 20 s" in detail
    clock.now += 20
    assert predict(client, 2).status_code == 200


def test_a_bucket_that_never_refills(bucket_app) -> None:
    client = bucket_app("capacity = 5\nrefill_per_hour = 0")
    ok = predict(client, 5)
    assert ok.status_code == 200
    assert ok.headers["RateLimit-Policy"] == '"default";q=5'
    assert ok.headers["RateLimit"] == '"default";r=0'
    refused = predict(client, 1)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "3600"
    assert refused.headers["RateLimit"] == '"default";r=0'
    assert "never refilled" in refused.json()["detail"]


def test_a_batch_larger_than_the_bucket_is_refused_with_a_clear_message(bucket_app) -> None:
    client = bucket_app("capacity = 5\nrefill_per_hour = 3600")
    refused = predict(client, 6)
    assert refused.status_code == 429
    assert "can never be admitted; send at most 5 rows per request" in refused.json()["detail"]
    assert refused.headers["RateLimit"] == '"default";r=5'
    assert predict(client, 5).status_code == 200
