"""``modeltheft report``: a sweep's run folder as HTML (self-contained), Markdown and CSV."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modeltheft.errors import ConfigError

console = Console(soft_wrap=True)


def report_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A sweep's run folder (holds results.jsonl), e.g. runs/grid.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the report files (default: RUN_DIR).")
    ] = None,
) -> None:
    """Write report.html (one file, no network), report.md with its PNG plots, and runs.csv."""
    from modeltheft.reporting.report import build_report

    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    paths = build_report(run_dir, out)
    for kind, path in paths.items():
        console.print(f"wrote {kind:>8}: {path}", markup=False, highlight=False)
