"""Whether a model answers a row the same alone and among other rows, and batches that do.

A service that predicts the rows of several requests in one call of the model (one call costs
about what one row does: a forest's onnxruntime call ~13 µs for a row, ~23 µs for three) must
give each row the answer it would have had alone, to the last bit: else an answer would depend
on who else asked at the same moment. Tree ensembles add each tree's vote row by row and are
exact; a matrix product (linear models, MLPs, the k-NN of a pipeline) may take another BLAS
kernel for another batch size and round differently. :func:`batch_invariant` checks the model
served on rows of its task, alone and in batches of every size up to :data:`MAX_ROWS` (each
row at two positions); only then are rows predicted together.
"""

from collections.abc import Callable

import numpy as np

MAX_ROWS = 16
"""Rows predicted in one call at most (the sizes :func:`batch_invariant` checks)."""


def batch_invariant(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> bool:
    """Whether ``predict`` answers each of ``rows`` (at least ``MAX_ROWS + 3``) bit for bit
    the same alone and in batches of 2 to :data:`MAX_ROWS` rows starting at offsets 0 and 3.
    Any error, or too few rows: False."""
    if len(rows) < MAX_ROWS + 3:
        return False
    rows = np.ascontiguousarray(rows[: MAX_ROWS + 3], dtype=np.float64)
    try:
        alone = [np.asarray(predict(rows[i : i + 1])) for i in range(len(rows))]
        for size in range(2, MAX_ROWS + 1):
            for start in (0, 3):
                together = np.asarray(predict(rows[start : start + size]))
                if together.shape != (size, *alone[0].shape[1:]):
                    return False
                for i in range(size):
                    if together[i].tobytes() != alone[start + i][0].tobytes():
                        return False
    except Exception:
        return False
    return True


class Together:
    """The rows of the requests of one group, answered by one call of ``predict`` when the
    first of them needs its answer (up to :data:`MAX_ROWS` rows; more get no place)."""

    __slots__ = ("_answers", "_parts", "_predict", "_rows")

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        self._predict = predict
        self._parts: list[np.ndarray] = []
        self._rows = 0
        self._answers: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> int | None:
        """Take ``rows`` in (before any answer is asked for); their place, or None if they
        would make the call too large."""
        if self._answers is not None or self._rows + len(rows) > MAX_ROWS:
            return None
        start = self._rows
        self._parts.append(rows)
        self._rows += len(rows)
        return start

    def answers(self, start: int, n: int) -> np.ndarray:
        """The answers of the ``n`` rows taken in at ``start``. If the shared call fails,
        each part is predicted alone (an error is then its own part's only)."""
        if self._answers is None:
            parts = self._parts
            try:
                joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
                self._answers = np.asarray(self._predict(joined))
            except Exception:
                self._answers = np.empty(0)  # failed: never tried again
        if len(self._answers) == self._rows:
            return self._answers[start : start + n]
        offsets = np.cumsum([0] + [len(p) for p in self._parts])
        part = int(np.searchsorted(offsets, start))
        return np.asarray(self._predict(self._parts[part]))
