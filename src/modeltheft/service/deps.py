"""Request dependencies: the guarded model, the caller's identity, the body within its limit."""

from typing import Annotated

from fastapi import Depends, Request

from modeltheft.defenses.guarded import GuardedModel
from modeltheft.errors import AuthError, PayloadTooLarge
from modeltheft.service.auth import KeyRing

# Dependencies are async: FastAPI runs a plain ``def`` dependency in its threadpool, and each
# such hop cost more than the dependency itself (benchmarks/service.py).


async def get_guarded(request: Request) -> GuardedModel:
    """The victim behind its defense pipeline."""
    return request.app.state.guarded


def authenticate(request: Request) -> str:
    """The client name of a valid ``Authorization: Bearer <key>`` header; else 401.

    The name (never the key) is left in ``request.state.client`` for the access log.
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
    request.state.client = client
    return client


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 as soon as it (or its declared length) passes ``limit``."""
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


Guarded = Annotated[GuardedModel, Depends(get_guarded)]
