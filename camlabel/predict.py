"""The paper's inference pipeline (``camlabel predict``): classify -> segment -> overlay.

:func:`predict`: classify each image; if the predicted class is a lesion class, segment it
and superimpose the mask, optionally restricted to the lung field (:mod:`camlabel.lungs`).
Sits above :mod:`camlabel.classify` and :mod:`camlabel.models.segmenter`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.classify import classify_images, load_classifier
from camlabel.errors import CamlabelError
from camlabel.models.segmenter import load_segmenter, segment_probability


@dataclass(frozen=True)
class PredictResult:
    """Per-image results of :func:`predict` (also written as JSON) and failures."""

    items: list[dict[str, Any]]
    failures: list[tuple[str, str]]
    out_dir: Path


def _lesion_classes(classifier: Any, override: Sequence[str] | None) -> tuple[str, ...]:
    """Explicit list > the classifier sidecar's ``lesion_classes`` > covid/pneumonia among its
    classes > every class except "normal"."""
    if override:
        return tuple(override)
    info = getattr(classifier, "info", None) or {}
    if info.get("lesion_classes"):
        return tuple(info["lesion_classes"])
    from camlabel.config import DEFAULT_LESION_CLASSES

    classes = tuple(getattr(classifier, "classes", ()) or ())
    found = tuple(c for c in classes if c in DEFAULT_LESION_CLASSES)
    return found or tuple(c for c in classes if c.lower() != "normal")


def _unique_stem(path: Path, image_id: str, used: set[str]) -> str:
    stem = (
        path.stem
        if path.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"}
        else path.name
    )
    if stem in used:
        stem = f"{stem}-{image_id[:8]}"
    used.add(stem)
    return stem


def _relpaths(inputs: Sequence[str | Path]) -> dict[Path, str]:
    """Each image's path relative to the input folder it came from (a file named directly: its
    file name), keyed by resolved path: lung masks are matched by it, as in preannotate."""
    from camlabel.imaging import iter_image_paths, safe_resolve

    rel: dict[Path, str] = {}
    for item in inputs:
        root = Path(item) if Path(item).is_dir() else Path(item).parent
        for path in iter_image_paths([item]):
            try:
                rel.setdefault(safe_resolve(path), path.relative_to(root).as_posix())
            except ValueError:
                rel.setdefault(safe_resolve(path), path.name)
    return rel


def predict(
    classifier_path: str | Path,
    segmenter_path: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    threshold: float | None = None,
    lesion_classes: Sequence[str] | None = None,
    progress: bool = True,
    lung_masks: str | Path | None = None,
    lung_model: str | Path | None = None,
) -> PredictResult:
    """The paper's inference pipeline, for files and folders (PNG, JPEG, TIFF, DICOM).

    For each image: classify; if the predicted class is a lesion class, segment it and
    superimpose the mask. Writes into ``out_dir``, per input ``<stem>``:

    * ``<stem>.overlay.png``: the image with a banner "class p=0.97" and, for lesion classes,
      the mask tinted and outlined;
    * ``<stem>.mask.png``: the binary mask (0/255), lesion classes only;
    * ``<stem>.json``: class, probabilities, mask area, model versions, lung field.

    Lesions lie inside the lungs: with ``lung_masks`` (a folder of lung masks, lung = 255,
    matched by the image's path relative to its input folder, else by file name) and/or
    ``lung_model`` (a lung segmenter, for images no mask covers), each segmented image's lesion
    probability map is set to 0 outside its lung field before thresholding, so the mask, the
    overlay and ``mask_area_px`` are all restricted. An image without a lung field (no mask
    found, no lung model, or an empty field) is segmented unrestricted. The JSON records
    ``lung_field`` ("mask", "segmenter" or null: unrestricted, or not segmented) and
    ``lung_field_source`` (the mask file, "segmenter:<path>", or null).

    Unreadable inputs are reported in ``failures`` and do not stop the batch.

    Raises:
        UsageError: ``lung_masks`` is not a folder.
        ImageReadError: a lung mask cannot be read (the message names the file).
    """
    from camlabel.fileio import atomic_write_text
    from camlabel.imaging import (
        iter_image_paths,
        overlay_mask,
        put_label,
        read_image,
        safe_resolve,
        write_png_atomic,
    )
    from camlabel.lungs import LungFields
    from camlabel.progress import progress_bar

    classifier = load_classifier(Path(classifier_path))
    segmenter = load_segmenter(segmenter_path)
    lungs = LungFields.open(lung_masks, lung_model)
    thr = segmenter.threshold if threshold is None else float(threshold)
    lesion = _lesion_classes(classifier, lesion_classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = iter_image_paths(list(inputs))
    relpaths = _relpaths(inputs) if lungs.available else {}
    items: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    used: set[str] = set()
    step = max(1, batch_size)
    with progress_bar(total=len(paths), desc="predict", enabled=progress, unit="img") as bar:
        for start in range(0, len(paths), step):
            batch = []
            for p in paths[start : start + step]:
                try:
                    batch.append((p, read_image(p)))
                except CamlabelError as exc:
                    failures.append((str(p), exc.message))
            if not batch:
                bar.update(len(paths[start : start + step]))
                continue
            preds = classify_images(classifier, [img for _, img in batch], batch_size=step)
            to_segment = [i for i, pr in enumerate(preds) if pr.predicted_class in lesion]
            probs = segment_probability(
                segmenter, [batch[i][1] for i in to_segment], batch_size=step
            )
            prob_of = dict(zip(to_segment, probs, strict=True))
            for i, ((path, img), pr) in enumerate(zip(batch, preds, strict=True)):
                stem = _unique_stem(path, img.image_id, used)
                banner = f"{pr.predicted_class} p={pr.probability:.2f}"
                record: dict[str, Any] = {
                    "input": str(path),
                    "image_id": img.image_id,
                    "width": img.width,
                    "height": img.height,
                    "predicted_class": pr.predicted_class,
                    "probability": float(pr.probability),
                    "probabilities": {k: float(v) for k, v in pr.probabilities.items()},
                    "segmented": i in prob_of,
                    "mask_path": None,
                    "mask_area_px": None,
                    "mask_fraction": None,
                    "threshold": thr,
                    "classifier": str(classifier_path),
                    "segmenter": str(segmenter_path),
                    "segmenter_version": segmenter.version,
                    "overlay_path": str(out / f"{stem}.overlay.png"),
                    "lung_field": None,
                    "lung_field_source": None,
                }
                if i in prob_of:
                    rel = relpaths.get(safe_resolve(path), path.name)
                    prob, kind, source = lungs.restrict(prob_of[i], rel, img)
                    record.update(lung_field=kind, lung_field_source=source)
                    mask = prob >= thr
                    mask_path = out / f"{stem}.mask.png"
                    write_png_atomic(mask_path, mask.astype(np.uint8) * 255)
                    area = int(mask.sum())
                    record.update(
                        mask_path=str(mask_path),
                        mask_area_px=area,
                        mask_fraction=area / float(mask.size),
                    )
                    overlay = overlay_mask(img.display, mask)
                else:
                    overlay = overlay_mask(img.display, np.zeros(img.display.shape, bool))
                write_png_atomic(out / f"{stem}.overlay.png", put_label(overlay, banner))
                atomic_write_text(
                    out / f"{stem}.json", json.dumps(record, indent=2, sort_keys=True) + "\n"
                )
                items.append(record)
            bar.update(len(paths[start : start + step]))
    return PredictResult(items=items, failures=failures, out_dir=out)
