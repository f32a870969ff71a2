"""Requests/s and latency of the prediction service under a real load generator (wrk).

One run, side by side on loopback, one uvicorn worker each:

- ``trivial``: FastAPI alone (parse the body, answer a constant label),
- ``bare sklearn``: FastAPI + scikit-learn ``predict_proba`` on the same victim,
- the service (``modeltheft serve``, its defaults: access log, audit log and metrics on)
  with the ``none``, ``lab`` and ``recommended`` presets, plus ``recommended`` with
  ``--no-access-log``, and ``recommended`` through the Open Inference Protocol v2 front door
  (``POST /v2/models/victim/infer``, one FP64 row per request).

Every request is one real test digit (``digits_task().data.X_eval``). The wrk script
(``benchmarks/wrk/rotate.lua``) rotates the API key over a few dozen keys and the body over
the 540 test digits, so no key reaches the ``recommended`` token bucket (1,000 queries per
key) during a run. Each measurement starts a fresh server (state ``memory://``), warms it up
on a key of its own, then runs ``wrk -t2 -c8 -d10s --latency``; the targets are run 3 times,
interleaved, and medians reported. wrk shares the machine's cores with the server.

    python benchmarks/service.py [--quick] [--no-doc] [--repeats 3] [--c32]
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section

from modeltheft.tasks import digits_task

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "rotate.lua"
PYTHON = sys.executable
TARGETS = ["trivial", "bare", "none", "lab", "recommended", "recommended-nolog", "recommended-oip"]
OIP_ROUTE = "/v2/models/victim/infer"  # the served model's name is its file's stem
LABELS = {
    "trivial": "trivial FastAPI endpoint",
    "bare": "bare FastAPI + scikit-learn",
    "none": "service, `none`",
    "lab": "service, `lab`",
    "recommended": "service, `recommended`",
    "recommended-nolog": "service, `recommended`, `--no-access-log`",
    "recommended-oip": "service, `recommended`, OIP v2 `/infer`",
}
WARM_KEY = "warmup-key-not-used-by-wrk"
METRICS_KEY = "metrics-key-only-the-operator-knows"
# (numerator, denominator, label, (issue target, least ratio) or None), in report order.
RATIOS = [
    ("recommended", "bare", "`recommended` / bare sklearn",
     ("`recommended` ≥ 10× bare FastAPI + scikit-learn (req/s)", 10)),
    ("recommended", "trivial", "`recommended` / trivial",
     ("`recommended` ≥ 0.6× trivial endpoint (req/s)", 0.6)),
    ("none", "trivial", "`none` / trivial", None),
    ("recommended-nolog", "bare", "`recommended` (no access log) / bare sklearn",
     ("same, `--no-access-log` (the baselines' logging) ≥ 10× bare", 10)),
    ("recommended-nolog", "trivial", "`recommended` (no access log) / trivial",
     ("same, `--no-access-log` ≥ 0.6× trivial endpoint", 0.6)),
    ("bare", "trivial", "bare sklearn / trivial", None),
    ("recommended-oip", "recommended", "OIP v2 `/infer` / `/v1/predict` (`recommended`)",
     ("OIP v2 front door within 10% of `/v1/predict` (req/s)", 0.9)),
]  # fmt: skip


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    errors: int
    seconds: float

    @property
    def ok_rps(self) -> float:
        return (self.requests - self.non2xx) / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> Result:
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    seconds = to_ms(total.group(2) + total.group(3)) / 1e3
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Result(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_ms=to_ms(lat["50"]),
        p99_ms=to_ms(lat["99"]),
        requests=int(total.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(map(int, errors.groups())) if errors else 0,
        seconds=seconds,
    )


def command(target: str, model: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if target in ("trivial", "bare"):
        app = "benchmarks._service_apps:" + target
        extra = ["--factory"] if target == "bare" else []
        env["MODELTHEFT_BENCH_MODEL"] = str(model)
        return [
            PYTHON, "-m", "uvicorn", app, *extra, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log",
        ], env  # fmt: skip
    preset, _, variant = target.partition("-")
    extra = ["--no-access-log"] if variant == "nolog" else []  # "oip": the same server
    return [
        PYTHON, "-m", "modeltheft.cli.app", "serve", "--model", str(model), "--defense", preset,
        "--state", "memory://", "--host", "127.0.0.1", "--port", str(port), *extra,
    ], env  # fmt: skip


def post(url: str, key: str, body: bytes) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_ready(
    url: str, proc: subprocess.Popen, body: bytes, log: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:]
            raise SystemExit(f"server exited with {proc.returncode}: {tail}")
        try:
            post(url, WARM_KEY, body)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not start within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def flagged(url: str) -> int | None:
    try:
        request = urllib.request.Request(
            url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    match = re.search(r"^modeltheft_flagged_clients\S*\s+([\d.e+]+)$", text, re.M)
    return int(float(match.group(1))) if match else None


def measure(
    target: str, model: Path, data: Path, bodies: list[bytes], duration: int, conns: int, warm: int
) -> tuple[Result, int | None]:
    port = free_port()
    cmd, env = command(target, model, port)
    # The server's log goes to a file: a pipe nobody reads would fill and stall the server.
    log = data.with_name(f"{target}-{port}.log")
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
    try:
        route = OIP_ROUTE if target.endswith("-oip") else "/v1/predict"
        if target.endswith("-oip"):
            data, bodies = data.with_name("requests-oip.tsv"), oip_bodies()
        url = f"http://127.0.0.1:{port}{route}"
        wait_ready(url, proc, bodies[0], log)
        for i in range(warm):
            post(url, WARM_KEY, bodies[i % len(bodies)])
        run = subprocess.run(
            ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(LUA), url,
             "--", str(data), route],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = parse_wrk(run.stdout)
        n_flagged = (
            flagged(f"http://127.0.0.1:{port}") if target.startswith("recommended") else None
        )
        return result, n_flagged
    finally:
        stop(proc)


def oip_bodies() -> list[bytes]:
    """One OIP v2 inference request per test digit (one FP64 row)."""
    X = digits_task().data.X_eval
    tensor = {"name": "input-0", "shape": [1, X.shape[1]], "datatype": "FP64"}
    return [json.dumps({"inputs": [tensor | {"data": row.tolist()}]}).encode() for row in X]


def train(folder: Path) -> Path:
    out = folder / "victim.skops"
    subprocess.run(
        [PYTHON, "-m", "modeltheft.cli.app", "train", "--model", "rf", "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return out


def fmt_row(name: str, runs: list[Result], flags: list[int | None]) -> str:
    rps = statistics.median(r.rps for r in runs)
    ok = statistics.median(r.ok_rps for r in runs)
    p50 = statistics.median(r.p50_ms for r in runs)
    p99 = statistics.median(r.p99_ms for r in runs)
    non2xx = sum(r.non2xx for r in runs)
    total = sum(r.requests for r in runs)
    errors = sum(r.errors for r in runs)
    spread = f"{min(r.rps for r in runs):,.0f}–{max(r.rps for r in runs):,.0f}"
    share = f"{non2xx:,} of {total:,} ({non2xx / total:.1%})" if total else "0"
    fl = [f for f in flags if f is not None]
    flag_text = f"{max(fl)}" if fl else "—"
    return (
        f"| {LABELS[name]} | {rps:,.0f} ({spread}) | {ok:,.0f} | {p50:.2f} | {p99:.2f} "
        f"| {share} | {errors} | {flag_text} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 repeat")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--keys", type=int, default=48, help="API keys the load rotates over")
    parser.add_argument("--c32", action="store_true", help="also measure at 32 connections")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it with 'apt-get install -y wrk'")
    duration, repeats, warm = (2, 1, 100) if args.quick else (args.duration, args.repeats, 300)
    targets = [t for t in args.targets.split(",") if t]
    X = digits_task().data.X_eval
    bodies = [json.dumps({"inputs": [row.tolist()]}).encode() for row in X]
    keys = [f"bench-{i:02d}-" + "k" * 32 for i in range(args.keys)]
    os.environ["MODELTHEFT_API_KEYS"] = ",".join(
        [f"warm:{WARM_KEY}"] + [f"c{i:02d}:{k}" for i, k in enumerate(keys)]
    )
    os.environ["MODELTHEFT_METRICS_KEY"] = METRICS_KEY  # the served workers inherit it
    conns_list = [8, 32] if args.c32 else [8]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = train(folder)
        data = folder / "requests.tsv"
        data.write_text(
            "".join(f"{keys[i % len(keys)]}\t{b.decode()}\n" for i, b in enumerate(bodies))
        )
        data.with_name("requests-oip.tsv").write_text(
            "".join(f"{keys[i % len(keys)]}\t{b.decode()}\n" for i, b in enumerate(oip_bodies()))
        )
        results: dict[tuple[str, int], list[Result]] = {}
        flags: dict[tuple[str, int], list[int | None]] = {}
        for conns in conns_list:
            for rep in range(repeats):
                for target in targets:
                    res, fl = measure(target, model, data, bodies, duration, conns, warm)
                    results.setdefault((target, conns), []).append(res)
                    flags.setdefault((target, conns), []).append(fl)
                    print(
                        f"c={conns} rep={rep} {target:18s} {res.rps:8.0f} req/s  "
                        f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  "
                        f"non-2xx {res.non2xx}  errors {res.errors}  flagged {fl}",
                        flush=True,
                    )
    body = report(results, flags, targets, conns_list, duration, repeats, args.keys)
    print(body)
    if not args.no_doc and not args.quick:
        print(f"wrote {write_section('service', body)}")


def report(results, flags, targets, conns_list, duration, repeats, n_keys) -> str:
    def med(target: str, conns: int = 8, attr: str = "rps") -> float:
        return statistics.median(getattr(r, attr) for r in results[(target, conns)])

    lines = [
        "## Service throughput under load (`benchmarks/service.py`)",
        "",
        f"wrk (`-t2 -c<N> -d{duration}s --latency`) on loopback against one uvicorn worker, "
        f"each target started fresh (state `memory://`) and warmed up, {repeats} runs per "
        "target interleaved, medians (range of requests/s in brackets). Every request is one "
        f"real test digit; the wrk script rotates over {n_keys} API keys so that no key reaches "
        "the `recommended` token bucket (1,000 queries) within a run. The service runs with "
        "its defaults: Prometheus metrics, the audit log (in memory here) and one access-log "
        "line per request. The machine has "
        f"{os.cpu_count()} cores, and wrk runs on them too: absolute rates are lower than "
        "with a separate load machine, ratios are side by side. Python "
        f"{platform.python_version()}.",
    ]
    for conns in conns_list:
        lines += [
            "",
            f"**{conns} concurrent connections**",
            "",
            "| endpoint | requests/s | 2xx/s | p50 (ms) | p99 (ms) | non-2xx | socket errors "
            "| flagged keys |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [fmt_row(t, results[(t, conns)], flags[(t, conns)]) for t in targets]
    have = set(targets)
    lines += [""]
    if "lab" in have:
        lines.append(
            "- `lab` refuses 80% of a key's queries after its 150th: its non-2xx are those "
            "expected 429s (cheap early refusals); its 2xx/s column counts answered queries only."
        )
    if "recommended-nolog" in have:
        lines.append(
            "- `modeltheft serve` writes one access-log line per request by default; the "
            "baselines run uvicorn with `--no-access-log`, and so does the last service row."
        )
    if "recommended" in have:
        lines.append(
            "- flagged keys: clients the `recommended` detectors flagged during the run (from "
            "`/metrics`); the load repeats each key's dozen digits many times, and the "
            "detectors count a repeated query once."
        )
    ratios, checks = [], []
    for top, bottom, label, target in RATIOS:
        if {top, bottom} <= have:
            r = med(top) / med(bottom)
            ratios.append(f"| {label} | {r:.2f}× |")
            if target is not None:
                name, least = target
                checks.append((name, f"{r:.2f}×", r >= least))
    if "recommended" in have:
        p99 = med("recommended", 8, "p99_ms")
        checks.append(("`recommended` p99 ≤ 15 ms at 8 connections", f"{p99:.2f} ms", p99 <= 15))
    if ratios:
        lines += ["", "Ratios of median requests/s at 8 connections:", "", "| ratio | value |",
                  "|---|---|", *ratios]  # fmt: skip
    if checks:
        lines += ["", "| target (issue) | measured | met |", "|---|---|---|"]
        lines += [
            f"| {name} | {value} | {'met' if ok else '**no**'} |" for name, value, ok in checks
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
