"""Label Studio backend conversions that need no server (the server tests are in tests/integration)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from camlabel.backends.base import PushItem
from camlabel.backends.labelstudio import LabelStudioBackend
from camlabel.backends.labelstudio.convert import _accepted_unchanged, mask_to_brush_rle
from camlabel.backends.labelstudio.tasks import label_config, utc_timestamp
from camlabel.errors import AnnotationError
from camlabel.records import Preannotation
from camlabel.workspace import Workspace


@pytest.fixture
def backend(tmp_path: Path) -> LabelStudioBackend:
    ws = Workspace.init(tmp_path / "ws", classes=["covid", "normal"])
    return LabelStudioBackend(ws, url="http://127.0.0.1:9", token="t" * 40)


def test_label_config_has_the_controls_the_backend_reads() -> None:
    root = ET.fromstring(label_config("Opacity & more", ["covid", 'pne"umonia']))
    tags = {(el.tag, el.get("name")) for el in root.iter() if el.get("name")}
    assert {
        ("Image", "image"),
        ("PolygonLabels", "lesion"),
        ("BrushLabels", "lesion_brush"),
    } <= tags
    assert ("Choices", "image_class") in tags
    assert [c.get("value") for c in root.iter("Choice")] == ["covid", 'pne"umonia']
    labels = {lab.get("value") for lab in root.iter("Label")}
    assert labels == {"Opacity & more"}


def test_prediction_is_percent_of_the_original_size(backend: LabelStudioBackend) -> None:
    pre = Preannotation(
        polygons=({"exterior": [[0, 0], [200, 0], [200, 100]], "holes": []},),
        source="gradcam",
        model_version="m1",
        score=0.4,
    )
    item = PushItem(
        image_id="a" * 64,
        width=200,
        height=100,
        display_png=backend.workspace.root / "images" / ("a" * 64 + ".png"),
        preannotation=pre,
        predicted_class="covid",
    )
    task = backend.task_payload(item, "/data/local-files/?d=images/x.png")
    assert task["data"] == {
        "image": "/data/local-files/?d=images/x.png",
        "camlabel_image_id": "a" * 64,
    }
    (pred,) = task["predictions"]
    assert pred["model_version"] == "m1" and pred["score"] == 0.4
    poly, choice = pred["result"]
    assert poly["value"]["points"] == [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0]]
    assert (poly["original_width"], poly["original_height"]) == (200, 100)
    assert choice["value"] == {"choices": ["covid"]}


def test_a_preannotation_with_holes_goes_out_as_one_brush_region(
    backend: LabelStudioBackend,
) -> None:
    from camlabel.backends.labelstudio.convert import brush_rle_to_mask
    from camlabel.geometry import PolygonPx, polygons_to_mask

    ring = {
        "exterior": [[10, 5], [50, 5], [50, 35], [10, 35]],
        "holes": [[[20, 15], [30, 15], [30, 25], [20, 25]]],
    }
    other = {"exterior": [[55, 5], [60, 5], [60, 10]], "holes": []}
    pre = Preannotation(polygons=(ring, other), source="segmenter", model_version="seg-1")
    item = PushItem("b" * 64, 64, 40, backend.workspace.root / "b.png", preannotation=pre)
    (pred,) = backend.task_payload(item, "/x")["predictions"]
    (brush,) = pred["result"]
    assert brush["type"] == "brushlabels" and brush["from_name"] == "lesion_brush"
    assert brush["value"]["brushlabels"] == [backend.lesion_label]
    assert (brush["original_width"], brush["original_height"]) == (64, 40)
    got = brush_rle_to_mask(brush["value"]["rle"], 40, 64)
    want = polygons_to_mask([PolygonPx.from_json(p) for p in (ring, other)], 40, 64)
    assert np.array_equal(got, want) and not got[20, 25] and got[10, 15]  # the hole stays open


def _poly(points_pct, w=50, h=40, origin="manual"):
    return {
        "from_name": "lesion",
        "type": "polygonlabels",
        "origin": origin,
        "original_width": w,
        "original_height": h,
        "value": {"points": points_pct, "polygonlabels": ["Opacity"]},
    }


def test_convert_annotation_unions_polygons_and_brush(backend: LabelStudioBackend) -> None:
    w, h = 50, 40
    brush = np.zeros((h, w), bool)
    brush[30:35, 40:45] = True
    ann = {
        "id": 7,
        "completed_by": 3,
        "created_at": "2026-01-02T03:04:05.123456Z",
        "updated_at": "2026-01-02T03:04:06.5Z",
        "lead_time": 9.5,
        "result": [
            _poly([[0, 0], [20, 0], [20, 25], [0, 25]]),  # x 0..10 px, y 0..10 px
            {
                "from_name": "lesion_brush",
                "type": "brushlabels",
                "original_width": w,
                "original_height": h,
                "value": {"format": "rle", "rle": mask_to_brush_rle(brush)},
            },
            {"from_name": "image_class", "type": "choices", "value": {"choices": ["normal"]}},
        ],
    }
    res = backend.convert_annotation(ann, "12", w, h)
    want = brush.copy()
    want[0:10, 0:10] = True
    assert res.mask is not None and np.array_equal(res.mask, want)
    a = res.annotation
    assert (a.annotation_id, a.annotator, a.status, a.class_choice) == (
        "7",
        "3",
        "submitted",
        "normal",
    )
    assert a.has_brush and a.lead_time_s == 9.5 and a.accepted_unchanged is None
    assert a.polygons[0]["exterior"] == [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]
    assert a.updated_at == "2026-01-02T03:04:06.500000Z"


def test_a_skip_is_a_skipped_annotation_without_mask(backend: LabelStudioBackend) -> None:
    res = backend.convert_annotation({"id": 1, "was_cancelled": True, "result": []}, "3", 10, 10)
    assert res.mask is None and res.annotation.status == "skipped"


def test_an_annotation_of_another_size_is_rejected_with_both_sizes(
    backend: LabelStudioBackend,
) -> None:
    ann = {"id": 5, "result": [_poly([[0, 0], [50, 0], [50, 50]], w=64, h=40)]}
    with pytest.raises(AnnotationError) as err:
        backend.convert_annotation(ann, "99", 50, 40)
    assert (
        "task 99" in err.value.message
        and "64x40" in err.value.message
        and "50x40" in err.value.message
    )


def test_accepted_unchanged_needs_prediction_origin_and_equal_points() -> None:
    pts = [[10.0, 10.0], [20.0, 10.0], [20.0, 30.0]]
    pred = {"result": [{"from_name": "lesion", "value": {"points": pts}}]}
    assert _accepted_unchanged([_poly(pts, origin="prediction")], pred) is True
    assert _accepted_unchanged([_poly(pts, origin="prediction-changed")], pred) is False
    moved = [[10.0, 10.0], [20.0, 10.0], [20.0, 30.5]]
    assert _accepted_unchanged([_poly(moved, origin="prediction")], pred) is False
    assert _accepted_unchanged([], pred) is False
    assert _accepted_unchanged([_poly(pts)], None) is None


def test_timestamps_are_utc_with_microseconds() -> None:
    assert utc_timestamp("2026-11-26 23:39:39.438838+00:00") == "2026-11-26T23:39:39.438838Z"
    assert utc_timestamp("2026-11-26T23:39:39Z") == "2026-11-26T23:39:39.000000Z"
    assert utc_timestamp(None) == ""
