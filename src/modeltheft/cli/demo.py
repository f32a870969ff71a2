"""``modeltheft demo``: the lab run, its table, insights and plots (and, asked, the report)."""

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from modeltheft import __version__
from modeltheft.cli.render import lab_insights, lab_table
from modeltheft.errors import ConfigError
from modeltheft.evaluation.plots import confusion_plot
from modeltheft.experiments.lab import ATTACK, SCENARIOS, SUBSTITUTE, LabRun, lab_attack, run_lab
from modeltheft.experiments.results import RunRecord, task_info
from modeltheft.measure import agreement, eval_rows
from modeltheft.reporting.plots import accuracy_plot, predictions_plot, query_success_plot
from modeltheft.tasks import DEFAULT_TASK, Task, digits_task, get_task


def lab_records(run: LabRun) -> list[RunRecord]:
    """The lab run as sweep records (one per scenario × repeat), the shape ``run_task`` writes.

    Defense ``none``/``lab`` (the presets), attack ``lab`` (the lab's attack on the task, hard
    labels, one query per request), seed index = repeat. The honest client ran once per
    scenario, so its figures repeat; the lab's presets have no detector, so nobody is flagged.
    """
    from modeltheft.experiments.run import SAMPLES
    from modeltheft.experiments.spec import AttackEntry, DefenseEntry, Run

    task = run.task or digits_task()
    rows = eval_rows(task)
    truth = run.victim.predict(rows.X)
    attack = AttackEntry(name="lab", strategy=lab_attack(task), substitute=SUBSTITUTE, batch_size=1)
    info = task_info(task, len(rows))
    records = []
    for scenario, (name, preset) in zip(run.scenarios, SCENARIOS, strict=True):
        honest = run.honest.get(name, {})
        for index, (result, measured) in enumerate(
            zip(run.stolen.get(name, []), scenario.runs, strict=True)
        ):
            cell = Run(
                sweep="demo",
                victim="rf",
                defense=DefenseEntry(preset, {"preset": preset}),
                attack=attack,
                budget=run.budget,
                seed_index=index,
                root_seed=run.seed,
                task=task.name,
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
            metrics: dict = {
                "honest_accuracy": honest.get("useful_fraction"),
                "honest_refused": 1 - honest.get("answered", 0) / sent if sent else None,
                "fidelity": measured["fidelity"],
                "accuracy": measured["stolen_accuracy"],
                "answered": result.answered,
                "refused": result.sent - result.answered,
                "flagged_after": None,
                "detectors": [],
                "curve": curve,
            }
            predicted = result.model.predict(rows.X)
            if task.is_image:
                metrics["samples"] = {
                    "victim": truth[:SAMPLES].tolist(),
                    "stolen": predicted[:SAMPLES].tolist(),
                }
            else:
                found = agreement(predicted, truth, task.classes)
                metrics |= {"per_class": found["per_class"], "confusion": found["confusion"]}
            records.append(
                RunRecord(
                    id=cell.id,
                    task=cell.describe(),
                    seed={"entropy": run.seed, "spawn_key": [index]},
                    version=__version__,
                    metrics=metrics,
                    task_info=info,
                )
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


def _figures(run: LabRun, task: Task, seed: int, out: Path) -> list[Path]:
    """Accuracy and query success; sample images for an image task, else confusion matrices."""
    rows = eval_rows(task)
    # reporting.plots (issue #11) names the rows; the digits call stays as it was
    wording = {} if task.is_image else {"measured_on": f"the {len(rows)} evaluation rows"}
    paths = [
        accuracy_plot(run.victim_accuracy, run.scenarios, out / "accuracy.png", **wording),
        query_success_plot(run.scenarios, out / "query_success.png"),
    ]
    if task.is_image:
        picks = np.random.default_rng(seed).choice(len(rows), size=12, replace=False)
        images = rows.X[picks]
        columns_pred = {"victim": run.victim.predict(images)}
        for name, label in (("no_defense", "stolen"), ("lab_defenses", "stolen, defended")):
            columns_pred[label] = run.first_models[name].predict(images)
        paths.append(
            predictions_plot(images, rows.y[picks], columns_pred, out / "predictions.png")  # type: ignore[index]
        )
    else:
        title = f"{task.name}: the first copy of each scenario against the victim"
        paths.append(confusion_plot(run.agreement, out / "agreement.png", title))
    return paths


def run_demo(
    *,
    repeats: int,
    seed: int,
    out: Path,
    budget: int,
    console: Console,
    report: bool = False,
    task: str = DEFAULT_TASK,
) -> None:
    """Run the lab on ``task`` and write results.json and the plots into ``out``.

    With ``report``, also the sweep report of the run (``out/report/report.html``).
    """
    problem = get_task(task)
    if problem.data is None:
        raise ConfigError(f"the demo needs a task with data; {task!r} has none")
    out.mkdir(parents=True, exist_ok=True)
    console.print("[bold]OWASP ML05:2023 model theft lab[/bold] — victim, API, attack, defenses")
    if not problem.is_image:
        console.print(
            f"task {problem.name!r} ({problem.n_features} features, {problem.n_classes} classes, "
            f"{len(eval_rows(problem))} evaluation rows): the lab's attack ({ATTACK}) draws "
            f"digit images, so the thief uses {lab_attack(problem)!r} (uniform within the "
            f"published bounds) with the lab's {SUBSTITUTE.upper()} substitute",
            markup=False,
            highlight=False,
        )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks = {
            name: bar.add_task(f"{name:>13} attack", total=budget * repeats)
            for name, _ in SCENARIOS
        }

        def progress(scenario: str, repeat: int, spent: int, total: int) -> None:
            bar.update(tasks[scenario], completed=repeat * total + spent)

        run = run_lab(
            out, repeats=repeats, seed=seed, budget=budget, progress=progress, task=problem
        )
    console.print(lab_table(run))
    lab_insights(run, console)
    paths = _figures(run, problem, seed, out)
    console.print(f"\nwrote {out / 'results.json'} and " + ", ".join(str(p) for p in paths))
    if report:
        written = write_lab_report(run, out / "report")
        console.print(f"report: {written['html']}", markup=False, highlight=False, soft_wrap=True)
