"""Sweep engines: the same grid on 1 and 2 local processes and on a local Ray instance.

Each engine runs every run of the spec (default ``examples/grid.toml``, 200 runs) into a
fresh folder through :func:`modeltheft.experiments.sweep.sweep`; the wall time is the whole
call, start-up (spawning processes, starting Ray) and shut-down included. The three result
sets must be identical (records compared without their timings).

    python benchmarks/sweep.py [--spec examples/grid.toml] [--quick] [--no-doc]
"""

import argparse
import io
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section

from modeltheft.experiments.engines import Engine, LocalEngine
from modeltheft.experiments.results import ResultsStore
from modeltheft.experiments.spec import Task, load_spec
from modeltheft.experiments.sweep import sweep

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "examples" / "grid.toml"
SPEED_UP_TARGET = 1.8
RAY_RATIO_TARGET = 1.3


TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def _processes() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds so far) of every visible process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        rest = text.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK)
    return out


class LoadMonitor:
    """CPU used during a pass by this process tree and by everything else on the machine.

    The machine is shared; other work on it slows a pass down, so each pass reports it.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.root = os.getpid()
        self.seen: dict[int, float] = {}
        self.own = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _mine(self, table: dict[int, tuple[int, float]]) -> set[int]:
        mine, children = {self.root}, {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = [self.root]
        while stack:
            for child in children.get(stack.pop(), []):
                mine.add(child)
                stack.append(child)
        return mine

    def _sample(self, first: bool = False) -> None:
        table = _processes()
        for pid in self._mine(table):
            cpu = table[pid][1]
            if not first:
                self.own += cpu - self.seen.get(pid, 0.0)
            self.seen[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "LoadMonitor":
        self._sample(first=True)
        self.busy0, self.t0 = _machine_busy(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.perf_counter() - self.t0
        self.busy = _machine_busy() - self.busy0

    @property
    def other(self) -> float:
        """Average cores used by other processes during the pass."""
        return max(0.0, self.busy - self.own) / self.seconds


def wait_quiet(limit: float, threshold: float = 0.15, window: float = 3.0) -> float:
    """Wait (up to ``limit`` s) until other processes use under ``threshold`` cores."""
    start = time.perf_counter()
    while True:
        with LoadMonitor() as monitor:
            time.sleep(window)
        if monitor.other < threshold or time.perf_counter() - start > limit:
            return monitor.other


class Timed:
    """An engine wrapper that notes when the engine starts and when each record arrives."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.begin = self.end = 0.0
        self.arrivals: list[float] = []

    def describe(self) -> str:
        return self.engine.describe()

    def run(self, tasks: Sequence[Task], on_result: Callable[[dict[str, Any]], None]) -> None:
        def noted(record: dict[str, Any]) -> None:
            self.arrivals.append(time.perf_counter())
            on_result(record)

        self.begin = time.perf_counter()
        try:
            self.engine.run(tasks, noted)
        finally:
            self.end = time.perf_counter()


@dataclass
class Measured:
    """One engine's pass over the grid."""

    label: str
    workers: int
    wall: float
    startup: float
    shutdown: float
    run_seconds: list[float]
    other_load: float
    records: dict[str, dict[str, Any]] = field(repr=False)

    @property
    def busy(self) -> float:
        """Share of worker time spent inside runs."""
        return sum(self.run_seconds) / (self.workers * self.wall)

    @property
    def median(self) -> float:
        return float(np.median(self.run_seconds))


def measure(label: str, workers: int, make: Callable[[], Engine], spec: Path) -> Measured:
    """Run the whole spec on a fresh engine into a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        timed = Timed(make())
        with LoadMonitor() as monitor:
            start = time.perf_counter()
            summary = sweep(spec, Path(folder), timed, console=Console(file=io.StringIO()))
            wall = time.perf_counter() - start
        records = ResultsStore(Path(folder)).records()
    if summary.failed or summary.ran != summary.total:
        raise SystemExit(f"{label}: {summary.failed} failed, {summary.ran} of {summary.total} ran")
    # Records are appended in arrival order, so they pair with the arrival times.
    first_at, first = timed.arrivals[0], records[0]
    # The first record arrives after start-up plus its own run (imports happen before it).
    startup = first_at - timed.begin - first["timings"]["seconds"]
    measured = Measured(
        label=label,
        workers=workers,
        wall=wall,
        startup=startup,
        shutdown=timed.end - timed.arrivals[-1],
        run_seconds=[r["timings"]["seconds"] for r in records],
        other_load=monitor.other,
        records={r["id"]: {k: v for k, v in r.items() if k != "timings"} for r in records},
    )
    print(
        f"{label}: {wall:.1f} s wall, start-up {startup:.1f} s, shut-down "
        f"{measured.shutdown:.1f} s, median run {measured.median:.2f} s, "
        f"busy {measured.busy:.0%}, other load {monitor.other:.2f} cores",
        flush=True,
    )
    return measured


def quick_spec(spec: Path, seeds: int, folder: Path) -> Path:
    """The spec with fewer seeds (a copy; defense files must be presets or inline tables)."""
    text = re.sub(r"(?m)^seeds\s*=.*$", "", spec.read_text())
    path = folder / spec.name
    path.write_text(f"seeds = {seeds}\n{text}")
    return path


def differing(a: Measured, b: Measured) -> int:
    """Run ids whose records differ (or are missing on one side)."""
    ids = set(a.records) | set(b.records)
    return sum(a.records.get(i) != b.records.get(i) for i in ids)


LABELS = ("local, 1 worker", "local, 2 workers", "Ray, 2 CPUs")


CLEAN = 0.1
"""A pass counts as clean when other processes used less than this many cores during it."""


def render(passes: dict[str, list[Measured]], spec_name: str, n_runs: int, description: str) -> str:
    import ray

    def pick(label: str) -> Measured:
        clean = [m for m in passes[label] if m.other_load < CLEAN] or passes[label]
        return min(clean, key=lambda m: m.wall)

    best = [pick(label) for label in LABELS]
    one, two, on_ray = best
    speed_up = one.wall / two.wall
    ratio = on_ray.wall / two.wall
    every = [m for label in LABELS for m in passes[label]]
    diffs = [differing(every[0], m) for m in every[1:]]
    identical = not any(diffs)
    ideal = (one.wall - one.startup - one.shutdown) / 2 + two.startup + two.shutdown
    slowdown = two.median / one.median
    loaded = max(m.other_load for m in best)

    def met(ok: bool) -> str:
        return "met" if ok else "**no**"

    lines = [
        "## Sweep engines (`benchmarks/sweep.py`)",
        "",
        f"`{spec_name}`: {description} = {n_runs} runs, in-process oracle, on this machine "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, Ray {ray.__version__}). "
        "Each engine runs the whole grid into a fresh folder through `sweep()`, engines "
        "interleaved; each engine's fastest clean pass is shown (clean: other processes used "
        f"under {CLEAN} cores meanwhile; a pass that was not is run again, up to a limit). Wall "
        "time is the whole call, starting and stopping the processes (or Ray) included. "
        "Start-up is the time to the first record less that run's own time (spawning "
        "workers, imports, starting Ray); shut-down is from the last record to the end. "
        "Busy = run time summed over runs / (workers × wall). Other load = cores used by "
        "processes outside the benchmark during the pass (the machine is shared; each pass "
        "waits for it to be quiet first, but cannot stop others from starting).",
        "",
        "| engine | wall (s) | start-up (s) | shut-down (s) | median run (s) "
        "| run time summed (s) | busy | other load (cores) "
        "| every pass: wall (s) (other load) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in zip(LABELS, best, strict=True):
        walls = ", ".join(f"{p.wall:.1f} ({p.other_load:.2f})" for p in passes[label])
        lines.append(
            f"| {m.label} | {m.wall:.1f} | {m.startup:.1f} | {m.shutdown:.1f} | "
            f"{m.median:.2f} | {sum(m.run_seconds):.0f} | {m.busy:.0%} | "
            f"{m.other_load:.2f} | {walls} |"
        )
    lines += [
        "",
        f"- Speed-up from 1 to 2 local workers: **{speed_up:.2f}×** ({one.wall:.1f} s → "
        f"{two.wall:.1f} s). Halving the 1-worker run time exactly, plus the 2-worker start-up "
        f"and shut-down, would give {ideal:.1f} s ({one.wall / ideal:.2f}×); the other "
        f"{max(0.0, two.wall - ideal):.1f} s are the last runs' tail and scheduling. Median "
        f"run, alone → two at once: {one.median:.2f} s → {two.median:.2f} s "
        f"({slowdown:.2f}×).",
        f"- Ray (2 CPUs, started by the sweep) / local (2 workers): **{ratio:.2f}×** "
        f"({on_ray.wall:.1f} s vs {two.wall:.1f} s); Ray's start-up is {on_ray.startup:.1f} s "
        f"(local: {two.startup:.1f} s), its shut-down {on_ray.shutdown:.1f} s, its median run "
        f"{on_ray.median:.2f} s.",
        f"- Identical results: **{'yes' if identical else 'no'}** — every pass of every engine "
        f"compared with the first 1-worker pass, record by record without timings: "
        f"{sum(d == 0 for d in diffs)} of {len(diffs)} passes equal"
        + ("" if identical else f" ({max(diffs)} of {n_runs} records differ at worst)")
        + ".",
        f"- The runs take {min(one.run_seconds):.2f}–{max(one.run_seconds):.2f} s each alone, "
        f"{sum(one.run_seconds):.0f} s in all.",
    ]
    if loaded > 0.1:
        lines.append(
            f"- Caution: no clean pass for every engine; other processes used up to "
            f"{loaded:.2f} cores during a shown pass, whose times are slower than on an idle "
            "machine."
        )
    lines += [
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| 2 local workers ≥ {SPEED_UP_TARGET}× faster than 1 | {speed_up:.2f}× | "
        f"{met(speed_up >= SPEED_UP_TARGET)} |",
        f"| Ray within {RAY_RATIO_TARGET}× of the local runner | {ratio:.2f}× | "
        f"{met(ratio <= RAY_RATIO_TARGET)} |",
        f"| identical results from all engines | {'yes' if identical else 'no'} | "
        f"{met(identical)} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=GRID, help="sweep spec (TOML)")
    parser.add_argument(
        "--quick", action="store_true", help="2 seeds only; prints the section, no doc"
    )
    parser.add_argument("--repeats", type=int, default=1, help="passes per engine (best shown)")
    parser.add_argument(
        "--wait", type=float, default=600, help="most seconds to wait for a quiet machine"
    )
    parser.add_argument(
        "--tries", type=int, default=3, help="most passes per engine and repeat while not clean"
    )
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--save", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument(
        "--from-saved", type=Path, help="render the section from a --save file, run nothing"
    )
    args = parser.parse_args()
    if args.from_saved:
        saved = json.loads(args.from_saved.read_text())
        passes = {k: [Measured(**m) for m in v] for k, v in saved["passes"].items()}
        body = render(passes, saved["spec"], saved["runs"], saved["description"])
        print(body)
        if not args.no_doc:
            print(write_section("sweep", body))
        return
    from modeltheft.experiments.ray_engine import RayEngine

    engines: list[tuple[str, int, Callable[[], Engine]]] = [
        (LABELS[0], 1, lambda: LocalEngine(1)),
        (LABELS[1], 2, lambda: LocalEngine(2)),
        (LABELS[2], 2, lambda: RayEngine(workers=2)),
    ]
    passes: dict[str, list[Measured]] = {label: [] for label in LABELS}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-spec-") as scratch:
        spec = quick_spec(args.spec, 2, Path(scratch)) if args.quick else args.spec
        loaded = load_spec(spec)
        n_runs = len(loaded.tasks())
        description = (
            f"{loaded.seeds} seeds × {len(loaded.defenses)} defenses × {len(loaded.attacks)} "
            f"attacks × {len(loaded.budgets)} budgets × {len(loaded.victims)} victim(s)"
        )
        print(f"{spec}: {n_runs} runs ({description})", flush=True)
        for _ in range(args.repeats):
            for label, workers, make in engines:
                for _ in range(args.tries):
                    other = wait_quiet(args.wait)
                    print(f"(other load before the pass: {other:.2f} cores)", flush=True)
                    passes[label].append(measure(label, workers, make, spec))
                    if passes[label][-1].other_load < CLEAN:
                        break
    try:
        name = str(args.spec.resolve().relative_to(ROOT))
    except ValueError:
        name = str(args.spec)
    name += " (--quick)" if args.quick else ""
    if args.save:
        saved = {"spec": name, "runs": n_runs, "description": description}
        saved["passes"] = {k: [asdict(m) for m in v] for k, v in passes.items()}
        args.save.write_text(json.dumps(saved))
    body = render(passes, name, n_runs, description)
    print(body)
    if not (args.quick or args.no_doc):
        print(write_section("sweep", body))


if __name__ == "__main__":
    main()
