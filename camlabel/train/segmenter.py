"""Train the lesion segmenter (``camlabel train-seg``) on the ledger's masks.

:func:`train_segmenter` takes every ledger image that has a consensus mask, exports the pairs
to ``WS/exports/seg-<run>/`` (the layout of camlabel/models/seg_data.py, with a
patient-grouped train/val split written into index.csv), runs the training script locally
(a child process, :mod:`camlabel.train.local`) or as a SageMaker training job
(:mod:`camlabel.train.sagemaker`), and leaves the model in ``WS/models/seg-<run>/`` with
``segmenter.json``: which mask version of which image it was trained on. The same provenance
goes to the run log (``runs.jsonl``, kind ``train-seg``).
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.errors import BatchError, CamlabelError, ModelError
from camlabel.models.segmenter import MODEL_FILE, SIDECAR

if TYPE_CHECKING:
    from camlabel.train.sagemaker import SageMakerSettings
    from camlabel.workspace import Workspace

DEFAULT_MIN_MASKS = 20
PAPER_EPOCHS, PAPER_BATCH, PAPER_LR = 40, 30, 1e-4


@dataclass(frozen=True)
class SegTrainResult:
    """What :func:`train_segmenter` produced."""

    run_id: str
    model_dir: Path
    export_dir: Path
    metrics: dict[str, Any]
    mask_versions: dict[str, int]
    on: str
    job: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    #: image ids of the lesion-free images trained on with an empty mask
    negatives: tuple[str, ...] = ()


def new_run_id() -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"seg-{now}-{secrets.token_hex(2)}"


def masked_records(ws: Workspace) -> list[Any]:
    """Ledger records whose consensus mask file exists (sorted by image id)."""
    out = []
    for rec in ws.ledger.all():
        if (
            rec.mask is not None
            and ws.abs(rec.mask.path).is_file()
            and ws.abs(rec.display_path).is_file()
        ):
            out.append(rec)
    return sorted(out, key=lambda r: r.image_id)


def check_mask_files(ws: Workspace) -> None:
    """Every mask the ledger records must be a readable PNG of its image's size.

    A mask file deleted, emptied or damaged in the workspace would otherwise be skipped
    silently (or crash the training child on its exported copy): name each one, in the
    workspace, with the fix.
    """
    from camlabel.imaging import read_mask_png

    bad: list[tuple[str, str]] = []
    for rec in sorted(ws.ledger.all(), key=lambda r: r.image_id):
        if rec.mask is None:
            continue
        path = ws.abs(rec.mask.path)
        try:
            mask = read_mask_png(path)
        except CamlabelError as exc:
            bad.append((str(path), exc.message.split(": ", 1)[-1]))
            continue
        if mask.shape != (rec.height, rec.width):
            bad.append(
                (
                    str(path),
                    f"{mask.shape[1]}x{mask.shape[0]} px but the image is {rec.width}x{rec.height}",
                )
            )
    if bad:
        raise BatchError(
            f"{len(bad)} mask file(s) recorded in the ledger are missing or unreadable",
            bad,
            hint=f"run camlabel pull-masks --full -w {ws.root} to write them again from the "
            "annotations (nothing else is touched)",
        )


def negative_records(ws: Workspace, limit: int, seed: int) -> list[Any]:
    """Up to ``limit`` lesion-free images by their label, to train on with an empty mask.

    An image qualifies when its dataset label is one of the workspace's classes but not a
    lesion class (e.g. ``normal``), it has no mask, and no annotator has touched it (a
    submitted or skipped annotation is a person's word and wins over the label). The pick
    is a seeded shuffle, so the same ledger and seed give the same images.
    """
    import hashlib

    if limit <= 0:
        return []
    lesion = set(ws.lesion_classes)
    pool = [
        r
        for r in ws.ledger.all()
        # not masked, annotated or skipped (ImageRecord.state)
        if r.state in ("registered", "preannotated", "pushed")
        and r.label in ws.classes
        and r.label not in lesion
        and ws.abs(r.display_path).is_file()
    ]
    pool.sort(key=lambda r: hashlib.sha256(f"{seed}:{r.image_id}".encode()).hexdigest())
    return sorted(pool[:limit], key=lambda r: r.image_id)


def export_pairs(
    ws: Workspace,
    run_id: str,
    records: Sequence[Any],
    *,
    val_fraction: float,
    seed: int,
    negatives: Sequence[Any] = (),
) -> tuple[Path, dict[str, int]]:
    """Write ``WS/exports/<run_id>/`` (index.csv, images/, masks/); returns (dir, mask versions).

    ``records`` have a mask; ``negatives`` (see :func:`negative_records`) are exported with
    an all-background mask and ``mask_version`` 0, and are not in the returned versions.
    The split is patient-grouped (images without a patient id form their own group) and
    stratified by label, so no patient is on both sides.
    """
    from camlabel.imaging import write_png_atomic
    from camlabel.models.data import grouped_stratified_split
    from camlabel.models.seg_data import IndexRow, write_index

    out = ws.dir("exports") / run_id
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    records = [*records, *negatives]
    n_masked = len(records) - len(negatives)
    labels = [r.label or "unlabeled" for r in records]
    groups = [r.patient_id or r.image_id for r in records]
    if val_fraction > 0 and len(set(groups)) >= 2:
        _, val_idx = grouped_stratified_split(labels, groups, val_fraction, seed)
        val = {int(i) for i in val_idx}
    else:
        val = set()
    rows = []
    versions: dict[str, int] = {}
    for i, rec in enumerate(records):
        shutil.copyfile(ws.abs(rec.display_path), out / "images" / f"{rec.image_id}.png")
        if i < n_masked:
            assert rec.mask is not None
            shutil.copyfile(ws.abs(rec.mask.path), out / "masks" / f"{rec.image_id}.png")
            versions[rec.image_id] = version = int(rec.mask.version)
        else:
            empty = np.zeros((rec.height, rec.width), np.uint8)
            write_png_atomic(out / "masks" / f"{rec.image_id}.png", empty)
            version = 0
        rows.append(
            IndexRow(
                id=rec.image_id,
                patient_id=rec.patient_id or rec.image_id,
                split="val" if i in val else "train",
                label=rec.label or "",
                mask_version=str(version),
            )
        )
    write_index(out, rows)
    return out, versions


def train_segmenter(
    ws: Workspace,
    *,
    on: str = "local",
    epochs: int = PAPER_EPOCHS,
    batch_size: int = PAPER_BATCH,
    lr: float = PAPER_LR,
    lr_schedule: str = "constant",
    image_size: int | None = None,
    min_masks: int = DEFAULT_MIN_MASKS,
    val_fraction: float = 0.2,
    seed: int | None = None,
    patience: int = 10,
    negatives: int = 0,
    model_overrides: Mapping[str, Any] | None = None,
    sagemaker: SageMakerSettings | None = None,
    dry_run: bool = False,
    progress: bool = True,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> SegTrainResult:
    """Train the segmenter on every masked image of the workspace.

    Args:
        on: ``"local"`` (this machine: a GPU when one is visible, else the CPU) or
            ``"sagemaker"`` (needs ``sagemaker`` settings and the SDK extra).
        epochs, batch_size, lr: the paper's 40 / 30 / 1e-4 by default.
        lr_schedule: ``"constant"`` (the paper) or ``"cosine"`` (decay to 1 % over the run).
        image_size: letterbox side; default the workspace's ``seg_image_size``.
        min_masks: refuse to train on fewer masked images.
        negatives: add up to this many lesion-free images (labelled with a non-lesion
            class, never annotated; :func:`negative_records`) with an empty mask, so the
            network also learns where not to draw. 0: masks only (the paper).
        model_overrides: Tiramisu sizes passed as hyperparameters, e.g.
            ``{"growth-rate": 4, "down-blocks": "2,2"}`` for a tiny test model.
        dry_run: (sagemaker) export the data and return the job plan; nothing is uploaded.
        on_event: receives the training script's progress events (local) or status changes.
        env: extra environment for the local child process (e.g. ``KERAS_BACKEND``).

    Raises:
        CamlabelError: fewer than ``min_masks`` masked images, or a bad ``on``.
        ModelError: training failed.
    """
    if on not in ("local", "sagemaker"):
        raise CamlabelError(
            f"unknown training target. Received: on={on!r}",
            hint="use on='local' or on='sagemaker'",
        )
    check_mask_files(ws)
    records = masked_records(ws)
    if len(records) < min_masks:
        raise CamlabelError(
            f"train-seg needs at least {min_masks} images with a mask; the workspace has "
            f"{len(records)} (of {len(ws.ledger)} images in the ledger)",
            hint="annotate more images and run 'camlabel pull-masks', or lower --min-masks "
            "(a segmenter trained on a handful of masks will not generalise)",
        )
    seed = ws.settings.workspace.seed if seed is None else int(seed)
    size = int(image_size or ws.settings.workspace.seg_image_size)
    run_id = new_run_id()
    negs = negative_records(ws, negatives, seed)
    neg_ids = tuple(r.image_id for r in negs)
    export_dir, versions = export_pairs(
        ws, run_id, records, val_fraction=val_fraction, seed=seed, negatives=negs
    )
    hps: dict[str, Any] = {
        "epochs": epochs,
        "batch-size": batch_size,
        "lr": lr,
        "lr-schedule": lr_schedule,
        "image-size": size,
        "seed": seed,
        "patience": patience,
        **dict(model_overrides or {}),
    }
    model_dir = ws.dir("models") / run_id
    settings = {
        "on": on,
        **hps,
        "min_masks": min_masks,
        "val_fraction": val_fraction,
        "negatives": negatives,
    }
    job: dict[str, Any] | None = None
    if on == "local":
        from camlabel.train.local import run_training

        metrics = run_training(
            export_dir, model_dir, hps, on_event=on_event, progress=progress, env=env
        )
    else:
        from camlabel.train import sagemaker as sm

        if sagemaker is None:
            raise CamlabelError(
                "on='sagemaker' needs SageMaker settings (bucket, role ARN)",
                hint="pass --bucket and --role-arn",
            )
        if dry_run:
            plan = sm.plan(sagemaker, run_id, hps)
            return SegTrainResult(
                run_id, model_dir, export_dir, {}, versions, on, None, plan, neg_ids
            )

        def status(s: str, secondary: str) -> None:
            if on_event is not None:
                on_event({"event": "status", "status": s, "secondary": secondary})

        launched = sm.launch(export_dir, sagemaker, run_id, hps, wait=True, on_status=status)
        job = launched.to_json()
        sm.download_model(launched, model_dir, sagemaker)
        metrics_path = model_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        settings.update({"instance_type": sagemaker.instance_type, "region": sagemaker.region})
    if not (model_dir / MODEL_FILE).is_file():
        raise ModelError(f"training finished but {model_dir / MODEL_FILE} is missing")
    summary = {
        k: metrics.get(k) for k in ("val_dice", "val_iou", "train_dice", "train_iou", "best_epoch")
    }
    sidecar = {
        "format": "camlabel-segmenter/1",
        "run_id": run_id,
        "created_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "on": on,
        "image_size": size,
        "trained_on": versions,
        "negatives": list(neg_ids),
        "n_images": len(versions) + len(negs),
        "n_train": metrics.get("n_train"),
        "n_val": metrics.get("n_val"),
        "metrics": summary,
        "device": metrics.get("device"),
        "settings": settings,
        "job": job,
        "export": ws.rel(export_dir),
    }
    from camlabel.fileio import atomic_write_text

    atomic_write_text(model_dir / SIDECAR, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    ws.record_run(
        "train-seg",
        settings,
        run_id=run_id,
        model=ws.rel(model_dir / MODEL_FILE),
        mask_versions=versions,
        negatives=len(negs),
        metrics=summary,
        device=metrics.get("device"),
        job=job,
    )
    return SegTrainResult(run_id, model_dir, export_dir, metrics, versions, on, job, None, neg_ids)
