"""Compatibility view of the ``digits`` task (:mod:`modeltheft.tasks.digits`) for code that
has not moved to :class:`~modeltheft.tasks.Task` yet. New code reads the task instead."""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from modeltheft.tasks.digits import EVAL_SIZE, PUBLIC_SIZE, SPLIT_SEED, digits_task

N_FEATURES = 64
N_CLASSES = 10
IMAGE_SHAPE = (8, 8)
LAB_TEST_SIZE = EVAL_SIZE
LAB_SPLIT_SEED = SPLIT_SEED


@dataclass(frozen=True)
class DigitsSplit:
    """Victim-training and test digits, pixels scaled to [0, 1]."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray

    def describe(self) -> dict[str, object]:
        """Metadata that identifies this split."""
        return {
            "dataset": "sklearn.datasets.load_digits",
            "scaling": "pixels / 16",
            "test_size": LAB_TEST_SIZE,
            "random_state": LAB_SPLIT_SEED,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
        }


@lru_cache(maxsize=1)
def lab_split() -> DigitsSplit:
    """The OWASP lab split: 70 % victim training, 30 % (540 images) test, ``random_state=42``."""
    data = digits_task().data
    return DigitsSplit(data.X_train, data.X_eval, data.y_train, data.y_eval)


@dataclass(frozen=True)
class HoldoutSplit:
    """The victim's training digits less the public ones, the test digits, the public digits."""

    victim: DigitsSplit
    X_public: np.ndarray
    y_public: np.ndarray


@lru_cache(maxsize=1)
def holdout_split() -> HoldoutSplit:
    """The lab split with 200 training digits moved to an attacker-public pool."""
    data = digits_task().data
    X_train, y_train = data.victim_rows(holdout=True)
    victim = DigitsSplit(X_train, data.X_eval, y_train, data.y_eval)
    return HoldoutSplit(victim=victim, X_public=data.X_public, y_public=data.y_public)


def attacker_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real digits from the public pool (never in any victim's training or test data)."""
    pool = holdout_split()
    if not 0 <= n <= len(pool.y_public):
        raise ValueError(f"n must be in 0..{len(pool.y_public)}, got {n}")
    picks = rng.choice(len(pool.y_public), size=n, replace=False)
    return pool.X_public[picks], pool.y_public[picks]


__all__ = ["PUBLIC_SIZE"]
