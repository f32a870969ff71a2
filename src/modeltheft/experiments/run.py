"""One sweep run: a victim behind a defense, an honest client, a thief, the evidence.

:func:`run_task` is a pure function of its task: seeds come from
``SeedSequence(root_seed, spawn_key=(seed_index,))``, the defenses' secrets from a seeded
store, BLAS runs on one thread. Local processes and Ray workers therefore return the same
numbers for the same task.
"""

import logging
import time
from functools import lru_cache
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression

from modeltheft import __version__
from modeltheft.attacks.spec import AttackSpec, default_checkpoints
from modeltheft.data import lab_split
from modeltheft.defenses import GuardedModel
from modeltheft.defenses.alerts import alerts
from modeltheft.defenses.presets import load_pipeline, pipeline_from_dict
from modeltheft.defenses.watermark import load_records, verify
from modeltheft.errors import Blocked, ModelTheftError, RateLimited
from modeltheft.evaluation.metrics import accuracy, fidelity
from modeltheft.experiments.spec import Task
from modeltheft.oracle import LocalOracle
from modeltheft.state.memory import MemoryStore
from modeltheft.victim import train_victim

SAMPLES = 16
"""Test digits whose victim and stolen labels each record keeps (for the report)."""


@lru_cache(maxsize=8)
def victim_model(family: str, split_name: str) -> ClassifierMixin:
    """The victim, trained once per process."""
    return train_victim(family, split_name=split_name).model


@lru_cache(maxsize=1)
def independent_model() -> ClassifierMixin:
    """A model trained on real digits, never on our answers: the watermark's control."""
    split = lab_split()
    return LogisticRegression(max_iter=1000).fit(split.X_train, split.y_train)


def _seed(sequence: np.random.SeedSequence) -> int:
    return int(sequence.generate_state(1)[0])


def honest_client(guarded: GuardedModel, rng: np.random.Generator) -> dict[str, float]:
    """The 540 test digits in a random order, batches of 1–20: accuracy and refusals."""
    split = lab_split()
    order = rng.permutation(len(split.y_test))
    correct = refused = sent = 0
    while sent < len(order):
        idx = order[sent : sent + int(rng.integers(1, 21))]
        try:
            labels = guarded.answer("honest", split.X_test[idx]).labels
            correct += int(np.sum(labels == split.y_test[idx]))
        except (RateLimited, Blocked):
            refused += len(idx)
        sent += len(idx)
    return {"honest_accuracy": correct / len(order), "honest_refused": refused / len(order)}


def run_task(task: Task) -> dict[str, Any]:
    """Run one task; a record with the task, its seed, metrics, timings and status.

    ``metrics``: ``fidelity``/``accuracy`` at the budget, ``curve`` (the same at up to five
    query counts), ``answered``/``refused``, ``honest_accuracy``/``honest_refused``,
    ``flagged_after`` (queries until the first alert, or None), ``detectors``,
    ``watermarks``/``watermark_p``/``watermark_p_independent`` (when the defense watermarks),
    and ``samples`` (victim and stolen labels of the first 16 test digits).
    """
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    quiet = logging.getLogger("modeltheft.alerts")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # alerts are in the record; the console is the sweep's
    record: dict[str, Any] = {
        "id": task.id,
        "task": task.describe(),
        "seed": {"entropy": task.root_seed, "spawn_key": [task.seed_index]},
        "version": __version__,
    }
    try:
        with threadpool_limits(1):
            record["metrics"] = _measure(task)
        record["status"], record["error"] = "ok", None
    except ModelTheftError as exc:
        record["metrics"], record["status"], record["error"] = {}, "failed", str(exc)
    finally:
        quiet.setLevel(level)
    record["timings"] = {"seconds": time.perf_counter() - start}
    return record


def _measure(task: Task) -> dict[str, Any]:
    split = lab_split()
    attack = task.attack
    model = victim_model(task.victim, "holdout" if attack.uses_real_digits else "lab")
    truth = model.predict(split.X_test)
    root = np.random.SeedSequence(task.root_seed, spawn_key=(task.seed_index,))
    server_ss, store_ss, honest_ss, attack_ss = root.spawn(4)
    config = task.defense.config
    pipeline = (
        load_pipeline(config["preset"])
        if "preset" in config
        else pipeline_from_dict(config, task.defense.name)
    )
    store = MemoryStore(np.random.default_rng(store_ss))
    guarded = GuardedModel(model, pipeline, store=store, seed=_seed(server_ss))
    metrics: dict[str, Any] = {}
    if task.honest:
        metrics |= honest_client(guarded, np.random.default_rng(honest_ss))

    def evaluate(stolen: ClassifierMixin) -> dict[str, float]:
        predicted = stolen.predict(split.X_test)
        return {
            "fidelity": fidelity(predicted, truth),
            "accuracy": accuracy(predicted, split.y_test),
        }

    spec = AttackSpec(
        strategy=attack.strategy,
        params=dict(attack.params),
        substitute=attack.substitute,
        label_mode=attack.labels,
        top_k=attack.top_k,
        budget=task.budget,
        batch_size=attack.batch_size,
        checkpoints=default_checkpoints(task.budget, 5),
        seed=_seed(attack_ss) % 2**31,
    )
    oracle = LocalOracle(guarded, budget=task.budget, client_id="thief")
    result = spec.run(oracle, evaluate=evaluate)
    final = result.curve[-1].metrics or {}
    first_alert = [a["after_queries"] for a in alerts(store) if a["client"] == "thief"]
    metrics |= {
        "fidelity": final.get("fidelity"),
        "accuracy": final.get("accuracy"),
        "answered": oracle.answered,
        "refused": oracle.refused,
        "flagged_after": min(first_alert) if first_alert else None,
        "detectors": sorted({a["detector"] for a in alerts(store) if a["client"] == "thief"}),
        "curve": [
            {"spent": p.spent, **(p.metrics or {})} for p in result.curve if p.metrics is not None
        ],
        "samples": {
            "victim": truth[:SAMPLES].tolist(),
            "stolen": result.model.predict(split.X_test[:SAMPLES]).tolist(),
        },
    }
    records = load_records(store, "thief")
    if len(records.labels):
        metrics["watermarks"] = len(records.labels)
        metrics["watermark_p"] = verify(records, result.model.predict(records.X), 10).p_value
        control = independent_model().predict(records.X)
        metrics["watermark_p_independent"] = verify(records, control, 10).p_value
    return metrics
