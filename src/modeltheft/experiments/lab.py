"""The OWASP ML05 lab end to end: victim, HTTP service per preset, the lab's attack, metrics."""

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
from modeltheft.data import lab_split
from modeltheft.evaluation.metrics import accuracy, defense_effectiveness, fidelity
from modeltheft.evaluation.results import ScenarioResult, environment, scenario_dict, write_json
from modeltheft.oracle import HttpOracle
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.victim import save_victim, train_victim

SCENARIOS = (("no_defense", "none"), ("lab_defenses", "lab"))
ATTACK = "owasp-synthetic"
SUBSTITUTE = "lr"

Progress = Callable[[str, int, int, int], None]
"""Called as ``progress(scenario, repeat, spent, budget)``."""


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

    def record(self) -> dict[str, Any]:
        """The ``results.json`` document."""
        return {
            "victim": {"model": "rf", "test_accuracy": self.victim_accuracy},
            "scenarios": [scenario_dict(s) for s in self.scenarios],
            "defense_effectiveness": self.effectiveness,
            "honest_client": self.honest,
            "repeats": self.repeats,
            "seed": self.seed,
            "spec": {
                "attack": ATTACK,
                "substitute": SUBSTITUTE,
                "budget": self.budget,
                "batch_size": 1,
            },
            "environment": environment(),
        }


def honest_client(url: str, api_key: str) -> dict[str, float]:
    """An honest user sends the 540 test digits one per request: what does it get back?"""
    split = lab_split()
    oracle = HttpOracle(url, api_key, budget=len(split.y_test))
    try:
        labels = np.concatenate([oracle.query(row[None]).labels for row in split.X_test])
    finally:
        oracle.close()
    answered = labels >= 0
    return {
        "sent": len(labels),
        "answered": int(answered.sum()),
        "accuracy_of_answers": float(np.mean(labels[answered] == split.y_test[answered])),
        "useful_fraction": float(np.mean(labels == split.y_test)),
    }


def run_lab(
    out: Path, repeats: int = 5, seed: int = 42, budget: int = 300, progress: Progress | None = None
) -> LabRun:
    """Run both scenarios ``repeats`` times over real HTTP on loopback; write ``out/results.json``.

    Repeat ``i`` uses the same attack queries in both scenarios (paired comparison); the
    service's defense randomness is seeded from ``seed`` too, so the run is reproducible.
    """
    split = lab_split()
    trained = train_victim("rf")
    victim = trained.model
    model_path = out / "victim.skops"
    save_victim(victim, model_path, trained.metadata)
    victim_test = victim.predict(split.X_test)
    attack_seeds = np.random.SeedSequence(seed).spawn(repeats + 1)
    server_seed = int(attack_seeds.pop().generate_state(1)[0])
    keys = {f"thief-{i}": secrets.token_urlsafe(24) for i in range(repeats)}
    keys["honest"] = secrets.token_urlsafe(24)
    ring = KeyRing.from_pairs(keys)

    results: list[ScenarioResult] = []
    first_models: dict[str, ClassifierMixin] = {}
    stolen_all: dict[str, list[ExtractionResult]] = {}

    def evaluate(model: ClassifierMixin) -> dict[str, float]:
        predicted = model.predict(split.X_test)
        return {
            "fidelity": fidelity(predicted, victim_test),
            "accuracy": accuracy(predicted, split.y_test),
        }

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
                        make_strategy(ATTACK),
                        make_substitute(SUBSTITUTE),
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
                predicted = stolen.model.predict(split.X_test)
                runs.append(
                    {
                        "answered": stolen.answered,
                        "stolen_accuracy": accuracy(predicted, split.y_test),
                        "fidelity": fidelity(predicted, victim_test),
                    }
                )
                first_models.setdefault(name, stolen.model)
                stolen_all.setdefault(name, []).append(stolen)
            honest[name] = honest_client(server.url, keys["honest"])
        results.append(ScenarioResult.from_runs(name, preset, ATTACK, budget, runs))

    run = LabRun(
        victim=victim,
        victim_accuracy=float(trained.metadata["test_accuracy"]),
        scenarios=results,
        effectiveness=defense_effectiveness(results[0].stolen_accuracy, results[1].stolen_accuracy),
        repeats=repeats,
        seed=seed,
        budget=budget,
        first_models=first_models,
        honest=honest,
        stolen=stolen_all,
    )
    write_json(out / "results.json", run.record())
    return run
