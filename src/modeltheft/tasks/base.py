"""What a model's inputs and outputs are, and where its data comes from.

A :class:`Task` is the one description of a classification problem that every layer reads
(victims, service, oracles, attacks, defenses, measurement, reports) instead of module
constants. Its public part, the *schema* (features, bounds, classes, image shape), is what a
prediction API may tell its clients; its data (:class:`TaskData`) stays with the owner.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from modeltheft.errors import ConfigError

SCHEMA_VERSION = 1
RESOLUTION_STEPS = 4096
"""A bounded or spread-scaled column is resolved into this many steps (:attr:`Task.resolution`)."""


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class TaskData:
    """The owner's rows: victim training, evaluation, and the attacker-public rows.

    ``X_public`` are rows an attacker may own (attacks get them without labels). When they
    are part of the training rows (the lab's digits), ``holdout`` lists the training rows of
    a victim that must never have seen them, in training order; a victim trained without
    holdout uses every training row, as the OWASP lab trains it.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_eval: np.ndarray
    y_eval: np.ndarray
    X_public: np.ndarray | None = None
    y_public: np.ndarray | None = None
    """True labels of the public rows, for analysis only (attacks never read them)."""
    holdout: np.ndarray | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    """How the rows were made (data set, split sizes and seed): recorded in metadata."""

    def __post_init__(self) -> None:
        for name in ("X_train", "y_train", "X_eval", "y_eval", "X_public", "y_public", "holdout"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.X_train.ndim != 2 or self.X_eval.ndim != 2:
            raise ConfigError("training and evaluation rows must be 2-D arrays")
        if len(self.X_train) != len(self.y_train) or len(self.X_eval) != len(self.y_eval):
            raise ConfigError("every training and evaluation row needs one label")
        width = self.X_train.shape[1]
        for name in ("X_eval", "X_public"):
            rows = getattr(self, name)
            if rows is not None and (rows.ndim != 2 or rows.shape[1] != width):
                raise ConfigError(
                    f"training rows have {width} features, {name[2:]} rows have shape {rows.shape}"
                )

    def victim_rows(self, holdout: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Training rows and labels; without the attacker-public rows if ``holdout``."""
        if not holdout or self.holdout is None:
            return self.X_train, self.y_train
        return _frozen(self.X_train[self.holdout]), _frozen(self.y_train[self.holdout])

    @property
    def n_public(self) -> int:
        """How many attacker-public rows there are."""
        return 0 if self.X_public is None else len(self.X_public)

    def public_rows(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` attacker-public rows drawn without replacement (a ConfigError if too few)."""
        if (
            isinstance(n, bool)
            or not isinstance(n, int | np.integer)
            or not 0 <= n <= self.n_public
        ):
            raise ConfigError(f"n must be an integer in 0..{self.n_public}, got {n!r}")
        if n == 0:
            return np.empty((0, self.X_train.shape[1]))
        picks = rng.choice(self.n_public, size=int(n), replace=False)
        return np.array(self.X_public[picks])  # type: ignore[index]

    def describe(self) -> dict[str, Any]:
        """JSON-able facts that identify these rows."""
        return {
            **dict(self.source),
            "n_train": len(self.y_train),
            "n_eval": len(self.y_eval),
            "n_public": self.n_public,
        }


def split_rows(
    X: np.ndarray,
    y: np.ndarray,
    *,
    eval_size: float,
    public_size: float,
    seed: int,
    stratify_eval: bool,
    source: Mapping[str, Any],
) -> TaskData:
    """Seeded evaluation rows, then a stratified attacker-public part of the training rows
    (a victim trained with holdout never sees it): the split every built-in task uses."""
    from sklearn.model_selection import train_test_split

    X_train, X_eval, y_train, y_eval = train_test_split(
        X, y, test_size=eval_size, random_state=seed, stratify=y if stratify_eval else None
    )
    private, public = train_test_split(
        np.arange(len(y_train)), test_size=public_size, random_state=seed, stratify=y_train
    )
    return TaskData(
        X_train,
        y_train,
        X_eval,
        y_eval,
        X_public=X_train[public],
        y_public=y_train[public],
        holdout=private,
        source={**source, "test_size": eval_size, "random_state": seed},
    )


@dataclass(frozen=True, eq=False)
class Task:
    """A classification problem: its features, classes, optional image shape, and data.

    ``lower``/``upper`` are per-feature bounds (``-inf``/``inf`` where unknown); ``integer``
    marks integer-valued columns; ``categories`` maps a column index to its allowed values.
    ``classes`` are the labels the model answers with, ints or strings, in the model's order
    (empty while unknown: a task discovered from an API that does not name its classes, whose
    oracle learns them from the answers; see :attr:`classes_known`).
    ``data`` is None for a task discovered from a model or an API (schema only).
    """

    name: str
    feature_names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    classes: np.ndarray
    integer: np.ndarray | None = None
    categories: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None
    data: TaskData | None = None
    description: str = ""

    def __post_init__(self) -> None:
        d = len(self.feature_names)
        if d < 1:
            raise ConfigError(f"task {self.name!r} needs at least one feature")
        if len(set(self.feature_names)) != d:
            raise ConfigError(f"task {self.name!r} has duplicate feature names")
        lower = np.asarray(self.lower, dtype=float).reshape(-1)
        upper = np.asarray(self.upper, dtype=float).reshape(-1)
        if lower.shape != (d,) or upper.shape != (d,):
            raise ConfigError(f"task {self.name!r}: bounds must have one value per feature ({d})")
        if np.isnan(lower).any() or np.isnan(upper).any() or (lower > upper).any():
            bad = int(np.flatnonzero(~(lower <= upper))[0])
            raise ConfigError(
                f"task {self.name!r}: feature {self.feature_names[bad]!r} has bounds "
                f"[{lower[bad]}, {upper[bad]}]"
            )
        integer = (
            np.zeros(d, dtype=bool)
            if self.integer is None
            else np.asarray(self.integer, dtype=bool).reshape(-1)
        )
        if integer.shape != (d,):
            raise ConfigError(f"task {self.name!r}: integer flags must have one per feature")
        classes = np.asarray(self.classes)
        if classes.ndim != 1 or len(classes) == 1:
            # Empty classes: not known yet (an API that does not name them; oracles learn them).
            raise ConfigError(f"task {self.name!r} needs at least two classes")
        if classes.dtype.kind not in "iuU":
            if classes.dtype.kind == "f" and np.all(classes == np.round(classes)):
                classes = classes.astype(int)
            elif classes.dtype.kind == "O" and all(isinstance(c, str) for c in classes):
                classes = classes.astype(str)
            elif classes.dtype.kind == "b":
                classes = classes.astype(int)
            else:
                raise ConfigError(
                    f"task {self.name!r}: class labels must be integers or strings, "
                    f"got {classes.dtype}"
                )
        if len(np.unique(classes)) != len(classes):
            raise ConfigError(f"task {self.name!r} has duplicate class labels")
        for column in self.categories:
            if not 0 <= int(column) < d:
                raise ConfigError(f"task {self.name!r}: categorical column {column} out of range")
        if self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if len(shape) not in (2, 3) or int(np.prod(shape)) != d or min(shape) < 1:
                raise ConfigError(
                    f"task {self.name!r}: image shape {list(shape)} does not hold {d} features"
                )
            object.__setattr__(self, "image_shape", shape)
        if self.data is not None and self.data.X_train.shape[1] != d:
            raise ConfigError(
                f"task {self.name!r} has {d} features but its rows have "
                f"{self.data.X_train.shape[1]}"
            )
        object.__setattr__(self, "feature_names", tuple(str(f) for f in self.feature_names))
        object.__setattr__(self, "lower", _frozen(lower))
        object.__setattr__(self, "upper", _frozen(upper))
        object.__setattr__(self, "integer", _frozen(integer))
        object.__setattr__(self, "classes", _frozen(classes))

    # --- shape -----------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        """Input width."""
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def classes_known(self) -> bool:
        """Whether the classes are known (an oracle may still be learning them)."""
        return len(self.classes) > 0

    @property
    def is_image(self) -> bool:
        """Whether rows are images of ``image_shape``."""
        return self.image_shape is not None

    @cached_property
    def bounded(self) -> bool:
        """Whether every feature has finite bounds (schema-only attacks need them)."""
        return bool(np.isfinite(self.lower).all() and np.isfinite(self.upper).all())

    @cached_property
    def resolution(self) -> np.ndarray:
        """Per feature, the precision within which two values count as the same row.

        Keyed defense choices (misinformation, watermarks) are made on rows rounded to this
        grid (:func:`~modeltheft.defenses.keyed.canonical`), so that a near-twin of a query
        cannot tell a keyed answer from a true one. Per column: ``1`` for an integer column
        (declared, or every training value an integer); ``(upper - lower) / 4096`` for a
        column with finite bounds; otherwise ``spread / 4096`` with ``spread`` the training
        rows' interquartile range (robust to outliers; their standard deviation if that is
        0, the largest absolute value if that is 0 too); ``0`` (no grid, float32 only) for
        an unbounded column of a task without training rows.
        """
        d = self.n_features
        out = np.zeros(d)
        rows = None if self.data is None else np.asarray(self.data.X_train, dtype=float)
        for j in range(d):
            column = None if rows is None or len(rows) == 0 else rows[:, j]
            if (self.integer is not None and self.integer[j]) or (
                column is not None and np.all(column == np.round(column))
            ):
                out[j] = 1.0
            elif (
                np.isfinite(self.lower[j])
                and np.isfinite(self.upper[j])
                and (self.upper[j] > self.lower[j])
            ):
                out[j] = (self.upper[j] - self.lower[j]) / RESOLUTION_STEPS
            elif column is not None:
                q1, q3 = np.percentile(column, [25, 75])
                spread = q3 - q1 or float(column.std()) or float(np.abs(column).max())
                out[j] = spread / RESOLUTION_STEPS
        return _frozen(out)

    def clip(self, X: np.ndarray) -> np.ndarray:
        """Rows clipped into the bounds (integer columns rounded)."""
        X = np.clip(np.asarray(X, dtype=float), self.lower, self.upper)
        if self.integer is not None and self.integer.any():
            X[:, self.integer] = np.round(X[:, self.integer])
        return X

    def check_rows(self, X: np.ndarray, what: str = "rows") -> np.ndarray:
        """``X`` as a float (n, d) array, or a ConfigError naming the problem."""
        try:
            X = np.asarray(X, dtype=float)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be numbers") from None
        if X.ndim == 1 and X.size == self.n_features:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(
                f"{what} must have shape (n, {self.n_features}) for task {self.name!r}, "
                f"got {X.shape}"
            )
        if not np.isfinite(X).all():
            raise ConfigError(f"{what} hold NaN or infinite values")
        return X

    def class_index(self, labels: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Positions of ``labels`` (class values) in ``classes``; -1 for unknown values."""
        values = np.asarray(labels)
        if not self.classes_known:
            return np.full(values.shape, -1, dtype=int)
        if self.classes.dtype.kind == "U":
            values = values.astype(str)
        order = np.argsort(self.classes, kind="stable")
        sorted_classes = self.classes[order]
        pos = np.searchsorted(sorted_classes, values)
        pos = np.clip(pos, 0, len(order) - 1)
        try:
            found = sorted_classes[pos] == values
        except (TypeError, ValueError):
            return np.full(values.shape, -1, dtype=int)
        return np.where(found, order[pos], -1).astype(int)

    # --- schema ----------------------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """The public part as JSON: what ``/v1/model`` publishes and oracles read back."""

        def bound(value: float) -> float | None:
            return float(value) if np.isfinite(value) else None

        features = []
        for i, name in enumerate(self.feature_names):
            feature: dict[str, Any] = {
                "name": name,
                "lower": bound(self.lower[i]),
                "upper": bound(self.upper[i]),
            }
            if self.integer is not None and self.integer[i]:
                feature["integer"] = True
            if i in self.categories:
                feature["categories"] = [float(v) for v in self.categories[i]]
            features.append(feature)
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "n_features": self.n_features,
            "features": features,
            "classes": self.classes.tolist(),
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any]) -> "Task":
        """A schema-only task from :meth:`schema`'s JSON; a ConfigError if it is malformed."""
        try:
            features = schema["features"]
            names = [str(f["name"]) for f in features]
            lower = [-np.inf if f.get("lower") is None else float(f["lower"]) for f in features]
            upper = [np.inf if f.get("upper") is None else float(f["upper"]) for f in features]
            integer = [bool(f.get("integer", False)) for f in features]
            categories = {
                i: tuple(float(v) for v in f["categories"])
                for i, f in enumerate(features)
                if f.get("categories")
            }
            classes = list(schema["classes"])
            shape = schema.get("image_shape")
            return cls(
                name=str(schema.get("name", "remote")),
                feature_names=tuple(names),
                lower=np.array(lower),
                upper=np.array(upper),
                classes=np.array(classes),
                integer=np.array(integer),
                categories=categories,
                image_shape=tuple(shape) if shape else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed task schema: {type(exc).__name__}: {exc}") from None

    def without_data(self) -> "Task":
        """The schema-only copy of this task."""
        return replace(self, data=None)

    def held_out(self) -> "Task":
        """The task as a victim trained without the attacker-public rows sees it.

        Its training rows are ``victim_rows(holdout=True)`` (``holdout`` cleared), so a
        defense whose reference is the task's training rows never counts the public rows as
        in-distribution. The evaluation and public rows are unchanged; a task without data
        or without held-out rows is returned as it is.
        """
        if self.data is None or self.data.holdout is None:
            return self
        X, y = self.data.victim_rows(holdout=True)
        return replace(self, data=replace(self.data, X_train=X, y_train=y, holdout=None))

    def with_classes(self, classes: Sequence[Any] | np.ndarray) -> "Task":
        """This task answering with ``classes`` (a model's own ``classes_`` order)."""
        return replace(self, classes=np.asarray(classes))

    def describe(self) -> dict[str, Any]:
        """Short JSON-able facts for records and metadata."""
        out: dict[str, Any] = {
            "name": self.name,
            "n_features": self.n_features,
            "classes": self.classes.tolist(),
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }
        if self.data is not None:
            out["data"] = self.data.describe()
        return out


def generic_feature_names(n: int) -> tuple[str, ...]:
    """``x0 … x{n-1}``: names for a model that carries none."""
    return tuple(f"x{i}" for i in range(n))


def unbounded(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds that say nothing."""
    return np.full(n, -np.inf), np.full(n, np.inf)
