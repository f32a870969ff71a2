"""``modeltheft watermark verify``: is a suspect model a copy of ours?"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from modeltheft.cli.choices import protocols, with_choices
from modeltheft.defenses.watermark import (
    COIN_NULL,
    Verdict,
    WatermarkRecords,
    class_list_tag,
    holm,
    load_records,
    stored_classes,
    verify,
    verify_pooled,
    watermarked_clients,
)
from modeltheft.errors import ConfigError

watermark_app = typer.Typer(help="Watermark evidence (DAWN) against suspected copies.")
console = Console(soft_wrap=True)


@watermark_app.command("verify", cls=with_choices({"protocol": protocols}))
def verify_command(
    suspect: Annotated[
        str, typer.Option(help="The suspect: a .skops or .onnx model file, or an http(s) URL.")
    ],
    state: Annotated[
        str,
        typer.Option(
            help="The serving state that holds the watermark records (opened read-only; a "
            "missing file is an error, never created)."
        ),
    ] = "sqlite:///modeltheft-state.db",
    client: Annotated[
        list[str] | None,
        typer.Option(help="Test only these clients' watermarks (repeatable); default: all."),
    ] = None,
    protocol: Annotated[str, typer.Option(help="For a URL: its protocol.")] = ("modeltheft"),
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELTHEFT_API_KEY", help="For a URL: API key.")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="For oip-v2 / kserve-v1.")] = None,
    alpha: Annotated[float, typer.Option(help="Evidence threshold on the p-value.")] = 1e-6,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Query the suspect on the watermarked queries; report per-client and pooled p-values.

    Each client's watermarks get a binomial test, and so do all clients' together (a row
    watermarked for several clients counts once): a thief who rotates keys leaves weak evidence
    under each key and strong evidence in the pool. The n clients + 1 p-values are adjusted by
    Holm–Bonferroni, and the verdict uses the smallest adjusted p. The suspect's answers (class
    labels, ints or strings) are matched with the served model's classes that the state
    recorded. With two classes the watermarks are keyed coin flips (DAWN's bound would be
    vacuous), so chance is exactly 1/2.
    """
    from modeltheft.evaluation.suspect import suspect_predictor
    from modeltheft.state import open_store

    store = open_store(state, read_only=True)
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
    answers = _predict_all(predict, records)
    verdicts = [
        verify(r, a, classes if r.classes is None else r.classes)
        for r, a in zip(records, answers, strict=True)
    ]
    current = class_list_tag(classes)
    poolable = [
        i
        for i, r in enumerate(records)
        if not r.mixed and (r.classes is None or class_list_tag(r.classes) == current)
    ]
    pooled = None
    if len(poolable) >= 2:  # with one client the pooled test is that client's test
        pooled = verify_pooled([records[i] for i in poolable], [answers[i] for i in poolable])
    family = [*verdicts, *([pooled] if pooled else [])]
    adjusted = holm([v.p_value for v in family])
    _print_table(family, adjusted, alpha, binary=len(classes) == 2, pooled=pooled is not None)
    if len(classes) == 2:
        console.print(f"note: {COIN_NULL}")
    if pooled is not None and len(poolable) < len(records):
        console.print(
            f"note: pooled {len(poolable)} of {len(records)} clients; the others' watermarks "
            "were made under another class list and cannot be pooled with them"
        )
    best = min(range(len(family)), key=lambda i: (adjusted[i], family[i].p_value))
    strongest = family[best]
    where = (
        f"the pool of {len(poolable)} clients ({strongest.n_watermarks} distinct watermarks)"
        if strongest is pooled
        else f"client {strongest.client_id!r}"
    )
    verdict = "is a copy" if adjusted[best] < alpha else "shows no evidence of copying"
    console.print(
        f"suspect {verdict}: strongest evidence from {where}, p = {strongest.p_value:.2e} "
        f"({adjusted[best]:.2e} after Holm over {len(family)} test(s): {len(verdicts)} "
        f"client(s){' + pooled' if pooled else ''})"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        described = [
            v.describe() | {"holm_p": float(a)} for v, a in zip(family, adjusted, strict=True)
        ]
        report = {
            "suspect": suspect,
            "alpha": alpha,
            "correction": "holm",
            "tests": len(family),
            "p_value": float(adjusted[best]),
            "copy": bool(adjusted[best] < alpha),
            "classes": classes.tolist(),
            "clients": described[: len(verdicts)],
            "pooled": None,
        }
        if pooled is not None:
            pooled_clients = [records[i].client_id for i in poolable]
            report["pooled"] = described[-1] | {"clients_pooled": pooled_clients}
        json_out.write_text(json.dumps(report, indent=2) + "\n")


def _predict_all(
    predict: Callable[[np.ndarray], np.ndarray], records: list[WatermarkRecords]
) -> list[np.ndarray]:
    """The suspect's answers to each client's rows: one call when every row has one width."""
    if len({r.X.shape[1] for r in records}) > 1:
        return [predict(r.X) for r in records]
    labels = predict(np.concatenate([r.X for r in records]))
    return np.split(labels, np.cumsum([len(r.X) for r in records])[:-1])


def _print_table(
    family: list[Verdict], adjusted: np.ndarray, alpha: float, binary: bool, pooled: bool
) -> None:
    """One row per client, then the pooled test (the last of ``family`` if ``pooled``)."""
    chance = "chance =" if binary else "chance ≤"
    table = Table("client", "watermarks", "reproduced", chance, "p-value", "Holm p", "evidence")
    for i, (v, p) in enumerate(zip(family, adjusted, strict=True)):
        if pooled and i == len(family) - 1:
            table.add_section()
        table.add_row(
            v.client_id,
            str(v.n_watermarks),
            str(v.matches),
            f"{v.chance:.3f}",
            f"{v.p_value:.2e}",
            f"{p:.2e}",
            "[bold red]copy[/]" if p < alpha else "none",
        )
    console.print(table)
