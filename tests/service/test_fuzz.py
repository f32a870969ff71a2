"""Property-based input: whatever arrives, the answer is 200 or a 4xx with a message."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from tests.conftest import KEYS, auth

JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children)
    ),
    max_leaves=30,
)
ROWS = st.lists(
    st.lists(st.floats() | st.integers(-2, 2), min_size=60, max_size=66),
    max_size=4,
)


@pytest.fixture(scope="module")
def client(victim_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        keys=KeyRing.from_pairs(KEYS), model_path=victim_path, defense="lab", seed=0
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def check(client: TestClient, body: object) -> None:
    raw = json.dumps(body, allow_nan=True)  # NaN/Infinity tokens too: Python's parser accepts them
    response = client.post(
        "/v1/predict", content=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code < 500
    if response.status_code != 200:
        assert isinstance(response.json()["detail"], str)


@settings(max_examples=200, deadline=None)
@given(body=JSON)
def test_arbitrary_json_never_500(client: TestClient, body: object) -> None:
    check(client, body)
    check(client, {"inputs": body})


@settings(max_examples=200, deadline=None)
@given(rows=ROWS)
def test_near_valid_rows_never_500(client: TestClient, rows: list) -> None:
    check(client, {"inputs": rows})


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_500(client: TestClient, raw: bytes) -> None:
    response = client.post(
        "/v1/predict", content=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code < 500
