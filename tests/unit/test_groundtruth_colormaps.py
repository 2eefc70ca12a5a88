"""Unit tests of Ground Truth vertices and colour masks (camlabel.backends.groundtruth.convert)."""

from __future__ import annotations

import numpy as np
import pytest

from camlabel.backends.groundtruth import convert as gtconv
from camlabel.errors import AnnotationError, GeometryError


def test_ground_truth_vertices() -> None:
    vertices = [{"x": 10, "y": 20}, {"x": 30, "y": 20}, {"x": 30, "y": 45}]
    px = gtconv.gt_vertices_to_px(vertices)
    assert px.dtype == np.float64 and px.tolist() == [[10, 20], [30, 20], [30, 45]]
    assert gtconv.px_to_gt_vertices(px) == vertices
    assert gtconv.px_to_gt_vertices([[1.5, 2.49], [2.5, -0.5]]) == [
        {"x": 2, "y": 2},
        {"x": 3, "y": 0},
    ]
    assert all(isinstance(v["x"], int) for v in gtconv.px_to_gt_vertices(px + 0.2))
    with pytest.raises(GeometryError, match="vertex 1"):
        gtconv.gt_vertices_to_px([{"x": 1, "y": 2}, {"x": 3}])


# ------------------------------------------------------------------ colour masks
COLOR_MAP = {
    "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff", "confidence": 0},
    "1": {"class-name": "Opacity", "hex-color": "#2ca02c", "confidence": 0},
    "2": {"class-name": "Lung", "hex-color": "#1F77B4", "confidence": 0},
}


def test_color_mask_round_trip() -> None:
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 3, (9, 13)).astype(np.int16)
    rgb = gtconv.class_mask_to_color_mask(cls, COLOR_MAP)
    assert rgb.dtype == np.uint8 and rgb.shape == (9, 13, 3)
    assert tuple(rgb[cls == 2][0]) == (0x1F, 0x77, 0xB4)
    out = gtconv.color_mask_to_class_mask(rgb, COLOR_MAP)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, cls)


def test_color_missing_from_map_is_named() -> None:
    rgb = gtconv.class_mask_to_color_mask(np.zeros((4, 5), np.int16), COLOR_MAP)
    rgb[0, :3] = (255, 0, 0)
    rgb[3, 4] = (1, 2, 3)
    with pytest.raises(AnnotationError) as err:
        gtconv.color_mask_to_class_mask(rgb, COLOR_MAP)
    msg = str(err.value)
    assert "4 pixels in 2 colour(s)" in msg
    assert "#ff0000 (3 px)" in msg and "#010203 (1 px)" in msg
    assert "#ffffff (0: BACKGROUND)" in msg and "#1f77b4 (2: Lung)" in msg
    assert err.value.hint


def test_color_mask_rejects_bad_inputs() -> None:
    with pytest.raises(AnnotationError, match="H x W x 3 uint8"):
        gtconv.color_mask_to_class_mask(np.zeros((4, 4, 4), np.uint8), COLOR_MAP)
    with pytest.raises(AnnotationError, match="share the colour #ffffff"):
        gtconv.color_mask_to_class_mask(
            np.zeros((2, 2, 3), np.uint8), {**COLOR_MAP, "3": {"hex-color": "#FFFFFF"}}
        )
    with pytest.raises(AnnotationError, match="indices \\[7\\]"):
        gtconv.class_mask_to_color_mask(np.full((2, 2), 7), COLOR_MAP)
