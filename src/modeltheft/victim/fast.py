"""The fast inference path: the victim as an onnxruntime session, checked against scikit-learn.

A 50-tree forest answers one row in about 2 ms through scikit-learn's ``predict_proba`` and in
about 8 µs through onnxruntime. The converted model is used only if its probabilities equal
scikit-learn's within ``TOLERANCE``, with the same top class, on check rows; otherwise
scikit-learn stays (fallback).
"""

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.data import N_FEATURES, lab_split
from modeltheft.victim.onnx import single_thread_session

log = logging.getLogger("modeltheft.victim")
TOLERANCE = 1e-6


class OnnxClassifier:
    """``predict_proba`` / ``predict`` / ``classes_`` of a converted model (float64, no ZipMap).

    The session is single-threaded (one request is tiny; threads would only contend) and
    ``run`` is safe to call from several threads at once.
    """

    def __init__(self, model: ClassifierMixin) -> None:
        from skl2onnx import to_onnx

        self.classes_ = np.asarray(model.classes_)
        self.n_features_in_ = int(getattr(model, "n_features_in_", N_FEATURES))
        sample = np.zeros((1, self.n_features_in_), dtype=np.float64)
        onnx_model = to_onnx(model, sample, options={id(model): {"zipmap": False}}, target_opset=17)
        self._session = single_thread_session(onnx_model.SerializeToString())
        self._input = self._session.get_inputs()[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[-1]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of every row, in one call."""
        rows = np.ascontiguousarray(X, dtype=np.float64)
        return self._session.run([self._output], {self._input: rows})[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels (class values) of every row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


@dataclass(frozen=True)
class InferenceModel:
    """The model the service calls, and which path it is."""

    model: ClassifierMixin | OnnxClassifier
    engine: str
    """``onnx`` or ``sklearn``."""
    reason: str = ""
    """Why scikit-learn is used, when it is."""


def check_rows(n_features: int) -> np.ndarray:
    """Rows to compare both paths on: the test digits (if the width fits) and seeded noise."""
    rows = [np.random.default_rng(0).random((256, n_features))]
    if n_features == N_FEATURES:
        rows.append(lab_split().X_test)
    return np.vstack(rows)


def fast_model(model: ClassifierMixin, engine: str = "auto") -> InferenceModel:
    """ONNX when it converts and agrees with scikit-learn (``auto``), or scikit-learn."""
    if engine == "sklearn":
        return InferenceModel(model, "sklearn", "asked for")
    try:
        converted = OnnxClassifier(model)
    except Exception as exc:  # skl2onnx raises many types for what it cannot convert
        reason = f"ONNX conversion failed ({type(exc).__name__})"
        log.warning("serving with scikit-learn: %s", reason)
        return InferenceModel(model, "sklearn", reason)
    X = check_rows(converted.n_features_in_)
    fast, slow = converted.predict_proba(X), model.predict_proba(X)
    gap = float(np.max(np.abs(fast - slow)))
    flips = int(np.sum(np.argmax(fast, axis=1) != np.argmax(slow, axis=1)))
    if not gap <= TOLERANCE or flips:
        reason = f"ONNX probabilities differ from scikit-learn's by {gap:.1e} ({flips} labels)"
        log.warning("serving with scikit-learn: %s", reason)
        return InferenceModel(model, "sklearn", reason)
    return InferenceModel(converted, "onnx")
