"""OIP v2 and KServe v1 oracles against small conformant servers over real loopback HTTP."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import Response

from modeltheft.cli.app import main
from modeltheft.errors import BudgetExhausted, ConfigError, OracleError
from modeltheft.oracle import (
    HttpOracle,
    HttpOracleBase,
    KServeV1Oracle,
    OipV2Oracle,
    QueryLog,
    make_oracle,
)
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import get_task
from modeltheft.victim import LoadedVictim
from tests.oracle.standins import error, kserve_app, oip_app

MODEL = "digits"
SECRET = "server-key-0123"
DIGITS = get_task("digits").without_data()


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 64))


@pytest.fixture(scope="module")
def servers(victim: LoadedVictim) -> Iterator[dict[str, BackgroundServer]]:
    """One live server per protocol for the whole module (each start and stop costs ~0.2 s)."""
    running = {
        "oip-v2": BackgroundServer(oip_app({MODEL: victim.model})).start(),
        "kserve-v1": BackgroundServer(kserve_app({MODEL: victim.model})).start(),
    }
    yield running
    for server in running.values():
        server.stop()


def connect(protocol: str, server: BackgroundServer, budget: int, **options: Any) -> HttpOracleBase:
    """An oracle on the digits model; KServe v1 does not describe its model: it gets the task."""
    task = DIGITS if protocol == "kserve-v1" else None
    return make_oracle(protocol, server.url, budget=budget, model_name=MODEL, task=task, **options)


def predicted(oracle: HttpOracleBase, labels: np.ndarray) -> np.ndarray:
    """The class values of answered labels (indices into the oracle's task)."""
    return oracle.discover().classes[labels]


BOTH = pytest.mark.parametrize("protocol", ["oip-v2", "kserve-v1"])


def test_oip_answers_equal_the_victims(
    victim: LoadedVictim, serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("oip-v2")
    oracle = OipV2Oracle(server.url, MODEL, budget=20)
    X = rows(12)
    answers = oracle.query(X)
    oracle.close()
    assert np.array_equal(answers.labels, victim.model.predict(X))
    assert np.allclose(answers.probabilities, victim.model.predict_proba(X))
    assert not answers.refused.any()
    (body,) = server.app.state.bodies
    assert body["outputs"] == [{"name": "predict_proba"}, {"name": "predict"}]
    assert body["inputs"][0]["shape"] == [12, 64] and body["inputs"][0]["datatype"] == "FP64"
    assert body["inputs"][0]["name"] == "input-0" and len(body["inputs"][0]["data"]) == 12 * 64


def test_oip_fp32_and_labels_only_fallbacks(
    victim: LoadedVictim, serve: Callable[..., BackgroundServer]
) -> None:
    X = rows(8, seed=1)
    server = serve("oip-v2", outputs=("predict",))
    fp32 = OipV2Oracle(server.url, MODEL, budget=8, datatype="FP32")
    answers = fp32.query(X)
    assert answers.probabilities is None
    # Labels only, no task: the classes are learned in the order first seen.
    expected = victim.model.predict(X.astype(np.float32))
    assert np.array_equal(predicted(fp32, answers.labels), expected)
    assert fp32.task.classes.tolist() == list(dict.fromkeys(expected.tolist()))
    body = server.app.state.bodies[0]
    assert body["outputs"] == [{"name": "predict"}] and body["inputs"][0]["datatype"] == "FP32"
    # No metadata: the width must come from a task; no outputs named, the default is read.
    blind = serve("oip-v2", metadata=False)
    with pytest.raises(ConfigError, match=r"no model metadata.*give --task"):
        OipV2Oracle(blind.url, MODEL, budget=8).query(X)
    answers = OipV2Oracle(blind.url, MODEL, budget=8, task=DIGITS).query(X)
    assert "outputs" not in blind.app.state.bodies[0]
    assert answers.probabilities is None
    assert np.array_equal(answers.labels, victim.model.predict(X))  # digits: index == class
    with pytest.raises(ConfigError, match="FP16"):
        OipV2Oracle(server.url, MODEL, budget=1, datatype="FP16")


@pytest.mark.parametrize("kind", ["proba", "labels", "float-labels"])
def test_kserve_answers_equal_the_victims(
    kind: str, victim: LoadedVictim, serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("kserve-v1", kind=kind)
    oracle = KServeV1Oracle(server.url, MODEL, budget=10, task=DIGITS)
    X = rows(10, seed=2)
    answers = oracle.query(X)
    assert np.array_equal(answers.labels, victim.model.predict(X))
    if kind == "proba":
        assert np.allclose(answers.probabilities, victim.model.predict_proba(X))
    else:
        assert answers.probabilities is None
    assert server.app.state.bodies[0] == {"instances": X.tolist()}


@BOTH
def test_budget_is_never_exceeded(protocol: str, serve: Callable[..., BackgroundServer]) -> None:
    server = serve(protocol)
    oracle = connect(protocol, server, budget=5)
    oracle.query(rows(4))
    with pytest.raises(BudgetExhausted, match="only 1 left"):
        oracle.query(rows(3, seed=1))
    assert server.app.state.rows == 4 and oracle.spent == 4


@BOTH
def test_the_log_resumes_without_sending_again(
    protocol: str,
    serve: Callable[..., BackgroundServer],
    tmp_path: Path,
) -> None:
    server = serve(protocol)
    path = tmp_path / "q.jsonl"
    X = rows(9, seed=3)
    first = connect(protocol, server, budget=9, log=QueryLog(path))
    a = first.query(X[:6])
    first.close()
    second = connect(protocol, server, budget=9, log=QueryLog(path))
    b = second.query(X[:6])
    second.query(X[6:])
    second.close()
    assert server.app.state.rows == 9  # only the 3 new rows reached the server the second time
    assert second.reused == 6 and second.spent == 9
    assert np.array_equal(a.labels, b.labels)
    assert len(path.read_text().splitlines()) == 9


@BOTH
def test_error_bodies_and_5xx_retries(
    protocol: str, serve: Callable[..., BackgroundServer]
) -> None:
    server = serve(protocol)
    state = server.app.state
    oracle = connect(protocol, server, budget=10, retries=2)
    state.script = [error(400, "input tensor has the wrong shape")]
    with pytest.raises(OracleError, match="400: input tensor has the wrong shape"):
        oracle.query(rows(1))
    assert state.calls == 1  # a 4xx is not retried
    state.calls = 0
    state.script = [error(500, "model crashed")] * 3
    with pytest.raises(OracleError, match="500: model crashed"):
        oracle.query(rows(1, seed=1))
    assert state.calls == 3  # one try and two retries
    state.calls = 0
    state.script = [error(503, "warming up")] * 2
    assert not oracle.query(rows(1, seed=2)).refused.any()
    assert state.calls == 3
    assert oracle.spent == 1  # a request that ended in an error is not charged


@BOTH
def test_429_is_counted_or_waited_out(
    protocol: str, serve: Callable[..., BackgroundServer]
) -> None:
    server = serve(protocol)
    state = server.app.state
    limited = error(429, "rate limited", {"Retry-After": "0"})
    counting = connect(protocol, server, budget=10)
    state.script = [limited]
    answers = counting.query(rows(3))
    assert answers.refused.all() and answers.probabilities is None
    assert counting.refused == 3 and counting.answered == 0 and state.rows == 0
    waiting = connect(protocol, server, budget=10, on_rate_limit="wait", max_waits=2)
    state.calls = 0
    state.script = [limited, limited]
    answers = waiting.query(rows(3, seed=1))
    assert not answers.refused.any() and state.calls == 3 and waiting.answered == 3
    state.script = [limited] * 3
    assert waiting.query(rows(2, seed=2)).refused.all()  # gives up after max_waits


@BOTH
def test_auth_failures_name_the_status(
    protocol: str, victim: LoadedVictim, serve: Callable[..., BackgroundServer]
) -> None:
    server = serve(protocol, api_key=SECRET)
    with pytest.raises(OracleError, match=r"\(401\).*pass an API key"):
        connect(protocol, server, budget=1).query(rows(1))
    with pytest.raises(OracleError, match=r"rejected the key \(403\)"):
        connect(protocol, server, budget=1, api_key="wrong").query(rows(1))
    answers = connect(protocol, server, budget=1, api_key=SECRET).query(rows(1))
    assert np.array_equal(answers.labels, victim.model.predict(rows(1)))


@pytest.mark.parametrize(
    ("protocol", "body", "message"),
    [
        ("kserve-v1", "not json", "not JSON"),
        ("kserve-v1", {"predictions": [12]}, r"label 12 of row 0 is not one of the classes \(0, 1"),
        ("kserve-v1", {"predictions": [2.5]}, "label 2.5 of row 0 is not a class label"),
        ("kserve-v1", {"predictions": ["3"]}, "label '3' of row 0 is not one of the classes"),
        ("kserve-v1", {"predictions": [[0.5, 0.5]]}, r"shape \[1, 2\], expected \[1, 10\]"),
        ("kserve-v1", {"predictions": [1, 2]}, "asked 1 rows, got 2"),
        ("kserve-v1", {"predicted": [1]}, "no 'predictions'"),
        ("oip-v2", {"outputs": []}, "no 'outputs'"),
        (
            "oip-v2",
            {"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [1, 2]}]},
            "shape",
        ),
        (
            "oip-v2",
            {"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [-1]}]},
            "label -1 of row 0 names none of the 10 probability columns",
        ),
        (
            "oip-v2",
            {"outputs": [{"name": "predict_proba", "shape": [1, 3], "data": [0.2, 0.3, 0.5]}]},
            r"expected \[1, 10\]",
        ),
    ],
)
def test_unusable_answers_are_oracle_errors(
    protocol: str,
    body: Any,
    message: str,
    serve: Callable[..., BackgroundServer],
) -> None:
    server = serve(protocol)
    content = body if isinstance(body, str) else json.dumps(body)
    server.app.state.script = [Response(content, 200, media_type="application/json")]
    with pytest.raises(OracleError, match=message):
        connect(protocol, server, budget=1).query(rows(1))


@BOTH
def test_unreachable_target_is_an_oracle_error(protocol: str) -> None:
    url = "http://127.0.0.1:9"
    oracle = make_oracle(protocol, url, budget=1, model_name=MODEL, task=DIGITS, retries=0)
    with pytest.raises(OracleError, match="cannot reach"):
        oracle.query(rows(1))


def test_make_oracle_checks_its_choices() -> None:
    url = "http://127.0.0.1:9"
    assert isinstance(make_oracle("modeltheft", url, budget=1, api_key="k"), HttpOracle)
    assert isinstance(make_oracle("oip-v2", url, budget=1, model_name="m"), OipV2Oracle)
    assert isinstance(make_oracle("kserve-v1", url, budget=1, model_name="m"), KServeV1Oracle)
    with pytest.raises(ConfigError, match=r"'grpc'.*modeltheft, oip-v2, kserve-v1"):
        make_oracle("grpc", url, budget=1)
    with pytest.raises(ConfigError, match="needs a model name"):
        make_oracle("oip-v2", url, budget=1)
    with pytest.raises(ConfigError, match="needs an API key"):
        make_oracle("modeltheft", url, budget=1, model_name="m")
    with pytest.raises(ConfigError, match="http"):
        make_oracle("kserve-v1", "ftp://x", budget=1, model_name="m")


@BOTH
def test_cli_attack_speaks_the_protocol(
    protocol: str,
    serve: Callable[..., BackgroundServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEY", raising=False)
    server = serve(protocol)
    out = tmp_path / "attack"
    argv = ["attack", "--protocol", protocol, "--model-name", MODEL, "--target", server.url]
    if protocol == "kserve-v1":
        argv += ["--task", "digits"]  # KServe v1 does not describe its model
    assert main([*argv, "--budget", "80", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["sent"] == 80 and results["metrics"]["answered"] == 80
    assert server.app.state.rows == 80
    header, *answers = (out / "queries.jsonl").read_text().splitlines()
    assert json.loads(header)["target"] == {
        "protocol": protocol,
        "url": server.url,
        "model_name": MODEL,
    }
    assert len(answers) == 80


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--protocol", "oip-v2"], "--model-name is required with --protocol oip-v2"),
        (["--protocol", "kserve-v1"], "--model-name is required with --protocol kserve-v1"),
        ([], "--api-key (or MODELTHEFT_API_KEY) is required"),
        (["--protocol", "grpc", "--model-name", "m"], "choose one of modeltheft, oip-v2"),
    ],
)
def test_cli_protocol_options_fail_in_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEY", raising=False)
    base = ["attack", "--target", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]
    assert main([*base, *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
