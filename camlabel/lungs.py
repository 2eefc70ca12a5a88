"""Lung fields: where the lungs are in an image, from lung masks or a lung segmenter.

Used by the shortcut audit (:mod:`camlabel.audit`: how much CAM energy lies inside the lungs)
and by the CAM refinement (:mod:`camlabel.cam.refine`: a lesion pre-annotation stays inside
them). :class:`LungFields` is the one lookup both use: a mask file beside the image (same
relative path under a masks folder; the phantoms write ``lung_masks/<class>/<id>.png``), else a
lung segmenter trained with ``camlabel train-seg`` on lung outlines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.errors import ImageReadError, UsageError

if TYPE_CHECKING:
    from camlabel.imaging import LoadedImage


def index_masks(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp"):
            rel = p.relative_to(folder).with_suffix("").as_posix()
            by_rel[rel] = p
            by_stem.setdefault(p.stem, []).append(p)
    return by_rel, by_stem


def find_lung_mask(
    relpath: str, by_rel: Mapping[str, Path], by_stem: Mapping[str, list[Path]]
) -> Path | None:
    """The mask for an image: same relative path (any mask suffix), else a unique same-stem file."""
    key = Path(relpath).with_suffix("").as_posix()
    if key in by_rel:
        return by_rel[key]
    # phantoms: images/<class>/<id>.png beside lung_masks/<class>/<id>.png
    parts = key.split("/")
    for k in range(1, len(parts)):
        sub = "/".join(parts[k:])
        if sub in by_rel:
            return by_rel[sub]
    same = by_stem.get(Path(relpath).stem, [])
    return same[0] if len(same) == 1 else None


def read_lung_mask(path: Path, height: int, width: int) -> np.ndarray:
    """A lung mask as bool HxW at the image size: lung = the top value (255 in 0/255 masks and in
    V7's 0/127/255 masks, where 127 is "Ignore"). Resized with nearest neighbour if needed."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(
            f"cannot read lung mask {path}", hint="lung masks are 8-bit PNGs (lung = 255)"
        )
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    full = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
    lung = arr >= 0.75 * full
    if lung.shape != (height, width):
        lung = cv2.resize(
            lung.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    return lung


def lung_field(mask: np.ndarray, keep: int = 2, min_share: float = 0.1) -> np.ndarray:
    """A segmenter's lung mask cleaned the way a lung field is shaped: the ``keep`` largest
    connected components (two lungs), each at least ``min_share`` of the largest; stray
    islands (a bowel gas bubble, a shoulder) are dropped."""
    import cv2

    m = np.asarray(mask, dtype=bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return m
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:keep]
    kept = [int(i) + 1 for i in order if areas[i] >= min_share * areas[order[0]]]
    return np.isin(labels, kept)


@dataclass
class LungFields:
    """The lung field of an image: its mask file under ``masks`` if there is one, else the
    ``model`` segmenter's (cleaned by :func:`lung_field`), else None.

    ``LungFields.open(masks, model)`` checks the folder and loads the segmenter once.
    """

    masks: Path | None = None
    model: Any = None  # camlabel.models.segmenter.Segmenter
    by_rel: dict[str, Path] = field(default_factory=dict)
    by_stem: dict[str, list[Path]] = field(default_factory=dict)

    @classmethod
    def open(cls, masks: str | Path | None = None, model: str | Path | None = None) -> LungFields:
        out = cls()
        if masks is not None:
            if not Path(masks).is_dir():
                raise UsageError(f"--lung-masks must be a folder. Received: {masks}")
            out.masks = Path(masks)
            out.by_rel, out.by_stem = index_masks(out.masks)
        if model is not None:
            from camlabel.models.segmenter import load_segmenter

            out.model = load_segmenter(model)
        return out

    @property
    def available(self) -> bool:
        return self.masks is not None or self.model is not None

    def get(
        self, relpath: str, image: LoadedImage
    ) -> tuple[np.ndarray | None, str | None, str | None]:
        """``(bool HxW lung field or None, "mask" | "segmenter" | None, the mask file or
        "segmenter:<model path>")`` for the image at ``relpath`` (relative to its input root)."""
        path = find_lung_mask(relpath, self.by_rel, self.by_stem) if self.by_rel else None
        if path is not None:
            return read_lung_mask(path, image.height, image.width), "mask", str(path)
        if self.model is not None:
            from camlabel.models.segmenter import segment_probability

            prob = segment_probability(self.model, [image])[0]
            field_ = lung_field(prob >= self.model.threshold)
            return field_, "segmenter", f"segmenter:{self.model.path}"
        return None, None, None

    def restrict(
        self, probability: np.ndarray, relpath: str, image: LoadedImage
    ) -> tuple[np.ndarray, str | None, str | None]:
        """A lesion probability map set to 0 outside the image's lung field, with the field's
        kind and source as :meth:`get` gives them; unchanged (kind and source None) where the
        image has no lung field, an empty one, or one of another shape."""
        if not self.available:
            return probability, None, None
        lung, kind, source = self.get(relpath, image)
        if lung is None or lung.shape != probability.shape or not lung.any():
            return probability, None, None
        return np.where(lung, probability, 0.0), kind, source
