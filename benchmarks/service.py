"""Requests/s and latency of the prediction service under a real load generator (wrk).

One run, side by side on loopback, one uvicorn worker each (but ``recommended-2w``):

- ``trivial``: FastAPI alone (parse the body, answer a constant label),
- ``bare sklearn``: FastAPI + scikit-learn ``predict_proba`` on the same victim,
- the service (``modeltheft serve``, its defaults: access log, audit log and metrics on)
  with the ``none``, ``lab`` and ``recommended`` presets, plus ``recommended`` with
  ``--no-access-log``, and ``recommended`` through the Open Inference Protocol v2 front door
  (``POST /v2/models/victim/infer``, one FP64 row per request), and ``recommended`` with every
  key new (``recommended-young``: 2,000 keys of a keys file, 10 requests each, as many new
  clients or a Sybil flood would send);
- gateway mode (issue 13), if MLServer's venv is installed (``make
  .venv-mlserver/.installed``; else a one-line note and these are skipped): ``mlserver`` is
  MLServer 1.7.1 alone (mlserver-sklearn, its minimal model settings, one process) serving
  the same victim; ``gateway`` is ``modeltheft serve --upstream <that MLServer> --model-name
  victim --task digits --defense recommended`` in front of it, with serve's default state
  (SQLite, a fresh file per measurement) and access log; ``gateway-memory`` is the same with
  ``--state memory://`` (comparable to the other service rows). The three get the OIP v2 body
  of one row plus ``"outputs": [{"name": "predict_proba"}]`` (probabilities: what the gateway
  asks its upstream for). MLServer is started once per run and stopped at the end, whatever
  happens. These three are also measured at 1 connection (``wrk -t1 -c1``: no queueing, the
  latency one hop adds).

Every request is one real test digit (``digits_task().data.X_eval``). The wrk script
(``benchmarks/wrk/rotate.lua``) rotates the API key over a few dozen keys and the body over
the 540 test digits, so no key reaches the ``recommended`` token bucket (1,000 queries per
key) during a run. Each measurement starts a fresh server (serve's default state, SQLite,
in a new file, unless said otherwise: ``recommended-memory`` is ``--state memory://``,
``recommended-2w`` is ``--workers 2`` on one SQLite file),
warms it up on a key of its own, then runs ``wrk -t2 -c8 -d10s --latency``; the
targets are run 3 times, interleaved, and medians reported. wrk shares the machine's cores
with the servers. The server's CPU time per request (user + system, from ``/proc``) is taken
over each wrk run; for the gateway rows the upstream MLServer's too.

With ``--before REV``, ``recommended`` is also measured with the code of ``REV`` (its ``src``
exported with ``git archive``, the same venv), interleaved with the others: the change in
throughput paired within one run, which the machine's drift between runs (±20%) hides.

    python benchmarks/service.py [--quick] [--no-doc] [--repeats 3] [--c32] [--targets a,b]
                                 [--before REV]
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from memory import export

from modeltheft.tasks import digits_task

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "rotate.lua"
PYTHON = sys.executable
TARGETS = [
    "trivial", "bare", "none", "lab", "recommended", "recommended-nolog", "recommended-oip",
    "recommended-memory", "recommended-2w", "recommended-young",
]  # fmt: skip
MLSERVER_TARGETS = ["mlserver", "gateway", "gateway-memory"]
"""Need MLServer's venv; also measured at 1 connection (the latency one hop adds)."""
MLSERVER_VENV = ROOT / ".venv-mlserver"
OIP_ROUTE = "/v2/models/victim/infer"  # the served model's name is its file's stem
LABELS = {
    "trivial": "trivial FastAPI endpoint",
    "bare": "bare FastAPI + scikit-learn",
    "none": "service, `none`",
    "lab": "service, `lab`",
    "recommended": "service, `recommended`",
    "recommended-nolog": "service, `recommended`, `--no-access-log`",
    "recommended-oip": "service, `recommended`, OIP v2 `/infer`",
    "recommended-memory": "service, `recommended`, `--state memory://`",
    "recommended-2w": "service, `recommended`, `--workers 2` (one SQLite file)",
    "recommended-young": "service, `recommended`, every key new (10-20 requests a key)",
    "mlserver": "MLServer alone (`predict_proba`)",
    "gateway": "gateway, `recommended`, default state (SQLite) → MLServer",
    "gateway-memory": "gateway, `recommended`, `memory://` → MLServer",
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
    ("recommended-memory", "bare", "`recommended` (`memory://`) / bare sklearn", None),
    ("recommended-memory", "trivial", "`recommended` (`memory://`) / trivial", None),
    ("recommended", "recommended-memory", "`recommended`: default SQLite / `memory://`", None),
    ("recommended-2w", "recommended", "`recommended`: 2 workers / 1 (default SQLite)", None),
    ("recommended-young", "recommended", "`recommended`: every key new / 48 keys", None),
    ("recommended-oip", "recommended", "OIP v2 `/infer` / `/v1/predict` (`recommended`)",
     ("OIP v2 front door within 10% of `/v1/predict` (req/s)", 0.9)),
    ("gateway", "mlserver", "gateway (default SQLite state) / MLServer alone",
     ("gateway + `recommended` (default state) ≥ 0.8× MLServer alone (req/s)", 0.8)),
    ("gateway-memory", "mlserver", "gateway (`memory://`) / MLServer alone", None),
]  # fmt: skip
BEFORE = "recommended-before"
"""``recommended`` with the code of ``--before`` (PYTHONPATH: its exported ``src``)."""
BEFORE_SRC: Path | None = None
ADDED_P50_MS = 2.0
"""Issue 13: the gateway adds at most 2 ms to MLServer's own p50 latency."""
HOP_CONNS = 1
"""The gateway rows are also measured at this many connections (no queueing)."""
YOUNG_KEYS = 2000
YOUNG_QUERIES = 10
"""``recommended-young``: each of YOUNG_KEYS keys sends YOUNG_QUERIES requests in a row, then
is not seen again (wrk's second thread starts 7,919 lines on: past ~16,000 requests a run,
some keys get up to twice as many), as many new clients or a Sybil flood would."""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    errors: int
    seconds: float
    cpu_ms: float | None = None
    """The server's CPU time (user + system) per request over the wrk run."""
    upstream_cpu_ms: float | None = None
    """The upstream MLServer's, for the gateway rows."""
    load: float | None = None
    """The machine's 1-minute load average at the end of the wrk run."""

    @property
    def ok_rps(self) -> float:
        return (self.requests - self.non2xx) / self.seconds


@dataclass
class Upstream:
    """The run's MLServer: its base URL and its process (for its CPU time)."""

    url: str
    pid: int | None
    log: Path

    def state(self) -> str:
        """Whether the process is still there, and the end of its log (for error messages)."""
        alive = self.pid is not None and Path(f"/proc/{self.pid}").exists()
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.is_file() else ""
        return f"MLServer (pid {self.pid}) {'running' if alive else 'gone'}; its log ends:\n{tail}"


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


def cpu_seconds(pid: int | None, group: bool = False) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``); None if unknown.

    ``group``: of every process in ``pid``'s process group (a server and its workers)."""
    if pid is None:
        return None
    stats = [Path(f"/proc/{pid}/stat")] if not group else list(Path("/proc").glob("[0-9]*/stat"))
    total, found = 0, False
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if group and int(fields[2]) != pid:
            continue
        total, found = total + int(fields[11]) + int(fields[12]), True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def mlserver_pid(models: Path) -> int | None:
    """The pid of the ``mlserver start MODELS`` that ``tests.servers.real.mlserver`` started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(models).encode() in argv and any(a.endswith(b"mlserver") for a in argv):
            return int(entry.name)
    return None


def mlserver_installed() -> bool:
    return (MLSERVER_VENV / ".installed").is_file()


@contextmanager
def started_mlserver(folder: Path, model: Path) -> Iterator[Upstream]:
    """MLServer serving the victim as ``victim`` (``tests.servers.real.mlserver``, minimal
    model settings: it answers ``predict_proba`` when asked); stopped on exit, whatever
    happened."""
    sys.path.insert(0, str(ROOT))
    from modeltheft.victim import load_model
    from tests.servers.real import mlserver

    estimator = load_model(model).model
    with mlserver(folder, {"victim": (estimator, False)}) as server:
        pid = mlserver_pid(folder / "models")
        print(f"MLServer at {server.url} (pid {pid}) ready in {server.startup_seconds:.1f} s")
        yield Upstream(server.url, pid, folder / "mlserver.log")


def command(
    target: str, model: Path, port: int, upstream: Upstream | None, folder: Path
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if target in ("trivial", "bare"):
        app = "benchmarks._service_apps:" + target
        extra = ["--factory"] if target == "bare" else []
        env["MODELTHEFT_BENCH_MODEL"] = str(model)
        return [
            PYTHON, "-m", "uvicorn", app, *extra, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log",
        ], env  # fmt: skip
    if target.startswith("gateway"):
        # serve's default store is SQLite: here a fresh file per measurement
        state = "memory://" if target == "gateway-memory" else f"sqlite:///{folder}/{port}.db"
        return [
            PYTHON, "-m", "modeltheft.cli.app", "serve", "--upstream", upstream.url,
            "--model-name", "victim", "--task", "digits", "--defense", "recommended",
            "--state", state, "--host", "127.0.0.1", "--port", str(port),
        ], env  # fmt: skip
    preset, _, variant = target.partition("-")
    if target == BEFORE:
        env["PYTHONPATH"] = str(BEFORE_SRC)  # ahead of the venv's own (editable) modeltheft
    extra = ["--no-access-log"] if variant == "nolog" else []  # "oip": the same server
    extra += ["--workers", "2"] if variant == "2w" else []
    extra += ["--keys-file", str(folder / "young-keys.txt")] if variant == "young" else []
    # serve's default store (SQLite), a fresh file per measurement; "memory": memory://
    state = "memory://" if variant == "memory" else f"sqlite:///{folder}/{port}.db"
    return [
        PYTHON, "-m", "modeltheft.cli.app", "serve", "--model", str(model), "--defense", preset,
        "--state", state, "--host", "127.0.0.1", "--port", str(port), *extra,
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
    url: str,
    proc: subprocess.Popen | None,
    body: bytes,
    log: Path,
    timeout: float = 60.0,
    upstream: "Upstream | None" = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:]
            raise SystemExit(f"server exited with {proc.returncode}: {tail}")
        try:
            status = post(url, WARM_KEY, body)
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
            continue
        if status != 200:
            raise SystemExit(f"{url} answered the warm-up request with HTTP {status}")
        return
    about = f"; {upstream.state()}" if upstream is not None else ""
    raise SystemExit(f"server at {url} did not answer within {timeout:.0f} s{about}")


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


def load_of(target: str) -> tuple[str, str]:
    """The route and request kind a target gets: ``v1``, ``oip`` or ``proba`` (OIP + the
    ``predict_proba`` output)."""
    if target in MLSERVER_TARGETS:
        return OIP_ROUTE, "proba"
    if target.endswith("-oip"):
        return OIP_ROUTE, "oip"
    if target == "recommended-young":
        return "/v1/predict", "young"
    return "/v1/predict", "v1"


def measure(
    target: str,
    model: Path,
    folder: Path,
    bodies: dict[str, list[bytes]],
    upstream: Upstream | None,
    duration: int,
    conns: int,
    warm: int,
) -> tuple[Result, int | None]:
    route, kind = load_of(target)
    data, body = folder / f"requests-{kind}.tsv", bodies[kind]
    proc, port = None, free_port()
    log = folder / f"{target}-{port}.log"
    if target in MLSERVER_TARGETS and upstream is None:
        raise SystemExit(f"{target} needs MLServer")
    if target == "mlserver":
        base, pid = upstream.url, upstream.pid
    else:
        cmd, env = command(target, model, port, upstream, folder)
        # The server's log goes to a file: a pipe nobody reads would fill and stall the server.
        with log.open("w") as sink:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
        base, pid = f"http://127.0.0.1:{port}", proc.pid
    up_pid = upstream.pid if upstream is not None and target.startswith("gateway") else None
    try:
        url = base + route
        wait_ready(url, proc, body[0], log, upstream=upstream if up_pid or not proc else None)
        for i in range(warm):
            post(url, WARM_KEY, body[i % len(body)])
        own = proc is not None  # started in a session of its own: its workers too
        cpu, up_cpu = cpu_seconds(pid, group=own), cpu_seconds(up_pid)
        run = subprocess.run(
            ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{duration}s", "--latency", "-s",
             str(LUA), url, "--", str(data), route],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = parse_wrk(run.stdout)
        result.load = os.getloadavg()[0]
        if cpu is not None and (after := cpu_seconds(pid, group=own)) is not None:
            result.cpu_ms = (after - cpu) * 1e3 / max(result.requests, 1)
        if up_cpu is not None and (after := cpu_seconds(up_pid)) is not None:
            result.upstream_cpu_ms = (after - up_cpu) * 1e3 / max(result.requests, 1)
        guarded = target.startswith(("recommended", "gateway"))
        return result, flagged(base) if guarded else None
    finally:
        if proc is not None:
            stop(proc)


def request_bodies() -> dict[str, list[bytes]]:
    """Per request kind, one request body per test digit (one row each)."""
    X = digits_task().data.X_eval
    tensor = {"name": "input-0", "shape": [1, X.shape[1]], "datatype": "FP64"}
    oip = [{"inputs": [tensor | {"data": row.tolist()}]} for row in X]
    proba = {"outputs": [{"name": "predict_proba"}]}
    v1 = [json.dumps({"inputs": [row.tolist()]}).encode() for row in X]
    return {
        "v1": v1,
        "young": v1,  # the same bodies, from new keys (write_young)
        "oip": [json.dumps(body).encode() for body in oip],
        "proba": [json.dumps(body | proba).encode() for body in oip],
    }


def write_young(folder: Path, bodies: list[bytes]) -> None:
    """The keys file (hashes) and the load of ``recommended-young``: YOUNG_KEYS new keys,
    YOUNG_QUERIES requests each, one after the other, over the test digits."""
    from modeltheft.service.auth import hash_key

    keys = [f"young-{i:04d}-" + "y" * 32 for i in range(YOUNG_KEYS)]
    (folder / "young-keys.txt").write_text(
        "".join(f"y{i:04d}:{hash_key(key)}\n" for i, key in enumerate(keys))
    )
    n = YOUNG_KEYS * YOUNG_QUERIES
    (folder / "requests-young.tsv").write_text(
        "".join(
            f"{keys[i // YOUNG_QUERIES]}\t{bodies[i % len(bodies)].decode()}\n" for i in range(n)
        )
    )


def train(folder: Path) -> Path:
    out = folder / "victim.skops"
    subprocess.run(
        [PYTHON, "-m", "modeltheft.cli.app", "train", "--model", "rf", "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return out


def fmt_cpu(runs: list[Result]) -> str:
    own = [r.cpu_ms for r in runs if r.cpu_ms is not None]
    if not own:
        return "—"
    text = f"{statistics.median(own):.2f}"
    up = [r.upstream_cpu_ms for r in runs if r.upstream_cpu_ms is not None]
    return text + (f" (+ {statistics.median(up):.2f} MLServer)" if up else "")


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
        f"| {fmt_cpu(runs)} | {share} | {errors} | {flag_text} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 repeat")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--keys", type=int, default=48, help="API keys the load rotates over")
    parser.add_argument("--c32", action="store_true", help="also measure at 32 connections")
    parser.add_argument(
        "--before", help="also measure `recommended` with the code of this git revision"
    )
    parser.add_argument(
        "--targets",
        help=f"comma-separated, of {', '.join(LABELS)} (default: all; the last "
        f"{len(MLSERVER_TARGETS)} only if MLServer's venv is installed)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: install it with 'apt-get install -y wrk'")
    if args.targets is None:
        targets = list(TARGETS)
        if mlserver_installed():
            targets += MLSERVER_TARGETS
        else:
            print(f"note: {MLSERVER_VENV} is not installed: MLServer and gateway rows skipped")
    else:
        targets = [t for t in args.targets.split(",") if t]
        if unknown := [t for t in targets if t not in LABELS]:
            raise SystemExit(f"unknown target(s) {', '.join(unknown)}; choose from {list(LABELS)}")
        if set(targets) & set(MLSERVER_TARGETS) and not mlserver_installed():
            raise SystemExit(f"{MLSERVER_VENV} is not installed: make .venv-mlserver/.installed")
    if args.before:
        if "recommended" not in targets:
            raise SystemExit("--before compares with `recommended`: measure it too")
        targets.insert(targets.index("recommended") + 1, BEFORE)
        LABELS[BEFORE] = f"service, `recommended`, the code of `{args.before}`"
    duration, repeats, warm = (2, 1, 100) if args.quick else (args.duration, args.repeats, 300)
    hop = [t for t in targets if t in MLSERVER_TARGETS]
    plan = [(8, targets)] + ([(HOP_CONNS, hop)] if hop else [])
    plan += [(32, targets)] if args.c32 else []
    keys = [f"bench-{i:02d}-" + "k" * 32 for i in range(args.keys)]
    os.environ["MODELTHEFT_API_KEYS"] = ",".join(
        [f"warm:{WARM_KEY}"] + [f"c{i:02d}:{k}" for i, k in enumerate(keys)]
    )
    os.environ["MODELTHEFT_METRICS_KEY"] = METRICS_KEY  # the served workers inherit it
    bodies = request_bodies()
    results: dict[tuple[str, int], list[Result]] = {}
    flags: dict[tuple[str, int], list[int | None]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        if args.before:
            global BEFORE_SRC
            BEFORE_SRC = export(args.before, folder)
        model = train(folder)
        for kind, lines in bodies.items():
            if kind == "young":
                continue  # new keys, not the 48: write_young writes it
            (folder / f"requests-{kind}.tsv").write_text(
                "".join(f"{keys[i % len(keys)]}\t{b.decode()}\n" for i, b in enumerate(lines))
            )
        write_young(folder, bodies["v1"])
        upstream = (
            stack.enter_context(started_mlserver(folder / "mlserver", model)) if hop else None
        )
        for rep in range(repeats):  # every target once per repeat: drift hits them all
            for conns, these in plan:
                for target in these:
                    res, fl = measure(
                        target, model, folder, bodies, upstream, duration, conns, warm
                    )
                    results.setdefault((target, conns), []).append(res)
                    flags.setdefault((target, conns), []).append(fl)
                    cpu = f"{res.cpu_ms:.2f}" if res.cpu_ms is not None else "-"
                    up = f"{res.upstream_cpu_ms:.2f}" if res.upstream_cpu_ms is not None else "-"
                    print(
                        f"c={conns} rep={rep} {target:18s} {res.rps:8.0f} req/s  "
                        f"p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms  "
                        f"cpu {cpu}+{up} ms/req  non-2xx {res.non2xx}  errors {res.errors}  "
                        f"flagged {fl}  load {res.load:.1f}",
                        flush=True,
                    )
    body = report(results, flags, plan, duration, repeats, args.keys, args.before)
    print(body)
    if not args.no_doc and not args.quick:
        print(f"wrote {write_section('service', body)}")


def report(results, flags, plan, duration, repeats, n_keys, before=None) -> str:
    def med(target: str, conns: int = 8, attr: str = "rps") -> float:
        return statistics.median(getattr(r, attr) for r in results[(target, conns)])

    have = {t for _, these in plan for t in these}
    lines = [
        "## Service throughput under load (`benchmarks/service.py`)",
        "",
        f"wrk (`-t2 -c<N> -d{duration}s --latency`; `-t1` at 1 connection) on loopback against "
        "one uvicorn worker (two for `--workers 2`), each target started fresh (serve's default "
        "state, SQLite, in a new file, unless said otherwise) and warmed up, "
        f"{repeats} runs per target "
        "interleaved, medians (range of requests/s in brackets). Every request is one real "
        "test digit; the wrk script rotates "
        f"over {n_keys} API keys so that no key reaches the `recommended` token bucket (1,000 "
        "queries) within a run. The service runs with its defaults: SQLite state, Prometheus "
        "metrics, the audit log and one access-log line per request; the requests a worker "
        "handles in one turn of its event loop share one SQLite commit, and each is answered "
        "after it. Server CPU: the server's processes' user + system time over the wrk run, "
        "per request. The machine has "
        f"{os.cpu_count()} cores, and wrk runs on them too: absolute rates are lower than "
        "with a separate load machine, ratios are side by side. Python "
        f"{platform.python_version()}.",
    ]
    loads = [r.load for runs in results.values() for r in runs if r.load is not None]
    if loads:
        lines[-1] += (
            f" The machine's 1-minute load average after each wrk run: median "
            f"{statistics.median(loads):.1f} (range {min(loads):.1f}–{max(loads):.1f}); above "
            f"{os.cpu_count()}, other processes competed for the cores during the run."
        )
    for conns, these in plan:
        lines += ["", f"**{conns} concurrent connection{'s' if conns > 1 else ''}**"]
        if conns == HOP_CONNS:
            lines[-1] += " (gateway rows: one request at a time, no queueing)"
        lines += [
            "",
            "| endpoint | requests/s | 2xx/s | p50 (ms) | p99 (ms) | server CPU (ms/request) "
            "| non-2xx | socket errors | flagged keys |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [fmt_row(t, results[(t, conns)], flags[(t, conns)]) for t in these]
    lines += [""]
    if "lab" in have:
        lines.append(
            "- `lab` refuses 80% of a key's queries after its 150th: its non-2xx are those "
            "expected 429s (cheap early refusals); its 2xx/s column counts answered queries only."
        )
    if "recommended-nolog" in have:
        lines.append(
            "- `modeltheft serve` writes one access-log line per request by default; the "
            "baselines run uvicorn with `--no-access-log`, and so does the `--no-access-log` row."
        )
    if have & {"recommended", "gateway", "gateway-memory"}:
        lines.append(
            "- flagged keys: clients the `recommended` detectors flagged during the run (from "
            "`/metrics`); the load repeats each key's dozen digits many times, and the "
            "detectors count a repeated query once."
        )
    if have & set(MLSERVER_TARGETS):
        lines.append(
            "- MLServer 1.7.1 (mlserver-sklearn, its own venv, minimal model settings, "
            "`parallel_workers: 0`: one process) serves the same victim (a 100-tree forest, "
            "scikit-learn) and is started once for the run. The MLServer and gateway rows get "
            "OIP v2 bodies of one FP64 row asking for the output `predict_proba`; the gateway "
            "(`serve --upstream … --model-name victim --task digits --defense recommended`) "
            "sends each admitted row upstream asking for `predict_proba` only. The gateway's "
            "default state is serve's default store, SQLite (a fresh file per measurement); "
            "`memory://` beside it. Its CPU column adds the upstream MLServer's CPU per request "
            "in that run. Gateway and MLServer share the 2 cores with wrk, so the gateway's own "
            "CPU comes out of MLServer's throughput."
        )
    if "recommended-young" in have:
        lines.append(
            f"- every key new: {YOUNG_KEYS:,} keys (a keys file) each send {YOUNG_QUERIES} "
            "requests in a row and are not seen again (wrk's two threads start 7,919 lines "
            "apart, so in a faster run some keys send up to twice as many): many new clients "
            "at once, or a Sybil flood. A key's first 20 queries are young: the service "
            "monitor pools them with other young keys' and every per-key detector starts its "
            "state from nothing."
        )
    if BEFORE in have:
        lines.append(
            f"- `{before}` (`--before`): `recommended` with the code of that revision, run by "
            "the same venv and interleaved with the others, so that its ratio to this "
            "checkout's is paired within the run."
        )
    ratios, checks = [], []
    pairs = [*RATIOS]
    if BEFORE in have:
        pairs.insert(2, ("recommended", BEFORE, f"`recommended` / the same at `{before}`", None))
        pairs.insert(3, (BEFORE, "trivial", f"`recommended` at `{before}` / trivial", None))
    for top, bottom, label, target in pairs:
        if {top, bottom} <= have:
            r = med(top) / med(bottom)
            # Each repeat measures both within minutes: the median of those ratios is
            # paired, and the machine's drift between repeats cancels from it.
            pair = zip(results[(top, 8)], results[(bottom, 8)], strict=True)
            each = [a.rps / b.rps for a, b in pair]
            ratios.append(
                f"| {label} | {r:.2f}× | {statistics.median(each):.2f}× "
                f"({min(each):.2f}–{max(each):.2f}) |"
            )
            if target is not None:
                name, least = target
                checks.append((name, f"{r:.2f}×", r >= least))
    if "recommended" in have:
        p99 = med("recommended", 8, "p99_ms")
        checks.append(("`recommended` p99 ≤ 15 ms at 8 connections", f"{p99:.2f} ms", p99 <= 15))
    added = []
    for gateway in ("gateway", "gateway-memory"):
        if {gateway, "mlserver"} <= have:
            at8 = med(gateway, 8, "p50_ms") - med("mlserver", 8, "p50_ms")
            at1 = med(gateway, HOP_CONNS, "p50_ms") - med("mlserver", HOP_CONNS, "p50_ms")
            added.append(f"| {LABELS[gateway]} | {at8:+.2f} | {at1:+.2f} |")
            if gateway == "gateway":
                checks += [
                    (f"gateway (default state) adds ≤ {ADDED_P50_MS:g} ms p50 at 8 connections "
                     "(p50 gateway − p50 MLServer, the issue's wording)", f"{at8:+.2f} ms",
                     at8 <= ADDED_P50_MS),
                    (f"gateway (default state) adds ≤ {ADDED_P50_MS:g} ms p50 at 1 connection "
                     "(no queueing: one hop)", f"{at1:+.2f} ms", at1 <= ADDED_P50_MS),
                ]  # fmt: skip
    if ratios:
        lines += [
            "",
            "Ratios of requests/s at 8 connections: of the medians (the targets below), and "
            "paired, the median over the repeats of each repeat's own ratio (range in "
            "brackets), from which the machine's drift between repeats cancels:",
            "",
            "| ratio | of the medians | paired |",
            "|---|---|---|",
            *ratios,
        ]
    if added:
        lines += [
            "",
            "Added p50 latency over MLServer alone (medians, ms). At 8 connections it includes "
            "queueing: both servers share the cores with wrk, and the gateway's lower "
            "throughput shows up as waiting; at 1 connection it is the time one hop adds.",
            "",
            "| gateway | at 8 connections | at 1 connection |",
            "|---|---|---|",
            *added,
        ]
    if checks:
        lines += ["", "| target (issue) | measured | met |", "|---|---|---|"]
        lines += [
            f"| {name} | {value} | {'met' if ok else '**no**'} |" for name, value, ok in checks
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
