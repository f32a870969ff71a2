"""How an oracle maps label values and probability columns to class indices."""

import numpy as np
import pytest

from modeltheft.errors import OracleError
from modeltheft.oracle import ClassBook


def rec(label: object = None, probs: list[float] | None = None, refused: bool = False) -> dict:
    return {"label": label, "probabilities": probs, "refused": refused}


def test_fixed_classes_map_values_and_refuse_strangers() -> None:
    book = ClassBook(np.array(["cat", "dog"]))
    answers = book.answers([rec("dog"), rec(None, [0.9, 0.1]), rec(refused=True)])
    assert answers.labels.tolist() == [1, 0, -1]
    assert np.isnan(answers.probabilities[2]).all() and answers.refused.tolist() == [0, 0, 1]
    with pytest.raises(OracleError, match="label 'cow' of row 0 is not one of the classes"):
        book.answers([rec("cow")])
    with pytest.raises(OracleError, match=r"shape \[1, 3\], expected \[1, 2\]"):
        book.answers([rec("cat", [0.2, 0.3, 0.5])])
    ints = ClassBook(np.array([3, 7]))
    assert ints.answers([rec(7.0), rec(3)]).labels.tolist() == [1, 0]
    with pytest.raises(OracleError, match="label '7' of row 0 is not one of the classes"):
        ints.answers([rec("7")])
    with pytest.raises(OracleError, match="label True of row 0 is not a class label"):
        ints.answers([rec(True)])


def test_labels_only_are_learned_append_only() -> None:
    book = ClassBook()
    assert book.answers([rec("b")]).labels.tolist() == [0]
    assert len(book.classes) == 0  # one class seen: not a task yet
    assert book.answers([rec("a"), rec("b"), rec("c")]).labels.tolist() == [1, 0, 2]
    assert book.classes.tolist() == ["b", "a", "c"]
    assert book.value(2) == "c" and book.value(-1) is None
    with pytest.raises(OracleError, match="labels only before, probabilities now"):
        book.answers([rec("a", [0.5, 0.5])])


def test_integer_labels_on_their_columns_are_classes_0_to_k() -> None:
    book = ClassBook(columns=4)
    assert book.classes.tolist() == [0, 1, 2, 3]  # presumed before any answer
    answers = book.answers([rec(2, [0.1, 0.1, 0.7, 0.1]), rec(None, [0.6, 0.2, 0.1, 0.1])])
    assert answers.labels.tolist() == [2, 0] and book.classes.tolist() == [0, 1, 2, 3]
    assert book.answers([rec(3)]).labels.tolist() == [3]  # a label alone, on its column
    with pytest.raises(OracleError, match="label 9 of row 0 names none of the 4"):
        book.answers([rec(9)])


def test_other_labels_name_the_column_they_peak_at() -> None:
    book = ClassBook()  # columns learned from the first answer
    answers = book.answers([rec(1, [0.8, 0.1, 0.1]), rec(3, [0.1, 0.1, 0.8])])
    assert answers.labels.tolist() == [0, 2]
    assert len(book.classes) == 0  # column 1 not named yet: the classes are not known
    assert book.value(0) == 1 and book.value(1) is None
    book.answers([rec(2, [0.2, 0.7, 0.1]), rec(1, [0.2, 0.3, 0.5])])  # a label off its peak
    assert book.classes.tolist() == [1, 2, 3]
    with pytest.raises(OracleError, match="peaks at probability column 0, which is class 1"):
        book.answers([rec(4, [0.9, 0.05, 0.05])])


def test_string_columns_are_never_presumed() -> None:
    book = ClassBook(columns=2, presume=False)
    assert len(book.classes) == 0
    book.answers([rec("no", [0.9, 0.1]), rec("yes", [0.2, 0.8])])
    assert book.classes.tolist() == ["no", "yes"]
