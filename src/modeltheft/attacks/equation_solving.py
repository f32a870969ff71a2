"""Exact extraction of softmax (multinomial logistic regression) victims by equation solving.

Tramèr, Zhang, Juels, Reiter, Ristenpart, *Stealing Machine Learning Models via Prediction
APIs*, USENIX Security 2016, Sec. 4.1. A softmax model answers ``p = softmax(W x + b)``, so
for every query and every pair of classes ``log(p_i / p_j) = (w_i - w_j) . x + (b_i - b_j)``:
linear equations in the ``d + 1`` unknowns of each class difference. ``d + 1`` queries in
general position determine the model up to the softmax's shift invariance, which changes
neither predictions nor probabilities. A binary model (two probability columns, p and 1 − p)
is the case k = 2: the centred log-probabilities are ± half its logit.

All pairwise equations are solved at once: centring each row of log-probabilities,
``log p_i - mean_j log p_j = (w_i - w_bar) . x + (b_i - b_bar)``, gives one least-squares
problem with the same ``(n, d + 1)`` design matrix for every class (one factorisation, ten
right-hand sides), fixes the gauge to ``sum_i w_i = 0`` and weighs every pairwise log-ratio
equally. It is slightly more accurate than a per-row reference class, and needs no choice of
reference whose rounding would enter every equation of its row.
"""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_array, check_is_fitted

from modeltheft.errors import AttackFailed

MAX_DECIMALS = 12
"""Rounding to up to this many decimals is detected."""
MIN_DISTINCT_FRACTION = 0.9
"""A full-precision softmax practically never repeats a value; quantised answers do."""


def _rounded_decimals(P: np.ndarray) -> int | None:
    """The fewest decimals ``k`` such that every value is a multiple of ``10**-k``, or None."""
    for k in range(MAX_DECIMALS + 1):
        half = 0.5 * 10.0**-k
        if np.any((P > 0) & (half > P)) or np.any((P < 1) & (half > 1 - P)):
            continue  # rounded to k decimals, such a value would be exactly 0 or 1
        scaled = P * 10.0**k
        if np.all(np.abs(scaled - np.rint(scaled)) <= max(1e-9, 10.0**k * 1e-15)):
            return k
    return None


class EquationSolver(ClassifierMixin, BaseEstimator):
    """A softmax-linear model recovered exactly from full-precision probabilities.

    Fit it with :meth:`fit_soft` (label mode ``"soft"``): hard labels cannot determine the model.
    ``tol`` is the largest acceptable error of the log-probabilities: answers rounded so coarsely
    that their smallest value would carry a larger relative error, or a least-squares residual
    (per equation, over the redundant queries beyond ``d + 1``) above it, raise
    :class:`~modeltheft.errors.AttackFailed` rather than return a wrong model.
    With exactly ``d + 1`` queries the system is square and any answers fit it, so only the
    precision checks run (``residual_`` is NaN); send a few more queries to also catch a victim
    that is not softmax-linear but answers smoothly (an MLP, a calibrated SVC, boosted trees).
    """

    def __init__(self, tol: float = 1e-4) -> None:
        self.tol = tol

    def fit(self, X: np.ndarray, y: np.ndarray) -> "EquationSolver":
        """Always fails: labels alone leave the weights undetermined."""
        raise AttackFailed(
            "equation solving needs the victim's probabilities: hard labels cannot determine "
            "the model (they only bound it); use label_mode 'soft' against a target that "
            "returns full-precision probabilities"
        )

    def fit_soft(self, X: np.ndarray, P: np.ndarray, classes: np.ndarray) -> "EquationSolver":
        """Solve the log-probability equations of the queries ``X`` and their answers ``P``."""
        if not isinstance(self.tol, int | float) or isinstance(self.tol, bool) or self.tol <= 0:
            raise ValueError(f"tol must be a number > 0, got {self.tol!r}")
        X = check_array(X, dtype=float)
        P = np.asarray(P, dtype=float)
        classes = np.asarray(classes)
        n, d = X.shape
        c = len(classes)
        if c < 2 or P.shape != (n, c):
            raise AttackFailed(
                f"need one probability per class for each query: got shape {P.shape}, "
                f"expected ({n}, {c})"
            )
        self._check_precision(P)
        A = np.hstack([X, np.ones((n, 1))])
        rank = int(np.linalg.matrix_rank(A))
        if rank < d + 1:
            raise AttackFailed(
                f"too few independent equations: the {n} queries give rank {rank}, but the "
                f"{d + 1} unknowns per class difference (d + 1 with d = {d} features) need "
                f"rank {d + 1}; send at least {d + 1} queries in general position"
            )
        log_p = np.log(P)
        L = log_p - log_p.mean(axis=1, keepdims=True)
        theta, *_ = np.linalg.lstsq(A, L, rcond=None)
        redundant = n - rank
        residual = float("nan")
        if redundant > 0:
            rss = float(np.sum((L - A @ theta) ** 2))
            residual = float(np.sqrt(rss / (redundant * (c - 1))))
            if not residual <= self.tol:
                raise AttackFailed(
                    f"the log-probability equations are inconsistent: least-squares residual "
                    f"{residual:.3g} per equation over {redundant} redundant queries (tolerance "
                    f"{self.tol:g}); the victim is not a softmax-linear model (e.g. a forest or "
                    "a network) or its answers are noisy"
                )
        self.classes_ = classes
        self.coef_ = np.ascontiguousarray(theta[:-1].T)
        self.intercept_ = np.ascontiguousarray(theta[-1])
        self.n_features_in_ = d
        self.rank_ = rank
        self.residual_ = residual
        return self

    def check_answers(self, P: np.ndarray) -> None:
        """Raise AttackFailed now if answers ``P`` are too coarse to solve with (a first
        batch is enough to tell: the extraction loop calls this before paying for more)."""
        self._check_precision(np.asarray(P, dtype=float))

    def _check_precision(self, P: np.ndarray) -> None:
        """Raise AttackFailed for answers too coarse to take logarithms of."""
        total = P.size
        if not np.all(np.isfinite(P)) or np.any(P < 0):
            raise AttackFailed(
                "answers contain NaN, infinite or negative values; not probabilities"
            )
        zeros, ones = int(np.sum(P == 0)), int(np.sum(P == 1))
        decimals = _rounded_decimals(P)
        if zeros:
            rounded = f", and every value is a multiple of 10^-{decimals}" if decimals else ""
            raise AttackFailed(
                f"answers are not full-precision probabilities: {zeros} of {total} values are "
                f"exactly 0 and {ones} exactly 1{rounded}, which a softmax never outputs; they "
                "are hard labels, clipped, rounded, or vote fractions of a model that is not "
                "softmax-linear (e.g. a random forest), and log 0 is undefined"
            )
        if decimals is not None:
            p_min = float(P.min())
            error = 0.5 * 10.0**-decimals / p_min
            if error > self.tol:
                raise AttackFailed(
                    f"answers are rounded to {decimals} decimals (every value is a multiple of "
                    f"10^-{decimals}): the smallest probability {p_min:.3g} then carries a "
                    f"relative error up to {error:.3g} (tolerance {self.tol:g}); equation "
                    "solving needs full-precision probabilities"
                )
        rows = np.unique(P, axis=0)
        distinct = len(np.unique(rows))
        if distinct < MIN_DISTINCT_FRACTION * rows.size:
            raise AttackFailed(
                f"answers are quantised: only {distinct} distinct values among the {rows.size} "
                f"probabilities of {len(rows)} distinct answers; equation solving needs "
                "full-precision probabilities"
            )

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits ``X W^T + b`` (centred across classes), shape ``(n, c)``."""
        check_is_fitted(self)
        X = check_array(X, dtype=float)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, expected {self.n_features_in_}")
        return X @ self.coef_.T + self.intercept_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the recovered logits."""
        Z = self.decision_function(X)
        Z = np.exp(Z - Z.max(axis=1, keepdims=True))
        return Z / Z.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def to_sklearn(self) -> LogisticRegression:
        """The recovered model as a fitted multinomial LogisticRegression (for skops and ONNX)."""
        check_is_fitted(self)
        model = LogisticRegression()
        model.classes_ = self.classes_
        coef, intercept = np.array(self.coef_, dtype=float), np.array(self.intercept_, dtype=float)
        if len(self.classes_) == 2:
            # A binary LogisticRegression keeps one row: p(classes_[1]) = sigmoid(z1 - z0).
            coef, intercept = (coef[1] - coef[0])[None, :], intercept[1:] - intercept[:1]
        model.coef_ = coef
        model.intercept_ = intercept
        model.n_features_in_ = self.n_features_in_
        model.n_iter_ = np.array([0])
        return model
