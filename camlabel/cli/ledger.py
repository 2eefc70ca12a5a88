"""ledger export|import: the ledger's diff-able JSON Lines interchange format."""

from __future__ import annotations

from pathlib import Path

import click

from camlabel.cli.common import echo_json, json_option, open_workspace, workspace_option


@click.group()
def ledger() -> None:
    """The workspace ledger (WS/ledger.db, SQLite) as JSON Lines, one image per line.

    \b
    Each line follows manifests/ledger.schema.json; lines are sorted-key compact JSON in
    the order images were registered, so two exports diff cleanly.
    """


@ledger.command("export")
@workspace_option
@click.option(
    "--jsonl",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write (atomically; an existing file is replaced).",
)
@json_option
def export_cmd(workspace: Path, out: Path, as_json: bool) -> None:
    """Write every ledger record to a JSON Lines file."""
    ws = open_workspace(workspace)
    n = ws.ledger.export_jsonl(out)
    if as_json:
        echo_json({"exported": n, "file": str(out)})
    else:
        click.echo(f"exported {n} records to {out}")


@ledger.command("import")
@workspace_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--replace",
    is_flag=True,
    help="Make the ledger hold exactly the file's records (default: insert or update them).",
)
@json_option
def import_cmd(workspace: Path, file: Path, replace: bool, as_json: bool) -> None:
    """Insert or update the records of a JSON Lines ledger file (one transaction)."""
    ws = open_workspace(workspace)
    read = ws.ledger.import_jsonl(file, replace=replace)
    for w in read.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if as_json:
        echo_json(
            {"imported": len(read.records), "warnings": read.warnings, "images": len(ws.ledger)}
        )
    else:
        click.echo(f"imported {len(read.records)} records; the ledger holds {len(ws.ledger)}")


COMMANDS = [ledger]
