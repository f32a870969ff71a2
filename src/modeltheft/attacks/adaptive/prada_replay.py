"""PRADA replayed by the thief: PRADA is a deterministic function of the client's own queries.

The thief keeps its own copy of the detector's state (growing sets, thresholds, the distance
set D) and, before sending a row, computes the Shapiro–Wilk W that D would have with it; a
row that would push W below ``delta + margin`` is replaced by the best of a few others.
Built only from the stage's public parameters (``delta``, ``min_queries``, ``window``,
``scale``) and :func:`~modeltheft.defenses.ood.feature_space`; no private state is read. The
replay keys growing sets on the labels the thief *sees*; PRADA keys them on the victim's own
labels, so misinformed answers make the replay drift (rarely, for in-distribution queries).
"""

import math
import warnings
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from scipy import stats

from modeltheft.defenses.detection import Prada
from modeltheft.defenses.ood import FeatureSpace, feature_space
from modeltheft.errors import ConfigError
from modeltheft.tasks import Task


class PradaReplay:
    """The PRADA statistic of the thief's own stream, and a screen that keeps it high."""

    paper: ClassVar[str] = (
        "Juuti et al., PRADA, EuroS&P 2019, replayed as in Tramèr et al., On Adaptive Attacks "
        "to Adversarial Example Defenses, NeurIPS 2020"
    )

    def __init__(
        self,
        delta: float = 0.75,
        min_queries: int = 20,
        window: int = 5000,
        margin: float = 0.1,
        tries: int = 8,
        space: FeatureSpace | None = None,
    ) -> None:
        if not 0 < delta <= 1 or margin < 0 or tries < 1 or min_queries < 3:
            raise ConfigError(
                f"need 0 < delta <= 1, margin >= 0, tries >= 1, min_queries >= 3; got "
                f"{delta!r}, {margin!r}, {tries!r}, {min_queries!r}"
            )
        self.delta = delta
        self.min_queries = min_queries
        self.window = window
        self.margin = margin
        self.tries = tries
        self.space = space if space is not None and not space.identity else None
        self._growing: dict[int, list[np.ndarray]] = {}
        self._arrays: dict[int, np.ndarray] = {}
        self._thresholds: dict[int, tuple[int, float, float, float]] = {}
        self.distances: list[float] = []
        self._seen: set[bytes] = set()
        self.replaced = 0
        self.screened = 0

    @classmethod
    def of(cls, stage: Prada, task: Task, **options: float) -> "PradaReplay":
        """A replay of ``stage`` (its public parameters) on ``task``'s feature space."""
        rows = None if task.data is None else np.asarray(task.data.X_train)
        space = feature_space(stage.scale, task, rows)
        return cls(stage.delta, stage.min_queries, stage.window, space=space, **options)  # type: ignore[arg-type]

    @property
    def target(self) -> float:
        """The W the screen keeps the stream above."""
        return self.delta + self.margin

    def _row(self, x: np.ndarray) -> np.ndarray:
        row = np.asarray(x, dtype=np.float64)
        return row if self.space is None else self.space(row[None, :])[0]

    def _step(self, x: np.ndarray, label: int) -> tuple[float, bool, bool] | None:
        """(distance, joins the growing set, counted in D), or None for an exact repeat."""
        if np.asarray(x, dtype=np.float64).tobytes() in self._seen:
            return None
        group = self._arrays.get(label)
        if group is None:
            return 0.0, True, False
        diff = group - self._row(x)
        distance = math.sqrt(float(np.einsum("ij,ij->i", diff, diff).min()))
        counted = distance > self._thresholds.get(label, (0, 0.0, 0.0, 0.0))[3]
        return distance, counted, counted

    def _w(self, distances: list[float]) -> float | None:
        distances = distances[-self.window :]
        if len(distances) < self.min_queries:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(stats.shapiro(distances).statistic)

    def statistic(self) -> float | None:
        """W of the stream so far (None below ``min_queries`` distances)."""
        return self._w(self.distances)

    def trial(self, x: np.ndarray, label: int) -> float | None:
        """W if ``x`` (answered ``label``) were sent next."""
        step = self._step(x, label)
        if step is None or step[0] <= 0:
            return self.statistic()
        return self._w([*self.distances, step[0]])

    def commit(self, X: np.ndarray, labels: np.ndarray) -> None:
        """Record sent rows and the labels they got (refused rows, label < 0, are skipped)."""
        for x, label in zip(np.atleast_2d(X), labels, strict=True):
            if label < 0:
                continue
            label = int(label)
            step = self._step(x, label)
            self._seen.add(np.asarray(x, dtype=np.float64).tobytes())
            if step is None:
                continue
            distance, joins, counted = step
            if counted:
                n, mean, m2, value = self._thresholds.get(label, (0, 0.0, 0.0, 0.0))
                n += 1
                delta = distance - mean
                mean += delta / n
                m2 += delta * (distance - mean)
                if n > 1:
                    value = max(value, mean - math.sqrt(max(m2 / n, 0.0)))
                self._thresholds[label] = (n, mean, m2, value)
            if distance > 0:
                self.distances.append(distance)
            if joins:
                self._growing.setdefault(label, []).append(self._row(x))
                self._arrays[label] = np.array(self._growing[label])

    def screen(
        self,
        X: np.ndarray,
        guess: Callable[[np.ndarray], np.ndarray],
        propose: Callable[[int], np.ndarray],
    ) -> np.ndarray:
        """``X`` with each row that would bring W below :attr:`target` replaced by the best
        of ``tries`` fresh proposals (kept as is if none does better). ``guess`` gives the
        labels the thief expects; rows of one batch are screened independently."""
        out = np.array(X, dtype=float)
        labels = guess(out)
        for i, (x, label) in enumerate(zip(out, labels, strict=True)):
            self.screened += 1
            w = self.trial(x, int(label))
            if w is None or w >= self.target:
                continue
            candidates = propose(self.tries)
            scores = [
                self.trial(c, int(g)) for c, g in zip(candidates, guess(candidates), strict=True)
            ]
            best = int(np.argmax([-1.0 if s is None else s for s in scores]))
            if (scores[best] or -1.0) > w:
                out[i] = candidates[best]
                self.replaced += 1
        return out
