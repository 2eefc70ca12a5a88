"""COCO run-length encoding (pure numpy; same bytes as pycocotools' ``encode``/``decode``).

COCO RLE runs go down the columns (Fortran order), start with a run of zeros, and are stored
either as a list of ints (``iscrowd`` / uncompressed) or as pycocotools' compact string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from camlabel.errors import AnnotationError


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D mask in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' ``rleToString``: delta-coded, 5 bits per char, offset 48."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if ch & 0x10 else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def string_to_counts(s: str) -> list[int]:
    """pycocotools' ``rleFrString``."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p >= len(s):
                raise AnnotationError(f"COCO RLE string ends inside a count: {s[-20:]!r}")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict[str, Any]:
    """A mask as compressed COCO RLE ``{"size": [h, w], "counts": str}``."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(mask_to_counts(mask))}


def decode(rle: Mapping[str, Any], where: str = "RLE") -> np.ndarray:
    """Compressed or uncompressed COCO RLE -> bool ``h x w`` mask."""
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2):
        raise AnnotationError(f"{where}: RLE 'size' must be [height, width]. Received: {size!r}")
    h, w = int(size[0]), int(size[1])
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = string_to_counts(counts) if isinstance(counts, str) else list(counts or [])
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise AnnotationError(
            f"{where}: RLE runs cover {sum(runs)} pixels but size {w}x{h} has {h * w}",
            hint="the segmentation belongs to an image of another size, or the file is damaged",
        )
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()
