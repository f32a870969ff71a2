"""How well a stolen model copies the victim."""

import numpy as np


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of rows where ``predicted`` equals the true label."""
    return float(np.mean(np.asarray(predicted) == np.asarray(truth)))


def fidelity(stolen: np.ndarray, victim: np.ndarray) -> float:
    """Fraction of rows where the stolen model agrees with the victim (label agreement)."""
    return float(np.mean(np.asarray(stolen) == np.asarray(victim)))


def per_class_agreement(
    stolen: np.ndarray, victim: np.ndarray, classes: np.ndarray
) -> dict[int, float]:
    """Agreement with the victim among the rows the victim puts in each class."""
    stolen, victim = np.asarray(stolen), np.asarray(victim)
    return {
        int(c): float(np.mean(stolen[victim == c] == c)) if np.any(victim == c) else float("nan")
        for c in classes
    }


def defense_effectiveness(undefended_accuracy: float, defended_accuracy: float) -> float:
    """Relative drop of stolen accuracy caused by the defenses (0.648 means 64.8 % lower)."""
    if undefended_accuracy <= 0:
        return 0.0
    return (undefended_accuracy - defended_accuracy) / undefended_accuracy
