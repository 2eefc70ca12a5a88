"""labelstudio start|stop|status (issue 4)."""

from __future__ import annotations

import click

from camlabel.cli.common import not_implemented


@click.group()
def labelstudio() -> None:
    """The embedded local Label Studio server."""


@labelstudio.command()
def start() -> None:
    """Start the local server (not implemented yet)."""
    not_implemented("labelstudio start", 4)


@labelstudio.command()
def stop() -> None:
    """Stop the local server (not implemented yet)."""
    not_implemented("labelstudio stop", 4)


@labelstudio.command("status")
def status_() -> None:
    """Is the local server running (not implemented yet)."""
    not_implemented("labelstudio status", 4)
