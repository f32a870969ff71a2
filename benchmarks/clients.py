"""CPU per request as active clients' histories grow (issue 14): does a worker keep up?

A worker mirrors each client's detector state (PRADA's records and growing sets, the stream
test's rows) in a cache of a few MiB per stage; a client not held is read back from the store
on its next request. If each active client's state is large, the cache holds only a few of
them and every request pays that read. This benchmark sends ``--requests`` queries in turn
from ``--clients`` keys through ``GuardedModel`` with the `recommended` pipeline and the
default store (SQLite, a fresh file), in process, and reports the CPU per request over each
``--chunk`` of them, with the clients PRADA's cache holds.

Two runs side by side, each in its own process: `after` is this checkout, `before` the code of
``--before`` (exported with `git archive`). Each key's rows are real digits (the ~1,800 of
scikit-learn's set, shuffled: a key meets ~600 distinct ones, then repeats them). The token
bucket's capacity is raised so that a key's history can grow within one run: at
`recommended`'s 1,000 queries an hour, 1,250 queries a key are 75 minutes of a busy client; the
bucket only refuses, its cost per request does not change.

usage: python benchmarks/clients.py [--before REV] [--clients 48] [--requests 60000]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from memory import export

from modeltheft.defenses.clients import MAX_BYTES

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "bench-clients.json"


def child(clients: int, requests: int, chunk: int, folder: str) -> None:
    """Run the load in this process (the code on PYTHONPATH); one JSON line per chunk."""
    import asyncio
    import contextlib
    import time

    import numpy as np

    from modeltheft.defenses.base import StageEnv
    from modeltheft.defenses.guarded import GuardedModel
    from modeltheft.defenses.presets import load_pipeline
    from modeltheft.errors import ModelTheftError
    from modeltheft.state.sqlite import SqliteStore
    from modeltheft.tasks import digits_task
    from modeltheft.victim.fast import fast_model
    from modeltheft.victim.train import train_victim

    task = digits_task()
    trained = train_victim(task=task)
    model = fast_model(trained.model, "auto", task=trained.task).model
    pipeline = load_pipeline("recommended")
    for stage in pipeline.stages:
        if type(stage).__name__ == "TokenBucketRateLimit":
            stage.capacity = 10 * requests  # see the module's docstring
    store = SqliteStore(Path(folder) / "state.db")
    guarded = GuardedModel(model, pipeline, store=store, seed=0, task=trained.task)
    prada = next(s for s in pipeline.stages if type(s).__name__ == "Prada")
    stream = next(s for s in pipeline.stages if type(s).__name__ == "StreamTest")
    X = np.concatenate([task.data.X_train, task.data.X_eval]).astype(float)
    rows = X[np.random.default_rng(0).permutation(len(X))]  # a key meets ~600 distinct digits

    async def send(first: int, n: int) -> None:
        for j in range(first, first + n, 3):  # three requests a turn of the loop, as under load
            await asyncio.gather(
                *[
                    guarded.answer_shared(f"key{i % clients}", rows[i % len(rows)][None])
                    for i in range(j, j + 3)
                ]
            )

    for first in range(0, requests, chunk):
        start = time.process_time()
        asyncio.run(send(first, chunk))
        cpu = (time.process_time() - start) / chunk * 1e3
        held = [len(prada._clients), len(stream._clients)]
        point = {"requests": first + chunk, "cpu_ms": cpu, "held": held}
        print(json.dumps(point), flush=True)

    # One client with full windows (PRADA keeps 5,000-10,000 records): its size in a worker,
    # and the time a worker that does not hold it takes to read it back.
    rng = np.random.default_rng(1)
    for _ in range(12_000):
        row = np.clip(X[rng.integers(len(X))] + rng.integers(-2, 3, X.shape[1]), 0, 16)
        with contextlib.suppress(ModelTheftError):
            guarded.answer("long", row[None])
    fresh = type(prada)()
    fresh.setup(StageEnv(store, trained.task))
    start = time.thread_time()  # CPU time: the two runs share the cores
    fresh._sync(store, "long")
    read_ms = (time.thread_time() - start) * 1e3
    full = {"kb": prada._clients["long"].nbytes / 1024, "read_ms": read_ms}
    print(json.dumps({"full": full}), flush=True)


def run(src: Path, args: argparse.Namespace, workdir: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    folder = workdir / f"run-{name}"
    folder.mkdir()
    command = [
        sys.executable, __file__, "--child", str(args.clients), str(args.requests),
        str(args.chunk), str(folder),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=folder)


def held(point: dict) -> str:
    """The clients the two stages' caches held at a point (older runs: PRADA's only)."""
    value = point["held"]
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def report(
    runs: dict[str, list[dict]], fulls: dict[str, dict], args: argparse.Namespace, before: str
) -> str:
    after = runs["after"]
    old = {p["requests"]: p for p in runs.get("before", [])}
    base = after[1]["cpu_ms"] if len(after) > 1 else after[0]["cpu_ms"]
    per_key = args.requests // args.clients
    lines = [
        "## Active clients with long histories (`benchmarks/clients.py`)",
        "",
        f"{args.requests:,} requests in turn from {args.clients} keys through `GuardedModel` "
        "with `recommended` and the default store (SQLite), in process, three requests a turn "
        "of the event loop; CPU per request over each chunk of "
        f"{args.chunk:,}. Rows are real digits (a key meets ~600 distinct ones, then repeats "
        "them), so the detectors' state grows with each key's history "
        f"({per_key:,} queries a key by the end: {per_key * 60 / 1000:.0f} minutes of a client "
        "at `recommended`'s refill rate of 1,000 an hour; the bucket's capacity is raised "
        f"for the run). `before` is `{before}`, `after` this checkout, side by side.",
        "",
        "| requests | queries a key | CPU/request before | CPU/request after | "
        "clients held before (PRADA, stream test) | after |",
        "|---|---|---|---|---|---|",
    ]
    for p in after:
        b = old.get(p["requests"])
        lines.append(
            f"| {p['requests']:,} | {p['requests'] // args.clients:,} | "
            + (f"{b['cpu_ms']:.3f} ms | " if b else "— | ")
            + f"{p['cpu_ms']:.3f} ms | "
            + (f"{held(b)} | " if b else "— | ")
            + f"{held(p)} |"
        )
    late = [p["cpu_ms"] for p in after[len(after) // 2 :]]
    lines += [
        "",
        f"After: the second half's CPU per request is {max(late) / base:.2f}× at most of the "
        "second chunk's (the first pays the clients' first requests).",
    ]
    if old:
        points = runs["before"]
        late_before = [p["cpu_ms"] for p in points[len(points) // 2 :]]
        early = points[min(1, len(points) - 1)]["cpu_ms"]
        lines[-1] += f" Before: {max(late_before) / early:.2f}×."
    full = "; ".join(
        f"{name}: {fulls[name]['kb']:,.0f} KB, read back in {fulls[name]['read_ms']:.1f} ms of "
        f"CPU ({MAX_BYTES / 1024 / fulls[name]['kb']:.0f} such clients fit in a stage's "
        f"{MAX_BYTES // 2**20} MiB)"
        for name in ("before", "after")
        if fulls.get(name)
    )
    lines += [
        "",
        "A client with full windows (12,000 queries of noisy digits, so PRADA keeps 5,000-"
        f"10,000 records and its growing sets keep growing), PRADA's state in a worker: {full}. "
        "With more such clients active at once than fit, a request of a client not held pays "
        "that read.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="git revision to compare with")
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--no-doc", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {}
    fulls: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        procs = {"after": run(ROOT / "src", args, workdir, "after")}
        if args.before:
            procs["before"] = run(export(args.before, workdir), args, workdir, "before")
        for name, proc in procs.items():
            out, _ = proc.communicate()
            if proc.returncode:
                sys.exit(f"the {name} run failed (exit code {proc.returncode})")
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            runs[name] = [line for line in lines if "full" not in line]
            fulls[name] = next((line["full"] for line in lines if "full" in line), {})
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"before": args.before, "runs": runs, "full": fulls}, indent=1))
    body = report(runs, fulls, args, args.before or "—")
    print(body)
    if not args.no_doc:
        write_section("clients", body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
