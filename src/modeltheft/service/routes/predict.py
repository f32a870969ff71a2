"""``POST /v1/predict``: answers for a batch of rows, through the defense pipeline.

The handler is one coroutine with no FastAPI dependencies or body model: it authenticates,
reads the body within its limit, parses it (:mod:`modeltheft.service.inputs`) and answers on
the event loop. It is registered as a FastAPI route (so the OpenAPI document describes the
body, the answers and the errors), and :class:`PredictFastPath`, the innermost middleware,
hands ``POST /v1/predict`` to it directly: past the metrics and timeout middlewares but not
through Starlette's exception middleware, FastAPI's exit stack, the router and the endpoint
wrapper (~40 µs a request under load). Its exceptions get the same answers
(:func:`~modeltheft.service.errors.error_response`).
"""

from collections.abc import Awaitable, Callable

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPBearer
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from modeltheft.errors import InputError
from modeltheft.service.deps import authenticate, read_body
from modeltheft.service.errors import error_response
from modeltheft.service.inputs import InputRules, parse_inputs
from modeltheft.service.schemas import ErrorBody, response_model
from modeltheft.tasks import Task

PATH = "/v1/predict"
ERRORS = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "missing or unknown API key",
        403: "this API key was blocked by an extraction detector",
        408: "the request head or body did not arrive within the server's request timeout",
        413: "body or batch too large",
        422: "malformed input, a row of the wrong width or a value outside its feature's "
        "bounds; the message names the problem",
        429: "refused by the rate limit; see Retry-After and the RateLimit headers",
        503: "the state store is unavailable; nothing was answered; see Retry-After",
    }.items()
}
# Documents the scheme in OpenAPI; the handler itself authenticates (401, never 403).
BEARER = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


def install(app: FastAPI, task: Task, max_batch: int) -> None:
    """Add the predict route to ``app``, for ``task``'s rows in batches of ``max_batch``."""
    router = APIRouter()
    rules = InputRules.for_task(task, max_batch)
    body_schema = {
        "required": True,
        "content": {"application/json": {"schema": rules.body.model_json_schema()}},
    }

    async def predict(request: Request) -> Response:
        """Answer each row in input order; every row counts as one query of the client."""
        state = request.app.state
        client = authenticate(request)
        body = await read_body(request, state.settings.max_body_bytes)
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise InputError(f"Content-Type must be application/json, got {media_type or 'none'!r}")
        X = parse_inputs(body, rules)
        reply = await state.answer(client, X)
        answers = reply.answers
        labels = reply.labels.tolist()
        if answers.expose_probabilities:
            rows = answers.probabilities.tolist()
            predictions = [
                {"label": label, "probabilities": row}
                for label, row in zip(labels, rows, strict=True)
            ]
        else:
            predictions = [{"label": label, "probabilities": None} for label in labels]
        request.state.rows = len(labels)
        request.state.altered = answers.altered
        return Response(
            orjson.dumps({"predictions": predictions}),
            media_type="application/json",
            headers=reply.headers,
        )

    router.add_api_route(
        PATH,
        predict,
        methods=["POST"],
        response_model=response_model(task),
        responses=ERRORS,
        dependencies=[Depends(BEARER)],
        summary=f"Predict the class of rows of {task.n_features} features "
        f"(classes {_shown(task.classes.tolist())}; probabilities unless the defenses "
        "withhold them)",
        openapi_extra={"requestBody": body_schema},
    )
    app.include_router(router)
    app.add_middleware(PredictFastPath, handler=predict, route=router.routes[-1])


def _shown(classes: list[object], limit: int = 10) -> str:
    head = ", ".join(str(c) for c in classes[:limit])
    return head + (f", … ({len(classes)} in all)" if len(classes) > limit else "")


class PredictFastPath:
    """Pure ASGI: ``POST /v1/predict`` (or ``path``) straight to its handler; else to the app.

    Add it before any other middleware (so it is the innermost). It sets ``scope["route"]``
    as FastAPI's router would, for the route label of the metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        handler: Callable[[Request], Awaitable[Response]],
        route: BaseRoute,
        path: str = PATH,
    ) -> None:
        self.app = app
        self.handler = handler
        self.route = route
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            response = await self.handler(request)
        except Exception as exc:
            response = await error_response(request, exc)
        await response(scope, receive, send)
