"""A client of the KServe v1 / TensorFlow-Serving style ``:predict`` API."""

from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from modeltheft.errors import ConfigError, OracleError
from modeltheft.oracle.base import OracleAnswers
from modeltheft.oracle.http import HttpOracleBase, checked_answers
from modeltheft.oracle.log import QueryLog


class KServeV1Oracle(HttpOracleBase):
    """``POST {url}/v1/models/{model_name}:predict`` with ``{"instances": rows}``.

    Each of the answer's ``predictions`` is a label (an int, or a float equal to one; a
    one-element list is read as a label too) or a list of class probabilities; all predictions
    of one answer must be of the same kind.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        budget: int,
        *,
        api_key: str | None = None,
        log: QueryLog | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        on_rate_limit: str = "count",
        max_waits: int = 5,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            url,
            budget,
            api_key=api_key,
            log=log,
            timeout=timeout,
            retries=retries,
            on_rate_limit=on_rate_limit,
            max_waits=max_waits,
            client=client,
        )
        if not isinstance(model_name, str) or not model_name.strip():
            raise ConfigError(f"model name must be a non-empty string, got {model_name!r}")
        self.model_name = model_name
        self.predict_url = f"{self.url}/v1/models/{quote(model_name, safe='')}:predict"

    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        return self.predict_url, {"instances": X.tolist()}

    def _parse(self, body: Any, n: int) -> OracleAnswers:
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list):
            raise OracleError(f"unexpected answer from {self.url}: no 'predictions' list")
        if len(predictions) != n:
            raise OracleError(f"asked {n} rows, got {len(predictions)} predictions")
        lists = [isinstance(p, list) and len(p) > 1 for p in predictions]
        if all(lists):
            return checked_answers(n, self.n_classes, None, predictions)
        if any(lists):
            raise OracleError(f"the answer from {self.url} mixes labels and probability lists")
        labels = [p[0] if isinstance(p, list) and len(p) == 1 else p for p in predictions]
        return checked_answers(n, self.n_classes, labels, None)
