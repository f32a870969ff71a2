"""The oracle interface: one query is one input row; the budget is never exceeded."""

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from modeltheft.errors import BudgetExhausted, ConfigError, OracleError
from modeltheft.oracle.answers import OracleAnswers
from modeltheft.oracle.classes import ClassBook
from modeltheft.oracle.log import QueryLog
from modeltheft.tasks.base import Task


class TransientError(OracleError):
    """The target could not describe itself just now (429, 5xx, no connection): ask later."""


def _shown(classes: np.ndarray) -> str:
    values = [str(c) for c in classes.tolist()]
    return ", ".join(values[:6]) + (", ..." if len(values) > 6 else "")


def merge_tasks(given: Task | None, described: Task | None, target: str, missing: str) -> Task:
    """The task to query with: the given one (bounds, names, data) checked against what the
    target says (width, classes); a ConfigError ``missing`` when neither says anything."""
    if given is None and described is None:
        raise ConfigError(missing)
    if given is None:
        return described  # type: ignore[return-value]
    if described is None:
        return given
    if given.n_features != described.n_features:
        raise ConfigError(
            f"task {given.name!r} has {given.n_features} features but {target} takes "
            f"{described.n_features}"
        )
    if not described.classes_known:
        return given
    known = set(given.classes.tolist())
    extra = np.array([c for c in described.classes.tolist() if c not in known])
    if len(extra):
        raise ConfigError(
            f"{target} answers classes ({_shown(extra)}) that task {given.name!r} does not have"
        )
    return given.with_classes(described.classes)


class Oracle(ABC):
    """Budget, query log and class bookkeeping around a concrete ``_send``.

    ``task`` is what the target answers (width, bounds, classes): the one given, checked
    against what the target says of itself (:meth:`discover`, read once before the first
    query). Labels in answers are indices into ``task.classes``; when nothing names the
    classes they are learned from the answers (:mod:`modeltheft.oracle.classes`) and
    ``task`` grows with them.
    """

    def __init__(self, budget: int, log: QueryLog | None = None, task: Task | None = None) -> None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise ConfigError(f"budget must be an integer >= 0, got {budget!r}")
        if task is not None and not isinstance(task, Task):
            raise ConfigError(f"task must be a Task, got {type(task).__name__}")
        self.given_task = task
        self.task = task
        self.budget = budget
        self.log = log if log is not None else QueryLog()
        self.spent = 0
        self.refused = 0
        self.reused = 0
        self.book: ClassBook | None = None
        self.columns_hint: int | None = None
        """Probability columns the target declares (sets up learning by columns)."""
        self.presume_identity = True
        """Whether learned probability columns may be presumed to be classes 0..k-1."""
        self._settled = False

    # --- what the target is ----------------------------------------------------------------

    @property
    def target(self) -> str:
        """How messages name the target."""
        return "the target"

    @property
    def probability_hint(self) -> str:
        """How to get probabilities from this target, for a message about labels-only answers."""
        return "this target does not send probabilities: use --label-mode hard"

    def _describe(self) -> Task | None:
        """What the target says of its model (classes may be empty), or None if it says
        nothing. Raise :class:`TransientError` to be asked again at the next call."""
        return None

    def _missing(self) -> str:
        """The ConfigError message when neither a task nor the target describes the model."""
        return f"{self.target} does not describe its model: give a task"

    def discover(self) -> Task:
        """The target's task: the given one checked against the target's own description."""
        if self._settled and self.task is not None:
            return self.task
        try:
            described = self._describe()
            settled = True
        except TransientError:
            if self.given_task is None:
                raise
            described, settled = None, False
        task = merge_tasks(self.given_task, described, self.target, self._missing())
        if self.columns_hint and task.classes_known and self.columns_hint != task.n_classes:
            raise ConfigError(
                f"task {task.name!r} has {task.n_classes} classes but {self.target} declares "
                f"{self.columns_hint} probability columns"
            )
        if self.book is None:
            known = task.classes if task.classes_known else None
            self.book = ClassBook(known, self.columns_hint, self.presume_identity)
        self.task = task.with_classes(self.book.classes)
        self._settled = settled
        return self.task

    @property
    def n_classes(self) -> int:
        """Number of classes known so far (from the task, or learned from answers)."""
        return self.discover().n_classes

    @property
    def remaining(self) -> int:
        """Queries left in the budget."""
        return self.budget - self.spent

    @property
    def answered(self) -> int:
        """Queries answered so far."""
        return self.spent - self.refused

    # --- querying --------------------------------------------------------------------------

    def query(self, X: np.ndarray) -> OracleAnswers:
        """Answer the rows of ``X``, reusing logged answers; raises if over budget."""
        task = self.discover()
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if X.ndim != 2 or X.shape[1] != task.n_features:
            raise ConfigError(
                f"queries have shape {list(X.shape)} but {self.target} takes "
                f"{task.n_features} features"
            )
        if len(X) > self.remaining:
            raise BudgetExhausted(
                f"{len(X)} queries asked, only {self.remaining} left of {self.budget}"
            )
        records: list[dict[str, Any] | None] = [self.log.take(row) for row in X]
        missing = [i for i, r in enumerate(records) if r is None]
        fresh = self._records(X[missing]) if missing else []
        for i, record in zip(missing, fresh, strict=True):
            records[i] = record
        book = self.book
        if book is None:  # pragma: no cover - discover() always sets it
            raise OracleError("the oracle has no classes to map answers to")
        answers = book.answers([r for r in records if r is not None])
        if missing:
            self.log.append(X[missing], fresh)
        if not np.array_equal(task.classes, book.classes):
            self.task = task.with_classes(book.classes)
        self.reused += len(X) - len(missing)
        self.spent += len(X)
        self.refused += int(answers.refused.sum())
        return answers

    def _records(self, X: np.ndarray) -> list[dict[str, Any]]:
        """Fresh answers to ``X`` as log records (class values, the target's columns)."""
        return self._send(X).records(self.discover().classes)

    @abstractmethod
    def _send(self, X: np.ndarray) -> OracleAnswers:
        """Ask the target for answers to ``X`` (all rows new), as indices into the classes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
