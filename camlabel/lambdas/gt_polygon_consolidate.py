"""Ground Truth annotation-consolidation Lambda for camlabel's crowd-polygon job.

Deploy this file alone (handler ``gt_polygon_consolidate.lambda_handler``); it needs boto3
(present in every Python Lambda runtime) only to read ``payload.s3Uri``.

Input (documented post-labeling request)::

    {"version": "2018-10-16", "labelingJobArn": ..., "labelCategories": [...],
     "labelAttributeName": "camlabel-lesion-polygons", "roleArn": ...,
     "payload": {"s3Uri": "s3://.../consolidation-request/iteration-1/....json"}}

The payload file is a list of ``{"datasetObjectId", "dataObject", "annotations": [{"workerId",
"annotationData": {"content": "<the form's JSON>"}}]}``; the form's JSON holds the
crowd-polygon answer under ``annotatedResult``.

Output: one ``{"datasetObjectId", "consolidatedAnnotation": {"content": {<labelAttr>: ...}}}``
per object. The label value keeps every worker's polygons (camlabel's pull applies its own
consensus rule to them, exactly as for Label Studio) plus a consensus for whoever reads the
output manifest directly: the *medoid* answer, i.e. the worker whose lesion area agrees best
(highest mean IoU) with the other workers', computed on a raster of at most ``GRID`` pixels
per side. With one worker that worker's answer is the consensus.
"""

from __future__ import annotations

import json
import math
from typing import Any

GRID = 128


# ----------------------------------------------------------------------------- geometry
def rasterize(
    polygons: list[dict[str, Any]], width: float, height: float, grid: int = GRID
) -> set[int]:
    """Cells (row * cols + col) whose centre lies inside any polygon, on a grid of <= ``grid`` px.

    Each polygon is filled by the even-odd rule along scanlines through the cell centres;
    several polygons are united.
    """
    scale = grid / max(width, height, 1.0)
    cols = max(1, math.ceil(width * scale))
    rows = max(1, math.ceil(height * scale))
    cells: set[int] = set()
    for poly in polygons:
        pts = [(float(v["x"]) * scale, float(v["y"]) * scale) for v in poly.get("vertices", [])]
        if len(pts) < 3:
            continue
        for r in range(rows):
            yc = r + 0.5
            xs = []
            for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
                if (y0 <= yc < y1) or (y1 <= yc < y0):
                    xs.append(x0 + (yc - y0) * (x1 - x0) / (y1 - y0))
            xs.sort()
            for a, b in zip(xs[::2], xs[1::2], strict=False):
                c0 = max(0, math.ceil(a - 0.5))
                c1 = min(cols - 1, math.floor(b - 0.5))
                cells.update(range(r * cols + c0, r * cols + c1 + 1))
    return cells


def iou(a: set[int], b: set[int]) -> float:
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def medoid(answers: list[dict[str, Any]]) -> tuple[int, float]:
    """Index of the answer with the highest mean IoU to the others (first on ties), and that mean."""
    if len(answers) == 1:
        return 0, 1.0
    w, h = _size(answers)
    masks = [rasterize(a["annotatedResult"].get("polygons") or [], w, h) for a in answers]
    best, best_score = 0, -1.0
    for i, m in enumerate(masks):
        score = sum(iou(m, o) for j, o in enumerate(masks) if j != i) / (len(masks) - 1)
        if score > best_score + 1e-12:
            best, best_score = i, score
    return best, best_score


def _size(answers: list[dict[str, Any]]) -> tuple[float, float]:
    for a in answers:
        props = a["annotatedResult"].get("inputImageProperties") or {}
        if props.get("width") and props.get("height"):
            return float(props["width"]), float(props["height"])
    xs = [
        float(v["x"])
        for a in answers
        for p in a["annotatedResult"].get("polygons") or []
        for v in p["vertices"]
    ]
    ys = [
        float(v["y"])
        for a in answers
        for p in a["annotatedResult"].get("polygons") or []
        for v in p["vertices"]
    ]
    return (max(xs, default=1.0), max(ys, default=1.0))


# ----------------------------------------------------------------------------- contract
def _worker_answer(ann: dict[str, Any]) -> dict[str, Any]:
    """``{"workerId", "annotatedResult"}`` from one worker's annotation; ValueError if malformed."""
    content = (ann.get("annotationData") or {}).get("content")
    form = json.loads(content) if isinstance(content, str) else content
    if not isinstance(form, dict):
        raise ValueError(f"annotationData.content is not a JSON object: {content!r:.80}")
    result = form.get("annotatedResult", form)
    polys = result.get("polygons")
    if not isinstance(polys, list):
        raise ValueError(f"the answer has no polygons list: {result!r:.80}")
    for p in polys:
        if not isinstance(p, dict) or not isinstance(p.get("vertices"), list):
            raise ValueError(f"a polygon has no vertices list: {p!r:.80}")
        for v in p["vertices"]:
            if not isinstance(v, dict) or not all(isinstance(v.get(k), int | float) for k in "xy"):
                raise ValueError(f"a vertex is not {{x, y}} numbers: {v!r:.80}")
    return {"workerId": str(ann.get("workerId", "")), "annotatedResult": result}


def consolidate(items: list[dict[str, Any]], label_attribute: str) -> list[dict[str, Any]]:
    """The documented consolidation response for the payload ``items``."""
    out = []
    for item in items:
        answers, invalid = [], []
        for ann in item.get("annotations") or []:
            try:
                answers.append(_worker_answer(ann))
            except (ValueError, TypeError, AttributeError) as exc:
                invalid.append({"workerId": str(ann.get("workerId", "")), "reason": str(exc)})
        label: dict[str, Any] = {"workers": answers}
        if invalid:
            label["invalidWorkers"] = invalid
        if answers:
            idx, score = medoid(answers)
            label["annotatedResult"] = answers[idx]["annotatedResult"]
            label["consensus"] = {
                "method": "medoid-iou",
                "workerId": answers[idx]["workerId"],
                "meanIoU": round(score, 6),
                "workerCount": len(answers),
            }
        out.append(
            {
                "datasetObjectId": item["datasetObjectId"],
                "consolidatedAnnotation": {"content": {label_attribute: label}},
            }
        )
    return out


def _read_s3_json(uri: str) -> Any:
    import boto3

    if not uri.startswith("s3://"):
        raise ValueError(f"payload.s3Uri must be an s3:// URI. Received: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def lambda_handler(event: dict[str, Any], context: Any = None) -> list[dict[str, Any]]:
    label_attribute = event.get("labelAttributeName")
    if not isinstance(label_attribute, str) or not label_attribute:
        raise ValueError(f"the request has no labelAttributeName. Received keys: {sorted(event)}")
    uri = (event.get("payload") or {}).get("s3Uri")
    if not isinstance(uri, str):
        raise ValueError(f"the request has no payload.s3Uri. Received keys: {sorted(event)}")
    items = _read_s3_json(uri)
    if not isinstance(items, list):
        raise ValueError(f"the payload at {uri} is not a list of data objects")
    return consolidate(items, label_attribute)
