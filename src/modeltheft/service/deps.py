"""Request dependencies: the guarded model, the caller's identity, the validated body."""

from typing import Annotated

import numpy as np
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from modeltheft.defenses.guarded import GuardedModel
from modeltheft.errors import AuthError, InputError, PayloadTooLarge
from modeltheft.service.auth import KeyRing
from modeltheft.service.settings import Settings

# Dependencies are async: FastAPI runs a plain ``def`` dependency in its threadpool, and each
# such hop cost more than the dependency itself (benchmarks/service.py).


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    return request.app.state.settings


async def get_guarded(request: Request) -> GuardedModel:
    """The victim behind its defense pipeline."""
    return request.app.state.guarded


async def require_client(request: Request) -> str:
    """The client name of a valid ``Authorization: Bearer <key>`` header; else 401.

    Checking a key hashes it once per configured key (about 0.4 µs each): cheap enough for
    the event loop with the dozens of keys a service has.
    """
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("missing Authorization header (expected 'Bearer <api key>')")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <api key>'")
    keys: KeyRing = request.app.state.keys
    client = keys.verify(token.strip())
    if client is None:
        raise AuthError("unknown API key")
    return client


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(error: dict) -> str:
    loc = error.get("loc", ())
    where = "".join(
        f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc)
    )
    message = error.get("msg", "invalid value")
    if error.get("type") == "json_invalid":
        return f"invalid JSON: {error.get('ctx', {}).get('error', message)}"
    if error.get("type") == "model_type":
        return 'body must be a JSON object {"inputs": [[64 numbers], ...]}'
    return f"{where}: {message}" if where else message


async def predict_inputs(
    request: Request, settings: Annotated[Settings, Depends(get_settings)]
) -> np.ndarray:
    """The request's rows as an ``(n, 64)`` float array, or a 413/422 naming the problem."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await _read_limited(request, settings.max_body_bytes)
    if media_type != "application/json":
        raise InputError(f"Content-Type must be application/json, got {media_type or 'none'!r}")
    model: type[BaseModel] = request.app.state.request_model
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        for error in errors:
            if error.get("type") == "too_long" and tuple(error.get("loc", ())) == ("inputs",):
                raise PayloadTooLarge(
                    f"batch has more than {settings.max_batch} rows (the limit of this server)"
                ) from None
        shown = "; ".join(_describe(e) for e in errors[:3])
        more = f" (and {len(errors) - 3} more problems)" if len(errors) > 3 else ""
        raise InputError(shown + more) from None
    return np.asarray(parsed.inputs, dtype=float)


Client = Annotated[str, Depends(require_client)]
Inputs = Annotated[np.ndarray, Depends(predict_inputs)]
Guarded = Annotated[GuardedModel, Depends(get_guarded)]
