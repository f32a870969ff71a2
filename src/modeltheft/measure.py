"""The one place that measures: a stolen copy on a task's evaluation rows, and honest clients.

``attack``, ``demo``, the sweeps and the benchmarks all measure here, so a figure means the
same everywhere: accuracy against the true labels of the task's evaluation rows, fidelity
against the victim's own answers on the same rows (labels compared as class values, strings
included), never on digits unless the task is digits.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modeltheft.errors import Blocked, ConfigError, RateLimited
from modeltheft.evaluation.metrics import (
    accuracy,
    confusion_matrix,
    fidelity,
    per_class_agreement,
    same,
)
from modeltheft.tasks import Task, read_rows

HONEST_BATCH = (1, 20)
"""An in-process honest client sends batches of 1 to 20 rows."""


class Predictor(Protocol):
    """Anything with ``predict`` (a victim, a stolen copy, an ONNX adapter)."""

    def predict(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class EvalRows:
    """Rows to measure on: features, true labels when known, and where they came from."""

    X: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.X)

    @classmethod
    def of_task(cls, task: Task) -> "EvalRows | None":
        """The task's own evaluation rows, or None for a schema-only task."""
        if task.data is None:
            return None
        data = task.data
        return cls(np.asarray(data.X_eval), np.asarray(data.y_eval), f"task {task.name!r}")

    @classmethod
    def from_file(cls, path: str | Path, task: Task, label: str = "label") -> "EvalRows":
        """Rows of a CSV/Parquet file (``label`` column) or an NPY file (features only).

        Columns named like the task's features are put in the task's order; otherwise the
        width must match. A ConfigError names the problem.
        """
        names, X, y = read_rows(str(path), label)
        if names is not None and set(names) == set(task.feature_names):
            order = [names.index(f) for f in task.feature_names]
            X = np.asarray(X)[:, order]
        X = task.check_rows(X, f"evaluation rows in {path}")
        return cls(X, None if y is None else np.asarray(y), str(path))

    def describe(self) -> dict[str, Any]:
        """JSON facts for results: where, how many, whether they have labels."""
        return {"source": self.source, "rows": len(self), "labels": self.y is not None}


def eval_rows(task: Task) -> EvalRows:
    """The task's evaluation rows; a ConfigError for a task without data."""
    rows = EvalRows.of_task(task)
    if rows is None:
        raise ConfigError(f"task {task.name!r} has no evaluation rows (schema only)")
    return rows


class CopyEvaluator:
    """Measures copies on fixed rows; the victim's answers on them are computed once.

    Calling it gives ``accuracy`` (when the rows have labels) and ``fidelity`` (when a victim
    is given) — the ``evaluate`` callback of an attack's budget curve.
    """

    def __init__(self, rows: EvalRows, victim: Predictor | None = None) -> None:
        self.rows = rows
        self.truth = None if victim is None else np.asarray(victim.predict(rows.X))

    def __call__(self, model: Predictor) -> dict[str, float]:
        return self.scores(np.asarray(model.predict(self.rows.X)))

    def scores(self, predicted: np.ndarray) -> dict[str, float]:
        """The metrics of predictions already made on these rows."""
        out: dict[str, float] = {}
        if self.rows.y is not None:
            out["accuracy"] = accuracy(predicted, self.rows.y)
        if self.truth is not None:
            out["fidelity"] = fidelity(predicted, self.truth)
        return out

    def agreement(self, model: Predictor, classes: np.ndarray) -> dict[str, Any] | None:
        """Per-class agreement and confusion, against the victim (else the true labels)."""
        reference, against = (
            (self.truth, "victim") if self.truth is not None else (self.rows.y, "true labels")
        )
        if reference is None:
            return None
        return agreement(np.asarray(model.predict(self.rows.X)), reference, classes, against)


def evaluate_copy(
    model: Predictor, task: Task, victim: Predictor | None = None
) -> dict[str, float]:
    """Accuracy of ``model`` on the task's evaluation rows, and fidelity to ``victim`` there."""
    return CopyEvaluator(eval_rows(task), victim)(model)


def agreement(
    predicted: np.ndarray, reference: np.ndarray, classes: np.ndarray, against: str = "victim"
) -> dict[str, Any]:
    """``per_class`` agreement (keyed by the class as text) and the ``confusion`` matrix
    (rows: the reference's class, columns: the prediction's), JSON-ready."""
    classes = np.asarray(classes)
    per_class = per_class_agreement(predicted, reference, classes)
    return {
        "against": against,
        "per_class": {str(k): (None if np.isnan(v) else v) for k, v in per_class.items()},
        "confusion": {
            "classes": classes.tolist(),
            "matrix": confusion_matrix(reference, predicted, classes),
        },
    }


def honest_client(
    guarded: Any, task: Task, rng: np.random.Generator, client: str = "honest"
) -> dict[str, float]:
    """The task's evaluation rows in random order, in batches of 1–20, sent to ``guarded``
    (a :class:`~modeltheft.defenses.GuardedModel`) as ``client``: accuracy and refused share.

    A refused batch counts as wrong answers.
    """
    rows = eval_rows(task)
    order = rng.permutation(len(rows))
    low, high = HONEST_BATCH
    correct = refused = sent = 0
    while sent < len(order):
        idx = order[sent : sent + int(rng.integers(low, high + 1))]
        try:
            labels = guarded.answer(client, rows.X[idx]).labels
            correct += int(np.sum(same(labels, rows.y[idx])))  # type: ignore[index]
        except (RateLimited, Blocked):
            refused += len(idx)
        sent += len(idx)
    return {"honest_accuracy": correct / len(order), "honest_refused": refused / len(order)}


def honest_over_api(query: Callable[[np.ndarray], Any], rows: EvalRows) -> dict[str, float]:
    """An honest user sends ``rows`` one per request, in order: what does it get back?

    ``query(row)`` returns the answer's class value, or None when the request was refused.
    Gives ``sent``, ``answered``, ``accuracy_of_answers`` and ``useful_fraction`` (right
    answers over rows sent).
    """
    if rows.y is None:
        raise ConfigError(f"an honest client needs labelled rows; {rows.source} has none")
    answers = [query(row[None]) for row in rows.X]
    answered = np.array([a is not None for a in answers])
    right = np.array(
        [a is not None and bool(same([a], [t])[0]) for a, t in zip(answers, rows.y, strict=True)]
    )
    return {
        "sent": len(rows),
        "answered": int(answered.sum()),
        "accuracy_of_answers": float(right[answered].mean()) if answered.any() else 0.0,
        "useful_fraction": float(right.mean()),
    }
