"""The one extraction loop: propose → query → record → (re)fit. Strategies only propose."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import ClassifierMixin, clone

from modeltheft.attacks.base import QueryHistory, Strategy
from modeltheft.attacks.labels import fit_substitute, parse_label_mode, soft_targets
from modeltheft.errors import AttackFailed, ConfigError
from modeltheft.oracle.answers import OracleAnswers
from modeltheft.oracle.base import Oracle
from modeltheft.tasks import BUILTIN, Task

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
    """The victim's answers as class values (``task.classes``)."""
    probabilities: np.ndarray | None
    sent: int
    answered: int
    curve: list[CurvePoint] = field(default_factory=list)
    task: Task | None = None
    """The task attacked (what the target said of itself, and what the thief knew)."""

    @property
    def query_success_rate(self) -> float:
        """Answered / sent."""
        return self.answered / self.sent if self.sent else 0.0


def _same_classes(a: Task, b: Task) -> bool:
    return a.n_classes == b.n_classes and set(a.classes.tolist()) == set(b.classes.tolist())


def attack_task(oracle: Oracle, task: Task | None = None) -> Task:
    """The task an attack works on: what the target says of itself, with what the thief knows.

    ``task`` (the thief's own description, e.g. with attacker-public rows) must match the
    discovered width and classes; it is taken in the target's class order. Without one, a
    target that names a built-in task (whose attacker-public rows are public by definition)
    gets that task's rows; any other target is attacked as it describes itself.
    """
    found = oracle.discover()
    if task is not None:
        if task.n_features != found.n_features or not _same_classes(task, found):
            raise ConfigError(
                f"task {task.name!r} ({task.n_features} features, {task.n_classes} classes) "
                f"does not match the target ({found.n_features} features, "
                f"{found.n_classes} classes)"
            )
        return task.with_classes(found.classes)
    if found.data is not None or found.name not in BUILTIN:
        return found
    known = BUILTIN[found.name]()
    if known.n_features == found.n_features and _same_classes(known, found):
        return known.with_classes(found.classes)
    return found


def _paid(oracle: Oracle) -> str:
    """Where the answers paid for so far are kept, for a failure message."""
    if oracle.log.path is None:
        return ""
    return (
        f"; the {oracle.spent} answers paid for are kept in {oracle.log.path} and a rerun "
        "with the same --out reuses them"
    )


def check_first_answers(
    oracle: Oracle, answers: OracleAnswers, mode: str, substitute: ClassifierMixin
) -> None:
    """Fail now, not after the whole budget, when the first answers cannot serve the label
    mode (labels only for soft / top-k) or the substitute's own check (equation solving's
    precision). The message says how to get probabilities and that the answers are kept."""
    check = getattr(substitute, "check_answers", None)
    if mode == "hard" and check is None:
        return
    if answers.probabilities is None:
        needs = f"label mode {mode!r}" if mode != "hard" else f"substitute {substitute!r}"
        if oracle.reused >= len(answers.labels) and oracle.log.path is not None:
            raise AttackFailed(
                f"{needs} needs probabilities, but the query log {oracle.log.path} holds "
                "labels-only answers (a hard-label run paid for them): give another --out"
            )
        note = getattr(oracle, "note", None)
        raise AttackFailed(
            f"{needs} needs probabilities, but {oracle.target} answered the first batch with "
            f"labels only{f' ({note})' if note else ''}; {oracle.probability_hint}" + _paid(oracle)
        )
    if check is not None:
        try:
            check(answers.probabilities[answers.answered])
        except AttackFailed as exc:
            raise AttackFailed(f"{exc}{_paid(oracle)}") from None


def _fit(
    substitute: ClassifierMixin, history: QueryHistory, mode: str, k: int, task: Task
) -> ClassifierMixin:
    """Fit a fresh copy of ``substitute`` on the answers, as class values of ``task``."""
    X, labels, probabilities = history.answered()
    targets = soft_targets(labels, probabilities, mode, k, task.classes)
    return fit_substitute(clone(substitute), X, task.classes[labels], targets, task.classes)


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
    task: Task | None = None,
) -> ExtractionResult:
    """Spend ``budget`` queries of ``oracle`` on ``strategy``'s proposals, then fit ``substitute``.

    ``label_mode`` is ``hard``, ``soft`` or ``top-k`` (with ``k``). At each of ``checkpoints``
    (query counts) a copy is fitted and ``evaluate(model)`` recorded, giving a budget curve;
    the budget itself is always a checkpoint when ``evaluate`` is given.
    ``progress(spent, budget)`` is called after each batch.

    The target's task comes from ``oracle.discover()`` (see :func:`attack_task`; ``task``
    adds what the thief knows). The strategy gets it in ``setup`` and ``history.task``; its
    proposals must be ``(n, task.n_features)`` and are clipped with ``task.clip``; the copy is
    fitted on class values, so it predicts the victim's labels.
    """
    mode, k = parse_label_mode(label_mode, k)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if budget < 1 or budget > oracle.remaining:
        raise ConfigError(f"budget must be in 1..{oracle.remaining}, got {budget}")
    task = attack_task(oracle, task)
    strategy.setup(task, budget)
    stops = sorted({c for c in checkpoints if 0 < c < budget} | ({budget} if evaluate else set()))
    history = QueryHistory(task=task)
    curve: list[CurvePoint] = []
    fitted_at = 0
    final: ClassifierMixin | None = None
    checked = False
    while history.n_sent < budget:
        sent = history.n_sent
        next_stop = next((s for s in stops if s > sent), budget)
        n = min(batch_size, next_stop - sent)
        if strategy.needs_model:
            answered = len(history.answered()[1])
            if answered >= MIN_REFIT and (history.model is None or answered >= 1.1 * fitted_at):
                try:
                    # The working model only steers the strategy: hard labels fit it fastest.
                    history.model = _fit(substitute, history, "hard", k, task)
                    fitted_at = answered
                except AttackFailed:
                    pass
        X = np.asarray(strategy.propose(n, rng, history), dtype=float)
        if X.shape != (n, task.n_features):
            raise ConfigError(
                f"strategy {strategy.name!r} proposed shape {X.shape}, expected ({n}, "
                f"{task.n_features}) for task {task.name!r} ({task.n_features} features)"
            )
        X = task.clip(X)
        answers = oracle.query(X)
        if not checked and answers.answered.any():
            check_first_answers(oracle, answers, mode, substitute)
            checked = True
        history.add(X, answers.labels, answers.probabilities)
        if progress is not None:
            progress(history.n_sent, budget)
        if evaluate is not None and history.n_sent in stops:
            answered = len(history.answered()[1])
            metrics = None
            if answered >= min_answers:
                try:
                    model = _fit(substitute, history, mode, k, task)
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
    model = final if final is not None else _fit(substitute, history, mode, k, task)
    return ExtractionResult(
        model, X_all, task.classes[y_all], p_all, history.n_sent, len(y_all), curve, task
    )
