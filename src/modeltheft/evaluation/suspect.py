"""A suspect model to test for our watermarks: a model file or a prediction API."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import skops.io as sio

from modeltheft.errors import ModelIntegrityError
from modeltheft.oracle import make_oracle
from modeltheft.victim.onnx import onnx_predict
from modeltheft.victim.store import TRUSTED_TYPES, load_victim, metadata_path

Predictor = Callable[[np.ndarray], np.ndarray]


def _skops_predictor(path: Path) -> Predictor:
    if metadata_path(path).is_file():
        return load_victim(path, require_proba=False).model.predict
    # A copy found elsewhere has no metadata of ours: load it only if its types are trusted.
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
        unknown = untrusted - TRUSTED_TYPES
        if unknown:
            raise ModelIntegrityError(f"{path} holds untrusted types: {sorted(unknown)}")
        model = sio.load(path, trusted=sorted(untrusted))
    except ModelIntegrityError:
        raise
    except Exception as exc:  # skops raises many types for a corrupt archive
        raise ModelIntegrityError(f"cannot load {path}: {exc}") from None
    if not hasattr(model, "predict"):
        raise ModelIntegrityError(f"{path} does not hold a model with predict")
    return model.predict


def suspect_predictor(
    suspect: str,
    *,
    protocol: str = "modeltheft",
    api_key: str | None = None,
    model_name: str | None = None,
) -> Predictor:
    """Labels the suspect predicts: ``.skops`` / ``.onnx`` files, or an ``http(s)://`` API.

    Over HTTP every row is one query; rows the API refuses come back as label -1 (never a
    match).
    """
    if suspect.startswith(("http://", "https://")):

        def remote(X: np.ndarray) -> np.ndarray:
            options = {"api_key": api_key} if api_key else {}
            oracle = make_oracle(
                protocol, suspect, budget=max(1, len(X)), model_name=model_name, **options
            )
            try:
                return oracle.query(X).labels
            finally:
                oracle.close()

        return remote
    path = Path(suspect)
    if not path.is_file():
        raise ModelIntegrityError(f"suspect {suspect!r} is neither a model file nor an http URL")
    if path.suffix == ".onnx":
        return lambda X: onnx_predict(path, X)
    return _skops_predictor(path)
