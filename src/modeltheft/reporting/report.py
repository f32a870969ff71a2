"""``modeltheft report``: a sweep's run folder as one self-contained HTML page, Markdown and CSV.

:func:`build_report` reads ``RUN_DIR/results.jsonl`` (the latest record of every run) and
writes, into the output folder (``RUN_DIR`` by default):

* ``report.html`` — one file, nothing to fetch: CSS inline, plots as inline SVG, sample images
  as ``data:`` PNGs, and a Content-Security-Policy that forbids any network access and any
  script. Every string that comes from a spec or a record is escaped (jinja2 autoescaping;
  matplotlib escapes the text it writes into the SVGs).
* ``report.md`` — the same tables, with the plots as PNG files saved beside it.
* ``runs.csv`` — one row per run: ids, task fields flattened, metric scalars, seconds.

The work is split: :mod:`.records` (read and type the records), :mod:`.statistics` (numbers),
:mod:`.tables` (formatted tables), :mod:`.figures` (matplotlib), :mod:`.sections` (what each
task's section shows), :mod:`.render` (HTML, Markdown, CSV). This module ties them together.
"""

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from modeltheft.errors import ConfigError
from modeltheft.reporting import figures, render, sections
from modeltheft.reporting.records import Run, Sweep, TaskInfo, load_sweep, read_records
from modeltheft.reporting.statistics import WATERMARK_ALPHA, Stat

__all__ = [
    "CSV",
    "FIGURES",
    "HTML",
    "MARKDOWN",
    "WATERMARK_ALPHA",
    "Run",
    "Stat",
    "Sweep",
    "TaskInfo",
    "build_report",
    "read_records",
]

HTML, MARKDOWN, CSV = "report.html", "report.md", "runs.csv"
FIGURES = {
    "fidelity": "fidelity_vs_queries.png",
    "pareto": "pareto.png",
    "samples": "sample_digits.png",
    "confusion": "confusion.png",
}
LABELS = {
    "fidelity": "Fidelity against queries spent, one panel per attack, a line per defense",
    "pareto": "Honest accuracy against thief fidelity per defense and attack",
    "confusion": "Victim's label against the stolen copy's, per defense",
}


def _figures(section: sections.Section) -> dict[str, Callable[[], Figure | None]]:
    part, budget, points = section.sweep, section.pareto_budget, section.pareto_points
    return {
        "fidelity": lambda: figures.fidelity_figure(part),
        "pareto": lambda: (
            figures.pareto_figure(part, points, budget, section.task.eval_text) if budget else None
        ),
        "samples": lambda: figures.samples_figure(section.samples) if section.samples else None,
        "confusion": lambda: (
            figures.confusion_figure(section.confusion["panels"]) if section.confusion else None
        ),
    }


def build_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` (+ its PNG plots) and ``runs.csv`` for ``run_dir``.

    Returns the written paths by kind: ``html``, ``md``, ``csv`` and one per PNG figure
    (``fidelity``, ``pareto``, ``samples`` or ``confusion``; with several tasks, suffixed
    ``-<task>``). Raises :class:`ConfigError` when ``run_dir`` is missing or holds no records.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    sweep, spec_text = load_sweep(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    report = sections.build(sweep, spec_text)
    paths: dict[str, Path] = {}
    for section in report.sections:
        for kind, draw in _figures(section).items():
            fig = draw()
            if fig is None:
                continue
            key = kind + section.anchor
            if kind != "samples":  # the HTML draws the sample images itself
                label = LABELS[kind] + (f" (task {section.label})" if section.label else "")
                section.figures[kind] = figures.svg(fig, key, label)
            name = FIGURES[kind].replace(".png", f"{section.anchor}.png")
            paths[key] = figures.save_png(fig, out / name)
            section.files[kind] = name

    paths["html"] = out / HTML
    paths["html"].write_text(render.html(report), encoding="utf-8")
    paths["md"] = out / MARKDOWN
    paths["md"].write_text(render.markdown(report), encoding="utf-8")
    paths["csv"] = render.write_csv(out / CSV, render.csv_rows(sweep))
    return {k: paths[k] for k in ("html", "md", "csv")} | {
        k: v for k, v in paths.items() if k not in ("html", "md", "csv")
    }
