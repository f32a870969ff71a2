"""Papernot et al., Practical Black-Box Attacks against ML (AsiaCCS 2017): Jacobian augmentation."""

from typing import Any, ClassVar

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks.base import QueryHistory, Strategy
from modeltheft.attacks.sources.public import ARRAY_OR_PATH, PublicRows, load_rows
from modeltheft.errors import ConfigError
from modeltheft.registry import Interval, Options
from modeltheft.tasks import Task

TARGETS = ("label", "random")
FD_STEP = 1e-2  # central-difference step (per unit of feature scale) without an analytic gradient
_FD_CHUNK = 128  # points per finite-difference batch (each costs 2 x d model rows)


def _key(row: np.ndarray) -> bytes:
    """A row's identity up to floating-point noise (x + λ − λ is x)."""
    return np.round(row, 9).tobytes()


def class_columns(model: ClassifierMixin, y: np.ndarray) -> np.ndarray:
    """Column of each class value of ``y`` in ``model.classes_`` (-1 where the model lacks it)."""
    classes = list(np.asarray(model.classes_).tolist())
    where = {c: i for i, c in enumerate(classes)}
    return np.array([where.get(v, -1) for v in np.asarray(y).tolist()], dtype=int)


def class_gradients(
    model: ClassifierMixin, X: np.ndarray, y: np.ndarray, scale: np.ndarray | float = 1.0
) -> np.ndarray:
    """∂F_y(x)/∂x for each row of ``X`` and its class value ``y``, F = ``model.predict_proba``.

    Analytic for a multinomial LogisticRegression; otherwise central finite differences of
    ``FD_STEP`` × ``scale`` per feature, vectorised over rows and features. Classes the model
    has never seen get a zero gradient.
    """
    return _gradients(model, np.asarray(X, dtype=float), class_columns(model, y), scale)


def _gradients(
    model: ClassifierMixin, X: np.ndarray, column: np.ndarray, scale: np.ndarray | float
) -> np.ndarray:
    grads = np.zeros_like(X)
    known = column >= 0
    if not known.any():
        return grads
    rows = np.flatnonzero(known)
    n_classes = len(model.classes_)
    coef = getattr(model, "coef_", None)
    if isinstance(model, LogisticRegression) and coef is not None and len(coef) == n_classes:
        # softmax: ∂p_y/∂x = p_y (w_y − Σ_k p_k w_k)
        P = model.predict_proba(X[rows])
        py = P[np.arange(len(rows)), column[rows]]
        grads[rows] = py[:, None] * (coef[column[rows]] - P @ coef)
        return grads
    steps = FD_STEP * np.broadcast_to(np.asarray(scale, dtype=float), (X.shape[1],))
    eye = np.diag(steps)
    for start in range(0, len(rows), _FD_CHUNK):
        chunk = rows[start : start + _FD_CHUNK]
        shifted = np.concatenate([X[chunk, None, :] + eye, X[chunk, None, :] - eye], axis=1)
        P = model.predict_proba(shifted.reshape(-1, X.shape[1]))
        P = P.reshape(len(chunk), 2, X.shape[1], -1)
        Py = P[np.arange(len(chunk)), :, :, column[chunk]]  # (chunk, ±, features)
        grads[chunk] = (Py[:, 0] - Py[:, 1]) / (2 * steps)
    return grads


class JacobianAugmentation(Strategy):
    """Seed rows, then rounds of x + λ_ρ·s·sign(∂F_y(x)/∂x) for every known point x.

    ``seed_size`` rows come from the attacker's own rows (the task's attacker-public rows);
    ``seed_X`` (an (m, d) array or a .npy/.csv/.parquet file) replaces them and
    ``seed_size`` is ignored. Their true labels are never read. Each round ρ steps every
    point of the substitute training set — the answered rows, plus this call's still
    unanswered rows labelled by the substitute — along the sign of the substitute's Jacobian
    row for its label, with λ_ρ = λ·(−1)^⌊ρ/τ⌋ (Papernot's periodic step size) and ``s`` each
    feature's scale (its bound range, or the seed rows' spread on an unbounded task; 1 for
    digit pixels), clipped to the task's bounds; the set doubles each round. A round's rows
    are sent in random order, so a short last batch is a random subset. Until a substitute
    exists, rounds take random sign steps instead, as does any step that would repeat a known
    point (an unchanged substitute re-stepping it, or a flip stepping back).

    ``target="random"`` is the T-RND variant of Juuti et al. (PRADA, EuroS&P 2019): step
    towards a random other class, x + |λ|·s·sign(∂F_t(x)/∂x) with t ≠ y drawn from the rng.
    """

    name: ClassVar[str] = "jacobian"
    kind: ClassVar[str] = "selector"
    paper: ClassVar[str] = (
        "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017"
    )
    needs_model = True
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "seed_size": [Interval(int, 1, None)],
        "step": [Interval(float, 0, 1, closed="right")],
        "tau": [Interval(int, 1, None)],
        "seed_X": [None, ARRAY_OR_PATH],
        "target": [Options(*TARGETS)],
    }

    def __init__(
        self,
        *,
        seed_size: int = 10,
        step: float = 0.1,
        tau: int = 3,
        seed_X: Any = None,
        target: str = "label",
    ) -> None:
        self.seed_size = seed_size
        self.step = step
        self.tau = tau
        self.seed_X = seed_X
        self.target = target

    @property
    def uses_public_data(self) -> bool:
        return self.seed_X is None

    def check_task(self, task: Task) -> None:
        who = f"strategy {self.name!r}"
        if self.seed_X is not None:
            try:
                seeds = load_rows(self.seed_X, task, "seed_X")
            except ConfigError as exc:
                raise ConfigError(f"{who}: {exc}") from None
            outside = np.flatnonzero(((seeds < task.lower) | (seeds > task.upper)).any(axis=0))
            if len(outside):
                j = int(outside[0])
                raise ConfigError(
                    f"{who}: seed_X values of feature {task.feature_names[j]!r} lie outside "
                    f"its bounds [{task.lower[j]:g}, {task.upper[j]:g}] in task {task.name!r}"
                )
            return
        available = task.data.n_public if task.data is not None else 0
        if not available:
            raise ConfigError(
                f"{who}: task {task.name!r} carries no attacker-public rows to seed from; "
                "give seed_X (an (m, d) array or a .npy/.csv/.parquet file)"
            )
        if self.seed_size > available:
            raise ConfigError(
                f"{who}: seed_size must be an integer in 1..{available}, got {self.seed_size!r}"
            )

    def setup(self, task: Task, budget: int) -> None:
        super().setup(task, budget)
        self._reset(task)

    def _reset(self, task: Task) -> None:
        self._queue = np.empty((0, task.n_features))
        self._proposed = 0
        self._round = 0  # the next augmentation round ρ
        self._scale: np.ndarray | None = None

    def _seeds(self, rng: np.random.Generator, task: Task) -> np.ndarray:
        if self.seed_X is not None:
            return np.array(load_rows(self.seed_X, task, "seed_X"), dtype=float)
        rows = PublicRows(self.seed_size).rows(task, rng)
        return np.array(rows, dtype=float)

    def _feature_scale(self, task: Task, seeds: np.ndarray) -> np.ndarray:
        if task.bounded:
            return np.asarray(task.upper - task.lower, dtype=float)
        spread = seeds.std(axis=0) if len(seeds) > 1 else np.zeros(task.n_features)
        return np.where(spread > 0, spread, 1.0)

    @property
    def signed_step(self) -> float:
        """λ_ρ for the next round: Papernot's step, its sign flipped every τ rounds."""
        return self.step * (-1) ** (self._round // self.tau)

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        self.validate_params()
        task = history.target
        if history.n_sent == 0 or history.n_sent < getattr(self, "_proposed", 0):
            self.check_task(task)
            self._reset(task)
            seeds = self._seeds(rng, task)
            self._scale = self._feature_scale(task, seeds)
            self._queue = seeds[rng.permutation(len(seeds))]
        out = np.empty((0, task.n_features))
        while len(out) < n:
            if len(self._queue) == 0:
                self._queue = self._next_round(history, out, rng)
            take = min(n - len(out), len(self._queue))
            out = np.vstack([out, self._queue[:take]])
            self._queue = self._queue[take:]
        self._proposed = history.n_sent + n
        return task.clip(out)

    def _next_round(
        self, history: QueryHistory, pending: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """One augmentation of every known point, in random order."""
        task = history.target
        X, labels, _ = history.answered()
        model = history.model
        step = self.signed_step
        scale = self._scale if self._scale is not None else np.ones(task.n_features)
        columns = np.full(len(X), -1)
        own = np.zeros(len(X), dtype=int)  # insertion position of each row's class (T-RND)
        if model is not None and len(X):
            values = task.classes[labels]
            columns = class_columns(model, values)
            own = np.where(columns >= 0, columns, np.searchsorted(model.classes_, values))
        if len(pending):
            X = np.vstack([X, pending])
            guess = (
                class_columns(model, model.predict(pending))
                if model is not None
                else np.full(len(pending), -1)
            )
            columns = np.concatenate([columns, guess])
            own = np.concatenate([own, np.maximum(guess, 0)])
        if len(X) == 0:  # everything so far was refused: start again from the seeds
            X = self._seeds(rng, task)
            columns, own = np.full(len(X), -1), np.zeros(len(X), dtype=int)
        d = task.n_features
        if model is None:
            directions = rng.choice([-1.0, 1.0], size=X.shape)
        else:
            self._round += 1
            if self.target == "random" and len(model.classes_) > 1:
                n_classes = len(model.classes_)
                pick = rng.integers(0, n_classes - 1, size=len(X))
                columns = pick + (pick >= own)
                step = abs(step)
            directions = np.sign(_gradients(model, X, columns, scale))
            flat = ~directions.any(axis=1)  # no gradient (unknown class, flat model): random
            directions[flat] = rng.choice([-1.0, 1.0], size=(int(flat.sum()), d))
        new = task.clip(X + step * directions * scale)
        # A point stepped again by an unchanged substitute (or stepped back after a sign flip)
        # repeats an earlier query; spend those rows on a random sign step instead.
        seen = {_key(row) for row in X}
        repeats = []
        for i, row in enumerate(new):
            key = _key(row)
            if key in seen:
                repeats.append(i)
            seen.add(key)
        if repeats:
            signs = rng.choice([-1.0, 1.0], size=(len(repeats), d))
            new[repeats] = task.clip(X[repeats] + abs(step) * signs * scale[None, :])
        return new[rng.permutation(len(new))]
