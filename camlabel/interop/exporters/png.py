"""PNG pairs with a CSV index: ``images/<case>.png``, ``masks/<case>.png`` (0/255, ignore 127).

``index.csv`` columns: image, mask, patient, split, mask_version, image_id.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.interop.exporting import ExportItem

IGNORE_VALUE = 127


def write(items: Sequence[ExportItem], out: Path) -> dict[str, Any]:
    from camlabel.fileio import atomic_write_text
    from camlabel.imaging import write_png_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "mask", "patient", "split", "mask_version", "image_id"])
    for it in items:
        write_png_atomic(out / "images" / f"{it.case}.png", it.image())
        mask = it.mask().astype(np.uint8) * 255
        ignore = it.ignore()
        if ignore is not None:
            mask[ignore] = IGNORE_VALUE
        write_png_atomic(out / "masks" / f"{it.case}.png", mask)
        assert it.rec.mask is not None
        w.writerow(
            [
                f"images/{it.case}.png",
                f"masks/{it.case}.png",
                it.rec.patient_id or "",
                it.rec.split or "",
                it.rec.mask.version,
                it.rec.image_id,
            ]
        )
    atomic_write_text(out / "index.csv", buf.getvalue())
    return {"index": "index.csv", "images": len(items)}
