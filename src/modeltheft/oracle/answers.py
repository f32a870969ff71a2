"""What an oracle returns for a batch of queries."""

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OracleAnswers:
    """Answers to a batch: ``labels`` are indices into the task's classes (-1 for refused rows,
    whose probabilities are NaN); ``probabilities`` has one column per class, or is None."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    refused: np.ndarray

    @property
    def answered(self) -> np.ndarray:
        """Mask of the rows that got an answer."""
        return ~self.refused

    def records(self, classes: np.ndarray) -> list[dict[str, Any]]:
        """One JSON-able log record per row: the class *value* of its label (None if refused),
        its probabilities (or None) and whether it was refused."""
        out = []
        for i, label in enumerate(self.labels):
            refused = bool(self.refused[i])
            probs = None
            if self.probabilities is not None and not refused:
                probs = [float(p) for p in self.probabilities[i]]
            value = None if refused else np.asarray(classes)[int(label)].item()
            out.append({"label": value, "probabilities": probs, "refused": refused})
        return out
