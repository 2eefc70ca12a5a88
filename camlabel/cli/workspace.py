"""init, phantoms, status."""

from __future__ import annotations

from pathlib import Path

import click

from camlabel.cli.common import (
    echo_json,
    info,
    json_option,
    open_workspace,
    show_progress,
    workspace_option,
)
from camlabel.config import DEFAULT_SEED


@click.command()
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option(
    "--classes", default=None, help="Comma-separated class names [covid,pneumonia,normal]."
)
@click.option(
    "--lesion-classes",
    default=None,
    help="Classes whose images get lesion masks [covid,pneumonia].",
)
@click.option(
    "--image-size", type=click.IntRange(min=32), default=None, help="Classifier input size [224]."
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help=f"Workspace seed for splits and training [{DEFAULT_SEED}].",
)
def init(
    workspace: Path,
    classes: str | None,
    lesion_classes: str | None,
    image_size: int | None,
    seed: int | None,
) -> None:
    """Create a workspace: config, ledger and folders (an existing config is kept)."""
    from camlabel.config import CONFIG_NAME
    from camlabel.workspace import Workspace

    existed = (workspace / CONFIG_NAME).exists()
    ws = Workspace.init(
        workspace,
        classes=[c.strip() for c in classes.split(",")] if classes else None,
        lesion_classes=[c.strip() for c in lesion_classes.split(",")] if lesion_classes else None,
        image_size=image_size,
        seed=seed,
    )
    verb = "kept existing" if existed else "created"
    click.echo(f"{verb} workspace {ws.root} (classes: {', '.join(ws.classes)})")


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Number of images (split evenly over the classes).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed (same seed -> same bytes)."
)
@click.option(
    "--size",
    type=click.IntRange(min=64),
    default=256,
    show_default=True,
    help="Image height in pixels (width varies 80-100 %).",
)
@click.option(
    "--text-marker-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of images with a burned-in text marker.",
)
def phantoms(out: Path, count: int, seed: int, size: int, text_marker_rate: float) -> None:
    """Generate synthetic chest radiographs with known lesion and lung masks.

    COVID-19: bilateral peripheral lower-zone ground glass; pneumonia: unilateral lobar
    consolidation; normal: none. Writes images/, lesion_masks/, lung_masks/ and metadata.csv.
    """
    from camlabel.phantoms import generate_phantoms

    recs = generate_phantoms(
        out,
        count=count,
        seed=seed,
        size=size,
        text_marker_rate=text_marker_rate,
        progress=show_progress(),
    )
    by: dict[str, int] = {}
    for r in recs:
        by[r.label] = by.get(r.label, 0) + 1
    click.echo(
        f"wrote {len(recs)} phantoms to {out} ({', '.join(f'{k}: {v}' for k, v in sorted(by.items()))})"
    )


@click.command()
@workspace_option
@json_option
@click.option(
    "--fast",
    is_flag=True,
    help="Counts only, from the ledger's indexes (no mask-file check, no per-round telemetry): "
    "constant time at a million images.",
)
def status(workspace: Path, as_json: bool, fast: bool) -> None:
    """Counts per state, per backend, and annotation-effort telemetry."""
    from camlabel.loop import workspace_status

    ws = open_workspace(workspace)
    st = workspace_status(ws, detail=not fast)
    if as_json:
        echo_json(st)
        return
    click.echo(f"workspace {ws.root}: {st['images']} image(s)")
    click.echo("  " + "  ".join(f"{k}: {v}" for k, v in st["states"].items()))
    for name, b in st["backends"].items():
        click.echo(
            f"  {name}: {b['tasks']} task(s), {b['annotated']} annotated, {b['skipped']} skipped"
        )
    eff = st["effort"]
    if eff["annotated"]:
        acc = eff["accepted_unchanged_share"]
        iou = eff["preannotation_iou_mean"]
        lead = eff["lead_time_s_median"]
        click.echo(
            f"  effort: {eff['annotated']} annotated task(s); pre-annotation accepted unchanged: "
            f"{'-' if acc is None else f'{acc:.0%}'}; pre-annotation vs final IoU (mean): "
            f"{'-' if iou is None else f'{iou:.3f}'}; median lead time: {'-' if lead is None else f'{lead:.1f} s'}"
        )
    if st["masks"]["count"]:
        agr = st["masks"]["agreement_dice_mean"]
        click.echo(
            f"  masks: {st['masks']['count']} (annotator agreement, mean pairwise Dice: {'-' if agr is None else f'{agr:.3f}'})"
        )
    if st["masks"].get("missing_files"):
        click.echo(
            f"  warning: {st['masks']['missing_files']} mask file(s) recorded in the ledger are "
            f"missing or empty on disk; run camlabel pull-masks --full -w {ws.root} to write them "
            "again"
        )
    info(f"ledger: {ws.ledger.path}")


COMMANDS = [init, phantoms, status]
