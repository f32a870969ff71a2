"""``modeltheft sweep``: run a spec's grid on an engine, skipping finished runs."""

import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from modeltheft.experiments.engines import Engine
from modeltheft.experiments.results import ResultsStore
from modeltheft.experiments.spec import load_spec


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep did."""

    total: int
    skipped: int
    ran: int
    failed: int
    seconds: float


class LiveSummary:
    """Mean fidelity (at each run's budget) per defense × attack, updated as records arrive."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)
        for record in records:
            self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        value = record.get("metrics", {}).get("fidelity")
        if record.get("status") == "ok" and value is not None:
            task = record["task"]
            self.values[(task["defense"]["name"], task["attack"]["name"])].append(value)

    def table(self) -> Table:
        defenses = sorted({d for d, _ in self.values})
        attacks = sorted({a for _, a in self.values})
        table = Table(title="mean fidelity so far (runs)", title_justify="left")
        table.add_column("attack")
        for defense in defenses:
            table.add_column(defense, justify="right")
        for attack in attacks:
            cells = []
            for defense in defenses:
                values = self.values.get((defense, attack), [])
                cells.append(f"{np.mean(values):.3f} ({len(values)})" if values else "—")
            table.add_row(attack, *cells)
        return table


def sweep(
    spec_path: Path, out: Path, engine: Engine, console: Console | None = None
) -> SweepSummary:
    """Run every unfinished run of ``spec_path`` on ``engine``; records go to ``out``."""
    console = console or Console(soft_wrap=True)
    spec = load_spec(spec_path)
    store = ResultsStore(out)
    shutil.copyfile(spec_path, store.run_dir / "spec.toml")
    tasks = spec.tasks()
    previous = store.records()
    done = store.finished()
    todo = [t for t in tasks if t.id not in done]
    console.print(
        f"sweep {spec.name!r}: {len(tasks)} runs, {len(tasks) - len(todo)} already finished, "
        f"{len(todo)} to run on {engine.describe()}; results in {store.path}"
    )
    summary = LiveSummary([r for r in previous if r["id"] in {t.id for t in tasks}])
    failed = 0
    start = time.perf_counter()
    progress = Progress(
        TextColumn("runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    bar = progress.add_task("runs", total=len(todo))
    with Live(Group(progress, summary.table()), console=console, refresh_per_second=4) as live:

        def on_result(record: dict[str, Any]) -> None:
            nonlocal failed
            store.append(record)
            failed += record.get("status") != "ok"
            summary.add(record)
            progress.advance(bar)
            live.update(Group(progress, summary.table()))

        engine.run(todo, on_result)
    console.line()
    seconds = time.perf_counter() - start
    console.print(
        f"done: {len(todo) - failed} runs in {seconds:.1f} s"
        + (f", {failed} failed (see their 'error'; a re-run tries them again)" if failed else "")
    )
    return SweepSummary(len(tasks), len(tasks) - len(todo), len(todo), failed, seconds)
