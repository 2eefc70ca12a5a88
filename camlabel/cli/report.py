"""report, demo (issue 7)."""

from __future__ import annotations

import click

from camlabel.cli.common import not_implemented


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def report(args: tuple[str, ...]) -> None:
    """Write the self-contained HTML report (not implemented yet)."""
    not_implemented("report", 7)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the whole loop on phantoms with the embedded Label Studio (not implemented yet)."""
    not_implemented("demo", 7)


COMMANDS = [report, demo]
