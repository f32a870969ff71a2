"""Rows uniform in a box: the task's bounds (schema-only attacks) or a box near the data."""

from typing import Any, ClassVar

import numpy as np

from modeltheft.attacks.base import Source, require_bounds
from modeltheft.attacks.sources.public import PublicRows
from modeltheft.registry import Interval, Rows
from modeltheft.tasks import Task


class Uniform(Source):
    """Each feature uniform between its bounds; a ConfigError for a task without bounds.

    Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016.
    """

    name: ClassVar[str] = "uniform"
    paper: ClassVar[str] = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016"
    )

    def check_task(self, task: Task, who: str) -> None:
        require_bounds(task, who)

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        require_bounds(task, f"source {self.name!r}")
        return task.lower + (task.upper - task.lower) * rng.random((n, task.n_features))


class GeneralPosition(Source):
    """Points in general position for equation solving: uniform in a box.

    The box is the task's bounds shrunk by ``scale`` around their centre when the task has
    bounds, else a box of width ``scale`` × the public rows' standard deviation (at least 1)
    around their mean (the task's public rows, or ``path``), else the unit box. ``scale=1``
    on a bounded task is plain :class:`Uniform`. Any ``d + 1`` such points determine a
    softmax-linear model; a smaller box keeps a logistic model's answers away from 0 and 1,
    where float probabilities lose the precision equation solving needs.
    """

    name: ClassVar[str] = "general-position"
    paper: ClassVar[str] = Uniform.paper
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "scale": [Interval(float, 0, 1, closed="right")],
        "path": [None, Rows()],
    }

    def __init__(self, scale: float = 1.0, path: Any = None) -> None:
        self.scale = scale
        self.path = path

    @property
    def uses_public_data(self) -> bool:
        return False  # only the public rows' mean and spread on an unbounded task

    def _box(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        if task.bounded:
            centre, half = (task.lower + task.upper) / 2, (task.upper - task.lower) / 2
            return centre - self.scale * half, centre + self.scale * half
        rows = PublicRows(path=self.path).rows(task, None, required=False)
        if rows is None:
            return np.zeros(task.n_features), np.ones(task.n_features)
        spread = np.maximum(rows.std(axis=0), 1.0) * self.scale
        centre = rows.mean(axis=0)
        return centre - spread / 2, centre + spread / 2

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        low, high = self._box(task)
        return low + (high - low) * rng.random((n, task.n_features))
