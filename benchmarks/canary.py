"""Can a thief tell that its key is flagged? A canary of real digits it owns, flagged vs clean.

Against ``recommended`` (the victim trained without the attacker-public rows, its held-out
task as the OOD reference), per seed: a clean key and a thief's key each send ``--canary``
test digits one per request; the thief then sends noise until the ``ood_monitor`` flags it,
and sends its canary again (and ``-0.0`` twins of it). Counted: how many answers differ
between the flagged key and the clean key, for the canary it sent while clean, and for
real digits it never sent before (the looser ``strict_fpr`` gate misinforms a few of them).

    python benchmarks/canary.py [--seeds 3] [--canary 50]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks import victim

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.alerts import STRICT, client_status
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task


def one_by_one(g: GuardedModel, client: str, X: np.ndarray) -> np.ndarray:
    """Labels answered to ``X`` sent one row per request."""
    return np.concatenate([g.answer(client, row[None, :]).labels for row in X])


def run(seed: int, n_canary: int) -> dict[str, int]:
    """One seed: answers that differ between a flagged and a clean key."""
    task = digits_task().held_out()
    model = victim("rf", "holdout")
    rng = np.random.default_rng(seed)
    X = task.data.X_eval[rng.permutation(len(task.data.X_eval))]
    canary, fresh = X[:n_canary], X[n_canary:]
    store = MemoryStore(np.random.default_rng(seed))
    g = GuardedModel(model, load_pipeline("recommended"), store, seed=seed, task=task)
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
    for seed in range(args.seeds):
        r = run(seed, args.canary)
        print(
            f"seed {seed}: canary sent while clean: {r['canary_differ']}/{args.canary} differ "
            f"(twins {r['twin_differ']}); new real digits: {r['fresh_differ']}/{r['fresh']} "
            f"differ; clean key wrong on {r['clean_fresh_wrong']}; flagged after "
            f"{r['noise_to_flag']} noise queries"
        )


if __name__ == "__main__":
    main()
