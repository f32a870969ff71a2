"""Sweep specs: victims × defenses × attacks × budgets × seeds, read from TOML.

A run is one cell of that grid; it is a pure function of its :class:`Task`, so every engine
(local processes, Ray) computes the same numbers, and a run's id (a hash of the task) lets a
sweep skip what is already done.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modeltheft.attacks.labels import parse_label_mode
from modeltheft.attacks.strategies import make_strategy
from modeltheft.attacks.substitutes import make_substitute
from modeltheft.defenses.presets import load_pipeline, pipeline_from_dict, preset_names
from modeltheft.errors import ConfigError
from modeltheft.tomlfile import read_toml
from modeltheft.victim.train import FAMILIES

SPEC_KEYS = {"name", "seed", "seeds", "budgets", "victims", "defenses", "attacks", "honest"}
ATTACK_KEYS = {"name", "strategy", "params", "labels", "top_k", "substitute", "batch_size"}


@dataclass(frozen=True)
class AttackEntry:
    """One attack of a sweep: a strategy with parameters, a label mode, a substitute."""

    name: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    labels: str = "hard"
    top_k: int = 3
    substitute: str = "lr"
    batch_size: int = 50

    @property
    def uses_real_digits(self) -> bool:
        """Attacks seeded with attacker-owned real digits face a victim trained without them."""
        return self.strategy == "jacobian" or int(self.params.get("seed_digits", 0) or 0) > 0


@dataclass(frozen=True)
class DefenseEntry:
    """A named defense: a preset, or stages given inline or in a TOML file (resolved here)."""

    name: str
    config: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One run: everything it needs, and nothing else, so that its id is its content."""

    sweep: str
    victim: str
    defense: DefenseEntry
    attack: AttackEntry
    budget: int
    seed_index: int
    root_seed: int
    honest: bool = True

    @property
    def id(self) -> str:
        """Stable hash of the task's content (16 hex digits)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, as stored in each result record."""
        return asdict(self)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec."""

    name: str
    seed: int
    seeds: int
    budgets: tuple[int, ...]
    victims: tuple[str, ...]
    defenses: tuple[DefenseEntry, ...]
    attacks: tuple[AttackEntry, ...]
    honest: bool = True

    def tasks(self) -> list[Task]:
        """Every run of the grid, in a fixed order (seed varies fastest)."""
        return [
            Task(self.name, v, d, a, b, s, self.seed, self.honest)
            for v in self.victims
            for d in self.defenses
            for a in self.attacks
            for b in self.budgets
            for s in range(self.seeds)
        ]


def _int(name: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _defense(entry: Any, folder: Path) -> DefenseEntry:
    if isinstance(entry, str):
        if entry in preset_names():
            load_pipeline(entry)
            return DefenseEntry(entry, {"preset": entry})
        path = (folder / entry).resolve()
        if not path.is_file():
            raise ConfigError(f"defense {entry!r} is neither a preset nor a TOML file")
        config = read_toml(path)
        pipeline_from_dict(config, path.stem)
        return DefenseEntry(path.stem, config)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        config = {k: v for k, v in entry.items() if k != "name"}
        pipeline_from_dict(config, entry["name"])
        return DefenseEntry(entry["name"], config)
    raise ConfigError(f"a defense is a preset name, a TOML path or a table with a name: {entry!r}")


def _attack(entry: Any) -> AttackEntry:
    if not isinstance(entry, dict):
        raise ConfigError(f"each [[attacks]] entry must be a table, got {entry!r}")
    unknown = sorted(set(entry) - ATTACK_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in an attack: {', '.join(unknown)}")
    if not isinstance(entry.get("strategy"), str):
        raise ConfigError(f"an attack needs a strategy: {entry!r}")
    params = entry.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"params must be a table, got {params!r}")
    attack = AttackEntry(
        name=str(entry.get("name", entry["strategy"])),
        strategy=entry["strategy"],
        params=params,
        labels=entry.get("labels", "hard"),
        top_k=_int("top_k", entry.get("top_k", 3)),
        substitute=entry.get("substitute", "lr"),
        batch_size=_int("batch_size", entry.get("batch_size", 50)),
    )
    parse_label_mode(attack.labels, attack.top_k)
    make_strategy(attack.strategy, **attack.params)
    make_substitute(attack.substitute, 0)
    return attack


def parse_spec(data: dict[str, Any], folder: Path = Path(".")) -> SweepSpec:
    """A spec from parsed TOML; defense files are resolved relative to ``folder``."""
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in the sweep spec: {', '.join(unknown)}")
    budgets = data.get("budgets", [300])
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError(f"budgets must be a non-empty list, got {budgets!r}")
    victims = data.get("victims", ["rf"])
    if not isinstance(victims, list) or not victims:
        raise ConfigError(f"victims must be a non-empty list, got {victims!r}")
    bad = [v for v in victims if v not in FAMILIES]
    if bad:
        raise ConfigError(f"unknown victim(s) {bad}; choose from {', '.join(FAMILIES)}")
    defenses = tuple(_defense(d, folder) for d in data.get("defenses", ["none"]))
    attacks = tuple(_attack(a) for a in data.get("attacks", []))
    if not attacks:
        raise ConfigError("a sweep needs at least one [[attacks]] table")
    for kind, names in (
        ("defense", [d.name for d in defenses]),
        ("attack", [a.name for a in attacks]),
    ):
        if len(set(names)) != len(names):
            raise ConfigError(f"{kind} names must be unique, got {names}")
    honest = data.get("honest", True)
    if not isinstance(honest, bool):
        raise ConfigError(f"honest must be true or false, got {honest!r}")
    return SweepSpec(
        name=str(data.get("name", "sweep")),
        seed=_int("seed", data.get("seed", 0), low=0),
        seeds=_int("seeds", data.get("seeds", 1)),
        budgets=tuple(_int("budget", b) for b in budgets),
        victims=tuple(victims),
        defenses=defenses,
        attacks=attacks,
        honest=honest,
    )


def load_spec(path: Path) -> SweepSpec:
    """Read and check a sweep spec TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec not found: {path}")
    return parse_spec(read_toml(path), path.parent)
