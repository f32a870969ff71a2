"""What a new user met attacking MLServer, Triton-style ONNX servers and reused folders."""

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import ClassifierMixin

from modeltheft.cli.app import main
from modeltheft.errors import ConfigError, OracleError
from modeltheft.oracle import OipV2Oracle, QueryLog, make_oracle
from modeltheft.oracle.log import log_target
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import get_task
from tests.oracle.standins import fitted_models, oip_app, onnx_app

IRIS = get_task("iris").without_data()


@pytest.fixture(scope="module")
def models() -> dict[str, ClassifierMixin]:
    found = fitted_models()
    found["iris-copy"] = found["iris"]  # the same model under another name
    return found


@pytest.fixture(scope="module")
def servers(
    models: dict[str, ClassifierMixin], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, BackgroundServer]]:
    onnx = onnx_app(models, tmp_path_factory.mktemp("onnx"))
    running = {
        "mlserver": BackgroundServer(oip_app(models)).start(),
        "onnx": BackgroundServer(onnx).start(),
    }
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEY", raising=False)


def rows(n: int, seed: int = 0) -> np.ndarray:
    data = get_task("iris").data
    assert data is not None
    return np.random.default_rng(seed).permutation(data.X_eval)[:n]


def attack(
    server: BackgroundServer, out: Path, *extra: str, model: str = "iris", budget: int = 60
) -> list[str]:
    """The argv of a small OIP v2 attack on ``model`` (batches of 10, measured on iris)."""
    return [
        "attack",
        "--protocol",
        "oip-v2",
        "--target",
        server.url,
        "--model-name",
        model,
        "--task",
        "iris",
        "--strategy",
        "uniform",
        "--budget",
        str(budget),
        "--batch-size",
        "10",
        "--out",
        str(out),
        *extra,
    ]


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def answers_in(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    return [line for line in lines if "query" in line]


# --- 1. probabilities asked for, ONNX outputs recognised -------------------------------------


def test_soft_labels_ask_mlservers_minimal_config_for_predict_proba(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    # MLServer's documented minimal model-settings: the metadata lists no outputs, and the
    # sklearn runtime answers `predict` unless the request asks for `predict_proba`.
    server = serve("mlserver", declare_outputs=False)
    out = tmp_path / "soft"
    assert main(attack(server, out, "--label-mode", "soft")) == 0
    assert server.app.state.bodies[0]["outputs"] == [{"name": "predict_proba"}]
    assert all(a["probabilities"] is not None for a in answers_in(out))
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["answered"] == 60 and results["metrics"]["fidelity"] is None


def test_a_refused_or_ignored_probability_output_falls_back_to_labels(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    X = rows(6)
    server = serve("mlserver", outputs=("predict",), declare_outputs=False)
    oracle = make_oracle("oip-v2", server.url, budget=12, model_name="iris", probabilities=True)
    answers = oracle.query(X)
    assert answers.probabilities is None
    assert np.array_equal(oracle.task.classes[answers.labels], models["iris"].predict(X))
    state = server.app.state
    assert state.calls == 2 and "outputs" not in state.bodies[-1]  # refused, then the default
    assert isinstance(oracle, OipV2Oracle) and "refused the output 'predict_proba'" in oracle.note
    oracle.query(rows(6, seed=1))
    assert state.calls == 3  # asked once, not at every batch
    ignoring = serve("mlserver", declare_outputs=False, ignore_outputs=True)
    oracle = make_oracle("oip-v2", ignoring.url, budget=6, model_name="iris", probabilities=True)
    assert oracle.query(X).probabilities is None
    assert "ignored the request for output 'predict_proba'" in oracle.note


def test_onnx_outputs_and_fp32_inputs_are_recognised(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    server = serve("onnx")
    X = rows(8)
    oracle = make_oracle("oip-v2", server.url, budget=8, model_name="iris")
    answers = oracle.query(X)
    model = models["iris"]
    X32 = X.astype(np.float32)
    assert np.array_equal(oracle.task.classes[answers.labels], model.predict(X32))
    assert np.allclose(answers.probabilities, model.predict_proba(X32), atol=1e-6)
    (body,) = server.app.state.bodies
    assert body["outputs"] == [{"name": "probabilities"}, {"name": "label"}]
    assert body["inputs"][0]["name"] == "X" and body["inputs"][0]["datatype"] == "FP32"
    out = tmp_path / "onnx"
    assert main(attack(server, out, "--label-mode", "top-k", "--top-k", "2")) == 0
    assert json.loads((out / "results.json").read_text())["metrics"]["answered"] == 60


# --- 2. --output and --datatype -------------------------------------------------------------


def test_output_option_chooses_what_is_asked_for(
    serve: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve("onnx")
    assert main(attack(server, tmp_path / "a", "--output", "probabilities")) == 0
    assert server.app.state.bodies[0]["outputs"] == [{"name": "probabilities"}]
    assert answers_in(tmp_path / "a")[0]["probabilities"] is not None
    server = serve("onnx")
    argv = attack(server, tmp_path / "b", "--output", "label", "--label-mode", "soft")
    assert main(argv) == 1
    assert "labels only" in one_line(capsys)
    assert server.app.state.bodies[0]["outputs"] == [{"name": "label"}]
    argv = attack(server, tmp_path / "c", "--protocol", "kserve-v1", "--output", "label")
    assert main(argv) == 1
    assert "options of --protocol oip-v2" in one_line(capsys)


def test_datatype_defaults_to_the_metadata_and_can_be_given(
    serve: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The metadata says FP32 (test above); without metadata FP64 is sent, and refused.
    server = serve("onnx", metadata=False)
    assert main(attack(server, tmp_path / "a")) == 1
    err = one_line(capsys)
    assert f"POST {server.url}/v2/models/iris/infer answered 400" in err
    assert "Unexpected input data type" in err and "try --datatype FP32" in err
    assert main(attack(server, tmp_path / "b", "--datatype", "FP32")) == 0
    assert server.app.state.bodies[-1]["inputs"][0]["datatype"] == "FP32"
    assert main(attack(server, tmp_path / "c", "--datatype", "FP16")) == 1
    assert "--datatype takes FP32 or FP64" in one_line(capsys)


# --- 3. fail after the first batch ----------------------------------------------------------


def test_soft_labels_fail_after_the_first_batch_and_keep_it(
    serve: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve("mlserver", outputs=("predict",))  # a server that has labels only
    out = tmp_path / "soft"
    assert main(attack(server, out, "--label-mode", "soft", budget=100)) == 1
    err = one_line(capsys)
    assert "label mode 'soft' needs probabilities" in err and "labels only" in err
    assert "--output NAME" in err and "--label-mode hard" in err
    assert f"the 10 answers paid for are kept in {out / 'queries.jsonl'}" in err
    assert server.app.state.rows == 10  # one batch paid for, not the whole budget
    assert main(attack(server, out, budget=100)) == 0  # a hard-label rerun reuses them
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["reused_from_log"] == 10 and server.app.state.rows == 100
    assert main(attack(server, out, "--label-mode", "soft", budget=100)) == 1
    assert "holds labels-only answers (a hard-label run paid for them)" in one_line(capsys)
    assert server.app.state.rows == 100  # nothing paid for


def test_equation_solving_checks_precision_after_the_first_batch(
    serve: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve("mlserver")  # a forest: vote fractions, zeros and ones
    argv = attack(server, tmp_path / "eq", "--substitute", "equation-solver", budget=100)
    assert main([*argv, "--label-mode", "soft"]) == 1
    err = one_line(capsys)
    assert "not full-precision probabilities" in err and "answers paid for are kept" in err
    assert server.app.state.rows == 10


# --- 4. the query log is tied to its target -------------------------------------------------


def test_the_query_log_refuses_another_targets_reuse_unless_forced(
    serve: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve("mlserver")
    out = tmp_path / "run"
    assert main(attack(server, out)) == 0
    log = out / "queries.jsonl"
    header = json.loads(log.read_text().splitlines()[0])
    assert header == {"target": {"protocol": "oip-v2", "url": server.url, "model_name": "iris"}}
    before = log.read_bytes()
    assert main(attack(server, out, model="iris-copy")) == 1
    err = one_line(capsys)
    assert f"holds 60 answers of oip-v2 {server.url} model 'iris'" in err
    assert "model 'iris-copy'" in err and "--force" in err
    assert log.read_bytes() == before  # nothing stored is lost
    other = serve("onnx")
    assert main(attack(other, out)) == 1  # another URL
    assert f"not of oip-v2 {other.url} model 'iris'" in one_line(capsys)
    assert main(attack(server, out, "--force", model="iris-copy", budget=70)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["reused_from_log"] == 60
    assert main(attack(server, out, model="iris-copy", budget=70)) == 0  # now known to the log
    assert main(attack(server, out, budget=70)) == 0


# --- 5. HTTP errors name the request and hint at the protocol -------------------------------


def test_404s_name_the_request_and_hint_at_the_protocol(
    serve: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve("mlserver")
    oracle = make_oracle("oip-v2", server.url, budget=1, model_name="nope", task=IRIS)
    with pytest.raises(OracleError, match="model 'nope' served there") as caught:
        oracle.query(rows(1))
    assert f"POST {server.url}/v2/models/nope/infer answered 404" in str(caught.value)
    assert "--protocol kserve-v1" in str(caught.value)
    model_url = f"{server.url}/v2/models/iris"
    argv = ["attack", "--protocol", "oip-v2", "--model-name", "iris", "--target", model_url]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    err = one_line(capsys)
    assert f"GET {model_url}/v2/models/iris answered 404" in err
    assert "--target takes the server's base URL" in err
    predict_url = f"{server.url}/v1/predict"
    argv = ["attack", "--target", predict_url, "--api-key", "k", "--out", str(tmp_path / "c")]
    assert main(argv) == 1
    assert "--target takes the server's base URL" in one_line(capsys)
    argv = ["attack", "--target", server.url, "--api-key", "k", "--out", str(tmp_path / "b")]
    assert main(argv) == 1
    err = one_line(capsys)
    assert f"GET {server.url}/v1/model answered 404" in err
    assert "try --protocol oip-v2 --model-name NAME" in err


def test_transport_and_auth_errors_name_the_request(serve: Callable[..., BackgroundServer]) -> None:
    url = "http://127.0.0.1:9"
    oracle = make_oracle("oip-v2", url, budget=1, model_name="iris", task=IRIS, retries=0)
    with pytest.raises(OracleError, match=re.escape(f"cannot reach {url} (POST {url}/v2/models/")):
        oracle.query(rows(1))
    server = serve("onnx", api_key="secret")
    oracle = make_oracle("oip-v2", server.url, budget=1, model_name="iris", task=IRIS)
    infer = f"POST {server.url}/v2/models/iris/infer: the API requires credentials (401)"
    with pytest.raises(OracleError, match=re.escape(infer)):
        oracle.query(rows(1))


def test_a_log_knows_its_targets(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    first = log_target("oip-v2", "http://127.0.0.1:1/", "m")
    assert first["url"] == "http://127.0.0.1:1"  # the same server with or without the slash
    log = QueryLog(path, target=first)
    log.append(rows(2), [{"label": 0, "probabilities": None, "refused": False}] * 2)
    assert QueryLog(path, target=first).loaded == 2
    second = log_target("kserve-v1", "http://127.0.0.1:1", "m")
    with pytest.raises(ConfigError, match=r"holds 2 answers of oip-v2 http://127\.0\.0\.1:1 model"):
        QueryLog(path, target=second)
    forced = QueryLog(path, target=second, force=True)
    forced.append(rows(1, seed=1), [{"label": 1, "probabilities": None, "refused": False}])
    assert QueryLog(path, target=second).targets == [first, second]
    # A log written before logs named their targets cannot be checked: it is reused as is.
    old = tmp_path / "old.jsonl"
    old.write_text("".join(line + "\n" for line in path.read_text().splitlines()[1:2]))
    assert QueryLog(old, target=second).loaded == 1
