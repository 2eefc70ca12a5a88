"""The paper's inference pipeline (``camlabel predict``): classify -> segment -> overlay.

:func:`predict`: classify each image; if the predicted class is a lesion class, segment it
and superimpose the mask. Sits above :mod:`camlabel.classify` and
:mod:`camlabel.models.segmenter`.
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
) -> PredictResult:
    """The paper's inference pipeline, for files and folders (PNG, JPEG, TIFF, DICOM).

    For each image: classify; if the predicted class is a lesion class, segment it and
    superimpose the mask. Writes into ``out_dir``, per input ``<stem>``:

    * ``<stem>.overlay.png``: the image with a banner "class p=0.97" and, for lesion classes,
      the mask tinted and outlined;
    * ``<stem>.mask.png``: the binary mask (0/255), lesion classes only;
    * ``<stem>.json``: class, probabilities, mask area, model versions.

    Unreadable inputs are reported in ``failures`` and do not stop the batch.
    """
    from camlabel.fileio import atomic_write_text
    from camlabel.imaging import (
        iter_image_paths,
        overlay_mask,
        put_label,
        read_image,
        write_png_atomic,
    )
    from camlabel.progress import progress_bar

    classifier = load_classifier(Path(classifier_path))
    segmenter = load_segmenter(segmenter_path)
    thr = segmenter.threshold if threshold is None else float(threshold)
    lesion = _lesion_classes(classifier, lesion_classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = iter_image_paths(list(inputs))
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
                }
                if i in prob_of:
                    mask = prob_of[i] >= thr
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
