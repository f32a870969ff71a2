"""What strategies and sources are: the query history, the task they work on, what they need.

A *source* says where candidate rows come from (uniform in the bounds, the attacker's own
rows, a fit to them, rendered digits ...); a *strategy* (a selector over a source, composed
by a named recipe) proposes the next queries. Both read the target's :class:`Task` and say
what they need of it (:meth:`Source.check_task`), so a mismatch fails before any query is
paid for, naming the strategy and the task.
"""

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.errors import ConfigError
from modeltheft.registry import Plugin
from modeltheft.tasks import DEFAULT_TASK, Task, get_task

DIGIT_IMAGE = (8, 8)


def default_task() -> Task:
    """The task assumed when nobody says one (the lab's digits, as :class:`Oracle` does)."""
    return get_task(DEFAULT_TASK)


@dataclass
class QueryHistory:
    """Every batch sent so far, aligned row for row with its answers, and the target's task.

    ``labels`` are indices into ``task.classes`` (-1 for refused rows); ``probabilities`` is
    None for a batch answered with labels only, and NaN rows for refused queries, columns in
    ``task.classes`` order. ``model`` is the loop's latest substitute (refitted before each
    proposal of a strategy with ``needs_model``; it predicts class *values*), or None.
    ``task`` is set by the extraction loop; without one (a strategy used on its own) the
    default task is assumed.
    """

    X: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray | None] = field(default_factory=list)
    model: ClassifierMixin | None = None
    task: Task | None = None

    @property
    def target(self) -> Task:
        """The task the queries are for (the default task if none was set)."""
        if self.task is None:
            self.task = default_task()
        return self.task

    @property
    def n_sent(self) -> int:
        """Rows sent so far."""
        return sum(len(x) for x in self.X)

    def add(self, X: np.ndarray, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Record one answered batch."""
        self.X.append(X)
        self.labels.append(labels)
        self.probabilities.append(probabilities)

    def answered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Answered rows, label indices and probabilities (None unless every batch had them)."""
        if not self.X:
            return np.empty((0, self.target.n_features)), np.empty(0, dtype=int), None
        X, labels = np.concatenate(self.X), np.concatenate(self.labels)
        keep = labels >= 0
        # A wholly refused batch carries no probabilities; it must not hide the others'.
        answered = [(p, y >= 0) for p, y in zip(self.probabilities, self.labels, strict=True)]
        answered = [(p, mask) for p, mask in answered if mask.any()]
        probabilities = None
        if answered and all(p is not None for p, _ in answered):
            probabilities = np.concatenate([p[mask] for p, mask in answered])  # type: ignore[index]
        return X[keep], labels[keep], probabilities

    def asked(self) -> np.ndarray:
        """Every row sent so far, answered or not, shape ``(n_sent, d)``."""
        if not self.X:
            return np.empty((0, self.target.n_features))
        return np.concatenate(self.X)


def describe_rows(task: Task) -> str:
    """How a task's rows look, for messages: '13 tabular features' or '28×28 images'."""
    if task.image_shape is not None:
        return "×".join(str(s) for s in task.image_shape) + " images"
    return f"{task.n_features} tabular features"


def require_digit_images(task: Task, who: str) -> None:
    """A ConfigError unless ``task``'s rows are 8×8 images (the lab's digits)."""
    if task.image_shape is None or tuple(task.image_shape[:2]) != DIGIT_IMAGE:
        raise ConfigError(
            f"{who} needs 8×8 digit images (task 'digits'); task {task.name!r} has "
            f"{describe_rows(task)}"
        )


def require_bounds(task: Task, who: str) -> None:
    """A ConfigError unless every feature of ``task`` has finite bounds."""
    if not task.bounded:
        raise ConfigError(
            f"{who}: task {task.name!r} declares no bounds; give a task with bounds or use "
            "public-data"
        )


class Source(Plugin):
    """Where candidate rows come from: ``draw(n, rng, task)`` gives ``(n, d)`` rows.

    ``finite`` sources hold a fixed set of rows (``available``) and never repeat one within
    an attack; the others draw fresh rows forever. ``uses_public_data`` says whether it reads
    the attacker-public rows of the task (so a sweep must train a victim without them).
    """

    kind: ClassVar[str] = "source"
    finite: ClassVar[bool] = False

    @property
    def uses_public_data(self) -> bool:
        """Whether the rows come from (or are fitted to) the task's attacker-public rows."""
        return False

    def check_task(self, task: Task, who: str) -> None:
        """Raise a ConfigError (naming ``who`` and the task) if the source cannot serve it."""

    def available(self, task: Task) -> int | None:
        """How many distinct rows a finite source holds (None: unlimited)."""
        return None

    def reset(self) -> None:
        """Forget per-attack state (the attacker's rows drawn, rows handed out)."""

    @abstractmethod
    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        """``n`` candidate rows of ``task``, shape ``(n, task.n_features)``."""


class Strategy(Plugin):
    """Proposes the next query rows; every random choice comes from the given rng.

    The extraction loop calls :meth:`setup` once with the target's task and the budget
    (where a strategy says what it needs and resets), then :meth:`propose` per batch;
    ``history.task`` is the same task. ``needs_model`` asks the loop to refit the substitute
    before each proposal and put it in ``history.model``.
    """

    kind: ClassVar[str] = "strategy"
    needs_model: bool = False

    @property
    def uses_public_data(self) -> bool:
        """Whether the attack reads the task's attacker-public rows."""
        return False

    @property
    def uses_real_digits(self) -> bool:
        """Old name of :attr:`uses_public_data` (kept for callers of the digits lab)."""
        return self.uses_public_data

    def check_task(self, task: Task) -> None:
        """Raise a ConfigError naming the strategy and the task if it cannot attack it."""

    def setup(self, task: Task, budget: int) -> None:
        """Check the task (and that ``budget`` queries can be proposed); forget past attacks."""
        self.check_task(task)

    @abstractmethod
    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        """The next ``n`` queries, shape ``(n, history.task.n_features)``."""
