"""A suspect model to test for our watermarks: a model file or a prediction API."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modeltheft.errors import ModelIntegrityError
from modeltheft.oracle import make_oracle
from modeltheft.tasks.base import Task
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


def class_values(values: list[Any]) -> np.ndarray:
    """Predicted class values as an array; None (refused, or no class) becomes a value equal
    to no class: -1 (or below the smallest class) for integer classes, None otherwise."""
    known = [v for v in values if v is not None]
    if all(isinstance(v, int) for v in known):
        missing = min([-1, *[v - 1 for v in known]]) if -1 in known else -1
        return np.array([missing if v is None else v for v in values], dtype=int)
    return np.array(values, dtype=object)


def suspect_predictor(
    suspect: str,
    *,
    protocol: str = "modeltheft",
    api_key: str | None = None,
    model_name: str | None = None,
    task: Task | None = None,
    batch: int = 100,
) -> Predictor:
    """Class values the suspect predicts: ``.skops`` / ``.onnx`` files, or an ``http(s)://`` API.

    Over HTTP every row is one query, sent ``batch`` rows per request through
    :func:`~modeltheft.oracle.make_oracle` (``task`` as for an attack: needed for
    ``kserve-v1``); rows the API refuses come back as a value that is no class (never a match).
    """
    if suspect.startswith(("http://", "https://")):

        def remote(X: np.ndarray) -> np.ndarray:
            options = {"api_key": api_key} if api_key else {}
            oracle = make_oracle(
                protocol,
                suspect,
                budget=max(1, len(X)),
                model_name=model_name,
                task=task,
                **options,
            )
            try:
                chunks = [oracle.query(X[i : i + batch]).labels for i in range(0, len(X), batch)]
                indices = np.concatenate(chunks) if chunks else np.empty(0, dtype=int)
                book = oracle.book
                return class_values([book.value(int(i)) if book else None for i in indices])
            finally:
                oracle.close()

        return remote
    path = Path(suspect)
    if not path.is_file():
        raise ModelIntegrityError(f"suspect {suspect!r} is neither a model file nor an http URL")
    if path.suffix == ".onnx":
        return lambda X: onnx_predict(path, X)
    return _skops_predictor(path)
