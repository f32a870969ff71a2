"""`recommended` over real HTTP: honest clients untouched, the lab's thief flagged and misled.

(`modeltheft watermark verify` is tested in tests/cli/test_watermark.py.)"""

from collections.abc import Callable

import httpx
import numpy as np

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.defenses.alerts import STRICT, alerts, client_status
from modeltheft.oracle import HttpOracle
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS, auth, metrics_auth


def test_honest_client_over_http_gets_the_victims_answers(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    server = live_server("recommended")
    X = digits_task().data.X_eval
    labels = []
    with httpx.Client(base_url=server.url, headers=auth("alice")) as http:
        for batch in np.array_split(X, 27):
            response = http.post("/v1/predict", json={"inputs": batch.tolist()})
            assert response.status_code == 200, response.text
            assert response.headers["RateLimit-Policy"].startswith('"default";q=1000')
            labels += [p["label"] for p in response.json()["predictions"]]
    assert np.mean(np.array(labels) == victim.model.predict(X)) >= 0.995
    assert alerts(server.app.state.guarded.store) == []


def test_lab_thief_over_http_is_flagged_and_misled(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    server = live_server("recommended")
    oracle = HttpOracle(server.url, KEYS["bob"], budget=300)
    try:
        result = extract(
            oracle,
            make_strategy("owasp-synthetic"),
            make_substitute("lr", seed=0),
            300,
            np.random.default_rng(0),
            batch_size=1,  # as the lab sends them
            label_mode="hard",
        )
    finally:
        oracle.close()
    store = server.app.state.guarded.store
    [alert] = alerts(store)
    assert alert["client"] == "bob" and alert["after_queries"] <= 10
    assert client_status(store, "bob") == STRICT
    metrics = httpx.get(f"{server.url}/metrics", headers=metrics_auth()).text
    assert 'modeltheft_extraction_alerts_total{detector="ood_monitor"} 1.0' in metrics
    assert "modeltheft_flagged_clients 1.0" in metrics
    X = digits_task().data.X_eval
    agreement = np.mean(result.model.predict(X) == victim.model.predict(X))
    assert agreement <= 0.2
