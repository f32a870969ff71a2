"""HTTP oracles: the shared transport (:class:`HttpOracleBase`) and modeltheft's own API.

``HttpOracleBase`` owns what every prediction-API client needs: bounded retries with backoff,
429 handling (count the rows as refused, or wait out ``Retry-After``), clear errors for 401/403,
error bodies and undecodable JSON, and validation of the labels and probabilities that come back.
A protocol only says how to build a request (``_request``) and how to read its answer
(``_parse``).
"""

import email.utils
import math
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

import httpx
import numpy as np

from modeltheft.errors import ConfigError, OracleError
from modeltheft.oracle.base import Oracle, OracleAnswers
from modeltheft.oracle.log import QueryLog

TRANSIENT = (httpx.TransportError,)
RATE_LIMIT_MODES = ("count", "wait")


def _detail(response: httpx.Response) -> str:
    """The server's error message: ``{"detail": ...}``, ``{"error": ...}`` or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        for key in ("error", "detail"):
            if key in body:
                return str(body[key])[:200]
    return str(body)[:200]


def _retry_after(response: httpx.Response, default: float = 1.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else default


def _label(value: Any, row: int, n_classes: int) -> int:
    """A class index from a JSON label (an int, or a float equal to an int)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OracleError(f"label {value!r} of row {row} is not an integer class index")
    if isinstance(value, float) and not value.is_integer():
        raise OracleError(f"label {value!r} of row {row} is not an integer class index")
    label = int(value)
    if not 0 <= label < n_classes:
        raise OracleError(f"label {label} of row {row} is outside the classes 0..{n_classes - 1}")
    return label


def checked_answers(
    n: int,
    n_classes: int,
    labels: Sequence[Any] | None,
    probabilities: Sequence[Any] | None,
) -> OracleAnswers:
    """Validated answers for ``n`` rows; labels default to the argmax of the probabilities.

    Labels must be integers in ``0..n_classes-1``; probabilities must be ``n`` finite rows of
    ``n_classes`` numbers. Raises :class:`OracleError` naming what is wrong.
    """
    probs: np.ndarray | None = None
    if probabilities is not None:
        if len(probabilities) != n:
            raise OracleError(f"asked {n} rows, got {len(probabilities)} probability rows")
        try:
            probs = np.array(probabilities, dtype=float)
        except (TypeError, ValueError):
            raise OracleError("probabilities are not rows of numbers") from None
        if probs.shape != (n, n_classes):
            raise OracleError(
                f"probabilities have shape {list(probs.shape)}, expected [{n}, {n_classes}]"
            )
        if not np.isfinite(probs).all():
            raise OracleError("probabilities contain NaN or infinite values")
    if labels is None:
        if probs is None:
            raise OracleError("the answer holds neither labels nor probabilities")
        out = np.argmax(probs, axis=1).astype(int)
    else:
        if len(labels) != n:
            raise OracleError(f"asked {n} rows, got {len(labels)} answers")
        out = np.array([_label(v, i, n_classes) for i, v in enumerate(labels)], dtype=int)
    return OracleAnswers(out, probs, np.zeros(n, dtype=bool))


class HttpOptions(TypedDict, total=False):
    """Transport options every HTTP oracle takes (see :class:`HttpOracleBase`)."""

    api_key: str | None
    log: QueryLog | None
    timeout: float
    retries: int
    on_rate_limit: str
    max_waits: int
    client: httpx.Client | None


class HttpOracleBase(Oracle):
    """One HTTP request per batch, with the transport rules every protocol shares.

    ``on_rate_limit``: ``"count"`` records a 429'd batch as refused (the rows were paid for);
    ``"wait"`` sleeps for ``Retry-After`` and asks again, at most ``max_waits`` times, then counts.
    Connection errors, timeouts and 5xx answers are retried ``retries`` times with backoff.
    ``api_key``, when given, is sent as ``Authorization: Bearer``.
    """

    def __init__(
        self,
        url: str,
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
        super().__init__(budget, log)
        if on_rate_limit not in RATE_LIMIT_MODES:
            raise ConfigError(f"on_rate_limit must be 'count' or 'wait', got {on_rate_limit!r}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"target URL must start with http:// or https://, got {url!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
        if not isinstance(max_waits, int) or max_waits < 0:
            raise ConfigError(f"max_waits must be an integer >= 0, got {max_waits!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.retries = retries
        self.on_rate_limit = on_rate_limit
        self.max_waits = max_waits
        self.has_api_key = bool(api_key)
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @abstractmethod
    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        """The URL to POST and the JSON body asking for answers to the rows of ``X``."""

    @abstractmethod
    def _parse(self, body: Any, n: int) -> OracleAnswers:
        """Answers for ``n`` rows from a decoded 200 response body (use :func:`checked_answers`)."""

    def _call(self, method: str, url: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        """One request, retried on transport errors and 5xx; the last 5xx response is returned."""
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, url, json=payload, headers=self._headers)
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise OracleError(f"cannot reach {self.url}: {type(exc).__name__}") from None
            else:
                if response.status_code < 500 or attempt == self.retries:
                    return response
            time.sleep(min(2.0, 0.1 * 2**attempt))
        raise OracleError(f"cannot reach {self.url}")  # pragma: no cover - loop always returns

    def _json(self, response: httpx.Response) -> Any:
        """The decoded body of a response, or :class:`OracleError`."""
        try:
            return response.json()
        except ValueError:
            raise OracleError(
                f"{self.url} answered {response.status_code} with a body that is not JSON: "
                f"{response.text[:100]!r}"
            ) from None

    def _send(self, X: np.ndarray) -> OracleAnswers:
        n = len(X)
        url, payload = self._request(X)
        waits = 0
        while True:
            response = self._call("POST", url, payload)
            if response.status_code != 429:
                break
            if self.on_rate_limit == "count" or waits >= self.max_waits:
                return OracleAnswers(np.full(n, -1), None, np.ones(n, dtype=bool))
            waits += 1
            time.sleep(_retry_after(response))
        status = response.status_code
        if status in (401, 403):
            if self.has_api_key:
                raise OracleError(f"the API rejected the key ({status}): {_detail(response)}")
            raise OracleError(
                f"the API requires credentials ({status}): {_detail(response)}; pass an API key"
            )
        if status != 200:
            raise OracleError(f"the API answered {status}: {_detail(response)}")
        return self._parse(self._json(response), n)

    def close(self) -> None:
        self._client.close()


class NamedModelOracle(HttpOracleBase):
    """An HTTP oracle whose URL names the model (OIP v2, KServe v1)."""

    def __init__(
        self, url: str, model_name: str, budget: int, **options: Unpack[HttpOptions]
    ) -> None:
        super().__init__(url, budget, **options)
        if not isinstance(model_name, str) or not model_name.strip():
            raise ConfigError(f"model name must be a non-empty string, got {model_name!r}")
        self.model_name = model_name


class HttpOracle(HttpOracleBase):
    """A client of modeltheft's own ``POST /v1/predict`` API (``{"inputs": rows}``)."""

    def __init__(self, url: str, api_key: str, budget: int, **options: Unpack[HttpOptions]) -> None:
        super().__init__(url, budget, api_key=api_key, **options)

    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        return f"{self.url}/v1/predict", {"inputs": X.tolist()}

    def _parse(self, body: Any, n: int) -> OracleAnswers:
        try:
            predictions = body["predictions"]
            labels = [p["label"] for p in predictions]
            probs = [p.get("probabilities") for p in predictions]
        except (KeyError, TypeError, AttributeError) as exc:
            raise OracleError(f"unexpected answer from {self.url}: {exc!r}") from None
        complete = all(p is not None for p in probs)
        return checked_answers(n, self.n_classes, labels, probs if complete else None)
