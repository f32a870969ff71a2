"""Twin probing: ask a value-equal (or near-equal) copy of a row and compare the answers.

Keyed defenses (misinformation, watermarks) that key their choices on a row's exact bytes
answer ``-0.0`` and ``0.0`` differently, while the model sees the same value: a twin that
disagrees with its original unmasks a faked answer.
"""

from typing import ClassVar

import numpy as np

from modeltheft.errors import ConfigError

PAPER = "Tramèr et al., On Adaptive Attacks to Adversarial Example Defenses, NeurIPS 2020"
NUDGE = 1e-9
POLICIES = ("all", "disagree")


def twin(row: np.ndarray, rng: np.random.Generator, upper: float | None = None) -> np.ndarray:
    """A copy of ``row`` the model cannot tell apart: one zero (chosen with ``rng``) sent as
    ``-0.0``; without a zero, one feature moved by ``1e-9`` (down if at ``upper``)."""
    out = np.array(row, dtype=float)
    zeros = np.flatnonzero((out == 0.0) & ~np.signbit(out))
    if len(zeros):
        out[zeros[rng.integers(len(zeros))]] = -0.0
        return out
    j = int(rng.integers(len(out)))
    out[j] += -NUDGE if upper is not None and out[j] + NUDGE > upper else NUDGE
    return out


def twins(X: np.ndarray, rng: np.random.Generator, upper: np.ndarray | None = None) -> np.ndarray:
    """One :func:`twin` per row of ``X``."""
    return np.array(
        [twin(row, rng, None if upper is None else float(np.min(upper))) for row in X]
    ).reshape(np.shape(X))


class TwinFilter:
    """Keep an answer only when its twin got the same label (else: suspected misinformation).

    ``policy="all"`` probes every answer (one extra query each); ``"disagree"`` probes only
    the answers that the thief's working copy would have labelled otherwise (cheaper: a true
    answer that the copy already knows needs no second opinion).
    """

    paper: ClassVar[str] = PAPER

    def __init__(self, policy: str = "all") -> None:
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.probed = 0
        self.dropped = 0

    def to_probe(self, labels: np.ndarray, guesses: np.ndarray | None) -> np.ndarray:
        """Mask of the answered rows to probe (refused rows, label -1, never)."""
        answered = labels >= 0
        if self.policy == "all" or guesses is None:
            return answered
        return answered & (labels != guesses)

    def keep(self, labels: np.ndarray, twin_labels: np.ndarray) -> np.ndarray:
        """Mask of the probed rows whose twin agrees (refused twins count as agreeing)."""
        agree = (labels == twin_labels) | (twin_labels < 0)
        self.probed += len(labels)
        self.dropped += int((~agree).sum())
        return agree
