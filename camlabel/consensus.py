"""Merging several annotators' masks into one (consensus rules) and measuring agreement.

Rules (``--consensus``):

- ``majority``: a pixel is lesion when strictly more than half of the annotations mark it
  (with two annotators this equals ``intersection``; with one it is that annotation).
- ``union``: marked by any annotation.
- ``intersection``: marked by every annotation.
- ``latest``: the most recently updated annotation alone.

Agreement is the mean pairwise Dice over the annotations that were merged (None for one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camlabel.errors import UsageError
from camlabel.geometry import dice, iou, pairwise_dice

__all__ = ["RULES", "dice", "iou", "merge", "pairwise_dice"]

RULES: tuple[str, ...] = ("majority", "union", "intersection", "latest")


def merge(
    masks: Sequence[np.ndarray], rule: str, updated_at: Sequence[str] | None = None
) -> np.ndarray:
    """Merge bool masks of one image by ``rule``; ``updated_at`` orders them for ``latest``."""
    if rule not in RULES:
        raise UsageError(
            f"Wrong consensus rule {rule!r}, supported rules: {list(RULES)}",
            hint="pass --consensus majority|union|intersection|latest",
        )
    if not masks:
        raise ValueError("merge() needs at least one mask")
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"masks of one image must share a shape. Received: {sorted(shapes)}")
    stack = np.stack([m.astype(bool, copy=False) for m in masks])
    if rule == "union":
        return np.asarray(stack.any(axis=0))
    if rule == "intersection":
        return np.asarray(stack.all(axis=0))
    if rule == "majority":
        return np.asarray(stack.sum(axis=0) * 2 > len(masks))
    order = list(updated_at) if updated_at is not None else [""] * len(masks)
    latest = max(range(len(masks)), key=lambda i: (order[i], i))
    return np.asarray(stack[latest])
