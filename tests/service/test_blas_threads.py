"""A serving worker runs BLAS on one thread: a request's small products handed to a second
thread cost more than they save, and its spinning takes a core the load shares (#14).

Checked in a process of its own: OpenBLAS keeps one thread count for the whole process, and
once the main thread has set it, it ignores the sets of other threads (TestClient's portal
threads run other tests' lifespans), so the state other tests leave behind would decide."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from threadpoolctl import threadpool_info, threadpool_limits
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing

def blas():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

app = create_app(Settings(
    keys=KeyRing.from_pairs({"a": "a-key-0123456789"}), model_path=Path(sys.argv[1]),
    defense="recommended", state="memory://"))
seen = {}

async def serve():  # the lifespan on the main thread, as uvicorn runs it
    async with app.router.lifespan_context(app):
        seen["serving"] = blas()

with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine
    seen["before"] = blas()
    asyncio.run(serve())
    seen["after"] = blas()
print(json.dumps(seen))
"""


def test_a_worker_serves_with_one_blas_thread_and_restores_them(victim_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(victim_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"before": [2], "serving": [1], "after": [2]}
