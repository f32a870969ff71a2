"""Task.held_out(): the training rows of a victim that never saw the attacker-public rows."""

import numpy as np

from modeltheft.tasks import digits_task, get_task


def test_digits_held_out_drops_exactly_the_public_digits() -> None:
    task = digits_task()
    held = task.held_out()
    X, y = task.data.victim_rows(holdout=True)
    assert len(held.data.X_train) == len(task.data.X_train) - task.data.n_public == len(X)
    np.testing.assert_array_equal(held.data.X_train, X)
    np.testing.assert_array_equal(held.data.y_train, y)
    public = {row.tobytes() for row in task.data.X_public}
    assert not public & {row.tobytes() for row in held.data.X_train}
    np.testing.assert_array_equal(held.data.X_eval, task.data.X_eval)
    assert held.data.holdout is None
    assert held.held_out() is held


def test_schema_only_task_is_returned_as_it_is() -> None:
    task = get_task("wine").without_data()
    assert task.held_out() is task
