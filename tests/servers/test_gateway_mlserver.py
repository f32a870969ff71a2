"""Gateway mode in front of a real MLServer 1.7.1: ``serve --upstream`` guards the model
MLServer serves (see :mod:`tests.servers.real`, conftest.py's ``digits_mlserver``).

Attacks through the gateway get what they get from our own server with the same preset;
tritonclient drives the gateway's OIP v2 front door; a model MLServer stops serving is a 502.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.service.upstream import UpstreamConfig
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS, auth
from tests.servers.real import MLServer, same_attack_as_ours


def gateway_app(upstream: str, model: str, defense: str = "none", **options: object) -> object:
    config = UpstreamConfig(url=upstream, model_name=model)
    settings = Settings(
        keys=KeyRing.from_pairs(KEYS),
        defense=defense,
        seed=7,
        task="digits",
        upstream=config,
        **options,  # type: ignore[arg-type]
    )
    return create_app(settings)


@pytest.fixture
def gateway(digits_mlserver: MLServer) -> Iterator[Callable[..., BackgroundServer]]:
    """``gateway(model, defense)``: a live gateway in front of MLServer's ``model``."""
    servers: list[BackgroundServer] = []

    def start(model: str = "digits", defense: str = "none") -> BackgroundServer:
        server = BackgroundServer(gateway_app(digits_mlserver.url, model, defense)).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(
    ("defense", "label_mode"), [("none", "hard"), ("none", "soft"), ("recommended", "soft")]
)
def test_attack_through_the_gateway_gets_what_it_gets_from_our_server(
    gateway: Callable[..., BackgroundServer],
    live_server: Callable[..., BackgroundServer],
    victim_path: Path,
    tmp_path: Path,
    defense: str,
    label_mode: str,
) -> None:
    """The same attack, same seed, through the gateway in front of MLServer (minimal config:
    the gateway asks for ``predict_proba``) and against our own server with the same model and
    preset: the same fidelity (±0.02), soft labels really probabilities."""
    through = gateway("digits", defense).url
    target = ["--target", through, "--api-key", KEYS["alice"]]
    ours = live_server(defense, task="digits").url
    same_attack_as_ours(tmp_path, "gateway", target, ours, KEYS["alice"], victim_path, label_mode)


def test_tritonclient_drives_the_gateways_front_door(
    gateway: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    server = gateway("digits", "none")
    X = digits_task().data.X_eval[:5]
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert triton.is_server_live() and triton.is_model_ready("digits")
        given = httpclient.InferInput("input-0", list(X.shape), "FP32")
        given.set_data_from_numpy(X.astype(np.float32), binary_data=True)
        asked = [httpclient.InferRequestedOutput("predict_proba", binary_data=True)]
        result = triton.infer("digits", [given], outputs=asked, headers=auth())
        np.testing.assert_allclose(
            result.as_numpy("predict_proba"), victim.model.predict_proba(X), atol=1e-12
        )
    finally:
        triton.close()


def test_a_model_mlserver_stops_serving_is_a_502(
    digits_mlserver: MLServer, gateway: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    """MLServer unloads the model the gateway guards: 502 naming the upstream, audited as
    failed; loaded again, the same gateway answers."""
    digits_mlserver.add("doomed", victim.model)
    server = gateway("doomed", "none")
    rows = digits_task().data.X_eval[:3].tolist()
    assert httpx.post(f"{server.url}/v1/predict", json={"inputs": rows}, headers=auth()).is_success
    repository = f"{digits_mlserver.url}/v2/repository/models/doomed"
    assert httpx.post(f"{repository}/unload", timeout=60).status_code == 200
    failed = httpx.post(f"{server.url}/v1/predict", json={"inputs": rows}, headers=auth())
    assert failed.status_code == 502
    assert failed.json()["detail"] == "upstream model 'doomed' (oip-v2) answered HTTP 404"
    outcomes = [e.outcome for e in server.app.state.store.audit_entries()]
    assert outcomes == ["answered", "failed"]
    assert httpx.post(f"{repository}/load", timeout=60).status_code == 200
    again = httpx.post(f"{server.url}/v1/predict", json={"inputs": rows}, headers=auth())
    assert again.status_code == 200
