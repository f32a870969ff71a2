"""An attack described as data: what a CLI run, a benchmark or a sweep records and replays."""

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from modeltheft.attacks.extraction import Evaluate, ExtractionResult, attack_task, extract
from modeltheft.attacks.labels import parse_label_mode
from modeltheft.attacks.recipes import make_strategy
from modeltheft.attacks.substitutes import make_substitute
from modeltheft.errors import ConfigError
from modeltheft.oracle.base import Oracle

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
        """Check every field early, so a bad spec fails before any query is paid for."""
        parse_label_mode(self.label_mode, self.top_k)
        make_strategy(self.strategy, **self.params)
        make_substitute(self.substitute, self.seed)
        if self.budget < 1:
            raise ConfigError(f"budget must be >= 1, got {self.budget}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        bad = [c for c in self.checkpoints if not 0 < c <= self.budget]
        if bad:
            raise ConfigError(f"checkpoints must lie in 1..{self.budget}, got {bad}")
        return self

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
            min_answers = 1 if self.substitute == "equation-solver" else 51
        task = attack_task(oracle)
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
