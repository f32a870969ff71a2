"""A serving worker runs BLAS on one thread: a request's small products handed to a second
thread cost more than they save, and its spinning takes a core the load shares (#14)."""

import asyncio
from collections.abc import Callable

from fastapi import FastAPI
from threadpoolctl import threadpool_info, threadpool_limits


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_a_worker_serves_with_one_blas_thread_and_restores_them(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app("recommended", state="memory://")
    seen: list[set[int]] = []

    async def serve() -> None:  # the lifespan on the main thread, as uvicorn runs it
        async with app.router.lifespan_context(app):
            seen.append(_blas_threads())

    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine
        assert _blas_threads() == {2}
        asyncio.run(serve())
        assert seen == [{1}]
        assert _blas_threads() == {2}  # restored at shutdown: an app built again starts afresh
