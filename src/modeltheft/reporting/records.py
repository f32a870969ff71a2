"""Run records of a sweep folder as typed objects: the latest record per run, grouped by task.

A record is one line of ``RUN_DIR/results.jsonl`` (see :mod:`modeltheft.experiments.run`).
Its ``task`` holds the run's grid cell (``defense.name``, ``attack.name``, ``budget``, ...,
and ``task``: the name of the problem or the path of its task file); ``task_info`` (newer
records) describes the problem: ``name``, ``kind`` (``"image"``/``"tabular"``),
``image_shape``, ``eval_rows``. Records without either are of the lab's ``digits`` task.
Tabular runs may carry ``metrics.per_class`` ``{label: agreement}`` and
``metrics.confusion`` ``{"classes": [...], "matrix": [[...]]}``.
"""

import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeltheft.errors import ConfigError
from modeltheft.experiments.results import RESULTS


@dataclass(frozen=True)
class TaskInfo:
    """The problem a run is about, as far as its record says."""

    key: str
    """What the run names: a built-in task's name or a task file's path."""
    name: str
    kind: str
    """``"image"`` or ``"tabular"``."""
    image_shape: tuple[int, ...] | None = None
    eval_rows: int | None = None
    explicit: bool = True
    """False for old records that name no task (they are digits)."""
    described: bool = False
    """Whether the record carried ``task_info`` (else the kind is a guess from the name)."""

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def eval_text(self) -> str:
        """What fidelity is measured on: ``540 test digits``, ``178 evaluation rows``."""
        if self.name == "digits":
            return f"{self.eval_rows or 540} test digits"
        return f"{self.eval_rows} evaluation rows" if self.eval_rows else "evaluation rows"

    @property
    def items(self) -> str:
        """What one evaluation row is called: ``test digits``, ``evaluation images``."""
        if self.name == "digits":
            return "test digits"
        return "evaluation images" if self.is_image else "evaluation rows"


DIGITS = TaskInfo("digits", "digits", "image", (8, 8), 540, explicit=False)
"""Records written before tasks existed are all of the OWASP lab's digits."""


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list | tuple) and value and all(isinstance(v, int) for v in value):
        return tuple(int(v) for v in value)
    return None


def task_info(record: Mapping[str, Any]) -> TaskInfo:
    """The problem a record is about (tolerant: what it does not say is guessed or left out)."""
    spec = record.get("task")
    named = spec.get("task") if isinstance(spec, Mapping) else None
    info = record.get("task_info")
    if not isinstance(info, Mapping):
        info = named if isinstance(named, Mapping) else None
    name = info.get("name") if info is not None else None
    key = named if isinstance(named, str) and named else name
    if not isinstance(key, str) or not key:
        return DIGITS
    if not isinstance(name, str) or not name:
        name = Path(key).stem if key.endswith(".toml") else key
    about: Mapping[str, Any] = info or {}
    shape = _shape(about.get("image_shape"))
    kind = about.get("kind")
    if kind not in ("image", "tabular"):
        kind = "image" if shape is not None or name == DIGITS.name else "tabular"
    rows = about.get("eval_rows")
    rows = rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else None
    if name == DIGITS.name:
        shape, rows = shape or DIGITS.image_shape, rows or DIGITS.eval_rows
    image = kind == "image"
    return TaskInfo(key, name, kind, shape if image else None, rows, described=info is not None)


@dataclass(frozen=True)
class Run:
    """One record, with the grid fields the report groups by."""

    id: str
    status: str
    error: str | None
    sweep: str
    victim: str
    defense: str
    attack: str
    budget: int
    seed_index: int
    version: str
    seconds: float | None
    metrics: dict[str, Any]
    task: dict[str, Any]
    problem: TaskInfo = DIGITS
    """The task (data set) the run is about."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def metric(self, name: str) -> float | None:
        """A scalar metric as a float, or None when it is missing."""
        value = self.metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def per_class(self) -> dict[str, float | None]:
        """``metrics.per_class``: agreement with the victim per class label (``{}`` if none;
        None for a class the evaluation rows did not hold)."""
        value = self.metrics.get("per_class")
        if not isinstance(value, Mapping):
            return {}
        return {
            str(k): float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
            for k, v in value.items()
        }

    def confusion(self) -> tuple[list[str], np.ndarray] | None:
        """``metrics.confusion``: class labels and the victim (rows) × copy (columns) counts."""
        value = self.metrics.get("confusion")
        if not isinstance(value, Mapping):
            return None
        classes, matrix = value.get("classes"), value.get("matrix")
        if not isinstance(classes, list) or not isinstance(matrix, list):
            return None
        try:
            counts = np.asarray(matrix, dtype=float)
        except (TypeError, ValueError):
            return None
        if counts.shape != (len(classes), len(classes)) or not np.isfinite(counts).all():
            return None
        return [str(c) for c in classes], counts


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The latest record of every run in ``run_dir/results.jsonl``, in order of appearance.

    Read-only, unlike :class:`~modeltheft.experiments.results.ResultsStore` (which repairs a
    torn last line): a report may be built while a sweep still appends, so an unfinished
    last line is skipped, never cut.
    """
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a line still being written
    latest: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{number} is not a JSON record") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ConfigError(f"{path}:{number} has no run id")
        latest[str(record["id"])] = record
    return list(latest.values())


def parse_run(record: Mapping[str, Any], where: str) -> Run:
    """A record as a :class:`Run`; a ConfigError when it is not a sweep record."""
    task = record.get("task")
    try:
        if not isinstance(task, dict):
            raise TypeError("no task")
        seconds = (record.get("timings") or {}).get("seconds")
        return Run(
            id=str(record["id"]),
            status=str(record.get("status", "failed")),
            error=None if record.get("error") is None else str(record["error"]),
            sweep=str(task.get("sweep", "")),
            victim=str(task.get("victim", "")),
            defense=str(task["defense"]["name"]),
            attack=str(task["attack"]["name"]),
            budget=int(task["budget"]),
            seed_index=int(task.get("seed_index", 0)),
            version=str(record.get("version", "?")),
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
            metrics=record.get("metrics") or {},
            task=task,
            problem=task_info(record),
        )
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"run {record.get('id')!r} in {where} is not a sweep record "
            "(it needs task.defense.name, task.attack.name and task.budget)"
        ) from None


def ordered(seen: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    """``seen`` without repeats, those named in ``preferred`` first in its order."""
    names = list(dict.fromkeys(seen))
    rank = {name: i for i, name in enumerate(preferred or [])}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def spec_order(run_dir: Path) -> tuple[str | None, dict[str, list[str]]]:
    """The copied ``spec.toml``'s text and its name, defense and attack order (best effort)."""
    path = run_dir / "spec.toml"
    if not path.is_file():
        return None, {}
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None, {}
    order: dict[str, list[str]] = {"name": [str(data.get("name", run_dir.name))]}
    defenses = data.get("defenses", [])
    attacks = data.get("attacks", [])
    if isinstance(defenses, list):
        order["defenses"] = [
            Path(d).stem if isinstance(d, str) else str(d.get("name", ""))
            for d in defenses
            if isinstance(d, str | dict)
        ]
    if isinstance(attacks, list):
        order["attacks"] = [
            str(a.get("name", a.get("strategy", ""))) for a in attacks if isinstance(a, dict)
        ]
    return text, order


class Sweep:
    """Runs of a run folder (or of one task in it), in the spec's defense and attack order."""

    def __init__(
        self, run_dir: Path, runs: Sequence[Run], order: Mapping[str, list[str]] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.order = dict(order or {})
        self.runs = list(runs)
        self.ok = [r for r in self.runs if r.ok]
        self.failed = [r for r in self.runs if not r.ok]
        self.defenses = ordered((r.defense for r in self.runs), self.order.get("defenses"))
        self.attacks = ordered((r.attack for r in self.runs), self.order.get("attacks"))
        self.budgets = sorted({r.budget for r in self.runs})
        first: dict[str, TaskInfo] = {}
        for run in self.runs:  # the first description a record gives (else the first guess)
            known = first.get(run.problem.key)
            if known is None or (run.problem.described and not known.described):
                first[run.problem.key] = run.problem
        self.tasks = list(first.values())
        """One :class:`TaskInfo` per task, in order of appearance."""
        names = list(dict.fromkeys(r.sweep for r in self.runs if r.sweep))
        self.name = ", ".join(names) or self.order.get("name", [self.run_dir.name])[0]

    def by_task(self) -> list[tuple[TaskInfo, "Sweep"]]:
        """One sub-sweep per task, in order of appearance (the same order of defenses)."""
        order = {**self.order, "defenses": self.defenses, "attacks": self.attacks}
        runs = {t.key: [r for r in self.runs if r.problem.key == t.key] for t in self.tasks}
        return [(info, Sweep(self.run_dir, runs[info.key], order)) for info in self.tasks]

    def cells(self, runs: Sequence[Run] | None = None) -> dict[tuple[str, str], list[Run]]:
        """Successful runs (or ``runs``) per (defense, attack), in the spec's order."""
        grouped: dict[tuple[str, str], list[Run]] = {}
        for defense in self.defenses:
            for attack in self.attacks:
                chosen = [
                    r
                    for r in (self.ok if runs is None else runs)
                    if r.defense == defense and r.attack == attack
                ]
                if chosen:
                    grouped[(defense, attack)] = chosen
        return grouped


def load_sweep(run_dir: Path) -> tuple[Sweep, str | None]:
    """The run folder's runs and its copied spec text; a ConfigError when there are none."""
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    if not records:
        raise ConfigError(f"no run records in {run_dir}")
    where = str(run_dir / RESULTS)
    text, order = spec_order(run_dir)
    return Sweep(run_dir, [parse_run(r, where) for r in records], order), text
