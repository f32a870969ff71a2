"""What the report shows, per task: tables, notes, sample images or per-class agreement.

A run folder with one task gives one :class:`Section` with today's headings; with several
tasks, one section per task whose headings name it. Image tasks show sample images labelled
by the victim and the copy; other tasks show per-class agreement and confusion matrices.
"""

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from modeltheft.errors import ModelTheftError
from modeltheft.reporting import statistics as st
from modeltheft.reporting import tables
from modeltheft.reporting.figures import image_png
from modeltheft.reporting.records import Run, Sweep, TaskInfo
from modeltheft.reporting.tables import Table


@dataclass
class Section:
    """One task's part of the report, already formatted."""

    sweep: Sweep
    """The runs of this task."""
    task: TaskInfo
    label: str
    """The task's name when the folder holds several tasks, else empty."""
    anchor: str
    """Suffix of this section's HTML ids and figure names (empty for a single task)."""
    fidelity_table: Table
    pareto_table: Table
    pareto_budget: int | None
    pareto_points: list[dict[str, Any]]
    detection_table: Table
    detection_recorded: bool
    watermark_table: Table
    samples: dict[str, Any] | None
    classes_table: Table | None
    """Per-class agreement (tasks that are not images, when the runs recorded it)."""
    confusion: dict[str, Any] | None
    notes: dict[str, str]
    figures: dict[str, str] = field(default_factory=dict)
    """Inline SVG of each figure (HTML), by kind."""
    files: dict[str, str] = field(default_factory=dict)
    """PNG file name of each figure (Markdown), by kind."""

    def heading(self, text: str) -> str:
        """A heading, naming the task when there are several."""
        return f"{text} — task {self.label}" if self.label else text

    @property
    def samples_title(self) -> str:
        return "Sample digits" if self.task.name == "digits" else "Sample images"


@dataclass
class Report:
    """Everything the templates show."""

    title: str
    overview: list[tuple[str, str]]
    spec_text: str | None
    sections: list[Section]
    failed_table: Table


def notes(task: TaskInfo) -> dict[str, str]:
    """The explanatory paragraph of each section, worded for the task."""
    trained = "real digits" if task.name == "digits" else "the real training rows"
    return {
        "fidelity": (
            "Mean fidelity (agreement of the stolen copy with the victim on the "
            f"{task.eval_text}) after each number of queries, pooled over the runs' budget "
            "curves; the band is the 95 % confidence interval of the mean over seeds. Dotted "
            "lines mark the sweep's budgets."
        ),
        "table": "Mean ± standard deviation over seeds, at each run's budget.",
        "pareto": (
            "Each point is a defense × attack at the largest budget, with 95 % confidence "
            "intervals over seeds. A defense is good when it keeps honest accuracy high "
            "(right) and the thief's fidelity low (down)."
        ),
        "detection": (
            "Share of the thief's runs in which a detector raised an alert, and the queries the "
            "thief had sent by the first alert (over the flagged runs)."
        ),
        "watermark": (
            "p-value that a model agrees this often with the watermarked (deliberately wrong) "
            "answers by chance: small for a stolen copy is evidence of theft; the independent "
            f"model, trained on {trained}, is the control and should not be small."
        ),
    }


def slug(name: str) -> str:
    """A task name as part of an HTML id or a file name."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.") or "task"


@lru_cache(maxsize=8)
def _eval_rows(name: str) -> np.ndarray | None:
    """The evaluation rows of a task this installation can load (None otherwise)."""
    from modeltheft.tasks import get_task

    try:
        task = get_task(name)
    except (ModelTheftError, OSError):
        return None
    return None if task.data is None else task.data.X_eval


def _images(run: Run, task: TaskInfo, count: int) -> list[bytes] | None:
    """PNGs of the run's first ``count`` evaluation rows: from the record or from the task."""
    shape = task.image_shape
    if shape is None:
        return None
    size = int(np.prod(shape))
    rows = run.metrics["samples"].get("rows")
    if not isinstance(rows, list):
        rows = _eval_rows(task.key)
    try:
        pixels = np.asarray(rows[:count] if rows is not None else [], dtype=float)
    except (TypeError, ValueError):
        return None
    if pixels.ndim != 2 or pixels.shape[1] != size:
        return None
    return [image_png(row, shape) for row in pixels]


def samples(sweep: Sweep, task: TaskInfo) -> dict[str, Any] | None:
    """For the first attack at its largest budget: each defense's median-fidelity run, with
    the first evaluation images labelled by the victim and by the copy."""
    chosen = st.median_runs(sweep, "samples")
    if chosen is None:
        return None
    attack, top, runs = chosen
    rows = []
    for defense, run, of in runs:
        victim = list(run.metrics["samples"].get("victim") or [])
        stolen = list(run.metrics["samples"].get("stolen") or [])
        images = _images(run, task, min(len(victim), len(stolen)))
        if images is None:
            continue
        digits = [
            {"png": png, "victim": victim[k], "stolen": stolen[k], "agree": victim[k] == stolen[k]}
            for k, png in enumerate(images)
        ]
        rows.append(
            {
                "defense": defense,
                "run": run.id,
                "seed": run.seed_index,
                "of": of,
                "fidelity": f"{run.metric('fidelity'):.3f}",
                "agree": sum(d["agree"] for d in digits),
                "digits": digits,
            }
        )
    return {"attack": attack, "budget": top, "rows": rows}


def confusion(sweep: Sweep) -> dict[str, Any] | None:
    """For the first attack at its largest budget: each defense's median-fidelity run's
    confusion matrix (victim label × copy label)."""
    chosen = st.median_runs(sweep, "confusion")
    if chosen is None:
        return None
    attack, top, runs = chosen
    panels = []
    for defense, run, of in runs:
        found = run.confusion()
        if found is not None:
            title = f"{defense}: fidelity {run.metric('fidelity'):.3f} (median of {of})"
            panels.append(
                {"defense": defense, "title": title, "classes": found[0], "matrix": found[1]}
            )
    return {"attack": attack, "budget": top, "panels": panels} if panels else None


def section(sweep: Sweep, task: TaskInfo, label: str = "", anchor: str = "") -> Section:
    """One task's section of the report."""
    budget, points = st.pareto_points(sweep)
    detection, recorded = tables.detection_table(sweep)
    text = notes(task)
    shown = samples(sweep, task) if task.is_image else None
    if task.is_image:
        count = max((len(r["digits"]) for r in shown["rows"]), default=0) if shown else 0
        if shown and not shown["rows"]:
            text["samples"] = f"The runs recorded sample labels, but not the {task.items}."
            shown = None
        else:
            text["samples"] = (
                f"The first {count} {task.items}, labelled by the victim and by a stolen copy "
                f"(attack “{shown['attack']}”, {shown['budget']} queries): for each defense, "
                f"its run of median fidelity. Red {task.items.split()[-1]} are those the copy "
                "gets different from the victim."
                if shown
                else "No run recorded sample labels."
            )
    classes_budget, classes = (None, None) if task.is_image else tables.per_class_table(sweep)
    matrices = None if task.is_image else confusion(sweep)
    if not task.is_image:
        text["classes"] = (
            f"Mean ± standard deviation over seeds of the copy's agreement with the victim on "
            f"the {task.eval_text} of each victim label, at {classes_budget} queries."
            if classes
            else "No run recorded per-class agreement."
        )
        if matrices:
            text["confusion"] = (
                "Label counts on the evaluation rows, victim (rows) against copy (columns), of "
                f"each defense's run of median fidelity (attack “{matrices['attack']}”, "
                f"{matrices['budget']} queries)."
            )
    if sweep.ok and not recorded:
        text["detection"] += " These runs recorded no detection data."
    watermarks = tables.watermark_table(sweep)
    if not watermarks:
        text["watermark"] = "No defense in these runs watermarked its answers."
    return Section(
        sweep=sweep,
        task=task,
        label=label,
        anchor=anchor,
        fidelity_table=tables.fidelity_table(sweep),
        pareto_table=tables.pareto_table(points),
        pareto_budget=budget,
        pareto_points=points,
        detection_table=detection,
        detection_recorded=recorded,
        watermark_table=watermarks,
        samples=shown,
        classes_table=classes,
        confusion=matrices,
        notes=text,
    )


def build(sweep: Sweep, spec_text: str | None) -> Report:
    """The report of a run folder: one section per task."""
    groups = sweep.by_task()
    sections = []
    used: set[str] = set()
    for task, part in groups:
        anchor = ""
        if len(groups) > 1:
            anchor = base = f"-{slug(task.name)}"
            while anchor in used:
                anchor = f"{base}-{len(used)}"
            used.add(anchor)
        sections.append(section(part, task, task.name if len(groups) > 1 else "", anchor))
    return Report(
        title=f"Model-theft sweep “{sweep.name}”",
        overview=tables.overview(sweep),
        spec_text=spec_text,
        sections=sections,
        failed_table=tables.failed_table(sweep),
    )
