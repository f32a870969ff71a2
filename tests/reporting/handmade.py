"""Hand-made run records (no sweep is run): digits, tabular (wine) and mixed run folders.

The numbers come from a seeded generator; they only have to look like a sweep's records.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np

WINE_CLASSES = [0, 1, 2]


def _task(defense: str, attack: str, budget: int, seed: int, **extra: Any) -> dict[str, Any]:
    config = {"preset": defense} if defense in ("none", "recommended") else {"stages": []}
    return {
        "sweep": "handmade",
        "victim": "rf",
        "defense": {"name": defense, "config": config},
        "attack": {
            "name": attack,
            "strategy": "owasp-synthetic" if attack == "lab" else "uniform",
            "params": {},
            "labels": "hard",
            "top_k": 3,
            "substitute": "lr",
            "batch_size": 20,
        },
        "budget": budget,
        "seed_index": seed,
        "root_seed": 3,
        "honest": True,
        **extra,
    }


def _info(task: str, classes: list[Any], image_shape: list[int] | None) -> dict[str, Any]:
    """A record's ``task_info``, as :func:`modeltheft.experiments.results.task_info` writes it."""
    return {
        "name": task,
        "kind": "image" if image_shape else "tabular",
        "n_features": int(np.prod(image_shape)) if image_shape else 13,
        "classes": classes,
        "image_shape": image_shape,
        "eval_rows": 540 if task == "digits" else 54,
    }


def _metrics(
    rng: np.random.Generator, defense: str, budget: int, classes: list[Any], samples: int
) -> dict[str, Any]:
    guarded = defense != "none"
    fidelity = round(float(rng.uniform(0.3, 0.6) if guarded else rng.uniform(0.7, 0.95)), 4)
    curve = [
        {"spent": s, "fidelity": round(fidelity * s / budget, 4), "accuracy": 0.5}
        for s in (budget // 2, budget)
    ]
    curve[-1]["fidelity"] = fidelity
    victim = rng.choice(classes, size=samples).tolist()
    stolen = [v if rng.random() < fidelity else classes[0] for v in victim]
    metrics: dict[str, Any] = {
        "fidelity": fidelity,
        "accuracy": round(fidelity - 0.05, 4),
        "answered": budget - (int(rng.integers(0, 10)) if guarded else 0),
        "refused": 0,
        "honest_accuracy": round(float(rng.uniform(0.9, 0.97)), 4),
        "honest_refused": 0.0,
        "flagged_after": int(rng.integers(20, budget)) if guarded else None,
        "detectors": ["prada"] if guarded else [],
        "curve": curve,
        "samples": {"victim": victim, "stolen": stolen},
    }
    if guarded:
        metrics |= {
            "watermarks": int(rng.integers(3, 9)),
            "watermark_p": float(10 ** -rng.uniform(2, 9)),
            "watermark_p_independent": float(rng.uniform(0.05, 0.9)),
        }
    return metrics


def records(
    task: str | None = None,
    classes: list[Any] | None = None,
    tabular: bool = False,
    seed: int = 0,
    image_shape: list[int] | None = None,
) -> list[dict[str, Any]]:
    """2 defenses × 2 attacks × 2 budgets × 3 seeds, and one failed run.

    Without ``task`` the records are as old sweeps wrote them (no task: digits). With it,
    each names its task and carries ``task_info``; ``tabular`` records have ``per_class``
    agreement and a ``confusion`` matrix instead of sample labels. The failed run's record
    names its task but has no ``task_info`` (as when the task itself could not be loaded).
    """
    rng = np.random.default_rng(seed)
    classes = classes or list(range(10))
    out = []
    for defense in ("none", "recommended"):
        for attack in ("lab", "noise"):
            for budget in (60, 100):
                for s in range(3):
                    spec = _task(defense, attack, budget, s, **({"task": task} if task else {}))
                    metrics = _metrics(rng, defense, budget, classes, 8 if tabular else 16)
                    if tabular:
                        metrics.pop("samples")
                        k = len(classes)
                        matrix = rng.integers(0, 5, size=(k, k)) + np.diag(
                            rng.integers(10, 20, size=k)
                        )
                        metrics["confusion"] = {"classes": classes, "matrix": matrix.tolist()}
                        metrics["per_class"] = {
                            str(c): round(float(matrix[i, i] / matrix[i].sum()), 4)
                            for i, c in enumerate(classes)
                        }
                    name = task or "digits"
                    out.append(
                        {
                            **({"task_info": _info(task, classes, image_shape)} if task else {}),
                            "id": f"{name}-{defense}-{attack}-{budget}-{s}",
                            "task": spec,
                            "seed": {"entropy": 3, "spawn_key": [s]},
                            "version": "0.test",
                            "metrics": metrics,
                            "status": "ok",
                            "error": None,
                            "timings": {"seconds": round(float(rng.uniform(1, 9)), 3)},
                        }
                    )
    failed = json.loads(json.dumps(out[0]))
    failed["task"]["seed_index"] = 7
    failed |= {"id": failed["id"] + "-failed", "metrics": {}, "status": "failed"}
    failed.pop("task_info", None)
    failed["error"] = '=HYPERLINK("http://evil") <i>boom</i>'
    out.append(failed)
    return out


def write(run_dir: Path, *groups: list[dict[str, Any]], torn: bool = False) -> Path:
    """``run_dir/results.jsonl`` with the records (and a torn last line if asked)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for group in groups for r in group)
    (run_dir / "results.jsonl").write_text(text + ('{"id": "half' if torn else ""))
    return run_dir
