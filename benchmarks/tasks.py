"""Your own tasks: extraction and `recommended` on the tabular tasks, digits as the baseline.

All in one run, mean over seeds (SeedSequence children, shared by every measurement):
1. the lab's attack on the digits forest (the baseline, as in `benchmarks/attacks.py`);
2. breast-cancer and wine, every victim family trained without the attacker-public rows,
   hard labels, 300 queries: with 20 unlabeled attacker-public rows, and with the schema
   (bounds) alone; fidelity on the task's evaluation rows;
3. equation-solving against logistic regression with probabilities, d + 1 queries;
4. `recommended` in front of each task's forest: 50 honest clients, and the schema-only
   attacks with and without it.

Each run is one JSON line in ``--records``, so a partial run still gives numbers
(``--from-records`` re-renders the section from them).

    PYTHONPATH=src python benchmarks/tasks.py [--seeds 5] [--workers 2] [--quick]
"""

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.alerts import alerts
from modeltheft.errors import AttackFailed
from modeltheft.measure import CopyEvaluator, eval_rows, honest_client
from modeltheft.oracle import LocalOracle
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import Task, get_task
from modeltheft.victim import train_victim

BUDGET = 300
PUBLIC_ROWS = 20
TASKS = ("breast-cancer", "wine")
FAMILIES = ("rf", "lr", "mlp", "svc", "gbdt")
TARGETS = {"public": 0.97, "schema": 0.90}
HONEST_CLIENTS = 50
MAX_HONEST_LOSS = 0.005  # accuracy, i.e. half a point
ROOT_SEED = 20261128  # benchmarks/attacks.py's root: the digits baseline matches its seeds


@dataclass(frozen=True)
class Attack:
    """A named tabular attack: recipe and parameters, attacker setting, substitute."""

    label: str
    setting: str  # "public" (20 unlabeled attacker rows) or "schema" (bounds only)
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    substitute: str = "mlp"
    batch_size: int = 30


ATTACKS = (
    Attack("synthetic (gaussian, 20 rows)", "public", "synthetic", {"n_rows": PUBLIC_ROWS}),
    Attack(
        "active over synthetic + 20 seed rows",
        "public",
        "active",
        {"pool": "synthetic", "n_rows": PUBLIC_ROWS, "seed_rows": PUBLIC_ROWS, "pool_size": 3000},
    ),
    Attack("uniform", "schema", "uniform"),
    Attack("active over uniform", "schema", "active", {"pool": "uniform", "pool_size": 3000}),
)
ATTACK_BY_LABEL = {a.label: a for a in ATTACKS}
SCHEMA_ATTACKS = tuple(a for a in ATTACKS if a.setting == "schema")


@dataclass(frozen=True)
class Job:
    """One run: which measurement, on what, with which seed."""

    measure: str
    task: str
    seed_index: int
    seed: np.random.SeedSequence
    family: str = "rf"
    attack: str = ""
    defense: str = "none"


@cache
def task_of(name: str) -> Task:
    return get_task(name)


@cache
def victim(task_name: str, family: str, holdout: bool) -> Any:
    return train_victim(family, task=task_of(task_name), holdout=holdout).model


def seeds_of(job: Job) -> tuple[int, int, np.random.Generator]:
    """Server seed, substitute seed and the attacker's generator, as benchmarks/attacks.py
    derives them (so the digits baseline is that suite's run at 300 queries)."""
    server, attacker = job.seed.spawn(2)
    seeds = int(server.generate_state(1)[0]), int(attacker.generate_state(1)[0]) % 2**31
    return *seeds, np.random.default_rng(attacker)


def majority_share(labels: np.ndarray) -> float:
    """Share of the most common label."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / len(labels))


def digits_lab(job: Job) -> dict[str, Any]:
    """The lab's attack (owasp-synthetic, lr copy, hard labels, 300 queries) on the digits rf."""
    task = task_of("digits")
    model = victim("digits", "rf", False)
    server_seed, attack_seed, rng = seeds_of(job)
    oracle = LocalOracle(GuardedModel(model, load_pipeline("none"), seed=server_seed), BUDGET)
    result = extract(
        oracle,
        make_strategy("owasp-synthetic"),
        make_substitute("lr", seed=attack_seed),
        BUDGET,
        rng,
        batch_size=100,
        label_mode="hard",
    )
    return CopyEvaluator(eval_rows(task), model)(result.model)


def tabular_attack(job: Job) -> dict[str, Any]:
    """One attack on one victim family of a tabular task, undefended or behind ``job.defense``."""
    task = task_of(job.task)
    attack = ATTACK_BY_LABEL[job.attack]
    holdout = attack.setting == "public"
    model = victim(job.task, job.family, holdout)
    server_seed, attack_seed, rng = seeds_of(job)
    store = MemoryStore(np.random.default_rng(server_seed))
    guarded = GuardedModel(
        model, load_pipeline(job.defense), store=store, seed=server_seed, task=task
    )
    evaluator = CopyEvaluator(eval_rows(task), model)
    out: dict[str, Any] = {"victim_majority": majority_share(evaluator.truth)}
    try:
        result = extract(
            LocalOracle(guarded, BUDGET, client_id="thief"),
            make_strategy(attack.strategy, **attack.params),
            make_substitute(attack.substitute, seed=attack_seed, task=task),
            BUDGET,
            rng,
            batch_size=attack.batch_size,
            label_mode="hard",
        )
    except AttackFailed as exc:
        return out | {"error": str(exc)}
    first = [a["after_queries"] for a in alerts(store)]
    return out | evaluator(result.model) | {"flagged_after": min(first) if first else None}


def equation_solving(job: Job) -> dict[str, Any]:
    """Equation solving with probabilities against the task's LR victim, d + 1 queries."""
    task = task_of(job.task)
    model = victim(job.task, "lr", True)
    queries = task.n_features + 1
    server_seed, _, rng = seeds_of(job)
    oracle = LocalOracle(
        GuardedModel(model, load_pipeline("none"), seed=server_seed, task=task), queries
    )
    try:
        result = extract(
            oracle,
            make_strategy("equation-solving"),
            make_substitute("equation-solver"),
            queries,
            rng,
            batch_size=queries,
            label_mode="soft",
            min_answers=1,
        )
    except AttackFailed as exc:
        return {"queries": queries, "error": str(exc)}
    X = task.data.X_eval
    error = np.abs(result.model.predict_proba(X) - model.predict_proba(X)).max()
    scores = CopyEvaluator(eval_rows(task), model)(result.model)
    return scores | {"queries": int(result.sent), "max_probability_error": float(error)}


def honest_clients(job: Job) -> dict[str, Any]:
    """50 honest clients (each its own key) behind ``job.defense`` on the task's forest."""
    task = task_of(job.task)
    model = victim(job.task, "rf", False)
    server_seed = seeds_of(job)[0]
    store = MemoryStore(np.random.default_rng(server_seed))
    guarded = GuardedModel(
        model, load_pipeline(job.defense), store=store, seed=server_seed, task=task
    )
    accuracies = []
    for client in range(HONEST_CLIENTS):
        rng = np.random.default_rng([job.seed_index, client])
        accuracies.append(honest_client(guarded, task, rng, f"honest-{client}")["honest_accuracy"])
    return {
        "accuracies": accuracies,
        "victim_accuracy": float(np.mean(model.predict(task.data.X_eval) == task.data.y_eval)),
        "flagged": sorted({str(a["client"]) for a in alerts(store)}),
    }


MEASURES: dict[str, Callable[[Job], dict[str, Any]]] = {
    "digits-lab": digits_lab,
    "attack": tabular_attack,
    "equation-solving": equation_solving,
    "honest": honest_clients,
}


def run(job: Job) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    out = MEASURES[job.measure](job)
    fields = {k: v for k, v in job.__dict__.items() if k != "seed"}
    return fields | out | {"seconds": time.perf_counter() - start}


def one_thread() -> None:
    """One BLAS thread per worker: several workers with threaded BLAS each spin and slow down."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def jobs(seeds: int, quick: bool) -> list[Job]:
    families = FAMILIES[:2] if quick else FAMILIES
    out = []
    for i, seed in enumerate(np.random.SeedSequence(ROOT_SEED).spawn(seeds)):
        out.append(Job("digits-lab", "digits", i, seed))
        for name in TASKS:
            for attack in ATTACKS:
                for family in families:
                    out.append(Job("attack", name, i, seed, family, attack.label))
                if attack.setting == "schema":
                    out.append(Job("attack", name, i, seed, "rf", attack.label, "recommended"))
            out.append(Job("equation-solving", name, i, seed, "lr"))
            for defense in ("none", "recommended"):
                out.append(Job("honest", name, i, seed, defense=defense))
    return out


# --- rendering ------------------------------------------------------------------------------


def select(records: list[dict], **match: Any) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def mean_min(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.3f} (min {min(values):.3f})"


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {std:.3f} (seeds: {', '.join(f'{v:.3f}' for v in values)})"


def degenerate(records: list[dict], task: str, family: str) -> float | None:
    """The victim's majority share when it answers one class for every evaluation row."""
    shares = [
        r["victim_majority"] for r in select(records, measure="attack", task=task, family=family)
    ]
    return shares[0] if shares and shares[0] >= 1.0 else None


def row(
    setting: str,
    label: str,
    cells: list[str],
    means: dict[str, float],
    excluded: list[str],
    target: float,
) -> str:
    """One table row: the cells, the mean over the non-degenerate families, the target, met."""
    kept = [v for f, v in means.items() if f not in excluded]
    overall = float(np.mean(kept)) if kept else float("nan")
    met = bool(kept) and min(kept) >= target
    return (
        f"| {setting} | {label} | "
        + " | ".join(cells)
        + f" | {overall:.3f} | ≥ {target:.2f} each | {'yes' if met else '**no**'} |"
    )


def attack_tables(records: list[dict]) -> list[str]:
    lines: list[str] = []
    for name in TASKS:
        families = [f for f in FAMILIES if select(records, measure="attack", task=name, family=f)]
        excluded = [f for f in families if degenerate(records, name, f) is not None]
        lines += [
            f"#### {name} (hard labels, {BUDGET} queries, undefended)",
            "",
            "| setting | attack | " + " | ".join(families) + " | mean | target | met |",
            "|---|---|" + "---|" * len(families) + "---|---|---|",
        ]
        for setting, target in TARGETS.items():
            best: dict[str, float] = {}
            for attack in (a for a in ATTACKS if a.setting == setting):
                means = {}
                for family in families:
                    group = select(
                        records,
                        measure="attack",
                        task=name,
                        family=family,
                        attack=attack.label,
                        defense="none",
                    )
                    values = [r["fidelity"] for r in group if "fidelity" in r]
                    if values and family not in excluded:
                        means[family] = float(np.mean(values))
                        best[family] = max(best.get(family, 0.0), means[family])
                    means.setdefault(family, float("nan"))
                cells = [
                    "degenerate†"
                    if f in excluded
                    else mean_min(
                        [
                            r["fidelity"]
                            for r in select(
                                records,
                                measure="attack",
                                task=name,
                                family=f,
                                attack=attack.label,
                                defense="none",
                            )
                            if "fidelity" in r
                        ]
                    )
                    for f in families
                ]
                lines.append(row(setting, attack.label, cells, means, excluded, target))
            cells = ["—" if f in excluded else f"{best.get(f, float('nan')):.3f}" for f in families]
            lines.append(row(setting, "**best of the above**", cells, best, excluded, target))
        for family in excluded:
            lines += [
                "",
                f"† the `{family}` victim on {name} is degenerate: it answers one class for every "
                f"evaluation row (majority share {degenerate(records, name, family):.3f}), so any "
                "copy that learns that class agrees with it; it is left out of the mean and the "
                "target.",
            ]
        lines.append("")
    return lines


def equation_table(records: list[dict]) -> list[str]:
    lines = [
        "| task | classes | queries (d + 1) | fidelity mean (min) | max probability error "
        "| met (≥ 0.999 every seed) |",
        "|---|---|---|---|---|---|",
    ]
    for name in TASKS:
        group = select(records, measure="equation-solving", task=name)
        if not group:
            continue
        task = task_of(name)
        fids = [r["fidelity"] for r in group if "fidelity" in r]
        errors = [r["max_probability_error"] for r in group if "fidelity" in r]
        failed = len(group) - len(fids)
        met = not failed and min(fids) >= 0.999
        lines.append(
            f"| {name} | {task.n_classes} | {max(r['queries'] for r in group)} | "
            f"{mean_min(fids)}{f'; {failed} of {len(group)} seeds failed' if failed else ''} | "
            f"{max(errors) if errors else float('nan'):.1e} | {'yes' if met else '**no**'} |"
        )
    return lines


def defense_tables(records: list[dict]) -> list[str]:
    lines = [
        f"Honest clients: {HONEST_CLIENTS} per seed, each its own key, every evaluation row once "
        "in its own random order, batches of 1–20. Loss = accuracy under `none` minus under "
        "`recommended` (points); target ≤ 0.5 points and no client flagged.",
        "",
        "| task | accuracy `none` | accuracy `recommended` mean (worst client) "
        "| loss, points (worst client) | clients flagged | met |",
        "|---|---|---|---|---|---|",
    ]
    for name in TASKS:
        base = select(records, measure="honest", task=name, defense="none")
        rec = select(records, measure="honest", task=name, defense="recommended")
        if not base or not rec:
            continue
        plain = np.concatenate([r["accuracies"] for r in base])
        guarded = np.concatenate([r["accuracies"] for r in rec])
        loss = 100 * (plain.mean() - guarded.mean())
        worst = 100 * (plain.max() - guarded.min())
        flagged = [c for r in rec for c in r["flagged"]]  # stores are per seed
        met = loss <= 100 * MAX_HONEST_LOSS and not flagged
        lines.append(
            f"| {name} | {plain.mean():.4f} | {guarded.mean():.4f} ({guarded.min():.4f}) | "
            f"{loss:.2f} ({worst:.2f}) | {len(flagged)} of {HONEST_CLIENTS * len(rec)} | "
            f"{'yes' if met else '**no**'} |"
        )
    lines += [
        "",
        "Schema-only thieves against the task's forest (`rf`), 300 queries in requests of 30: "
        "fidelity undefended and behind `recommended`; the target is defended ≤ halfway = "
        "(undefended + majority) / 2, where majority is the share of the victim's most common "
        "label on the evaluation rows (what a copy answering one class gets). Judged on the "
        "means; the worst seed is the highest defended fidelity.",
        "",
        "| task | attack | undefended | majority | halfway | `recommended` mean (worst seed) "
        "| thief flagged after (queries) | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    below = []
    for name in TASKS:
        for attack in SCHEMA_ATTACKS:
            keys = {"measure": "attack", "task": name, "family": "rf", "attack": attack.label}
            plain = [
                r["fidelity"] for r in select(records, **keys, defense="none") if "fidelity" in r
            ]
            rec = select(records, **keys, defense="recommended")
            defended = [r["fidelity"] for r in rec if "fidelity" in r]
            if not plain or not defended:
                continue
            majority = rec[0]["victim_majority"]
            halfway = (float(np.mean(plain)) + majority) / 2
            after = [r["flagged_after"] for r in rec if r.get("flagged_after") is not None]
            flagged = f"{len(after)}/{len(rec)} seeds, ≤ {max(after)}" if after else "never"
            lines.append(
                f"| {name} | {attack.label} | {np.mean(plain):.3f} | {majority:.3f} | "
                f"{halfway:.3f} | {np.mean(defended):.3f} ({max(defended):.3f}) | {flagged} | "
                f"{'yes' if np.mean(defended) <= halfway else '**no**'} |"
            )
            if np.mean(plain) <= majority + 0.02:
                below.append(f"{name} {attack.label} ({np.mean(plain):.3f} vs {majority:.3f})")
    if below:
        lines += [
            "",
            "Undefended at most 2 points above the majority rate (a copy answering the "
            "victim's most common label does as well), so the halfway target there says little "
            "(met or missed within noise): " + ", ".join(below) + ".",
        ]
    return lines


def complete_seeds(records: list[dict], per_seed: int) -> list[int]:
    """Seeds whose every run is in ``records`` (a stopped run renders only those)."""
    counts: dict[int, int] = {}
    for r in records:
        counts[r["seed_index"]] = counts.get(r["seed_index"], 0) + 1
    return sorted(i for i, n in counts.items() if n == per_seed)


def render(records: list[dict], seeds: int, requested: int, total: int, finished: int) -> str:
    lab = sorted(select(records, measure="digits-lab"), key=lambda r: r["seed_index"])
    digits = [r["fidelity"] for r in lab]
    minutes = sum(r["seconds"] for r in records) / 60
    lines = [
        "## Your own tasks: tabular models (`benchmarks/tasks.py`)",
        "",
        f"breast-cancer (30 features, 2 classes) and wine (13 features, 3 classes), scikit-learn's "
        f"bundled tables, unscaled. Mean over {seeds} seeds (SeedSequence children of "
        f"{ROOT_SEED}, the same seeds for every measurement and the root of "
        f"`benchmarks/attacks.py`); fidelity = agreement with the victim on the task's "
        f"evaluation rows; {len(records)} runs of the {seeds} complete seeds shown "
        f"({finished} of the {total} planned runs finished), {minutes:.1f} min of run time summed "
        "over runs, 2 worker processes with one BLAS thread each.",
        "",
        *(
            [
                f"**Fewer seeds than asked:** {seeds} of the {requested} seeds of the run "
                "completed before it was stopped to fit its time budget (2 shared cores); only "
                "complete seeds are shown, so every cell has the same seeds. The targets ask "
                "for 5.",
                "",
            ]
            if seeds < requested
            else []
        ),
        f"Baseline in the same run: the lab's attack (300 `owasp-synthetic` queries, `lr` copy, "
        f"hard labels) on the digits forest: fidelity {mean_std(digits)} on the 540 test digits "
        "(the attack suite's figure above: 0.430 ± 0.058).",
        "",
        "### Extraction, every victim family",
        "",
        "Victims are trained without the attacker-public rows (`holdout`). `public`: the thief "
        f"owns {PUBLIC_ROWS} unlabeled attacker-public rows (a Gaussian fit to them, clipped to "
        "the bounds; or ActiveThief over a 3,000-row pool from that fit, asking the 20 rows "
        "first); `schema`: it knows only the published bounds. Copy: the `mlp` substitute on "
        "standardised features, 300 queries in requests of 30. Cells: mean (worst seed).",
        "",
        *attack_tables(records),
        "### Equation solving (probabilities, logistic-regression victim)",
        "",
        *equation_table(records),
        "",
        "### `recommended` on tabular tasks",
        "",
        *defense_tables(records),
    ]
    errors = sorted({r["error"] for r in records if r.get("error")})
    if errors:
        lines += ["", "Runs that produced no model said:", *[f"- {e}" for e in errors]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="rf and lr victims only, no doc")
    parser.add_argument("--records", default="runs/bench-tasks.jsonl", help="one JSON per run")
    parser.add_argument("--from-records", action="store_true", help="only re-render the section")
    args = parser.parse_args()
    todo = jobs(args.seeds, args.quick)
    records_path = Path(args.records)
    if args.from_records:
        records = [json.loads(line) for line in records_path.read_text().splitlines() if line]
    else:
        records_path.parent.mkdir(parents=True, exist_ok=True)
        records_path.write_text("")
        records = []
        with ProcessPoolExecutor(args.workers, initializer=one_thread) as pool:
            futures = [pool.submit(run, job) for job in todo]
            for i, future in enumerate(as_completed(futures), 1):
                record = future.result()
                records.append(record)
                with records_path.open("a") as handle:
                    handle.write(json.dumps(record, default=float) + "\n")
                shown = {k: record.get(k) for k in ("fidelity", "error") if record.get(k)}
                print(
                    f"[{i}/{len(todo)}] {record['measure']} {record['task']} {record['family']} "
                    f"{record['attack']} {record['defense']} s{record['seed_index']} {shown} "
                    f"{record['seconds']:.1f}s",
                    flush=True,
                )
    seeds = complete_seeds(records, len(jobs(1, args.quick)))
    kept = [r for r in records if r["seed_index"] in seeds]
    body = render(kept, len(seeds), args.seeds, len(todo), len(records))
    if args.quick:
        print(body)
    else:
        print(write_section("tasks", body))


if __name__ == "__main__":
    main()
