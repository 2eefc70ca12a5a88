"""COCO instance segmentation with RLE: ``annotations.json`` + ``images/<case>.png``.

Each 8-connected lesion region is one instance (category 1 ``lesion``, compressed RLE,
``iscrowd`` 0); ignore regions are instances of category 2 ``ignore``. An image whose mask is
empty is listed without instances (a negative). Image entries carry ``camlabel_image_id`` and
``mask_version`` so ``import-annotations --format coco`` maps them back exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.interop import cocorle
from camlabel.interop.exporting import ExportItem

CATEGORIES = [
    {"id": 1, "name": "lesion", "supercategory": "lesion"},
    {"id": 2, "name": "ignore", "supercategory": "ignore"},
]


def instances(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected regions of ``mask``, in raster order of their first pixel."""
    import cv2

    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, n)]


def _bbox(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def write(items: Sequence[ExportItem], out: Path) -> dict[str, Any]:
    from camlabel.fileio import atomic_write_text
    from camlabel.imaging import write_png_atomic
    from camlabel.records import utcnow

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for n, it in enumerate(items, 1):
        write_png_atomic(out / "images" / f"{it.case}.png", it.image())
        assert it.rec.mask is not None
        images.append(
            {
                "id": n,
                "file_name": f"images/{it.case}.png",
                "width": it.rec.width,
                "height": it.rec.height,
                "camlabel_image_id": it.rec.image_id,
                "mask_version": it.rec.mask.version,
            }
        )
        ignore = it.ignore()
        for cat, mask in ((1, it.mask()), (2, ignore)):
            if mask is None:
                continue
            for region in instances(mask):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": n,
                        "category_id": cat,
                        "segmentation": cocorle.encode(region),
                        "area": int(region.sum()),
                        "bbox": _bbox(region),
                        "iscrowd": 0,
                    }
                )
    doc = {
        "info": {"description": "lesion masks exported by camlabel", "date_created": utcnow()},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": CATEGORIES,
    }
    atomic_write_text(out / "annotations.json", json.dumps(doc) + "\n")
    return {"annotations": "annotations.json", "images": len(images), "instances": len(anns)}
