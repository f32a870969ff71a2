"""Adaptive thieves (Tramèr et al., NeurIPS 2020) against every defense of the benchmark.

Thieves that have read the defenses, in-process against the `GuardedModel` the service runs:
victim `rf` trained without the attacker-public digits, task `digits_task().held_out()`
(the OOD reference excludes the public digits). Each thief owns 20 public digits, sends one
row per request, refits its copy every 25 queries and counts every query it pays for
(twins and canaries included). Fidelity is agreement with the victim on the 540 test digits.

- `in-distribution`: one key; its 20 digits, then renders near them and blends with them;
- `rotation-9 + twins`: the same queries, a new key every 9 queries, each answer asked with a
  `-0.0` twin and dropped if they disagree;
- `prada-replay`: one key, the same queries, screened by a replay of PRADA on its own stream:
  a row that would bring W below 0.85 is replaced by the best of 8 others (Jacobian-based
  exploration screened this way, tried too, was slower and weaker: 0.74 at 1,000 undefended);
- `canary`: one key at a time; every 50 queries two twins of its own digits; a wrong answer
  means the key is flagged: drop the answers since the last clean canary, take a new key.

    python benchmarks/adaptive.py [--seeds 3] [--workers 2] [--quick]
"""

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks import one_thread, victim

from modeltheft.attacks import make_strategy, make_substitute
from modeltheft.attacks.adaptive import (
    PradaReplay,
    RotatingOracle,
    Thief,
    TwinFilter,
    describe,
)
from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses import GuardedModel, Pipeline
from modeltheft.defenses.alerts import STRICT, alerts, status_key
from modeltheft.defenses.detection import Prada
from modeltheft.evaluation.metrics import fidelity
from modeltheft.oracle import LocalOracle, OracleAnswers
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task

BUDGETS = (300, 1000)
THIEVES = ("in-distribution", "rotation-9 + twins", "prada-replay", "canary")
STATELESS_THIEVES = ("in-distribution", "rotation-9 + twins")
"""Against output defenses without detectors, keys, canaries and PRADA change nothing."""
STRONGEST = THIEVES
"""Thieves considered for a defense's "adaptive" column (the best mean fidelity at 1,000)."""
RENDERS = 3000
SEED = 20261206


@lru_cache(maxsize=4)
def renders(seed: int) -> np.ndarray:
    """One pool of rendered digits per seed, shared by every thief and defense of a worker."""
    return RenderedDigits().render(RENDERS, np.random.default_rng([seed, 5]))[0]


@lru_cache(maxsize=1)
def served_victim() -> Any:
    """The held-out RF as the service serves it: ONNX when it agrees with scikit-learn (checked
    by :func:`~modeltheft.victim.fast.fast_model`; ~250 times faster per row), else as is."""
    from modeltheft.victim.fast import fast_model

    return fast_model(victim("rf", "holdout"), task=digits_task().held_out()).model


class Watch:
    """Every query the thief sends, in order; when the first alert (any key) was raised."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.sent = 0
        self.first_alert: int | None = None

    def after(self, n: int) -> None:
        self.sent += n
        if self.first_alert is None and self.store.items("alerts"):
            self.first_alert = self.sent


class WatchedOracle(LocalOracle):
    """A key of the thief, reporting to a :class:`Watch`."""

    def __init__(self, guarded: GuardedModel, client_id: str, watch: Watch) -> None:
        super().__init__(guarded, budget=0, client_id=client_id)
        self.watch = watch

    def _send(self, X: np.ndarray) -> OracleAnswers:
        answers = super()._send(X)
        self.watch.after(len(X))
        return answers


def make_thief(name: str, pipeline: Pipeline, seed: int) -> tuple[Thief, int | None, bool]:
    """The thief, its rotation (None: one key), and whether it changes key on a canary."""
    pool = renders(seed)
    substitute = make_substitute("lr", seed=seed)
    if name == "in-distribution":
        return Thief(make_strategy("in-distribution", renders=pool), substitute), None, False
    if name == "rotation-9 + twins":
        strategy = make_strategy("in-distribution", renders=pool)
        return Thief(strategy, substitute, twins=TwinFilter("all")), 9, False
    if name == "prada-replay":
        stages = [s for s in pipeline.stages if isinstance(s, Prada)]
        stage = stages[0] if stages else Prada()
        replay = PradaReplay.of(stage, digits_task().held_out(), margin=0.1)
        strategy = make_strategy("in-distribution", renders=pool)
        return Thief(strategy, substitute, prada=replay), None, False
    if name == "canary":
        strategy = make_strategy("in-distribution", renders=pool)
        return Thief(strategy, substitute, canary_every=50, canary_n=2), None, True
    raise ValueError(f"unknown thief {name!r}")


def run_thief(thief: str, defense: str, seed: int, budget: int = max(BUDGETS)) -> dict[str, Any]:
    """One adaptive thief against one defense (a name of ``defenses.DEFENSES``)."""
    from defenses import pipeline as build_pipeline

    task = digits_task().held_out()
    split = task.data
    truth = victim("rf", "holdout").predict(split.X_eval)
    server_seed, thief_seed = np.random.SeedSequence([SEED, seed]).spawn(2)
    store = MemoryStore(np.random.default_rng(server_seed))
    pipe = build_pipeline(defense)
    guarded = GuardedModel(
        served_victim(), pipe, store=store, seed=int(server_seed.generate_state(1)[0]), task=task
    )
    watch = Watch(store)
    built, every, rotate_on_flag = make_thief(thief, pipe, seed)

    def key(i: int) -> LocalOracle:
        return WatchedOracle(guarded, f"thief-{i}", watch)

    oracle = RotatingOracle(key, budget, every=every)
    if every is None and not rotate_on_flag:
        oracle = key(0)
        oracle.budget = budget
    start = time.perf_counter()
    run = built.run(
        oracle,
        budget,
        np.random.default_rng(thief_seed),
        checkpoints=BUDGETS,
        evaluate=lambda m: {"fidelity": fidelity(m.predict(split.X_eval), truth)},
        task=task,
    )
    alerted = {a["client"] for a in alerts(store)}
    out = describe(run) | {"thief": thief, "defense": defense, "seed": seed}
    out["flagged_after"] = watch.first_alert
    out["detectors"] = sorted({a["detector"] for a in alerts(store)})
    out["twin_probed"] = built.twins.probed if built.twins is not None else 0
    out["prada_w"] = built.prada.statistic() if built.prada is not None else None
    out["keys_flagged"] = len(alerted)
    out["seconds"] = time.perf_counter() - start
    return out


def canary_rates(defense: str, seed: int, keys: int = 10) -> dict[str, Any]:
    """Canary probes (2 twins of the thief's own digits) on flagged and on clean keys.

    The thief's digits are answered first by a clean key; then half of ``keys`` keys are put
    under the strict policy (what any detector's alert does) and every key is probed once.
    """
    from defenses import pipeline as build_pipeline

    from modeltheft.attacks.adaptive import Canary

    task = digits_task().held_out()
    store = MemoryStore(np.random.default_rng([SEED, seed, 1]))
    guarded = GuardedModel(
        served_victim(), build_pipeline(defense), store=store, seed=seed, task=task
    )
    rng = np.random.default_rng([SEED, seed, 2])
    rows = task.data.public_rows(20, rng)
    owner = LocalOracle(guarded, budget=20, client_id="owner")
    canary = Canary(rows, owner.query(rows).labels, n=2)
    flagged = [i < keys // 2 for i in range(keys)]
    hits = []
    for i, strict in enumerate(flagged):
        if strict:
            store.raise_to(status_key(f"key-{i}"), STRICT)
        hits.append(canary.probe(LocalOracle(guarded, budget=2, client_id=f"key-{i}"), rng))
    detected = [h for h, f in zip(hits, flagged, strict=True) if f]
    false = [h for h, f in zip(hits, flagged, strict=True) if not f]
    return {
        "defense": defense,
        "seed": seed,
        "detected": float(np.mean(detected)),
        "false": float(np.mean(false)),
    }


def twin_agreement(defense: str, seed: int, n: int = 100) -> dict[str, Any]:
    """``-0.0`` twins of ``n`` renders (most out of distribution) and ``n`` test digits, asked on
    one key right after their originals: how often a twin agrees, on the answers that were
    altered (misinformed, watermarked) and on the true ones."""
    from defenses import pipeline as build_pipeline

    from modeltheft.attacks.adaptive import twins

    task = digits_task().held_out()
    model = victim("rf", "holdout")
    store = MemoryStore(np.random.default_rng([SEED, seed, 3]))
    guarded = GuardedModel(
        served_victim(), build_pipeline(defense), store=store, seed=seed, task=task
    )
    rng = np.random.default_rng([SEED, seed, 4])
    X = np.vstack([renders(seed)[-n:], task.data.X_eval[rng.choice(len(task.data.X_eval), n)]])
    oracle = LocalOracle(guarded, budget=4 * n, client_id="twins")
    labels, twin_labels = [], []
    for row in X:
        answer = oracle.query(np.vstack([row, twins(row[None, :], rng)])).labels
        labels.append(answer[0])
        twin_labels.append(answer[1])
    got, twin_got = np.array(labels), np.array(twin_labels)
    altered = got != model.predict(X)
    agree = got == twin_got
    return {
        "defense": defense,
        "seed": seed,
        "altered": int(altered.sum()),
        "agree_altered": float(agree[altered].mean()) if altered.any() else None,
        "agree_true": float(agree[~altered].mean()) if (~altered).any() else None,
    }


def tasks(defenses: list[str], seeds: int) -> list[tuple[str, str, int]]:
    """Every thief against the stateful defenses; the two that matter against the others."""
    from defenses import STATEFUL

    return [
        (t, d, s)
        for d in defenses
        for t in (THIEVES if d in STATEFUL else STATELESS_THIEVES)
        for s in range(seeds)
    ]


def run_task(task: tuple[str, str, int]) -> dict[str, Any]:
    """:func:`run_thief` of one ``(thief, defense, seed)`` (for process pools)."""
    return run_thief(*task)


def run_all(defenses: list[str], seeds: int, workers: int) -> list[dict[str, Any]]:
    """Every thief × defense × seed, over a process pool."""
    out = []
    todo = tasks(defenses, seeds)
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=one_thread) as pool:
        futures = [pool.submit(run_task, t) for t in todo]
        for i, future in enumerate(as_completed(futures), 1):
            r = future.result()
            out.append(r)
            print(
                f"[{i}/{len(todo)}] {r['thief']} / {r['defense']} / seed {r['seed']}: "
                f"{r['curve'].get(max(BUDGETS), {}).get('fidelity', float('nan')):.3f} "
                f"{r['seconds']:.0f}s (total {time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    return out


def mean_fidelity(runs: list[dict], thief: str, defense: str, budget: int) -> list[float]:
    return [
        r["curve"][budget]["fidelity"]
        for r in runs
        if (r["thief"], r["defense"]) == (thief, defense) and budget in r["curve"]
    ]


def strongest(runs: list[dict], defense: str) -> tuple[str, list[float], bool] | None:
    """The thief with the best mean fidelity at 1,000 against ``defense``, its fidelities, and
    whether any of its runs was flagged (an alert on any of its keys)."""
    best = None
    for thief in STRONGEST:
        values = mean_fidelity(runs, thief, defense, max(BUDGETS))
        if values and (best is None or np.mean(values) > np.mean(best[1])):
            flagged = any(
                r["flagged_after"] is not None
                for r in runs
                if (r["thief"], r["defense"]) == (thief, defense)
            )
            best = (thief, values, flagged)
    return best


def render(
    runs: list[dict],
    defenses: list[str],
    canaries: list[dict] | None = None,
    twin_rates: list[dict] | None = None,
) -> list[str]:
    """The "Adaptive thieves" section (markdown lines)."""
    seeds = len({r["seed"] for r in runs})
    lines = [
        "### Adaptive thieves",
        "",
        "Thieves that have read the defenses (Tramèr et al., NeurIPS 2020), in-process, one "
        "row per request, victim `rf` trained without the 200 attacker-public digits and "
        f"`digits_task().held_out()` (`benchmarks/adaptive.py`; {seeds} seed(s), "
        f"{sum(r['seconds'] for r in runs) / 60:.1f} min of run time). Each owns 20 public "
        "digits; every query paid for counts (twins, canaries). Fidelity at 300 / 1,000 "
        "(mean over seeds); flagged: runs with an alert on any of the thief's keys, and the "
        "queries sent before the first.",
        "",
        "| thief | defense | fidelity at 300 | at 1,000 | flagged (after) | keys | dropped "
        "(twin / canary) | canary flags |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for thief in THIEVES:
        for defense in defenses:
            group = [r for r in runs if (r["thief"], r["defense"]) == (thief, defense)]
            if not group:
                continue
            fids = [mean_fidelity(group, thief, defense, b) for b in BUDGETS]
            cells = [f"{np.mean(f):.3f}" if f else "—" for f in fids]
            after = [r["flagged_after"] for r in group if r["flagged_after"] is not None]
            flagged = f"{len(after)}/{len(group)}" + (
                f" ({min(after)}–{max(after)})" if after else ""
            )
            keys = np.mean([r["keys_used"] for r in group])
            twin = np.mean([r["dropped"]["twin"] for r in group])
            canary = np.mean([r["dropped"]["canary"] for r in group])
            flags = np.mean([len(r["canary_flags"]) for r in group])
            lines.append(
                f"| {thief} | {defense} | {cells[0]} | {cells[1]} | {flagged} | {keys:.0f} | "
                f"{twin:.0f} / {canary:.0f} | {flags:.1f} |"
            )
    replays = [r for r in runs if r["thief"] == "prada-replay" and r.get("prada_w") is not None]
    if replays:
        lines += [
            "",
            "PRADA replay: the thief's own W at the end "
            + ", ".join(
                f"`{d}` {min(r['prada_w'] for r in g):.3f} (min; "
                f"{np.mean([r['prada_replaced'] for r in g]):.0f} rows replaced)"
                for d in defenses
                for g in [[r for r in replays if r["defense"] == d]]
                if g
            )
            + "; it replaces a row only when W would fall below 0.85.",
        ]
    twin_runs = [r for r in runs if r.get("twin_probed")]
    if twin_runs:
        by_defense = {
            d: [r for r in twin_runs if r["defense"] == d]
            for d in defenses
            if any(r["defense"] == d for r in twin_runs)
        }
        lines += [
            "",
            "Twins that disagreed with their original (share of probed answers): "
            + ", ".join(
                f"`{d}` {share:.1%}"
                for d, g in by_defense.items()
                for share in [
                    sum(r["dropped"]["twin"] for r in g) / sum(r["twin_probed"] for r in g)
                ]
            )
            + ".",
        ]
    if twin_rates:
        cells = []
        for d in dict.fromkeys(t["defense"] for t in twin_rates):
            group = [t for t in twin_rates if t["defense"] == d]
            altered = sum(t["altered"] for t in group)
            on_altered = [t["agree_altered"] for t in group if t["agree_altered"] is not None]
            on_true = [t["agree_true"] for t in group if t["agree_true"] is not None]
            cells.append(
                f"`{d}` {np.mean(on_altered):.1%} of {altered} altered answers, "
                f"{np.mean(on_true):.1%} of true ones"
                if on_altered
                else f"`{d}` no altered answers, {np.mean(on_true):.1%} of true ones"
            )
        lines += [
            "",
            "A `-0.0` twin asked right after its original (100 renders, mostly out of "
            "distribution, and 100 test digits per seed, one key) agrees with it on: "
            + "; ".join(cells)
            + ".",
        ]
    if canaries:
        lines += [
            "",
            "Canary (2 twins of the thief's own digits) on 5 keys put under the strict policy "
            "and 5 clean keys per seed: "
            + ", ".join(
                f"`{d}` {np.mean([c['detected'] for c in canaries if c['defense'] == d]):.0%} "
                f"of flagged keys detected, "
                f"{np.mean([c['false'] for c in canaries if c['defense'] == d]):.0%} of clean "
                "keys wrongly"
                for d in dict.fromkeys(c["defense"] for c in canaries)
            )
            + ".",
        ]
    return lines


def main() -> None:
    from defenses import DEFENSES, STATEFUL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, none and recommended")
    parser.add_argument("--defenses", nargs="*", default=None)
    parser.add_argument("--records", default="runs/bench-adaptive.json")
    parser.add_argument("--from-records", action="store_true", help="only re-render")
    args = parser.parse_args()
    records = Path(args.records)
    defenses = args.defenses or (["none", "recommended"] if args.quick else list(DEFENSES))
    if args.from_records:
        saved = json.loads(records.read_text())
    else:
        seeds = 1 if args.quick else args.seeds
        saved = {"runs": run_all(defenses, seeds, args.workers), "args": vars(args)}
        saved["canaries"] = [
            canary_rates(d, s) for d in defenses if d in STATEFUL for s in range(seeds)
        ]
        saved["twins"] = [twin_agreement(d, s) for d in defenses for s in range(seeds)]
        records.parent.mkdir(parents=True, exist_ok=True)
        records.write_text(json.dumps(saved))
    runs = saved["runs"]
    for r in runs:
        r["curve"] = {int(k): v for k, v in r["curve"].items()}
    shown = [d for d in DEFENSES if any(r["defense"] == d for r in runs)]
    print("\n".join(render(runs, shown, saved.get("canaries"), saved.get("twins"))))


if __name__ == "__main__":
    main()
