"""Watermark evidence pooled across keys: a thief that rotates API keys against `recommended`.

The thief asks one row per request and takes a new key every 9 queries, so no key reaches
the detectors' minimum and each holds only a few watermarks. Its copy is trained on every
answer. For each copy: the per-client p-values (raw, and Holm-adjusted over the clients +
the pooled test; for the best client that is Bonferroni's smallest p × tests) and the pooled
p (raw and Holm-adjusted); then models trained independently on real digits, tested against
the same records pooled. Victim: the random forest trained without the attacker-public
rows, served with its held-out task.

    python benchmarks/watermark_pool.py [--seeds 3] [--quick]
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from attacks import one_thread, victim
from defenses import independent_models

from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.watermark import (
    holm,
    load_records,
    verify,
    verify_pooled,
    watermarked_clients,
)
from modeltheft.evaluation.metrics import fidelity
from modeltheft.state import MemoryStore
from modeltheft.tasks import digits_task

PER_KEY = 9
COPIES = {
    "1-nn": lambda: KNeighborsClassifier(1),
    "lr": lambda: LogisticRegression(max_iter=1000),
}


def queries(source: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """The thief's rows: rendered digits, or uniform noise within the task's bounds."""
    task = digits_task().held_out()
    if source == "rendered-digits":
        return RenderedDigits().draw(n, rng, task)
    return task.clip(rng.uniform(task.lower, task.upper, (n, task.n_features)))


def run(source: str, n: int, seed: int) -> list[dict[str, Any]]:
    """One rotating thief: its copies' evidence, and independent models' pooled p."""
    task = digits_task().held_out()
    model = victim("rf", "holdout")
    store = MemoryStore(np.random.default_rng([seed, 1]))
    guarded = GuardedModel(model, load_pipeline("recommended"), store=store, seed=seed, task=task)
    X = queries(source, n, np.random.default_rng([seed, 2]))
    labels = np.concatenate(
        [guarded.answer(f"key-{i // PER_KEY}", X[i : i + 1]).labels for i in range(n)]
    )
    records = [load_records(store, c) for c in watermarked_clients(store)]
    split = task.data
    truth = model.predict(split.X_eval)
    rows = []
    suspects = {name: make().fit(X, labels) for name, make in COPIES.items()}
    suspects |= {f"independent: {k}": m for k, m in independent_models().items()}
    for name, suspect in suspects.items():
        answers = [suspect.predict(r.X) for r in records]
        clients = [verify(r, a).p_value for r, a in zip(records, answers, strict=True)]
        pooled = verify_pooled(records, answers)
        adjusted = holm([*clients, pooled.p_value])
        rows.append(
            {
                "source": source,
                "queries": n,
                "seed": seed,
                "suspect": name,
                "keys": -(-n // PER_KEY),
                "watermarked_keys": len(records),
                "watermarks": pooled.n_watermarks,
                "client_p": min(clients),
                "client_holm": float(adjusted[:-1].min()),
                "pooled_p": pooled.p_value,
                "pooled_holm": float(adjusted[-1]),
                "fidelity": fidelity(suspect.predict(split.X_eval), truth),
            }
        )
    return rows


def report(rows: list[dict[str, Any]], seeds: int, seconds: float) -> str:
    """The docs/benchmarks.md section."""
    lines = [
        "## Watermark evidence pooled across keys (`benchmarks/watermark_pool.py`)",
        "",
        f"A thief rotating keys every {PER_KEY} queries (one row per request) against "
        "`recommended`, victim trained without the attacker-public rows; its copy is trained on "
        "every answer. `watermark verify` tests each key's watermarks and all of them pooled "
        "(a row watermarked for several keys counts once), Holm-adjusted over the keys + the "
        f"pool. Worst over {seeds} seeds (largest p for copies), except the pooled p of each "
        "seed; p < 1e-6 is the evidence threshold. Holm's adjustment of the best key is the "
        "per-key Bonferroni verdict of before (smallest p × tests).",
        "",
        "| queries | keys (watermarked) | copy | fidelity | watermarks | best key p | "
        "best key, Holm | pooled p, each seed | pooled, Holm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    copies = [r for r in rows if not r["suspect"].startswith("independent")]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in copies:
        groups.setdefault((r["source"], r["queries"], r["suspect"]), []).append(r)
    for (source, n, suspect), runs in groups.items():
        keys = f"{runs[0]['keys']} ({min(r['watermarked_keys'] for r in runs)}–"
        keys += f"{max(r['watermarked_keys'] for r in runs)})"
        lines.append(
            f"| {n} `{source}` | {keys} | {suspect} | "
            f"{np.mean([r['fidelity'] for r in runs]):.3f} | "
            f"{min(r['watermarks'] for r in runs)}–{max(r['watermarks'] for r in runs)} | "
            + " | ".join(f"{max(r[k] for r in runs):.1e}" for k in ("client_p", "client_holm"))
            + " | "
            + " / ".join(f"{r['pooled_p']:.1e}" for r in runs)
            + f" | {max(r['pooled_holm'] for r in runs):.1e} |"
        )
    independent = [r for r in rows if r["suspect"].startswith("independent")]
    smallest: dict[str, float] = {}
    for r in independent:
        name = r["suspect"].removeprefix("independent: ")
        smallest[name] = min(smallest.get(name, 1.0), r["pooled_p"])
    lines += [
        "",
        f"Independently trained models against every thief's records pooled ({len(independent)} "
        f"tests): smallest pooled p = {min(smallest.values()):.3f}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in smallest.items())
        + ".",
        "",
        f"Run time: {seconds:.0f} s on 2 cores (shared).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 queries only; no doc")
    args = parser.parse_args()
    one_thread()
    start = time.perf_counter()
    sizes = (300,) if args.quick else (300, 1000)
    rows = [
        row
        for source in ("rendered-digits", "uniform")
        for n in sizes
        for seed in range(args.seeds)
        for row in run(source, n, seed)
    ]
    body = report(rows, args.seeds, time.perf_counter() - start)
    print(body)
    if not args.quick:
        write_section("watermark-pool", body)


if __name__ == "__main__":
    main()
