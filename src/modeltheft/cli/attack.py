"""``modeltheft attack``: steal a model through an HTTP API, with a resumable query log."""

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.data import lab_split
from modeltheft.evaluation.metrics import accuracy, fidelity
from modeltheft.evaluation.results import environment, write_json
from modeltheft.oracle import HttpOracle, QueryLog
from modeltheft.victim import load_victim, save_victim


def run_attack(
    *,
    target: str,
    out: Path,
    api_key: str,
    strategy: str,
    budget: int,
    seed: int,
    substitute: str,
    batch_size: int,
    on_rate_limit: str,
    victim_path: Path | None,
    console: Console,
) -> dict:
    """Query ``target``, fit the substitute, save it and ``results.json``; returns the record."""
    chosen = make_strategy(strategy)
    model = make_substitute(substitute, seed)
    victim = load_victim(victim_path).model if victim_path is not None else None
    log = QueryLog(out / "queries.jsonl")
    if log.loaded:
        console.print(f"resuming: {log.loaded} answers already paid for in {log.path}")
    oracle = HttpOracle(target, api_key, budget=budget, log=log, on_rate_limit=on_rate_limit)
    columns = (TextColumn("querying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("attack", total=budget)
            result = extract(
                oracle,
                chosen,
                model,
                budget,
                np.random.default_rng(seed),
                batch_size=batch_size,
                progress=lambda spent, total: bar.update(task, completed=spent),
            )
    finally:
        oracle.close()
    split = lab_split()
    predicted = result.model.predict(split.X_test)
    metrics: dict[str, float | int | None] = {
        "sent": result.sent,
        "answered": result.answered,
        "refused": oracle.refused,
        "reused_from_log": oracle.reused,
        "query_success_rate": result.query_success_rate,
        "stolen_accuracy": accuracy(predicted, split.y_test),
        "fidelity": fidelity(predicted, victim.predict(split.X_test))
        if victim is not None
        else None,
    }
    spec = {
        "target": target,
        "strategy": strategy,
        "substitute": substitute,
        "budget": budget,
        "batch_size": batch_size,
        "on_rate_limit": on_rate_limit,
    }
    save_victim(
        result.model, out / "stolen.skops", {"family": substitute, "stolen_from": target, **spec}
    )
    record = {"spec": spec, "seed": seed, "metrics": metrics, "environment": environment()}
    write_json(out / "results.json", record)
    console.print(
        f"{result.answered}/{result.sent} queries answered "
        f"({oracle.reused} reused from the log); stolen accuracy on the 540 lab test digits: "
        f"{metrics['stolen_accuracy']:.3f}"
        + (f"; fidelity {metrics['fidelity']:.3f}" if metrics["fidelity"] is not None else "")
    )
    console.print(f"saved {out / 'stolen.skops'}, {out / 'results.json'}, {log.path}")
    return record
