"""The fast inference path: the victim as an onnxruntime session, checked against scikit-learn.

A 50-tree forest answers one row in about 2 ms through scikit-learn's ``predict_proba`` and in
about 10-25 µs through onnxruntime. The converted model is used only if its float64
probabilities equal scikit-learn's within ``TOLERANCE`` (1e-12), with the same top class, on
check rows drawn from the task (:func:`check_rows`); otherwise scikit-learn stays (fallback).

Forests and trees get a float64 graph of ours (:mod:`modeltheft.victim.onnx_trees`: skl2onnx's
tree operators are float32); the others skl2onnx's float64 conversion. Linear models and MLPs
agree to ~1e-15; the calibrated SVC (float32 constants in skl2onnx's calibration) and models
skl2onnx cannot convert (HistGradientBoosting) are served by scikit-learn.
"""

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.tasks import Task, task_from_model
from modeltheft.victim import onnx_trees
from modeltheft.victim.onnx import OnnxClassifier

log = logging.getLogger("modeltheft.victim")
TOLERANCE = 1e-12
CHECK_SEED = 0
N_CHECK_ROWS = 256


def convert(model: ClassifierMixin) -> OnnxClassifier:
    """``model`` as a float64 ONNX graph: ours for a forest or tree, else skl2onnx's (float64
    input, probabilities as a tensor, no ZipMap).

    Raises whatever skl2onnx raises for a model it cannot convert.
    """
    if onnx_trees.supports(model):
        onnx_model = onnx_trees.forest_to_onnx(model)
    else:
        from skl2onnx import to_onnx

        width = int(model.n_features_in_)
        sample = np.zeros((1, width), dtype=np.float64)
        options = {id(model): {"zipmap": False}}
        onnx_model = to_onnx(model, sample, options=options, target_opset=17)
    return OnnxClassifier(
        onnx_model.SerializeToString(), classes=np.asarray(model.classes_), what="converted model"
    )


@dataclass(frozen=True)
class InferenceModel:
    """The model the service calls, and which path it is."""

    model: ClassifierMixin | OnnxClassifier
    engine: str
    """``onnx`` or ``sklearn``."""
    reason: str = ""
    """Why scikit-learn is used, when it is."""


def check_rows(task: Task) -> np.ndarray:
    """Rows to compare both paths on: seeded rows in the task's space, and its eval rows.

    Each feature is drawn uniformly within its bounds when both are finite, else from a
    standard normal (clipped to a one-sided bound). With data, the eval rows are added.
    """
    rng = np.random.default_rng(CHECK_SEED)
    d = task.n_features
    lower, upper = task.lower, task.upper
    finite = np.isfinite(lower) & np.isfinite(upper)
    span = np.where(finite, upper - lower, 0.0)
    rows = np.where(finite, lower, 0.0) + rng.random((N_CHECK_ROWS, d)) * span
    if not finite.all():
        rows = np.where(finite, rows, rng.standard_normal((N_CHECK_ROWS, d)))
        rows = np.clip(rows, lower, upper)
    if task.data is not None:
        rows = np.vstack([rows, task.data.X_eval])
    return rows


def fast_model(
    model: ClassifierMixin | OnnxClassifier, engine: str = "auto", task: Task | None = None
) -> InferenceModel:
    """ONNX when it converts and agrees with scikit-learn (``auto``), or scikit-learn.

    An ONNX classifier (a model file made elsewhere) is served as it is. ``task`` says where
    to compare both paths (default: the model's own schema).
    """
    if isinstance(model, OnnxClassifier):
        return InferenceModel(model, "onnx", "an ONNX model file")
    if engine == "sklearn":
        return InferenceModel(model, "sklearn", "asked for")
    try:
        converted = convert(model)
    except Exception as exc:  # skl2onnx raises many types for what it cannot convert
        reason = f"ONNX conversion failed ({type(exc).__name__})"
        log.warning("serving with scikit-learn: %s", reason)
        return InferenceModel(model, "sklearn", reason)
    X = check_rows(task_from_model(model, task))
    fast, slow = converted.predict_proba(X), model.predict_proba(X)
    gap = float(np.max(np.abs(fast - slow)))
    flips = int(np.sum(np.argmax(fast, axis=1) != np.argmax(slow, axis=1)))
    if not gap <= TOLERANCE or flips:
        reason = f"ONNX probabilities differ from scikit-learn's by {gap:.1e} ({flips} labels)"
        log.warning("serving with scikit-learn: %s", reason)
        return InferenceModel(model, "sklearn", reason)
    return InferenceModel(converted, "onnx")
