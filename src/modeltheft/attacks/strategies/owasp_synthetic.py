"""The OWASP ML05 lab's "digit-like" queries: uniform noise plus, often, one bright blob."""

import numpy as np

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.data import IMAGE_SHAPE, N_FEATURES

_ROWS, _COLS = np.divmod(np.arange(N_FEATURES), IMAGE_SHAPE[1])


class OwaspSynthetic(Strategy):
    """64 uniform pixels; with probability 0.7 add uniform(0.3, 0.7), drawn
    afresh for each pixel (as the lab's code does), to every pixel within radius 3 of a centre.

    Rows are drawn one after another, so the queries do not depend on the batch size.
    """

    name = "owasp-synthetic"
    paper = "OWASP ML05:2023 Model Theft lab (random synthetic queries)"

    def __init__(self, blob_probability: float = 0.7, radius: float = 3.0) -> None:
        self.blob_probability = blob_probability
        self.radius = radius

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        rows = np.empty((n, N_FEATURES))
        for k in range(n):
            row = rng.random(N_FEATURES)
            if rng.random() < self.blob_probability:
                cx, cy = rng.integers(2, 6, size=2)
                blob = np.hypot(_ROWS - cx, _COLS - cy) < self.radius
                row[blob] += rng.uniform(0.3, 0.7, size=int(blob.sum()))
            rows[k] = np.clip(row, 0.0, 1.0)
        return rows
