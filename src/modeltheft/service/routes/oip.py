"""The Open Inference Protocol v2 front door (and KServe v1's ``:predict``), beside /v1/predict.

Clients built for the standard (``tritonclient[http]``, KServe's REST client, the OIP oracle)
use the served model under its name (``app.state.oip_name``):

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (and KServe v1's ``GET /``): no key,
  like ``/healthz`` (ready pings the state store: 503 while it cannot be written); ``GET
  /v2``: the server's metadata;
- ``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``: the model's metadata and
  readiness, without a key (see :func:`model_metadata` for why);
- ``POST /v2/models/{name}/infer``: the Bearer key and the same defense pipeline, audit,
  alerts, rate limits and metrics as ``/v1/predict``. Outputs as MLServer's scikit-learn
  runtime names them: ``predict`` (the labels, ``[n, 1]``, INT64 or BYTES for string classes)
  and ``predict_proba`` (FP64 ``[n, k]``); without ``outputs`` in the request, ``predict``
  only, as MLServer answers. Both are the defended answers. When the defenses withhold
  probabilities (``hard_label``) the metadata does not list ``predict_proba`` and asking for
  it is a 422 before anything is answered or counted (a stage that withholds them for one
  answer only would make the answer leave ``predict_proba`` out);
- ``POST /v1/models/{name}:predict`` (KServe v1): ``{"instances": rows}`` →
  ``{"predictions": labels}``, as KServe's scikit-learn server answers by default.

Errors on these routes have OIP's body ``{"error": "..."}`` (:mod:`~modeltheft.service.errors`)
with the same statuses as ``/v1/predict``; a wrong model name is a 404 naming the served one.
"""

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel

from modeltheft import __version__
from modeltheft.errors import InputError
from modeltheft.service.deps import Guarded, authenticate, read_body
from modeltheft.service.inputs import InputRules
from modeltheft.service.oip_inputs import (
    INPUT_NAME,
    LABEL_OUTPUT,
    PROBA_OUTPUT,
    parse_infer,
    parse_instances,
)
from modeltheft.service.routes.predict import BEARER, ERRORS, PredictFastPath
from modeltheft.tasks import Task

HIDES_PROBABILITIES = frozenset({"hard_label"})
"""Stages after which no probability leaves the service."""
MEDIA_TYPES = ("", "application/json", "application/octet-stream")


class OipError(BaseModel):
    """Every error of the OIP v2 and KServe v1 routes."""

    error: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``codes`` with OIP's error body."""
    text = {
        **{code: spec["description"] for code, spec in ERRORS.items()},
        404: "no model of that name (the message names the served one)",
        503: "the state store is unavailable; see Retry-After",
    }
    return {code: {"model": OipError, "description": text[code]} for code in codes}


def _json(content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), media_type="application/json", headers=headers)


def _check_name(request: Request, name: str) -> None:
    served = request.app.state.oip_name
    if name != served:
        raise HTTPException(404, f"model {name!r} not found; this server serves {served!r}")


def _label_datatype(classes: np.ndarray) -> str:
    kind = classes.dtype.kind
    return "INT64" if kind in "iub" else "FP64" if kind == "f" else "BYTES"


def _labels(labels: np.ndarray) -> list[Any]:
    return labels.tolist() if labels.dtype.kind in "iubf" else [str(v) for v in labels]


def _media_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise InputError(f"Content-Type must be application/json, got {media_type!r}")


def install(app: FastAPI, task: Task, max_batch: int) -> None:
    """Add the OIP v2 and KServe v1 routes of ``task``'s model (named ``app.state.oip_name``)."""
    router = APIRouter()
    rules = InputRules.for_task(task, max_batch)
    name = app.state.oip_name
    label_datatype = _label_datatype(np.asarray(task.classes))
    hides = bool(HIDES_PROBABILITIES & set(app.state.guarded.pipeline.stage_names)) or bool(
        app.state.upstream is not None and app.state.upstream.labels_only
    )
    outputs = [{"name": LABEL_OUTPUT, "datatype": label_datatype, "shape": [-1, 1]}]
    if not hides:
        outputs.append({"name": PROBA_OUTPUT, "datatype": "FP64", "shape": [-1, task.n_classes]})
    metadata = {
        "name": name,
        "versions": [],
        "platform": "modeltheft",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, task.n_features]}],
        "outputs": outputs,
    }

    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        """Live while the process answers (no key)."""
        return {"live": True}

    @router.get("/", include_in_schema=False)
    async def kserve_live() -> dict[str, str]:
        """KServe v1's liveness (its REST client asks ``GET /``), no key."""
        return {"status": "alive"}

    @router.get("/v2/health/ready", responses=_errors(503))
    def ready(guarded: Guarded) -> dict[str, bool]:
        """Ready while the state store can be written (no key); else 503, as ``/healthz``."""
        guarded.store.ping()
        return {"ready": True}

    @router.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        """The server's name, version and protocol extensions (none)."""
        return {"name": "modeltheft", "version": __version__, "extensions": []}

    @router.get("/v2/models/{name}", responses=_errors(404))
    async def model_metadata(request: Request, name: str) -> Response:
        """The model's input (``[-1, width]``, FP64; FP32 is accepted too) and outputs.

        No key, as MLServer's and as ``GET /v1/model``: it says only what a keyed client
        learns from one answer anyway (the width, the number of classes, whether
        probabilities are sent), and OIP clients read it before their first request.
        """
        _check_name(request, name)
        return _json(metadata)

    @router.get("/v2/models/{name}/ready", responses=_errors(404, 503))
    def model_ready(request: Request, name: str, guarded: Guarded) -> dict[str, Any]:
        """Ready with the service (no key): 404 for another name, 503 without the store."""
        _check_name(request, name)
        guarded.store.ping()
        return {"name": name, "ready": True}

    async def client_and_body(request: Request) -> tuple[str, bytes]:
        """An inference request's client (its key checked), for this model, and its body."""
        client = authenticate(request)
        _check_name(request, request.path_params.get("name", name))
        _media_type(request)
        return client, await read_body(request, request.app.state.settings.max_body_bytes)

    async def infer(request: Request) -> Response:
        """Answer each row through the defenses; every row counts as one query of the client."""
        state = request.app.state
        client, body = await client_and_body(request)
        parsed = parse_infer(body, request.headers.get("inference-header-content-length"), rules)
        if hides and PROBA_OUTPUT in parsed.outputs:
            raise InputError(
                "this server withholds probabilities (a defense or its upstream sends labels "
                f"only): ask for the output {LABEL_OUTPUT!r} only"
            )
        reply = await state.answer(client, parsed.rows)
        answers = reply.answers
        n = len(parsed.rows)
        tensors = []
        for output in parsed.outputs:
            if output == LABEL_OUTPUT:
                data = _labels(reply.labels)
                tensors.append(
                    {"name": output, "datatype": label_datatype, "shape": [n, 1], "data": data}
                )
            elif answers.expose_probabilities:  # else omitted: a stage withheld them
                probabilities = answers.probabilities
                tensors.append(
                    {
                        "name": output,
                        "datatype": "FP64",
                        "shape": list(probabilities.shape),
                        "data": probabilities.ravel().tolist(),
                    }
                )
        request.state.rows = n
        request.state.altered = answers.altered
        content: dict[str, Any] = {"model_name": name}
        if parsed.id is not None:
            content["id"] = parsed.id
        content["outputs"] = tensors
        return _json(content, reply.headers)

    async def kserve_predict(request: Request) -> Response:
        """KServe v1: the defended labels of ``{"instances": rows}``, one query a row."""
        state = request.app.state
        client, body = await client_and_body(request)
        rows = parse_instances(body, rules)
        reply = await state.answer(client, rows)
        request.state.rows = len(rows)
        request.state.altered = reply.answers.altered
        return _json({"predictions": _labels(reply.labels)}, reply.headers)

    @router.get("/v1/models/{name}", responses=_errors(404, 503))
    def kserve_ready(request: Request, name: str, guarded: Guarded) -> dict[str, Any]:
        """KServe v1 model status (no key)."""
        _check_name(request, name)
        guarded.store.ping()
        return {"name": name, "ready": True}

    common: dict[str, Any] = {
        "methods": ["POST"],
        "responses": _errors(*ERRORS, 404),
        "dependencies": [Depends(BEARER)],
    }
    infer_path = "/v2/models/{name}/infer"
    kserve_path = "/v1/models/{name}:predict"
    router.add_api_route(infer_path, infer, summary="OIP v2 inference", **common)
    router.add_api_route(kserve_path, kserve_predict, summary="KServe v1 prediction", **common)
    app.include_router(router)
    routes = {route.path: route for route in router.routes}  # type: ignore[attr-defined]
    for path, handler in ((infer_path, infer), (kserve_path, kserve_predict)):
        app.add_middleware(
            PredictFastPath,
            handler=handler,
            route=routes[path],
            path=path.replace("{name}", name),
        )
