"""The plainest selector: ask about the source's rows in the order they come."""

from typing import ClassVar

import numpy as np

from modeltheft.attacks.base import QueryHistory, Source, Strategy
from modeltheft.errors import ConfigError
from modeltheft.tasks import Task


class RandomSelection(Strategy):
    """Each batch is the source's next ``n`` rows (random draws, or unused rows of a set)."""

    name: ClassVar[str] = "random"
    kind: ClassVar[str] = "selector"
    paper: ClassVar[str] = "Random sampling: the baseline of every extraction paper"

    def __init__(self, source: Source) -> None:
        self.source = source

    @property
    def uses_public_data(self) -> bool:
        return self.source.uses_public_data

    def check_task(self, task: Task) -> None:
        self.source.check_task(task, f"strategy {self.name!r}")

    def setup(self, task: Task, budget: int) -> None:
        super().setup(task, budget)
        self.source.reset()
        available = self.source.available(task)
        if available is not None and available < budget:
            raise ConfigError(
                f"strategy {self.name!r}: source {self.source.name!r} holds {available} rows, "
                f"fewer than the budget of {budget} queries (use synthetic, or active over them)"
            )

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        return self.source.draw(n, rng, history.target)
