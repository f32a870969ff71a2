"""The lab's procedure as one interleaved random stream, for comparison only.

The OWASP lab draws the attacker's queries and the defenses' noise from NumPy's one global
generator, seeded once with 42. To compare our figures with its published ones, this module
replays that procedure with an explicit legacy ``RandomState`` (no global state touched).
modeltheft itself never shares a stream between attacker and service.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression

from modeltheft.tasks import digits_task


def _query(rs: np.random.RandomState) -> np.ndarray:
    row = rs.uniform(0, 1, 64)
    if rs.random_sample() < 0.7:
        cx, cy = rs.randint(2, 6, 2)
        for i in range(8):
            for j in range(8):
                if np.hypot(i - cx, j - cy) < 3:
                    row[i * 8 + j] += rs.uniform(0.3, 0.7)
    return np.clip(row, 0, 1)


def _answer(victim, x: np.ndarray, count: int, defended: bool, rs) -> int | None:
    probabilities = victim.predict_proba(x[None])[0]
    top = int(np.argmax(probabilities))
    if not defended:
        return top
    if count > 150 and rs.random_sample() < 0.8:
        return None
    noisy = np.round(np.clip(probabilities + rs.normal(0, 0.2, probabilities.shape), 0.01, 0.99), 1)
    if rs.random_sample() < 0.4:
        noisy = np.eye(len(noisy))[top]
    return int(np.argmax(noisy / noisy.sum()))


def scenario(victim, defended: bool, rs: np.random.RandomState) -> tuple[float, float, int]:
    """Stolen accuracy, fidelity and answers of one lab scenario on the shared stream ``rs``."""
    X, y = [], []
    for count in range(1, 301):
        x = _query(rs)
        label = _answer(victim, x, count, defended, rs)
        if label is not None:
            X.append(x)
            y.append(label)
    split = digits_task().data
    predicted = (
        LogisticRegression(max_iter=1000).fit(np.array(X), np.array(y)).predict(split.X_eval)
    )
    return (
        float(np.mean(predicted == split.y_eval)),
        float(np.mean(predicted == victim.predict(split.X_eval))),
        len(y),
    )


def lab_run(victim, seed: int) -> dict[str, tuple[float, float, int]]:
    """Both scenarios in the lab's order on one stream seeded with ``seed``."""
    rs = np.random.RandomState(seed)
    return {"none": scenario(victim, False, rs), "lab": scenario(victim, True, rs)}
