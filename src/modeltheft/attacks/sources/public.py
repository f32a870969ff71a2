"""The attacker's own unlabeled rows, and synthetic rows fitted to them.

``public-data`` is Knockoff Nets' transfer set generalised (Orekondy et al., CVPR 2019):
rows the thief owns, here the task's attacker-public rows (a benchmark or sweep) or a file
(an attack on a remote API). ``synthetic`` samples new rows like them, per feature
(``marginals``) or from a shrunk Gaussian fit (``gaussian``), clipped to the bounds.
"""

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.covariance import LedoitWolf

from modeltheft.attacks.base import Source
from modeltheft.errors import ConfigError
from modeltheft.registry import BOOL, Interval, Options, Satisfies
from modeltheft.tasks import Task, read_rows

ROW_FILES = (".npy", ".csv", ".parquet")
PATH = Satisfies(
    lambda v: isinstance(v, str | Path) and Path(v).suffix in ROW_FILES,
    "a path to a .npy, .csv or .parquet file",
)
ARRAY_OR_PATH = Satisfies(
    lambda v: PATH.check(v) or np.asarray(v, dtype=float).ndim == 2,
    "a 2-D array of rows or a path to a .npy, .csv or .parquet file",
)


def load_rows(source: Any, task: Task, what: str) -> np.ndarray:
    """Rows from an array or a .npy/.csv/.parquet file, checked against ``task``'s width."""
    if isinstance(source, str | Path):
        _, X, _ = read_rows(str(source), label=None)
        what = f"{what} ({source})"
    else:
        X = source
    return task.check_rows(X, what)


class PublicRows:
    """The attacker's own rows for one attack: drawn once, then reused by every part.

    From ``path`` (all its rows, or ``n_rows`` of them drawn with the rng) or else from the
    task's attacker-public rows (``task.data.X_public``: all of them in their stored order,
    or ``n_rows`` drawn with the rng).
    """

    def __init__(self, n_rows: int | None = None, path: Any = None) -> None:
        self.n_rows = n_rows
        self.path = path
        self.rows_: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the rows drawn for the last attack."""
        self.rows_ = None

    def rows(
        self, task: Task, rng: np.random.Generator | None, required: bool = True
    ) -> np.ndarray | None:
        """The rows (drawn on first use); None when there are none and not ``required``."""
        if self.rows_ is not None:
            return self.rows_
        if self.path is not None:
            X = load_rows(self.path, task, "public rows")
        elif task.data is not None and task.data.n_public:
            X = np.asarray(task.data.X_public, dtype=float)
        elif required:
            raise ConfigError(
                f"task {task.name!r} carries no attacker-public rows; give path=FILE "
                "(.npy, .csv or .parquet rows of the attacker's own)"
            )
        else:
            return None
        n = self.n_rows
        if n is not None:
            if n > len(X):
                raise ConfigError(
                    f"n_rows={n} asks for more public rows than the {len(X)} available"
                )
            if rng is None:
                raise ConfigError("drawing n_rows public rows needs the attack's rng")
            if self.path is None and task.data is not None:
                X = task.data.public_rows(n, rng)
            else:
                X = X[rng.choice(len(X), size=n, replace=False)]
        self.rows_ = np.array(X, dtype=float)
        return self.rows_


_PUBLIC_CONSTRAINTS: dict[str, list[Any]] = {
    "n_rows": [None, Interval(int, 1, None)],
    "path": [None, PATH],
}


class _AttackerRows(Source):
    """A source built on the attacker's own rows (``n_rows`` of them, from ``path`` or the task)."""

    n_rows: int | None
    path: str | None

    @property
    def public(self) -> PublicRows:
        """The attacker's rows for the current attack."""
        if getattr(self, "public_", None) is None:
            self.public_ = PublicRows(self.n_rows, self.path)
        return self.public_

    @property
    def uses_public_data(self) -> bool:
        return self.path is None

    def reset(self) -> None:
        self.public.reset()

    def check_task(self, task: Task, who: str) -> None:
        try:
            if self.path is not None:
                rows = PublicRows(path=self.path).rows(task, None)
                if self.n_rows is not None and rows is not None and self.n_rows > len(rows):
                    raise ConfigError(
                        f"n_rows={self.n_rows} asks for more rows than the {len(rows)} of "
                        f"{self.path}"
                    )
            elif task.data is None or not task.data.n_public:
                PublicRows().rows(task, None)  # raises the message
            elif self.n_rows is not None and self.n_rows > task.data.n_public:
                raise ConfigError(
                    f"n_rows={self.n_rows} asks for more public rows than the "
                    f"{task.data.n_public} of task {task.name!r}"
                )
        except ConfigError as exc:
            raise ConfigError(f"{who}: {exc}") from None

    def _rows(self, task: Task, rng: np.random.Generator) -> np.ndarray:
        rows = self.public.rows(task, rng)
        if rows is None:  # pragma: no cover - rows() raises when required
            raise ConfigError(f"source {self.name!r}: no public rows")
        return rows


class PublicData(_AttackerRows):
    """The attacker's own rows, each asked once, in an order drawn from the rng."""

    name: ClassVar[str] = "public-data"
    paper: ClassVar[str] = (
        "Orekondy, Schiele & Fritz, Knockoff Nets: Stealing Functionality of Black-Box Models, "
        "CVPR 2019"
    )
    finite: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = _PUBLIC_CONSTRAINTS

    def __init__(self, n_rows: int | None = None, path: str | None = None) -> None:
        self.n_rows = n_rows
        self.path = path

    def reset(self) -> None:
        super().reset()
        self.order_: np.ndarray | None = None

    def available(self, task: Task) -> int | None:
        if self.n_rows is not None:
            return self.n_rows
        if self.path is not None:
            rows = PublicRows(path=self.path).rows(task, None)
            return 0 if rows is None else len(rows)
        return task.data.n_public if task.data is not None else 0

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        """The next ``n`` of the attacker's rows not handed out yet."""
        rows = self._rows(task, rng)
        order = getattr(self, "order_", None)
        if order is None:
            order = rng.permutation(len(rows))
        if n > len(order):
            raise ConfigError(
                f"source {self.name!r} has {len(rows)} rows, {len(rows) - len(order)} already "
                f"asked; {n} more cannot be drawn (use synthetic, or active over them)"
            )
        self.order_ = order[n:]
        return np.array(rows[order[:n]])


class Synthetic(_AttackerRows):
    """New rows like the attacker's own: a shrunk Gaussian fit or per-feature marginals.

    ``mode="gaussian"``: the public rows' mean and Ledoit-Wolf shrunk covariance, times
    ``spread`` (> 1 reaches past the few rows seen, towards the decision boundaries).
    ``mode="marginals"``: each feature drawn on its own from the public rows' values plus
    Gaussian jitter (Silverman's bandwidth, times ``spread``). Rows are clipped to the task's
    bounds and integer columns rounded (by the extraction loop). Needs at least 2 rows.
    """

    name: ClassVar[str] = "synthetic"
    paper: ClassVar[str] = (
        "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017 "
        "(synthetic data from a few seeds); Ledoit & Wolf 2004 (shrinkage)"
    )
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **_PUBLIC_CONSTRAINTS,
        "n_rows": [None, Interval(int, 2, None)],
        "mode": [Options("gaussian", "marginals")],
        "spread": [Interval(float, 0, 10, closed="right")],
        "log": [BOOL],
    }

    def __init__(
        self,
        mode: str = "gaussian",
        n_rows: int | None = None,
        path: str | None = None,
        spread: float = 1.5,
        log: bool = True,
    ) -> None:
        self.mode = mode
        self.n_rows = n_rows
        self.path = path
        self.spread = spread
        self.log = log

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        rows = self._rows(task, rng)
        if len(rows) < 2:
            raise ConfigError(f"source {self.name!r} needs at least 2 public rows, got {len(rows)}")
        if self.mode == "gaussian":
            logged = self._logged(rows, task)
            Z = np.where(logged, np.log(np.where(logged, rows, 1.0)), rows)
            # Shrink the correlations, not the raw covariance: shrinking towards one common
            # variance would inflate every small-scale column to the scale of the largest.
            scale = Z.std(axis=0)
            scale = np.where(scale > 0, scale, 1.0)
            covariance = LedoitWolf().fit(Z / scale).covariance_ * np.outer(scale, scale)
            X = rng.multivariate_normal(
                Z.mean(axis=0), covariance * self.spread**2, size=n, method="eigh"
            )
            X = np.where(logged, np.exp(np.where(logged, X, 0.0)), X)
        else:
            picks = rng.integers(len(rows), size=(n, rows.shape[1]))
            X = rows[picks, np.arange(rows.shape[1])]
            bandwidth = 1.06 * rows.std(axis=0) * len(rows) ** -0.2 * self.spread
            X = X + rng.normal(size=X.shape) * bandwidth
        return np.clip(X, task.lower, task.upper)

    def _logged(self, rows: np.ndarray, task: Task) -> np.ndarray:
        """Columns modelled in log space: positive ones bounded below at 0 (``log=True``)."""
        if not self.log:
            return np.zeros(rows.shape[1], dtype=bool)
        return (rows.min(axis=0) > 0) & (task.lower >= 0)
