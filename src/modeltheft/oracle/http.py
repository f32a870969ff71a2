"""A client of modeltheft's ``POST /v1/predict`` API."""

import time

import httpx
import numpy as np

from modeltheft.errors import ConfigError, OracleError
from modeltheft.oracle.base import Oracle, OracleAnswers
from modeltheft.oracle.log import QueryLog

TRANSIENT = (httpx.TransportError,)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:200]
    return str(body)[:200]


class HttpOracle(Oracle):
    """Sends each batch as one request; a 429 refuses the whole batch (or is waited out).

    ``on_rate_limit``: ``"count"`` records the rows as refused (they were paid for);
    ``"wait"`` sleeps for ``Retry-After`` and asks again, at most ``max_waits`` times.
    Connection errors, timeouts and 5xx answers are retried ``retries`` times with backoff.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        budget: int,
        log: QueryLog | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        on_rate_limit: str = "count",
        max_waits: int = 5,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(budget, log)
        if on_rate_limit not in {"count", "wait"}:
            raise ConfigError(f"on_rate_limit must be 'count' or 'wait', got {on_rate_limit!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"target URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.retries = retries
        self.on_rate_limit = on_rate_limit
        self.max_waits = max_waits
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def _post(self, X: np.ndarray) -> httpx.Response:
        payload = {"inputs": X.tolist()}
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(
                    f"{self.url}/v1/predict", json=payload, headers=self._headers
                )
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise OracleError(f"cannot reach {self.url}: {type(exc).__name__}") from None
            else:
                if response.status_code < 500 or attempt == self.retries:
                    return response
            time.sleep(min(2.0, 0.1 * 2**attempt))
        raise OracleError(f"cannot reach {self.url}")  # pragma: no cover - loop always returns

    def _send(self, X: np.ndarray) -> OracleAnswers:
        n = len(X)
        waits = 0
        while True:
            response = self._post(X)
            if response.status_code != 429:
                break
            if self.on_rate_limit == "count" or waits >= self.max_waits:
                return OracleAnswers(np.full(n, -1), None, np.ones(n, dtype=bool))
            waits += 1
            time.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code == 401:
            raise OracleError(f"the API rejected the key (401): {_detail(response)}")
        if response.status_code != 200:
            raise OracleError(f"the API answered {response.status_code}: {_detail(response)}")
        try:
            predictions = response.json()["predictions"]
            labels = np.array([int(p["label"]) for p in predictions])
            probs = [p.get("probabilities") for p in predictions]
        except (ValueError, KeyError, TypeError) as exc:
            raise OracleError(f"unexpected answer from {self.url}: {exc}") from None
        if len(labels) != n:
            raise OracleError(f"asked {n} rows, got {len(labels)} answers")
        probabilities = np.array(probs, dtype=float) if all(p is not None for p in probs) else None
        return OracleAnswers(labels, probabilities, np.zeros(n, dtype=bool))

    def close(self) -> None:
        self._client.close()
