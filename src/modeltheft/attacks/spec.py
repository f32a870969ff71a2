"""An attack described as data: what a CLI run, a benchmark or a sweep records and replays."""

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from modeltheft.attacks.cnn import INSTALL_HINT
from modeltheft.attacks.extraction import (
    MIN_ANSWERS,
    Evaluate,
    ExtractionResult,
    attack_task,
    extract,
)
from modeltheft.attacks.labels import parse_label_mode
from modeltheft.attacks.recipes import make_strategy
from modeltheft.attacks.substitutes import make_substitute
from modeltheft.errors import ConfigError
from modeltheft.oracle.base import Oracle
from modeltheft.tasks import Task

PROBABILITY_SUBSTITUTES = ("equation-solver",)
"""Substitutes that learn only from probabilities."""


@dataclass(frozen=True)
class AttackSpec:
    """Strategy (with parameters), substitute, label mode, budget, batching and seed."""

    strategy: str = "owasp-synthetic"
    params: dict[str, Any] = field(default_factory=dict)
    substitute: str = "lr"
    label_mode: str = "hard"
    top_k: int = 3
    budget: int = 300
    batch_size: int = 1
    checkpoints: tuple[int, ...] = ()
    seed: int = 0

    def validate(self) -> "AttackSpec":
        """Check every field early, so a bad spec fails before any query is paid for: the
        budget must buy the answers the substitute needs, and ``cnn`` needs PyTorch."""
        parse_label_mode(self.label_mode, self.top_k)
        make_strategy(self.strategy, **self.params)
        make_substitute(self.substitute, self.seed)
        if self.substitute == "cnn" and importlib.util.find_spec("torch") is None:
            raise ConfigError(INSTALL_HINT)
        self.check_budget()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        bad = [c for c in self.checkpoints if not 0 < c <= self.budget]
        if bad:
            raise ConfigError(f"checkpoints must lie in 1..{self.budget}, got {bad}")
        return self

    def min_answers(self, task: Task | None = None) -> int:
        """Answers the substitute needs before it can be fitted: 51 (as the lab), or for
        equation solving one more than the task's width (1 while the width is unknown)."""
        if self.substitute != "equation-solver":
            return MIN_ANSWERS
        return 1 if task is None else task.n_features + 1

    def check_budget(self, task: Task | None = None) -> None:
        """A ConfigError when the budget cannot buy :meth:`min_answers` answers."""
        need = self.min_answers(task)
        if self.budget < need:
            solver = task is not None and self.substitute == "equation-solver"
            width = f" ({task.n_features} features)" if solver and task is not None else ""
            raise ConfigError(
                f"budget {self.budget} is too small: substitute {self.substitute!r} needs at "
                f"least {need} answers{width}; give a budget of {need} or more"
            )

    @property
    def needs_probabilities(self) -> bool:
        """Whether the answers must carry probabilities (soft or top-k labels, or a
        substitute that cannot learn from labels)."""
        return self.label_mode != "hard" or self.substitute in PROBABILITY_SUBSTITUTES

    def record(self) -> dict[str, Any]:
        """JSON-able form."""
        return {**asdict(self), "checkpoints": list(self.checkpoints)}

    def run(
        self,
        oracle: Oracle,
        evaluate: Evaluate | None = None,
        progress: Any = None,
        min_answers: int | None = None,
    ) -> ExtractionResult:
        """Run this attack against ``oracle``."""
        self.validate()
        if min_answers is None:
            min_answers = self.min_answers()
        task = attack_task(oracle)
        self.check_budget(task)  # the target's width is known now; nothing is paid yet
        return extract(
            oracle,
            make_strategy(self.strategy, **self.params),
            make_substitute(self.substitute, self.seed, task),
            self.budget,
            np.random.default_rng(self.seed),
            batch_size=self.batch_size,
            label_mode=self.label_mode,
            k=self.top_k,
            checkpoints=self.checkpoints,
            evaluate=evaluate,
            min_answers=min_answers,
            progress=progress,
            task=task,
        )


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["pool=rendered-digits", "seed_rows=10"]`` → typed dict (int, float, bool, str)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"strategy parameters look like key=value, got {item!r}")
        value: Any = raw.strip()
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            value = value.lower() == "true"
        params[key.strip()] = value
    return params


def default_checkpoints(budget: int, points: int = 10) -> tuple[int, ...]:
    """About ``points`` evenly spaced query counts ending at the budget."""
    return tuple(sorted({max(1, round(budget * i / points)) for i in range(1, points + 1)}))
