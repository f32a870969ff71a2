"""Per-request cost of :class:`ObservabilityMiddleware`, in process, around a trivial ASGI app.

The app answers 200 with an empty body; each request is one direct ``await app(scope, ...)``
call (no server, no sockets), so the difference from the bare app is the middleware alone:
metrics only (access log off), then with the access record formatted as text and as JSON
by the handler of ``log_config`` writing to ``/dev/null``. With ``--multiprocess`` the same
runs in a child process with ``PROMETHEUS_MULTIPROC_DIR`` set (values in mmapped files, as
in ``serve --workers N``).

    python benchmarks/observability.py [--requests 20000] [--multiprocess]
"""

import argparse
import asyncio
import logging
import logging.config
import os
import subprocess
import sys
import tempfile
import time


async def trivial(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict) -> None:
    return None


def per_request(app, n: int, repeats: int = 7) -> float:
    """Best-of-``repeats`` mean seconds per request."""

    async def run() -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                scope = {"type": "http", "method": "GET", "path": "/x", "state": {}}
                await app(scope, receive, send)
            best = min(best, (time.perf_counter() - start) / n)
        return best

    return asyncio.run(run())


def measure(n: int) -> dict[str, float]:
    from modeltheft.service.observability import (
        HttpMetrics,
        ObservabilityMiddleware,
        log_config,
        multiprocess_dir,
    )

    results = {"bare": per_request(trivial, n)}
    results["metrics only (access log off)"] = per_request(
        ObservabilityMiddleware(trivial, HttpMetrics(), access_log=False), n
    )
    for log_format in ("text", "json"):
        config = log_config(log_format)
        config["handlers"]["default"]["stream"] = open(os.devnull, "w")  # noqa: SIM115
        logging.config.dictConfig(config)
        middleware = ObservabilityMiddleware(trivial, HttpMetrics(), access_log=True)
        results[f"metrics + access log ({log_format})"] = per_request(middleware, n)
    results["multiprocess"] = float(multiprocess_dir() is not None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--multiprocess", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.multiprocess and not args.child:
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
            command = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
            subprocess.run(command, env=env, check=True)
        return
    results = measure(args.requests)
    mode = "multiprocess (mmap)" if results.pop("multiprocess") else "single process"
    bare = results["bare"]
    print(f"prometheus_client {mode}, {args.requests} requests, best of 7")
    for name, seconds in results.items():
        extra = "" if name == "bare" else f"  (+{(seconds - bare) * 1e6:5.1f} µs)"
        print(f"{name:34s} {seconds * 1e6:6.1f} µs/request{extra}")


if __name__ == "__main__":
    main()
