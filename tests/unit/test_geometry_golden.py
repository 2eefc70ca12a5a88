"""camlabel.geometry against real annotation exports in ../shared/data (skipped if absent).

Set CAMLABEL_SHARED_DATA to use another copy of that folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter import brush
from PIL import Image

from camlabel import geometry as g
from camlabel.backends.groundtruth import convert as gtconv
from camlabel.backends.labelstudio import convert as lsconv

SHARED_DATA = Path(
    os.environ.get("CAMLABEL_SHARED_DATA")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
REAL = SHARED_DATA / "annotations-real"


def real_file(relative: str) -> Path:
    path = REAL / relative
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path


def brush_results() -> list[dict]:
    tasks = json.loads(real_file("label-studio/test_brush_labels.json").read_text())
    return [r for t in tasks for r in t["result"] if r["type"] == "brushlabels"]


def test_label_studio_brush_rle_decodes_like_the_sdk() -> None:
    results = brush_results()
    assert results
    for r in results:
        h, w = r["original_height"], r["original_width"]
        rle = r["value"]["rle"]
        ours = lsconv.rle_decode(rle, h * w * 4)
        np.testing.assert_array_equal(ours, brush.decode_rle(rle))
        mask = lsconv.brush_rle_to_mask(rle, h, w)
        assert mask.shape == (h, w) and 0 < mask.sum() < h * w
        layer = brush.decode_from_annotation("label", [{**r, **r["value"]}])
        (sdk_alpha,) = layer.values()
        np.testing.assert_array_equal(mask, sdk_alpha > 0)
        # and back: our encoding of the mask decodes to the same alpha with the SDK
        back = brush.decode_rle(lsconv.mask_to_brush_rle(mask)).reshape(h, w, 4)[:, :, 3]
        np.testing.assert_array_equal(back > 0, mask)


def test_ground_truth_color_mask_to_class_mask() -> None:
    manifest = json.loads(real_file("sagemaker-ground-truth/output.manifest").read_text())
    meta_key = next(k for k in manifest if k.endswith("-ref-metadata"))
    color_map = manifest[meta_key]["internal-color-map"]
    rgb = np.asarray(Image.open(real_file("sagemaker-ground-truth/mask.png")).convert("RGB"))
    cls = gtconv.color_mask_to_class_mask(rgb, color_map)
    assert cls.shape == rgb.shape[:2] and cls.dtype == np.int16
    assert set(np.unique(cls).tolist()) == {int(k) for k in color_map} == {0, 1, 2, 3}
    for key, entry in color_map.items():  # independent per-colour count
        hex_color = entry["hex-color"].lstrip("#")
        colour = np.array([int(hex_color[i : i + 2], 16) for i in (0, 2, 4)], np.uint8)
        assert (cls == int(key)).sum() == np.all(rgb == colour, axis=-1).sum() > 0
    np.testing.assert_array_equal(gtconv.class_mask_to_color_mask(cls, color_map), rgb)


def test_label_studio_polygon_percent_points_to_mask() -> None:
    tasks = json.loads(real_file("label-studio/data_polygons.json").read_text())
    results = [
        r
        for t in tasks
        for a in t["annotations"]
        for r in a["result"]
        if r["type"] == "polygonlabels"
    ]
    assert results
    for r in results:
        w, h = r["original_width"], r["original_height"]
        points_px = g.pct_to_px(r["value"]["points"], w, h)
        (poly,) = g.repair_polygon(points_px, w, h)  # a valid human polygon comes back as is
        np.testing.assert_array_equal(poly.exterior, points_px)
        mask = g.polygons_to_mask([poly], h, w)
        assert mask.sum() > 0
        x0, y0, x1, y1 = g.polygon_bbox(poly)
        rows, cols = np.nonzero(mask)
        assert (cols + 0.5 >= x0).all() and (cols + 0.5 <= x1).all()
        assert (rows + 0.5 >= y0).all() and (rows + 0.5 <= y1).all()
        assert abs(mask.sum() - poly.area_px) < 0.05 * poly.area_px
        np.testing.assert_allclose(g.px_to_pct(points_px, w, h), r["value"]["points"], atol=1e-9)


def test_real_lung_masks_round_trip_exactly() -> None:
    folder = REAL / "v7labs-covid-19-xray-dataset" / "derived-masks-512" / "covid"
    files = sorted(folder.glob("*.png"))[:5] if folder.is_dir() else []
    if not files:
        pytest.skip(f"shared data not available: {folder}")
    for path in files:
        lung = np.asarray(Image.open(path).convert("L")) == 255
        h, w = lung.shape
        polys = g.mask_to_polygons(lung)
        assert 1 <= len(polys) <= 10
        np.testing.assert_array_equal(g.polygons_to_mask(polys, h, w), lung)
        simple = g.mask_to_polygons(lung, min_area_px=50, epsilon_px=1.0, max_vertices=200)
        assert all(len(p.exterior) <= 200 for p in simple)
        assert g.dice(g.polygons_to_mask(simple, h, w), lung) > 0.98
