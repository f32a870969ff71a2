"""Oracles find out what they query: width, datatype and classes, from the API or the answers."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import ClassifierMixin

from modeltheft.errors import ConfigError, OracleError
from modeltheft.evaluation.suspect import suspect_predictor
from modeltheft.oracle import HttpOracle, QueryLog, make_oracle
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import Task, get_task
from tests.conftest import KEYS
from tests.oracle.standins import (
    IRIS_NAMES,
    error,
    fitted_models,
    kserve_app,
    oip_app,
    ours_app,
)

IRIS = get_task("iris").without_data()
IRIS_NAMED = IRIS.with_classes(IRIS_NAMES)


@pytest.fixture(scope="module")
def models() -> dict[str, ClassifierMixin]:
    return fitted_models()


@pytest.fixture(scope="module")
def servers(models: dict[str, ClassifierMixin]) -> Iterator[dict[str, BackgroundServer]]:
    running = {
        "oip-v2": BackgroundServer(oip_app(models)).start(),
        "kserve-v1": BackgroundServer(kserve_app(models)).start(),
        "ours": BackgroundServer(ours_app(models["iris-names"], IRIS_NAMED)).start(),
    }
    yield running
    for server in running.values():
        server.stop()


def eval_rows(task: str, n: int) -> np.ndarray:
    data = get_task(task).data
    assert data is not None
    return np.array(data.X_eval[:n])


def values(oracle: Any, labels: np.ndarray) -> np.ndarray:
    return oracle.discover().classes[labels]


def test_oip_metadata_width_is_what_is_sent(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("oip-v2")
    oracle = make_oracle("oip-v2", server.url, budget=20, model_name="bc")
    task = oracle.discover()
    assert task.n_features == 30 and task.classes.tolist() == [0, 1]
    X = eval_rows("breast-cancer", 12)
    answers = oracle.query(X)
    (body,) = server.app.state.bodies
    assert body["inputs"][0]["shape"] == [12, 30] and len(body["inputs"][0]["data"]) == 360
    assert np.array_equal(values(oracle, answers.labels), models["bc"].predict(X))
    assert np.allclose(answers.probabilities, models["bc"].predict_proba(X))
    with pytest.raises(ConfigError, match=r"shape \[2, 64\].*takes 30 features"):
        oracle.query(np.zeros((2, 64)))


def test_width_mismatch_with_the_task_is_a_one_line_config_error(
    serve: Callable[..., BackgroundServer],
) -> None:
    server = serve("oip-v2")
    digits = get_task("digits").without_data()
    oracle = make_oracle("oip-v2", server.url, budget=5, model_name="bc", task=digits)
    with pytest.raises(ConfigError) as caught:
        oracle.query(np.zeros((1, 64)))
    message = str(caught.value)
    assert "64 features" in message and "takes 30" in message and "\n" not in message
    assert server.app.state.rows == 0


@pytest.mark.parametrize("task", [None, IRIS])
def test_three_class_model_over_oip_with_probabilities(
    task: Task | None, models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("oip-v2")
    oracle = make_oracle("oip-v2", server.url, budget=30, model_name="iris", task=task)
    X = eval_rows("iris", 30)
    answers = oracle.query(X)
    assert answers.probabilities.shape == (30, 3)
    assert oracle.task.classes.tolist() == [0, 1, 2]
    assert np.array_equal(values(oracle, answers.labels), models["iris"].predict(X))
    if task is not None:
        assert oracle.task.feature_names == IRIS.feature_names  # the given task's names win


def test_string_labels_over_oip_are_learned_in_first_seen_order(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("oip-v2", outputs=("predict",))
    oracle = make_oracle("oip-v2", server.url, budget=45, model_name="iris-names")
    assert not oracle.discover().classes_known  # labels only: nothing names the classes yet
    X = eval_rows("iris", 45)
    expected = models["iris-names"].predict(X)
    first = oracle.query(X[:1])
    assert not oracle.task.classes_known and first.labels.tolist() == [0]  # one class is no task
    answers = oracle.query(X[1:])
    labels = np.concatenate([first.labels, answers.labels])
    assert oracle.task.classes.tolist() == list(dict.fromkeys(expected.tolist()))
    assert np.array_equal(values(oracle, labels), expected)


def test_string_labels_with_probabilities_name_the_columns(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("oip-v2")
    oracle = make_oracle("oip-v2", server.url, budget=45, model_name="iris-names")
    assert oracle.discover().n_classes == 0  # 3 columns declared, their names not yet seen
    X = eval_rows("iris", 45)
    answers = oracle.query(X)
    assert oracle.task.classes.tolist() == IRIS_NAMES.tolist()  # scikit-learn's sorted order
    assert np.array_equal(values(oracle, answers.labels), models["iris-names"].predict(X))
    assert np.allclose(answers.probabilities, models["iris-names"].predict_proba(X))


@pytest.mark.parametrize("kind", ["labels", "proba"])
def test_kserve_string_labels_map_through_the_task(
    kind: str, models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("kserve-v1", kind=kind)
    model = models["iris-names"]
    oracle = make_oracle(
        "kserve-v1", server.url, budget=30, model_name="iris-names", task=IRIS_NAMED
    )
    X = eval_rows("iris", 30)
    answers = oracle.query(X)
    assert np.array_equal(values(oracle, answers.labels), model.predict(X))
    wrong = IRIS.with_classes(["a", "b", "c"])
    stranger = make_oracle("kserve-v1", server.url, budget=1, model_name="iris-names", task=wrong)
    if kind == "labels":
        with pytest.raises(OracleError, match=r"label '\w+' of row 0 is not one of the classes"):
            stranger.query(X[:1])


def test_kserve_needs_a_task(serve: Callable[..., BackgroundServer]) -> None:
    server = serve("kserve-v1")
    oracle = make_oracle("kserve-v1", server.url, budget=1, model_name="iris")
    with pytest.raises(ConfigError, match=r"^protocol kserve-v1 does not describe the model: give"):
        oracle.query(np.zeros((1, 4)))
    assert server.app.state.calls == 0


def test_our_api_publishes_its_task(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("ours")
    oracle = make_oracle("modeltheft", server.url, budget=20, api_key="k")
    task = oracle.discover()
    assert task.feature_names == IRIS.feature_names and task.bounded
    assert task.classes.tolist() == IRIS_NAMES.tolist()
    X = eval_rows("iris", 20)
    answers = oracle.query(X)
    assert np.array_equal(values(oracle, answers.labels), models["iris-names"].predict(X))
    assert answers.probabilities.shape == (20, 3)
    # An older server: input_shape and classes only, so generic names and no bounds.
    old = make_oracle("modeltheft", serve("ours", publish_task=False).url, budget=1, api_key="k")
    task = old.discover()
    assert task.feature_names == ("x0", "x1", "x2", "x3") and not task.bounded
    assert task.classes.tolist() == IRIS_NAMES.tolist()


def test_discovery_against_the_real_service(live_server: Callable[..., BackgroundServer]) -> None:
    server = live_server("none")
    oracle = HttpOracle(server.url, KEYS["alice"], budget=5)
    task = oracle.discover()
    assert task.n_features == 64 and task.classes.tolist() == list(range(10))
    answers = oracle.query(np.random.default_rng(0).random((5, 64)))
    assert answers.probabilities.shape == (5, 10)
    wrong = make_oracle("modeltheft", server.url, budget=1, api_key="k", task=IRIS)
    with pytest.raises(ConfigError, match=r"task 'iris' has 4 features but .* takes 64"):
        wrong.discover()


def test_transient_discovery_failures_are_retried(
    serve: Callable[..., BackgroundServer],
) -> None:
    server = serve("ours", info_script=[error(503, "warming up")] * 2)
    blind = make_oracle("modeltheft", server.url, budget=1, api_key="k", retries=0)
    with pytest.raises(OracleError, match="answered 503: warming up"):
        blind.discover()
    # With a task the oracle goes on, and asks the API again at the next call.
    oracle = make_oracle(
        "modeltheft", server.url, budget=5, api_key="k", retries=0, task=IRIS_NAMED
    )
    assert oracle.discover().classes.tolist() == IRIS_NAMES.tolist() and not oracle._settled
    assert len(oracle.query(eval_rows("iris", 5)).labels) == 5
    assert oracle._settled and not server.app.state.info_script
    digits = get_task("digits").without_data()
    late = make_oracle("modeltheft", server.url, budget=5, api_key="k", retries=0, task=digits)
    server.app.state.info_script = [error(502, "bad gateway")]
    late.discover()
    with pytest.raises(ConfigError, match="task 'digits' has 64 features"):
        late.discover()


def test_a_resumed_log_gives_identical_answers_with_learned_classes(
    serve: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    server = serve("oip-v2", outputs=("predict",))
    path = tmp_path / "q.jsonl"
    X = eval_rows("iris", 40)
    first = make_oracle(
        "oip-v2", server.url, budget=40, model_name="iris-names", log=QueryLog(path)
    )
    a = [first.query(X[i : i + 5]).labels for i in range(0, 25, 5)]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["label"] for r in records} <= set(IRIS_NAMES.tolist())  # class values, not indices
    second = make_oracle(
        "oip-v2", server.url, budget=40, model_name="iris-names", log=QueryLog(path)
    )
    b = [second.query(X[i : i + 5]).labels for i in range(0, 40, 5)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert second.reused == 25 and server.app.state.rows == 25 + 15
    assert second.task.classes.tolist()[: first.n_classes] == first.task.classes.tolist()


def test_oip_sends_the_datatype_the_metadata_declares(
    serve: Callable[..., BackgroundServer],
) -> None:
    server = serve("oip-v2", input_datatype="INT64")
    X = eval_rows("iris", 3)
    make_oracle("oip-v2", server.url, budget=3, model_name="iris").query(X)
    tensor = server.app.state.bodies[0]["inputs"][0]
    assert (
        tensor["datatype"] == "INT64" and tensor["data"] == np.rint(X).astype(int).ravel().tolist()
    )
    explicit = make_oracle("oip-v2", server.url, budget=3, model_name="iris", datatype="FP32")
    explicit.query(X)
    assert server.app.state.bodies[1]["inputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize(
    ("protocol", "options", "message"),
    [
        ("oip-v2", {"retries": -1}, r"protocol 'oip-v2': retries must be an integer in \[0, inf\)"),
        ("kserve-v1", {"timeout": 0}, r"timeout must be a number in \(0, inf\), got 0"),
        ("oip-v2", {"on_rate_limit": "drop"}, "on_rate_limit must be one of 'count', 'wait'"),
        ("oip-v2", {"datatype": "FP16"}, "datatype must be one of 'FP64'"),
        ("kserve-v1", {"datatype": "FP32"}, "datatype is an option of protocol 'oip-v2'"),
        ("oip-v2", {"verify": False}, "protocol 'oip-v2' has no option verify"),
        ("kserve-v1", {"input_name": "x"}, "protocol 'kserve-v1' has no option input_name"),
        ("oip-v2", {"task": "iris"}, "task must be a Task"),
    ],
)
def test_make_oracle_declares_its_parameters(
    protocol: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_oracle(protocol, "http://127.0.0.1:9", budget=1, model_name="m", **options)


def test_suspect_api_predictions_are_class_values(
    models: dict[str, ClassifierMixin], serve: Callable[..., BackgroundServer]
) -> None:
    server = serve("ours")
    X = eval_rows("iris", 10)
    predict = suspect_predictor(server.url, api_key="k", batch=4)
    assert predict(X).tolist() == models["iris-names"].predict(X).tolist()
    learned = serve("oip-v2", outputs=("predict",))
    predict = suspect_predictor(learned.url, protocol="oip-v2", model_name="iris-names")
    assert predict(X).tolist() == models["iris-names"].predict(X).tolist()


def test_declared_probability_columns_must_match_the_tasks_classes(
    serve: Callable[..., BackgroundServer],
) -> None:
    server = serve("oip-v2")
    bc = get_task("breast-cancer").without_data()
    oracle = make_oracle("oip-v2", server.url, budget=1, model_name="iris", task=bc)
    with pytest.raises(ConfigError, match="task 'breast-cancer' has 30 features but"):
        oracle.discover()
    two = IRIS.with_classes([0, 1])
    oracle = make_oracle("oip-v2", server.url, budget=1, model_name="iris", task=two)
    with pytest.raises(ConfigError, match=r"has 2 classes but .* declares 3 probability columns"):
        oracle.discover()
