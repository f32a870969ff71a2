"""Tasks: what a model's inputs and outputs are, and where its data comes from.

Built in: ``digits`` (the OWASP lab), ``breast-cancer``, ``wine`` and ``iris`` (scikit-learn's
bundled tables, unscaled). Anything else: a TOML file (:mod:`modeltheft.tasks.files`), or the
schema a model or an API carries (:func:`task_from_model`, :meth:`Task.from_schema`).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modeltheft.errors import ConfigError
from modeltheft.tasks.base import Task, TaskData, generic_feature_names, unbounded
from modeltheft.tasks.digits import digits_task
from modeltheft.tasks.files import load_task_file, read_rows
from modeltheft.tasks.tabular import LOADERS, tabular_task

DEFAULT_TASK = "digits"

BUILTIN: dict[str, Callable[[], Task]] = {
    "digits": digits_task,
    **{name: (lambda name=name: tabular_task(name)) for name in LOADERS},
}


def get_task(name: str | Path) -> Task:
    """A built-in task by name, or the task a ``.toml`` file describes."""
    text = str(name)
    if text in BUILTIN:
        return BUILTIN[text]()
    if text.endswith(".toml"):
        return load_task_file(text)
    raise ConfigError(
        f"unknown task {text!r}; choose one of {', '.join(BUILTIN)} or give a .toml task file"
    )


def task_from_model(model: Any, task: Task | None = None, name: str = "model") -> Task:
    """The task a fitted classifier answers: ``task`` checked against it, or its own schema.

    The width comes from ``n_features_in_``, the classes (in the model's order) from
    ``classes_``, feature names from ``feature_names_in_`` when the model kept them. A model
    that does not fit ``task`` is a ConfigError naming the difference.
    """
    width = getattr(model, "n_features_in_", None)
    classes = getattr(model, "classes_", None)
    if task is not None:
        if width is not None and int(width) != task.n_features:
            raise ConfigError(
                f"the model expects {int(width)} features, task {task.name!r} has {task.n_features}"
            )
        if classes is None:
            return task
        if len(classes) != task.n_classes or set(np.asarray(classes).tolist()) != set(
            task.classes.tolist()
        ):
            known = set(task.classes.tolist())
            extra = [c for c in np.asarray(classes).tolist() if c not in known]
            if extra:
                raise ConfigError(
                    f"the model answers classes {extra[:5]} that task {task.name!r} does not have"
                )
        return task.with_classes(classes)
    if width is None or classes is None:
        raise ConfigError(
            "cannot tell the model's input width and classes (no n_features_in_ or classes_); "
            "give the task with --task"
        )
    names = getattr(model, "feature_names_in_", None)
    names = tuple(str(n) for n in names) if names is not None else generic_feature_names(int(width))
    lower, upper = unbounded(int(width))
    return Task(
        name=name, feature_names=names, lower=lower, upper=upper, classes=np.asarray(classes)
    )


__all__ = [
    "BUILTIN",
    "DEFAULT_TASK",
    "Task",
    "TaskData",
    "digits_task",
    "get_task",
    "load_task_file",
    "read_rows",
    "task_from_model",
]
