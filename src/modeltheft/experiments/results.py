"""A sweep's results store: one JSON record per run in ``RUN_DIR/results.jsonl``.

Appends are flushed and fsynced one record at a time, so a killed sweep loses at most the
run in flight; a torn last line is cut off when the store is opened again.
"""

import json
import os
from pathlib import Path
from typing import Any

from modeltheft.errors import ConfigError

RESULTS = "results.jsonl"


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

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
