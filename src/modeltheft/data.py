"""The digits data set (scikit-learn's bundled copy) and the lab's fixed split."""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

N_FEATURES = 64
N_CLASSES = 10
IMAGE_SHAPE = (8, 8)
LAB_TEST_SIZE = 0.3
LAB_SPLIT_SEED = 42
PUBLIC_SIZE = 200


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
    digits = load_digits()
    X = digits.data / 16.0
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=LAB_TEST_SIZE, random_state=LAB_SPLIT_SEED
    )
    for array in (X_train, X_test, y_train, y_test):
        array.flags.writeable = False
    return DigitsSplit(X_train, X_test, y_train, y_test)


@dataclass(frozen=True)
class HoldoutSplit:
    """Three disjoint parts: the victim's training digits, the lab's test digits, and public
    digits an attacker may own. The public part is held out of the lab's training split
    (stratified, seeded), so a victim trained on ``victim`` has never seen it."""

    victim: DigitsSplit
    X_public: np.ndarray
    y_public: np.ndarray


@lru_cache(maxsize=1)
def holdout_split() -> HoldoutSplit:
    """The lab split with 200 training digits moved to an attacker-public pool."""
    lab = lab_split()
    X_train, X_public, y_train, y_public = train_test_split(
        lab.X_train,
        lab.y_train,
        test_size=PUBLIC_SIZE,
        random_state=LAB_SPLIT_SEED,
        stratify=lab.y_train,
    )
    for array in (X_train, X_public, y_train, y_public):
        array.flags.writeable = False
    victim = DigitsSplit(X_train, lab.X_test, y_train, lab.y_test)
    return HoldoutSplit(victim=victim, X_public=X_public, y_public=y_public)


def attacker_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real digits from the public pool (never in any victim's training or test data)."""
    pool = holdout_split()
    if not 0 <= n <= len(pool.y_public):
        raise ValueError(f"n must be in 0..{len(pool.y_public)}, got {n}")
    picks = rng.choice(len(pool.y_public), size=n, replace=False)
    return pool.X_public[picks], pool.y_public[picks]
