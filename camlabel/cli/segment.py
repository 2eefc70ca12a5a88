"""train-seg, predict (issue 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from camlabel.cli.common import (
    echo_json,
    info,
    json_option,
    lung_field_options,
    open_workspace,
    print_failures,
    refine_option,
    show_progress,
    workspace_option,
)
from camlabel.errors import BatchError


@click.command("train-seg")
@workspace_option
@click.option(
    "--on",
    "on",
    type=click.Choice(["local", "sagemaker"]),
    default="local",
    show_default=True,
    help="Where to train: this machine (GPU if visible, else CPU) or a SageMaker training job.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Epochs (the paper: 40).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Batch size (the paper: 30).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Adam learning rate (the paper: 1e-4).",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    show_default=True,
    help="constant (the paper) or cosine decay over the run (steadier on few masks).",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=32),
    default=None,
    help="Letterbox side in pixels [workspace seg_image_size, 256].",
)
@click.option(
    "--arch",
    default="fc-densenet103",
    show_default=True,
    help="Tiramisu size: fc-densenet103, fc-densenet67, fc-densenet56, tiny.",
)
@click.option(
    "--min-masks",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Refuse to train on fewer masked images.",
)
@click.option(
    "--negatives",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also train on up to N never-annotated images labelled with a non-lesion class "
    "(e.g. normal), with an empty mask: the network learns where not to draw.",
)
@click.option(
    "--stem-stride",
    type=click.Choice(["1", "2", "4"]),
    default="1",
    show_default=True,
    help="1: the paper's full-resolution network; 2/4: strided first convolution and "
    "bilinear logits, ~4x/16x less compute (for wide, smooth lesions; CPU training).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.2,
    show_default=True,
    help="Share of patients held out for validation.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Early stopping patience (epochs).",
)
@click.option(
    "--seed", type=int, default=None, help="Split/augmentation/weights seed [workspace seed]."
)
@click.option(
    "--init",
    "init_model",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="(local) Start from this segmenter's weights (a train-seg model folder or its "
    "model.keras, same sizes): fine-tune the previous round's U-Net instead of training anew.",
)
@click.option(
    "--bucket",
    default=None,
    help="(sagemaker) S3 bucket [sagemaker.bucket, else groundtruth.bucket].",
)
@click.option(
    "--prefix",
    default=None,
    help="(sagemaker) S3 key prefix [sagemaker.prefix, else groundtruth.prefix].",
)
@click.option(
    "--role-arn",
    default=None,
    help="(sagemaker) execution role ARN [sagemaker.role_arn, else groundtruth.role_arn].",
)
@click.option(
    "--instance-type",
    default="ml.g5.xlarge",
    show_default=True,
    help="(sagemaker) training instance.",
)
@click.option(
    "--region",
    default=None,
    help="(sagemaker) AWS region [sagemaker.region, else groundtruth.region].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="(sagemaker) export the data and print the job plan; nothing is uploaded.",
)
@json_option
def train_seg(
    workspace: Path,
    on: str,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_schedule: str,
    image_size: int | None,
    arch: str,
    min_masks: int,
    negatives: int,
    stem_stride: str,
    val_fraction: float,
    patience: int,
    seed: int | None,
    init_model: Path | None,
    bucket: str | None,
    prefix: str | None,
    role_arn: str | None,
    instance_type: str,
    region: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Train the FC-DenseNet103 segmenter on the masks pulled into the ledger.

    Uses every image that has a consensus mask (see pull-masks), with a patient-grouped
    train/validation split. The model lands in WS/models/seg-<run>/ with segmenter.json,
    which records the mask version of every image it was trained on.

    \b
    Examples:
      camlabel train-seg -w ws
      camlabel train-seg -w ws --on sagemaker --bucket my-bucket \\
          --role-arn arn:aws:iam::123456789012:role/SageMakerRole
    """
    from camlabel.errors import UsageError
    from camlabel.models.tiramisu import ARCHITECTURES
    from camlabel.train.segmenter import train_segmenter

    if arch not in ARCHITECTURES:
        raise UsageError(
            f"unknown --arch; supported: {sorted(ARCHITECTURES)}. Received: --arch {arch}",
        )
    if dry_run and on != "sagemaker":
        raise UsageError("--dry-run only applies to --on sagemaker. Received: --on local")
    init_file = None
    if init_model is not None:
        from camlabel.models.segmenter import MODEL_FILE

        if on != "local":
            raise UsageError(f"--init only applies to --on local. Received: --on {on}")
        init_file = init_model / MODEL_FILE if init_model.is_dir() else init_model
        if not init_file.is_file():
            raise UsageError(
                f"--init needs a train-seg model folder or its {MODEL_FILE}. Received: {init_model}",
                hint="pass WS/models/seg-<run> of the previous round",
            )
    ws = open_workspace(workspace)
    sm_settings = None
    if on == "sagemaker":
        from camlabel.train.sagemaker import SageMakerSettings

        where = ws.settings.sagemaker(
            {"bucket": bucket, "role_arn": role_arn, "prefix": prefix, "region": region}
        )
        sm_settings = SageMakerSettings(
            bucket=where.bucket,  # type: ignore[arg-type]  # check() rejects None
            role_arn=where.role_arn,  # type: ignore[arg-type]
            prefix=where.prefix or "camlabel",
            region=where.region,
            instance_type=instance_type,
        )
        sm_settings.check()

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "device":
            info(
                f"training on {event['device']} (mixed precision: {'on' if event['mixed_precision'] else 'off'})"
            )
        elif kind == "data":
            info(
                f"{event['train']} training / {event['val']} validation image(s) at {event['image_size']} px ({event['split']} split)"
            )
        elif kind == "warning":
            click.echo(f"warning: {event['message']}", err=True)
        elif kind == "status":
            info(f"SageMaker job: {event['status']} ({event['secondary']})")

    res = train_segmenter(
        ws,
        on=on,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        image_size=image_size,
        min_masks=min_masks,
        val_fraction=val_fraction,
        seed=seed,
        patience=patience,
        negatives=negatives,
        model_overrides={
            "arch": arch,
            **({"stem-stride": int(stem_stride)} if stem_stride != "1" else {}),
            **({"init-weights": str(init_file.resolve())} if init_file else {}),
        },
        sagemaker=sm_settings,
        dry_run=dry_run,
        progress=show_progress(),
        on_event=on_event,
    )
    if as_json:
        echo_json(
            {
                "run_id": res.run_id,
                "model_dir": str(res.model_dir),
                "export_dir": str(res.export_dir),
                "images": len(res.mask_versions),
                "negatives": len(res.negatives),
                "metrics": res.metrics,
                "job": res.job,
                "plan": res.plan,
            }
        )
        return
    if res.plan is not None:
        click.echo(
            f"dry run: exported {len(res.mask_versions)} pair(s) to {res.export_dir}; the job would be:"
        )
        echo_json(res.plan)
        return
    m = res.metrics
    dice, iou = m.get("val_dice"), m.get("val_iou")
    shown = "n/a" if dice is None else f"{dice:.3f}"
    click.echo(
        f"trained {res.run_id} on {len(res.mask_versions)} mask(s)"
        + (f" and {len(res.negatives)} lesion-free image(s)" if res.negatives else "")
        + f": validation Dice {shown}"
        + ("" if iou is None else f", IoU {iou:.3f}")
        + f"\nmodel: {res.model_dir}"
    )


@click.command()
@click.option(
    "--classifier",
    "-c",
    "classifier",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Trained classifier (.keras or its model folder).",
)
@click.option(
    "--segmenter",
    "-s",
    "segmenter",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Trained segmenter (model folder from train-seg, or .keras).",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Images per batch.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Mask probability threshold [the segmenter's, 0.5].",
)
@lung_field_options
@json_option
def predict(
    classifier: Path,
    segmenter: Path,
    images: tuple[Path, ...],
    out: Path,
    batch_size: int,
    threshold: float | None,
    lung_masks: Path | None,
    lung_model: Path | None,
    as_json: bool,
) -> None:
    """Classify images; segment and overlay the lesions of COVID-19 / pneumonia ones.

    IMAGES are files or folders (PNG, JPEG, TIFF, DICOM). Per image, OUT gets
    <stem>.overlay.png (class and probability banner, mask outlined), <stem>.mask.png
    (lesion classes only) and <stem>.json. With --lung-masks / --lung-model the lesion mask
    is kept inside each image's lung field (images without one: unrestricted); the JSON says
    which (lung_field).

    \b
    Example:
      camlabel predict -c ws/models/cls-1/model.keras -s ws/models/seg-1 scans/ -o out/
    """
    from camlabel.predict import predict as run_predict

    res = run_predict(
        classifier,
        segmenter,
        list(images),
        out,
        batch_size=batch_size,
        threshold=threshold,
        progress=show_progress(),
        lung_masks=lung_masks,
        lung_model=lung_model,
    )
    if as_json:
        echo_json({"items": res.items, "failures": [list(f) for f in res.failures]})
    else:
        n_seg = sum(1 for it in res.items if it["segmented"])
        click.echo(f"predicted {len(res.items)} image(s) ({n_seg} segmented) into {res.out_dir}")
    if res.failures and not res.items:
        from camlabel.errors import BatchError

        raise BatchError(
            "no image could be read", res.failures, hint="camlabel reads PNG, JPEG, TIFF and DICOM"
        )
    print_failures(res.failures, "image")


@click.command("preannotate")
@workspace_option
@click.option(
    "--from",
    "source",
    type=click.Choice(["cam", "segmenter"]),
    required=True,
    help="cam: the stored Grad-CAM heatmaps (+ --refine); segmenter: MODEL's probability maps.",
)
@click.argument("model", required=False, type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(exists=True, path_type=Path))
@refine_option
@lung_field_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--all",
    "all_images",
    is_flag=True,
    help="--from segmenter: also images the classifier predicted as a lesion-free class.",
)
@click.option(
    "--cam-fallback/--no-cam-fallback",
    default=True,
    show_default=True,
    help="--from segmenter: where it finds nothing on an image classified as a lesion class, "
    "keep the image's CAM pre-annotation (its regions) instead of an empty one.",
)
@json_option
def preannotate(
    workspace: Path,
    source: str,
    model: Path | None,
    images: tuple[Path, ...],
    refine: str | None,
    lung_masks: Path | None,
    lung_model: Path | None,
    batch_size: int,
    all_images: bool,
    cam_fallback: bool,
    as_json: bool,
) -> None:
    """Pre-annotations for images not yet published or annotated, from the CAM or a segmenter.

    --from segmenter MODEL [IMAGES...]: the trained U-Net pre-annotates (the next round) the
    images the classifier predicted as a lesion class (and those without a prediction; --all:
    every image);
    --from cam [IMAGES...]: the stored heatmaps again, e.g. with another --refine. IMAGES
    (files, folders, metadata.csv) are registered first and limit the work to them.
    Idempotent: images already pre-annotated by the same source and version are kept.
    """
    from camlabel.preannotate import run_preannotate

    if source == "cam" and model is not None:
        images = (model, *images)  # --from cam takes no model: the first path is an image
        model = None
    ws = open_workspace(workspace)
    s = run_preannotate(
        ws,
        source,
        model,
        list(images),
        refine=refine,
        lung_masks=lung_masks,
        lung_model=lung_model,
        batch_size=batch_size,
        all_images=all_images,
        cam_fallback=cam_fallback,
        progress=show_progress(),
    )
    if as_json:
        echo_json(s.to_json())
    else:
        click.echo(
            f"{source}: {s.preannotated} image(s) pre-annotated ({s.empty} without a region), "
            f"{s.unchanged} unchanged, {s.skipped_annotated} already published/annotated"
            + (
                f", {s.skipped_not_lesion} predicted lesion-free (--all to include them)"
                if s.skipped_not_lesion
                else ""
            )
            + (
                f", {s.cam_fallback} kept their CAM pre-annotation (the segmenter found nothing)"
                if s.cam_fallback
                else ""
            )
        )
    if s.failures:
        raise BatchError(
            f"{source}: {len(s.failures)} image(s) not pre-annotated; the others were "
            "(listed below)",
            list(s.failures),
            hint="fix what each line names and run preannotate again (done images are kept)",
        )


COMMANDS = [train_seg, predict, preannotate]
