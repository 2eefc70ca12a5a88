"""CAM refinement: a coarse class activation map + the image (+ a lung field) -> a lesion mask.

A Grad-CAM of a small classifier is a blob at stride 16-32: thresholded as is, it spills over
the diaphragm, the heart and the chest wall (docs/benchmarks.md, "CAM refinement"). Each
refinement here needs no learned weights:

- ``none``: the map thresholded (a fraction of its maximum, or Otsu) - what camlabel did first;
- ``lung``: the map restricted to the lung field before thresholding (phantom lung masks, or a
  lung segmenter trained with ``camlabel train-seg``); its peak then lies inside a lung;
- ``grabcut``: OpenCV GrabCut on the image, seeded with a CAM tri-map (hot core = probable
  foreground, cold = sure background); follows the lesion's own intensity edges;
- ``lung+grabcut``: both, the lung field's outside is sure background;
- ``lung+opacity``: the bright (opaque) regions of the lung field, the one the CAM points at
  and those of a similar size (:func:`refine_lung_opacity`).

A new refinement is one function ``(heat, image, lung, threshold) -> bool mask`` plus one line
in :data:`REFINEMENTS`; an unknown name lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from camlabel.errors import UsageError

Threshold = float | Literal["otsu"]
Refinement = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", Threshold], np.ndarray]

#: GrabCut works on at most this many pixels along the longer side: its cost grows with the
#: pixel count, and a lesion's edge needs no more (the mask is upsampled back exactly)
GRABCUT_MAX_SIDE = 128
#: fractions of the (lung-restricted) map's maximum: >= HOT is probable lesion, < COLD is
#: sure background; between them GrabCut decides from the image
GRABCUT_HOT = 0.5
GRABCUT_COLD = 0.15
GRABCUT_ITERATIONS = 3
#: lung+opacity: Gaussian sigma and opening radius as fractions of the image's longer side
#: (3 and 4 px on the 192 px phantoms), and the smallest region kept beside the CAM's anchor
#: (a share of the anchor's area); chosen with benchmarks/cam_refine.py
OPACITY_BLUR = 0.016
OPACITY_OPEN = 0.021
OPACITY_KEEP = 0.5


def _normalized(heat: np.ndarray, lung: np.ndarray | None) -> np.ndarray:
    """``heat`` in [0, 1] (divided by its maximum), zero outside ``lung`` when given."""
    h = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    h = np.clip(h, 0.0, None)
    if lung is not None:
        h = np.where(lung, h, 0.0)
    top = float(h.max()) if h.size else 0.0
    return h / top if top > 0 else np.zeros_like(h)


def _threshold(norm: np.ndarray, threshold: Threshold) -> np.ndarray:
    from camlabel.geometry import threshold_heatmap

    if not norm.any():
        return np.zeros(norm.shape, bool)
    return np.asarray(threshold_heatmap(norm, threshold=threshold), bool)


def refine_none(
    heat: np.ndarray, image: np.ndarray, lung: np.ndarray | None, threshold: Threshold
) -> np.ndarray:
    """The map thresholded: the pre-refinement behaviour (the image and lung are ignored)."""
    return _threshold(_normalized(heat, None), threshold)


def refine_lung(
    heat: np.ndarray, image: np.ndarray, lung: np.ndarray | None, threshold: Threshold
) -> np.ndarray:
    """The map restricted to the lung field, then thresholded relative to its in-lung maximum."""
    return _threshold(_normalized(heat, _lung_or_none(lung, heat.shape)), threshold)


def _lung_or_none(lung: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if lung is None:
        return None
    m = np.asarray(lung, bool)
    if m.shape != shape:
        raise UsageError(
            f"the lung field must have the heatmap's shape {shape}. Received: {m.shape}"
        )
    return m if m.any() else None  # an empty lung field (a failed segmenter) restricts nothing


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 gray HxW from a uint8 or [0, 1] float image, gray or BGR."""
    import cv2

    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    return img


def _grabcut(norm: np.ndarray, image: np.ndarray, lung: np.ndarray | None) -> np.ndarray:
    import cv2

    h, w = norm.shape
    if not (norm >= GRABCUT_HOT).any():
        return np.zeros((h, w), bool)
    scale = min(1.0, GRABCUT_MAX_SIDE / max(h, w))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    img = _gray_uint8(image)
    small_img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.resize(norm, (sw, sh), interpolation=cv2.INTER_LINEAR)
    trimap = np.full((sh, sw), cv2.GC_PR_BGD, np.uint8)
    trimap[small >= GRABCUT_HOT] = cv2.GC_PR_FGD
    trimap[small < GRABCUT_COLD] = cv2.GC_BGD
    if lung is not None:
        small_lung = cv2.resize(lung.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST)
        trimap[small_lung == 0] = cv2.GC_BGD
    if not (trimap == cv2.GC_PR_FGD).any():
        return np.zeros((h, w), bool)
    if not ((trimap == cv2.GC_BGD) | (trimap == cv2.GC_PR_BGD)).any():
        return cv2.resize(
            (small >= GRABCUT_HOT).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    # GrabCut's colour models: the gray value and the map itself, so a bright rib far from
    # the hot region does not look like the lesion
    features = cv2.merge([small_img, small_img, (small * 255).astype(np.uint8)])
    cv2.setRNGSeed(0)  # GrabCut's GMM initialization (k-means) draws from OpenCV's RNG
    rect = (0, 0, 0, 0)  # unused with GC_INIT_WITH_MASK
    cv2.grabCut(features, trimap, rect, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    fg = ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def refine_grabcut(
    heat: np.ndarray, image: np.ndarray, lung: np.ndarray | None, threshold: Threshold
) -> np.ndarray:
    """GrabCut on the image seeded by the map's tri-map (the lung field is ignored)."""
    return _grabcut(_normalized(heat, None), image, None)


def refine_lung_grabcut(
    heat: np.ndarray, image: np.ndarray, lung: np.ndarray | None, threshold: Threshold
) -> np.ndarray:
    """GrabCut seeded by the lung-restricted map; outside the lung field is sure background."""
    field = _lung_or_none(lung, heat.shape)
    return _grabcut(_normalized(heat, field), image, field)


def refine_lung_opacity(
    heat: np.ndarray, image: np.ndarray, lung: np.ndarray | None, threshold: Threshold
) -> np.ndarray:
    """The opacities of the lung field that the CAM points at.

    Consolidation and ground glass attenuate more than aerated lung, so inside the lung
    field they are the bright part: the smoothed image is split by Otsu's threshold over the
    lung pixels, opened (vessels and rib edges are thin), and cut into connected regions. The
    CAM picks the anchor, the region holding most CAM energy; every region at least
    :data:`OPACITY_KEEP` of the anchor's area is kept too (a bilateral pattern appears in
    both lungs, and a small-backbone CAM often lands on only one). Without a lung field this
    is ``none``.
    """
    import cv2

    field = _lung_or_none(lung, heat.shape)
    if field is None:
        return refine_none(heat, image, None, threshold)
    norm = _normalized(heat, field)
    if not norm.any():
        return np.zeros(norm.shape, bool)
    img = _gray_uint8(image).astype(np.float32)
    side = max(img.shape)
    smooth = cv2.GaussianBlur(img, (0, 0), max(0.5, OPACITY_BLUR * side))
    inside = np.clip(smooth[field], 0, 255).astype(np.uint8).reshape(-1, 1)
    cut, _ = cv2.threshold(inside, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright = (field & (smooth > cut)).astype(np.uint8)
    r = max(1, round(OPACITY_OPEN * side))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, disk)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:
        return np.zeros(norm.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    energy = np.bincount(labels.ravel(), weights=norm.ravel(), minlength=n)[1:]
    anchor = int(np.argmax(energy))
    if energy[anchor] <= 0:
        return np.zeros(norm.shape, bool)
    keep = [k + 1 for k in range(n - 1) if areas[k] >= OPACITY_KEEP * areas[anchor]]
    return np.isin(labels, keep)


def region_saliency(heat: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The CAM as a refined pre-annotation points with it: float32 HxW, 0 outside ``region``.

    Each connected region of ``region`` carries its share of the CAM's energy (the map,
    divided by its maximum, summed over the region, over that sum for all regions), scaled by
    the distance to the region's border (1.0 at its most interior pixel). Its peak is the
    interior of the region holding most CAM energy, the anchor of ``lung+opacity``. The
    pointing game on this map asks whether the region the CAM picked is the lesion; the raw
    map's peak inside the region asks where along it a stride-16 map happens to peak, which
    on a region wider than the lesion is often its rim (docs/loop.md, "pointing game").
    """
    import cv2

    m = np.asarray(region, bool)
    out = np.zeros(m.shape, np.float32)
    if not m.any():
        return out
    h = np.asarray(heat, np.float32)
    if h.shape != m.shape:
        raise UsageError(f"the region must have the heatmap's shape {h.shape}. Received: {m.shape}")
    norm = _normalized(h, None)
    n, found = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
    labels = np.asarray(found, np.intp)
    energy = np.bincount(labels.ravel(), weights=norm.ravel(), minlength=n)[1:]
    total = float(energy.sum())
    if total <= 0:
        return out
    depth = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 5)
    deepest = np.zeros(n, np.float32)
    np.maximum.at(deepest, labels.ravel(), depth.ravel())
    inside = labels > 0
    share = (energy / total).astype(np.float32)
    k = labels[inside]
    out[inside] = share[k - 1] * depth[inside] / np.maximum(deepest[k], 1e-6)
    return out


REFINEMENTS: dict[str, Refinement] = {
    "none": refine_none,
    "lung": refine_lung,
    "grabcut": refine_grabcut,
    "lung+grabcut": refine_lung_grabcut,
    "lung+opacity": refine_lung_opacity,
}
#: the refinements that use a lung field -> what each one does without one
LUNG_FREE = {"lung": "none", "lung+grabcut": "grabcut", "lung+opacity": "none"}
NEEDS_LUNG = frozenset(LUNG_FREE)


def calibrate_threshold(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]],
    *,
    method: str = "lung",
    grid: Sequence[float] = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2)),
) -> tuple[float, float]:
    """The threshold of ``method`` that maximizes the mean IoU with what annotators returned.

    ``samples`` are ``(heat, image, lung or None, final mask)`` of one class (the previous
    round's masks); returns ``(threshold, its mean IoU)``, the lowest threshold on ties. For the
    refinements that take a threshold (``none``, ``lung``).
    """
    from camlabel.geometry import iou

    if not samples:
        raise UsageError("threshold calibration needs at least one annotated image")
    refine = get_refinement(method)
    best = (float(grid[0]), -1.0)
    for t in grid:
        mean = float(
            np.mean([iou(refine(h, img, lung, float(t)), m) for h, img, lung, m in samples])
        )
        if mean > best[1] + 1e-12:
            best = (float(t), mean)
    return best


def get_refinement(name: str) -> Refinement:
    """The refinement registered as ``name``; an unknown name lists the valid ones."""
    try:
        return REFINEMENTS[name]
    except KeyError:
        raise UsageError(
            f"Wrong CAM refinement {name!r}, supported refinements: {list(REFINEMENTS)}",
            hint="set cam.refine (or --refine) to one of them",
        ) from None


def refine_cam(
    heat: np.ndarray,
    image: np.ndarray,
    *,
    method: str,
    threshold: Threshold = 0.5,
    lung: np.ndarray | None = None,
) -> np.ndarray:
    """A CAM (HxW, the image's resolution) -> bool HxW lesion mask by refinement ``method``.

    ``image`` is the HxW image (uint8, or float in [0, 1]); ``lung`` a bool HxW lung field or
    None. ``threshold`` applies to ``none`` and ``lung`` (a fraction of the map's maximum, or
    ``"otsu"``).
    """
    heat = np.asarray(heat)
    if heat.ndim != 2 or np.asarray(image).shape[:2] != heat.shape:
        raise UsageError(
            "refine_cam needs a 2-D heatmap at the image's resolution. "
            f"Received: heatmap {heat.shape}, image {np.asarray(image).shape}"
        )
    return get_refinement(method)(heat, np.asarray(image), lung, threshold)
