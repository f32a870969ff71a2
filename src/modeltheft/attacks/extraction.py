"""The one extraction loop: propose → query → record → (re)fit. Strategies only propose."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import ClassifierMixin, clone

from modeltheft.attacks.labels import fit_substitute, parse_label_mode, soft_targets
from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.data import N_FEATURES
from modeltheft.errors import AttackFailed, ConfigError
from modeltheft.oracle.base import Oracle

MIN_ANSWERS = 51  # the lab trains its copy only with more than 50 answers
MIN_REFIT = 10  # a strategy's working model needs at least this many answers

Evaluate = Callable[[ClassifierMixin], dict[str, float]]


@dataclass(frozen=True)
class CurvePoint:
    """The stolen model's metrics after ``spent`` queries (None below the minimum answers)."""

    spent: int
    answered: int
    metrics: dict[str, float] | None


@dataclass
class ExtractionResult:
    """The stolen model, what it cost, and its budget curve."""

    model: ClassifierMixin
    X: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray | None
    sent: int
    answered: int
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def query_success_rate(self) -> float:
        """Answered / sent."""
        return self.answered / self.sent if self.sent else 0.0


def _fit(
    substitute: ClassifierMixin, history: QueryHistory, mode: str, k: int, classes: np.ndarray
) -> ClassifierMixin:
    X, labels, probabilities = history.answered()
    targets = soft_targets(labels, probabilities, mode, k, classes)
    return fit_substitute(clone(substitute), X, labels, targets, classes)


def extract(
    oracle: Oracle,
    strategy: Strategy,
    substitute: ClassifierMixin,
    budget: int,
    rng: np.random.Generator,
    batch_size: int = 1,
    label_mode: str = "hard",
    k: int = 3,
    checkpoints: Sequence[int] = (),
    evaluate: Evaluate | None = None,
    min_answers: int = MIN_ANSWERS,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Spend ``budget`` queries of ``oracle`` on ``strategy``'s proposals, then fit ``substitute``.

    ``label_mode`` is ``hard``, ``soft`` or ``top-k`` (with ``k``). At each of ``checkpoints``
    (query counts) a copy is fitted and ``evaluate(model)`` recorded, giving a budget curve;
    the budget itself is always a checkpoint when ``evaluate`` is given.
    ``progress(spent, budget)`` is called after each batch.
    """
    mode, k = parse_label_mode(label_mode, k)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if budget < 1 or budget > oracle.remaining:
        raise ConfigError(f"budget must be in 1..{oracle.remaining}, got {budget}")
    classes = np.arange(oracle.n_classes)
    stops = sorted({c for c in checkpoints if 0 < c < budget} | ({budget} if evaluate else set()))
    history = QueryHistory()
    curve: list[CurvePoint] = []
    fitted_at = 0
    final: ClassifierMixin | None = None
    while history.n_sent < budget:
        sent = history.n_sent
        next_stop = next((s for s in stops if s > sent), budget)
        n = min(batch_size, next_stop - sent)
        if strategy.needs_model:
            answered = len(history.answered()[1])
            if answered >= MIN_REFIT and (history.model is None or answered >= 1.1 * fitted_at):
                try:
                    # The working model only steers the strategy: hard labels fit it fastest.
                    history.model = _fit(substitute, history, "hard", k, classes)
                    fitted_at = answered
                except AttackFailed:
                    pass
        X = np.clip(np.asarray(strategy.propose(n, rng, history), dtype=float), 0.0, 1.0)
        if X.shape != (n, N_FEATURES):
            raise ConfigError(
                f"strategy {strategy.name} proposed shape {X.shape}, expected ({n}, 64)"
            )
        answers = oracle.query(X)
        history.add(X, answers.labels, answers.probabilities)
        if progress is not None:
            progress(history.n_sent, budget)
        if evaluate is not None and history.n_sent in stops:
            answered = len(history.answered()[1])
            metrics = None
            if answered >= min_answers:
                try:
                    model = _fit(substitute, history, mode, k, classes)
                except AttackFailed:
                    model = None
                if model is not None:
                    metrics = evaluate(model)
                    final = model if history.n_sent == budget else None
            curve.append(CurvePoint(history.n_sent, answered, metrics))
    X_all, y_all, p_all = history.answered()
    if len(y_all) < min_answers:
        raise AttackFailed(
            f"only {len(y_all)} of {history.n_sent} queries were answered (need {min_answers})"
        )
    model = final if final is not None else _fit(substitute, history, mode, k, classes)
    return ExtractionResult(model, X_all, y_all, p_all, history.n_sent, len(y_all), curve)
