"""train-cls, evaluate, gradcam, audit (issue 3). Thin: parse, call one library function
(camlabel.train.classifier, camlabel.evaluate, camlabel.preannotate, camlabel.audit), print."""

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
    refine_option,
    show_progress,
    workspace_option,
)
from camlabel.config import DEFAULT_SEED

# CAM method and fusion names are listed here (not imported) so that --help stays light;
# tests check they match camlabel.cam.CAM_METHODS / FUSIONS.
CAM_METHOD_NAMES = ("gradcam", "gradcampp", "layercam")
FUSION_NAMES = ("normalize-mean", "sum", "contribution")


def optional_workspace_option(f: Any) -> Any:
    """``--workspace/-w`` that may be absent: the run is then recorded nowhere."""
    return click.option(
        "--workspace",
        "-w",
        "workspace",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="CAMLABEL_WORKSPACE",
        default=None,
        help="Workspace to record the run in (env CAMLABEL_WORKSPACE); optional.",
    )(f)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


@click.command("train-cls")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Model file to write (.keras); MODEL.keras.json and MODEL.curves.png/.csv go beside it.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Adam learning rate.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=32),
    default=None,
    help="Square input side [workspace image_size, else 224].",
)
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="none | imagenet (downloads once) | PATH (.keras, .weights.h5, or a folder of Keras ImageNet notop .h5 files).",
)
@click.option(
    "--freeze-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Initial fraction of each backbone's layers kept frozen.",
)
@click.option(
    "--class-weights",
    default="auto",
    show_default=True,
    help="auto (n/(k*count)) | none | covid=W,pneumonia=W,normal=W.",
)
@click.option(
    "--classes",
    default=None,
    help="Comma-separated class order [covid,pneumonia,normal when the data uses them].",
)
@click.option(
    "--backbones",
    default="densenet121,efficientnetb0,vgg19",
    show_default=True,
    help="Comma-separated subset of the ensemble's backbones.",
)
@click.option(
    "--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True
)
@click.option(
    "--bn-momentum",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="BatchNorm momentum of the backbones [Keras: 0.99]; 0.9 when training from scratch on few images.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Early stopping: epochs without validation-loss improvement.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help=f"Seed for split, init and augmentation [workspace seed, else {DEFAULT_SEED}].",
)
@click.option(
    "--no-augment",
    is_flag=True,
    help="Disable the light augmentation (rotation, shift, brightness, contrast).",
)
@click.option(
    "--eager", is_flag=True, hidden=True, help="compile(run_eagerly=True): for tests and debugging."
)
@optional_workspace_option
@json_option
def train_cls(
    data: Path,
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    image_size: int | None,
    weights: str,
    freeze_fraction: float,
    class_weights: str,
    classes: str | None,
    backbones: str,
    dropout: float,
    bn_momentum: float | None,
    val_fraction: float,
    patience: int,
    seed: int | None,
    no_augment: bool,
    eager: bool,
    workspace: Path | None,
    as_json: bool,
) -> None:
    """Train the DenseNet121 + EfficientNetB0 + VGG19 ensemble.

    DATA is a folder of class subfolders or a metadata.csv (file,label[,patient_id]). The
    split is 80/20, stratified by class and grouped by patient; the best epoch (validation
    loss) is kept.
    """
    from camlabel.train.classifier import train_classifier

    ws = open_workspace(workspace) if workspace is not None else None
    size = image_size or (ws.settings.workspace.image_size if ws else 224)
    seed_v = seed if seed is not None else (ws.settings.workspace.seed if ws else DEFAULT_SEED)

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        if not as_json:
            info(f"epoch {epoch}/{epochs}: " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()))

    res = train_classifier(
        data,
        out,
        classes=[c.strip() for c in classes.split(",")] if classes else None,
        image_size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weights=weights,
        freeze_fraction=freeze_fraction,
        class_weights=class_weights,
        seed=seed_v,
        val_fraction=val_fraction,
        patience=patience,
        backbones=[b.strip() for b in backbones.split(",") if b.strip()],
        dropout=dropout,
        bn_momentum=bn_momentum,
        augment=not no_augment,
        workspace=ws,
        progress=show_progress() and not as_json,
        on_epoch=on_epoch,
        run_eagerly=eager,
    )
    if as_json:
        echo_json(
            {
                k: res.info[k]
                for k in (
                    "model_version",
                    "classes",
                    "epochs_run",
                    "best_epoch",
                    "split",
                    "val_metrics",
                )
            }
            | {
                "model": str(res.model_path),
                "sidecar": str(res.sidecar_path),
                "curves_png": str(res.curves_png),
            }
        )
        return
    m = res.val_metrics or {}
    click.echo(
        f"saved {res.model_path} (model version {res.model_version}); {res.epochs_run} epoch(s), best {res.best_epoch}; "
        f"validation: accuracy {_fmt(m.get('accuracy'))}, macro-F1 {_fmt(m.get('macro_f1'))}, n={m.get('n', 0)}"
    )
    info(f"curves: {res.curves_png}; settings and split: {res.sidecar_path}")


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--split",
    type=click.Choice(["auto", "all", "val", "train"]),
    default="auto",
    show_default=True,
    help="auto: the validation images when DATA is the training data, else all.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for metrics.json and confusion_matrix.png [WS/reports/classifier with -w, else MODEL-eval/].",
)
@optional_workspace_option
@json_option
def evaluate(
    model: Path,
    data: Path,
    split: str,
    batch_size: int,
    out_dir: Path | None,
    workspace: Path | None,
    as_json: bool,
) -> None:
    """Accuracy, per-class precision/recall/F1, macro-F1, one-vs-rest ROC AUC, confusion matrix."""
    from camlabel.evaluate import evaluate_classifier

    ws = open_workspace(workspace) if workspace is not None else None
    if out_dir is None and ws is not None:
        out_dir = ws.dir("reports") / "classifier"
    m = evaluate_classifier(
        model, data, split=split, batch_size=batch_size, out_dir=out_dir, workspace=ws
    )
    if as_json:
        echo_json(m)
    else:
        click.echo(
            f"{m['split']} split, n={m['n']}: accuracy {_fmt(m['accuracy'])}, macro-F1 {_fmt(m['macro_f1'])}, macro ROC AUC {_fmt(m['macro_auc'])}"
        )
        for c, v in m["per_class"].items():
            click.echo(
                f"  {c:<12} precision {_fmt(v['precision'])}  recall {_fmt(v['recall'])}  F1 {_fmt(v['f1'])}  AUC {_fmt(v['auc'])}  n={v['support']}"
            )
        info(f"wrote {m['files']['metrics']} and {m['files']['confusion_matrix_png']}")
    _fail_on(m["failures"], "image")


def _fail_on(failures: list[Any], what: str) -> None:
    if failures:
        from camlabel.errors import BatchError

        raise BatchError(
            f"{len(failures)} {what}(s) could not be processed; the others were",
            [(str(a), str(b)) for a, b in failures],
            hint="fix or remove the listed files and run again (finished images are kept)",
        )


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@workspace_option
@click.option(
    "--method",
    type=click.Choice(CAM_METHOD_NAMES),
    default=None,
    help="CAM method [workspace cam.method: gradcam].",
)
@click.option(
    "--fusion",
    type=click.Choice(FUSION_NAMES),
    default=None,
    help="How the backbones' maps combine [workspace cam.fusion: normalize-mean].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--all",
    "all_images",
    is_flag=True,
    help="Pre-annotate every image, not only those predicted as a lesion class.",
)
@click.option("--target", default=None, help="Explain this class instead of the predicted one.")
@refine_option
@lung_field_options
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Only shard K of N (by file content hash), into WS/shards/K-of-N/; "
    "merge the shards with camlabel merge-shards.",
)
@json_option
def gradcam(
    model: Path,
    images: tuple[Path, ...],
    workspace: Path,
    method: str | None,
    fusion: str | None,
    batch_size: int,
    all_images: bool,
    target: str | None,
    refine: str | None,
    lung_masks: Path | None,
    lung_model: Path | None,
    shard: str | None,
    as_json: bool,
) -> None:
    """Grad-CAM heatmaps and pre-annotation polygons for IMAGES (files, folders or a metadata.csv).

    Registers the images in the workspace ledger, writes WS/heatmaps/<id>.npy (+ overlay .png),
    and records prediction, heatmap and pre-annotation (polygons in original-image pixels).
    Resumable: images done with the same model version and method are skipped.
    """
    from camlabel.preannotate import run_gradcam

    ws = open_workspace(workspace)
    kw: dict[str, Any] = {
        "method": method,
        "fusion": fusion,
        "batch_size": batch_size,
        "all_images": all_images,
        "target": target,
        "progress": show_progress(),
        "refine": refine,
        "lung_masks": lung_masks,
        "lung_model": lung_model,
    }
    if shard is not None:
        from camlabel.shards import parse_shard, run_gradcam_shard

        s, out = run_gradcam_shard(ws, model, list(images), parse_shard(shard), **kw)
        info(
            f"shard {shard}: results in {out}; merge with: camlabel merge-shards -w {ws.root} DIR..."
        )
    else:
        s = run_gradcam(ws, model, list(images), **kw)
    for warning in s.warnings:  # also under -q: it changes what the results mean
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json(s.to_json())
    else:
        classes = ", ".join(f"{k}: {v}" for k, v in sorted(s.by_class.items())) or "-"
        click.echo(
            f"{s.method}: {s.processed} image(s) processed, {s.skipped} already done, "
            f"{s.preannotated} pre-annotated ({classes}); model version {s.model_version}"
        )
        if s.kept_preannotation:
            info(
                f"{s.kept_preannotation} image(s) kept their pre-annotation (already pushed/annotated or from another source)"
            )
    _fail_on(s.failures, "image")


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@lung_field_options
@click.option("--method", type=click.Choice(CAM_METHOD_NAMES), default="gradcam", show_default=True)
@click.option(
    "--fusion", type=click.Choice(FUSION_NAMES), default="normalize-mean", show_default=True
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--border-fraction",
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
    default=0.08,
    show_default=True,
    help="Width of the border band, as a fraction of the image side.",
)
@click.option(
    "--outside-threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Flag images with less than this share of CAM energy inside the lungs.",
)
@click.option(
    "--worst",
    type=click.IntRange(min=0),
    default=12,
    show_default=True,
    help="Images in the worst-case grid.",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for audit.json and audit_worst.png [WS/reports with -w, else MODEL-audit/].",
)
@optional_workspace_option
@json_option
def audit(
    model: Path,
    data: tuple[Path, ...],
    lung_masks: Path | None,
    lung_model: Path | None,
    method: str,
    fusion: str,
    batch_size: int,
    border_fraction: float,
    outside_threshold: float,
    worst: int,
    out_dir: Path | None,
    workspace: Path | None,
    as_json: bool,
) -> None:
    """Shortcut audit: share of CAM energy inside the lung field and in the border band.

    DATA: image files, folders or a metadata.csv. Images whose CAM lies mostly outside the
    lungs are flagged; a PNG grid shows the worst cases.
    """
    from camlabel.audit import run_audit

    ws = open_workspace(workspace) if workspace is not None else None
    if out_dir is None and ws is not None:
        out_dir = ws.dir("reports")
    r = run_audit(
        model,
        list(data),
        lung_masks=lung_masks,
        lung_model=lung_model,
        method=method,
        fusion=fusion,
        batch_size=batch_size,
        out_dir=out_dir,
        border_fraction=border_fraction,
        outside_threshold=outside_threshold,
        worst=worst,
        workspace=ws,
        progress=show_progress(),
    )
    if as_json:
        echo_json({k: v for k, v in r.items()})
    else:
        o = r["overall"]
        click.echo(
            f"{o['n_images']} image(s), {o['with_lung_mask']} with a lung mask: CAM energy inside the lungs "
            f"{_fmt(o['mean_lung_energy'])} (mean; lung area {_fmt(o['mean_lung_area'])}), in the border band "
            f"{_fmt(o['mean_border_energy'])} (area {r['border_area_share']:.3f}); flagged {o['flagged']}"
        )
        for name, g in r["by_label"].items():
            click.echo(
                f"  label {name:<10} n={g['n_images']:<4} lung {_fmt(g['mean_lung_energy'])}  border {_fmt(g['mean_border_energy'])}  flagged {g['flagged']}"
            )
        info(f"wrote {r['files']['json']} and {r['files']['worst_png']}")
    _fail_on(r["failures"], "image")


@click.command("merge-shards")
@click.argument(
    "dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@workspace_option
@json_option
def merge_shards(dirs: tuple[Path, ...], workspace: Path, as_json: bool) -> None:
    """Merge Grad-CAM shard folders (gradcam --shard K/N) into the workspace.

    Copies each shard's display PNGs and heatmaps, then merges its records by gradcam's own
    rule. Idempotent: merging a shard again, or a re-run shard, changes nothing.
    """
    from camlabel.shards import merge_shards as merge

    ws = open_workspace(workspace)
    m = merge(ws, list(dirs))
    for w in m.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if as_json:
        echo_json(m.to_json())
    else:
        click.echo(
            f"merged {m.shards} shard(s): {m.records} records ({m.added} added, {m.updated} "
            f"updated, {m.unchanged} unchanged), {m.files_copied} file(s) copied"
        )


COMMANDS = [train_cls, evaluate, gradcam, audit, merge_shards]
