"""The OWASP ML05 lab end to end: victim, HTTP service per preset, the lab's attack, metrics.

On ``digits`` (the default) this is the OWASP lab, figure for figure. On another task the
victim (a random forest) is trained on that task; the lab's own attack (``owasp-synthetic``)
draws digit-like images, so a non-image task is attacked with the schema-only ``uniform``
strategy (uniform within the published bounds), with the lab's LR substitute.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.attacks.extraction import ExtractionResult
from modeltheft.attacks.spec import default_checkpoints
from modeltheft.evaluation.metrics import defense_effectiveness
from modeltheft.evaluation.results import ScenarioResult, environment, scenario_dict, write_json
from modeltheft.experiments.results import task_info
from modeltheft.measure import CopyEvaluator, EvalRows, eval_rows, honest_over_api
from modeltheft.oracle import HttpOracle
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import DEFAULT_TASK, Task, get_task
from modeltheft.victim import TrainedVictim, save_victim, train_victim

SCENARIOS = (("no_defense", "none"), ("lab_defenses", "lab"))
ATTACK = "owasp-synthetic"
TABULAR_ATTACK = "uniform"
SUBSTITUTE = "lr"
FAMILY = "rf"

Progress = Callable[[str, int, int, int], None]
"""Called as ``progress(scenario, repeat, spent, budget)``."""


def lab_attack(task: Task) -> str:
    """The lab's attack on ``task``: owasp-synthetic on images, uniform in the bounds otherwise."""
    return ATTACK if task.is_image else TABULAR_ATTACK


def lab_victim(task: Task) -> TrainedVictim:
    """The lab's victim (a random forest) trained on ``task``'s training rows."""
    return train_victim(FAMILY, task=task)


def _substitute(task: Task, oracle: HttpOracle) -> ClassifierMixin:
    """The lab's LR substitute; on a tabular task it standardises the API's published
    features first (the features' scales differ by orders of magnitude)."""
    if task.is_image:
        return make_substitute(SUBSTITUTE)
    return make_substitute(SUBSTITUTE, task=oracle.discover())


@dataclass
class LabRun:
    """Everything the demo reports and plots."""

    victim: ClassifierMixin
    victim_accuracy: float
    scenarios: list[ScenarioResult]
    effectiveness: float
    repeats: int
    seed: int
    budget: int
    first_models: dict[str, ClassifierMixin] = field(default_factory=dict)
    honest: dict[str, dict[str, float]] = field(default_factory=dict)
    stolen: dict[str, list[ExtractionResult]] = field(default_factory=dict)
    """Every repeat's extraction per scenario (model and budget curve), for the report."""
    task: Task | None = None
    """The task (None means digits)."""
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per scenario, the first copy's per-class agreement and confusion (non-image tasks)."""

    @property
    def attack(self) -> str:
        """The strategy the thief used."""
        return ATTACK if self.task is None else lab_attack(self.task)

    def record(self) -> dict[str, Any]:
        """The ``results.json`` document."""
        out: dict[str, Any] = {
            "victim": {"model": FAMILY, "test_accuracy": self.victim_accuracy},
            "scenarios": [scenario_dict(s) for s in self.scenarios],
            "defense_effectiveness": self.effectiveness,
            "honest_client": self.honest,
            "repeats": self.repeats,
            "seed": self.seed,
            "spec": {
                "attack": self.attack,
                "substitute": SUBSTITUTE,
                "budget": self.budget,
                "batch_size": 1,
            },
            "environment": environment(),
        }
        if self.task is not None:
            out["task"] = task_info(self.task, len(eval_rows(self.task)))
        if self.agreement:
            out["agreement"] = self.agreement
        return out


def _honest(url: str, api_key: str, rows: EvalRows) -> dict[str, float]:
    """An honest user sends the evaluation rows one per request: what does it get back?"""
    oracle = HttpOracle(url, api_key, budget=len(rows))
    try:
        classes = oracle.discover().classes

        def ask(row: np.ndarray) -> Any:
            index = int(oracle.query(row).labels[0])
            return None if index < 0 else classes[index]

        return honest_over_api(ask, rows)
    finally:
        oracle.close()


def run_lab(
    out: Path,
    repeats: int = 5,
    seed: int = 42,
    budget: int = 300,
    progress: Progress | None = None,
    task: Task | str = DEFAULT_TASK,
) -> LabRun:
    """Run both scenarios ``repeats`` times over real HTTP on loopback; write ``out/results.json``.

    Repeat ``i`` uses the same attack queries in both scenarios (paired comparison); the
    service's defense randomness is seeded from ``seed`` too, so the run is reproducible.
    """
    task = get_task(task) if isinstance(task, str) else task
    rows = eval_rows(task)
    attack = lab_attack(task)
    trained = lab_victim(task)
    victim = trained.model
    model_path = out / "victim.skops"
    save_victim(victim, model_path, trained.metadata)
    evaluate = CopyEvaluator(rows, victim)
    attack_seeds = np.random.SeedSequence(seed).spawn(repeats + 1)
    server_seed = int(attack_seeds.pop().generate_state(1)[0])
    keys = {f"thief-{i}": secrets.token_urlsafe(24) for i in range(repeats)}
    keys["honest"] = secrets.token_urlsafe(24)
    ring = KeyRing.from_pairs(keys)

    results: list[ScenarioResult] = []
    first_models: dict[str, ClassifierMixin] = {}
    stolen_all: dict[str, list[ExtractionResult]] = {}
    honest: dict[str, dict[str, float]] = {}
    for name, preset in SCENARIOS:
        settings = Settings(keys=ring, model_path=model_path, defense=preset, seed=server_seed)
        runs: list[dict[str, float]] = []
        with BackgroundServer(create_app(settings)) as server:
            for i, child in enumerate(attack_seeds):
                oracle = HttpOracle(server.url, keys[f"thief-{i}"], budget=budget)
                try:
                    stolen = extract(
                        oracle,
                        make_strategy(attack),
                        _substitute(task, oracle),
                        budget,
                        np.random.default_rng(child),
                        checkpoints=default_checkpoints(budget, 5),
                        evaluate=evaluate,
                        progress=(lambda s, b, i=i, name=name: progress(name, i, s, b))
                        if progress
                        else None,
                    )
                finally:
                    oracle.close()
                scores = evaluate(stolen.model)
                runs.append(
                    {
                        "answered": stolen.answered,
                        "stolen_accuracy": scores["accuracy"],
                        "fidelity": scores["fidelity"],
                    }
                )
                first_models.setdefault(name, stolen.model)
                stolen_all.setdefault(name, []).append(stolen)
            honest[name] = _honest(server.url, keys["honest"], rows)
        results.append(ScenarioResult.from_runs(name, preset, attack, budget, runs))

    run = LabRun(
        victim=victim,
        victim_accuracy=CopyEvaluator(rows)(victim)["accuracy"],
        scenarios=results,
        effectiveness=defense_effectiveness(results[0].stolen_accuracy, results[1].stolen_accuracy),
        repeats=repeats,
        seed=seed,
        budget=budget,
        first_models=first_models,
        honest=honest,
        stolen=stolen_all,
        task=task,
        agreement={}
        if task.is_image
        else {n: evaluate.agreement(m, task.classes) or {} for n, m in first_models.items()},
    )
    write_json(out / "results.json", run.record())
    return run
