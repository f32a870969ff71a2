"""Tasks: built-in splits, schemas, files, and tasks inferred from models."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from modeltheft.errors import ConfigError
from modeltheft.tasks import BUILTIN, Task, digits_task, get_task, task_from_model


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_tasks_are_consistent(name: str) -> None:
    task = get_task(name)
    data = task.data
    assert data is not None
    assert data.X_train.shape[1] == data.X_eval.shape[1] == task.n_features
    assert set(np.unique(data.y_train)) <= set(task.classes.tolist())
    # the declared bounds hold every row of the task, evaluation rows included
    for X in (data.X_train, data.X_eval, data.X_public):
        assert (task.lower <= X).all() and (task.upper >= X).all()
    # holdout rows and public rows partition the training rows
    held, _ = data.victim_rows(holdout=True)
    assert len(held) + data.n_public == len(data.X_train)
    rows = {r.tobytes() for r in held}
    assert not any(r.tobytes() in rows for r in data.X_public if (held != r).any(axis=1).all())
    assert not data.X_train.flags.writeable


def test_digits_is_the_lab_split() -> None:
    task = get_task("digits")
    data = task.data
    assert task.image_shape == (8, 8)
    assert (len(data.y_train), len(data.y_eval), data.n_public) == (1257, 540, 200)
    assert data.X_train.shape == (1257, 64) and data.X_eval.shape == (540, 64)
    assert task.lower.min() == 0 and task.upper.max() == 1
    assert set(np.unique(data.y_eval)) == set(range(10))
    # the OWASP lab's split: pixels / 16, 30 % for evaluation, random_state=42, same row order
    digits = load_digits()
    X_train, X_eval, y_train, y_eval = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.3, random_state=42
    )
    assert np.array_equal(data.X_train, X_train) and np.array_equal(data.y_train, y_train)
    assert np.array_equal(data.X_eval, X_eval) and np.array_equal(data.y_eval, y_eval)


def test_digits_rows_are_read_only_and_stable() -> None:
    first = get_task("digits").data
    second = digits_task.__wrapped__().data  # built afresh, not the cached task
    assert second is not first
    assert np.array_equal(first.X_eval, second.X_eval)
    assert np.array_equal(first.X_public, second.X_public)
    assert np.array_equal(first.victim_rows(holdout=True)[0], second.victim_rows(holdout=True)[0])
    assert not first.X_eval.flags.writeable and not first.X_public.flags.writeable


def test_schema_round_trip_keeps_bounds_integers_and_string_classes() -> None:
    task = Task(
        name="t",
        feature_names=("a", "b", "c"),
        lower=np.array([0.0, -np.inf, 1.0]),
        upper=np.array([1.0, np.inf, 9.0]),
        integer=np.array([False, False, True]),
        categories={2: (1.0, 5.0, 9.0)},
        classes=np.array(["cat", "dog"]),
    )
    back = Task.from_schema(task.schema())
    assert back.feature_names == task.feature_names
    assert np.array_equal(back.lower, task.lower) and np.array_equal(back.upper, task.upper)
    assert back.integer.tolist() == [False, False, True]
    assert back.categories == {2: (1.0, 5.0, 9.0)}
    assert back.classes.tolist() == ["cat", "dog"]
    assert back.class_index(["dog", "cat", "emu"]).tolist() == [1, 0, -1]
    assert not back.bounded and task.clip(np.array([[2.0, 5.0, 3.4]])).tolist() == [[1, 5, 3]]


@pytest.mark.parametrize(
    "schema",
    [{}, {"features": "x", "classes": [0, 1]}, {"features": [{"name": "a"}], "classes": [1]}],
)
def test_malformed_schemas_are_config_errors(schema: dict) -> None:
    with pytest.raises(ConfigError):
        Task.from_schema(schema)


def test_task_from_model_checks_width_and_classes() -> None:
    task = get_task("wine")
    model = LogisticRegression(max_iter=50).fit(task.data.X_train[:, :5], task.data.y_train)
    with pytest.raises(ConfigError, match="expects 5 features, task 'wine' has 13"):
        task_from_model(model, task)
    inferred = task_from_model(model)
    assert inferred.n_features == 5 and inferred.classes.tolist() == [0, 1, 2]
    assert not inferred.bounded and inferred.data is None


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_task_file_from_csv_with_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    labels = np.where(X[:, 0] > 0, "yes", "no")
    lines = ["a,b,target,c"] + [f"{x[0]},{x[1]},{y},{x[2]}" for x, y in zip(X, labels, strict=True)]
    _write(tmp_path / "train.csv", "\n".join(lines) + "\n")
    np.save(tmp_path / "public.npy", X[:5])
    toml = _write(
        tmp_path / "mine.toml",
        'label = "target"\nbounds = "train"\n[data]\ntrain = "train.csv"\n'
        'public = "public.npy"\n[features.c]\nlower = -10\nupper = 10\n',
    )
    task = get_task(toml)
    assert task.name == "mine" and task.feature_names == ("a", "b", "c")
    assert task.classes.tolist() == ["no", "yes"]
    assert task.upper[2] == 10 and task.data.n_public == 5
    assert len(task.data.y_eval) == 18


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[data]\ntrain = "missing.csv"\n', "data file not found"),
        ('colour = 1\n[data]\ntrain = "x.csv"\n', "unknown key"),
        ('label = "y"\n[data]\ntrain = "bad.csv"\n', "is not a number"),
        ('label = "y"\n[data]\ntrain = "x.txt"\n', "data files must be"),
        ('label = "y"\n[data]\ntrain = "ok.csv"\n[features.zz]\nlower = 0\n', "names no column"),
    ],
)
def test_bad_task_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path / "bad.csv", "a,y\nfoo,1\n")
    _write(tmp_path / "ok.csv", "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    with pytest.raises(ConfigError, match=message) as info:
        get_task(_write(tmp_path / "t.toml", text))
    assert "\n" not in str(info.value)


def test_parquet_task(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    X = rng.random((40, 2))
    table = pa.table({"u": X[:, 0], "v": X[:, 1], "label": (X[:, 0] > 0.5).astype(int)})
    pq.write_table(table, tmp_path / "t.parquet")
    toml = _write(tmp_path / "p.toml", 'label = "label"\n[data]\ntrain = "t.parquet"\n')
    task = get_task(toml)
    assert task.feature_names == ("u", "v") and task.classes.tolist() == [0, 1]


def test_unknown_task_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match="digits, breast-cancer, wine, iris"):
        get_task("mnist")
