"""report, demo (issue 7)."""

from __future__ import annotations

import click

from pathlib import Path

from camlabel.cli.common import not_implemented, open_workspace, workspace_option


@click.command()
@workspace_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Output file [WS/reports/index.html].")
def report(workspace: Path, out: Path | None) -> None:
    """Write the self-contained HTML report (no internet needed to open it)."""
    from camlabel.report import build_report

    ws = open_workspace(workspace)
    path = build_report(ws, out)
    click.echo(f"wrote {path}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the whole loop on phantoms with the embedded Label Studio (not implemented yet)."""
    not_implemented("demo", 7)


COMMANDS = [report, demo]
