"""`recommended` on tabular tasks: 50 honest clients keep their answers; a uniform thief is caught.

The victim is a random forest trained on the task's victim rows. Each honest client (its own
key) sends every evaluation row once, in its own random order, in batches of 1-20. The
thief sends 300 rows drawn uniformly within the declared bounds, 10 per request.
"""

import logging

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.alerts import alerts
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import Task, get_task


class Answered:
    """The forest's answers to known rows, computed once (the same numbers, cheaper per request)."""

    def __init__(self, model: RandomForestClassifier, *row_sets: np.ndarray) -> None:
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_
        rows = np.vstack(row_sets)
        self._known = {r.tobytes(): p for r, p in zip(rows, model.predict_proba(rows), strict=True)}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.array([self._known[r.tobytes()] for r in np.asarray(X, dtype=float)])


def served(task: Task, thief_rows: np.ndarray) -> tuple[Answered, RandomForestClassifier]:
    X, y = task.data.victim_rows()
    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    return Answered(forest, task.data.X_eval, thief_rows), forest


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
def test_honest_clients_keep_their_answers_and_a_uniform_thief_is_caught(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="modeltheft")
    task = get_task(name)
    rng = np.random.default_rng(5)
    thief_rows = task.clip(rng.uniform(task.lower, task.upper, size=(300, task.n_features)))
    model, forest = served(task, thief_rows)
    store = MemoryStore(np.random.default_rng(11))
    guarded = GuardedModel(model, load_pipeline("recommended"), store=store, seed=0, task=task)
    X, y = task.data.X_eval, task.data.y_eval
    truth = forest.predict(X)
    for client in range(50):
        order = np.random.default_rng([7, client]).permutation(len(y))
        labels = np.empty(len(y), dtype=y.dtype)
        sent = 0
        while sent < len(order):
            idx = order[sent : sent + int(np.random.default_rng([client, sent]).integers(1, 21))]
            labels[sent : sent + len(idx)] = guarded.answer(f"honest-{client}", X[idx]).labels
            sent += len(idx)
        lost = np.mean(truth[order] == y[order]) - np.mean(labels == y[order])
        assert lost <= 0.005, f"client {client} lost {lost:.3f} accuracy"
    assert alerts(store) == []
    answered = np.concatenate(
        [guarded.answer("thief", thief_rows[i : i + 10]).labels for i in range(0, 300, 10)]
    )
    [alert] = alerts(store)
    assert alert["client"] == "thief" and alert["after_queries"] <= 20
    # After the alert every answer is misinformed or watermarked (a keyed coin with 2 classes).
    assert np.mean(answered[20:] == forest.predict(thief_rows[20:])) < 0.6
