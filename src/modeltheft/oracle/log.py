"""An append-only JSON-lines log of paid-for answers, so an interrupted attack never pays twice."""

import hashlib
import json
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

from modeltheft.errors import ConfigError


def row_hash(row: np.ndarray) -> str:
    """A stable key for one query row (float64 bytes)."""
    return hashlib.sha256(np.ascontiguousarray(row, dtype="<f8").tobytes()).hexdigest()


class QueryLog:
    """Answers by query hash; each logged answer is reused once, in the order it was paid for."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._pending: dict[str, deque[dict]] = defaultdict(deque)
        self.loaded = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["query"]
            except (json.JSONDecodeError, KeyError, TypeError):
                # A torn last line is what a kill mid-write leaves; anything else is corruption.
                if number == len(lines):
                    continue
                raise ConfigError(f"query log {path} is corrupt at line {number}") from None
            self._pending[key].append(record)
            self.loaded += 1

    def take(self, row: np.ndarray) -> dict | None:
        """A previously paid-for answer to ``row``, removed from the pending set, or None."""
        queue = self._pending.get(row_hash(row))
        return queue.popleft() if queue else None

    def append(self, rows: np.ndarray, records: list[dict]) -> None:
        """Record freshly paid-for answers (one record per row)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            for row, record in zip(rows, records, strict=True):
                handle.write(json.dumps({"query": row_hash(row), **record}) + "\n")
            handle.flush()
