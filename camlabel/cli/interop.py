"""add, import-annotations, export: bring your own images and annotations, take the masks anywhere."""

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
from camlabel.errors import BatchError


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@workspace_option
@click.option("--label", default=None, help="Class of every image (one of the workspace classes).")
@click.option(
    "--metadata",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV with columns file[,patient_id][,label] (file relative to the CSV).",
)
@json_option
def add(
    images: tuple[Path, ...],
    workspace: Path,
    label: str | None,
    metadata: Path | None,
    as_json: bool,
) -> None:
    """Register IMAGES (PNG, JPEG, 16-bit, DICOM; folders recurse) without a classifier.

    Images are keyed by the hash of their pixels: the same picture twice is one record
    (reported as a duplicate). Patient ids come from --metadata or the DICOM Patient ID and
    stay in the local ledger. Then `camlabel push-jobs --all` publishes them for annotation.
    """
    from camlabel.interop.add import add_images

    ws = open_workspace(workspace)
    report = add_images(ws, images, label=label, metadata=metadata, progress=show_progress())
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(
            f"added {len(report.added)} image(s); {len(report.already_present)} already in the "
            f"ledger; {len(report.duplicates)} duplicate(s) by content; "
            f"{len(report.failures)} failed"
        )
        for path, image_id in report.duplicates:
            info(f"  duplicate: {path} (same pixels as {image_id[:12]})")
    if report.failures and not (report.added or report.already_present):
        raise BatchError(
            f"no image added: {len(report.failures)} file(s) could not be read (listed below)",
            [(str(path), reason) for path, reason in report.failures],
            hint="give PNG, JPEG, TIFF or DICOM files, or folders holding them",
        )
    if not as_json:
        for path, reason in report.failures:
            info(f"  failed: {path}: {reason}")


@click.command("import-annotations")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@workspace_option
@click.option(
    "--format",
    "fmt",
    required=True,
    help="labelstudio, groundtruth, coco, darwin or masks.",
)
@click.option(
    "--label-map",
    multiple=True,
    metavar="NAME=lesion|ignore|skip",
    help="Map a foreign label (or, for masks, a pixel value) to lesion or ignore (repeatable).",
)
@click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV name,image: image file name in FILES -> an image file or image id.",
)
@click.option(
    "--skip-unmatched", is_flag=True, help="Import the rest when some images match nothing."
)
@click.option("--dry-run", is_flag=True, help="Report what would be imported; write nothing.")
@json_option
def import_annotations(
    files: tuple[Path, ...],
    workspace: Path,
    fmt: str,
    label_map: tuple[str, ...],
    mapping: Path | None,
    skip_unmatched: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Import annotation FILES (Label Studio, Ground Truth, COCO, V7 Darwin, mask PNGs).

    Images are matched by content hash, then by file name, or by --mapping. What cannot
    become a lesion mask (rectangles, keypoints, boxes, unmapped labels) is counted per kind
    and skipped. All or nothing: a problem anywhere imports nothing.
    """
    from camlabel.interop.importing import import_annotations as run

    ws = open_workspace(workspace)
    report = run(
        ws,
        list(files),
        fmt,
        label_map=label_map,
        mapping=mapping,
        skip_unmatched=skip_unmatched,
        dry_run=dry_run,
    )
    if as_json:
        echo_json(report.to_json())
        return
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {report.annotations} annotation(s) of {report.images} image(s)")
    for kind, n in sorted(report.skipped.items()):
        click.echo(f"  skipped {n} x {kind}")
    if report.unmatched:
        click.echo(f"  skipped {len(report.unmatched)} annotation(s) of unmatched images")
    if not dry_run:
        click.echo(
            f"  masks: {report.masks_written} written, {report.masks_unchanged} unchanged, "
            f"{report.waiting_for_annotations} waiting for more annotations"
        )


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@workspace_option
@click.option("--format", "fmt", required=True, help="nnunet, coco, png or dicom-seg.")
@click.option("--dry-run", is_flag=True, help="List the cases and mask versions; write nothing.")
@json_option
def export(out: Path, workspace: Path, fmt: str, dry_run: bool, as_json: bool) -> None:
    """Export every mask of the workspace to OUT (nnU-Net v2, COCO, PNG pairs, DICOM SEG).

    OUT/camlabel-export.json records the exact mask version of every case.
    """
    from camlabel.interop.exporting import export as run

    ws = open_workspace(workspace)
    manifest = run(ws, fmt, out, dry_run=dry_run)
    if as_json:
        echo_json(manifest)
        return
    verb = "would export" if dry_run else "exported"
    click.echo(f"{verb} {len(manifest['cases'])} mask(s) as {fmt} to {out}")


COMMANDS = [add, import_annotations, export]
