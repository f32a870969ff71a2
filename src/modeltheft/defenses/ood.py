"""Out-of-distribution scores: how far a query lies from the victim's training data.

The score of a row is its mean Euclidean distance to the ``k`` nearest *reference* rows, in
a standardised space (each feature divided by a scale fitted on the reference rows). The
threshold for a target false-positive rate is a quantile of the reference rows' own
leave-one-out scores, so it is set without touching any evaluation row. The model's
confidence would be a weak score here: a random forest is often confident on noise.

The reference (``reference``):

- ``"task"`` (default): the training rows of the model's task (``task.data.X_train``);
- ``"lab"`` / ``"holdout"``: the digits task's training rows with / without its 200 public
  digits (the names older configuration files use);
- a ``.npy`` file of at least 10 finite rows as wide as the task (read with the tasks' reader,
  :func:`~modeltheft.tasks.files.read_rows`, which refuses pickles).

The scale (``scale``):

- ``"auto"`` (default): ``"range"`` for image tasks and for tasks whose features all share one
  finite declared range (digits' pixels: [0, 1], so distances are the raw ones, bit for bit),
  otherwise ``"rank"``;
- ``"range"``: each feature divided by its declared range ``upper - lower`` (finite bounds);
- ``"standard"``: each feature divided by its standard deviation over the reference rows;
- ``"rank"``: each feature mapped through the reference rows' empirical distribution (a
  per-feature quantile standardisation: every column spread evenly over [0, 1]);
- ``"none"``: raw distances.

Why ``"rank"`` and not ``"standard"`` for tables: measured on the training rows of
``breast-cancer`` (simulated honest clients, each sending 171 of them), standard deviations
leave its skewed columns (areas, concavities) heavy-tailed, so honest clients' PRADA
statistic fell to W = 0.65 (48 of 50 honest clients flagged at delta = 0.75), against 0.91
at worst in rank space, while a uniform-in-bounds thief stays at W > 0.98 and out of
distribution in both. Dividing digits' pixels by their standard deviations would instead
blow up near-constant border pixels, hence ``"range"`` for images.
"""

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sklearn.neighbors import NearestNeighbors

from modeltheft.errors import ConfigError
from modeltheft.tasks.base import Task
from modeltheft.tasks.files import read_rows

ALIASES = ("lab", "holdout")
SCALES = ("auto", "standard", "rank", "range", "none")
AUTO_TABULAR = "rank"
"""What ``scale = "auto"`` means for a task whose features do not share one declared range."""
_MIN_ROWS = 10


def _reference_error(reference: str) -> ConfigError:
    return ConfigError(
        f"reference must be 'task', {', '.join(repr(a) for a in ALIASES)} or an existing .npy "
        f"file, got {reference!r}"
    )


def reference_rows(reference: str, task: Task) -> np.ndarray:
    """The in-distribution rows ``reference`` names for a model answering ``task``."""
    if reference == "task":
        if task.data is None:
            raise ConfigError(
                f"task {task.name!r} carries no training rows to compare queries with: give "
                f'reference = "file.npy" (rows like the training data) or serve the model with '
                f"a task that has data (--task)"
            )
        rows = np.asarray(task.data.X_train, dtype=float)
    elif reference in ALIASES:
        from modeltheft.tasks.digits import digits_task

        rows = np.asarray(digits_task().data.victim_rows(holdout=reference == "holdout")[0])
    else:
        path = Path(reference)
        if path.suffix != ".npy" or not path.is_file():
            raise _reference_error(reference)
        _, rows, _ = read_rows(path, None)  # no pickles; finite, numeric, 2-D; one-line errors
        if len(rows) < _MIN_ROWS:
            raise ConfigError(f"{path}: need at least {_MIN_ROWS} reference rows, got {len(rows)}")
    if rows.shape[1] != task.n_features:
        raise ConfigError(
            f"reference {reference!r} has {rows.shape[1]} features, task {task.name!r} has "
            f"{task.n_features}"
        )
    return rows


def shared_range(task: Task) -> bool:
    """Whether every feature declares the same finite range (pixels in [0, 1], …)."""
    return bool(
        task.bounded
        and np.all(task.lower == task.lower[0])
        and np.all(task.upper == task.upper[0])
        and task.upper[0] > task.lower[0]
    )


class FeatureSpace:
    """A per-feature map fitted on reference rows, applied to every row before distances.

    ``widths`` divide each feature (``"range"``, ``"standard"``); ``"rank"`` maps each
    feature through the reference rows' empirical distribution (mid-ranks in [0, 1], linear
    interpolation between reference values, and beyond them a continuation at the slope of
    the feature's reference range, so a far-away value stays far). ``identity`` is True when
    rows are used as they are (digits' pixels), so distances are bit for bit the raw ones.
    """

    def __init__(
        self,
        kind: str,
        widths: np.ndarray | None = None,
        knots: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.kind = kind
        self.widths = widths
        self.knots = knots
        if knots is not None:
            self._low = np.array([values[0] for values, _ in knots])
            self._high = np.array([values[-1] for values, _ in knots])
            spread = self._high - self._low
            self._slope = np.divide(1.0, spread, out=np.ones_like(spread), where=spread > 0)
            # One np.interp over every column at once: column j's knots, scaled into
            # [2j, 2j + 1], are one sorted array; a value clipped to its column's range falls
            # in its own segment, never between two.
            self._offset = 2.0 * np.arange(len(knots))
            self._keys = np.concatenate(
                [
                    (v - lo) * s + o
                    for (v, _), lo, s, o in zip(
                        knots, self._low, self._slope, self._offset, strict=True
                    )
                ]
            )
            self._ranks = np.concatenate([r for _, r in knots])

    @property
    def identity(self) -> bool:
        """Rows are used as they are."""
        return self.widths is None and self.knots is None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.knots is not None:
            inside = np.clip(X, self._low, self._high)
            keys = (inside - self._low) * self._slope + self._offset
            out = np.interp(keys.ravel(), self._keys, self._ranks).reshape(X.shape)
            below = np.minimum(X - self._low, 0.0)
            above = np.maximum(X - self._high, 0.0)
            out += (below + above) * self._slope
            return out
        if self.widths is not None:
            return X / self.widths
        return X

    def fingerprint(self) -> bytes:
        """Bytes that identify the map (for the scorer cache)."""
        parts = [self.kind.encode()]
        if self.widths is not None:
            parts.append(np.ascontiguousarray(self.widths, dtype=np.float64).tobytes())
        for values, ranks in self.knots or []:
            parts += [values.tobytes(), ranks.tobytes()]
        return hashlib.sha256(b"|".join(parts)).digest()


def _rank_knots(rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    knots = []
    for column in np.asarray(rows, dtype=float).T:
        values, counts = np.unique(column, return_counts=True)
        ranks = (np.cumsum(counts) - counts / 2.0) / len(column)
        knots.append((values, ranks))
    return knots


def auto_scale(task: Task) -> str:
    """What ``scale = "auto"`` means for ``task`` (see the module docstring)."""
    return "range" if task.is_image or shared_range(task) else AUTO_TABULAR


def feature_space(scale: str, task: Task, rows: np.ndarray | None) -> FeatureSpace:
    """The map ``scale`` names for ``task``, fitted on ``rows`` (needed by standard/rank)."""
    if scale == "auto":
        scale = auto_scale(task)
    if scale == "none":
        return FeatureSpace("none")
    if scale == "range":
        if not task.bounded:
            raise ConfigError(
                f'scale = "range" needs finite bounds on every feature; task {task.name!r} '
                f'does not declare them (use scale = "standard")'
            )
        width = np.asarray(task.upper - task.lower, dtype=float)
        width[width <= 0] = 1.0
        return FeatureSpace("range", None if np.all(width == 1.0) else width)
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if rows is None or len(rows) < 2:
        raise ConfigError(
            f'scale = "{scale}" is fitted on the training rows of task {task.name!r}, which it '
            f'does not carry; use scale = "range" or "none", or a task with data'
        )
    if scale == "rank":
        return FeatureSpace("rank", knots=_rank_knots(rows))
    width = np.asarray(rows, dtype=float).std(axis=0)
    width[~(width > 0)] = 1.0
    return FeatureSpace("standard", width)


class KnnScorer:
    """Mean distance to the k nearest reference rows, with leave-one-out calibration.

    ``space`` (a :class:`FeatureSpace`; None: rows as they are) maps every row, reference and
    query alike, before distances are taken.
    """

    def __init__(
        self, reference: np.ndarray, k: int = 5, space: FeatureSpace | None = None
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < len(reference):
            raise ConfigError(f"k must be an integer in 1..{len(reference) - 1}, got {k!r}")
        self.k = k
        self.n_features = reference.shape[1]
        self.space = space if space is not None and not space.identity else None
        reference = self._scaled(np.asarray(reference, dtype=float))
        self._reference = np.ascontiguousarray(reference)
        self._squared = np.einsum("ij,ij->i", self._reference, self._reference)
        distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(reference).kneighbors(reference)
        self.calibration = np.sort(distances[:, 1:].mean(axis=1))
        """Leave-one-out scores of the reference rows, ascending."""
        self._memo: list[tuple[np.ndarray, np.ndarray]] = []
        """(rows, scores) of the last two batches, the newest first."""

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return X if self.space is None else self.space(X)

    def score(self, X: np.ndarray) -> np.ndarray:
        """One score per row; larger means further from the training data.

        Plain NumPy (a small matrix product and a partial sort): for request-sized batches it
        is far faster than a scikit-learn query, whose dispatch costs more than the work. The
        last two batches' scores are remembered, so stages sharing a scorer compute them once:
        for the same array, or rows of the same bytes (the stream test scores a request's rows
        as sent, the OOD stages their canonical form: often equal, digits are on their grid).
        """
        for rows, scores in self._memo:
            if rows is X or (
                rows.shape == X.shape and rows.dtype == X.dtype and rows.tobytes() == X.tobytes()
            ):
                return scores
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"rows must have {self.n_features} features, got shape {X.shape}")
        Z = self._scaled(X)
        if len(Z) == 1:  # most requests: fewer NumPy calls, each costly with cold caches
            x = Z[0]
            squared = self._reference @ x
            squared *= -2.0  # then + ||r||^2: the same values as ||r||^2 - 2 r.x, no temporaries
            squared += self._squared
            squared.partition(self.k - 1)  # what np.partition does to its copy
            if self.k < 8:
                scores = np.array([_mean_root(squared[: self.k].tolist(), float(x @ x))])
            else:  # NumPy sums 8 values or more pairwise
                nearest = squared[: self.k] + x @ x
                scores = np.sqrt(np.maximum(nearest, 0.0)).mean(keepdims=True)
        else:
            squared = np.einsum("ij,ij->i", Z, Z)[:, None] + self._squared[None, :]
            squared -= 2.0 * (Z @ self._reference.T)
            nearest = np.partition(squared, self.k - 1, axis=1)[:, : self.k]
            scores = np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1)
        self._memo = [(X, scores), *self._memo[:1]]
        return scores

    def resolves(self, fpr: float) -> bool:
        """Whether the reference holds enough rows for a quantile at rate ``fpr``.

        With n reference rows, a new in-distribution row exceeds even the largest of them
        with probability about 1 / (n + 1); below that rate no threshold read from the rows
        can promise ``fpr``.
        """
        return fpr * (len(self.calibration) + 1) >= 1.0

    def threshold(self, fpr: float) -> float:
        """Score above which a reference row is flagged with frequency ``fpr``."""
        return float(np.quantile(self.calibration, 1.0 - fpr))


def _mean_root(nearest: list[float], offset: float) -> float:
    """``np.sqrt(np.maximum(nearest + offset, 0)).mean()`` for a few values, in Python floats:
    the same IEEE operations in the same order (NumPy sums fewer than 8 values one after the
    other; its maximum makes -0.0 0.0), bit for bit, without five NumPy calls on cold caches
    (11.5 -> 8 µs a score in a request). ``tests/defenses/test_cheap_paths.py`` checks it
    against NumPy."""
    roots = []
    for value in nearest:
        value += offset
        # NumPy's maximum(value, 0.0): 0.0 for -0.0 and below, NaN kept
        roots.append(math.sqrt(value) if value > 0.0 else (0.0 if value <= 0.0 else value))
    total = roots[0]
    for root in roots[1:]:
        total += root
    return total / len(roots)


_CACHE: "OrderedDict[tuple[str, int], KnnScorer]" = OrderedDict()
V = TypeVar("V")


def _fingerprint(rows: np.ndarray, space: FeatureSpace) -> str:
    digest = hashlib.sha256(str(rows.shape).encode())
    digest.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    digest.update(space.fingerprint())
    return digest.hexdigest()


def knn_scorer(reference: str, k: int, task: Task, scale: str = "auto") -> KnnScorer:
    """A shared scorer per (reference rows, scale, k): stages and requests reuse one index.

    The cache is keyed on a hash of the actual rows and scale, never on the reference's name,
    so ``"task"`` for two different tasks gives two scorers.
    """
    rows = reference_rows(reference, task)
    return shared_knn(rows, k, feature_space(scale, task, rows))


def shared_knn(rows: np.ndarray, k: int, space: FeatureSpace) -> KnnScorer:
    """The scorer of ``rows`` in ``space`` with ``k`` neighbours, built once: the OOD stages
    and the stream test's ``knn`` ranks share its index and its memo of the last batch."""
    return lru_get(_CACHE, (_fingerprint(rows, space), k), lambda: KnnScorer(rows, k, space))


def lru_get(cache: "OrderedDict[Any, V]", key: Any, build: Callable[[], V], size: int = 8) -> V:
    """``cache[key]``, built by ``build()`` if missing; at most ``size`` entries, least recently
    used out first."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = build()
        while len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value
