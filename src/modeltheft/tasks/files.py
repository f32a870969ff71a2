"""A task from your own files: a small TOML naming CSV, NPY or Parquet files and a label column.

.. code-block:: toml

    name = "churn"
    label = "churned"                # the label column of CSV / Parquet files
    image_shape = [28, 28]           # optional: rows are images
    bounds = "declared"              # or "train": each column's training min and max

    [data]
    train = "train.csv"              # required
    eval = "eval.csv"                # optional: else a stratified, seeded 30 % of train
    public = "public.csv"            # optional: rows an attacker may own (labels not needed)
    # NPY files hold features and labels apart: train = { X = "X.npy", y = "y.npy" }

    [features.age]                   # optional facts per column, by name
    lower = 0
    upper = 120
    integer = true

Paths are relative to the TOML file. Every problem is one :class:`ConfigError` naming the
file and what is wrong.
"""

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from modeltheft.errors import ConfigError
from modeltheft.tasks.base import Task, TaskData, generic_feature_names
from modeltheft.tomlfile import read_toml

EVAL_SIZE = 0.3
SPLIT_SEED = 42
SUFFIXES = (".csv", ".npy", ".parquet")
TOP_KEYS = {"name", "label", "image_shape", "bounds", "description", "data", "features"}
DATA_KEYS = {"train", "eval", "public"}
FEATURE_KEYS = {"lower", "upper", "integer", "categories"}


def _number(value: str, path: Path, row: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"{path}: row {row}, column {column!r}: {value!r} is not a number"
        ) from None
    if not math.isfinite(number):
        raise ConfigError(f"{path}: row {row}, column {column!r} is not finite")
    return number


def _labels(values: list[Any]) -> np.ndarray:
    """Integer labels where every value is an integer, else strings."""
    try:
        numbers = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        return np.array([str(v) for v in values])
    if np.isfinite(numbers).all() and np.all(numbers == np.round(numbers)):
        return numbers.astype(int)
    return np.array([str(v) for v in values])


def _read_csv(path: Path, label: str | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not rows or not rows[0]:
        raise ConfigError(f"{path}: empty file (a header row is needed)")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if not body:
        raise ConfigError(f"{path}: no data rows below the header")
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ConfigError(f"{path}: row {i} has {len(r)} values, the header {len(header)}")
    y = None
    if label is not None and label in header:
        at = header.index(label)
        y = _labels([r[at].strip() for r in body])
        names = header[:at] + header[at + 1 :]
        body = [r[:at] + r[at + 1 :] for r in body]
    else:
        names = header
    X = np.array(
        [
            [_number(cell.strip(), path, i, names[j]) for j, cell in enumerate(r)]
            for i, r in enumerate(body, start=2)
        ]
    ).reshape(len(body), len(names))
    return names, X, y


def _read_parquet(path: Path, label: str | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ConfigError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise ConfigError(f"{path}: cannot read Parquet: {type(exc).__name__}") from None
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    y = None
    if label is not None and label in columns:
        y = _labels(columns.pop(label))
    names = list(columns)
    if not names or table.num_rows == 0:
        raise ConfigError(f"{path}: no feature columns or no rows")
    X = np.empty((table.num_rows, len(names)))
    for j, name in enumerate(names):
        for i, value in enumerate(columns[name]):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{path}: row {i}, column {name!r}: {value!r} is not a number")
            if not math.isfinite(value):
                raise ConfigError(f"{path}: row {i}, column {name!r} is not finite")
            X[i, j] = value
    return names, X, y


def _read_npy(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"{path}: cannot read NPY (object arrays are refused): {reason}"
        ) from None
    if not isinstance(data, np.ndarray):  # an .npz archive under an .npy name
        data.close()
        raise ConfigError(f"{path}: not an NPY array (an NPZ archive?)")
    return data


def read_rows(
    source: str | Path | Mapping[str, Any], label: str | None, base: Path = Path(".")
) -> tuple[list[str] | None, np.ndarray, np.ndarray | None]:
    """Feature names (None for NPY), rows and labels (None if absent) of one data source.

    ``source`` is a CSV or Parquet path (the ``label`` column holds labels) or, for NPY, a
    path of features alone or a table ``{X = "X.npy", y = "y.npy"}``.
    """
    if isinstance(source, Mapping):
        unknown = set(source) - {"X", "y"}
        if unknown or "X" not in source:
            raise ConfigError(f"an NPY source is {{X = 'X.npy', y = 'y.npy'}}, got {dict(source)}")
        X = _read_npy(_path(source["X"], base))
        y = _read_npy(_path(source["y"], base)) if "y" in source else None
        if y is not None:
            y = _labels(np.asarray(y).ravel().tolist())
    else:
        path = _path(source, base)
        if path.suffix == ".csv":
            return _read_csv(path, label)
        if path.suffix == ".parquet":
            return _read_parquet(path, label)
        X, y = _read_npy(path), None
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype.kind not in "biuf" or len(X) == 0 or not np.isfinite(X).all():
        where = source["X"] if isinstance(source, Mapping) else source
        raise ConfigError(
            f"{where}: NPY features must be a finite, numeric 2-D array, got {X.dtype} {X.shape}"
        )
    if y is not None and len(y) != len(X):
        raise ConfigError(f"NPY labels have {len(y)} rows, the features {len(X)}")
    return None, X.astype(float), y


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ConfigError(f"a data file must be a path, got {value!r}")
    path = base / Path(value)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: data files must be {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    return path


def _feature_facts(
    spec: Any, names: list[str], X_train: np.ndarray, bounds: str, file: Path
) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{file}: [features] must be a table of tables")
    d = len(names)
    if bounds == "train":
        lower, upper = X_train.min(axis=0), X_train.max(axis=0)
    else:
        lower, upper = np.full(d, -np.inf), np.full(d, np.inf)
    integer = np.zeros(d, dtype=bool)
    categories: dict[int, tuple[float, ...]] = {}
    for name, facts in spec.items():
        if name not in names:
            raise ConfigError(f"{file}: [features.{name}] names no column of the data")
        if not isinstance(facts, Mapping) or set(facts) - FEATURE_KEYS:
            raise ConfigError(f"{file}: [features.{name}] takes {', '.join(sorted(FEATURE_KEYS))}")
        i = names.index(name)
        for key, target in (("lower", lower), ("upper", upper)):
            if key in facts:
                value = facts[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{file}: features.{name}.{key} must be a number")
                target[i] = float(value)
        if "integer" in facts:
            if not isinstance(facts["integer"], bool):
                raise ConfigError(f"{file}: features.{name}.integer must be true or false")
            integer[i] = facts["integer"]
        if "categories" in facts:
            values = facts["categories"]
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            ):
                raise ConfigError(f"{file}: features.{name}.categories must be a list of numbers")
            categories[i] = tuple(float(v) for v in values)
    return {"lower": lower, "upper": upper, "integer": integer, "categories": categories}


def load_task_file(path: str | Path) -> Task:
    """The task a TOML file describes (see the module docstring)."""
    file = Path(path)
    spec = read_toml(file)
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{file}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"a task file takes {', '.join(sorted(TOP_KEYS))}"
        )
    data = spec.get("data")
    if not isinstance(data, Mapping) or "train" not in data:
        raise ConfigError(f"{file}: a [data] table with at least 'train' is needed")
    if set(data) - DATA_KEYS:
        raise ConfigError(f"{file}: [data] takes {', '.join(sorted(DATA_KEYS))}")
    label = spec.get("label")
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"{file}: label must be a column name")
    bounds = spec.get("bounds", "declared")
    if bounds not in ("declared", "train"):
        raise ConfigError(f"{file}: bounds must be 'declared' or 'train', got {bounds!r}")
    base = file.parent
    names, X_train, y_train = read_rows(data["train"], label, base)
    if y_train is None:
        raise ConfigError(f"{file}: the training data has no labels (label = {label!r})")
    names = names or list(generic_feature_names(X_train.shape[1]))
    source: dict[str, Any] = {"task_file": str(file.resolve())}
    if "eval" in data:
        eval_names, X_eval, y_eval = read_rows(data["eval"], label, base)
        if y_eval is None:
            raise ConfigError(f"{file}: the evaluation data has no labels")
        _same_columns(names, eval_names, X_eval, "evaluation", file)
    else:
        try:
            X_train, X_eval, y_train, y_eval = train_test_split(
                X_train, y_train, test_size=EVAL_SIZE, random_state=SPLIT_SEED, stratify=y_train
            )
        except ValueError as exc:
            raise ConfigError(f"{file}: cannot split off evaluation rows: {exc}") from None
        source |= {"test_size": EVAL_SIZE, "random_state": SPLIT_SEED}
    X_public = None
    if "public" in data:
        public_names, X_public, _ = read_rows(data["public"], label, base)
        _same_columns(names, public_names, X_public, "public", file)
    facts = _feature_facts(spec.get("features", {}), names, X_train, bounds, file)
    classes = np.unique(np.concatenate([y_train.astype(str), y_eval.astype(str)]))
    if y_train.dtype.kind in "iu" and y_eval.dtype.kind in "iu":
        classes = np.unique(np.concatenate([y_train, y_eval]))
    shape = spec.get("image_shape")
    if shape is not None and (
        not isinstance(shape, list) or not all(isinstance(s, int) for s in shape)
    ):
        raise ConfigError(f"{file}: image_shape must be a list of integers, got {shape!r}")
    return Task(
        name=str(spec.get("name", file.stem)),
        feature_names=tuple(names),
        classes=classes,
        image_shape=tuple(shape) if shape else None,
        data=TaskData(X_train, y_train, X_eval, y_eval, X_public=X_public, source=source),
        description=str(spec.get("description", "")),
        **facts,
    )


def _same_columns(
    names: list[str], other: list[str] | None, X: np.ndarray, what: str, file: Path
) -> None:
    if X.shape[1] != len(names):
        raise ConfigError(
            f"{file}: the {what} data has {X.shape[1]} feature columns, the training data "
            f"{len(names)}"
        )
    if other is not None and other != names:
        raise ConfigError(f"{file}: the {what} data's columns differ from the training data's")
