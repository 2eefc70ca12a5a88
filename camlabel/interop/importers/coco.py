"""COCO instance segmentation: polygons and RLE (compressed or not).

All instances of one image (in one file) form one annotation: COCO instances are objects, not
annotators. Instances without a segmentation (object-detection boxes), keypoint-only instances
and categories not mapped to the lesion class are counted and skipped. An image entry with a
``camlabel_image_id`` (written by ``camlabel export --format coco``) matches that image
directly; otherwise the ``file_name`` (and an image file of that name beside the JSON).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from camlabel.errors import AnnotationError
from camlabel.interop import cocorle
from camlabel.interop.importers import (
    ForeignAnnotation,
    ImageRef,
    LabelMap,
    SkipCounter,
    load_json,
    ring,
)


def read(files: Sequence[Path], labels: LabelMap, skipped: SkipCounter) -> list[ForeignAnnotation]:
    out: list[ForeignAnnotation] = []
    for f in files:
        data = load_json(f)
        if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
            raise AnnotationError(
                f"'{f}' is not a COCO file (no 'images' list)",
                hint="pass a COCO instances JSON with images, annotations and categories",
            )
        cats = {c.get("id"): str(c.get("name")) for c in data.get("categories") or []}
        by_image: dict[Any, ForeignAnnotation] = {}
        for img in data["images"]:
            name = str(img.get("file_name", img.get("id")))
            beside = f.parent / name
            by_image[img.get("id")] = ForeignAnnotation(
                ref=ImageRef(
                    name=Path(name).name,
                    path=beside if beside.is_file() else None,
                    image_id=img.get("camlabel_image_id"),
                ),
                annotation_id=str(img.get("id")),
                annotator=str(img.get("annotator", "coco")),
                source_file=str(f),
                fmt="coco",
                size=(int(img["width"]), int(img["height"])) if "width" in img else None,
            )
        used: set[Any] = set()
        seen: set[Any] = set()
        for ann in data.get("annotations") or []:
            seen.add(ann.get("image_id"))
            _instance(f, ann, by_image, cats, labels, skipped, used)
        # an image without any instance is a negative (empty mask); one whose instances were
        # all skipped is not imported at all
        out.extend(by_image[i] for i in by_image if i in used or i not in seen)
    return out


def _instance(
    f: Path,
    ann: Mapping[str, Any],
    by_image: Mapping[Any, ForeignAnnotation],
    cats: Mapping[Any, str],
    labels: LabelMap,
    skipped: SkipCounter,
    used: set[Any],
) -> None:
    where = f"'{f}' annotation {ann.get('id')}"
    fa = by_image.get(ann.get("image_id"))
    if fa is None:
        raise AnnotationError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
    name = cats.get(ann.get("category_id"), str(ann.get("category_id")))
    seg = ann.get("segmentation")
    if not seg:
        kind = "keypoints" if ann.get("keypoints") else "bbox (object detection)"
        skipped[kind] += 1
        return
    target = labels(name)
    if target is None:
        skipped[f"category '{name}' not mapped"] += 1
        return
    if isinstance(seg, Mapping):
        m = cocorle.decode(seg, where)
        if fa.size is None:
            fa.size = (m.shape[1], m.shape[0])
        attr = "mask" if target == "lesion" else "ignore_mask"
        prev = getattr(fa, attr)
        setattr(fa, attr, m if prev is None else prev | m)
    else:
        rings = [ring(p, where) for p in seg if len(p) >= 6]
        if not rings:
            skipped["polygon with < 3 points"] += 1
            return
        # each COCO polygon of an instance is a separate part (COCO has no holes in polygons)
        dest = fa.polygons if target == "lesion" else fa.ignore_polygons
        dest.extend([r] for r in rings)
    used.add(ann.get("image_id"))
