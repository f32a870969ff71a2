"""The optional CNN substitute: a clear error without PyTorch, a working copy with it."""

import sys

import numpy as np
import pytest

from modeltheft.attacks import make_substitute
from modeltheft.attacks.cnn import CNNClassifier
from modeltheft.errors import ConfigError
from modeltheft.tasks import digits_task


def test_cnn_without_torch_raises_config_error_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    split = digits_task().data
    with pytest.raises(ConfigError, match=r"pip install 'modeltheft\[cnn\]'.*torch==2\.13\.0"):
        make_substitute("cnn").fit(split.X_train[:20], split.y_train[:20])


def test_cnn_is_registered_with_the_seed() -> None:
    model = make_substitute("cnn", seed=7)
    assert isinstance(model, CNNClassifier)
    assert model.random_state == 7


def test_cnn_learns_the_digits() -> None:
    pytest.importorskip("torch")
    split = digits_task().data
    model = CNNClassifier(epochs=8, random_state=0).fit(split.X_train, split.y_train)
    assert np.mean(model.predict(split.X_eval) == split.y_eval) > 0.9
    assert list(model.classes_) == list(range(10))


def test_cnn_fit_soft_gives_probability_rows() -> None:
    pytest.importorskip("torch")
    split = digits_task().data
    X, y = split.X_train[:300], split.y_train[:300]
    classes = np.arange(10)
    targets = np.full((len(y), 10), 0.02)
    targets[np.arange(len(y)), y] = 0.82
    model = CNNClassifier(epochs=3, random_state=0).fit_soft(X, targets, classes)
    proba = model.predict_proba(split.X_eval)
    assert proba.shape == (len(split.X_eval), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert set(model.predict(split.X_eval)) <= set(classes)


def test_cnn_is_deterministic_from_random_state() -> None:
    pytest.importorskip("torch")
    split = digits_task().data
    X, y = split.X_train[:300], split.y_train[:300]
    first = CNNClassifier(epochs=3, random_state=3).fit(X, y)
    second = CNNClassifier(epochs=3, random_state=3).fit(X, y)
    np.testing.assert_array_equal(first.predict(split.X_eval), second.predict(split.X_eval))
    np.testing.assert_array_equal(
        first.predict_proba(split.X_eval), second.predict_proba(split.X_eval)
    )
