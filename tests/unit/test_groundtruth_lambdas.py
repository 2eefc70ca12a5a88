"""camlabel's Ground Truth Lambdas against the documented request/response contracts.

(The consolidation handler reading ``payload.s3Uri`` from S3 is exercised against moto in
tests/integration/test_groundtruth.py.)
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from camlabel.lambdas import gt_polygon_consolidate as acs
from camlabel.lambdas import gt_polygon_pre as pre

LAMBDA_DIR = Path(pre.__file__).parent


def square(x0, y0, x1, y1, label="Opacity"):
    return {
        "label": label,
        "vertices": [
            {"x": x0, "y": y0},
            {"x": x1, "y": y0},
            {"x": x1, "y": y1},
            {"x": x0, "y": y1},
        ],
    }


@pytest.mark.parametrize("name", ["gt_polygon_pre.py", "gt_polygon_consolidate.py"])
def test_handlers_are_self_contained(name):
    """Deployable as one file: standard library (and boto3) only, no camlabel import."""
    tree = ast.parse((LAMBDA_DIR / name).read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add((node.module or "").split(".")[0])
    assert mods <= {"__future__", "json", "math", "os", "typing", "boto3"}, mods


# ----------------------------------------------------------------------------- pre
def test_pre_annotation_contract():
    line = {
        "source-ref": "s3://bucket/camlabel/images/abc.png",
        "camlabel-image-id": "abc",
        "camlabel-labels": ["Opacity"],
        "camlabel-cam-polygons": {
            "annotatedResult": {
                "inputImageProperties": {"height": 100, "width": 80},
                "polygons": [square(1, 2, 30, 40)],
            }
        },
    }
    event = {
        "version": "2018-10-16",
        "labelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x",
        "dataObject": line,
    }
    out = pre.lambda_handler(event, None)
    assert set(out) == {"taskInput", "isHumanAnnotationRequired"}
    assert out["isHumanAnnotationRequired"] is True
    ti = out["taskInput"]
    assert ti["taskObject"] == line["source-ref"]
    assert ti["labels"] == ["Opacity"]
    assert ti["initialValue"] == [square(1, 2, 30, 40)]
    assert ti["imageId"] == "abc"
    assert ti["inputImageProperties"] == {"height": 100, "width": 80}
    json.dumps(out)  # the response must be JSON-serialisable


def test_pre_annotation_without_prior_offers_an_empty_task():
    out = pre.lambda_handler(
        {
            "version": "2018-10-16",
            "labelingJobArn": "a",
            "dataObject": {"source-ref": "s3://b/i.png"},
        }
    )
    assert out["taskInput"]["initialValue"] == []
    assert out["taskInput"]["labels"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({}, "source-ref"),
        (
            {
                "source-ref": "s3://b/i.png",
                "camlabel-cam-polygons": {"polygons": [{"vertices": [{"x": 1, "y": 1}]}]},
            },
            ">= 3",
        ),
        (
            {
                "source-ref": "s3://b/i.png",
                "camlabel-cam-polygons": {"polygons": [square(0, 0, "a", 1)]},
            },
            "must be a number",
        ),
    ],
)
def test_pre_annotation_rejects_malformed_lines(data, match):
    with pytest.raises(ValueError, match=match):
        pre.lambda_handler({"version": "2018-10-16", "labelingJobArn": "a", "dataObject": data})


# ----------------------------------------------------------------------------- consolidation
def worker(worker_id, polygons, h=100, w=100):
    content = {
        "annotatedResult": {"inputImageProperties": {"height": h, "width": w}, "polygons": polygons}
    }
    return {"workerId": worker_id, "annotationData": {"content": json.dumps(content)}}


def test_rasterize_fills_pixel_centres():
    cells = acs.rasterize([square(0, 0, 10, 5)], 20, 20, grid=20)
    assert len(cells) == 50
    assert acs.rasterize([square(2.6, 2.6, 3.4, 3.4)], 20, 20, grid=20) == set()  # no centre inside


def test_consolidation_contract_and_medoid():
    items = [
        {
            "datasetObjectId": "0",
            "dataObject": {"content": json.dumps({"source-ref": "s3://b/i.png"})},
            "annotations": [
                worker("w-a", [square(10, 10, 50, 50)]),
                worker("w-b", [square(12, 12, 52, 52)]),
                worker("w-c", [square(60, 60, 90, 90)]),
            ],
        },
        {
            "datasetObjectId": "1",
            "dataObject": {"s3Uri": "s3://b/j.png"},
            "annotations": [worker("w-a", [])],
        },
    ]
    out = acs.consolidate(items, "camlabel-lesion-polygons")
    assert [o["datasetObjectId"] for o in out] == ["0", "1"]
    label = out[0]["consolidatedAnnotation"]["content"]["camlabel-lesion-polygons"]
    assert [w["workerId"] for w in label["workers"]] == ["w-a", "w-b", "w-c"]
    # w-a and w-b agree with each other; w-a comes first among the two.
    assert label["consensus"]["workerId"] == "w-a"
    assert label["consensus"]["workerCount"] == 3
    assert label["annotatedResult"]["polygons"] == [square(10, 10, 50, 50)]
    one = out[1]["consolidatedAnnotation"]["content"]["camlabel-lesion-polygons"]
    assert one["consensus"] == {
        "method": "medoid-iou",
        "workerId": "w-a",
        "meanIoU": 1.0,
        "workerCount": 1,
    }
    json.dumps(out)


def test_consolidation_keeps_going_past_a_malformed_worker():
    bad = {"workerId": "w-bad", "annotationData": {"content": "{not json"}}
    out = acs.consolidate(
        [{"datasetObjectId": "3", "annotations": [bad, worker("w-ok", [square(1, 1, 9, 9)])]}],
        "attr",
    )
    label = out[0]["consolidatedAnnotation"]["content"]["attr"]
    assert [w["workerId"] for w in label["workers"]] == ["w-ok"]
    assert label["invalidWorkers"][0]["workerId"] == "w-bad"
    assert label["consensus"]["workerId"] == "w-ok"


def test_consolidation_handler_requires_the_documented_fields():
    with pytest.raises(ValueError, match="labelAttributeName"):
        acs.lambda_handler({"payload": {"s3Uri": "s3://b/k"}})
    with pytest.raises(ValueError, match=r"payload\.s3Uri"):
        acs.lambda_handler({"labelAttributeName": "a"})
