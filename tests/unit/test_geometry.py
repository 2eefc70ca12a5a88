"""Unit tests of camlabel.geometry: pixel convention, round trips, hostile inputs.

The annotation-format codecs are tested with their backends: test_labelstudio_convert.py
(brush RLE) and test_groundtruth_colormaps.py (vertices, colour masks).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.path import Path as MplPath

from camlabel import geometry as g
from camlabel.errors import GeometryError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def centres_inside(points_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reference rasterizer: exact point-in-polygon test on every pixel centre (even-odd)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = MplPath(points_px).contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
    return inside.reshape(height, width)


# ----------------------------------------------------------------------- strategies
@st.composite
def blob_masks(draw: st.DrawFn) -> np.ndarray:
    """Unions of random ellipses and rectangles (some subtracted, making holes)."""
    h = draw(st.integers(16, 96))
    w = draw(st.integers(16, 96))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(draw(st.integers(1, 6))):
        value = draw(st.sampled_from([1, 1, 1, 0]))
        cx, cy = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        if draw(st.booleans()):
            axes = (draw(st.integers(1, w // 2)), draw(st.integers(1, h // 2)))
            angle = draw(st.floats(0, 180))
            cv2.ellipse(mask, (cx, cy), axes, angle, 0, 360, value, -1)
        else:
            x1, y1 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
            cv2.rectangle(mask, (cx, cy), (x1, y1), value, -1)
    return mask.astype(bool)


# ------------------------------------------------------------------ pixel convention
def test_full_image_polygon_covers_every_pixel() -> None:
    h, w = 7, 11
    full = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    assert g.polygons_to_mask([full], h, w).all()


@pytest.mark.parametrize(("x0", "y0", "x1", "y1"), [(0, 0, 10, 10), (3, 2, 4, 3), (5, 1, 12, 9)])
def test_corner_aligned_rectangle_is_exact(x0: int, y0: int, x1: int, y1: int) -> None:
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
    expected = np.zeros((12, 14), bool)
    expected[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(g.polygons_to_mask([rect], 12, 14), expected)
    # cv2.fillPoly, for comparison, paints the closing row and column too (not the convention)
    cv = np.zeros((12, 14), np.uint8)
    cv2.fillPoly(cv, [rect.astype(np.int32)], 1)
    assert cv.sum() > expected.sum()


def test_tie_rule_left_top_inside_right_bottom_outside() -> None:
    # Edges through pixel centres: x = 1.5 (left), 4.5 (right), y = 1.5 (top), 3.5 (bottom).
    rect = np.array([[1.5, 1.5], [4.5, 1.5], [4.5, 3.5], [1.5, 3.5]])
    expected = np.zeros((6, 6), bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(g.polygons_to_mask([rect], 6, 6), expected)


def test_polygons_sharing_an_edge_partition_the_pixels() -> None:
    left = np.array([[0, 0], [3.5, 0], [2.5, 8], [0, 8]])
    right = np.array([[3.5, 0], [8, 0], [8, 8], [2.5, 8]])
    a, b = g.polygons_to_mask([left], 8, 8), g.polygons_to_mask([right], 8, 8)
    assert not (a & b).any()
    assert (a | b).all()


def test_rasterizer_matches_exact_centre_test_on_random_polygons() -> None:
    rng = np.random.default_rng(7)
    agree = total = 0
    for _ in range(150):
        n = int(rng.integers(3, 60))
        if rng.random() < 0.5:  # star-shaped (simple)
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(2, 40) * rng.uniform(0.3, 1, n)
            c = rng.uniform(10, 70, 2)
            pts = np.column_stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)])
        else:  # arbitrary, self-intersecting, partly outside
            pts = rng.uniform(-10, 90, (n, 2))
        h, w = int(rng.integers(20, 80)), int(rng.integers(20, 80))
        ours = g.polygons_to_mask([pts], h, w)
        exact = centres_inside(pts, h, w)
        agree += int((ours == exact).sum())
        total += h * w
    assert agree / total >= 0.999
    assert agree == total  # in practice exact: ties have probability zero here


@given(
    x0=st.integers(-5, 40),
    y0=st.integers(-5, 40),
    dx=st.integers(0, 40),
    dy=st.integers(0, 40),
)
@FAST
def test_integer_rectangles_are_exact(x0: int, y0: int, dx: int, dy: int) -> None:
    h, w = 33, 37
    rect = np.array([[x0, y0], [x0 + dx, y0], [x0 + dx, y0 + dy], [x0, y0 + dy]], float)
    expected = np.zeros((h, w), bool)
    expected[max(y0, 0) : max(y0 + dy, 0), max(x0, 0) : max(x0 + dx, 0)] = True
    np.testing.assert_array_equal(g.polygons_to_mask([rect], h, w), expected)


def test_holes_are_subtracted_and_polygons_united() -> None:
    outer = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    hole = np.array([[2, 2], [2, 8], [8, 8], [8, 2]], float)
    island = np.array([[4, 4], [6, 4], [6, 6], [4, 6]], float)
    other = np.array([[9, 9], [12, 9], [12, 12], [9, 12]], float)
    mask = g.polygons_to_mask([g.PolygonPx(outer, (hole,)), island, other], 12, 12)
    expected = np.zeros((12, 12), bool)
    expected[0:10, 0:10] = True
    expected[2:8, 2:8] = False
    expected[4:6, 4:6] = True
    expected[9:12, 9:12] = True
    np.testing.assert_array_equal(mask, expected)
    # the hole of one polygon does not erase an overlapping other polygon
    cover = np.array([[3, 3], [5, 3], [5, 5], [3, 5]], float)
    both = g.polygons_to_mask([g.PolygonPx(outer, (hole,)), cover], 12, 12)
    assert both[3:5, 3:5].all()


def test_polygons_to_mask_edge_cases() -> None:
    assert not g.polygons_to_mask([], 5, 5).any()
    assert not g.polygons_to_mask([np.array([[1, 1], [3, 3]], float)], 5, 5).any()
    far = np.array([[50, 50], [60, 50], [60, 60]], float)
    assert not g.polygons_to_mask([far], 5, 5).any()
    with pytest.raises(GeometryError, match="not finite"):
        g.polygons_to_mask([np.array([[0, 0], [np.nan, 1], [2, 2]])], 5, 5)
    with pytest.raises(GeometryError, match="positive integers"):
        g.polygons_to_mask([], 0, 5)


# ------------------------------------------------------------------ mask -> polygons
@given(blob_masks())
@FAST
def test_blob_masks_round_trip(mask: np.ndarray) -> None:
    h, w = mask.shape
    polys = g.mask_to_polygons(mask)
    back = g.polygons_to_mask(polys, h, w)
    assert g.iou(back, mask) >= 0.99
    np.testing.assert_array_equal(back, mask)  # exact with epsilon = 0
    for p in polys:  # pixel-boundary polygons: integer corners, axis-aligned edges
        for ring in (p.exterior, *p.holes):
            assert np.array_equal(ring, np.round(ring))
            step = np.diff(np.vstack([ring, ring[:1]]), axis=0)
            assert ((step[:, 0] == 0) ^ (step[:, 1] == 0)).all()
        assert p.area_px > 0


@given(blob_masks(), st.sampled_from([0.5, 1.0]))
@FAST
def test_simplified_blobs_stay_close(mask: np.ndarray, eps: float) -> None:
    h, w = mask.shape
    exact = g.mask_to_polygons(mask, min_area_px=30)
    simplified = g.mask_to_polygons(mask, epsilon_px=eps, min_area_px=30)
    assert sum(p.n_vertices for p in simplified) <= sum(p.n_vertices for p in exact)
    perimeter_px = sum(
        np.linalg.norm(np.diff(np.vstack([r, r[:1]]), axis=0), axis=1).sum()
        for p in exact
        for r in (p.exterior, *p.holes)
    )
    # Douglas-Peucker moves the outline by about eps, so the flipped pixels are bounded by a
    # band of that width along the outline (measured worst case: 0.49 * eps * perimeter).
    flipped = g.polygons_to_mask(exact, h, w) != g.polygons_to_mask(simplified, h, w)
    assert flipped.sum() <= eps * perimeter_px


def test_noise_masks_round_trip_exactly() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        np.testing.assert_array_equal(g.polygons_to_mask(g.mask_to_polygons(mask), h, w), mask)


def test_mask_to_polygons_structure() -> None:
    mask = np.zeros((10, 12), bool)
    mask[1:9, 1:9] = True
    mask[3:6, 3:6] = False  # hole of 9 px
    mask[0, 11] = True  # single pixel in the corner
    polys = g.mask_to_polygons(mask)
    assert len(polys) == 2
    ring = next(p for p in polys if p.holes)
    assert ring.area_px == 64 - 9
    assert len(ring.exterior) == 4 and len(ring.holes[0]) == 4
    assert g._signed_area_px(ring.exterior) > 0 > g._signed_area_px(ring.holes[0])
    corner = next(p for p in polys if not p.holes)
    assert sorted(map(tuple, corner.exterior)) == [(11, 0), (11, 1), (12, 0), (12, 1)]
    # min_area_px drops small polygons and fills small holes
    only = g.mask_to_polygons(mask, min_area_px=10)
    assert len(only) == 1 and only[0].holes == ()
    assert g.mask_to_polygons(np.zeros((4, 4))) == []
    full = g.mask_to_polygons(np.ones((3, 5)))
    assert len(full) == 1 and full[0].area_px == 15


def test_max_vertices_caps_every_ring() -> None:
    mask = np.zeros((80, 80), np.uint8)
    cv2.circle(mask, (40, 40), 30, 1, -1)
    cv2.circle(mask, (40, 40), 12, 0, -1)
    exact = g.mask_to_polygons(mask)
    assert len(exact[0].exterior) > 40
    for cap in (3, 4, 8, 20):
        polys = g.mask_to_polygons(mask, max_vertices=cap)
        assert len(polys) == 1
        assert all(3 <= len(r) <= cap for r in (polys[0].exterior, *polys[0].holes))
    capped = g.mask_to_polygons(mask, max_vertices=24)
    assert g.iou(g.polygons_to_mask(capped, 80, 80), mask.astype(bool)) > 0.9
    with pytest.raises(GeometryError, match="max_vertices"):
        g.mask_to_polygons(mask, max_vertices=2)


def test_simplification_keeps_float64_vertices() -> None:
    # approxPolyDP works in float32; the vertices it keeps must come back as the ring's own
    # float64 values, bit for bit (0.1234567 and 10.000000123 have no float32 twin).
    ring = np.array([[0.1234567, 0], [5, 1e-7], [10.000000123, 0], [10, 10], [0, 10.000000123]])
    assert not np.array_equal(ring.astype(np.float32).astype(np.float64), ring)
    for max_vertices in (None, 4):
        simplified = g._simplify_ring(ring, 0.5, max_vertices)
        assert simplified.dtype == np.float64
        assert sorted(map(tuple, simplified.tolist())) == [
            (0.0, 10.000000123),
            (0.1234567, 0.0),
            (10.0, 10.0),
            (10.000000123, 0.0),
        ]


# ------------------------------------------------------------------ heatmaps
def test_threshold_heatmap() -> None:
    hm = np.array([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]])
    np.testing.assert_array_equal(g.threshold_heatmap(hm, threshold=0.5), [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(
        g.threshold_heatmap(hm * 3, threshold=1.0), [[0, 0, 0], [0, 0, 1]]
    )
    assert not g.threshold_heatmap(np.zeros((3, 3))).any()
    bimodal = np.zeros((20, 20))
    bimodal[5:10, 5:10] = 0.9
    bimodal += np.random.default_rng(0).uniform(0, 0.05, bimodal.shape)
    otsu = g.threshold_heatmap(bimodal, threshold="otsu")
    np.testing.assert_array_equal(otsu, bimodal > 0.5)
    assert not g.threshold_heatmap(np.full((4, 4), 0.3), threshold="otsu").any()


@pytest.mark.parametrize(
    ("heatmap", "kwargs", "match"),
    [
        (np.array([[0.0, np.nan]]), {}, "non-finite"),
        (np.zeros((2, 2, 1)), {}, "2-D"),
        (np.ones((2, 2)), {"threshold": 0.0}, r"fraction in \(0, 1\]"),
        (np.ones((2, 2)), {"threshold": 1.5}, r"fraction in \(0, 1\]"),
        (np.ones((2, 2)), {"threshold": "mean"}, "otsu"),
    ],
)
def test_threshold_heatmap_rejects(heatmap: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        g.threshold_heatmap(heatmap, **kwargs)


def test_heatmap_polygons_scale_corner_to_corner() -> None:
    hm = np.zeros((7, 7))
    hm[2, 3] = 1.0
    (poly,) = g.heatmap_to_polygons(hm, out_height=224, out_width=224)
    assert sorted(map(tuple, poly.exterior)) == [(96, 64), (96, 96), (128, 64), (128, 96)]
    assert poly.area_px == 32 * 32
    (whole,) = g.heatmap_to_polygons(np.ones((4, 3)), out_height=100, out_width=50)
    assert g.polygon_bbox(whole) == (0.0, 0.0, 50.0, 100.0)


@given(
    hm_h=st.integers(3, 14),
    hm_w=st.integers(3, 14),
    out_h=st.integers(10, 90),
    out_w=st.integers(10, 90),
    seed=st.integers(0, 2**16),
)
@FAST
def test_heatmap_polygons_match_nearest_upsampling(
    hm_h: int, hm_w: int, out_h: int, out_w: int, seed: int
) -> None:
    hm = np.random.default_rng(seed).random((hm_h, hm_w))
    polys = g.heatmap_to_polygons(hm, threshold=0.6, out_height=out_h, out_width=out_w)
    hot = hm >= 0.6 * hm.max()
    # An output pixel is hot iff its centre falls in a hot heatmap cell (corner-aligned grids).
    rows = np.floor((np.arange(out_h) + 0.5) * hm_h / out_h).astype(int)
    cols = np.floor((np.arange(out_w) + 0.5) * hm_w / out_w).astype(int)
    expected = hot[rows][:, cols]
    got = g.polygons_to_mask(polys, out_h, out_w)
    # A centre exactly on a scaled cell boundary can only be decided by float rounding.
    on_edge_r = np.isclose(((np.arange(out_h) + 0.5) * hm_h / out_h) % 1, 0)
    on_edge_c = np.isclose(((np.arange(out_w) + 0.5) * hm_w / out_w) % 1, 0)
    undecided = on_edge_r[:, None] | on_edge_c[None, :]
    np.testing.assert_array_equal(got[~undecided], expected[~undecided])


def test_heatmap_units_are_output_pixels() -> None:
    hm = np.zeros((10, 10))
    hm[1, 1] = 1.0  # one cell = 10 x 10 output px = 100 px²
    assert len(g.heatmap_to_polygons(hm, out_height=100, out_width=100, min_area_px=100)) == 1
    assert g.heatmap_to_polygons(hm, out_height=100, out_width=100, min_area_px=101) == []
    with pytest.raises(GeometryError, match="both out_height and out_width"):
        g.heatmap_to_polygons(hm, out_height=100)


# ------------------------------------------------------------------ units
@given(
    pts=st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=30),
    width=st.integers(1, 10000),
    height=st.integers(1, 10000),
)
@FAST
def test_pct_px_round_trip(pts: list, width: int, height: int) -> None:
    pct = np.array(pts)
    px = g.pct_to_px(pct, width, height)
    assert (px >= 0).all() and (px[:, 0] <= width).all() and (px[:, 1] <= height).all()
    np.testing.assert_allclose(g.px_to_pct(px, width, height), pct, rtol=0, atol=1e-9)


def test_pct_corners_map_to_image_corners() -> None:
    px = g.pct_to_px([[0, 0], [100, 100], [50, 25]], 640, 426)
    np.testing.assert_array_equal(px, [[0, 0], [640, 426], [320, 106.5]])
    sizes = np.arange(1, 5000)
    for w in sizes:  # 100 % is exactly the image edge, never a rounding error past it
        assert g.pct_to_px([[100, 100]], int(w), int(w))[0, 0] == w
        assert g.px_to_pct([[w, w]], int(w), int(w))[0, 0] == 100.0


# ------------------------------------------------------------------ hostile polygons
def test_repair_rejects_two_points() -> None:
    with pytest.raises(GeometryError, match=r"at least 3 distinct vertices\. Received: 2") as err:
        g.repair_polygon([[1, 1], [5, 5], [1, 1]], 10, 10)
    assert err.value.hint


def test_repair_rejects_nan_vertex() -> None:
    with pytest.raises(
        GeometryError, match=r"vertex 1 is not finite. Received: \(nan, 2.0\)"
    ) as err:
        g.repair_polygon([[0, 0], [float("nan"), 2], [3, 3]], 10, 10)
    assert "NaN" in (err.value.hint or "")


def test_repair_splits_bowtie_into_two_triangles() -> None:
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10]]
    parts = g.repair_polygon(bowtie, 20, 20)
    assert len(parts) == 2
    assert sorted(p.area_px for p in parts) == [25.0, 25.0]
    assert all(len(p.exterior) == 3 for p in parts)
    # the triangles cover the pixels the bowtie covers under the even-odd rule
    mask = g.polygons_to_mask(parts, 20, 20)
    np.testing.assert_array_equal(mask, g.polygons_to_mask([np.array(bowtie, float)], 20, 20))
    skewed = np.array([[0.3, 0.1], [10.2, 11.4], [10.1, 0.2], [0.2, 10.7]])
    mask = g.polygons_to_mask(g.repair_polygon(skewed, 20, 20), 20, 20)
    np.testing.assert_array_equal(mask, centres_inside(skewed, 20, 20))


def test_repair_clips_to_image() -> None:
    parts = g.repair_polygon([[-5, -5], [15, -5], [15, 5], [-5, 5]], 10, 8)
    assert len(parts) == 1
    assert parts[0].area_px == 50.0  # [0, 10] x [0, 5]
    assert g.polygon_bbox(parts[0]) == (0.0, 0.0, 10.0, 5.0)


def test_repair_rejects_polygon_outside_image() -> None:
    with pytest.raises(GeometryError, match="entirely outside the 64x48 image") as err:
        g.repair_polygon([[100, 100], [120, 100], [110, 130]], 64, 48)
    assert "percent" in (err.value.hint or "")
    with pytest.raises(GeometryError, match="entirely outside"):  # touching the edge only
        g.repair_polygon([[64, 0], [80, 0], [80, 10], [64, 10]], 64, 48)


def test_repair_rejects_zero_area_and_keeps_valid_polygons() -> None:
    with pytest.raises(GeometryError, match="zero area"):
        g.repair_polygon([[0, 0], [1, 1], [2, 2]], 10, 10)
    square = [[1, 1], [4, 1], [4, 4], [1, 4], [1, 1]]
    (same,) = g.repair_polygon(square, 10, 10)
    np.testing.assert_array_equal(same.exterior, np.array(square[:-1], float))


# ------------------------------------------------------------------ metrics
def test_dice_iou_pairwise() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert g.dice(a, b) == 1.0 and g.iou(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:4] = True
    assert g.dice(a, b) == pytest.approx(2 * 1 / 5)
    assert g.iou(a, b) == pytest.approx(1 / 4)
    assert g.pairwise_dice([a]) is None
    assert g.pairwise_dice([a, a, b]) == pytest.approx((1 + 0.4 + 0.4) / 3)
    with pytest.raises(GeometryError, match="same shape"):
        g.dice(a, np.zeros((3, 4), bool))


# ------------------------------------------------------------------ PolygonPx
def test_polygon_json_round_trip_and_immutability() -> None:
    poly = g.PolygonPx(
        np.array([[0.12345, 0], [10, 0], [10, 10], [0, 10]]),
        (np.array([[2, 2], [2, 4], [4, 4], [4, 2]], float),),
    )
    d = poly.to_json()
    assert d["exterior"][0] == [0.123, 0.0]
    assert d["holes"] == [[[2.0, 2.0], [2.0, 4.0], [4.0, 4.0], [4.0, 2.0]]]
    back = g.PolygonPx.from_json(d)
    assert back.holes[0].tolist() == poly.holes[0].tolist()
    assert back.area_px == pytest.approx(100 - 4 - 0.12345 * 10 / 2, abs=1e-2)
    assert g.PolygonPx.from_json({"exterior": d["exterior"]}).holes == ()
    assert poly == g.PolygonPx(poly.exterior, poly.holes) and poly != back
    with pytest.raises(ValueError, match="read-only"):
        poly.exterior[0, 0] = 5
    with pytest.raises(GeometryError, match="'exterior'"):
        g.PolygonPx.from_json({"points": []})
    with pytest.raises(GeometryError, match="at least 3"):
        g.PolygonPx(np.array([[0, 0], [1, 1]], float))


def test_resize_and_bbox() -> None:
    poly = g.PolygonPx(np.array([[1, 2], [3, 2], [3, 6]], float))
    big = g.resize_polygon(poly, 2.0, 0.5)
    np.testing.assert_array_equal(big.exterior, [[2, 1], [6, 1], [6, 3]])
    assert g.polygon_bbox(big) == (2.0, 1.0, 6.0, 3.0)
    assert g.polygon_bbox(np.array([[5, 1], [0, 9]])) == (0.0, 1.0, 5.0, 9.0)
    assert [p.area_px for p in g.scale_polygons([poly, big], 2, 2)] == [16.0, 16.0]
    with pytest.raises(GeometryError, match="scale factors"):
        g.resize_polygon(poly, 0, 1)
