"""train-cls, evaluate, gradcam, audit (issue 3)."""

from __future__ import annotations

import click

from camlabel.cli.common import not_implemented


@click.command("train-cls", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_cls(args: tuple[str, ...]) -> None:
    """Train the DenseNet121 + EfficientNetB0 + VGG19 ensemble (not implemented yet)."""
    not_implemented("train-cls", 3)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate(args: tuple[str, ...]) -> None:
    """Evaluate a classifier (not implemented yet)."""
    not_implemented("evaluate", 3)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def gradcam(args: tuple[str, ...]) -> None:
    """Grad-CAM heatmaps and pre-annotation polygons (not implemented yet)."""
    not_implemented("gradcam", 3)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def audit(args: tuple[str, ...]) -> None:
    """Shortcut audit: CAM energy inside vs outside the lungs (not implemented yet)."""
    not_implemented("audit", 3)


COMMANDS = [train_cls, evaluate, gradcam, audit]
