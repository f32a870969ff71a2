"""Rows of several requests predicted in one call only when no answer changes by a bit."""

import numpy as np
import pytest

from modeltheft.defenses.batching import MAX_ROWS, Together, batch_invariant
from modeltheft.tasks import digits_task
from modeltheft.victim import train_victim
from modeltheft.victim.fast import check_rows, fast_model


def rows(n: int = 40) -> np.ndarray:
    return check_rows(digits_task())[:n]


def test_a_forest_is_batch_invariant_served_by_onnx_or_scikit_learn() -> None:
    model = train_victim("rf").model
    served = fast_model(model)
    assert served.engine == "onnx"
    assert batch_invariant(served.model.predict_proba, rows())
    assert batch_invariant(model.predict_proba, rows())


def test_a_model_whose_answers_depend_on_the_batch_is_not() -> None:
    model = train_victim("rf").model

    def drifting(X: np.ndarray) -> np.ndarray:  # a last-bit change past 7 rows (another kernel)
        P = model.predict_proba(X)
        return P * (1 + 1e-16 * len(X)) if len(X) > 7 else P

    assert not batch_invariant(drifting, rows())
    assert not batch_invariant(lambda X: X[::-1], rows())  # rows answered out of order
    assert not batch_invariant(lambda X: X[:1], rows())  # the wrong shape


def test_too_few_rows_or_a_failing_model_is_not_invariant() -> None:
    model = train_victim("rf").model
    assert not batch_invariant(model.predict_proba, rows(MAX_ROWS + 2))

    def broken(X: np.ndarray) -> np.ndarray:
        raise ValueError("no")

    assert not batch_invariant(broken, rows())


def test_together_answers_each_part_from_one_call() -> None:
    calls: list[int] = []

    def predict(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        return X * 2

    together = Together(predict)
    a, b = np.ones((1, 3)), np.arange(6.0).reshape(2, 3)
    assert together.add(a) == 0 and together.add(b) == 1
    assert together.add(np.zeros((MAX_ROWS - 2, 3))) is None  # too many rows: predicted alone
    assert np.array_equal(together.answers(1, 2), b * 2)
    assert np.array_equal(together.answers(0, 1), a * 2)
    assert calls == [3]
    assert together.add(a) is None  # answered: nothing joins any more


def test_together_falls_back_to_each_part_alone_when_the_shared_call_fails() -> None:
    def predict(X: np.ndarray) -> np.ndarray:
        if np.isnan(X).any():
            raise ValueError("a NaN")
        return X + 1

    together = Together(predict)
    good, bad = np.zeros((1, 2)), np.full((1, 2), np.nan)
    assert together.add(good) == 0 and together.add(bad) == 1
    assert np.array_equal(together.answers(0, 1), good + 1)  # its own answer all the same
    with pytest.raises(ValueError, match="NaN"):
        together.answers(1, 1)  # the error is the bad part's only
