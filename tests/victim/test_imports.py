"""load_model: our skops files, plain skops files made elsewhere, and ONNX classifiers."""

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import skops.io as sio
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from modeltheft.errors import ConfigError, ModelIntegrityError
from modeltheft.tasks import Task, get_task
from modeltheft.victim import load_model, save_victim, train_victim
from modeltheft.victim.fast import check_rows, fast_model
from modeltheft.victim.onnx import OnnxClassifier, export_onnx, onnx_predict
from modeltheft.victim.store import file_sha256

IRIS = load_iris()


@pytest.fixture(scope="module")
def cancer_forest() -> RandomForestClassifier:
    X, y = load_breast_cancer(return_X_y=True)
    return RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def iris_lr() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(IRIS.data, IRIS.target)


def write_onnx(model: object, path: Path, zipmap: bool = True, width: int | None = 4) -> Path:
    """What an outside user does: skl2onnx, then save the bytes."""
    options = None if zipmap else {id(model): {"zipmap": False}}
    types = [("X", FloatTensorType([None, width]))]
    path.write_bytes(to_onnx(model, initial_types=types, options=options).SerializeToString())
    return path


def test_a_plain_skops_file_is_imported_with_a_warning_and_its_hash(
    cancer_forest: RandomForestClassifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "forest.skops"
    sio.dump(cancer_forest, path)
    with caplog.at_level(logging.WARNING, logger="modeltheft.victim"):
        loaded = load_model(path)
    digest = file_sha256(path)
    assert loaded.metadata["sha256"] == digest and loaded.metadata["imported"] is True
    assert any(digest in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert loaded.task.n_features == 30 and loaded.task.classes.tolist() == [0, 1]
    assert not loaded.task.bounded and loaded.task.data is None
    X = load_breast_cancer().data[:10]
    assert np.array_equal(loaded.model.predict_proba(X), cancer_forest.predict_proba(X))


def test_a_given_task_is_used_and_checked(
    cancer_forest: RandomForestClassifier, tmp_path: Path
) -> None:
    path = tmp_path / "forest.skops"
    sio.dump(cancer_forest, path)
    loaded = load_model(path, "breast-cancer")
    assert loaded.task.name == "breast-cancer" and loaded.task.bounded
    assert loaded.task.feature_names[0] == "mean radius" and loaded.task.data is not None
    with pytest.raises(ConfigError, match="the model expects 30 features, task 'wine' has 13"):
        load_model(path, "wine")


def test_our_metadata_names_the_task(tmp_path: Path) -> None:
    trained = train_victim("lr", "wine")
    assert trained.metadata["task"] == "wine"
    assert trained.metadata["task_schema"]["n_features"] == 13
    path = tmp_path / "wine.skops"
    save_victim(trained.model, path, trained.metadata)
    loaded = load_model(path)
    assert loaded.task.name == "wine" and loaded.task.data is not None
    assert loaded.metadata["family"] == "lr"


def test_a_toml_task_model_keeps_its_schema(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 5, size=(90, 3))
    y = np.where(X[:, 0] + X[:, 1] > 5, "high", "low")
    lines = ["a,b,c,kind"] + [f"{r[0]},{r[1]},{r[2]},{k}" for r, k in zip(X, y, strict=True)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    toml = tmp_path / "mine.toml"
    toml.write_text('label = "kind"\nbounds = "train"\n[data]\ntrain = "train.csv"\n')
    trained = train_victim("lr", str(toml))
    path = tmp_path / "mine.skops"
    save_victim(trained.model, path, trained.metadata)
    with_rows = load_model(path).task  # the task file is reloaded: its rows come back
    assert with_rows.data is not None and len(with_rows.data.y_eval) == 27
    (tmp_path / "train.csv").unlink()  # the schema in the metadata is enough to serve it
    loaded = load_model(path)
    assert loaded.task.name == "mine" and loaded.task.feature_names == ("a", "b", "c")
    assert loaded.task.classes.tolist() == ["high", "low"]
    assert loaded.task.upper[0] == pytest.approx(X[:, 0].max(), abs=0.1)
    assert loaded.task.data is None


@pytest.mark.parametrize("zipmap", [True, False])
def test_an_onnx_classifier_answers_like_the_model_it_came_from(
    iris_lr: LogisticRegression, tmp_path: Path, zipmap: bool
) -> None:
    path = write_onnx(iris_lr, tmp_path / "iris.onnx", zipmap=zipmap)
    loaded = load_model(path)
    assert loaded.metadata["format"] == "onnx" and loaded.metadata["sha256"] == file_sha256(path)
    model = loaded.model
    assert model.n_features_in_ == 4 and model.classes_.tolist() == [0, 1, 2]
    assert np.array_equal(model.predict(IRIS.data), iris_lr.predict(IRIS.data))
    assert np.abs(model.predict_proba(IRIS.data) - iris_lr.predict_proba(IRIS.data)).max() < 1e-5
    assert loaded.task.n_features == 4 and loaded.task.classes.tolist() == [0, 1, 2]
    assert fast_model(model).engine == "onnx"


def test_string_classes_come_from_the_onnx_graph(tmp_path: Path) -> None:
    names = IRIS.target_names[IRIS.target]
    model = LogisticRegression(max_iter=1000).fit(IRIS.data, names)
    loaded = load_model(write_onnx(model, tmp_path / "s.onnx"))
    assert loaded.model.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert np.array_equal(loaded.model.predict(IRIS.data), model.predict(IRIS.data))
    assert loaded.task.classes.tolist() == ["setosa", "versicolor", "virginica"]


def test_a_dynamic_width_needs_the_task(iris_lr: LogisticRegression, tmp_path: Path) -> None:
    path = write_onnx(iris_lr, tmp_path / "dyn.onnx", width=None)
    with pytest.raises(ConfigError, match=r"dynamic input width.*--task"):
        load_model(path)
    loaded = load_model(path, "iris")
    assert loaded.model.n_features_in_ == 4 and loaded.task.name == "iris"
    assert np.array_equal(loaded.model.predict(IRIS.data), iris_lr.predict(IRIS.data))


def softmax_graph(path: Path, outputs: str = "probabilities") -> Path:
    """A hand-made 3-feature, 2-class ONNX model with no class labels in the graph."""
    weights = helper.make_tensor("W", TensorProto.FLOAT, [3, 2], [1, -1, 2, 0, 0, 1])
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Z"])]
    outs = []
    if outputs in ("probabilities", "both"):
        nodes.append(helper.make_node("Softmax", ["Z"], ["P"], axis=1))
        outs.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, [None, 2]))
    if outputs in ("labels", "both"):  # labels alone: no probabilities to serve
        nodes.append(helper.make_node("ArgMax", ["Z"], ["L"], axis=1, keepdims=0))
        outs.append(helper.make_tensor_value_info("L", TensorProto.INT64, [None]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        outs,
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_an_onnx_graph_without_labels_answers_0_to_k_or_the_tasks(tmp_path: Path) -> None:
    path = softmax_graph(tmp_path / "plain.onnx", outputs="both")
    loaded = load_model(path)
    assert loaded.model.classes_.tolist() == [0, 1]
    X = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert loaded.model.predict(X).tolist() == [0, 1]
    assert np.allclose(loaded.model.predict_proba(X).sum(axis=1), 1)
    schema = {
        "name": "yes-no",
        "features": [{"name": n} for n in "abc"],
        "classes": ["no", "yes"],
    }
    named = load_model(path, Task.from_schema(schema))
    assert named.model.predict(X).tolist() == ["no", "yes"]
    assert named.task.classes.tolist() == ["no", "yes"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a model at all", "not a valid ONNX model"),
        (b"PK\x03\x04broken", "cannot load"),
    ],
)
def test_corrupt_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelIntegrityError, match=message) as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_an_onnx_model_without_probabilities_is_refused(tmp_path: Path) -> None:
    path = softmax_graph(tmp_path / "labels.onnx", outputs="labels")
    with pytest.raises(ModelIntegrityError, match="no probability output"):
        load_model(path)


def test_a_skops_name_on_other_bytes_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "x.skops"
    path.write_bytes(b"hello")
    with pytest.raises(ModelIntegrityError, match="not a skops archive"):
        load_model(path)
    with pytest.raises(ModelIntegrityError, match="model file not found"):
        load_model(tmp_path / "missing.onnx")


class Unknown:
    """A type nobody trusts."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - never loaded
        return X


def test_a_plain_skops_regressor_or_untrusted_type_is_refused(tmp_path: Path) -> None:
    regressor = LinearRegression().fit(IRIS.data, IRIS.target)
    sio.dump(regressor, tmp_path / "r.skops")
    with pytest.raises(ModelIntegrityError, match="predict_proba"):
        load_model(tmp_path / "r.skops")
    sio.dump(Unknown(), tmp_path / "m.skops")
    with pytest.raises(ModelIntegrityError, match="untrusted types"):
        load_model(tmp_path / "m.skops")


def test_export_uses_the_models_width(tmp_path: Path) -> None:
    trained = train_victim("lr", "wine")
    path = export_onnx(trained.model, tmp_path / "wine.onnx")
    X = get_task("wine").data.X_eval
    agree = np.mean(onnx_predict(path, X) == trained.model.predict(X))
    assert agree > 0.95  # float32 input
    assert OnnxClassifier(path).n_features_in_ == 13


def test_check_rows_follow_the_task() -> None:
    wine = get_task("wine")
    rows = check_rows(wine)
    assert rows.shape == (256 + len(wine.data.X_eval), 13)
    assert (rows >= wine.lower).all() and (rows <= wine.upper).all()
    schema_only = Task.from_schema(
        {"features": [{"name": "a"}, {"name": "b", "lower": 0}], "classes": [0, 1]}
    )
    rows = check_rows(schema_only)
    assert rows.shape == (256, 2) and (rows[:, 1] >= 0).all() and (rows[:, 0] < 0).any()
    digits = check_rows(get_task("digits"))
    assert np.array_equal(digits[:256], np.random.default_rng(0).random((256, 64)))


@pytest.mark.parametrize("holdout", [False, True])
def test_a_held_out_victim_is_served_with_its_own_training_rows(
    tmp_path: Path, holdout: bool
) -> None:
    trained = train_victim("lr", "wine", holdout=holdout)
    path = tmp_path / "wine.skops"
    save_victim(trained.model, path, trained.metadata)
    task = load_model(path).task
    full = get_task("wine").data
    X, _ = full.victim_rows(holdout=holdout)
    np.testing.assert_array_equal(task.data.X_train, X)
    assert (len(task.data.X_train) < len(full.X_train)) == (holdout and full.n_public > 0)
