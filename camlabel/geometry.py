"""Pure geometry: polygons <-> masks, percent <-> pixels, heatmaps -> polygons, RLE codecs.

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

Everything here is a pure function of its arguments: no I/O, no global state.
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

from camlabel.errors import AnnotationError, GeometryError

__all__ = [
    "PolygonPx",
    "brush_rle_to_mask",
    "class_mask_to_color_mask",
    "color_mask_to_class_mask",
    "dice",
    "gt_vertices_to_px",
    "heatmap_to_polygons",
    "iou",
    "mask_to_brush_rle",
    "mask_to_polygons",
    "pairwise_dice",
    "pct_to_px",
    "polygon_bbox",
    "polygons_to_mask",
    "px_to_gt_vertices",
    "px_to_pct",
    "repair_polygon",
    "resize_polygon",
    "rle_decode",
    "rle_encode",
    "scale_polygons",
    "threshold_heatmap",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
UInt8Array = npt.NDArray[np.uint8]
Int16Array = npt.NDArray[np.int16]


# =============================================================================== points
def _as_points(value: Any, what: str, *, min_points: int = 0, copy: bool = True) -> FloatArray:
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
        ext = _as_points(self.exterior, "polygon exterior", min_points=3)
        ext.setflags(write=False)
        holes = []
        for i, h in enumerate(self.holes):
            ring = _as_points(h, f"polygon hole {i}", min_points=3)
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
    return [_as_points(polygon, what, copy=False)]


# ===================================================================== polygons -> mask
def _check_size(height: int, width: int) -> tuple[int, int]:
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
    h, w = _check_size(height, width)
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
def _as_mask(mask: Any, what: str = "mask") -> BoolArray:
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
    m = _as_mask(mask)
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
        oh, ow = _check_size(out_height, out_width)
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
    pts = poly.exterior if isinstance(poly, PolygonPx) else _as_points(poly, "points", min_points=1)
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
    return _as_points(points_pct, "points_pct") * _check_wh(width, height) / 100.0


def px_to_pct(points_px: npt.ArrayLike, width: float, height: float) -> FloatArray:
    """Inverse of :func:`pct_to_px`."""
    return _as_points(points_px, "points_px") * 100.0 / _check_wh(width, height)


def gt_vertices_to_px(vertices: Sequence[Mapping[str, Any]]) -> FloatArray:
    """Ground Truth crowd-polygon vertices ``[{"x": 10, "y": 20}, ...]`` to ``(N, 2)`` px.

    Ground Truth vertices are pixel coordinates with the origin at the top-left corner,
    i.e. already camlabel's continuous convention; they are only converted to float64.
    """
    pts = np.empty((len(vertices), 2), dtype=np.float64)
    for i, v in enumerate(vertices):
        try:
            pts[i] = (float(v["x"]), float(v["y"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(
                f'Ground Truth vertex {i} must be {{"x": number, "y": number}}. Received: {v!r:.80}',
                hint="pass annotatedResult.polygons[k].vertices unchanged",
            ) from exc
    return _as_points(pts, "Ground Truth vertices")


def px_to_gt_vertices(points_px: npt.ArrayLike) -> list[dict[str, int]]:
    """``(N, 2)`` px to Ground Truth vertices, rounded half up to whole pixels."""
    pts = np.floor(_as_points(points_px, "points_px") + 0.5).astype(np.int64)
    return [{"x": int(x), "y": int(y)} for x, y in pts]


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

    pts = _drop_closing_point(_as_points(points_px, "polygon"))
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


# ================================================================ Label Studio brush RLE
# Label Studio stores a brush mask as thi.ng "rle-pack" over the RGBA pixels (H * W * 4
# values). Stream: 32-bit value count, 5-bit word size - 1, four 4-bit run-length field
# sizes - 1; then blocks of [1-bit repeat flag][2-bit size index][count - 1 in that many
# bits] followed by one word (repeat) or `count` words (literal). Bits are MSB first.
_RLE_SIZES = (3, 4, 8, 16)
_RLE_MAX_RUN = 1 << _RLE_SIZES[-1]


def _rle_bytes(rle: Any) -> bytes:
    hint = "pass result['value']['rle'] of a brushlabels result unchanged"
    if isinstance(rle, bytes | bytearray | memoryview):
        return bytes(rle)
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1 or (rle.size and not np.issubdtype(rle.dtype, np.integer)):
            raise GeometryError(
                f"brush RLE must be a flat list of integers 0..255. "
                f"Received: dtype={rle.dtype}, shape={rle.shape}",
                hint=hint,
            )
        if rle.size and (rle.min() < 0 or rle.max() > 255):
            raise GeometryError(
                f"brush RLE values must be bytes 0..255. Received: min={rle.min()}, max={rle.max()}",
                hint=hint,
            )
        return rle.astype(np.uint8).tobytes()
    try:
        return bytes(rle)  # validates 0..255 and integer type, ~10x faster than np.asarray
    except (TypeError, ValueError) as exc:
        raise GeometryError(
            f"brush RLE must be a flat list of integers 0..255. Received: {rle!r:.80}", hint=hint
        ) from exc


def _read_words(padded: UInt8Array, bit_pos: npt.NDArray[np.int64], word: int) -> UInt8Array:
    """The ``word``-bit (<= 8) values starting at each bit position, MSB first."""
    byte = bit_pos >> 3
    pair = (padded[byte].astype(np.uint16) << 8) | padded[byte + 1]
    shift = (16 - word - (bit_pos & 7)).astype(np.uint16)
    return ((pair >> shift) & ((1 << word) - 1)).astype(np.uint8)


def rle_decode(rle: Sequence[int] | npt.ArrayLike | bytes, length: int) -> UInt8Array:
    """Decode Label Studio brush RLE to ``length`` uint8 values (RGBA pixels flattened).

    Output is identical to ``label_studio_sdk.converter.brush.decode_rle`` (~20x faster
    on a 2048 x 2048 mask, see docs/benchmarks.md); a stream that ends inside its last word,
    which the SDK decodes by reading the bits that are left, raises GeometryError instead.
    The run headers are chained in a Python loop that does one table lookup and one append
    per run (a few thousand for a mask); everything else (header fields, words, expansion)
    is vectorised with numpy.

    Args:
        rle: the ``rle`` list of a ``brushlabels`` result (or its bytes).
        length: expected number of values, ``height * width * 4``; must match the header.
    """
    data = _rle_bytes(rle)
    n_bytes = len(data)
    n_bits = n_bytes * 8
    if n_bits < 53:
        raise GeometryError(
            f"brush RLE is shorter than its 53-bit header. Received: {n_bytes} bytes",
            hint="the annotation's rle list is truncated or not Label Studio brush RLE",
        )
    head = int.from_bytes(data[:7], "big")
    num = head >> 24
    word = ((head >> 19) & 31) + 1
    sizes = [((head >> (15 - 4 * k)) & 15) + 1 for k in range(4)]
    if num != length:
        raise GeometryError(
            f"brush RLE holds {num} values but {length} were expected",
            hint="length must be original_height * original_width * 4 (RGBA) of the result",
        )
    if word > 8:
        raise GeometryError(f"brush RLE word size must be <= 8 bits for uint8. Received: {word}")
    padded = np.frombuffer(data + bytes(8), dtype=np.uint8)
    # windows[b]: the 32 bits starting at byte b. A header (3 + <= 16 bits) at any bit offset
    # (<= 7) fits in it, so one lookup per run finds the next run's position.
    wide = padded.astype(np.uint32)
    windows = np.asarray(
        (wide[:n_bytes] << 24)
        | (wide[1 : n_bytes + 1] << 16)
        | (wide[2 : n_bytes + 2] << 8)
        | wide[3 : n_bytes + 3],
        dtype=np.uint32,
    )
    window = memoryview(windows)  # type: ignore[arg-type]  # ndarray is a buffer
    # Per (repeat flag, size index): shift and mask of the count field, header bits, bits per
    # counted value (literal runs carry `count` words, repeat runs one).
    runs = [
        (29 - n, (1 << n) - 1, 3 + n + (word if flag else 0), 0 if flag else word)
        for flag in (0, 1)
        for n in sizes
    ]
    # Walk the run headers to the end of the data (the loop's only job, so it stays tight);
    # the runs past value `num` (at most a padding artefact or two) are cut off below.
    starts: list[int] = []
    append = starts.append
    pos = 53
    try:
        while True:
            bits = window[pos >> 3] << (pos & 7)  # IndexError once pos runs past the data
            append(pos)
            shift, count_mask, header, per_value = runs[(bits >> 29) & 7]
            pos += header + (((bits >> shift) & count_mask) + 1) * per_value
    except IndexError:
        pass
    # Header fields of every run, vectorised.
    run_pos = np.asarray(starts, dtype=np.int64)
    bits_at = windows[run_pos >> 3].astype(np.int64) << (run_pos & 7)
    repeat = ((bits_at >> 31) & 1).astype(np.bool_)
    n_run = np.asarray(sizes, dtype=np.int64)[(bits_at >> 29) & 3]
    count_run = ((bits_at >> (29 - n_run)) & ((1 << n_run) - 1)) + 1
    first_value = np.cumsum(count_run) - count_run
    n_runs = int(np.searchsorted(first_value, num))  # runs that start before value `num`
    run_pos, repeat, n_run = run_pos[:n_runs], repeat[:n_runs], n_run[:n_runs]
    count_run, first_value = count_run[:n_runs], first_value[:n_runs]
    word_pos = run_pos + 3 + n_run
    decoded = int(first_value[-1] + count_run[-1]) if n_runs else 0
    end_bit = int(word_pos[-1] + (word if repeat[-1] else count_run[-1] * word)) if n_runs else 53
    if decoded < num or end_bit > n_bits:
        raise GeometryError(
            f"brush RLE is truncated: its {n_bytes} bytes end before value "
            f"{min(decoded, num)} of {num}",
            hint="the annotation's rle list was cut off; re-export it from Label Studio",
        )
    value = np.zeros(len(run_pos), dtype=np.uint8)
    value[repeat] = _read_words(padded, word_pos[repeat], word)
    out = np.repeat(value, count_run)[:num]
    literal = ~repeat
    if literal.any():
        lit_count = count_run[literal]
        first = np.cumsum(lit_count) - lit_count
        k = np.arange(int(lit_count.sum()), dtype=np.int64) - np.repeat(first, lit_count)
        out_idx = np.repeat(first_value[literal], lit_count) + k
        bit_idx = np.repeat(word_pos[literal], lit_count) + k * word
        keep = out_idx < num  # the last run may overshoot; thi.ng drops the excess
        out[out_idx[keep]] = _read_words(padded, bit_idx[keep], word)
    return out


def rle_encode(values: npt.ArrayLike) -> list[int]:
    """Encode uint8 values (flattened, C order) as Label Studio brush RLE (byte list).

    Runs of >= 2 equal values become repeat blocks, lone values are grouped into literal
    blocks; field sizes 3/4/8/16 bits and 8-bit words as Label Studio writes them. The output
    decodes identically with ``label_studio_sdk.converter.brush.decode_rle``.
    """
    v = np.asarray(values)
    if v.dtype != np.uint8 and (
        not np.issubdtype(v.dtype, np.integer) or (v.size and (v.min() < 0 or v.max() > 255))
    ):
        raise GeometryError(
            f"brush RLE encodes integers 0..255. Received: dtype={v.dtype}"
            + (f", min={v.min()}, max={v.max()}" if v.size else ""),
            hint="convert a bool mask with mask.astype(np.uint8) * 255",
        )
    v = v.reshape(-1)
    run_start = _run_starts(v)
    return _encode_runs(v[run_start], np.diff(np.append(run_start, v.size)), v.size)


def _run_starts(flat: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Indices where a new run of equal values begins (0 first; empty for empty input)."""
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1)).astype(np.int64)


def _encode_runs(values: npt.NDArray[Any], run_len: npt.NDArray[np.int64], n: int) -> list[int]:
    """RLE stream for consecutive runs (``values[k]`` repeated ``run_len[k]`` times)."""
    if n >= 1 << 32:
        raise GeometryError(f"brush RLE holds at most 2**32 - 1 values. Received: {n}")
    header_v = [n, 7, *(s - 1 for s in _RLE_SIZES)]
    header_w = [32, 5, 4, 4, 4, 4]
    if n == 0:
        return _pack_fields(np.array(header_v, np.uint64), np.array(header_w, np.int64))
    run_val = values.astype(np.uint64)
    single = run_len == 1
    # Repeat blocks: one per run of >= 2, split into pieces of at most 2**16.
    rep_runs = np.flatnonzero(~single)
    pieces = -(-run_len[rep_runs] // _RLE_MAX_RUN)
    rep_block_run = np.repeat(rep_runs, pieces)
    rep_first = np.cumsum(pieces) - pieces
    piece_idx = np.arange(len(rep_block_run)) - np.repeat(rep_first, pieces)
    rep_count = np.minimum(run_len[rep_block_run] - piece_idx * _RLE_MAX_RUN, _RLE_MAX_RUN).astype(
        np.int64
    )
    # Literal blocks: maximal stretches of single values, split every 2**16 values.
    sgl = np.flatnonzero(single)
    stretch_start = np.ones(len(sgl), dtype=np.bool_)
    stretch_start[1:] = sgl[1:] != sgl[:-1] + 1
    stretch_id = np.cumsum(stretch_start) - 1
    stretch_first = np.flatnonzero(stretch_start)
    within = np.arange(len(sgl)) - stretch_first[stretch_id]
    lit_start = np.flatnonzero(within % _RLE_MAX_RUN == 0)
    lit_block_run = sgl[lit_start]
    lit_count = np.diff(np.append(lit_start, len(sgl))).astype(np.int64)
    # Interleave in stream order (stable: a run's pieces keep their order).
    block_run = np.concatenate((rep_block_run, lit_block_run))
    order = np.argsort(block_run, kind="stable")
    is_rep = np.concatenate((np.ones(len(rep_block_run), bool), np.zeros(len(lit_start), bool)))[
        order
    ]
    count = np.concatenate((rep_count, lit_count))[order]
    size_idx = np.searchsorted(np.array([1 << s for s in _RLE_SIZES]), count)
    size_bits = np.array(_RLE_SIZES, dtype=np.int64)[size_idx]
    head_w = 3 + size_bits
    head_v = (
        (is_rep.astype(np.uint64) << (size_bits + 2).astype(np.uint64))
        | (size_idx.astype(np.uint64) << size_bits.astype(np.uint64))
        | (count - 1).astype(np.uint64)
    )
    n_words = np.where(is_rep, 1, count)
    # Fields: each block's header followed by its words.
    field_count = len(count) + int(n_words.sum())
    head_at = np.cumsum(1 + n_words) - (1 + n_words)
    field_v = np.empty(field_count, dtype=np.uint64)
    field_w = np.full(field_count, 8, dtype=np.int64)
    field_v[head_at] = head_v
    field_w[head_at] = head_w
    is_word = np.ones(field_count, dtype=np.bool_)
    is_word[head_at] = False
    # Words in stream order: one per single run, one per piece of a longer run.
    field_v[is_word] = np.repeat(run_val, np.where(single, 1, -(-run_len // _RLE_MAX_RUN)))
    return _pack_fields(
        np.concatenate((np.array(header_v, np.uint64), field_v)),
        np.concatenate((np.array(header_w, np.int64), field_w)),
    )


def _pack_fields(field_v: npt.NDArray[np.uint64], field_w: npt.NDArray[np.int64]) -> list[int]:
    """Concatenate fields (value, width <= 32 bits, MSB first) into bytes, zero-padded."""
    chunks: list[UInt8Array] = []
    carry: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
    step = 1 << 20
    col = np.arange(32)
    for lo in range(0, len(field_v), step):
        v, w = field_v[lo : lo + step], field_w[lo : lo + step]
        aligned = (v << (32 - w).astype(np.uint64)).astype(">u4")
        bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
        bits = np.concatenate((carry, bits[col < w[:, None]]))
        whole = len(bits) // 8 * 8
        chunks.append(np.packbits(bits[:whole]))
        carry = bits[whole:]
    if carry.size:
        chunks.append(np.packbits(carry))
    return list(np.concatenate(chunks).tolist())


def brush_rle_to_mask(
    rle: Sequence[int] | npt.ArrayLike | bytes, height: int, width: int
) -> BoolArray:
    """Label Studio brush RLE to a bool ``height x width`` mask (alpha channel > 0).

    Label Studio paints brush strokes into RGBA and the SDK's own converter
    (``decode_from_annotation``) keeps the alpha channel, so this does the same.
    """
    h, w = _check_size(height, width)
    rgba = rle_decode(rle, h * w * 4).reshape(h, w, 4)
    return rgba[:, :, 3] > 0


def mask_to_brush_rle(mask: npt.ArrayLike) -> list[int]:
    """A 2-D mask to Label Studio brush RLE: 255 in all four RGBA channels where set.

    Same pixels as ``label_studio_sdk.converter.brush.mask2rle(mask.astype(np.uint8) * 255)``
    (the encoding itself is more compact).
    """
    flat = _as_mask(mask).reshape(-1)
    # Every pixel is 4 equal values, so the runs are the pixel runs x 4: no RGBA array needed.
    run_start = _run_starts(flat)
    run_len = np.diff(np.append(run_start, flat.size)) * 4
    return _encode_runs(np.where(flat[run_start], 255, 0), run_len, flat.size * 4)


# ============================================================= Ground Truth colour masks
def _parse_hex(hex_color: Any, where: str) -> int:
    s = str(hex_color).strip().lstrip("#")
    if len(s) == 3:
        s = "".join(ch * 2 for ch in s)
    try:
        if len(s) != 6:
            raise ValueError(s)
        return int(s, 16)
    except ValueError as exc:
        raise AnnotationError(
            f"{where}: hex-color must look like '#rrggbb'. Received: {hex_color!r}"
        ) from exc


def _parse_color_map(
    color_map: Mapping[str, Mapping[str, Any]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], list[str]]:
    """(class indices, packed 0xRRGGBB colours, descriptions) of an internal-color-map."""
    if not isinstance(color_map, Mapping) or not color_map:
        raise AnnotationError(
            f"internal-color-map must be a non-empty mapping. Received: {color_map!r:.120}",
            hint='expected {"0": {"class-name": "BACKGROUND", "hex-color": "#ffffff"}, ...}',
        )
    indices: list[int] = []
    colors: list[int] = []
    names: list[str] = []
    for key, entry in color_map.items():
        try:
            idx = int(key)
        except (TypeError, ValueError) as exc:
            raise AnnotationError(
                f"internal-color-map keys must be class indices like '0'. Received: {key!r}"
            ) from exc
        if not isinstance(entry, Mapping) or "hex-color" not in entry:
            raise AnnotationError(
                f"internal-color-map[{key!r}] needs a 'hex-color'. Received: {entry!r:.80}"
            )
        if not 0 <= idx <= np.iinfo(np.int16).max:
            raise AnnotationError(f"class index must be in 0..32767. Received: {key!r}")
        color = _parse_hex(entry["hex-color"], f"internal-color-map[{key!r}]")
        if color in colors:
            other = indices[colors.index(color)]
            raise AnnotationError(
                f"classes {other} and {idx} share the colour #{color:06x} in internal-color-map"
            )
        indices.append(idx)
        colors.append(color)
        names.append(f"#{color:06x} ({idx}: {entry.get('class-name', '?')})")
    return np.array(indices, np.int64), np.array(colors, np.uint32), names


def color_mask_to_class_mask(
    rgb: npt.ArrayLike, color_map: Mapping[str, Mapping[str, Any]]
) -> Int16Array:
    """Ground Truth colour mask (``H x W x 3`` uint8) to class indices (``H x W`` int16).

    Args:
        rgb: the consolidated semantic-segmentation PNG as RGB (palette PNGs:
            ``Image.open(p).convert("RGB")``).
        color_map: ``<label-attribute>-metadata["internal-color-map"]``.

    Raises:
        AnnotationError: a pixel colour is not in the map (names the colours, their pixel
            counts and the known colours).
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise AnnotationError(
            f"colour mask must be an H x W x 3 uint8 RGB array. "
            f"Received: shape={arr.shape}, dtype={arr.dtype}",
            hint='read the PNG with Image.open(path).convert("RGB")',
        )
    indices, colors, names = _parse_color_map(color_map)
    packed = (
        (arr[:, :, 0].astype(np.uint32) << 16)
        | (arr[:, :, 1].astype(np.uint32) << 8)
        | arr[:, :, 2].astype(np.uint32)
    )
    order = np.argsort(colors)
    sorted_colors = colors[order]
    pos = np.searchsorted(sorted_colors, packed).clip(max=len(sorted_colors) - 1)
    known = sorted_colors[pos] == packed
    if not known.all():
        unknown, n_px = np.unique(packed[~known], return_counts=True)
        worst = np.argsort(-n_px)[:5]
        listed = ", ".join(f"#{int(unknown[i]):06x} ({int(n_px[i])} px)" for i in worst)
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise AnnotationError(
            f"colour mask has {int((~known).sum())} pixels in {len(unknown)} colour(s) that are "
            f"not in internal-color-map: {listed}{more}. Known colours: {', '.join(names)}",
            hint="the PNG must be the job's consolidated mask, read losslessly as RGB "
            "(no JPEG, no resampling); check that the colour map belongs to this mask",
        )
    return indices[order][pos].astype(np.int16)


def class_mask_to_color_mask(
    class_mask: npt.ArrayLike, color_map: Mapping[str, Mapping[str, Any]]
) -> UInt8Array:
    """Inverse of :func:`color_mask_to_class_mask`: class indices to ``H x W x 3`` RGB."""
    cls = np.asarray(class_mask)
    if cls.ndim != 2 or not np.issubdtype(cls.dtype, np.integer):
        raise AnnotationError(
            f"class mask must be a 2-D integer array. Received: shape={cls.shape}, dtype={cls.dtype}"
        )
    indices, colors, names = _parse_color_map(color_map)
    lut = np.zeros((int(indices.max()) + 1, 3), dtype=np.uint8)
    defined = np.zeros(len(lut), dtype=np.bool_)
    lut[indices] = np.stack([(colors >> s) & 0xFF for s in (16, 8, 0)], axis=1).astype(np.uint8)
    defined[indices] = True
    present = np.unique(cls)
    bad = [int(c) for c in present if not (0 <= c < len(lut) and defined[c])]
    if bad:
        raise AnnotationError(
            f"class mask uses indices {bad} that are not in internal-color-map. "
            f"Known: {', '.join(names)}"
        )
    return lut[cls]


# ============================================================================== metrics
def _pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    ma, mb = _as_mask(a, "mask a"), _as_mask(b, "mask b")
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
