"""Pure geometry: polygons <-> masks, percent <-> pixels, heatmaps -> polygons, mask metrics.

Pixel convention (the whole of camlabel uses it; see docs/pixel-convention.md)
------------------------------------------------------------------------------
* Continuous image coordinates: ``x`` to the right, ``y`` down, origin ``(0, 0)`` at the
  top-left **corner** of the top-left pixel. Points arrays are float64 ``(N, 2)`` in **xy**
  order (``points_px``); masks are indexed ``[row, col]`` (``rc``).
* Pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``; its centre is ``(c + 0.5, r + 0.5)``.
* A pixel belongs to a polygon iff its **centre** lies inside the polygon. A polygon with
  vertices ``(0, 0), (W, 0), (W, H), (0, H)`` covers the whole ``H x W`` image, and a Label
  Studio percentage ``0..100`` maps to ``0..W`` (``0..H``) without any half-pixel offset.
* Tie rule (a centre exactly on the boundary): centres on a *left* or *top* edge are inside,
  on a *right* or *bottom* edge outside, so two polygons sharing an edge never both claim a
  pixel and corner-aligned rectangles are exact.
* Each :class:`PolygonPx` is filled with the even-odd rule over its exterior and holes
  (identical to "exterior minus holes" for a valid polygon); several polygons are united.

Everything here is a pure function of its arguments: no I/O, no global state. Annotation
formats are not here: the Label Studio brush RLE codec is in
:mod:`camlabel.backends.labelstudio.convert`, Ground Truth vertices and colour maps in
:mod:`camlabel.backends.groundtruth.convert`; both build on the validators
:func:`as_points`, :func:`as_mask` and :func:`check_size`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from camlabel.errors import GeometryError

__all__ = [
    "PolygonPx",
    "as_mask",
    "as_points",
    "check_size",
    "dice",
    "heatmap_to_polygons",
    "iou",
    "mask_to_polygons",
    "pairwise_dice",
    "pct_to_px",
    "polygon_bbox",
    "polygons_to_mask",
    "px_to_pct",
    "repair_polygon",
    "resize_polygon",
    "scale_polygons",
    "threshold_heatmap",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# =============================================================================== points
def as_points(value: Any, what: str, *, min_points: int = 0, copy: bool = True) -> FloatArray:
    """``value`` as a float64 ``(N, 2)`` array of finite xy points, or GeometryError.

    ``copy=False`` may return ``value`` itself (for read-only use).
    """
    try:
        pts = np.array(value, dtype=np.float64) if copy else np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError(
            f"{what} must be a sequence of [x, y] pairs. Received: {value!r:.120}",
            hint="pass an (N, 2) array or a list of [x, y] lists",
        ) from exc
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise GeometryError(
            f"{what} must have shape (N, 2) in xy order. Received: shape={pts.shape}",
            hint="pass an (N, 2) array or a list of [x, y] lists",
        )
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GeometryError(
            f"{what}: vertex {i} is not finite. Received: ({float(pts[i, 0])}, {float(pts[i, 1])})",
            hint="drop or fix NaN/inf vertices before converting the annotation",
        )
    if len(pts) < min_points:
        raise GeometryError(
            f"{what} needs at least {min_points} vertices. Received: {len(pts)} ({pts.tolist()})",
            hint="a polygon needs at least 3 distinct vertices; drop degenerate regions",
        )
    return pts


def _signed_area_px(ring: FloatArray) -> float:
    """Shoelace area; positive when the ring is clockwise on screen (y down)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _oriented(ring: FloatArray, *, positive: bool) -> FloatArray:
    area = _signed_area_px(ring)
    return ring[::-1].copy() if (area > 0) != positive and area != 0 else ring


def _drop_closing_point(pts: FloatArray) -> FloatArray:
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        return pts[:-1]
    return pts


# ============================================================================ PolygonPx
@dataclass(frozen=True, eq=False)
class PolygonPx:
    """A polygon in image pixels (see the module docstring for the convention).

    Args:
        exterior: ``(N, 2)`` float64 xy vertices, ``N >= 3``, without a closing repeat.
        holes: zero or more rings of the same form, each inside the exterior.

    The arrays are copied and made read-only, so a ``PolygonPx`` is immutable.
    """

    exterior: FloatArray
    holes: tuple[FloatArray, ...] = ()

    def __post_init__(self) -> None:
        ext = as_points(self.exterior, "polygon exterior", min_points=3)
        ext.setflags(write=False)
        holes = []
        for i, h in enumerate(self.holes):
            ring = as_points(h, f"polygon hole {i}", min_points=3)
            ring.setflags(write=False)
            holes.append(ring)
        object.__setattr__(self, "exterior", ext)
        object.__setattr__(self, "holes", tuple(holes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolygonPx):
            return NotImplemented
        return (
            np.array_equal(self.exterior, other.exterior)
            and len(self.holes) == len(other.holes)
            and all(np.array_equal(a, b) for a, b in zip(self.holes, other.holes, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: not hashable

    def __repr__(self) -> str:
        return (
            f"PolygonPx(vertices={len(self.exterior)}, holes={len(self.holes)}, "
            f"area_px={self.area_px:.1f})"
        )

    @property
    def area_px(self) -> float:
        """Area in px² (exterior minus holes)."""
        return abs(_signed_area_px(self.exterior)) - sum(
            abs(_signed_area_px(h)) for h in self.holes
        )

    @property
    def n_vertices(self) -> int:
        """Vertices of the exterior and all holes together."""
        return len(self.exterior) + sum(len(h) for h in self.holes)

    def to_json(self) -> dict[str, Any]:
        """``{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}``, 3 decimals."""
        return {
            "exterior": np.round(self.exterior, 3).tolist(),
            "holes": [np.round(h, 3).tolist() for h in self.holes],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PolygonPx:
        """Inverse of :meth:`to_json`; ``holes`` may be absent."""
        if not isinstance(d, Mapping) or "exterior" not in d:
            raise GeometryError(
                f"a JSON polygon must be an object with 'exterior' (and optional 'holes'). "
                f"Received: {d!r:.120}",
                hint='use {"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}',
            )
        holes = d.get("holes") or []
        return cls(np.asarray(d["exterior"], dtype=np.float64), tuple(holes))


def _rings_of(polygon: PolygonPx | npt.ArrayLike, what: str) -> list[FloatArray]:
    if isinstance(polygon, PolygonPx):
        return [polygon.exterior, *polygon.holes]
    return [as_points(polygon, what, copy=False)]


# ===================================================================== polygons -> mask
def check_size(height: int, width: int) -> tuple[int, int]:
    h, w = int(height), int(width)
    if h != height or w != width or h < 1 or w < 1:
        raise GeometryError(
            f"image size must be positive integers. Received: height={height!r}, width={width!r}"
        )
    return h, w


def polygons_to_mask(
    polygons: Sequence[PolygonPx | npt.ArrayLike], height: int, width: int
) -> BoolArray:
    """Rasterize polygons (union; holes subtracted) to a bool ``height x width`` mask.

    A pixel is set iff its centre is inside (module docstring: centre rule, top-left tie
    rule). Exact: each ring's crossings with the scanlines through pixel centres are computed
    in float64, turned into integer column indices and filled as runs, all vectorised.
    ``cv2.fillPoly`` is *not* used because it rounds vertex y to whole rows and also paints
    the outline, so it disagrees with the centre rule on ~4 % of a polygon's area.

    Args:
        polygons: :class:`PolygonPx` or ``(N, 2)`` xy point arrays (exterior only), in px.
            Rings with fewer than 3 vertices cover nothing. Parts outside the image are clipped.
        height, width: output size in pixels.
    """
    h, w = check_size(height, width)
    mask = np.zeros((h, w), dtype=np.bool_)
    rings: list[FloatArray] = []
    owner: list[int] = []
    for k, poly in enumerate(polygons):
        for ring in _rings_of(poly, f"polygon {k}"):
            if len(ring) >= 3:
                rings.append(ring)
                owner.append(k)
    if not rings:
        return mask
    starts, ends = _scanline_spans(rings, owner, h, w)
    if starts.size == 0:
        return mask
    if len(set(owner)) > 1:
        starts, ends = _union_spans(starts, ends)
    _fill_spans(mask.reshape(-1), starts, ends)
    return mask


def _scanline_spans(
    rings: list[FloatArray], owner: list[int], h: int, w: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Inside runs ``[start, end)`` as flat indices ``row * w + col`` (even-odd per owner)."""
    lengths = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
    pts = np.concatenate(rings)
    # Index of each vertex's successor within its own ring (rings are closed implicitly).
    succ = np.arange(len(pts), dtype=np.int64) + 1
    ring_end = np.cumsum(lengths)
    succ[ring_end - 1] = ring_end - lengths
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = x0[succ], y0[succ]
    # Rows whose centre y = r + 0.5 lies in [min(y0, y1), max(y0, y1)): half-open in y, so a
    # vertex on a centre line is counted once and horizontal edges never count.
    row_lo = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, h).astype(np.int64)
    row_hi = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, h).astype(np.int64)
    n_rows = row_hi - row_lo
    edges = np.flatnonzero(n_rows > 0)
    empty = np.empty(0, dtype=np.int64)
    if edges.size == 0:
        return empty, empty
    n_rows = n_rows[edges]
    edge_of = np.repeat(edges, n_rows)
    first = np.cumsum(n_rows) - n_rows
    rows = np.arange(int(n_rows.sum()), dtype=np.int64) - np.repeat(first - row_lo[edges], n_rows)
    ex0, ey0 = x0[edge_of], y0[edge_of]
    # Multiply before dividing: with integer or half-integer vertices the crossing is then
    # exact, so ties on pixel centres follow the documented rule rather than rounding noise.
    xc = ex0 + ((rows + 0.5) - ey0) * (x1[edge_of] - ex0) / (y1[edge_of] - ey0)
    # First column whose centre is >= the crossing; clipping keeps the even-odd parity.
    cols = np.clip(np.ceil(xc - 0.5), 0, w).astype(np.int64)
    # Flat index row * w + col; col == w is the next row's start, a correct exclusive end.
    # The map is monotone in (row, col) and tied keys are equal values, so sorting it and
    # pairing neighbours pairs each row's crossings (always an even number) in x order.
    pos = rows * w + cols
    if owner[-1] != owner[0]:  # several polygons: keep each one's crossings apart
        stride = h * w + 1
        pos += np.repeat(np.asarray(owner, dtype=np.int64), lengths)[edge_of] * stride
        pos.sort()
        pos %= stride
    else:
        pos.sort()
    starts, ends = pos[0::2], pos[1::2]
    keep = ends > starts
    return starts[keep], ends[keep]


def _union_spans(
    starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new = np.ones(len(starts), dtype=np.bool_)
    new[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(starts) - 1)
    return starts[first], reach[last]


def _fill_spans(
    flat_mask: BoolArray, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
) -> None:
    """Set ``flat_mask[s:e]`` for sorted, disjoint runs with one ``np.repeat``."""
    bounds = np.empty(2 * len(starts), dtype=np.int64)
    bounds[0::2] = starts
    bounds[1::2] = ends
    run_lengths = np.diff(bounds)  # inside, gap, inside, gap, ..., inside
    values = np.zeros(len(run_lengths), dtype=np.bool_)
    values[0::2] = True
    flat_mask[bounds[0] : bounds[-1]] = np.repeat(values, run_lengths)


# ===================================================================== mask -> polygons
def as_mask(mask: Any, what: str = "mask") -> BoolArray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise GeometryError(
            f"{what} must be a 2-D array. Received: shape={arr.shape}",
            hint="pass one H x W mask; split multi-channel or batched masks first",
        )
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise GeometryError(f"{what} must be numeric or bool. Received: dtype={arr.dtype}")
    return arr != 0


def _trace_boundaries(mask: BoolArray) -> list[PolygonPx]:
    """Exact pixel-boundary polygons of ``mask`` (vertices on pixel corners)."""
    x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))
    if bw == 0 or bh == 0:
        return []
    crop = mask[y : y + bh, x : x + bw].view(np.uint8)
    # Upsample by 2 and pad by 1: findContours then walks the outermost half-pixels of each
    # region, and an upsampled index u maps to the pixel corner (u + 1) // 2 on the region's
    # outside in every direction, so the contour becomes the exact crack boundary.
    up = np.zeros((2 * bh + 2, 2 * bw + 2), dtype=np.uint8)
    for dr, dc in itertools.product((1, 2), repeat=2):
        up[dr : dr + 2 * bh : 2, dc : dc + 2 * bw : 2] = crop
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    offset = np.array([x, y], dtype=np.int64)
    rings = [_contour_to_ring(np.asarray(c), offset) for c in contours]
    polygons: list[PolygonPx] = []
    for i, (_next, _prev, child, parent) in enumerate(hierarchy[0]):
        if parent != -1 or len(rings[i]) < 3:
            continue
        holes = []
        while child != -1:
            if len(rings[child]) >= 3:
                holes.append(_oriented(rings[child], positive=False))
            child = hierarchy[0][child][0]
        polygons.append(PolygonPx(_oriented(rings[i], positive=True), tuple(holes)))
    return polygons


def _contour_to_ring(contour: npt.NDArray[Any], offset: npt.NDArray[np.int64]) -> FloatArray:
    corners = contour[:, 0, :].astype(np.int64) // 2 + offset  # ((u - 1) + 1) // 2, pad removed
    corners = corners[np.any(corners != np.roll(corners, 1, axis=0), axis=1)]
    if len(corners) >= 3:
        # Drop vertices in the middle of a straight run (same direction before and after).
        before = corners - np.roll(corners, 1, axis=0)
        after = np.roll(corners, -1, axis=0) - corners
        cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
        dot = (before * after).sum(axis=1)
        corners = corners[(cross != 0) | (dot < 0)]
    return corners.astype(np.float64)


def _simplify_ring(ring: FloatArray, epsilon_px: float, max_vertices: int | None) -> FloatArray:
    """Douglas-Peucker (``cv2.approxPolyDP``) keeping the ring's own float64 vertices."""
    ring32 = np.ascontiguousarray(ring, dtype=np.float32)
    keys = ring32.view(np.int64).reshape(-1)  # one key per (x, y) float32 pair
    key_order = np.argsort(keys, kind="stable")

    def dp(eps: float) -> FloatArray:
        if eps <= 0:
            return ring
        out = cv2.approxPolyDP(ring32.reshape(-1, 1, 2), eps, True)
        # approxPolyDP returns a subset of its input; look the vertices up so that float32
        # rounding does not leak into the coordinates.
        found = np.searchsorted(
            keys,
            np.ascontiguousarray(out.reshape(-1, 2)).view(np.int64).reshape(-1),
            sorter=key_order,
        )
        return ring[key_order[found]]

    out = dp(epsilon_px)
    if max_vertices is None or len(out) <= max_vertices:
        return out
    lo = hi = max(epsilon_px, 0.25)
    while len(out) > max_vertices:
        lo, hi = hi, hi * 1.5
        out = dp(hi)
    # Too coarse a step can jump below a triangle; bisect back into [3, max_vertices].
    for _ in range(50):
        if len(out) >= 3:
            return out
        mid = 0.5 * (lo + hi)
        candidate = dp(mid)
        if len(candidate) > max_vertices:
            lo = mid
        else:
            hi, out = mid, candidate
    finer = dp(lo)
    return finer[np.linspace(0, len(finer), max_vertices, endpoint=False).astype(np.int64)]


def _postprocess(
    polygons: list[PolygonPx],
    *,
    min_area_px: float,
    epsilon_px: float,
    max_vertices: int | None,
) -> list[PolygonPx]:
    if not (math.isfinite(min_area_px) and min_area_px >= 0):
        raise GeometryError(f"min_area_px must be finite and >= 0. Received: {min_area_px!r}")
    if not (math.isfinite(epsilon_px) and epsilon_px >= 0):
        raise GeometryError(f"epsilon_px must be finite and >= 0. Received: {epsilon_px!r}")
    if max_vertices is not None and max_vertices < 3:
        raise GeometryError(
            f"max_vertices must be >= 3 (a polygon has at least 3). Received: {max_vertices!r}"
        )
    out = []
    for poly in polygons:
        if abs(_signed_area_px(poly.exterior)) < min_area_px or poly.area_px < min_area_px:
            continue
        holes = [h for h in poly.holes if abs(_signed_area_px(h)) >= min_area_px]
        if epsilon_px > 0 or max_vertices is not None:
            ext = _simplify_ring(poly.exterior, epsilon_px, max_vertices)
            if len(ext) < 3:
                continue
            holes = [_simplify_ring(h, epsilon_px, max_vertices) for h in holes]
            holes = [h for h in holes if len(h) >= 3]
            poly = PolygonPx(ext, tuple(holes))
        elif len(holes) != len(poly.holes):
            poly = PolygonPx(poly.exterior, tuple(holes))
        out.append(poly)
    return out


def mask_to_polygons(
    mask: npt.ArrayLike,
    *,
    min_area_px: float = 0.0,
    epsilon_px: float = 0.0,
    max_vertices: int | None = None,
) -> list[PolygonPx]:
    """Polygons (with holes) of the nonzero pixels of a 2-D mask, in px.

    With ``epsilon_px=0`` the polygons follow the pixel boundaries (vertices on pixel
    corners, axis-aligned edges), so ``polygons_to_mask(mask_to_polygons(m), H, W) == m``
    exactly. Regions are 8-connected (two pixels touching at a corner form one polygon
    pinched at that corner); holes are 4-connected. Exteriors have positive shoelace area
    (clockwise on screen), holes negative.

    Args:
        mask: ``H x W`` bool or numeric array; nonzero is foreground.
        min_area_px: drop polygons whose area (px², exterior minus holes) is below this,
            and fill holes smaller than it.
        epsilon_px: Douglas-Peucker tolerance in px (``cv2.approxPolyDP``); 0 keeps the
            exact boundary.
        max_vertices: cap on the vertices of each ring (exterior or hole): the tolerance is
            raised (x1.5 steps from ``max(epsilon_px, 0.25)``) until the cap holds.
    """
    m = as_mask(mask)
    return _postprocess(
        _trace_boundaries(np.ascontiguousarray(m)),
        min_area_px=min_area_px,
        epsilon_px=epsilon_px,
        max_vertices=max_vertices,
    )


# ==================================================================== heatmap -> polygons
def threshold_heatmap(
    heatmap: npt.ArrayLike, *, threshold: float | Literal["otsu"] = 0.5
) -> BoolArray:
    """Binary mask of the hot part of a 2-D heatmap (e.g. Grad-CAM), same shape.

    Args:
        heatmap: 2-D finite array; values below 0 are treated as 0 (Grad-CAM is post-ReLU).
        threshold: a fraction in ``(0, 1]`` of the map's maximum (pixels ``>= threshold *
            max`` are set), or ``"otsu"``: Otsu's threshold on the map scaled to 0..255
            between its minimum and maximum. An all-zero (or, with Otsu, constant) map gives
            an empty mask.
    """
    hm = np.asarray(heatmap, dtype=np.float64)
    if hm.ndim != 2 or hm.size == 0:
        raise GeometryError(
            f"heatmap must be a non-empty 2-D array. Received: shape={hm.shape}",
            hint="squeeze batch/channel axes: pass heatmap[0] or heatmap[..., 0]",
        )
    if not np.isfinite(hm).all():
        n_bad = int((~np.isfinite(hm)).sum())
        raise GeometryError(
            f"heatmap has {n_bad} non-finite values (NaN/inf)",
            hint="check the CAM computation; replace NaN with 0 (np.nan_to_num) if intended",
        )
    hm = np.maximum(hm, 0.0)
    hi = float(hm.max())
    if threshold == "otsu":
        lo = float(hm.min())
        if hi <= lo:
            return np.zeros(hm.shape, dtype=np.bool_)
        u8 = np.round((hm - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        return u8 > t
    if isinstance(threshold, str) or not (0.0 < float(threshold) <= 1.0):
        raise GeometryError(
            f"threshold must be a fraction in (0, 1] of the heatmap maximum or 'otsu'. "
            f"Received: threshold={threshold!r}",
            hint="e.g. threshold=0.5 keeps pixels at >= 50 % of the peak",
        )
    if hi <= 0.0:
        return np.zeros(hm.shape, dtype=np.bool_)
    return hm >= float(threshold) * hi


def heatmap_to_polygons(
    heatmap: npt.ArrayLike,
    *,
    threshold: float | Literal["otsu"] = 0.5,
    min_area_px: float = 0.0,
    epsilon_px: float = 0.0,
    max_vertices: int | None = None,
    out_height: int | None = None,
    out_width: int | None = None,
) -> list[PolygonPx]:
    """Polygons around the hot regions of a heatmap (see :func:`threshold_heatmap`).

    If ``out_height``/``out_width`` are given, the heatmap covers the whole output image
    corner to corner: a heatmap pixel boundary ``x`` maps to ``x * out_width / hm_width``
    (same for y), so the polygons are exact in output pixels. ``min_area_px``,
    ``epsilon_px`` and ``max_vertices`` then apply in *output* pixels (after scaling).
    """
    if (out_height is None) != (out_width is None):
        raise GeometryError(
            f"give both out_height and out_width, or neither. "
            f"Received: out_height={out_height!r}, out_width={out_width!r}"
        )
    mask = threshold_heatmap(heatmap, threshold=threshold)
    polygons = _trace_boundaries(mask)
    if out_height is not None and out_width is not None:
        oh, ow = check_size(out_height, out_width)
        polygons = scale_polygons(polygons, ow / mask.shape[1], oh / mask.shape[0])
    return _postprocess(
        polygons, min_area_px=min_area_px, epsilon_px=epsilon_px, max_vertices=max_vertices
    )


# ================================================================ resize / bbox / units
def _check_scale(sx: float, sy: float) -> None:
    if not all(math.isfinite(s) and s > 0 for s in (sx, sy)):
        raise GeometryError(f"scale factors must be finite and > 0. Received: sx={sx!r}, sy={sy!r}")


def resize_polygon(poly: PolygonPx, sx: float, sy: float) -> PolygonPx:
    """``poly`` with x multiplied by ``sx`` and y by ``sy`` (grid to grid, corner-aligned).

    From an ``h x w`` grid to an ``H x W`` one use ``sx = W / w``, ``sy = H / h``.
    """
    _check_scale(sx, sy)
    factor = np.array([sx, sy], dtype=np.float64)
    return PolygonPx(poly.exterior * factor, tuple(h * factor for h in poly.holes))


def scale_polygons(polygons: Sequence[PolygonPx], sx: float, sy: float) -> list[PolygonPx]:
    """:func:`resize_polygon` over a list."""
    return [resize_polygon(p, sx, sy) for p in polygons]


def polygon_bbox(poly: PolygonPx | npt.ArrayLike) -> tuple[float, float, float, float]:
    """``(x_min, y_min, x_max, y_max)`` in px of a polygon's exterior (or of xy points)."""
    pts = poly.exterior if isinstance(poly, PolygonPx) else as_points(poly, "points", min_points=1)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _check_wh(width: float, height: float) -> FloatArray:
    if not all(math.isfinite(v) and v > 0 for v in (width, height)):
        raise GeometryError(
            f"image size must be finite and > 0. Received: width={width!r}, height={height!r}"
        )
    return np.array([width, height], dtype=np.float64)


def pct_to_px(points_pct: npt.ArrayLike, width: float, height: float) -> FloatArray:
    """Label Studio percent points (0..100 of ``original_width/height``) to px (0..W, 0..H)."""
    return as_points(points_pct, "points_pct") * _check_wh(width, height) / 100.0


def px_to_pct(points_px: npt.ArrayLike, width: float, height: float) -> FloatArray:
    """Inverse of :func:`pct_to_px`."""
    return as_points(points_px, "points_px") * 100.0 / _check_wh(width, height)


# ======================================================================== repair_polygon
def repair_polygon(points_px: npt.ArrayLike, width: float, height: float) -> list[PolygonPx]:
    """Validate an annotator's polygon and make it usable: never returns an empty list.

    * fewer than 3 distinct vertices, NaN/inf vertices or zero area: GeometryError;
    * self-intersecting (e.g. a bowtie): ``shapely.make_valid``, polygonal parts kept;
    * vertices outside ``[0, width] x [0, height]``: clipped to the image;
    * nothing left inside the image: GeometryError.

    A valid polygon inside the image is returned unchanged (a closing repeat of the first
    vertex is dropped); repaired parts are oriented like :func:`mask_to_polygons` output.
    """
    import shapely  # deferred: only this function needs GEOS

    pts = _drop_closing_point(as_points(points_px, "polygon"))
    n_distinct = len(np.unique(pts, axis=0))
    if n_distinct < 3:
        raise GeometryError(
            f"a polygon needs at least 3 distinct vertices. Received: {n_distinct} "
            f"distinct of {len(pts)} ({pts.tolist()!r:.120})",
            hint="drop this region or redraw it; a click or a line is not an area",
        )
    size = _check_wh(width, height)
    x_max, y_max = float(size[0]), float(size[1])
    inside = bool(((pts >= 0) & (pts <= size)).all())
    geom = shapely.Polygon(pts)
    if geom.is_valid and inside and geom.area > 0:
        return [PolygonPx(pts)]
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [g for g in _polygonal_parts(geom) if g.area > 0]
    if not parts:
        raise GeometryError(
            f"polygon has zero area (its vertices are collinear). Received: {pts.tolist()!r:.120}",
            hint="drop this region or redraw it",
        )
    clipped = shapely.intersection(shapely.MultiPolygon(parts), shapely.box(0, 0, x_max, y_max))
    out = []
    for part in _polygonal_parts(clipped):
        if part.area <= 0:
            continue
        ext = _oriented(np.asarray(part.exterior.coords, dtype=np.float64)[:-1], positive=True)
        holes = tuple(
            _oriented(np.asarray(r.coords, dtype=np.float64)[:-1], positive=False)
            for r in part.interiors
        )
        out.append(PolygonPx(ext, holes))
    if not out:
        x0, y0, x1, y1 = polygon_bbox(pts)
        raise GeometryError(
            f"polygon lies entirely outside the {x_max:g}x{y_max:g} image: its bbox is "
            f"x {x0:g}..{x1:g}, y {y0:g}..{y1:g} px",
            hint="check that the annotation belongs to this image and uses pixel units, "
            "not percent (pct_to_px converts Label Studio points)",
        )
    return out


def _polygonal_parts(geom: Any) -> list[Any]:
    if geom.geom_type == "Polygon":
        return [geom]
    if geom.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [p for g in geom.geoms for p in _polygonal_parts(g)]
    return []


# ============================================================================== metrics
def _pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    ma, mb = as_mask(a, "mask a"), as_mask(b, "mask b")
    if ma.shape != mb.shape:
        raise GeometryError(
            f"masks must have the same shape. Received: {ma.shape} and {mb.shape}",
            hint="rasterize both at the original image size",
        )
    return ma, mb


def dice(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two masks; 1.0 if both are empty."""
    ma, mb = _pair(a, b)
    total = int(np.count_nonzero(ma)) + int(np.count_nonzero(mb))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(ma & mb)) / total


def iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Intersection over union |A∩B| / |A∪B| of two masks; 1.0 if both are empty."""
    ma, mb = _pair(a, b)
    union = int(np.count_nonzero(ma | mb))
    return 1.0 if union == 0 else int(np.count_nonzero(ma & mb)) / union


def pairwise_dice(masks: Sequence[npt.ArrayLike]) -> float | None:
    """Mean Dice over all pairs of masks (inter-annotator agreement); None for < 2 masks."""
    if len(masks) < 2:
        return None
    scores = [dice(a, b) for a, b in itertools.combinations(masks, 2)]
    return float(np.mean(scores))
