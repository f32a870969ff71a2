"""Rich rendering of results for the terminal."""

from rich.console import Console
from rich.table import Table

from modeltheft.experiments.lab import LabRun

NAMES = {"no_defense": "Stolen (no defense)", "lab_defenses": "Stolen (lab defenses)"}


def _pm(mean: float, std: float | None, percent: bool = False) -> str:
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.3f}"
    return (
        text
        if std is None
        else f"{text} ± {std * scale:.1f}{unit}"
        if percent
        else f"{text} ± {std:.3f}"
    )


def lab_table(run: LabRun) -> Table:
    """The lab's results table, with spreads over repeats."""
    title = f"OWASP ML05 lab — {run.budget} queries, {run.repeats} repeat(s), seed {run.seed}"
    if run.task is not None and not run.task.is_image:
        title = f"{run.task.name}: {title}"
    table = Table(title=title)
    for header in ("Scenario", "Accuracy", "Query success", "Fidelity"):
        table.add_column(header, justify="left" if header == "Scenario" else "right")
    table.add_row("Victim (RF)", f"{run.victim_accuracy:.3f}", "-", "-")
    for s in run.scenarios:
        table.add_row(
            NAMES.get(s.name, s.name),
            _pm(s.stolen_accuracy, s.stolen_accuracy_std),
            f"{100 * s.query_success_rate:.1f}%",
            _pm(s.fidelity, s.fidelity_std),
        )
    return table


def lab_insights(run: LabRun, console: Console) -> None:
    """A few sentences on what the numbers mean."""
    plain, defended = run.scenarios
    console.print("\n[bold]Key insights[/bold]")
    tabular = run.task is not None and not run.task.is_image
    name = run.task.name if run.task is not None else ""
    if tabular:
        console.print(
            f"• With {plain.budget} queries drawn uniformly within the published bounds and no "
            f"real rows, the thief's copy agrees with the victim on {plain.fidelity:.1%} of the "
            f"{name} evaluation rows and is right on {plain.stolen_accuracy:.1%} "
            f"(the victim: {run.victim_accuracy:.1%})."
        )
    else:
        console.print(
            f"• With {plain.budget} random 'digit-like' queries and no real digits, the thief's "
            f"copy recognises {plain.stolen_accuracy:.1%} of real test digits "
            f"(the victim: {run.victim_accuracy:.1%})."
        )
    console.print(
        f"• The lab's five defenses cut the copy to {defended.stolen_accuracy:.1%} "
        f"({run.effectiveness:.1%} lower) and answer {defended.query_success_rate:.1%} "
        "of its queries."
    )
    if run.honest:
        before, after = run.honest["no_defense"], run.honest["lab_defenses"]
        what = "evaluation rows" if tabular else "test digits"
        console.print(
            f"• But an honest client sending the {after['sent']} {what} pays too: "
            f"{after['answered']} answered (was {before['answered']}), "
            f"{after['accuracy_of_answers']:.1%} of them correct (was "
            f"{before['accuracy_of_answers']:.1%}) — {after['useful_fraction']:.0%} useful answers."
        )
