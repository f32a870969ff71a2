"""``create_app(settings)``: the prediction service, built from explicit settings.

``app_from_env`` rebuilds the same app inside each worker process of ``serve --workers N``
from the settings the serve command leaves in ``MODELTHEFT_SERVE_SETTINGS`` (no key material:
keys come from ``--keys-file`` or the inherited ``MODELTHEFT_API_KEYS``).
"""

import gc
import inspect
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from threadpoolctl import threadpool_limits

from modeltheft import __version__
from modeltheft.defenses.guarded import GuardedModel, Reply
from modeltheft.defenses.presets import load_pipeline
from modeltheft.errors import ConfigError, ModelTheftError
from modeltheft.service import observability
from modeltheft.service.auth import METRICS_HINT, KeyRing, MetricsKey
from modeltheft.service.errors import install_error_handlers
from modeltheft.service.routes import meta, metrics, oip, predict
from modeltheft.service.settings import IDLE_AFTER, Settings
from modeltheft.service.timeouts import DEFAULT_TIMEOUT, BodyTimeoutMiddleware
from modeltheft.service.upstream import (
    UPSTREAM_KEY_ENV,
    Upstream,
    UpstreamConfig,
    labels_only_warning,
)
from modeltheft.state import MemoryStore, open_store
from modeltheft.state.audit import DEFAULT_RETENTION
from modeltheft.state.breaker import Breaker
from modeltheft.tasks import DEFAULT_TASK
from modeltheft.victim import load_model, train_victim
from modeltheft.victim.fast import fast_model

SETTINGS_ENV = "MODELTHEFT_SERVE_SETTINGS"
DOCS_ASSETS = "/docs-assets"
"""Where the Swagger UI and ReDoc scripts are served from (no CDN)."""
WORKER_START_FAILURE = 3
"""uvicorn's ``STARTUP_FAILURE``: its supervisor stops rather than restart such a worker."""
log = logging.getLogger("modeltheft.service")


NO_NATIVE_TELEMETRY: dict[str, object] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)
"""FastAPI's own OpenTelemetry (0.16x) off: the service's metrics are Prometheus's and its
requests are in the access log, and left on it looks up the global providers on every
request (~3 us, 1% of ``recommended``'s CPU) to find none configured. (OpenTelemetry's own
FastAPI instrumentation adds a middleware of its own, which this leaves alone.)"""


def create_app(settings: Settings, *, create_state: bool = True) -> FastAPI:
    """A FastAPI app serving the configured victim behind the configured defenses.

    The model is any classifier :func:`~modeltheft.victim.load_model` reads (ours, a plain
    skops file, ONNX); its task (``settings.task``, else the metadata's, else the model's own
    schema) shapes the validation, ``/v1/model`` and the OpenAPI schema. Without a model, an
    ``rf`` victim is trained on the task (digits by default). The state store named by
    ``settings.state`` is opened here and closed when the app shuts down (its lifespan);
    ``create_state=False`` refuses a missing SQLite file instead of creating an empty one.
    """
    pipeline = load_pipeline(settings.defense)
    upstream: Upstream | None = None
    if settings.upstream is not None:
        upstream = Upstream(settings.upstream, settings.task)
        model, task = None, upstream.connect()
        name, engine = upstream.describe(), "upstream"
    elif settings.model_path is None:
        trained = train_victim(task=settings.task or DEFAULT_TASK)
        model, task, name = trained.model, trained.task, "rf (trained at start-up)"
    else:
        loaded = load_model(settings.model_path, settings.task)
        model, task = loaded.model, loaded.task
        name = str(loaded.metadata.get("family", settings.model_path.name))
    if model is not None:
        inference = fast_model(model, settings.inference, task=task)
        model, engine = inference.model, inference.engine
    store = open_store(settings.state, create=create_state)
    if settings.seed is not None and isinstance(store, MemoryStore):
        # A seeded, in-memory service (tests, demo, notebook) is reproducible down to its
        # HMAC keys; a real one draws them from the OS and keeps them in its store.
        store = MemoryStore(np.random.default_rng(settings.seed))
    if not isinstance(store, MemoryStore):
        store = Breaker(store)  # type: ignore[assignment]  # an outage: 503 at once, probed
    try:
        guarded = GuardedModel(
            model,
            pipeline,
            store=store,
            seed=settings.seed,
            task=task,
            audit_retention=settings.audit_retention,
            idle_after=settings.idle_after,
        )
    except BaseException:
        store.close()
        raise
    answer = _answerer(guarded, upstream)
    if upstream is not None:
        needs = [stage.name for stage in pipeline.stages if stage.needs_probabilities]
        warning = labels_only_warning(needs, upstream)
        if warning:
            log.warning(warning)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # What start-up built (libraries, the model, the pipeline) lives as long as the
        # worker: frozen, the collector's full scans skip it (measured in-process: a full
        # collection 124 ms before, under 1 ms after; each one stalls every request in flight).
        gc.collect()
        gc.freeze()
        # One BLAS thread: a worker answers one request at a time, and a request's small
        # products (the OOD scorer's 1,257 x 64 for digits) handed to a second thread cost
        # more than they save, its wake-ups and spinning taking a core that the load shares.
        blas = threadpool_limits(limits=1, user_api="blas")
        yield
        blas.restore_original_limits()
        gc.unfreeze()  # an app built again in this process (tests) starts afresh
        if upstream is not None:
            await upstream.aclose()
        store.close()

    # Swagger UI (/docs) and ReDoc (/redoc) from the assets fastapi-offline ships, not a CDN.
    app = FastAPIOffline(
        title="modeltheft prediction service",
        version=__version__,
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        **NO_NATIVE_TELEMETRY,
    )
    app.state.settings = settings
    app.state.keys = settings.keys
    app.state.metrics_key = settings.metrics_key
    if settings.metrics_key is None:
        log.info("GET /metrics is disabled (404): %s", METRICS_HINT)
    app.state.model_name = name
    app.state.oip_name = settings.model_name or oip_name(settings.model_path, upstream)
    app.state.inference = engine
    app.state.store = store
    app.state.guarded = guarded
    app.state.answer = answer
    app.state.upstream = upstream
    app.state.task_schema = guarded.task.schema()
    install_error_handlers(app)
    app.include_router(meta.router)
    # First: its fast path is the innermost middleware.
    predict.install(app, guarded.task, settings.max_batch)
    oip.install(app, guarded.task, settings.max_batch)  # /v2/… and KServe v1's :predict
    app.include_router(metrics.router)
    app.add_middleware(BodyTimeoutMiddleware, timeout=settings.request_timeout)
    # Last, so outermost: it sees the status of every answer, the middlewares' refusals too.
    observability.install(app, access_log=settings.access_log)
    return app


def _answerer(
    guarded: GuardedModel, upstream: Upstream | None
) -> Callable[[str, np.ndarray], Awaitable[Reply]]:
    """What the prediction routes await: the model in process, or the upstream (gateway)."""
    if upstream is None:

        async def local(client: str, X: np.ndarray) -> Reply:
            return await guarded.answer_shared(client, X)

        return local
    labels_only = upstream.labels_only

    async def gateway(client: str, X: np.ndarray) -> Reply:
        return await guarded.answer_async(client, X, upstream.predict, labels_only)

    return gateway


def oip_name(model_path: Path | None, upstream: Upstream | None = None) -> str:
    """The model's name on the OIP v2 and KServe v1 routes: its file's stem made URL-safe
    (``victim.skops``: ``victim``), ``rf`` for the victim trained at start-up, ``model`` for
    a modeltheft upstream (the others have a name)."""
    if upstream is not None:
        return upstream.config.model_name or "model"
    if model_path is None:
        return "rf"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model_path.stem).strip("-.") or "model"


def settings_env(settings: Settings, keys_file: Path | None) -> str:
    """The JSON that :func:`app_from_env` reads: every setting but the keys themselves."""
    return json.dumps(
        {
            "model_path": str(settings.model_path.resolve()) if settings.model_path else None,
            "task": _resolved(settings.task),
            "defense": settings.defense,
            "state": settings.state,
            "max_batch": settings.max_batch,
            "max_body_bytes": settings.max_body_bytes,
            "seed": settings.seed,
            "inference": settings.inference,
            "audit_retention": settings.audit_retention,
            "idle_after": settings.idle_after,
            "request_timeout": settings.request_timeout,
            "access_log": settings.access_log,
            "model_name": settings.model_name,
            "upstream": _upstream_env(settings.upstream),
            "keys_file": str(keys_file.resolve()) if keys_file else None,
        }
    )


def _upstream_env(config: UpstreamConfig | None) -> dict[str, object] | None:
    """The upstream's settings without its key (workers read it from the environment)."""
    if config is None:
        return None
    return {
        "url": config.url,
        "protocol": config.protocol,
        "model_name": config.model_name,
        "timeout": config.timeout,
        "reference": str(config.reference.resolve()) if config.reference else None,
    }


def _upstream_from_env(data: object) -> UpstreamConfig | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("upstream")
    return UpstreamConfig(
        url=str(data["url"]),
        protocol=str(data["protocol"]),
        model_name=None if data.get("model_name") is None else str(data["model_name"]),
        timeout=float(data["timeout"]),
        reference=Path(data["reference"]) if data.get("reference") else None,
        api_key=os.environ.get(UPSTREAM_KEY_ENV) or None,
    )


def _resolved(task: str | None) -> str | None:
    """A task file as an absolute path (the workers must find it); a name as it is."""
    if task is not None and task.endswith(".toml") and Path(task).is_file():
        return str(Path(task).resolve())
    return task


def app_from_env() -> FastAPI:
    """The app described by ``MODELTHEFT_SERVE_SETTINGS`` (a uvicorn factory for workers).

    ``serve`` made the state before starting the workers, so a worker never creates it: a
    state file gone since (deleted while serving) is refused. A worker that cannot start logs
    one line and exits with uvicorn's start-up failure code, which stops the service instead
    of restarting the worker in a loop.
    """
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise ConfigError(f"{SETTINGS_ENV} is not set: start workers with 'modeltheft serve'")
    try:
        data = json.loads(raw)
        keys_file = Path(data["keys_file"]) if data.get("keys_file") else None
        model_path = Path(data["model_path"]) if data.get("model_path") else None
        settings = Settings(
            keys=KeyRing.from_sources(keys_file),
            model_path=model_path,
            task=None if data.get("task") is None else str(data["task"]),
            defense=str(data["defense"]),
            max_batch=int(data["max_batch"]),
            max_body_bytes=int(data["max_body_bytes"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
            state=str(data["state"]),
            inference=str(data.get("inference", "auto")),
            audit_retention=float(data.get("audit_retention", DEFAULT_RETENTION)),
            idle_after=float(data.get("idle_after", IDLE_AFTER)),
            request_timeout=float(data.get("request_timeout", DEFAULT_TIMEOUT)),
            access_log=bool(data.get("access_log", True)),
            metrics_key=MetricsKey.from_env(),  # inherited, like the API keys
            model_name=None if data.get("model_name") is None else str(data["model_name"]),
            upstream=_upstream_from_env(data.get("upstream")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{SETTINGS_ENV} is malformed: {type(exc).__name__}") from None
    except ModelTheftError as exc:  # the keys file gone or changed since serve started
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        raise SystemExit(WORKER_START_FAILURE) from None
    try:
        return create_app(settings, create_state=False)
    except ModelTheftError as exc:
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        raise SystemExit(WORKER_START_FAILURE) from None
