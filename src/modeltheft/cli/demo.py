"""``modeltheft demo``: the lab run, its table, insights and plots."""

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from modeltheft.cli.render import lab_insights, lab_table
from modeltheft.data import lab_split
from modeltheft.experiments.lab import SCENARIOS, run_lab
from modeltheft.reporting.plots import accuracy_plot, predictions_plot, query_success_plot


def run_demo(*, repeats: int, seed: int, out: Path, budget: int, console: Console) -> None:
    """Run the lab and write results.json and the three plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    console.print("[bold]OWASP ML05:2023 model theft lab[/bold] — victim, API, attack, defenses")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks = {
            name: bar.add_task(f"{name:>13} attack", total=budget * repeats)
            for name, _ in SCENARIOS
        }

        def progress(scenario: str, repeat: int, spent: int, total: int) -> None:
            bar.update(tasks[scenario], completed=repeat * total + spent)

        run = run_lab(out, repeats=repeats, seed=seed, budget=budget, progress=progress)
    console.print(lab_table(run))
    lab_insights(run, console)

    split = lab_split()
    picks = np.random.default_rng(seed).choice(len(split.y_test), size=12, replace=False)
    images = split.X_test[picks]
    columns_pred = {"victim": run.victim.predict(images)}
    for name, label in (("no_defense", "stolen"), ("lab_defenses", "stolen, defended")):
        columns_pred[label] = run.first_models[name].predict(images)
    paths = [
        accuracy_plot(run.victim_accuracy, run.scenarios, out / "accuracy.png"),
        query_success_plot(run.scenarios, out / "query_success.png"),
        predictions_plot(images, split.y_test[picks], columns_pred, out / "predictions.png"),
    ]
    console.print(f"\nwrote {out / 'results.json'} and " + ", ".join(str(p) for p in paths))
