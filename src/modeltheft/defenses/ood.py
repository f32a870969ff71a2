"""Out-of-distribution scores: how far a query lies from the victim's training data.

The score of a row is its mean Euclidean distance to the ``k`` nearest training digits. The
threshold for a target false-positive rate is a quantile of the training digits' own
leave-one-out scores, so it is set without touching any test digit. The model's confidence
would be a weak score here: a random forest is often confident on noise.
"""

from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from modeltheft.data import holdout_split, lab_split
from modeltheft.errors import ConfigError

BUNDLED = ("lab", "holdout")


def reference_data(reference: str) -> np.ndarray:
    """The in-distribution rows: a bundled split's training digits, or a ``.npy`` file."""
    if reference == "lab":
        return lab_split().X_train
    if reference == "holdout":
        return holdout_split().victim.X_train
    path = Path(reference)
    if path.suffix != ".npy" or not path.is_file():
        raise ConfigError(
            f"reference must be one of {', '.join(BUNDLED)} or an existing .npy file, "
            f"got {reference!r}"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read reference data {path}: {exc}") from None
    if data.ndim != 2 or len(data) < 10 or not np.isfinite(data).all():
        raise ConfigError(f"{path}: need a finite 2-D array with at least 10 rows")
    return np.asarray(data, dtype=float)


class KnnScorer:
    """Mean distance to the k nearest reference rows, with leave-one-out calibration."""

    def __init__(self, reference: np.ndarray, k: int = 5) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < len(reference):
            raise ConfigError(f"k must be an integer in 1..{len(reference) - 1}, got {k!r}")
        self.k = k
        self.n_features = reference.shape[1]
        self._reference = np.ascontiguousarray(reference, dtype=float)
        self._squared = np.einsum("ij,ij->i", self._reference, self._reference)
        distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(reference).kneighbors(reference)
        self.calibration = np.sort(distances[:, 1:].mean(axis=1))
        """Leave-one-out scores of the reference rows, ascending."""
        self._memo: tuple[np.ndarray, np.ndarray] | None = None

    def score(self, X: np.ndarray) -> np.ndarray:
        """One score per row; larger means further from the training data.

        Plain NumPy (a small matrix product and a partial sort): for request-sized batches it
        is far faster than a scikit-learn query, whose dispatch costs more than the work. The
        last batch's scores are remembered, so stages sharing a scorer compute them once.
        """
        memo = self._memo
        if memo is not None and memo[0] is X:
            return memo[1]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"rows must have {self.n_features} features, got shape {X.shape}")
        if len(X) == 1:  # most requests: fewer NumPy calls, each costly with cold caches
            x = X[0]
            squared = self._squared - 2.0 * (self._reference @ x)
            nearest = np.partition(squared, self.k - 1)[: self.k] + x @ x
            scores = np.sqrt(np.maximum(nearest, 0.0)).mean(keepdims=True)
        else:
            squared = np.einsum("ij,ij->i", X, X)[:, None] + self._squared[None, :]
            squared -= 2.0 * (X @ self._reference.T)
            nearest = np.partition(squared, self.k - 1, axis=1)[:, : self.k]
            scores = np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1)
        self._memo = (X, scores)
        return scores

    def threshold(self, fpr: float) -> float:
        """Score above which a reference row is flagged with frequency ``fpr``."""
        return float(np.quantile(self.calibration, 1.0 - fpr))


@lru_cache(maxsize=8)
def knn_scorer(reference: str, k: int) -> KnnScorer:
    """A shared scorer per (reference, k): several stages and requests reuse one index."""
    return KnnScorer(reference_data(reference), k)


def check_rate(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    """A rate parameter in (low, high]."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not low < value <= high:
        raise ConfigError(f"{name} must be a number in ({low}, {high}], got {value!r}")
    return float(value)
