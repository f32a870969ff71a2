"""``modeltheft audit``: the audit log of queries in a state store, as a table or JSON lines."""

import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modeltheft.errors import ConfigError
from modeltheft.state.audit import AuditEntry, parse_duration

console = Console(soft_wrap=True)


def _table(entries: list[AuditEntry]) -> Table:
    table = Table(title=f"{len(entries)} audit entries (oldest first)")
    for column in ("time (UTC)", "client", "outcome", "rows", "labels", "status", "susp.", "alt."):
        table.add_column(column)
    for entry in entries:
        when = datetime.fromtimestamp(entry.time, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        labels = "-" if entry.labels is None else " ".join(str(x) for x in entry.labels[:8])
        if entry.labels is not None and len(entry.labels) > 8:
            labels += " …"
        status = entry.status_before
        if entry.status_after != entry.status_before:
            status += f"→{entry.status_after}"
        table.add_row(
            when,
            entry.client,
            entry.outcome,
            str(entry.rows),
            labels,
            status,
            str(entry.suspicious),
            str(entry.altered),
        )
    return table


def audit_command(
    state: Annotated[
        str,
        typer.Option(
            help="The service's state: sqlite:///file.db, sqlite:////abs/file.db or "
            "redis://\\[user:password@]host:port/db."
        ),
    ],
    client: Annotated[str | None, typer.Option(help="Only this client's requests.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only the last DURATION, e.g. 30m, 12h, 7d.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Only the newest N entries.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of a table.")
    ] = False,
) -> None:
    """Show the audit log of queries (client names, input hashes, answers, defense decisions)."""
    from modeltheft.state import open_store

    if state.strip().lower().startswith("memory:"):
        raise ConfigError("memory state lives in the serving process only: audit sqlite or redis")
    start = None if since is None else time.time() - parse_duration(since, "--since")
    store = open_store(state, read_only=True)
    try:
        entries = store.audit_entries(client=client, since=start, limit=limit)
    finally:
        store.close()
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.as_dict()))
    else:
        console.print(_table(entries))
