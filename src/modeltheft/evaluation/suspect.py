"""A suspect model to test for our watermarks: a model file or a prediction API."""

from collections.abc import Callable
from pathlib import Path

import numpy as np

from modeltheft.errors import ModelIntegrityError
from modeltheft.oracle import make_oracle
from modeltheft.victim.onnx import onnx_predict
from modeltheft.victim.store import load_trusted, load_victim, metadata_path

Predictor = Callable[[np.ndarray], np.ndarray]


def _skops_predictor(path: Path) -> Predictor:
    if metadata_path(path).is_file():
        return load_victim(path, require_proba=False).model.predict
    # A copy found elsewhere has no metadata of ours: load it only if its types are trusted.
    model = load_trusted(path)
    if not hasattr(model, "predict"):
        raise ModelIntegrityError(f"{path} does not hold a model with predict")
    return model.predict


def suspect_predictor(
    suspect: str,
    *,
    protocol: str = "modeltheft",
    api_key: str | None = None,
    model_name: str | None = None,
    batch: int = 100,
) -> Predictor:
    """Labels the suspect predicts: ``.skops`` / ``.onnx`` files, or an ``http(s)://`` API.

    Over HTTP every row is one query, sent ``batch`` rows per request; rows the API refuses
    come back as label -1 (never a match).
    """
    if suspect.startswith(("http://", "https://")):

        def remote(X: np.ndarray) -> np.ndarray:
            options = {"api_key": api_key} if api_key else {}
            oracle = make_oracle(
                protocol, suspect, budget=max(1, len(X)), model_name=model_name, **options
            )
            try:
                chunks = [oracle.query(X[i : i + batch]).labels for i in range(0, len(X), batch)]
                return np.concatenate(chunks) if chunks else np.empty(0, dtype=int)
            finally:
                oracle.close()

        return remote
    path = Path(suspect)
    if not path.is_file():
        raise ModelIntegrityError(f"suspect {suspect!r} is neither a model file nor an http URL")
    if path.suffix == ".onnx":
        return lambda X: onnx_predict(path, X)
    return _skops_predictor(path)
