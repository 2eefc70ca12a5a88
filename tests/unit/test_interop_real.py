"""import-annotations on real, published exports (../shared/data/annotations-real; skipped when absent).

The files are read in place (never copied into the repository); where a test needs another file
layout (a Ground Truth label PNG under its S3 name), it copies into tmp_path.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from camlabel.errors import AnnotationError
from camlabel.geometry import dice
from camlabel.imaging import read_mask_png
from camlabel.interop.add import add_images
from camlabel.interop.importing import import_annotations
from camlabel.workspace import Workspace


@pytest.fixture
def real(shared_data: Path) -> Path:
    p = shared_data / "annotations-real"
    if not p.is_dir():
        pytest.skip("annotations-real is absent")
    return p


def _blank(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(w * h)
    cv2.imwrite(str(path), rng.integers(0, 256, (h, w), dtype=np.uint8))
    return path


def test_label_studio_polygon_export(real: Path, tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    img = _blank(tmp_path / "img" / "plane.png", 640, 426)
    add_images(ws, [img])
    export = real / "label-studio" / "data_polygons.json"
    (tmp_path / "map.csv").write_text(f"name,image\nimage2,{img}\n")
    # the label is "Airplane": not a lesion label, so nothing is imported by default
    r = import_annotations(ws, [export], "labelstudio", mapping=tmp_path / "map.csv", dry_run=True)
    assert r.annotations == 0
    assert r.skipped["polygonlabels label ['Airplane'] not mapped"] == 1
    r = import_annotations(
        ws, [export], "labelstudio", mapping=tmp_path / "map.csv", label_map=["Airplane=lesion"]
    )
    assert r.annotations == 1 and r.masks_written == 1
    rec = ws.ledger.all()[0]
    ann = rec.annotations[0]
    assert ann.origin is not None and ann.origin["id"] == "68501/211797"
    area = int(read_mask_png(ws.abs(rec.mask.path)).sum())
    assert 0.02 * 640 * 426 < area < 0.3 * 640 * 426  # the airplane, not the whole frame


def test_label_studio_prediction_list_is_refused_with_the_reason(
    real: Path, tmp_path: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    with pytest.raises(AnnotationError, match="looks like a prediction"):
        import_annotations(ws, [real / "label-studio" / "test_brush_labels.json"], "labelstudio")


def test_ground_truth_semantic_segmentation_manifest(real: Path, tmp_path: Path) -> None:
    from camlabel.backends.groundtruth.convert import decode_label_png

    gt = real / "sagemaker-ground-truth"
    line = json.loads((gt / "output.manifest").read_text().splitlines()[0])
    uri = line["S10-label3-ref"]
    job = tmp_path / "job"
    job.mkdir()
    shutil.copy(gt / "output.manifest", job / "output.manifest")
    shutil.copy(gt / "mask.png", job / Path(uri).name)  # as `aws s3 cp` would name it
    ws = Workspace.init(tmp_path / "ws")
    add_images(ws, [_blank(tmp_path / "img" / "s10.png", 1696, 959)])
    r = import_annotations(
        ws, [job / "output.manifest"], "groundtruth", label_map=["IC=lesion", "resistor1=ignore"]
    )
    assert r.skipped == {"class 'resistor2' not mapped": 1}
    classes = decode_label_png(
        (gt / "mask.png").read_bytes(), line["S10-label3-ref-metadata"]["internal-color-map"]
    )
    rec = ws.ledger.all()[0]
    assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), classes == 1)
    assert np.array_equal(read_mask_png(ws.abs(rec.annotations[0].ignore_path)), classes == 2)
    assert rec.annotations[0].annotator == "labeling-job/s10-label3"


def _v7_rows(real: Path, shared: Path) -> list[dict[str, str]]:
    v7 = real / "v7labs-covid-19-xray-dataset"
    rows = list(csv.DictReader((v7 / "mapping.csv").read_text().splitlines()))
    return [
        r for r in rows if r["darwin_json"] and (shared / "cxr-sample" / r["image_file"]).exists()
    ]


def test_v7_darwin_json_matches_v7_semantic_masks(
    real: Path, shared_data: Path, tmp_path: Path
) -> None:
    v7 = real / "v7labs-covid-19-xray-dataset"
    rows = _v7_rows(real, shared_data)
    if not rows:
        pytest.skip("no cxr-sample image has a Darwin JSON")
    ws = Workspace.init(tmp_path / "ws")
    add_images(ws, [shared_data / "cxr-sample" / r["image_file"] for r in rows])
    (tmp_path / "map.csv").write_text(
        "name,image\n"
        + "".join(
            f"{r['original_filename']},{shared_data / 'cxr-sample' / r['image_file']}\n"
            for r in rows
        )
    )
    files = [v7 / r["darwin_json"] for r in rows]
    r = import_annotations(
        ws, files, "darwin", label_map=["Lung=lesion"], mapping=tmp_path / "map.csv"
    )
    assert r.annotations == len(rows) and r.skipped.get("tag", 0) > 0
    by_name = {Path(rec.source_path).name: rec for rec in ws.ledger.all()}
    with_ignore = 0
    for row in rows:
        rec = by_name[Path(row["image_file"]).name]
        sem = cv2.imread(str(v7 / row["mask_512"]), cv2.IMREAD_UNCHANGED)
        ours = read_mask_png(ws.abs(rec.mask.path))
        # V7 rasterized the same polygons at the original size; ours are scaled to the sample
        assert dice(ours, sem == 255) > 0.95, row["image_file"]
        ann = rec.annotations[0]
        if ann.ignore_path:
            with_ignore += 1
            assert dice(read_mask_png(ws.abs(ann.ignore_path)), sem == 127) > 0.5
    assert with_ignore > 0  # V7's "Ignore" regions are kept as ignore


def test_v7_semantic_masks_as_a_mask_folder(real: Path, shared_data: Path, tmp_path: Path) -> None:
    v7 = real / "v7labs-covid-19-xray-dataset"
    rows = _v7_rows(real, shared_data)[:6]
    if not rows:
        pytest.skip("no cxr-sample image has a V7 mask")
    ws = Workspace.init(tmp_path / "ws")
    add_images(ws, [shared_data / "cxr-sample" / r["image_file"] for r in rows])
    r = import_annotations(
        ws,
        [v7 / r["mask_512"] for r in rows],
        "masks",
        label_map=["255=lesion", "127=ignore"],
    )
    assert r.annotations == len(rows) and r.skipped == {}
    for rec in ws.ledger.all():
        sem = cv2.imread(
            str(v7 / "derived-masks-512" / "covid" / Path(rec.source_path).name),
            cv2.IMREAD_UNCHANGED,
        )
        assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), sem == 255)


def test_coco_bounding_boxes_are_counted_and_skipped(real: Path, tmp_path: Path) -> None:
    path = real / "ieee8023-lung-bounding-boxes" / "imageannotation_ai_lung_bounding_boxes.json"
    doc = json.loads(path.read_text())
    ws = Workspace.init(tmp_path / "ws")
    r = import_annotations(
        ws, [path], "coco", label_map=["Right Lung=lesion"], skip_unmatched=True, dry_run=True
    )
    assert r.annotations == 0
    assert r.skipped == {"bbox (object detection)": len(doc["annotations"])}
