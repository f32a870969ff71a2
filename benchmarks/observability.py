"""Per-request cost of :class:`ObservabilityMiddleware`, in process, around a trivial ASGI app.

The app answers 200 with an empty body; each request is one direct ``await app(scope, ...)``
call (no server, no sockets), so the difference from the bare app is the middleware alone:
metrics only (access log off), then with the access record as text and as JSON, written
by ``log_config``'s handler (serve's: queued, written in batches, no LogRecord) and, as the
baseline, by ``logging.StreamHandler`` (a LogRecord, a format and a write + flush a
request), both to a file in the temp dir. With ``--multiprocess`` the same runs in a child
process with ``PROMETHEUS_MULTIPROC_DIR`` set (values in mmapped files, as in
``serve --workers N``).

``--app`` measures the share of a whole request instead: ``POST /v1/predict`` of one row
through the app ``serve`` builds (defense ``none``, memory state, the default victim), in
process, access log off, then on with either handler; CPU seconds of this process (the
writer thread's included), best of interleaved rounds.

    python benchmarks/observability.py [--requests 20000] [--multiprocess] [--app]
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
from typing import Any


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


def _log_to(log_format: str, path: str, handler_class: str | None) -> None:
    """Apply ``log_config(log_format)`` with the access records going to ``path`` (appended)
    through ``handler_class`` (None: log_config's own), everything else to /dev/null."""
    from modeltheft.service.observability import log_config

    config = log_config(log_format)
    config["handlers"]["default"]["stream"] = open(os.devnull, "w")  # noqa: SIM115
    config["handlers"]["access"]["stream"] = open(path, "a")  # noqa: SIM115
    if handler_class is not None:
        config["handlers"]["access"]["class"] = handler_class
    logging.config.dictConfig(config)


HANDLERS = {"batched": None, "logging.StreamHandler": "logging.StreamHandler"}


def measure(n: int, log_file: str) -> dict[str, float]:
    from modeltheft.service.observability import (
        HttpMetrics,
        ObservabilityMiddleware,
        multiprocess_dir,
    )

    results = {"bare": per_request(trivial, n)}
    results["metrics only (access log off)"] = per_request(
        ObservabilityMiddleware(trivial, HttpMetrics(), access_log=False), n
    )
    for log_format in ("text", "json"):
        for name, handler_class in HANDLERS.items():
            _log_to(log_format, log_file, handler_class)
            middleware = ObservabilityMiddleware(trivial, HttpMetrics(), access_log=True)
            results[f"+ access log ({log_format}, {name})"] = per_request(middleware, n)
    results["multiprocess"] = float(multiprocess_dir() is not None)
    return results


def measure_app(n: int, log_file: str, rounds: int = 15) -> dict[str, float]:
    """CPU seconds per ``POST /v1/predict`` through the whole app (see the module doc)."""
    import json

    from modeltheft.service import Settings, create_app
    from modeltheft.service.auth import KeyRing

    keys = KeyRing.from_pairs({"alice": "alice-benchmark-key"})
    body = json.dumps({"inputs": [[0.5] * 64]}).encode()
    headers = [
        (b"authorization", b"Bearer alice-benchmark-key"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    def app(access_log: bool) -> Any:
        return create_app(Settings(keys=keys, state="memory://", access_log=access_log, seed=0))

    async def post(target: Any) -> None:
        async def body_once() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/predict",
            "raw_path": b"/v1/predict",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "root_path": "",
            "state": {},
        }
        await target(scope, body_once, send)

    async def cpu_per_request(target: Any) -> float:
        start = time.process_time()
        for _ in range(n):
            await post(target)
        return (time.process_time() - start) / n

    off, on = app(False), app(True)
    results: dict[str, list[float]] = {"access log off": []}

    async def run() -> None:
        for _ in range(rounds):
            results["access log off"].append(await cpu_per_request(off))
            for log_format in ("text", "json"):
                for name, handler_class in HANDLERS.items():
                    _log_to(log_format, log_file, handler_class)
                    key = f"access log {log_format}, {name}"
                    results.setdefault(key, []).append(await cpu_per_request(on))

    asyncio.run(run())
    return {name: min(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--multiprocess", action="store_true")
    parser.add_argument("--app", action="store_true", help="the share of a whole request")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.multiprocess and not args.child:
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
            command = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
            subprocess.run(command, env=env, check=True)
        return
    with tempfile.TemporaryDirectory() as folder:
        log_file = os.path.join(folder, "access.log")
        if args.app:
            n = min(args.requests, 1000)
            results = measure_app(n, log_file)
            off = results.pop("access log off")
            print(f"POST /v1/predict through the app, {n} requests a round, best of 15")
            print(f"{'access log off':40s} {off * 1e6:6.1f} µs CPU/request")
            for name, seconds in results.items():
                extra = f"+{(seconds - off) * 1e6:5.1f} µs, {(seconds - off) / off:6.1%}"
                print(f"{name:40s} {seconds * 1e6:6.1f} µs CPU/request  ({extra})")
            return
        results = measure(args.requests, log_file)
    mode = "multiprocess (mmap)" if results.pop("multiprocess") else "single process"
    bare = results["bare"]
    print(f"prometheus_client {mode}, {args.requests} requests, best of 7")
    for name, seconds in results.items():
        extra = "" if name == "bare" else f"  (+{(seconds - bare) * 1e6:5.1f} µs)"
        print(f"{name:40s} {seconds * 1e6:6.1f} µs/request{extra}")


if __name__ == "__main__":
    main()
