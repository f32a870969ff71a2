"""A worker freezes what start-up built, so the collector's full scans stay short (#14, p99)."""

import gc
import time
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import auth


def test_start_up_objects_are_frozen_while_serving(make_app: Callable[..., FastAPI]) -> None:
    gc.unfreeze()
    app = make_app("recommended", state="memory://")
    with TestClient(app) as client:
        assert gc.get_freeze_count() > 10_000  # the libraries, the model, the pipeline
        assert (
            client.post("/v1/predict", json={"inputs": [[0.0] * 64]}, headers=auth()).status_code
            == 200
        )
        started = time.perf_counter()
        gc.collect()
        full = time.perf_counter() - started
        assert gc.get_freeze_count() > 10_000  # a full collection leaves them frozen
    assert gc.get_freeze_count() == 0  # unfrozen at shutdown: an app built again starts afresh
    started = time.perf_counter()
    gc.collect()
    assert full < time.perf_counter() - started  # the scan the frozen objects were spared
