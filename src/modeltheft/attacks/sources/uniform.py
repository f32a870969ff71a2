"""Rows uniform in a box: the task's bounds (schema-only attacks) or a box near the data."""

from typing import Any, ClassVar

import numpy as np

from modeltheft.attacks.base import Source, require_bounds
from modeltheft.attacks.sources.public import PATH, PublicRows
from modeltheft.registry import Interval
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

    Any ``d + 1`` such points determine a softmax-linear model, but far from its decision
    boundary a logistic model's float answers saturate to exactly 0 or 1 and carry no
    information. So the box is the task's bounds shrunk by ``scale`` around their centre, or,
    on a task without bounds, ``scale`` × the attacker's rows' standard deviation either side
    of their mean (the task's public rows or ``path``; the unit box when there are none).
    ``scale=None`` is 1 on image tasks (the whole pixel box, as the lab asks) and 0.1 on
    tabular ones, whose bounds are each column's extremes (breast-cancer's ``worst area``
    spans 185 to 4,254): a tenth of the range kept every answer of a logistic victim
    unsaturated where the whole range did not.
    """

    name: ClassVar[str] = "general-position"
    paper: ClassVar[str] = Uniform.paper
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "scale": [None, Interval(float, 0, 1, closed="right")],
        "path": [None, PATH],
    }

    def __init__(self, scale: float | None = None, path: Any = None) -> None:
        self.scale = scale
        self.path = path

    def _box(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        scale = self.scale if self.scale is not None else (1.0 if task.is_image else 0.1)
        if task.bounded:
            centre, half = (task.lower + task.upper) / 2, (task.upper - task.lower) / 2
            return centre - scale * half, centre + scale * half
        rows = PublicRows(path=self.path).rows(task, None, required=False)
        if rows is None:
            return np.zeros(task.n_features), np.ones(task.n_features)
        spread = scale * np.where(rows.std(axis=0) > 0, rows.std(axis=0), 1.0)
        centre = rows.mean(axis=0)
        return centre - spread, centre + spread

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        low, high = self._box(task)
        return low + (high - low) * rng.random((n, task.n_features))
