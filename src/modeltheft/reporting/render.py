"""A :class:`~modeltheft.reporting.sections.Report` as HTML (jinja2), Markdown, and runs as CSV.

Every string that comes from a spec or a record is escaped: jinja2 autoescaping in the HTML,
:func:`md_text` in the Markdown, and a leading formula character quoted in the CSV.
"""

import base64
import csv
import json
import re
from pathlib import Path
from typing import Any

import jinja2

from modeltheft.errors import ModelTheftError
from modeltheft.reporting.records import Sweep
from modeltheft.reporting.sections import Report, Section
from modeltheft.reporting.tables import Table

CSV_TEXT_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_METRICS = (
    "fidelity",
    "accuracy",
    "answered",
    "refused",
    "honest_accuracy",
    "honest_refused",
    "flagged_after",
    "watermarks",
    "watermark_p",
    "watermark_p_independent",
)


def environment() -> jinja2.Environment:
    """The template environment: package templates, autoescaping, strict undefined."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("modeltheft.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


def html(report: Report) -> str:
    """The self-contained HTML page."""
    try:
        return environment().get_template("report.html.j2").render(report=report)
    except jinja2.TemplateError as exc:  # a packaging problem, not the user's
        raise ModelTheftError(f"cannot render the report template: {exc}") from exc


def md_text(text: object) -> str:
    """A Markdown table cell or heading: no raw HTML, no pipes, no emphasis, no links."""
    out = re.sub(r"([\\`*_\[\]#!])", r"\\\1", str(text))  # before the entities' own "#"
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("|", "&#124;").replace("\n", " ").replace("\r", " ")


def md_table(table: Table) -> str:
    """A Markdown pipe table, numeric columns right-aligned."""
    lines = [
        "| " + " | ".join(md_text(h) for h in table.headers) + " |",
        "|"
        + "|".join("---:" if i in table.numeric else "---" for i in range(len(table.headers)))
        + "|",
    ]
    lines += ["| " + " | ".join(md_text(c) or " " for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_section(s: Section) -> list[str]:
    def head(text: str) -> str:
        return f"## {md_text(s.heading(text))}"

    def figure(key: str, alt: str) -> list[str]:
        return [f"![{alt}]({s.files[key]})", ""] if key in s.files else []

    def table(t: Table | None, empty: str = "No successful runs.") -> list[str]:
        return [md_table(t) if t else empty]

    out = ["", head("Fidelity against queries"), "", md_text(s.notes["fidelity"]), ""]
    out += figure("fidelity", "fidelity against queries per attack")
    out += [head("Fidelity and accuracy per budget"), "", md_text(s.notes["table"]), ""]
    out += table(s.fidelity_table)
    out += ["", head("Defenses: honest accuracy against thief fidelity"), ""]
    out += [md_text(s.notes["pareto"]), "", *figure("pareto", "Pareto plot")]
    out += table(s.pareto_table)
    out += ["", head("Detection delays"), "", md_text(s.notes["detection"]), ""]
    out += table(s.detection_table)
    out += ["", head("Watermark evidence"), "", md_text(s.notes["watermark"]), ""]
    if s.watermark_table:
        out += [md_table(s.watermark_table)]
    if s.task.is_image:
        out += ["", head(s.samples_title), "", md_text(s.notes["samples"]), ""]
        out += figure("samples", s.samples_title.lower())
        if s.samples:
            rows = Table(["defense", "run", "seed", "fidelity", "agreement on these digits"])
            if s.task.name != "digits":
                rows.headers[-1] = "agreement on these images"
            for row in s.samples["rows"]:
                agree = f"{row['agree']}/{len(row['digits'])}"
                rows.rows.append(
                    [row["defense"], row["run"], str(row["seed"]), row["fidelity"], agree]
                )
            out += [md_table(rows)]
    else:
        out += ["", head("Per-class agreement"), "", md_text(s.notes["classes"]), ""]
        if s.classes_table:
            out += [md_table(s.classes_table), ""]
        if "confusion" in s.notes:
            out += [md_text(s.notes["confusion"]), ""]
            out += figure("confusion", "confusion matrices")
        while out[-1] == "":
            out.pop()
    return out


def markdown(report: Report) -> str:
    """The report as Markdown; figures are the PNG files named in each section's ``files``."""
    out = [f"# {md_text(report.title)}", "", "## Overview", ""]
    out += [f"- **{md_text(k)}**: {md_text(v)}" for k, v in report.overview]
    for s in report.sections:
        out += _md_section(s)
    out += ["", "## Failed runs", ""]
    out += [md_table(report.failed_table) if report.failed_table else "None."]
    return "\n".join(out) + "\n"


def csv_text(value: Any) -> Any:
    """Spreadsheet-safe text: a leading ``=``, ``+``, ``-`` or ``@`` is quoted with ``'``."""
    if isinstance(value, str) and value.startswith(CSV_TEXT_PREFIXES):
        return "'" + value
    return value


def csv_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per run: ids, the grid cell flattened, metric scalars, seconds.

    A ``task`` column (the task's name) comes after ``sweep`` when the records name it.
    """
    named = any(t.explicit for t in sweep.tasks)
    rows = []
    for r in sweep.runs:
        attack = r.task.get("attack") or {}
        defense = r.task.get("defense") or {}
        row: dict[str, Any] = {
            "id": r.id,
            "status": r.status,
            "error": csv_text(r.error or ""),
            "sweep": csv_text(r.sweep),
        }
        if named:
            row["task"] = csv_text(r.problem.name)
        row |= {
            "victim": csv_text(r.victim),
            "defense": csv_text(r.defense),
            "defense_config": csv_text(json.dumps(defense.get("config", {}), sort_keys=True)),
            "attack": csv_text(r.attack),
            "strategy": csv_text(str(attack.get("strategy", ""))),
            "params": csv_text(json.dumps(attack.get("params", {}), sort_keys=True)),
            "labels": csv_text(str(attack.get("labels", ""))),
            "top_k": attack.get("top_k", ""),
            "substitute": csv_text(str(attack.get("substitute", ""))),
            "batch_size": attack.get("batch_size", ""),
            "budget": r.budget,
            "seed_index": r.seed_index,
            "root_seed": r.task.get("root_seed", ""),
            "honest": r.task.get("honest", ""),
            "version": csv_text(r.version),
        }
        for name in CSV_METRICS:
            value = r.metrics.get(name)
            row[name] = "" if value is None or isinstance(value, dict | list) else value
        row["detectors"] = csv_text(";".join(str(d) for d in r.metrics.get("detectors") or []))
        row["seconds"] = "" if r.seconds is None else round(r.seconds, 4)
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows as a CSV file with a header."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
