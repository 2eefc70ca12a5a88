"""Ground Truth pre-annotation Lambda for camlabel's crowd-polygon job.

Standard library only: deploy this file alone (handler ``gt_polygon_pre.lambda_handler``).

Input (one manifest line, the documented pre-annotation request)::

    {"version": "2018-10-16", "labelingJobArn": "arn:...",
     "dataObject": {"source-ref": "s3://.../images/<id>.png",
                    "camlabel-image-id": "<id>",
                    "camlabel-labels": ["Opacity"],
                    "camlabel-cam-polygons": {"annotatedResult": {
                        "inputImageProperties": {"height": H, "width": W},
                        "polygons": [{"label": "Opacity", "vertices": [{"x": 1, "y": 2}, ...]}]}}}}

Output (what the worker template reads as ``task.input``)::

    {"taskInput": {"taskObject": "s3://...", "labels": [...], "initialValue": [...polygons...],
                   "imageId": "<id>", "inputImageProperties": {...}},
     "isHumanAnnotationRequired": true}

A malformed line raises ValueError: Ground Truth then marks that object as failed with the
message, and the other objects go on.
"""

from __future__ import annotations

import os
from typing import Any

PRIOR_ATTRIBUTE = "camlabel-cam-polygons"
LABELS_KEY = "camlabel-labels"
IMAGE_ID_KEY = "camlabel-image-id"


def _number(v: Any, where: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{where} must be a number. Received: {v!r}")
    return v


def polygons_from_prior(prior: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The crowd-polygon ``initial-value`` list (and image size) from the prior label value."""
    if prior is None:
        return [], None
    if not isinstance(prior, dict):
        raise ValueError(f"the prior polygons must be an object. Received: {type(prior).__name__}")
    result = prior.get("annotatedResult", prior)
    props = result.get("inputImageProperties")
    out = []
    for i, poly in enumerate(result.get("polygons") or []):
        verts = poly.get("vertices") if isinstance(poly, dict) else None
        if not isinstance(verts, list) or len(verts) < 3:
            raise ValueError(f"polygon {i} needs a list of >= 3 vertices. Received: {poly!r:.120}")
        out.append(
            {
                "label": str(poly.get("label", "")),
                "vertices": [
                    {
                        "x": _number(v.get("x"), f"polygon {i} vertex {j} x"),
                        "y": _number(v.get("y"), f"polygon {i} vertex {j} y"),
                    }
                    for j, v in enumerate(verts)
                ],
            }
        )
    return out, props if isinstance(props, dict) else None


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    data = event.get("dataObject")
    if not isinstance(data, dict):
        raise ValueError(f"the request has no dataObject. Received keys: {sorted(event)}")
    source = data.get("source-ref")
    if not isinstance(source, str) or not source:
        raise ValueError(f"the manifest line has no source-ref. Received keys: {sorted(data)}")
    attr = os.environ.get("CAMLABEL_PRIOR_ATTRIBUTE", PRIOR_ATTRIBUTE)
    polygons, props = polygons_from_prior(data.get(attr))
    labels = data.get(LABELS_KEY)
    if not isinstance(labels, list) or not labels:
        labels = sorted({p["label"] for p in polygons}) or ["lesion"]
    task_input: dict[str, Any] = {
        "taskObject": source,
        "labels": [str(label) for label in labels],
        "initialValue": polygons,
        "imageId": data.get(IMAGE_ID_KEY),
    }
    if props is not None:
        task_input["inputImageProperties"] = props
    return {"taskInput": task_input, "isHumanAnnotationRequired": True}
