"""A client of the KServe v1 / TensorFlow-Serving style ``:predict`` API."""

from typing import Any, ClassVar
from urllib.parse import quote

import numpy as np

from modeltheft.errors import OracleError
from modeltheft.oracle.http import NamedModelOracle, checked_answers


class KServeV1Oracle(NamedModelOracle):
    """``POST {url}/v1/models/{model_name}:predict`` with ``{"instances": rows}``.

    Each of the answer's ``predictions`` is a label (an int, a float equal to one, or a
    string; a one-element list is read as a label too) or a list of class probabilities; all
    predictions of one answer must be of the same kind. KServe v1 does not describe a model's
    inputs, so the width comes from ``task`` (a ConfigError without one); the classes too,
    or they are learned from the answers if the task does not name them.
    """

    name: ClassVar[str] = "kserve-v1"

    def _missing(self) -> str:
        return "protocol kserve-v1 does not describe the model: give --task"

    @property
    def probability_hint(self) -> str:
        return (
            "a KServe v1 server sends probabilities only if its predictor returns "
            "predict_proba rows (or try --protocol oip-v2 --output predict_proba); "
            "or use --label-mode hard"
        )

    @property
    def predict_url(self) -> str:
        """Where predictions are asked for."""
        return f"{self.url}/v1/models/{quote(self.model_name, safe='')}:predict"

    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        return self.predict_url, {"instances": X.tolist()}

    def _parse(self, body: Any, n: int) -> list[dict[str, Any]]:
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list):
            raise OracleError(f"unexpected answer from {self.url}: no 'predictions' list")
        if len(predictions) != n:
            raise OracleError(f"asked {n} rows, got {len(predictions)} predictions")
        lists = [isinstance(p, list) and len(p) > 1 for p in predictions]
        if all(lists):
            return checked_answers(n, None, predictions)
        if any(lists):
            raise OracleError(f"the answer from {self.url} mixes labels and probability lists")
        labels = [p[0] if isinstance(p, list) and len(p) == 1 else p for p in predictions]
        return checked_answers(n, labels, None)
