"""Export a fitted scikit-learn classifier to ONNX (probabilities as a plain tensor, no ZipMap)."""

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.data import N_FEATURES
from modeltheft.errors import ModelIntegrityError


def export_onnx(model: ClassifierMixin, path: Path) -> Path:
    """Write ``model`` as ONNX to ``path``; raises ModelIntegrityError if it cannot be converted."""
    from skl2onnx import to_onnx

    sample = np.zeros((1, N_FEATURES), dtype=np.float32)
    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    try:
        onnx_model = to_onnx(model, sample, options=options, target_opset=17)
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        raise ModelIntegrityError(f"cannot convert {type(model).__name__} to ONNX: {exc}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def single_thread_session(source: Path | bytes) -> Any:
    """An onnxruntime CPU session on one thread (a request is tiny; threads only contend)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_predict(path: Path, X: np.ndarray) -> np.ndarray:
    """Labels an ONNX classifier file predicts for ``X`` (single-threaded session)."""
    session = single_thread_session(path)
    name = session.get_inputs()[0].name
    labels = session.run(None, {name: np.asarray(X, dtype=np.float32)})[0]
    return np.asarray(labels).ravel()
