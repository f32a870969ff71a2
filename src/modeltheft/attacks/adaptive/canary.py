"""A canary: twins of rows whose answers the thief knows, asked now and then on the same key.

Under a "silent" strict policy a flagged key's answers are misinformed; twins of rows the
thief already knows the answers to (asked while the key was clean) tell it so, and it moves
to a new key before paying for more faked answers.
"""

from typing import ClassVar

import numpy as np

from modeltheft.attacks.adaptive.twins import PAPER, twins
from modeltheft.errors import ConfigError
from modeltheft.oracle.base import Oracle


class Canary:
    """Every ``every`` queries, ask twins of ``n`` known rows; flagged when more than
    ``tolerance`` of them come back with another label than the known one.

    ``rows`` and ``labels`` are rows the thief owns and their known labels (its own labels,
    or the answers a clean key gave); label indices as the oracle returns them.
    """

    paper: ClassVar[str] = PAPER

    def __init__(
        self,
        rows: np.ndarray,
        labels: np.ndarray,
        every: int = 50,
        n: int = 2,
        tolerance: float = 0.5,
    ) -> None:
        rows = np.atleast_2d(np.asarray(rows, dtype=float))
        labels = np.asarray(labels)
        if len(rows) == 0 or len(rows) != len(labels):
            raise ConfigError(
                f"a canary needs known rows and one label each, got {len(rows)} rows and "
                f"{len(labels)} labels"
            )
        if not isinstance(every, int) or every < 1 or not isinstance(n, int) or n < 1:
            raise ConfigError(f"every and n must be integers >= 1, got {every!r} and {n!r}")
        if not 0 <= tolerance < 1:
            raise ConfigError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.rows = rows
        self.labels = labels
        self.every = every
        self.n = n
        self.tolerance = tolerance
        self.last = 0
        self.checks: list[tuple[int, bool]] = []
        """(queries spent before the check, flagged) for every check."""

    def due(self, spent: int) -> bool:
        """Whether ``every`` queries went by since the last check."""
        return spent - self.last >= self.every

    def probe(self, oracle: Oracle, rng: np.random.Generator, spent: int | None = None) -> bool:
        """Ask ``n`` twins on ``oracle``'s current key; True if the key looks flagged."""
        at = oracle.spent if spent is None else spent
        pick = rng.choice(len(self.rows), size=min(self.n, len(self.rows)), replace=False)
        answers = oracle.query(twins(self.rows[pick], rng))
        answered = answers.labels >= 0
        wrong = answered & (answers.labels != self.labels[pick])
        flagged = bool(answered.any() and wrong.sum() > self.tolerance * answered.sum())
        flagged = flagged or not answered.any()  # refused outright: the key is burnt too
        self.last = at
        self.checks.append((at, flagged))
        return flagged
