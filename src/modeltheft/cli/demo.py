"""``modeltheft demo``: the lab run, its table, insights and plots (and, asked, the report)."""

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from modeltheft import __version__
from modeltheft.cli.render import lab_insights, lab_table
from modeltheft.data import lab_split
from modeltheft.experiments.lab import ATTACK, SCENARIOS, SUBSTITUTE, LabRun, run_lab
from modeltheft.reporting.plots import accuracy_plot, predictions_plot, query_success_plot


def lab_records(run: LabRun) -> list[dict[str, Any]]:
    """The lab run as sweep records (one per scenario × repeat), the shape ``run_task`` writes.

    Defense ``none``/``lab`` (the presets), attack ``lab`` (owasp-synthetic, hard labels,
    one query per request), seed index = repeat. The honest client ran once per scenario,
    so its figures repeat; the lab's presets have no detector, so nobody is flagged.
    """
    from modeltheft.experiments.run import SAMPLES
    from modeltheft.experiments.spec import AttackEntry, DefenseEntry, Task

    split = lab_split()
    victim = run.victim.predict(split.X_test[:SAMPLES]).tolist()
    attack = AttackEntry(name="lab", strategy=ATTACK, substitute=SUBSTITUTE, batch_size=1)
    records = []
    for scenario, (name, preset) in zip(run.scenarios, SCENARIOS, strict=True):
        honest = run.honest.get(name, {})
        for index, (result, measured) in enumerate(
            zip(run.stolen.get(name, []), scenario.runs, strict=True)
        ):
            task = Task(
                sweep="demo",
                victim="rf",
                defense=DefenseEntry(preset, {"preset": preset}),
                attack=attack,
                budget=run.budget,
                seed_index=index,
                root_seed=run.seed,
            )
            curve = [{"spent": p.spent, **p.metrics} for p in result.curve if p.metrics is not None]
            if not curve:
                curve = [
                    {
                        "spent": run.budget,
                        "fidelity": measured["fidelity"],
                        "accuracy": measured["stolen_accuracy"],
                    }
                ]
            sent = honest.get("sent") or 0
            metrics: dict[str, Any] = {
                "honest_accuracy": honest.get("useful_fraction"),
                "honest_refused": 1 - honest.get("answered", 0) / sent if sent else None,
                "fidelity": measured["fidelity"],
                "accuracy": measured["stolen_accuracy"],
                "answered": result.answered,
                "refused": result.sent - result.answered,
                "flagged_after": None,
                "detectors": [],
                "curve": curve,
                "samples": {
                    "victim": victim,
                    "stolen": result.model.predict(split.X_test[:SAMPLES]).tolist(),
                },
            }
            records.append(
                {
                    "id": task.id,
                    "task": task.describe(),
                    "seed": {"entropy": run.seed, "spawn_key": [index]},
                    "version": __version__,
                    "metrics": metrics,
                    "status": "ok",
                    "error": None,
                    "timings": {"seconds": None},
                }
            )
    return records


def write_lab_report(run: LabRun, folder: Path) -> dict[str, Path]:
    """The lab run's records in ``folder/results.jsonl`` (replaced), and its report there."""
    from modeltheft.experiments.results import RESULTS, ResultsStore
    from modeltheft.reporting.report import build_report

    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULTS).unlink(missing_ok=True)  # a previous demo's repeats must not linger
    store = ResultsStore(folder)
    for record in lab_records(run):
        store.append(record)
    return build_report(folder)


def run_demo(
    *, repeats: int, seed: int, out: Path, budget: int, console: Console, report: bool = False
) -> None:
    """Run the lab and write results.json and the three plots into ``out``.

    With ``report``, also the sweep report of the run (``out/report/report.html``).
    """
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
    if report:
        written = write_lab_report(run, out / "report")
        console.print(f"report: {written['html']}", markup=False, highlight=False, soft_wrap=True)
