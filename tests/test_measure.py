"""The one place that measures: copies on a task's evaluation rows, honest clients, records."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import ConfigError
from modeltheft.evaluation.metrics import accuracy, confusion_matrix, fidelity, same
from modeltheft.experiments.results import RunRecord, task_info
from modeltheft.measure import (
    CopyEvaluator,
    EvalRows,
    agreement,
    eval_rows,
    evaluate_copy,
    honest_client,
)
from modeltheft.tasks import Task, TaskData, get_task
from modeltheft.victim import LoadedVictim


class Constant:
    """A 'model' that always answers one label."""

    def __init__(self, label: object) -> None:
        self.label = label

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label)


@pytest.fixture(scope="module")
def wine() -> Task:
    return get_task("wine")


@pytest.fixture(scope="module")
def wine_victim(wine: Task) -> RandomForestClassifier:
    data = wine.data
    assert data is not None
    return RandomForestClassifier(n_estimators=30, random_state=0).fit(data.X_train, data.y_train)


def test_a_copy_is_measured_on_the_digits_evaluation_rows(victim: LoadedVictim) -> None:
    task = get_task("digits")
    assert evaluate_copy(victim.model, task, victim.model) == {
        "accuracy": pytest.approx(victim.metadata["test_accuracy"]),
        "fidelity": 1.0,
    }
    three = evaluate_copy(Constant(3), task, victim.model)
    assert three["accuracy"] == pytest.approx(np.mean(task.data.y_eval == 3))  # type: ignore[union-attr]
    assert three["fidelity"] == pytest.approx(np.mean(victim.model.predict(task.data.X_eval) == 3))  # type: ignore[union-attr]
    assert set(evaluate_copy(Constant(3), task)) == {"accuracy"}  # no victim, no fidelity


def test_a_copy_is_measured_on_a_tabular_tasks_own_rows(
    wine: Task, wine_victim: RandomForestClassifier
) -> None:
    data = wine.data
    assert data is not None
    copy = LogisticRegression(max_iter=5000).fit(data.X_public, wine_victim.predict(data.X_public))
    scores = evaluate_copy(copy, wine, wine_victim)
    predicted = copy.predict(data.X_eval)
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == data.y_eval))
    assert scores["fidelity"] == pytest.approx(
        np.mean(predicted == wine_victim.predict(data.X_eval))
    )
    assert len(eval_rows(wine)) == len(data.y_eval) == 54
    with pytest.raises(ConfigError, match="schema only"):
        evaluate_copy(copy, wine.without_data(), wine_victim)


def test_labels_are_compared_as_class_values_strings_included() -> None:
    assert same(["a", "b", "c"], np.array(["a", "x", "c"])).tolist() == [True, False, True]
    assert same(np.array([1, 2]), np.array(["1", "3"])).tolist() == [True, False]
    assert accuracy(np.array(["yes", "no"]), np.array(["yes", "yes"])) == 0.5
    assert fidelity(np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    names = np.where(X[:, 0] > 0, "high", "low")
    task = Task(
        name="strings",
        feature_names=("a", "b", "c"),
        lower=np.full(3, -5.0),
        upper=np.full(3, 5.0),
        classes=np.array(["high", "low"]),
        data=TaskData(X[:40], names[:40], X[40:], names[40:]),
    )
    model = LogisticRegression().fit(X[:40], names[:40])
    right = np.mean(model.predict(X[40:]) == names[40:])
    assert right > 0.8
    assert evaluate_copy(model, task, model) == {"accuracy": right, "fidelity": 1.0}
    assert evaluate_copy(Constant("low"), task)["accuracy"] == np.mean(names[40:] == "low")


def test_agreement_and_confusion() -> None:
    victim = np.array([0, 0, 1, 1, 2])
    stolen = np.array([0, 1, 1, 1, -1])  # -1: a refused row, in no column
    assert confusion_matrix(victim, stolen, np.array([0, 1, 2])) == [
        [1, 1, 0],
        [0, 2, 0],
        [0, 0, 0],
    ]
    found = agreement(stolen, victim, np.array([0, 1, 2, 3]))
    assert found["per_class"] == {"0": 0.5, "1": 1.0, "2": 0.0, "3": None}
    assert found["confusion"]["classes"] == [0, 1, 2, 3] and found["against"] == "victim"
    words = agreement(np.array(["b", "b"]), np.array(["a", "b"]), np.array(["a", "b"]))
    assert words["per_class"] == {"a": 0.0, "b": 1.0}
    assert words["confusion"]["matrix"] == [[0, 1], [0, 1]]


def test_honest_client_on_digits_and_on_wine(
    victim: LoadedVictim, wine: Task, wine_victim: RandomForestClassifier
) -> None:
    digits = get_task("digits")
    open_door = GuardedModel(victim.model, load_pipeline("none"), seed=0, task=digits)
    first = honest_client(open_door, digits, np.random.default_rng(1))
    assert first == {"honest_accuracy": pytest.approx(0.974, abs=1e-3), "honest_refused": 0.0}
    assert honest_client(open_door, digits, np.random.default_rng(2)) == first  # order-free
    lab = GuardedModel(victim.model, load_pipeline("lab"), seed=0, task=digits)
    limited = honest_client(lab, digits, np.random.default_rng(1))
    assert limited["honest_refused"] > 0 and limited["honest_accuracy"] < first["honest_accuracy"]
    guarded = GuardedModel(wine_victim, load_pipeline("none"), seed=0, task=wine)
    data = wine.data
    assert data is not None
    expected = np.mean(wine_victim.predict(data.X_eval) == data.y_eval)
    assert honest_client(guarded, wine, np.random.default_rng(3)) == {
        "honest_accuracy": pytest.approx(expected),
        "honest_refused": 0.0,
    }


def test_evaluation_rows_from_files(tmp_path: Path, wine: Task) -> None:
    data = wine.data
    assert data is not None
    names = list(reversed(wine.feature_names))  # columns in another order: put back by name
    lines = [",".join([*names, "label"])]
    for row, label in zip(data.X_eval[:10], data.y_eval[:10], strict=True):
        lines.append(",".join([*(repr(float(v)) for v in row[::-1]), str(label)]))
    (tmp_path / "eval.csv").write_text("\n".join(lines) + "\n")
    rows = EvalRows.from_file(tmp_path / "eval.csv", wine)
    assert np.allclose(rows.X, data.X_eval[:10]) and rows.y is not None
    assert rows.y.tolist() == data.y_eval[:10].tolist()
    assert rows.describe() == {"source": str(tmp_path / "eval.csv"), "rows": 10, "labels": True}
    np.save(tmp_path / "eval.npy", data.X_eval[:7])
    features = EvalRows.from_file(tmp_path / "eval.npy", wine)
    assert features.y is None and len(features) == 7
    only_fidelity = CopyEvaluator(features, Constant(1))
    assert set(only_fidelity(Constant(1))) == {"fidelity"}
    np.save(tmp_path / "narrow.npy", data.X_eval[:, :5])
    with pytest.raises(ConfigError, match=r"shape \(n, 13\)"):
        EvalRows.from_file(tmp_path / "narrow.npy", wine)


def test_run_record_round_trip_and_old_records(wine: Task) -> None:
    record = RunRecord(
        id="abc",
        task={"defense": {"name": "none"}, "attack": {"name": "u"}, "budget": 10, "task": "wine"},
        seed={"entropy": 1, "spawn_key": [0]},
        version="1",
        metrics={"fidelity": 0.5},
        task_info=task_info(wine, 54),
    )
    data = record.to_dict()
    assert list(data)[:8] == [
        "id",
        "task",
        "seed",
        "version",
        "metrics",
        "status",
        "error",
        "timings",
    ]
    assert data["task_info"]["kind"] == "tabular" and data["task_info"]["classes"] == [0, 1, 2]
    again = RunRecord.from_dict(data)
    assert again == record and again.task_name == "wine" and not again.is_image
    old = RunRecord.from_dict({"id": 7, "task": {"budget": 1}, "status": "ok", "extra": 1})
    assert old.id == "7" and old.task_name == "digits" and old.is_image
    assert "task_info" not in old.to_dict()
    with pytest.raises(ConfigError, match="not a run record"):
        RunRecord.from_dict({"status": "ok"})
