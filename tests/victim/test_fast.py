"""The ONNX inference path equals scikit-learn's, or is not used."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from modeltheft.tasks import digits_task
from modeltheft.victim import train_victim
from modeltheft.victim.fast import TOLERANCE, OnnxClassifier, check_rows, fast_model
from tests.conftest import auth


@pytest.mark.parametrize("family", ["rf", "lr", "mlp"])
def test_onnx_equals_scikit_learn_on_the_test_digits(family: str) -> None:
    model = train_victim(family).model
    fast = fast_model(model)
    assert fast.engine == "onnx", fast.reason
    X = digits_task().data.X_eval
    gap = np.abs(fast.model.predict_proba(X) - model.predict_proba(X)).max()
    assert gap <= TOLERANCE == 1e-12  # float64 answers, not float32 (was 4.8e-8 for rf)
    assert np.array_equal(fast.model.predict(X), model.predict(X))
    assert np.array_equal(fast.model.classes_, model.classes_)


def test_the_forest_gives_the_same_labels_on_thieves_queries_too() -> None:
    """Noise ties votes often; ONNX must break them as scikit-learn does."""
    from modeltheft.attacks.strategies import QueryHistory, make_strategy

    model = train_victim("rf").model
    fast = fast_model(model).model
    for name in ("owasp-synthetic", "uniform", "rendered-digits"):
        X = make_strategy(name).propose(2000, np.random.default_rng(0), QueryHistory())
        assert np.array_equal(fast.predict(X), model.predict(X)), name


@pytest.mark.parametrize(
    "forest",
    [
        lambda: train_victim("rf").model,
        lambda: ExtraTreesClassifier(20, random_state=0).fit(*_digits()),
        lambda: DecisionTreeClassifier(max_depth=6, random_state=0).fit(*_digits()),
        # Pure bootstrap samples: trees that are a single leaf.
        lambda: RandomForestClassifier(30, random_state=0).fit(_digits()[0][:3], [3, 3, 5]),
    ],
    ids=["rf", "extra-trees", "tree", "one-leaf-trees"],
)
def test_forests_answer_scikit_learns_float64_probabilities_bit_for_bit(forest) -> None:
    """0.04, not 0.03999999910593033: no float32 anywhere in the forest's graph."""
    model = forest()
    fast = fast_model(model)
    assert fast.engine == "onnx", fast.reason
    X = np.vstack([digits_task().data.X_eval, check_rows(digits_task())])
    answered = fast.model.predict_proba(X)
    assert answered.dtype == np.float64
    assert np.array_equal(answered, model.predict_proba(X))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = digits_task().data
    return data.X_train, data.y_train


def test_the_calibrated_svc_is_served_by_scikit_learn() -> None:
    """skl2onnx's SVMClassifier is float32 only: 1.8e-7 off, so scikit-learn answers."""
    model = train_victim("svc").model
    fast = fast_model(model)
    assert fast.engine == "sklearn" and "differ" in fast.reason
    assert fast.model is model


def test_a_model_onnx_cannot_convert_stays_on_scikit_learn() -> None:
    model = train_victim("gbdt").model  # HistGradientBoosting: no converter at this opset
    fast = fast_model(model)
    assert fast.engine == "sklearn" and "conversion failed" in fast.reason
    assert fast.model is model


def test_an_onnx_model_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    model = train_victim("lr").model
    honest = OnnxClassifier.predict_proba
    monkeypatch.setattr(OnnxClassifier, "predict_proba", lambda self, X: honest(self, X) + 1e-4)
    fast = fast_model(model)
    assert fast.engine == "sklearn" and "differ" in fast.reason


def test_scikit_learn_can_be_asked_for() -> None:
    model = train_victim("lr").model
    assert fast_model(model, "sklearn").engine == "sklearn"


def test_the_service_answers_through_onnx_exactly(client: TestClient, victim) -> None:
    assert client.get("/v1/model").json()["inference"] == "onnx"
    X = digits_task().data.X_eval[:200]
    body = client.post("/v1/predict", json={"inputs": X.tolist()}, headers=auth()).json()
    probabilities = np.array([p["probabilities"] for p in body["predictions"]])
    assert np.abs(probabilities - victim.model.predict_proba(X)).max() <= TOLERANCE
    labels = [p["label"] for p in body["predictions"]]
    assert labels == victim.model.predict(X).tolist()
