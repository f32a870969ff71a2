"""Naturalness scorers and the per-key stream test against the in-distribution thief.

Victim: the random forest trained without the 200 attacker-public digits; the defenses'
reference is its own training rows (``digits_task().held_out()``). Three measurements:

- AUC of each scorer of :mod:`modeltheft.defenses.naturalness`: real test digits against
  rendered digits, renders filtered to the 25% nearest the thief's 20 real digits, and blends
  ``lambda * render + (1 - lambda) * nearest real digit``;
- the in-distribution thief of issue #12 (one key, one row per request: its 20 real digits,
  then filtered renders and blends in turn, a logistic-regression copy refitted every 25
  queries) against ``none``, ``recommended`` without ``stream_test`` and ``recommended``:
  fidelity at 300 / 1,000 and queries until flagged;
- false alarms: 50 honest clients x 1,000 queries (test digits in their own random order,
  batches of 1-20, as ``benchmarks/defenses.py``) and a population of 500 honest clients with
  sessions of 20-300 queries sharing one store; honest accuracy against ``none``.

    python benchmarks/naturalness.py [--seeds 3] [--quick] [--from-records]

Writes runs/naturalness.json and its section of docs/benchmarks.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from attacks import one_thread, victim

from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses import GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses.alerts import alerts
from modeltheft.defenses.base import DefenseContext
from modeltheft.defenses.naturalness import KINDS, make_scorer
from modeltheft.defenses.streams import StreamTest
from modeltheft.errors import Blocked, RateLimited
from modeltheft.evaluation.metrics import fidelity
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task

CHECKPOINTS = (300, 1000)
DEFENSES = ("none", "recommended without stream_test", "recommended")
OUT = Path("runs/naturalness.json")
VARIANTS = (
    (0.1, 0.0, "copies"),
    (0.25, 0.5, "copies"),
    (0.25, 0.75, "copies"),
    (0.25, 0.5, "pairs"),
)
"""Adaptive variants: render filter share kept, share of dilution rows, their kind."""


def pipeline(defense: str) -> Pipeline:
    """``none``, ``recommended``, or ``recommended`` without the stream test."""
    if defense == "recommended without stream_test":
        full = load_pipeline("recommended")
        return Pipeline([s for s in full.stages if s.name != "stream_test"], name=defense)
    return load_pipeline(defense)


def thief_rows(
    n: int,
    public: np.ndarray,
    rng: np.random.Generator,
    keep: float = 0.25,
    natural_share: float = 0.0,
    dilution: str = "copies",
) -> tuple[np.ndarray, np.ndarray]:
    """The thief's queries after its real digits: filtered renders and blends, alternating.

    Renders are kept when their distance to the nearest real digit is in the lowest ``keep``
    share of a pool; each blend mixes a kept render with its nearest real digit, lambda in
    [0.3, 0.8]. With ``natural_share``, that share of the rows (at random) are instead
    near-copies of a real digit (two pixels moved by 1/16; ``dilution = "copies"``) or blends
    of two real digits (lambda in [0.3, 0.7]; ``"pairs"``), sent to dilute the stream test.
    Returns the rows and whether each is a blend.
    """
    rows, blend = _render_and_blend(n, public, rng, keep)
    natural = rng.random(n) < natural_share
    for i in np.flatnonzero(natural):
        if dilution == "pairs":
            a, b = public[rng.choice(len(public), 2, replace=False)]
            lam = rng.uniform(0.3, 0.7)
            rows[i] = lam * a + (1 - lam) * b
            continue
        row = public[rng.integers(len(public))].copy()
        pixels = rng.choice(len(row), 2, replace=False)
        row[pixels] = np.clip(row[pixels] + rng.choice([-1, 1], 2) / 16, 0.0, 1.0)
        rows[i] = row
    return rows, blend & ~natural


def _render_and_blend(
    n: int, public: np.ndarray, rng: np.random.Generator, keep: float
) -> tuple[np.ndarray, np.ndarray]:
    pool, _ = RenderedDigits().render(int(np.ceil(n / 2 / keep)) + 8, rng)
    distances = np.sqrt(((pool[:, None, :] - public[None, :, :]) ** 2).sum(axis=2))
    nearest = distances.min(axis=1)
    kept = np.flatnonzero(nearest <= np.quantile(nearest, keep))
    rows, blend = [], []
    for i in range(n):
        render = pool[kept[(i // 2) % len(kept)]]
        if i % 2:
            lam = rng.uniform(0.3, 0.8)
            partner = public[distances[kept[(i // 2) % len(kept)]].argmin()]
            rows.append(lam * render + (1 - lam) * partner)
        else:
            rows.append(render)
        blend.append(bool(i % 2))
    return np.array(rows), np.array(blend)


def scorer_aucs(seed: int, n: int) -> dict[str, dict[str, float]]:
    """AUC of each scorer: real test digits (0) against each kind of thief row (1)."""
    task = digits_task().held_out()
    rng = np.random.default_rng(seed)
    public = task.data.public_rows(20, rng)
    renders, _ = RenderedDigits().render(n, rng)
    rows, blend = thief_rows(n, public, rng)
    sets = {"renders": renders, "filtered renders": rows[~blend], "blends": rows[blend]}
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        scorer = make_scorer(kind, "task", task)
        real = scorer.score(task.data.X_eval)
        out[kind] = {}
        for name, X in sets.items():
            scores = np.concatenate([real, scorer.score(X)])
            labels = np.r_[np.zeros(len(real)), np.ones(len(X))]
            out[kind][name] = float(roc_auc_score(labels, scores))
    return out


def thief(
    defense: str,
    seed: int,
    budget: int = 1000,
    keep: float = 0.25,
    natural_share: float = 0.0,
    dilution: str = "copies",
) -> dict[str, Any]:
    """The single-key in-distribution thief of issue #12, one row per request."""
    task = digits_task().held_out()
    model = victim("rf", "holdout")
    truth = model.predict(task.data.X_eval)
    rng = np.random.default_rng([21, seed])
    store = MemoryStore(np.random.default_rng([22, seed]))
    guarded = GuardedModel(model, pipeline(defense), store=store, seed=seed, task=task)
    public = task.data.public_rows(20, rng)
    rows, _ = thief_rows(budget - len(public), public, rng, keep, natural_share, dilution)
    queries = np.vstack([public, rows])
    labels: list[Any] = []
    curve: dict[int, float] = {}
    copy = None
    for i, row in enumerate(queries, start=1):
        try:
            labels.append(guarded.answer("thief", row[None, :]).labels[0])
        except (RateLimited, Blocked):
            labels.append(None)
        if i % 25 == 0 or i in CHECKPOINTS:
            answered = [j for j, label in enumerate(labels) if label is not None]
            y = np.array([labels[j] for j in answered])
            if len(set(y.tolist())) > 1:
                copy = LogisticRegression(max_iter=1000).fit(queries[answered], y)
        if i in CHECKPOINTS and copy is not None:
            curve[i] = fidelity(copy.predict(task.data.X_eval), truth)
    flagged = [a for a in alerts(store) if a["client"] == "thief"]
    return {
        "defense": defense,
        "seed": seed,
        "keep": keep,
        "natural_share": natural_share,
        "dilution": dilution,
        "fidelity": curve,
        "flagged_after": min((a["after_queries"] for a in flagged), default=None),
        "detectors": sorted({a["detector"] for a in flagged}),
    }


def honest_clients(defense: str, n_clients: int, lengths: list[int], seed: int) -> dict[str, Any]:
    """Honest clients sharing one store: test digits in random order, batches of 1-20."""
    task = digits_task().held_out()
    model = victim("rf", "holdout")
    X, y = task.data.X_eval, task.data.y_eval
    store = MemoryStore(np.random.default_rng([31, seed]))
    guarded = GuardedModel(model, pipeline(defense), store=store, seed=seed, task=task)
    accuracy, refused = [], 0
    for c in range(n_clients):
        rng = np.random.default_rng([7, seed, c])
        queries = lengths[c]
        order = np.concatenate([rng.permutation(len(y)) for _ in range(-(-queries // len(y)))])
        order = order[:queries]
        correct = sent = 0
        while sent < queries:
            idx = order[sent : sent + int(rng.integers(1, 21))]
            try:
                correct += int((guarded.answer(f"honest-{c}", X[idx]).labels == y[idx]).sum())
            except (RateLimited, Blocked):
                refused += len(idx)
            sent += len(idx)
        accuracy.append(correct / queries)
    stages = [s for s in guarded.pipeline.stages if isinstance(s, StreamTest)]
    worst = 1.0
    for stage in stages:  # the margin left: each client's p-value at the end of its session
        for c in range(n_clients):
            ctx = DefenseContext(f"honest-{c}", np.random.default_rng(0), store)
            worst = min(worst, stage.p_value(*stage.counts(ctx)))
    flagged = sorted({a["client"] for a in alerts(store)})
    by_detector: dict[str, int] = {}
    for a in alerts(store):
        by_detector[a["detector"]] = by_detector.get(a["detector"], 0) + 1
    return {
        "defense": defense,
        "clients": n_clients,
        "queries": int(sum(lengths)),
        "accuracy": float(np.mean(accuracy)),
        "refused": refused,
        "false_alarms": len(flagged),
        "min_stream_p": worst if stages else None,
        "by_detector": by_detector,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller honest runs, 1 seed")
    parser.add_argument("--from-records", action="store_true", help="only re-render")
    args = parser.parse_args()
    if args.from_records:
        publish(json.loads(OUT.read_text()))
        return
    one_thread()
    seeds = 1 if args.quick else args.seeds
    start = time.perf_counter()
    aucs = scorer_aucs(0, 300 if args.quick else 1000)
    thefts = [thief(d, s) for d in DEFENSES for s in range(seeds)]
    variants = [
        thief(d, s, keep=keep, natural_share=share, dilution=dilution)
        for keep, share, dilution in VARIANTS
        for d in ("none", "recommended")
        for s in range(seeds)
    ]
    n_long, n_pop = (10, 100) if args.quick else (50, 500)
    rng = np.random.default_rng(41)
    population = [int(v) for v in rng.integers(20, 301, size=n_pop)]
    honest = []
    for defense in ("none", "recommended"):
        honest.append(honest_clients(defense, n_long, [1000] * n_long, 1) | {"kind": "1,000"})
        honest.append(honest_clients(defense, n_pop, population, 2) | {"kind": "population"})
    record = {
        "aucs": aucs,
        "thefts": thefts,
        "variants": variants,
        "honest": honest,
        "seeds": seeds,
        "seconds": time.perf_counter() - start,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2, default=str))
    publish(record)


def publish(record: dict[str, Any]) -> None:
    """Print the tables and write them into docs/benchmarks.md."""
    intro = (
        "## Naturalness scorers and the per-key stream test (`benchmarks/naturalness.py`)\n\n"
        "Victim: the random forest trained without the attacker-public digits; reference: its "
        "own training rows. First table: AUC of each scorer, real test digits against renders, "
        "renders filtered to the 25% nearest the thief's 20 real digits, and blends. Then the "
        "in-distribution thief of issue 12 (one key, one row per request, a logistic-regression "
        f"copy refitted every 25 queries; mean over {record['seeds']} seed(s)), variants a thief "
        "who knows `stream_test` would try, and honest clients (false alarms, accuracy). "
        f"Run time {record['seconds'] / 60:.0f} min.\n"
    )
    body = intro + "\n" + report(record)
    print(body)
    write_section("naturalness", body)


def report(record: dict[str, Any]) -> str:
    """The markdown tables of one run."""
    lines = ["| scorer | renders | filtered renders | blends |", "|---|---|---|---|"]
    for kind, row in record["aucs"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    lines += [
        "",
        "| defense | fidelity @300 | fidelity @1000 | flagged after (median) | flagged runs |",
        "|---|---|---|---|---|",
    ]
    for defense in DEFENSES:
        runs = [r for r in record["thefts"] if r["defense"] == defense]
        fid = {b: np.mean([r["fidelity"].get(b, np.nan) for r in runs]) for b in CHECKPOINTS}
        flags = [r["flagged_after"] for r in runs if r["flagged_after"] is not None]
        median = f"{np.median(flags):.0f}" if len(flags) == len(runs) else "not flagged"
        if flags and len(flags) < len(runs):
            median = f"{np.median(flags):.0f} ({len(flags)} runs)"
        detectors = sorted({d for r in runs for d in r["detectors"]})
        lines.append(
            f"| {defense} | {fid[300]:.3f} | {fid[1000]:.3f} | {median} | "
            f"{len(flags)}/{len(runs)} {', '.join(detectors)} |"
        )
    lines += [
        "",
        "| thief variant (kept, dilution share, kind) | fidelity @1000 none "
        "| fidelity @300 / @1000 recommended | flagged after (median) |",
        "|---|---|---|---|",
    ]
    for keep, share, dilution in VARIANTS:
        runs = [
            r
            for r in record.get("variants", [])
            if (r["keep"], r["natural_share"], r["dilution"]) == (keep, share, dilution)
        ]
        none = [r["fidelity"].get(1000, np.nan) for r in runs if r["defense"] == "none"]
        rec = [r for r in runs if r["defense"] == "recommended"]
        flags = [r["flagged_after"] for r in rec if r["flagged_after"] is not None]
        lines.append(
            f"| {keep:.0%}, {share:.0%}, {dilution} | {np.mean(none):.3f} | "
            f"{np.mean([r['fidelity'].get(300, np.nan) for r in rec]):.3f} / "
            f"{np.mean([r['fidelity'].get(1000, np.nan) for r in rec]):.3f} | "
            f"{np.median(flags) if flags else 'not flagged'} ({len(flags)}/{len(rec)}) |"
        )
    lines += [
        "",
        "| defense | honest clients | queries | accuracy | refused | false alarms "
        "| smallest stream_test p |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in record["honest"]:
        lines.append(
            f"| {h['defense']} | {h['clients']} ({h['kind']}) | {h['queries']} | "
            f"{h['accuracy']:.4f} | {h['refused']} | {h['false_alarms']} {h['by_detector']} | "
            f"{'-' if h.get('min_stream_p') is None else format(h['min_stream_p'], '.2g')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
