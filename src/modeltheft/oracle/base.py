"""The oracle interface: one query is one input row; the budget is never exceeded."""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from modeltheft.errors import BudgetExhausted, ConfigError
from modeltheft.oracle.log import QueryLog
from modeltheft.tasks.base import Task


@dataclass(frozen=True)
class OracleAnswers:
    """Answers to a batch. Refused rows have label -1 and NaN probabilities."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    refused: np.ndarray

    @property
    def answered(self) -> np.ndarray:
        """Mask of the rows that got an answer."""
        return ~self.refused

    def records(self) -> list[dict]:
        """One JSON-able record per row, for the query log."""
        out = []
        for i, label in enumerate(self.labels):
            probs = None
            if self.probabilities is not None and not self.refused[i]:
                probs = [float(p) for p in self.probabilities[i]]
            out.append(
                {"label": int(label), "probabilities": probs, "refused": bool(self.refused[i])}
            )
        return out


def _from_records(records: list[dict], n_classes: int) -> OracleAnswers:
    labels = np.array([r["label"] for r in records], dtype=int)
    refused = np.array([r["refused"] for r in records], dtype=bool)
    probabilities = None
    if any(r["probabilities"] is not None for r in records):
        probabilities = np.full((len(records), n_classes), np.nan)
        for i, r in enumerate(records):
            if r["probabilities"] is not None:
                probabilities[i] = r["probabilities"]
    return OracleAnswers(labels, probabilities, refused)


class Oracle(ABC):
    """Budget, query log and bookkeeping around a concrete ``_send``.

    ``task`` is what the target answers (width, bounds, classes): given, or found by
    :meth:`discover` (an API's own description of its model). Labels in answers are indices
    into ``task.classes``.
    """

    def __init__(self, budget: int, log: QueryLog | None = None, task: Task | None = None) -> None:
        self.task = task
        if not isinstance(budget, int) or budget < 0:
            raise ConfigError(f"budget must be an integer >= 0, got {budget!r}")
        self.budget = budget
        self.log = log if log is not None else QueryLog()
        self.spent = 0
        self.refused = 0
        self.reused = 0

    @property
    def n_classes(self) -> int:
        """Number of classes the target answers (from its task)."""
        return self.discover().n_classes

    def discover(self) -> Task:
        """The target's task: the one given, or what the target says of itself."""
        if self.task is None:
            from modeltheft.tasks import digits_task

            self.task = digits_task().without_data()
        return self.task

    @property
    def remaining(self) -> int:
        """Queries left in the budget."""
        return self.budget - self.spent

    @property
    def answered(self) -> int:
        """Queries answered so far."""
        return self.spent - self.refused

    def query(self, X: np.ndarray) -> OracleAnswers:
        """Answer the rows of ``X``, reusing logged answers; raises if over budget."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if len(X) > self.remaining:
            raise BudgetExhausted(
                f"{len(X)} queries asked, only {self.remaining} left of {self.budget}"
            )
        records: list[dict | None] = [self.log.take(row) for row in X]
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            fresh = self._send(X[missing])
            self.log.append(X[missing], fresh.records())
            for i, record in zip(missing, fresh.records(), strict=True):
                records[i] = record
        self.reused += len(X) - len(missing)
        answers = _from_records([r for r in records if r is not None], self.n_classes)
        self.spent += len(X)
        self.refused += int(answers.refused.sum())
        return answers

    @abstractmethod
    def _send(self, X: np.ndarray) -> OracleAnswers:
        """Ask the target for answers to ``X`` (all rows new)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
