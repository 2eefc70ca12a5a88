"""A folder of mask PNGs named like the images (``chest01.png`` for ``chest01.dcm``).

By default every non-zero pixel is lesion. With ``--label-map VALUE=lesion|ignore`` (pixel
values, e.g. ``255=lesion 127=ignore`` for V7's semantic masks) only the mapped values count,
and pixels of other non-zero values are counted and skipped. A PNG named by a camlabel image id
(``<sha256>.png``, or ``<sha256>-v2.png`` as in WS/masks) matches that image directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from camlabel.errors import AnnotationError
from camlabel.interop.importers import ForeignAnnotation, ImageRef, LabelMap, SkipCounter


def mask_files(files: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for f in files:
        if f.is_dir():
            out.extend(p for p in sorted(f.rglob("*.png")) if not p.name.startswith("."))
        else:
            out.append(f)
    return out


def read(files: Sequence[Path], labels: LabelMap, skipped: SkipCounter) -> list[ForeignAnnotation]:
    from camlabel.imaging import read_mask_png

    values = {int(k): v for k, v in labels.explicit.items() if k.isdigit()}
    out = []
    for f in mask_files(files):
        if values:
            raw = _read_values(f)
            lesion = np.isin(raw, [v for v, t in values.items() if t == "lesion"])
            ignore_vals = [v for v, t in values.items() if t == "ignore"]
            ignore = np.isin(raw, ignore_vals) if ignore_vals else None
            other = sorted(set(np.unique(raw).tolist()) - set(values) - {0})
            for v in other:
                skipped[f"mask value {v} not mapped (files)"] += 1
        else:
            lesion, ignore = read_mask_png(f), None
        stem = f.stem.split("-v")[0]
        out.append(
            ForeignAnnotation(
                ref=ImageRef(name=f.name, image_id=stem if len(stem) == 64 else None),
                annotation_id=f.name,
                annotator="mask-file",
                source_file=str(f),
                fmt="masks",
                size=(lesion.shape[1], lesion.shape[0]),
                mask=lesion,
                ignore_mask=ignore if ignore is not None and ignore.any() else None,
            )
        )
    return out


def _read_values(path: Path) -> np.ndarray:
    """The stored values of a single-channel mask PNG (palette PNGs: the index)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise AnnotationError(f"cannot read mask '{path}' ({exc})") from exc
    if arr.ndim != 2:
        raise AnnotationError(
            f"mask '{path}' has {arr.shape[2]} channels; --label-map VALUE=... needs a "
            "single-channel mask",
            hint="leave --label-map out to count every non-zero pixel as lesion",
        )
    return arr
