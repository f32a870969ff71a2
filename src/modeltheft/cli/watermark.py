"""``modeltheft watermark verify``: is a suspect model a copy of ours?"""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modeltheft.defenses.watermark import (
    COIN_NULL,
    load_records,
    stored_classes,
    verify,
    watermarked_clients,
)
from modeltheft.errors import ConfigError

watermark_app = typer.Typer(help="Watermark evidence (DAWN) against suspected copies.")
console = Console(soft_wrap=True)


@watermark_app.command("verify")
def verify_command(
    suspect: Annotated[
        str, typer.Option(help="The suspect: a .skops or .onnx model file, or an http(s) URL.")
    ],
    state: Annotated[
        str, typer.Option(help="The serving state that holds the watermark records.")
    ] = "sqlite:///modeltheft-state.db",
    client: Annotated[
        list[str] | None,
        typer.Option(help="Test only these clients' watermarks (repeatable); default: all."),
    ] = None,
    protocol: Annotated[str, typer.Option(help="For a URL: modeltheft, oip-v2, kserve-v1.")] = (
        "modeltheft"
    ),
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELTHEFT_API_KEY", help="For a URL: API key.")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="For oip-v2 / kserve-v1.")] = None,
    alpha: Annotated[float, typer.Option(help="Evidence threshold on the p-value.")] = 1e-6,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Query the suspect on each client's watermarked queries; report a binomial p-value.

    The suspect's answers (class labels, ints or strings) are matched with the served
    model's classes that the state recorded. With two classes the watermarks are keyed coin
    flips (DAWN's bound would be vacuous), so chance is exactly 1/2.
    """
    from modeltheft.evaluation.suspect import suspect_predictor
    from modeltheft.state import open_store

    store = open_store(state)
    try:
        clients = client or watermarked_clients(store)
        classes = stored_classes(store)
        records = [load_records(store, name) for name in clients]
    finally:
        store.close()
    records = [r for r in records if len(r.labels)]
    if not records or classes is None:
        who = ", ".join(client) if client else "any client"
        raise ConfigError(f"no watermark records for {who} in {state}")
    predict = suspect_predictor(suspect, protocol=protocol, api_key=api_key, model_name=model_name)
    verdicts = [verify(r, predict(r.X), classes) for r in records]
    binary = len(classes) == 2
    chance = "chance =" if binary else "chance ≤"
    table = Table("client", "watermarks", "reproduced", chance, "p-value", "evidence")
    for v in verdicts:
        evidence = "[bold red]copy[/]" if v.p_value < alpha else "none"
        table.add_row(
            v.client_id,
            str(v.n_watermarks),
            str(v.matches),
            f"{v.chance:.3f}",
            f"{v.p_value:.2e}",
            evidence,
        )
    console.print(table)
    if binary:
        console.print(f"note: {COIN_NULL}")
    best = min(verdicts, key=lambda v: v.p_value)
    adjusted = min(1.0, best.p_value * len(verdicts))
    verdict = "is a copy" if adjusted < alpha else "shows no evidence of copying"
    console.print(
        f"suspect {verdict}: strongest evidence from client {best.client_id!r}, p = "
        f"{best.p_value:.2e} ({adjusted:.2e} after Bonferroni over {len(verdicts)} client(s))"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        report = {"suspect": suspect, "alpha": alpha, "bonferroni_p": adjusted}
        report["classes"] = classes.tolist()
        report["clients"] = [v.describe() for v in verdicts]
        json_out.write_text(json.dumps(report, indent=2) + "\n")
