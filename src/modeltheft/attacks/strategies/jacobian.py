"""Papernot et al., Practical Black-Box Attacks against ML (AsiaCCS 2017): Jacobian augmentation."""

from numbers import Real

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.data import N_FEATURES, attacker_digits, holdout_split
from modeltheft.errors import ConfigError

TARGETS = ("label", "random")
FD_STEP = 1e-2  # central-difference step for substitutes without an analytic gradient
_FD_CHUNK = 128  # points per finite-difference batch (each costs 2 x 64 model rows)


def _key(row: np.ndarray) -> bytes:
    """A row's identity up to floating-point noise (x + λ − λ is x)."""
    return np.round(row, 9).tobytes()


def class_gradients(model: ClassifierMixin, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∂F_y(x)/∂x for each row of ``X`` and its class ``y``, F = ``model.predict_proba``.

    Analytic for a multinomial LogisticRegression; otherwise central finite differences,
    vectorised over rows and features. Classes the model has never seen get a zero gradient.
    """
    X = np.asarray(X, dtype=float)
    classes = np.asarray(model.classes_)
    column = np.searchsorted(classes, y)
    column = np.clip(column, 0, len(classes) - 1)
    known = classes[column] == y
    grads = np.zeros_like(X)
    if not known.any():
        return grads
    rows = np.flatnonzero(known)
    coef = getattr(model, "coef_", None)
    if isinstance(model, LogisticRegression) and coef is not None and len(coef) == len(classes):
        # softmax: ∂p_y/∂x = p_y (w_y − Σ_k p_k w_k)
        P = model.predict_proba(X[rows])
        py = P[np.arange(len(rows)), column[rows]]
        grads[rows] = py[:, None] * (coef[column[rows]] - P @ coef)
        return grads
    eye = FD_STEP * np.eye(X.shape[1])
    for start in range(0, len(rows), _FD_CHUNK):
        chunk = rows[start : start + _FD_CHUNK]
        shifted = np.concatenate([X[chunk, None, :] + eye, X[chunk, None, :] - eye], axis=1)
        P = model.predict_proba(shifted.reshape(-1, X.shape[1]))
        P = P.reshape(len(chunk), 2, X.shape[1], -1)
        Py = P[np.arange(len(chunk)), :, :, column[chunk]]  # (chunk, ±, features)
        grads[chunk] = (Py[:, 0] - Py[:, 1]) / (2 * FD_STEP)
    return grads


class JacobianAugmentation(Strategy):
    """Seed digits, then rounds of x + λ_ρ·sign(∂F_y(x)/∂x) for every known point x.

    ``seed_size`` real digits come from the attacker-public pool (``seed_X``, if given, replaces
    them and ``seed_size`` is ignored); their true labels are ignored. Each round ρ steps
    every point of the substitute training set — the answered rows, plus this call's still
    unanswered rows labelled by the substitute — along the sign of the substitute's
    Jacobian row for its label, with λ_ρ = λ·(−1)^⌊ρ/τ⌋
    (Papernot's periodic step size), clipped to [0, 1]; the set doubles each round. A round's
    rows are sent in random order, so a short last batch is a random subset. Until a
    substitute exists, rounds take random sign steps instead, as does any step that would
    repeat a known point (an unchanged substitute re-stepping it, or a flip stepping back).

    ``target="random"`` is the T-RND variant of Juuti et al. (PRADA, EuroS&P 2019): step
    towards a random other class, x + |λ|·sign(∂F_t(x)/∂x) with t ≠ y drawn from the rng.
    """

    name = "jacobian"
    paper = "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017"
    needs_model = True

    def __init__(
        self,
        *,
        seed_size: int = 10,
        step: float = 0.1,
        tau: int = 3,
        seed_X: np.ndarray | None = None,
        target: str = "label",
    ) -> None:
        self.seed_size = seed_size
        self.step = step
        self.tau = tau
        self.seed_X = seed_X
        self.target = target
        self._reset()

    def _reset(self) -> None:
        self._queue = np.empty((0, N_FEATURES))
        self._proposed = 0
        self._round = 0  # the next augmentation round ρ

    def _validate(self) -> None:
        if self.seed_X is None:
            limit = len(holdout_split().y_public)
            size = self.seed_size
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= limit:
                raise ConfigError(f"seed_size must be an integer in 1..{limit}, got {size!r}")
        else:
            seeds = np.asarray(self.seed_X)
            if seeds.ndim != 2 or seeds.shape[1] != N_FEATURES or len(seeds) == 0:
                raise ConfigError(f"seed_X must have shape (m, 64), got {seeds.shape}")
            if not np.issubdtype(seeds.dtype, np.number) or not np.isfinite(seeds).all():
                raise ConfigError("seed_X must hold finite numbers")
            if seeds.min() < 0 or seeds.max() > 1:
                raise ConfigError(
                    f"seed_X values must be in [0, 1], got {seeds.min():g}..{seeds.max():g}"
                )
        if isinstance(self.step, bool) or not isinstance(self.step, Real) or not 0 < self.step <= 1:
            raise ConfigError(f"step must be a number in (0, 1], got {self.step!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, int) or self.tau < 1:
            raise ConfigError(f"tau must be an integer >= 1, got {self.tau!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")

    def _seeds(self, rng: np.random.Generator) -> np.ndarray:
        if self.seed_X is not None:
            return np.asarray(self.seed_X, dtype=float).copy()
        return np.array(attacker_digits(self.seed_size, rng)[0], dtype=float)

    @property
    def signed_step(self) -> float:
        """λ_ρ for the next round: Papernot's step, its sign flipped every τ rounds."""
        return self.step * (-1) ** (self._round // self.tau)

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        self._validate()
        if history.n_sent == 0 or history.n_sent < self._proposed:
            self._reset()
            seeds = self._seeds(rng)
            self._queue = seeds[rng.permutation(len(seeds))]
        out = np.empty((0, N_FEATURES))
        while len(out) < n:
            if len(self._queue) == 0:
                self._queue = self._next_round(history, out, rng)
            take = min(n - len(out), len(self._queue))
            out = np.vstack([out, self._queue[:take]])
            self._queue = self._queue[take:]
        self._proposed = history.n_sent + n
        return np.clip(out, 0.0, 1.0)

    def _next_round(
        self, history: QueryHistory, pending: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """One augmentation of every known point, in random order."""
        X, labels, _ = history.answered()
        model = history.model
        step = self.signed_step
        if len(pending):
            X = np.vstack([X, pending])
            guess = model.predict(pending) if model is not None else np.full(len(pending), -1)
            labels = np.concatenate([labels, guess])
        if len(X) == 0:  # everything so far was refused: start again from the seeds
            X = self._seeds(rng)
            labels = np.full(len(X), -1)
        if model is None:
            directions = rng.choice([-1.0, 1.0], size=X.shape)
        else:
            self._round += 1
            if self.target == "random" and len(model.classes_) > 1:
                n_classes = len(model.classes_)
                pick = rng.integers(0, n_classes - 1, size=len(X))
                own = np.searchsorted(model.classes_, labels)
                labels = np.asarray(model.classes_)[pick + (pick >= own)]
                step = abs(step)
            directions = np.sign(class_gradients(model, X, labels))
            flat = ~directions.any(axis=1)  # no gradient (unknown class, flat model): random
            directions[flat] = rng.choice([-1.0, 1.0], size=(int(flat.sum()), N_FEATURES))
        new = np.clip(X + step * directions, 0.0, 1.0)
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
            signs = rng.choice([-1.0, 1.0], size=(len(repeats), N_FEATURES))
            new[repeats] = np.clip(X[repeats] + abs(step) * signs, 0.0, 1.0)
        return new[rng.permutation(len(new))]
