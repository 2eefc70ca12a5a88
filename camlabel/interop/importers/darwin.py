"""V7 Darwin JSON (1.0 and 2.0): polygons and complex polygons in original-image pixels.

Each file is one image; its annotations form one annotation. Regions of class ``Ignore`` (V7's
name for pacemakers, markup and devices) are kept as ignore regions; ``--label-map`` maps the
other class names (e.g. ``Lung=lesion`` to import V7's lung outlines as the mask class). Tags
(image-level labels), bounding boxes, keypoints, lines and ellipses are counted and skipped.
The image is matched by ``image.original_filename``, then ``image.filename``.

A complex polygon's paths are combined by the even-odd rule (a path inside another is a hole),
as Darwin draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.errors import AnnotationError
from camlabel.interop.importers import (
    ForeignAnnotation,
    ImageRef,
    LabelMap,
    SkipCounter,
    load_json,
)

_SKIPPED_SHAPES = ("tag", "bounding_box", "keypoint", "line", "ellipse", "cuboid", "skeleton")


def json_files(files: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for f in files:
        out.extend(sorted(f.glob("*.json")) if f.is_dir() else [f])
    return out


def read(files: Sequence[Path], labels: LabelMap, skipped: SkipCounter) -> list[ForeignAnnotation]:
    out = []
    for f in json_files(files):
        data = load_json(f)
        if not isinstance(data, Mapping):
            raise AnnotationError(f"'{f}' is not a Darwin JSON file (expected an object)")
        img, slot = _image(f, data)
        fa = ForeignAnnotation(
            ref=ImageRef(name=str(img.get("original_filename") or img.get("filename") or f.stem)),
            annotation_id=str(data.get("item", {}).get("source_info", {}).get("item_id", f.stem)),
            annotator="darwin",
            source_file=str(f),
            fmt="darwin",
            size=(int(slot["width"]), int(slot["height"])) if slot.get("width") else None,
        )
        annotators: set[str] = set()
        for ann in data.get("annotations") or []:
            _region(f, ann, fa, labels, skipped)
            for a in ann.get("annotators") or []:
                annotators.add(str(a.get("email") or a.get("full_name") or ""))
        annotators.discard("")
        if annotators:
            fa.annotator = ",".join(sorted(annotators))
        if fa.polygons:  # ignore regions alone are no answer about the lesion
            out.append(fa)
        else:
            skipped["file without lesion regions"] += 1
    return out


def _image(f: Path, data: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(naming info, size info) for Darwin 1.0 (``image``) and 2.0 (``item.slots[0]``)."""
    if isinstance(data.get("image"), Mapping):
        return data["image"], data["image"]
    item = data.get("item")
    if isinstance(item, Mapping) and item.get("slots"):
        slot = item["slots"][0]
        name = {"original_filename": item.get("name"), "filename": slot.get("slot_name")}
        return name, slot
    raise AnnotationError(
        f"'{f}' is not a Darwin JSON file (no 'image' and no 'item.slots')",
        hint="export the dataset from V7 as 'Darwin JSON'",
    )


def _region(
    f: Path, ann: Mapping[str, Any], fa: ForeignAnnotation, labels: LabelMap, skipped: SkipCounter
) -> None:
    name = str(ann.get("name"))
    paths = _paths(ann)
    if paths is None:
        kind = next((k for k in _SKIPPED_SHAPES if k in ann), "unknown shape")
        skipped[kind] += 1
        return
    target = labels(name)
    if target is None:
        skipped[f"class '{name}' not mapped"] += 1
        return
    rings = []
    for j, p in enumerate(paths):
        try:
            pts = np.array([[float(v["x"]), float(v["y"])] for v in p], dtype=float)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(
                f"'{f}' annotation '{name}' path {j}: points must be {{x, y}}"
            ) from exc
        if len(pts) >= 3:
            rings.append(pts)
    if not rings:
        skipped["polygon with < 3 points"] += 1
        return
    # even-odd: the first ring is the outline, the others holes of it (PolygonPx fills even-odd)
    (fa.polygons if target == "lesion" else fa.ignore_polygons).append(rings)


def _paths(ann: Mapping[str, Any]) -> list[Any] | None:
    for key in ("polygon", "complex_polygon"):
        shape = ann.get(key)
        if isinstance(shape, Mapping):
            if isinstance(shape.get("paths"), list):
                return list(shape["paths"])
            path = shape.get("path")
            if isinstance(path, list) and path and isinstance(path[0], list):
                return list(path)
            if isinstance(path, list):
                return [path]
    return None
