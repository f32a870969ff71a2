"""How well a stolen model copies the victim: label comparisons on class values.

Labels are class values (ints or strings). Two label arrays are compared as they are when both
are numeric, and as text when either holds strings (a victim answering ``"malignant"`` and an
evaluation file with the same word agree; ``1`` and ``"1"`` agree too).
"""

from typing import Any

import numpy as np


def _comparable(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "UOS" or b.dtype.kind in "UOS":
        return a.astype(str), b.astype(str)
    return a, b


def same(a: Any, b: Any) -> np.ndarray:
    """Row-wise equality of two label arrays (see the module docstring)."""
    a, b = _comparable(a, b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} and {b.shape}")
    return a == b


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of rows where ``predicted`` equals the true label."""
    return float(np.mean(same(predicted, truth)))


def fidelity(stolen: np.ndarray, victim: np.ndarray) -> float:
    """Fraction of rows where the stolen model agrees with the victim (label agreement)."""
    return float(np.mean(same(stolen, victim)))


def _key(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def per_class_agreement(
    stolen: np.ndarray, victim: np.ndarray, classes: np.ndarray
) -> dict[Any, float]:
    """Agreement with the victim among the rows the victim puts in each class (NaN: none)."""
    out: dict[Any, float] = {}
    for c in np.asarray(classes):
        rows = same(victim, np.full(len(np.asarray(victim)), c))
        agree = same(np.asarray(stolen)[rows], np.full(int(rows.sum()), c))
        out[_key(c)] = float(np.mean(agree)) if rows.any() else float("nan")
    return out


def confusion_matrix(
    reference: np.ndarray, predicted: np.ndarray, classes: np.ndarray
) -> list[list[int]]:
    """Counts ``[i][j]`` of rows whose reference label is ``classes[i]`` and prediction
    ``classes[j]``; rows with a label outside ``classes`` (a refusal's -1) are not counted."""
    classes = np.asarray(classes)
    k = len(classes)
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    matrix = np.zeros((k, k), dtype=int)
    ref_hits = [same(reference, np.full(len(reference), c)) for c in classes]
    pred_hits = [same(predicted, np.full(len(predicted), c)) for c in classes]
    for i in range(k):
        for j in range(k):
            matrix[i, j] = int(np.sum(ref_hits[i] & pred_hits[j]))
    return matrix.tolist()


def defense_effectiveness(undefended_accuracy: float, defended_accuracy: float) -> float:
    """Relative drop of stolen accuracy caused by the defenses (0.648 means 64.8 % lower)."""
    if undefended_accuracy <= 0:
        return 0.0
    return (undefended_accuracy - defended_accuracy) / undefended_accuracy
