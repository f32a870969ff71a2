"""Gateway mode: the model another server serves (MLServer, KServe, Triton, a modeltheft API).

``serve --upstream URL`` puts the defenses in front of a model server that already runs.
:meth:`Upstream.connect` (once, at start-up, blocking) reads what the upstream says of its
model with the same oracle the attacks use (OIP v2 metadata, ``/v1/model``; KServe v1 says
nothing, so it needs ``--task`` or ``--reference``), asks it for the answers to the
``--reference`` rows (which become the task's data: the OOD stages' reference rows, and the
classes the upstream answers with) and learns whether it sends probabilities.
:meth:`Upstream.predict` then asks it for each admitted batch on one pooled
``aiohttp.ClientSession``. A failed call never becomes an answer:

- unreachable, connection refused or reset: :class:`~modeltheft.errors.UpstreamError` (502);
- no answer within ``timeout`` seconds: :class:`~modeltheft.errors.UpstreamTimeout` (504);
- an error status, a body that is not JSON, or outputs that do not hold one label or one
  probability row per row (wrong shape, unknown class, NaN, rows that do not sum to 1):
  :class:`~modeltheft.errors.UpstreamError` (502).

Messages to clients name the upstream by protocol and model name; its URL and its own
error text go to the operator's log only (an internal address is not for clients).
"""

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from modeltheft.errors import ConfigError, ModelTheftError, UpstreamError, UpstreamTimeout
from modeltheft.oracle.classes import ClassBook
from modeltheft.oracle.http import HttpOracleBase, described_task
from modeltheft.oracle.oip import OipV2Oracle
from modeltheft.oracle.protocols import PROTOCOLS, make_oracle
from modeltheft.tasks import get_task
from modeltheft.tasks.base import Task, TaskData
from modeltheft.tasks.files import read_rows

log = logging.getLogger("modeltheft.service")

UPSTREAM_KEY_ENV = "MODELTHEFT_UPSTREAM_KEY"
"""An API key the gateway sends upstream as ``Authorization: Bearer`` (never on the CLI)."""
UPSTREAM_PROTOCOLS = tuple(PROTOCOLS)
SUM_TOLERANCE = 1e-3
"""How far a probability row may sum from 1 (float32 outputs of ONNX models sum to 1 ± 1e-6)."""
_BATCH = 256
_UNLIMITED = 10**12


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the upstream is and how to ask it (see ``serve --upstream``)."""

    url: str
    protocol: str = "oip-v2"
    model_name: str | None = None
    timeout: float = 5.0
    reference: Path | None = None
    api_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream must be a URL starting with http://, got {self.url!r}")
        if self.protocol not in UPSTREAM_PROTOCOLS:
            raise ConfigError(
                f"unknown upstream protocol {self.protocol!r}; choose one of "
                f"{', '.join(UPSTREAM_PROTOCOLS)}"
            )
        if self.protocol != "modeltheft" and not self.model_name:
            raise ConfigError(
                f"--upstream-protocol {self.protocol} needs --model-name (the upstream's name "
                "for the model, which the gateway serves under the same name)"
            )
        if self.protocol == "modeltheft" and not self.api_key:
            raise ConfigError(
                f"--upstream-protocol modeltheft needs the upstream's API key in {UPSTREAM_KEY_ENV}"
            )
        if not 0 < self.timeout <= 600:
            raise ConfigError(f"--upstream-timeout must be in (0, 600] seconds, got {self.timeout}")
        if self.reference is not None and (
            self.reference.suffix != ".npy" or not self.reference.is_file()
        ):
            raise ConfigError(f"--reference must be an existing .npy file, got {self.reference}")

    @property
    def label(self) -> str:
        """How messages to clients name the upstream: protocol and model, no address."""
        name = f"model {self.model_name!r}" if self.model_name else "model"
        return f"upstream {name} ({self.protocol})"


class Upstream:
    """The upstream model: its task (from :meth:`connect`) and async answers (:meth:`predict`)."""

    def __init__(self, config: UpstreamConfig, task: str | None = None) -> None:
        self.config = config
        self.given_task = get_task(task) if task is not None else None
        self.labels_only = False
        self.task: Task | None = None
        self._oracle: HttpOracleBase | None = None
        self._book: ClassBook | None = None
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    # --- start-up -------------------------------------------------------------------------

    def connect(self) -> Task:
        """Describe the upstream's model and probe it (blocking); a ConfigError if it cannot.

        The task is ``--task`` (checked against the upstream) or what the upstream says, with
        the ``--reference`` rows and the upstream's labels for them as its data.
        """
        cfg = self.config
        oracle = make_oracle(
            cfg.protocol,
            cfg.url.rstrip("/"),
            budget=_UNLIMITED,
            model_name=cfg.model_name if cfg.protocol != "modeltheft" else None,
            task=self.given_task,
            probabilities=True,
            api_key=cfg.api_key,
            timeout=cfg.timeout,
            retries=2,
        )
        reference = self._reference_rows()
        try:
            if self.given_task is None and reference is not None and cfg.protocol == "kserve-v1":
                oracle.given_task = oracle.task = described_task("upstream", reference.shape[1])
            task = oracle.discover()
            rows = reference if reference is not None else _probe_row(task)
            if rows.shape[1] != task.n_features:
                raise ConfigError(
                    f"--reference rows have {rows.shape[1]} features, {cfg.label} takes "
                    f"{task.n_features}"
                )
            answers = [oracle.query(rows[i : i + _BATCH]) for i in range(0, len(rows), _BATCH)]
            task = oracle.task or task
        except ModelTheftError as exc:
            raise ConfigError(f"cannot use the upstream at {cfg.url}: {exc}") from None
        finally:
            oracle.close()
        if not task.classes_known:
            raise ConfigError(
                f"{cfg.label} does not say its classes and the probe did not show two: give "
                "--task (with its classes) or more --reference rows"
            )
        self.labels_only = any(a.probabilities is None for a in answers)
        if not self.labels_only and isinstance(oracle, OipV2Oracle) and oracle.outputs:
            # Its probability output only (listed first): a label output would make the
            # upstream run the model twice (MLServer: predict and predict_proba), and the
            # defenses answer the top probability's class anyway.
            oracle.outputs = oracle.outputs[:1]
        if reference is not None and (self.given_task is None or self.given_task.data is None):
            labels = np.concatenate([a.labels for a in answers])
            y = np.asarray(task.classes)[labels]
            source = {"reference": str(cfg.reference), "labels": f"answered by {cfg.label}"}
            task = replace(task, data=TaskData(reference, y, reference, y, source=source))
        self.task = task
        self._oracle = oracle
        self._book = ClassBook(np.asarray(task.classes))
        return task

    def _reference_rows(self) -> np.ndarray | None:
        """The ``--reference`` rows, read and checked as a task's NPY data is."""
        path = self.config.reference
        if path is None:
            return None
        try:
            _, rows, _ = read_rows(path, None)
        except ConfigError as exc:
            raise ConfigError(f"--reference {path}: {exc}") from None
        if len(rows) < 2:
            raise ConfigError(f"--reference {path}: need at least 2 rows")
        return rows

    def describe(self) -> str:
        """One line for the start-up banner."""
        cfg = self.config
        what = "labels only" if self.labels_only else "probabilities"
        return f"{cfg.label} at {cfg.url} (sends {what})"

    # --- serving --------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        """The pooled client session (made on first use, inside the serving event loop).

        aiohttp rather than httpx here: measured on this path, an httpx.AsyncClient request
        cost 2.4 ms of CPU, an aiohttp one 0.5 ms (benchmarks/service.py, gateway rows).
        """
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                headers=self._headers,
                # No Accept-Encoding: a compressed answer costs both servers CPU on loopback
                # (MLServer gzips batched answers when asked).
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def predict(self, X: np.ndarray) -> np.ndarray:
        """The upstream's ``(n, k)`` probabilities for ``X`` (one-hot rows if it sends labels
        only); :class:`UpstreamError` or :class:`UpstreamTimeout` if it does not answer."""
        oracle, book = self._oracle, self._book
        if oracle is None or book is None:
            raise UpstreamError(f"{self.config.label} is not connected")
        label = self.config.label
        url, payload = oracle._request(X)
        try:
            async with self.session().post(url, data=orjson.dumps(payload)) as response:
                status = response.status
                content = await response.read()
        except TimeoutError:
            log.warning("upstream %s: no answer within %g s", url, self.config.timeout)
            raise UpstreamTimeout(
                f"{label} did not answer within {self.config.timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            log.warning("upstream %s unreachable: %s", url, type(exc).__name__)
            raise UpstreamError(f"{label} is unreachable ({type(exc).__name__})") from None
        if status != 200:
            log.warning("upstream %s answered %d: %.200r", url, status, content)
            raise UpstreamError(f"{label} answered HTTP {status}")
        try:
            body = orjson.loads(content)
            answers = book.answers(oracle._parse(body, len(X)))
        except (orjson.JSONDecodeError, ModelTheftError) as exc:
            log.warning("upstream %s answered garbage: %.200s", url, exc)
            what = f"a {self.config.protocol} answer with one label or probability row per row"
            raise UpstreamError(f"{label} answered something that is not {what}") from None
        if answers.probabilities is None:
            return np.eye(len(book.classes))[answers.labels]
        return _checked(answers.probabilities, label)


def _checked(probabilities: np.ndarray, label: str) -> np.ndarray:
    """``probabilities`` if every row is a distribution; else :class:`UpstreamError`."""
    p = np.asarray(probabilities, dtype=float)
    if (
        p.min(initial=0.0) < -SUM_TOLERANCE
        or p.max(initial=0.0) > 1 + SUM_TOLERANCE
        or np.abs(p.sum(axis=1) - 1).max(initial=0.0) > SUM_TOLERANCE
    ):
        log.warning("%s answered probability rows that are not distributions", label)
        raise UpstreamError(f"{label} answered probabilities that do not sum to 1")
    return p


def _probe_row(task: Task) -> np.ndarray:
    """One row inside the task's bounds (their midpoint; 0 where a bound is missing, clipped
    into the other): the start-up probe
    that shows whether the upstream sends probabilities."""
    lower, upper = np.asarray(task.lower), np.asarray(task.upper)
    bounded = np.isfinite(lower) & np.isfinite(upper)
    middle = np.where(bounded, lower, 0.0) / 2 + np.where(bounded, upper, 0.0) / 2
    return task.clip(middle.reshape(1, -1))


def labels_only_warning(stages: list[str], upstream: Upstream) -> str | None:
    """The one start-up line for a labels-only upstream and the stages that need probabilities
    (``Stage.needs_probabilities``); None when there is nothing to say."""
    if not upstream.labels_only or not stages:
        return None
    return (
        f"{upstream.config.label} sends labels only: stage(s) {', '.join(stages)} need its "
        "probabilities and act on one-hot answers (clients get labels only)"
    )
