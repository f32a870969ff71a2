"""The OWASP ML05 lab's "digit-like" queries: uniform noise plus, often, one bright blob."""

from typing import Any, ClassVar

import numpy as np

from modeltheft.attacks.base import DIGIT_IMAGE, Source, require_digit_images
from modeltheft.registry import Interval
from modeltheft.tasks import Task

_ROWS, _COLS = np.divmod(np.arange(DIGIT_IMAGE[0] * DIGIT_IMAGE[1]), DIGIT_IMAGE[1])


class OwaspSynthetic(Source):
    """64 uniform pixels; with probability 0.7 add uniform(0.3, 0.7), drawn
    afresh for each pixel (as the lab's code does), to every pixel within radius 3 of a centre.

    Rows are drawn one after another, so the queries do not depend on the batch size.
    """

    name: ClassVar[str] = "owasp-synthetic"
    paper: ClassVar[str] = "OWASP ML05:2023 Model Theft lab (random synthetic queries)"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "blob_probability": [Interval(float, 0.0, 1.0)],
        "radius": [Interval(float, 0.0, None, closed="neither")],
    }

    def __init__(self, blob_probability: float = 0.7, radius: float = 3.0) -> None:
        self.blob_probability = blob_probability
        self.radius = radius

    def check_task(self, task: Task, who: str) -> None:
        require_digit_images(task, who)

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        require_digit_images(task, f"source {self.name!r}")
        width = len(_ROWS)
        rows = np.empty((n, width))
        for k in range(n):
            row = rng.random(width)
            if rng.random() < self.blob_probability:
                cx, cy = rng.integers(2, 6, size=2)
                blob = np.hypot(_ROWS - cx, _COLS - cy) < self.radius
                row[blob] += rng.uniform(0.3, 0.7, size=int(blob.sum()))
            rows[k] = np.clip(row, 0.0, 1.0)
        return rows
