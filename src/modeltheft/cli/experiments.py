"""``modeltheft sweep``: experiment grids from a TOML spec, on local processes or Ray."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def sweep_command(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML), e.g. examples/grid.toml.")],
    out: Annotated[
        Path | None, typer.Option(help="Run folder for the results (default runs/<spec name>).")
    ] = None,
    engine: Annotated[str, typer.Option(help="local (processes) or ray.")] = "local",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Parallel runs (default: all cores).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")
    ] = None,
) -> None:
    """Run every run of SPEC that is not finished yet; interrupted sweeps resume."""
    from modeltheft.experiments.engines import make_engine
    from modeltheft.experiments.spec import load_spec
    from modeltheft.experiments.sweep import sweep

    folder = out if out is not None else Path("runs") / load_spec(spec).name
    summary = sweep(spec, folder, make_engine(engine, workers, address), console=console)
    if summary.failed:
        raise typer.Exit(1)
