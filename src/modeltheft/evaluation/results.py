"""Result records written beside every run's outputs."""

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modeltheft import __version__


@dataclass(frozen=True)
class ScenarioResult:
    """One attack against one defense, averaged over repeats when there are several."""

    name: str
    defense: str
    attack: str
    budget: int
    answered: int
    query_success_rate: float
    stolen_accuracy: float
    fidelity: float
    stolen_accuracy_std: float | None = None
    fidelity_std: float | None = None
    runs: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_runs(
        cls, name: str, defense: str, attack: str, budget: int, runs: list[dict[str, float]]
    ) -> "ScenarioResult":
        """Mean (and std, for more than one run) of per-run metrics."""
        acc = np.array([r["stolen_accuracy"] for r in runs])
        fid = np.array([r["fidelity"] for r in runs])
        answered = np.array([r["answered"] for r in runs])
        many = len(runs) > 1
        return cls(
            name=name,
            defense=defense,
            attack=attack,
            budget=budget,
            answered=round(float(answered.mean())),
            query_success_rate=float(answered.mean() / budget),
            stolen_accuracy=float(acc.mean()),
            fidelity=float(fid.mean()),
            stolen_accuracy_std=float(acc.std(ddof=1)) if many else None,
            fidelity_std=float(fid.std(ddof=1)) if many else None,
            runs=runs,
        )


def environment() -> dict[str, str]:
    """Versions that a figure depends on."""
    import sklearn

    return {
        "modeltheft": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def write_json(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as indented JSON, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def scenario_dict(result: ScenarioResult) -> dict[str, Any]:
    """The JSON form of a scenario."""
    return asdict(result)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write dict rows as CSV with the first row's keys as header."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["spent"])
        writer.writeheader()
        writer.writerows(rows)
    return path
