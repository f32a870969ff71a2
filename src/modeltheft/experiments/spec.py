"""Sweep specs: tasks × victims × defenses × attacks × budgets × seeds, read from TOML.

A run is one cell of that grid; it is a pure function of its :class:`Run`, so every engine
(local processes, Ray) computes the same numbers, and a run's id (a hash of the run) lets a
sweep skip what is already done. ``task = "wine"`` (or a list of tasks, one more axis of the
grid) names the problem; the default is ``digits``, the lab.
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
from modeltheft.tasks import DEFAULT_TASK, get_task
from modeltheft.tomlfile import read_toml
from modeltheft.victim.train import FAMILIES

SPEC_KEYS = {"name", "task", "seed", "seeds", "budgets", "victims", "defenses", "attacks", "honest"}
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
    def uses_public_data(self) -> bool:
        """Attacks seeded with the attacker's own real rows face a victim trained without them.

        A strategy that says so (``uses_public_data``) decides; otherwise Jacobian and a
        positive ``seed_digits`` do (the lab's rule).
        """
        declared = getattr(make_strategy(self.strategy, **self.params), "uses_public_data", None)
        if isinstance(declared, bool):
            return declared
        return self.strategy == "jacobian" or int(self.params.get("seed_digits", 0) or 0) > 0


@dataclass(frozen=True)
class DefenseEntry:
    """A named defense: a preset, or stages given inline or in a TOML file (resolved here)."""

    name: str
    config: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One run: everything it needs, and nothing else, so that its id is its content.

    ``task`` is a built-in task's name or a task file's absolute path.
    """

    sweep: str
    victim: str
    defense: DefenseEntry
    attack: AttackEntry
    budget: int
    seed_index: int
    root_seed: int
    honest: bool = True
    task: str = DEFAULT_TASK

    @property
    def id(self) -> str:
        """Stable hash of the run's content (16 hex digits).

        The task is hashed only when it is not ``digits``, so digits runs keep the ids they
        had before tasks existed (a finished sweep stays finished).
        """
        content = asdict(self)
        if self.task == DEFAULT_TASK:
            del content["task"]
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
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
    task_names: tuple[str, ...] = (DEFAULT_TASK,)

    def tasks(self) -> list[Run]:
        """Every run of the grid, in a fixed order (task slowest, seed fastest)."""
        return [
            Run(self.name, v, d, a, b, s, self.seed, self.honest, t)
            for t in self.task_names
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


def _tasks(value: Any, folder: Path) -> tuple[str, ...]:
    """Task names (or task files, resolved against the spec's folder), each loaded once."""
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"task must be a task name or a list of them, got {value!r}")
    resolved = []
    for name in names:
        if name.endswith(".toml"):
            name = str((folder / name).resolve())
        get_task(name)  # an unknown name or a bad file fails here, in one line
        resolved.append(name)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"task names must be unique, got {names}")
    return tuple(resolved)


def _check_attack_fits(attack: AttackEntry, task: str) -> None:
    """A ConfigError now if a strategy says it cannot attack ``task`` (e.g. image-only)."""
    check = getattr(make_strategy(attack.strategy, **attack.params), "check_task", None)
    if check is not None:
        check(get_task(task))


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
    task_names = _tasks(data.get("task", DEFAULT_TASK), folder)
    for name in task_names:
        for attack in attacks:
            _check_attack_fits(attack, name)
    return SweepSpec(
        name=str(data.get("name", "sweep")),
        seed=_int("seed", data.get("seed", 0), low=0),
        seeds=_int("seeds", data.get("seeds", 1)),
        budgets=tuple(_int("budget", b) for b in budgets),
        victims=tuple(victims),
        defenses=defenses,
        attacks=attacks,
        honest=honest,
        task_names=task_names,
    )


Task = Run
"""The old name of :class:`Run` (before ``modeltheft.tasks.Task``); remove when unused."""


def load_spec(path: Path) -> SweepSpec:
    """Read and check a sweep spec TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec not found: {path}")
    return parse_spec(read_toml(path), path.parent)
