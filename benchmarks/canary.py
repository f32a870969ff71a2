"""Can a thief tell that its key is flagged? A canary of real digits it owns, flagged vs clean.

Against ``recommended`` (the victim trained without the attacker-public rows, its held-out
task as the OOD reference), per seed: a clean key and a thief's key each send ``--canary``
test digits one per request; the thief then sends noise until the ``ood_monitor`` flags it,
and sends its canary again (and ``-0.0`` twins of it). Counted: how many answers differ
between the flagged key and the clean key, for the canary it sent while clean, and for
real digits it never sent before (the looser ``strict_fpr`` gate misinforms a few of them).

    python benchmarks/canary.py [--seeds 3] [--canary 50]

Swept over ``strict_fpr`` (the shipped 0.2 and others); writes its docs/benchmarks.md section.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from attacks import victim

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.alerts import STRICT, client_status
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task


def one_by_one(g: GuardedModel, client: str, X: np.ndarray) -> np.ndarray:
    """Labels answered to ``X`` sent one row per request."""
    return np.concatenate([g.answer(client, row[None, :]).labels for row in X])


STRICT_FPRS = (0.02, 0.1, 0.2, 0.3)


def run(seed: int, n_canary: int, strict_fpr: float) -> dict[str, int]:
    """One seed: answers that differ between a flagged and a clean key."""
    task = digits_task().held_out()
    model = victim("rf", "holdout")
    rng = np.random.default_rng(seed)
    X = task.data.X_eval[rng.permutation(len(task.data.X_eval))]
    canary, fresh = X[:n_canary], X[n_canary:]
    store = MemoryStore(np.random.default_rng(seed))
    pipeline = load_pipeline("recommended")
    for stage in pipeline.stages:
        if stage.name == "adaptive_misinformation":
            stage.strict_fpr = strict_fpr
    g = GuardedModel(model, pipeline, store, seed=seed, task=task)
    clean = one_by_one(g, "clean", canary)
    one_by_one(g, "thief", canary)
    sent = 0
    while client_status(store, "thief") < STRICT:
        one_by_one(g, "thief", rng.random((1, 64)))
        sent += 1
    again = one_by_one(g, "thief", canary)
    twins = one_by_one(g, "thief", np.where(canary == 0, -0.0, canary))
    flagged_fresh, clean_fresh = one_by_one(g, "thief", fresh), one_by_one(g, "clean", fresh)
    return {
        "noise_to_flag": sent,
        "canary_differ": int(np.sum(again != clean)),
        "twin_differ": int(np.sum(twins != clean)),
        "fresh": len(fresh),
        "fresh_differ": int(np.sum(flagged_fresh != clean_fresh)),
        "clean_fresh_wrong": int(np.sum(clean_fresh != model.predict(fresh))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--canary", type=int, default=50)
    args = parser.parse_args()
    lines = [
        "## A canary against a flagged key (`benchmarks/canary.py`)",
        "",
        f"`recommended`, victim trained without the attacker-public digits, {args.seeds} seeds. "
        f"A clean key and a thief's key each send {args.canary} real test digits one per "
        "request; the thief then sends noise until it is flagged (strict policy) and asks its "
        "canary again, as `-0.0` twins too, and the test digits it never sent. Counted: answers "
        "that differ between the flagged and the clean key (sum over seeds). `strict_fpr` is "
        "`adaptive_misinformation`'s looser gate for a flagged key's new rows (0.2 shipped): "
        "lower hides a flagged key better from a canary of fresh digits, and lets a flagged "
        "thief's real-looking queries through (see `recommended.toml`).",
        "",
        "| strict_fpr | canary sent while clean: differ | its `-0.0` twins: differ "
        "| fresh real digits: differ |",
        "|---|---|---|---|",
    ]
    for strict_fpr in STRICT_FPRS:
        runs = [run(seed, args.canary, strict_fpr) for seed in range(args.seeds)]
        total = args.canary * len(runs)
        fresh = sum(r["fresh"] for r in runs)
        lines.append(
            f"| {strict_fpr} | {sum(r['canary_differ'] for r in runs)} / {total} | "
            f"{sum(r['twin_differ'] for r in runs)} / {total} | "
            f"{sum(r['fresh_differ'] for r in runs)} / {fresh} "
            f"({sum(r['fresh_differ'] for r in runs) / fresh:.1%}) |"
        )
        print(lines[-1], flush=True)
    write_section("canary", "\n".join(lines))


if __name__ == "__main__":
    main()
