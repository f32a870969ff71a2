"""One sweep run: a victim behind a defense, an honest client, a thief, the evidence.

:func:`run_task` is a pure function of its :class:`Run`: seeds come from
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
from modeltheft.defenses import GuardedModel
from modeltheft.defenses.alerts import alerts
from modeltheft.defenses.presets import load_pipeline, pipeline_from_dict
from modeltheft.defenses.watermark import load_records, verify
from modeltheft.errors import ModelTheftError
from modeltheft.experiments.results import RunRecord, task_info
from modeltheft.experiments.spec import Run
from modeltheft.measure import CopyEvaluator, eval_rows, honest_client
from modeltheft.oracle import LocalOracle
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import Task, get_task
from modeltheft.victim import train_victim

SAMPLES = 16
"""Evaluation images whose victim and stolen labels each record keeps (image tasks only)."""


@lru_cache(maxsize=8)
def run_task_of(name: str) -> Task:
    """The run's task, loaded once per process."""
    return get_task(name)


@lru_cache(maxsize=8)
def victim_model(task: str, family: str, holdout: bool) -> ClassifierMixin:
    """The victim, trained once per process per (task, family, holdout)."""
    return train_victim(family, task=run_task_of(task), holdout=holdout).model


@lru_cache(maxsize=8)
def independent_model(task: str) -> ClassifierMixin:
    """A model trained on the task's real training rows, never on our answers: the
    watermark's control."""
    data = run_task_of(task).data
    if data is None:
        raise ModelTheftError(f"task {task!r} has no training rows")
    return LogisticRegression(max_iter=1000).fit(data.X_train, data.y_train)


def _seed(sequence: np.random.SeedSequence) -> int:
    return int(sequence.generate_state(1)[0])


def run_task(run: Run) -> dict[str, Any]:
    """Run one cell of a sweep; its :class:`RunRecord` as JSON (task, seed, metrics, timings,
    status).

    ``metrics``: ``fidelity``/``accuracy`` on the task's evaluation rows at the budget,
    ``curve`` (the same at up to five query counts), ``answered``/``refused``,
    ``honest_accuracy``/``honest_refused``, ``flagged_after`` (queries until the first alert,
    or None), ``detectors``, ``watermarks``/``watermark_p``/``watermark_p_independent`` (when
    the defense watermarks); ``samples`` (victim and stolen labels of the first 16 evaluation
    rows) for image tasks, ``per_class``/``confusion`` against the victim for the others.
    """
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    quiet = logging.getLogger("modeltheft.alerts")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # alerts are in the record; the console is the sweep's
    record = RunRecord(
        id=run.id,
        task=run.describe(),
        seed={"entropy": run.root_seed, "spawn_key": [run.seed_index]},
        version=__version__,
    )
    try:
        task = run_task_of(run.task)
        record.task_info = task_info(task, len(eval_rows(task)))
        with threadpool_limits(1):
            record.metrics = _measure(run, task)
        record.status, record.error = "ok", None
    except ModelTheftError as exc:
        record.metrics, record.status, record.error = {}, "failed", str(exc)
    finally:
        quiet.setLevel(level)
    record.timings = {"seconds": time.perf_counter() - start}
    return record.to_dict()


def _measure(run: Run, task: Task) -> dict[str, Any]:
    attack = run.attack
    model = victim_model(run.task, run.victim, attack.uses_public_data)
    rows = eval_rows(task)
    evaluate = CopyEvaluator(rows, model)
    root = np.random.SeedSequence(run.root_seed, spawn_key=(run.seed_index,))
    server_ss, store_ss, honest_ss, attack_ss = root.spawn(4)
    config = run.defense.config
    pipeline = (
        load_pipeline(config["preset"])
        if "preset" in config
        else pipeline_from_dict(config, run.defense.name)
    )
    store = MemoryStore(np.random.default_rng(store_ss))
    guarded = GuardedModel(model, pipeline, store=store, seed=_seed(server_ss), task=task)
    metrics: dict[str, Any] = {}
    if run.honest:
        metrics |= honest_client(guarded, task, np.random.default_rng(honest_ss))

    spec = AttackSpec(
        strategy=attack.strategy,
        params=dict(attack.params),
        substitute=attack.substitute,
        label_mode=attack.labels,
        top_k=attack.top_k,
        budget=run.budget,
        batch_size=attack.batch_size,
        checkpoints=default_checkpoints(run.budget, 5),
        seed=_seed(attack_ss) % 2**31,
    )
    oracle = LocalOracle(guarded, budget=run.budget, client_id="thief")
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
    }
    if task.is_image:
        metrics["samples"] = {
            "victim": evaluate.truth[:SAMPLES].tolist(),  # type: ignore[index]
            "stolen": result.model.predict(rows.X[:SAMPLES]).tolist(),
        }
    else:
        found = evaluate.agreement(result.model, task.classes)
        metrics |= {"per_class": found["per_class"], "confusion": found["confusion"]}  # type: ignore[index]
    records = load_records(store, "thief")
    if len(records.labels):
        k = task.n_classes
        metrics["watermarks"] = len(records.labels)
        metrics["watermark_p"] = verify(records, result.model.predict(records.X), k).p_value
        control = independent_model(run.task).predict(records.X)
        metrics["watermark_p_independent"] = verify(records, control, k).p_value
    return metrics
