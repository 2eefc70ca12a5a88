"""Ground Truth formats -> camlabel: colour PNGs, crowd-polygon answers, manifests, settings."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from camlabel.backends.groundtruth import GroundTruthSettings
from camlabel.backends.groundtruth import convert as conv
from camlabel.errors import AnnotationError, ConfigError

CMAP = conv.color_map_for("Opacity")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def lesion_rgb(h=20, w=30, box=(3, 4, 12, 15), color=(0x2C, 0xA0, 0x2C)) -> np.ndarray:
    rgb = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = box
    rgb[y0:y1, x0:x1] = color
    return rgb


def expected(h=20, w=30, box=(3, 4, 12, 15)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- colour PNGs
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_png_modes_decode_to_the_same_mask(mode):
    img = Image.fromarray(lesion_rgb())
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.quantize(colors=2)
    mask = conv.lesion_mask_from_png(png_bytes(img), CMAP, "Opacity", (20, 30))
    np.testing.assert_array_equal(mask, expected())


def test_transparent_pixels_are_background():
    rgba = np.dstack([lesion_rgb(), np.full((20, 30), 255, np.uint8)])
    rgba[:2, :2] = (0, 0, 0, 0)
    mask = conv.lesion_mask_from_png(
        png_bytes(Image.fromarray(rgba, "RGBA")), CMAP, "Opacity", (20, 30)
    )
    np.testing.assert_array_equal(mask, expected())


def test_cam_mask_png_round_trip():
    cls = expected().astype(np.uint8)
    data = conv.class_mask_to_png(cls, CMAP)
    assert data == conv.class_mask_to_png(cls, CMAP)  # deterministic bytes (content hash)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(np.all(rgb == (0x2C, 0xA0, 0x2C), axis=2), expected())
    np.testing.assert_array_equal(conv.decode_label_png(data, CMAP), cls)


def test_colour_missing_from_the_map_is_named():
    rgb = lesion_rgb()
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(AnnotationError, match="#ff0000"):
        conv.lesion_mask_from_png(png_bytes(Image.fromarray(rgb)), CMAP, "Opacity", (20, 30))


def test_size_mismatch_is_an_error_not_a_resize():
    with pytest.raises(AnnotationError, match="30x20 px but the image is 31x20 px"):
        conv.lesion_mask_from_png(
            png_bytes(Image.fromarray(lesion_rgb())), CMAP, "Opacity", (20, 31)
        )


def test_label_case_insensitive_and_foreign_classes():
    data = png_bytes(Image.fromarray(lesion_rgb()))
    np.testing.assert_array_equal(
        conv.lesion_mask_from_png(data, CMAP, "opacity", None), expected()
    )
    with pytest.raises(AnnotationError, match=r"\['Opacity'\] but the lesion label is 'Effusion'"):
        conv.lesion_mask_from_png(data, CMAP, "Effusion", None)
    # An empty answer is an empty mask whatever the label.
    empty = png_bytes(Image.fromarray(lesion_rgb(box=(0, 0, 0, 0))))
    assert not conv.lesion_mask_from_png(empty, CMAP, "Effusion", None).any()


def test_not_a_png():
    with pytest.raises(AnnotationError, match="not a readable PNG"):
        conv.decode_label_png(b"GIF89a nope", CMAP)


def test_color_map_rules():
    with pytest.raises(AnnotationError, match="BACKGROUND"):
        conv.color_map_for("background")
    with pytest.raises(AnnotationError, match="differ"):
        conv.color_map_for("Opacity", "#FFFFFF")
    with pytest.raises(AnnotationError, match="#rrggbb"):
        conv.color_map_for("Opacity", "green")


def test_real_sample_class_counts(shared_data):
    sample = shared_data / "annotations-real" / "sagemaker-ground-truth"
    line = json.loads((sample / "output.manifest").read_text().splitlines()[0])
    attr = next(k for k in line if k.endswith("-ref") and f"{k}-metadata" in line)
    cmap = line[f"{attr}-metadata"]["internal-color-map"]
    classes = conv.decode_label_png((sample / "mask.png").read_bytes(), cmap)
    bgr = cv2.imread(str(sample / "mask.png"), cv2.IMREAD_COLOR)
    for k, v in cmap.items():
        hx = v["hex-color"].lstrip("#")
        b, g, r = int(hx[4:6], 16), int(hx[2:4], 16), int(hx[0:2], 16)
        count = int(np.all(bgr == (b, g, r), axis=2).sum())
        assert int((classes == int(k)).sum()) == count, v["class-name"]


# ----------------------------------------------------------------------------- polygons
def answer(*polys, h=20, w=30):
    return {"inputImageProperties": {"height": h, "width": w}, "polygons": list(polys)}


def sq(x0, y0, x1, y1, label="Opacity"):
    return {
        "label": label,
        "vertices": [
            {"x": x0, "y": y0},
            {"x": x1, "y": y0},
            {"x": x1, "y": y1},
            {"x": x0, "y": y1},
        ],
    }


def test_answer_polygons_to_mask_union_and_other_labels_ignored():
    polys, mask = conv.answer_polygons(
        answer(sq(3, 4, 12, 15), sq(10, 0, 20, 5), sq(0, 0, 30, 20, label="Device")),
        "Opacity",
        (20, 30),
        "t",
    )
    want = expected() | expected(box=(10, 0, 20, 5))
    np.testing.assert_array_equal(mask, want)
    assert len(polys) == 2 and polys[0]["exterior"] == [[3, 4], [12, 4], [12, 15], [3, 15]]


def test_vertices_on_the_border_are_inside_the_image():
    _, mask = conv.answer_polygons(answer(sq(0, 0, 30, 20)), "Opacity", (20, 30), "t")
    assert mask.all()


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (answer(sq(3, 4, 31, 15)), "outside the 30x20 px image"),
        (answer(sq(-1, 4, 12, 15)), "outside"),
        (answer(sq(3, 4, 12, 15), h=40, w=60), "60x40 px image"),
        ({"inputImageProperties": {"height": 20, "width": 30}}, "no 'polygons' list"),
        (answer({"label": "Opacity", "vertices": [{"x": 1, "y": 1}, {"x": 2, "y": 2}]}), ">= 3"),
        (answer({"label": "Opacity", "vertices": [{"x": "1", "y": 1}] * 3}), "numbers"),
        (answer({"label": "Opacity"}), "no vertices list"),
    ],
)
def test_hostile_polygon_answers(result, match):
    with pytest.raises(AnnotationError, match=match):
        conv.answer_polygons(result, "Opacity", (20, 30), "job j object 0")


def test_preannotation_vertices_drop_holes_and_round():
    poly = {"exterior": [[1.4, 2.6], [10.5, 2.0], [10.0, 9.0]], "holes": [[[3, 3], [4, 3], [4, 4]]]}
    assert conv.preannotation_vertices([poly], "Opacity") == [
        {"label": "Opacity", "vertices": [{"x": 1, "y": 3}, {"x": 11, "y": 2}, {"x": 10, "y": 9}]}
    ]


def test_same_polygons():
    assert conv.same_polygons([sq(1, 2, 3, 4)], [sq(1.001, 2, 3, 4)])
    assert not conv.same_polygons([sq(1, 2, 3, 4)], [sq(1, 2, 3, 5)])
    assert not conv.same_polygons([sq(1, 2, 3, 4)], [{"vertices": "bad"}])


# ----------------------------------------------------------------------------- manifests
def test_parse_output_manifest_keeps_going_past_bad_lines():
    text = '{"source-ref": "s3://b/a.png", "camlabel-image-id": "a"}\n{oops\n\n[1, 2]\n{"source-ref": "s3://b/c.png"}\n'
    lines, problems = conv.parse_output_manifest(text, "x-ref")
    assert [(ln.index, ln.image_id) for ln in lines] == [(0, "a"), (4, None)]
    assert [i for i, _ in problems] == [1, 3]
    assert "line 2 is not valid JSON" in problems[0][1]
    assert "not a JSON object" in problems[1][1]


def test_failure_reason_and_unsupported_types():
    failed = conv.OutputLine(
        0, {"x-ref-metadata": {"failure-reason": "ClientError: boom"}}, "a", "x-ref"
    )
    assert failed.failure_reason == "ClientError: boom"
    bbox = conv.OutputLine(
        0,
        {
            "x": {"image_size": [{}], "annotations": []},
            "x-metadata": {"type": "groundtruth/object-detection"},
        },
        "a",
        "x",
    )
    assert "bounding box" in conv.unsupported_reason(bbox)
    video = conv.OutputLine(
        0, {"x-metadata": {"type": "groundtruth/video-object-tracking"}}, "a", "x"
    )
    assert "unsupported task type" in conv.unsupported_reason(video)
    semseg = conv.OutputLine(
        0, {"x-ref-metadata": {"type": "groundtruth/semantic-segmentation"}}, "a", "x-ref"
    )
    assert conv.unsupported_reason(semseg) is None


def test_worker_responses_latest_per_worker():
    f1 = json.dumps(
        {
            "answers": [
                {
                    "workerId": "w1",
                    "answerContent": {"a": {"initialValueModified": False}},
                    "submissionTime": "2026-01-01T00:00:01.000Z",
                    "timeSpentInSeconds": 5,
                },
                {
                    "workerId": "w2",
                    "answerContent": '{"b": 1}',
                    "submissionTime": "2026-01-01T00:00:02.000Z",
                },
            ]
        }
    )
    f2 = json.dumps(
        {
            "answers": [
                {
                    "workerId": "w1",
                    "answerContent": {},
                    "submissionTime": "2026-01-02T00:00:00.000Z",
                }
            ]
        }
    )
    answers = conv.latest_per_worker(
        conv.parse_worker_response(f1) + conv.parse_worker_response(f2)
    )
    assert [(a.worker_id, a.submission_time) for a in answers] == [
        ("w1", "2026-01-02T00:00:00.000Z"),
        ("w2", "2026-01-01T00:00:02.000Z"),
    ]
    first = conv.parse_worker_response(f1)[0]
    assert first.find("initialValueModified") is False and first.time_spent_s == 5.0
    assert conv.parse_worker_response(f1)[1].content == {"b": 1}
    with pytest.raises(AnnotationError, match="answers"):
        conv.parse_worker_response('{"nope": 1}')


@pytest.mark.parametrize(
    ("ts", "want"),
    [
        ("2022-09-09T17:25:32.047919", "2022-09-09T17:25:32Z"),
        ("2020-12-28T18:59:58.321Z", "2020-12-28T18:59:58Z"),
        ("2020-05-15T08:01:16+0200", "2020-05-15T06:01:16Z"),
        ("garbage", "DEFAULT"),
        (None, "DEFAULT"),
    ],
)
def test_iso_utc(ts, want):
    assert conv.iso_utc(ts, "DEFAULT") == want


# ----------------------------------------------------------------------------- settings
def test_settings_precedence(monkeypatch, tmp_path):
    from camlabel.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    ws.config["groundtruth"]["bucket"] = "from-config"
    ws.config["groundtruth"]["region"] = "eu-west-1"
    monkeypatch.setenv("CAMLABEL_GT_REGION", "eu-central-1")
    monkeypatch.setenv("CAMLABEL_GT_WORKERS_PER_OBJECT", "3")
    s = GroundTruthSettings.resolve(ws, {"prefix": "/x/y/"})
    assert (s.bucket, s.region, s.prefix, s.workers_per_object, s.label) == (
        "from-config",
        "eu-central-1",
        "x/y",
        3,
        "Opacity",
    )
    assert GroundTruthSettings.resolve(ws, {"region": "us-west-2"}).region == "us-west-2"


def test_settings_errors_list_the_valid_values():
    with pytest.raises(ConfigError, match=r"supported job types: \['adjustment', 'polygon'\]"):
        GroundTruthSettings.resolve(None, {"job_type": "bbox"})
    with pytest.raises(ConfigError, match="supported options"):
        GroundTruthSettings.resolve(None, {"buckett": "x"})
    with pytest.raises(ConfigError, match="integer"):
        GroundTruthSettings.resolve(None, {"task_time_limit": "soon"})
