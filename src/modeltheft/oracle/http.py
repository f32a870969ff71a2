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
from typing import Any, ClassVar, TypedDict, Unpack

import httpx
import numpy as np

from modeltheft.errors import ConfigError, OracleError
from modeltheft.oracle.answers import OracleAnswers
from modeltheft.oracle.base import Oracle, TransientError
from modeltheft.oracle.classes import class_value
from modeltheft.oracle.log import QueryLog
from modeltheft.registry import InstanceOf, Interval, Options, Satisfies, check_params
from modeltheft.tasks.base import Task, generic_feature_names, unbounded

TRANSIENT = (httpx.TransportError,)
RATE_LIMIT_MODES = ("count", "wait")
HTTP_URL = Satisfies(
    lambda u: isinstance(u, str) and u.startswith(("http://", "https://")),
    "a URL starting with http:// or https://",
)
MODEL_URL_PARTS = ("/v2/models/", "/v1/models/", "/v1/predict", "/v1/model")
"""Pieces of a model's or route's URL that a ``--target`` (a base URL) should not hold."""
NON_EMPTY = Satisfies(lambda s: isinstance(s, str) and bool(s.strip()), "a non-empty string")


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


def checked_answers(
    n: int, labels: Sequence[Any] | None, probabilities: Sequence[Any] | None
) -> list[dict[str, Any]]:
    """Log records for ``n`` answered rows, checked for shape and numbers (not for classes:
    :class:`~modeltheft.oracle.classes.ClassBook` maps them). A record's label None means
    "the top probability". Raises :class:`OracleError` naming what is wrong.
    """
    rows: list[list[float] | None] = [None] * n
    if probabilities is not None:
        if len(probabilities) != n:
            raise OracleError(f"asked {n} rows, got {len(probabilities)} probability rows")
        try:
            probs = np.array(probabilities, dtype=float)
        except (TypeError, ValueError):
            raise OracleError("probabilities are not rows of numbers") from None
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise OracleError(f"probabilities have shape {list(probs.shape)}, expected [{n}, k]")
        if not np.isfinite(probs).all():
            raise OracleError("probabilities contain NaN or infinite values")
        rows = [[float(p) for p in row] for row in probs]
    if labels is None:
        if probabilities is None:
            raise OracleError("the answer holds neither labels nor probabilities")
        values: list[Any] = [None] * n
    else:
        if len(labels) != n:
            raise OracleError(f"asked {n} rows, got {len(labels)} answers")
        values = [class_value(v, i) for i, v in enumerate(labels)]
    return [
        {"label": value, "probabilities": row, "refused": False}
        for value, row in zip(values, rows, strict=True)
    ]


class AnswerRefused(OracleError):
    """The target answered a prediction request with an error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HttpOptions(TypedDict, total=False):
    """Transport options every HTTP oracle takes (see :class:`HttpOracleBase`)."""

    api_key: str | None
    log: QueryLog | None
    task: Task | None
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
    ``api_key``, when given, is sent as ``Authorization: Bearer``. ``task`` is checked against
    what the target says of its model (:meth:`~modeltheft.oracle.base.Oracle.discover`).
    """

    name: ClassVar[str] = "http"
    kind: ClassVar[str] = "protocol"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "url": [HTTP_URL],
        "budget": [Interval(int, 0, None)],
        "api_key": [str, None],
        "log": [InstanceOf(QueryLog), None],
        "task": [InstanceOf(Task), None],
        "timeout": [Interval(float, 0, None, closed="neither")],
        "retries": [Interval(int, 0, None)],
        "on_rate_limit": [Options(*RATE_LIMIT_MODES)],
        "max_waits": [Interval(int, 0, None)],
        "client": [InstanceOf(httpx.Client), None],
        "model_name": [NON_EMPTY],
    }

    def __init__(
        self,
        url: str,
        budget: int,
        *,
        api_key: str | None = None,
        log: QueryLog | None = None,
        task: Task | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        on_rate_limit: str = "count",
        max_waits: int = 5,
        client: httpx.Client | None = None,
    ) -> None:
        params = {"url": url, "budget": budget, "api_key": api_key, "log": log, "task": task}
        params |= {"timeout": timeout, "retries": retries, "on_rate_limit": on_rate_limit}
        params |= {"max_waits": max_waits, "client": client}
        self.check(params)
        super().__init__(budget, log, task)
        self.url = url.rstrip("/")
        self.retries = retries
        self.on_rate_limit = on_rate_limit
        self.max_waits = max_waits
        self.has_api_key = bool(api_key)
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.metadata_failure: str | None = None
        """Why the description endpoint said nothing (method, URL, status, hint), if it did not."""

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """A ConfigError for the first parameter that breaks ``_parameter_constraints``."""
        check_params(params, cls._parameter_constraints, f"protocol {cls.name!r}")

    @property
    def target(self) -> str:
        return self.url

    @abstractmethod
    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        """The URL to POST and the JSON body asking for answers to the rows of ``X``."""

    @abstractmethod
    def _parse(self, body: Any, n: int) -> list[dict[str, Any]]:
        """Records for ``n`` rows from a decoded 200 body (use :func:`checked_answers`)."""

    def _call(self, method: str, url: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        """One request, retried on transport errors and 5xx; the last 5xx response is returned."""
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, url, json=payload, headers=self._headers)
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise OracleError(
                        f"cannot reach {self.url} ({method} {url}: {type(exc).__name__})"
                    ) from None
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

    def _refuse_auth(self, response: httpx.Response) -> None:
        """An :class:`OracleError` for a 401/403 answer."""
        status = response.status_code
        if status not in (401, 403):
            return
        where = f"{response.request.method} {response.request.url}"
        if self.has_api_key:
            raise OracleError(f"{where}: the API rejected the key ({status}): {_detail(response)}")
        raise OracleError(
            f"{where}: the API requires credentials ({status}): {_detail(response)}; "
            "pass an API key"
        )

    def _metadata(self, url: str) -> Any:
        """The JSON a description endpoint answers, or None when it has none (404, not JSON).

        429, 5xx and connection failures are :class:`TransientError` (asked again next time).
        """
        try:
            response = self._call("GET", url)
        except OracleError as exc:
            raise TransientError(str(exc)) from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientError(f"{url} answered {status}: {_detail(response)}")
        self._refuse_auth(response)
        if status != 200:
            self.metadata_failure = self._failure("GET", url, response)
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _records(self, X: np.ndarray) -> list[dict[str, Any]]:
        n = len(X)
        url, payload = self._request(X)
        waits = 0
        while True:
            response = self._call("POST", url, payload)
            if response.status_code != 429:
                break
            if self.on_rate_limit == "count" or waits >= self.max_waits:
                return [{"label": None, "probabilities": None, "refused": True}] * n
            waits += 1
            time.sleep(_retry_after(response))
        self._refuse_auth(response)
        if response.status_code != 200:
            raise AnswerRefused(self._failure("POST", url, response), response.status_code)
        return self._parse(self._json(response), n)

    def _failure(self, method: str, url: str, response: httpx.Response) -> str:
        """The message of an error answer: method, URL, status, the server's words, a hint."""
        status = response.status_code
        text = f"{method} {url} answered {status}: {_detail(response)}"
        hint = self._hint(response)
        return f"{text} ({hint})" if hint else text

    def _hint(self, response: httpx.Response) -> str:
        """What to try after an error answer ('' if nothing useful): 404s suggest a protocol."""
        if response.status_code != 404:
            return ""
        if any(part in self.url for part in MODEL_URL_PARTS):
            return "--target takes the server's base URL (e.g. http://host:port), not a model's URL"
        return self._not_found_hint()

    def _not_found_hint(self) -> str:
        """The hint of a 404 answer for this protocol."""
        return ""

    def _send(self, X: np.ndarray) -> OracleAnswers:
        self.discover()
        return self.book.answers(self._records(X))  # type: ignore[union-attr]

    def close(self) -> None:
        self._client.close()


class NamedModelOracle(HttpOracleBase):
    """An HTTP oracle whose URL names the model (OIP v2, KServe v1)."""

    def __init__(
        self, url: str, model_name: str, budget: int, **options: Unpack[HttpOptions]
    ) -> None:
        self.check({"model_name": model_name})
        super().__init__(url, budget, **options)
        self.model_name = model_name

    @property
    def target(self) -> str:
        return f"model {self.model_name!r} at {self.url}"

    def _not_found_hint(self) -> str:
        others = ", ".join(f"--protocol {p}" for p in ("oip-v2", "kserve-v1", "modeltheft"))
        others = others.replace(f"--protocol {self.name}, ", "").replace(
            f", --protocol {self.name}", ""
        )
        return (
            f"is model {self.model_name!r} served there (--model-name)? is this a "
            f"{self.name} server? else try {others}"
        )


def described_task(name: str, width: int, classes: Sequence[Any] = ()) -> Task:
    """A schema-only task for a target that says only its width (and maybe its classes)."""
    lower, upper = unbounded(width)
    return Task(
        name=name,
        feature_names=generic_feature_names(width),
        lower=lower,
        upper=upper,
        classes=np.asarray(list(classes)),
    )


def _width(shape: Any) -> int | None:
    """Features per row from an ``input_shape`` such as ``[30]``: None if it is not one."""
    if not isinstance(shape, list) or not shape:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        return None
    return math.prod(shape)


class HttpOracle(HttpOracleBase):
    """A client of modeltheft's own API: ``POST /v1/predict`` (``{"inputs": rows}``).

    :meth:`discover` reads ``GET /v1/model``: its ``task`` (a task schema) when the server
    publishes one, else ``input_shape`` and ``classes`` (a schema-only task, unbounded).
    """

    name: ClassVar[str] = "modeltheft"

    def __init__(self, url: str, api_key: str, budget: int, **options: Unpack[HttpOptions]) -> None:
        super().__init__(url, budget, api_key=api_key, **options)

    def _describe(self) -> Task | None:
        info = self._metadata(f"{self.url}/v1/model")
        if not isinstance(info, dict):
            return None
        if isinstance(info.get("task"), dict):
            try:
                return Task.from_schema(info["task"])
            except ConfigError as exc:
                raise OracleError(f"{self.url}/v1/model: {exc}") from None
        width, classes = _width(info.get("input_shape")), info.get("classes")
        if width is None or not isinstance(classes, list):
            raise OracleError(f"{self.url}/v1/model does not say the input shape and classes")
        try:
            return described_task(str(info.get("name") or "remote"), width, classes)
        except ConfigError as exc:
            raise OracleError(f"{self.url}/v1/model: {exc}") from None

    def _missing(self) -> str:
        why = f" ({self.metadata_failure})" if self.metadata_failure else ""
        return f"{self.url} has no /v1/model description{why}: give --task"

    @property
    def probability_hint(self) -> str:
        return (
            "this API sends labels only (its defenses hide the probabilities); "
            "use --label-mode hard"
        )

    def _not_found_hint(self) -> str:
        return (
            "is this a modeltheft API? for an OIP v2 server (MLServer, Triton, KServe) try "
            "--protocol oip-v2 --model-name NAME; for KServe v1, --protocol kserve-v1"
        )

    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        return f"{self.url}/v1/predict", {"inputs": X.tolist()}

    def _parse(self, body: Any, n: int) -> list[dict[str, Any]]:
        try:
            predictions = body["predictions"]
            labels = [p["label"] for p in predictions]
            probs = [p.get("probabilities") for p in predictions]
        except (KeyError, TypeError, AttributeError) as exc:
            raise OracleError(f"unexpected answer from {self.url}: {exc!r}") from None
        complete = all(p is not None for p in probs)
        return checked_answers(n, labels, probs if complete else None)
