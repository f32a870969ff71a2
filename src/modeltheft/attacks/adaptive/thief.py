"""A thief that knows the defenses: rotation, twins, canaries, PRADA replay, ``/metrics``.

:class:`Thief` runs its own loop around a strategy and a substitute (as
:func:`~modeltheft.attacks.extract` does, hard labels only), and counts *every* query it
pays for (twins and canaries too) against the budget.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from sklearn.base import ClassifierMixin, clone

from modeltheft.attacks.adaptive.canary import Canary
from modeltheft.attacks.adaptive.keys import RotatingOracle
from modeltheft.attacks.adaptive.metrics import MetricsReader
from modeltheft.attacks.adaptive.prada_replay import PradaReplay
from modeltheft.attacks.adaptive.twins import PAPER, TwinFilter, twins
from modeltheft.attacks.base import QueryHistory, Strategy
from modeltheft.attacks.extraction import MIN_ANSWERS, attack_task
from modeltheft.attacks.labels import fit_substitute
from modeltheft.errors import AttackFailed, ConfigError
from modeltheft.oracle.base import Oracle
from modeltheft.tasks import Task

Evaluate = Callable[[ClassifierMixin], dict[str, float]]


@dataclass
class ThiefRun:
    """What a thief got and what it cost."""

    model: ClassifierMixin | None
    curve: dict[int, dict[str, float]]
    """Metrics of the copy at each checkpoint (queries paid for, twins and canaries too)."""
    spent: int
    kept: int
    """Answers the copy was trained on at the end."""
    keys_used: int
    canary_flags: list[int] = field(default_factory=list)
    """Queries spent when a canary said the key was flagged."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Answers dropped, by reason: twin, canary, metrics."""
    prada_replaced: int = 0
    metrics_status: str = "unused"


class Thief:
    """Compose the adaptive tricks around ``strategy`` and ``substitute``.

    - ``twins``: a :class:`TwinFilter` (answers whose twin disagrees are dropped);
    - ``canary_every``: every that many queries, twins of ``canary_n`` rows the thief knows
      (the first ``canary_rows`` answers, asked while the key was clean: the strategy's own
      rows) are asked; if the key looks flagged, the answers since the last clean check are
      dropped and, on a :class:`RotatingOracle`, the thief moves to a new key;
    - ``prada``: a :class:`PradaReplay` that screens each batch before it is sent; rows it
      turns down are replaced by proposals of ``fallback`` (default: the strategy itself);
    - ``metrics``: a :class:`MetricsReader` read around each request; a request during which
      answers were altered is dropped;
    - the working copy is refitted every ``refit_every`` queries when something reads it (it
      guesses labels for the screen and for ``TwinFilter(policy="disagree")``, and steers
      strategies that need one).
    """

    paper: ClassVar[str] = PAPER

    def __init__(
        self,
        strategy: Strategy,
        substitute: ClassifierMixin,
        twins: TwinFilter | None = None,
        canary_every: int | None = None,
        canary_n: int = 2,
        canary_rows: int = 20,
        prada: PradaReplay | None = None,
        metrics: MetricsReader | None = None,
        fallback: Strategy | None = None,
        refit_every: int = 25,
        batch_size: int = 1,
        min_answers: int = MIN_ANSWERS,
    ) -> None:
        if batch_size < 1 or refit_every < 1:
            raise ConfigError(
                f"batch_size and refit_every must be >= 1, got {batch_size} and {refit_every}"
            )
        self.strategy = strategy
        self.substitute = substitute
        self.twins = twins
        self.canary_every = canary_every
        self.canary_n = canary_n
        self.canary_rows = canary_rows
        self.prada = prada
        self.metrics = metrics
        self.fallback = fallback
        self.refit_every = refit_every
        self.batch_size = batch_size
        self.min_answers = min_answers

    def _fit(self, history: QueryHistory, task: Task) -> ClassifierMixin | None:
        X, labels, _ = history.answered()
        if len(labels) < 2 or len(np.unique(labels)) < 2:
            return None
        try:
            return fit_substitute(
                clone(self.substitute), X, task.classes[labels], None, task.classes
            )
        except AttackFailed:
            return None

    def run(
        self,
        oracle: Oracle,
        budget: int,
        rng: np.random.Generator,
        checkpoints: Sequence[int] = (),
        evaluate: Evaluate | None = None,
        task: Task | None = None,
    ) -> ThiefRun:
        """Spend ``budget`` queries of ``oracle``; evaluate the copy at ``checkpoints``."""
        if budget < 1 or budget > oracle.remaining:
            raise ConfigError(f"budget must be in 1..{oracle.remaining}, got {budget}")
        task = attack_task(oracle, task)
        self.strategy.setup(task, budget)
        history = QueryHistory(task=task)
        start = oracle.spent
        stops = sorted({c for c in checkpoints if 0 < c < budget} | {budget})
        curve: dict[int, dict[str, float]] = {}
        dropped = {"twin": 0, "canary": 0, "metrics": 0}
        canary: Canary | None = None
        flags: list[int] = []
        clean_from = 0  # history batches from here on came after the last clean canary
        last_fit = 0
        final: ClassifierMixin | None = None
        index = {c: i for i, c in enumerate(task.classes.tolist())}

        def spent() -> int:
            return oracle.spent - start

        def guess(X: np.ndarray) -> np.ndarray:
            if history.model is None:
                return np.zeros(len(X), dtype=int)
            return np.array([index.get(v, 0) for v in history.model.predict(X).tolist()])

        def propose(n: int, strategy: Strategy = self.strategy) -> np.ndarray:
            return task.clip(np.asarray(strategy.propose(n, rng, history), dtype=float))

        fallback = self.fallback or self.strategy
        if self.fallback is not None:
            self.fallback.setup(task, budget)

        needs_model = self.strategy.needs_model or self.prada is not None
        needs_model |= self.twins is not None and self.twins.policy == "disagree"
        cost = 2 if self.twins is not None and self.twins.policy == "all" else 1
        for stop in stops:
            while spent() + cost <= stop:
                if canary is not None and canary.due(spent()) and spent() + canary.n < stop:
                    if canary.probe(oracle, rng, spent()):
                        flags.append(spent())
                        for labels in history.labels[clean_from:]:
                            dropped["canary"] += int((labels >= 0).sum())
                            labels[:] = -1
                        if isinstance(oracle, RotatingOracle):
                            oracle.rotate()
                    clean_from = len(history.labels)
                    continue
                n = min(self.batch_size, (stop - spent()) // cost)
                X = propose(n)
                if self.prada is not None:
                    X = task.clip(self.prada.screen(X, guess, lambda m: propose(m, fallback)))
                before = self.metrics.read() if self.metrics is not None else None
                sent, labels = self._ask(oracle, X, rng, guess, dropped, task, stop - spent())
                if self.metrics is not None:
                    altered = MetricsReader.altered_between(before, self.metrics.read())
                    if altered:
                        dropped["metrics"] += int((labels >= 0).sum())
                        labels[:] = -1
                if self.prada is not None:
                    self.prada.commit(*sent)
                history.add(X, labels, None)
                if canary is None and self.canary_every:
                    canary = self._canary(history)
                if needs_model and spent() - last_fit >= self.refit_every:
                    history.model = self._fit(history, task) or history.model
                    last_fit = spent()
            n_kept = int((np.concatenate(history.labels) >= 0).sum()) if history.labels else 0
            final = None
            if evaluate is not None and n_kept >= self.min_answers:
                final = self._fit(history, task)
                if final is not None:
                    curve[stop] = evaluate(final)
        if final is None:  # the last stop (the budget) fitted no copy to evaluate
            final = self._fit(history, task)
        kept = int((np.concatenate(history.labels) >= 0).sum()) if history.labels else 0
        return ThiefRun(
            model=final,
            curve=curve,
            spent=spent(),
            kept=kept,
            keys_used=oracle.keys_used if isinstance(oracle, RotatingOracle) else 1,
            canary_flags=flags,
            dropped=dropped,
            prada_replaced=self.prada.replaced if self.prada is not None else 0,
            metrics_status=self.metrics.status if self.metrics is not None else "unused",
        )

    def _ask(
        self,
        oracle: Oracle,
        X: np.ndarray,
        rng: np.random.Generator,
        guess: Callable[[np.ndarray], np.ndarray],
        dropped: dict[str, int],
        task: Task,
        room: int,
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Ask ``X`` (with twins as the filter says): every row sent with its raw label, and
        the labels kept for ``X`` (-1: refused or dropped)."""
        n = len(X)
        if self.twins is None:
            answers = oracle.query(X)
            return (X, answers.labels), answers.labels.copy()
        if self.twins.policy == "all":
            asked = np.vstack([X, twins(X, rng, task.upper)])
            answers = oracle.query(asked)
            labels = answers.labels[:n].copy()
            probe = labels >= 0
            twin_labels = answers.labels[n:]
            sent = (asked, answers.labels)
        else:
            answers = oracle.query(X)
            labels = answers.labels.copy()
            probe = self.twins.to_probe(labels, guess(X) if labels.size else None)
            probe &= np.cumsum(probe) <= room - n
            sent = (X, answers.labels)
            twin_labels = labels.copy()
            if probe.any():
                extra = twins(X[probe], rng, task.upper)
                twin_answers = oracle.query(extra)
                twin_labels[probe] = twin_answers.labels
                sent = (np.vstack([X, extra]), np.concatenate([labels, twin_answers.labels]))
        keep = np.ones(n, dtype=bool)
        keep[probe] = self.twins.keep(labels[probe], twin_labels[probe])
        dropped["twin"] += int((~keep).sum())
        labels[~keep] = -1
        return sent, labels

    def _canary(self, history: QueryHistory) -> Canary | None:
        """A canary over the first ``canary_rows`` answered rows, once there are that many."""
        X, labels = history.asked(), np.concatenate(history.labels)
        known = labels >= 0
        if known.sum() < min(self.canary_rows, 1) or len(labels) < self.canary_rows:
            return None
        X, labels = X[known][: self.canary_rows], labels[known][: self.canary_rows]
        return Canary(X, labels, every=self.canary_every or 1, n=self.canary_n)


def describe(run: ThiefRun) -> dict[str, Any]:
    """A JSON-able summary of a run (no model)."""
    return {
        "curve": run.curve,
        "spent": run.spent,
        "kept": run.kept,
        "keys_used": run.keys_used,
        "canary_flags": run.canary_flags,
        "dropped": run.dropped,
        "prada_replaced": run.prada_replaced,
        "metrics_status": run.metrics_status,
    }
