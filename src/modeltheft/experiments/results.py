"""A sweep's results store: one JSON record per run in ``RUN_DIR/results.jsonl``.

Appends are flushed and fsynced one record at a time, so a killed sweep loses at most the
run in flight; a torn last line is cut off when the store is opened again.
"""

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from modeltheft.errors import ConfigError
from modeltheft.tasks import Task

RESULTS = "results.jsonl"


def task_info(task: Task, eval_rows: int | None = None) -> dict[str, Any]:
    """What a report needs to know of a run's task: name, kind (image or tabular), shape."""
    return {
        "name": task.name,
        "kind": "image" if task.is_image else "tabular",
        "n_features": task.n_features,
        "classes": task.classes.tolist(),
        "image_shape": list(task.image_shape) if task.image_shape else None,
        "eval_rows": eval_rows,
    }


@dataclass
class RunRecord:
    """One run's record, one JSON line of ``results.jsonl`` (sweeps and the demo write it).

    ``task`` is the run's description (sweep, task name, victim, defense, attack, budget,
    seed index, root seed, honest); ``task_info`` the problem it ran on (:func:`task_info`;
    records older than tasks have none: they are digits). ``metrics`` holds ``fidelity``,
    ``accuracy``, ``curve``, ``answered``, ``refused``, ``honest_accuracy``,
    ``honest_refused``, ``flagged_after``, ``detectors``, the watermark figures when the
    defense watermarks, ``samples`` (image tasks only) and, for other tasks, ``per_class``
    and ``confusion`` (:func:`modeltheft.measure.agreement`).
    """

    id: str
    task: dict[str, Any]
    seed: dict[str, Any]
    version: str
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    timings: dict[str, Any] = field(default_factory=lambda: {"seconds": None})
    task_info: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the run finished."""
        return self.status == "ok"

    @property
    def task_name(self) -> str:
        """The task the run measured on (``digits`` for records older than tasks)."""
        if self.task_info is not None:
            return str(self.task_info.get("name", "digits"))
        return str(self.task.get("task", "digits"))

    @property
    def is_image(self) -> bool:
        """Whether the run's task is an image task (old records: digits, so yes)."""
        return self.task_info is None or self.task_info.get("kind") == "image"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``task_info`` left out when unknown)."""
        out = asdict(self)
        if out["task_info"] is None:
            del out["task_info"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """A record from its JSON form; a ConfigError when it lacks an id or a task."""
        if not isinstance(data, dict) or "id" not in data or not isinstance(data.get("task"), dict):
            raise ConfigError(f"not a run record (needs an id and a task): {str(data)[:80]}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("seed", {})
        values.setdefault("version", "?")
        values["id"] = str(values["id"])
        return cls(**values)


class ResultsStore:
    """Append-only run records; the latest record of a run id wins."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir} exists and is not a folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / RESULTS
        self._repair()

    def _repair(self) -> None:
        """Cut a torn last line (a sweep killed mid-write)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)

    def records(self) -> list[dict[str, Any]]:
        """The latest record of every run, in the order runs first appeared."""
        if not self.path.exists():
            return []
        latest: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{self.path}:{number} is not a JSON record") from None
            if not isinstance(record, dict) or "id" not in record:
                raise ConfigError(f"{self.path}:{number} has no run id")
            latest[record["id"]] = record
        return list(latest.values())

    def finished(self) -> set[str]:
        """Ids of the runs that completed (failed runs are tried again)."""
        return {r["id"] for r in self.records() if r.get("status") == "ok"}

    def append(self, record: "RunRecord | dict[str, Any]") -> None:
        """Write one record durably."""
        if isinstance(record, RunRecord):
            record = record.to_dict()
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
