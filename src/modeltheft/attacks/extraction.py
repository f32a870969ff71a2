"""The one extraction loop: propose → query → record → fit. Strategies only propose."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.errors import AttackFailed, ConfigError
from modeltheft.oracle.base import Oracle

MIN_ANSWERS = 51  # the lab trains its copy only with more than 50 answers


@dataclass
class ExtractionResult:
    """The stolen model and what it cost."""

    model: ClassifierMixin
    X: np.ndarray
    labels: np.ndarray
    sent: int
    answered: int

    @property
    def query_success_rate(self) -> float:
        """Answered / sent."""
        return self.answered / self.sent if self.sent else 0.0


def extract(
    oracle: Oracle,
    strategy: Strategy,
    substitute: ClassifierMixin,
    budget: int,
    rng: np.random.Generator,
    batch_size: int = 1,
    min_answers: int = MIN_ANSWERS,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Spend ``budget`` queries of ``oracle`` on ``strategy``'s proposals, then fit ``substitute``.

    The substitute is fitted on the hard labels of the answered queries.
    ``progress(spent, budget)`` is called after each batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if budget > oracle.remaining:
        raise ConfigError(f"budget {budget} exceeds the oracle's remaining {oracle.remaining}")
    history = QueryHistory()
    sent = 0
    while sent < budget:
        n = min(batch_size, budget - sent)
        X = strategy.propose(n, rng, history)
        answers = oracle.query(X)
        sent += n
        keep = answers.answered
        history.X.append(X[keep])
        history.labels.append(answers.labels[keep])
        history.probabilities.append(
            None if answers.probabilities is None else answers.probabilities[keep]
        )
        if progress is not None:
            progress(sent, budget)
    X_all = np.concatenate(history.X) if history.X else np.empty((0, 64))
    y_all = np.concatenate(history.labels) if history.labels else np.empty(0, dtype=int)
    if len(y_all) < min_answers:
        raise AttackFailed(
            f"only {len(y_all)} of {sent} queries were answered (need {min_answers})"
        )
    if len(np.unique(y_all)) < 2:
        raise AttackFailed(f"all {len(y_all)} answers carry the same label; nothing to learn from")
    substitute.fit(X_all, y_all)
    return ExtractionResult(model=substitute, X=X_all, labels=y_all, sent=sent, answered=len(y_all))
