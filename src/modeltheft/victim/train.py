"""Train a victim of one model family on a task's training rows."""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from modeltheft.errors import ConfigError
from modeltheft.registry import Registry
from modeltheft.tasks import DEFAULT_TASK, Task, get_task

VICTIM_SEED = 42

FAMILIES: Registry[ClassifierMixin] = Registry("model family")
"""Victim families by name: each entry builds an unfitted estimator (no parameters)."""


@FAMILIES.register(name="rf")
def _rf() -> ClassifierMixin:
    return RandomForestClassifier(n_estimators=50, random_state=VICTIM_SEED)


@FAMILIES.register(name="lr")
def _lr() -> ClassifierMixin:
    return LogisticRegression(max_iter=1000)


@FAMILIES.register(name="mlp")
def _mlp() -> ClassifierMixin:
    return MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=VICTIM_SEED)


@FAMILIES.register(name="svc")
def _svc() -> ClassifierMixin:
    # Platt-calibrated SVC: scikit-learn's replacement for SVC(probability=True).
    return CalibratedClassifierCV(SVC(), ensemble=False)


@FAMILIES.register(name="gbdt")
def _gbdt() -> ClassifierMixin:
    return HistGradientBoostingClassifier(random_state=VICTIM_SEED)


DEFAULT_FAMILY = "rf"
SPLITS = ("lab", "holdout")


@dataclass
class TrainedVictim:
    """A fitted victim with the metadata that describes how it was made."""

    model: ClassifierMixin
    metadata: dict[str, object] = field(default_factory=dict)
    task: Task | None = None
    """The task it was trained on (with its data)."""


def train_victim(
    family: str = DEFAULT_FAMILY,
    task: Task | str = DEFAULT_TASK,
    holdout: bool = False,
    *,
    split_name: str | None = None,
) -> TrainedVictim:
    """Fit the victim of ``family`` on ``task``'s training rows; score it on its eval rows.

    ``holdout=True`` leaves out the attacker-public rows (for digits: the lab's 1,257 training
    digits less the 200 public ones). ``split_name`` (``"lab"`` or ``"holdout"``) is the older
    spelling of ``holdout`` and still accepted. The digits task gives the lab's victim exactly.
    """
    if split_name is not None:
        if split_name not in SPLITS:
            raise ConfigError(f"unknown split {split_name!r}; choose one of {', '.join(SPLITS)}")
        holdout = split_name == "holdout"
    task = get_task(task) if isinstance(task, str) else task
    if not isinstance(task, Task):
        raise ConfigError(f"task must be a Task or a task name, got {type(task).__name__}")
    model = FAMILIES.build(family)
    if task.data is None:
        raise ConfigError(f"task {task.name!r} has no data to train a victim on")
    X, y = task.data.victim_rows(holdout)
    model.fit(X, y)
    accuracy = float(model.score(task.data.X_eval, task.data.y_eval))
    split: dict[str, Any] = {
        "name": "holdout" if holdout else "lab",
        **dict(task.data.source),
        "n_train": len(y),
        "n_test": len(task.data.y_eval),
    }
    metadata: dict[str, object] = {
        "family": family,
        "estimator": type(model).__name__,
        "params": {k: repr(v) for k, v in sorted(model.get_params(deep=False).items())},
        "split": split,
        "test_accuracy": accuracy,
        "n_features": int(X.shape[1]),
        "classes": np.asarray(model.classes_).tolist(),
        "task": task.name,
        "task_schema": task.with_classes(model.classes_).schema(),
    }
    task_file = task.data.source.get("task_file") if task.data is not None else None
    if task_file:
        metadata["task_file"] = str(task_file)  # the service reloads the rows from it
    return TrainedVictim(model=model, metadata=metadata, task=task)
