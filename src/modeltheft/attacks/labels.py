"""Label modes: how the thief turns answers into training targets.

``hard`` keeps the top label; ``soft`` distils the full probability vector; ``top-k`` keeps the
k largest probabilities and spreads the rest evenly over the other classes. Soft targets are
fitted by the standard trick of repeating each row once per class with the class probability
as sample weight, which makes a weighted log-loss equal the cross-entropy with soft targets
(Hinton et al., Distilling the Knowledge in a Neural Network, 2015).
"""

import inspect

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.pipeline import Pipeline

from modeltheft.errors import AttackFailed, ConfigError

LABEL_MODES = ("hard", "soft", "top-k")
MIN_WEIGHT = 1e-3


def parse_label_mode(mode: str, k: int = 3) -> tuple[str, int]:
    """Validate a label mode and its k."""
    if mode not in LABEL_MODES:
        raise ConfigError(f"unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    if mode == "top-k" and (not isinstance(k, int) or k < 1):
        raise ConfigError(f"top-k needs k >= 1, got {k!r}")
    return mode, k


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest probabilities; share the remaining mass among the others."""
    P = np.asarray(probabilities, dtype=float)
    n, c = P.shape
    if k >= c:
        return P
    order = np.argsort(-P, axis=1)
    kept = np.zeros_like(P, dtype=bool)
    kept[np.arange(n)[:, None], order[:, :k]] = True
    out = np.where(kept, P, 0.0)
    rest = np.clip(1.0 - out.sum(axis=1, keepdims=True), 0.0, None) / (c - k)
    return np.where(kept, out, rest)


def soft_targets(
    labels: np.ndarray, probabilities: np.ndarray | None, mode: str, k: int, classes: np.ndarray
) -> np.ndarray | None:
    """The (n, c) target matrix for ``soft`` and ``top-k`` (columns in ``classes`` order);
    None for ``hard``."""
    if mode == "hard":
        return None
    if probabilities is None:
        raise AttackFailed(
            f"label mode {mode!r} needs probabilities, but the target returns labels only"
        )
    P = np.asarray(probabilities, dtype=float)
    if P.shape[1] != len(classes):
        raise AttackFailed(f"answers have {P.shape[1]} probabilities, expected {len(classes)}")
    return top_k(P, k) if mode == "top-k" else P


def fit_substitute(
    model: ClassifierMixin,
    X: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray | None,
    classes: np.ndarray,
) -> ClassifierMixin:
    """Fit ``model`` on hard labels, or on soft ``targets`` through weighted class copies."""
    if len(np.unique(labels)) < 2 and targets is None:
        raise AttackFailed(f"all {len(labels)} answers carry the same label; nothing to learn from")
    if targets is None:
        return model.fit(X, labels)
    if hasattr(model, "fit_soft"):
        return model.fit_soft(X, targets, classes)
    last = model.steps[-1] if isinstance(model, Pipeline) else None
    estimator = last[1] if last is not None else model
    if "sample_weight" not in inspect.signature(estimator.fit).parameters:
        # k-NN and similar: fall back to the most probable class.
        return model.fit(X, classes[np.argmax(targets, axis=1)])
    rows, cols = np.nonzero(targets >= MIN_WEIGHT)
    key = f"{last[0]}__sample_weight" if last is not None else "sample_weight"
    return model.fit(X[rows], classes[cols], **{key: targets[rows, cols]})
