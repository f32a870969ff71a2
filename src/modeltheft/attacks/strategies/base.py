"""What a query strategy is: something that proposes the next rows to ask about."""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.data import N_FEATURES


@dataclass
class QueryHistory:
    """Every batch sent so far, aligned row for row with its answers.

    ``labels`` holds -1 for refused rows; ``probabilities`` is None for a batch answered with
    labels only, and NaN rows for refused queries. ``model`` is the loop's latest substitute
    (refitted before each proposal of a strategy with ``needs_model``), or None.
    """

    X: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray | None] = field(default_factory=list)
    model: ClassifierMixin | None = None

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
        """Answered rows, labels and probabilities (None unless every batch had them)."""
        if not self.X:
            return np.empty((0, N_FEATURES)), np.empty(0, dtype=int), None
        X, labels = np.concatenate(self.X), np.concatenate(self.labels)
        keep = labels >= 0
        # A wholly refused batch carries no probabilities; it must not hide the others'.
        answered = [(p, y >= 0) for p, y in zip(self.probabilities, self.labels, strict=True)]
        answered = [(p, mask) for p, mask in answered if mask.any()]
        probabilities = None
        if answered and all(p is not None for p, _ in answered):
            probabilities = np.concatenate([p[mask] for p, mask in answered])  # type: ignore[index]
        return X[keep], labels[keep], probabilities


class Strategy(ABC):
    """Proposes query rows in [0, 1]^64; every random choice comes from the given rng.

    Constructors only store their keyword arguments; ``needs_model`` asks the extraction loop
    to refit the substitute before each proposal and put it in ``history.model``.
    """

    name: str = "strategy"
    paper: str = ""
    needs_model: bool = False

    @abstractmethod
    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        """The next ``n`` queries, shape ``(n, 64)``, values in [0, 1]."""
