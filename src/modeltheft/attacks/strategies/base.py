"""What a query strategy is: something that proposes the next rows to ask about."""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass
class QueryHistory:
    """Answered queries so far (adaptive strategies read it; others ignore it)."""

    X: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray | None] = field(default_factory=list)


class Strategy(ABC):
    """Proposes query rows in [0, 1]^64; every random choice comes from the given rng."""

    name: str = "strategy"
    paper: str = ""

    @abstractmethod
    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        """The next ``n`` queries, shape ``(n, 64)``."""
