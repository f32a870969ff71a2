"""An append-only JSON-lines log of paid-for answers, so an interrupted attack never pays twice.

A log tied to a target starts with a line ``{"target": {"protocol", "url", "model_name"}}``
(one more such line for each target a ``--force`` run added); reusing it against any other
target is a ConfigError, so one model's answers never pass for another's.
"""

import hashlib
import json
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np

from modeltheft.errors import ConfigError


def row_hash(row: np.ndarray) -> str:
    """A stable key for one query row (float64 bytes)."""
    return hashlib.sha256(np.ascontiguousarray(row, dtype="<f8").tobytes()).hexdigest()


def _shown(target: dict[str, Any]) -> str:
    model = f" model {target['model_name']!r}" if target.get("model_name") else ""
    return f"{target.get('protocol')} {target.get('url')}{model}"


def log_target(protocol: str, url: str, model_name: str | None) -> dict[str, Any]:
    """What a log is tied to: the protocol, the base URL and the model name."""
    return {"protocol": protocol, "url": url.rstrip("/"), "model_name": model_name}


class QueryLog:
    """Answers by query hash; each logged answer is reused once, in the order it was paid for.

    ``target`` (see :func:`log_target`) ties the log to what answered it: an existing log of
    another target is refused unless ``force``, which records the new target beside the old.
    """

    def __init__(
        self, path: Path | None = None, target: dict[str, Any] | None = None, force: bool = False
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.target = target
        self.targets: list[dict[str, Any]] = []
        """The targets recorded in the log so far."""
        self._pending: dict[str, deque[dict]] = defaultdict(deque)
        self.loaded = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)
        self._check(force)

    def _check(self, force: bool) -> None:
        if self.target is None or not self.loaded or self.target in self.targets:
            return
        if not self.targets:
            return  # an older log, not tied to a target: nothing to check against
        if not force:
            raise ConfigError(
                f"{self.path} holds {self.loaded} answers of {_shown(self.targets[0])}, not of "
                f"{_shown(self.target)}: use another --out, or --force to reuse them anyway"
            )

    def _load(self, path: Path) -> None:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("target"), dict):
                    self.targets.append(record["target"])
                    continue
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
            if self.target is not None and self.target not in self.targets:
                handle.write(json.dumps({"target": self.target}) + "\n")
                self.targets.append(self.target)
            for row, record in zip(rows, records, strict=True):
                handle.write(json.dumps({"query": row_hash(row), **record}) + "\n")
            handle.flush()
