"""train-seg, predict (issue 6)."""

from __future__ import annotations

import click

from camlabel.cli.common import not_implemented


@click.command("train-seg", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_seg(args: tuple[str, ...]) -> None:
    """Train the FC-DenseNet103 segmenter on pulled masks (not implemented yet)."""
    not_implemented("train-seg", 6)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def predict(args: tuple[str, ...]) -> None:
    """Classify, segment lesion images and overlay the mask (not implemented yet)."""
    not_implemented("predict", 6)


COMMANDS = [train_seg, predict]
