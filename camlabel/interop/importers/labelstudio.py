"""Label Studio JSON export (a list of tasks): polygons (percent) and brush RLE.

Every human annotation of a task becomes one annotation; predictions are not imported (they
are model output). Results of other kinds (rectangles, ellipses, keypoints, text...) are
counted and skipped. The image is matched by ``data.camlabel_image_id`` (tasks camlabel
created), else by the image URL's file name (Label Studio's upload prefix ``1a2b3c4d-`` is
dropped) or an image file of that name beside the export.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from camlabel.errors import AnnotationError, CamlabelError
from camlabel.interop.importers import (
    IGNORE,
    ForeignAnnotation,
    ImageRef,
    LabelMap,
    SkipCounter,
    load_json,
)

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
#: result type -> the key of its label list
_REGION_TYPES = {"polygonlabels": "polygonlabels", "brushlabels": "brushlabels", "polygon": None}


def image_name(url: str) -> str:
    """The file name a task's image URL points at (``/data/local-files/?d=a/b.png`` -> ``b.png``)."""
    parsed = urlparse(url)
    d = parse_qs(parsed.query).get("d")
    path = unquote(d[0] if d else parsed.path)
    name = Path(path).name
    return _UPLOAD_PREFIX.sub("", name)


def read(files: Sequence[Path], labels: LabelMap, skipped: SkipCounter) -> list[ForeignAnnotation]:
    out: list[ForeignAnnotation] = []
    for f in files:
        data = load_json(f)
        if isinstance(data, Mapping):
            data = [data]
        if not isinstance(data, list):
            raise AnnotationError(
                f"'{f}' is not a Label Studio JSON export (expected a list of tasks). "
                f"Received: {type(data).__name__}",
                hint="export with Label Studio's 'JSON' format (not JSON-MIN, not CSV)",
            )
        for i, task in enumerate(data):
            if not isinstance(task, Mapping) or "data" not in task:
                kind = "prediction" if isinstance(task, Mapping) and "result" in task else "other"
                raise AnnotationError(
                    f"'{f}' item {i} is not a task (no 'data' key; it looks like a {kind})",
                    hint="export the project with Label Studio's 'JSON' format",
                )
            out.extend(_task(f, task, labels, skipped))
    return out


def _task(
    f: Path, task: Mapping[str, Any], labels: LabelMap, skipped: SkipCounter
) -> list[ForeignAnnotation]:
    data = task.get("data") or {}
    url = next((str(v) for v in data.values() if isinstance(v, str) and "/" in v), "")
    name = image_name(url) if url else str(task.get("id"))
    beside = f.parent / name
    ref = ImageRef(
        name=name,
        path=beside if beside.is_file() else None,
        image_id=data.get("camlabel_image_id"),
    )
    skipped.update({"prediction (model output)": len(task.get("predictions") or [])})
    out = []
    for ann in task.get("annotations") or []:
        if ann.get("was_cancelled"):
            skipped["cancelled annotation"] += 1
            continue
        fa = _annotation(f, ref, task, ann, labels, skipped)
        if fa is not None:
            out.append(fa)
    return out


def _annotation(
    f: Path,
    ref: ImageRef,
    task: Mapping[str, Any],
    ann: Mapping[str, Any],
    labels: LabelMap,
    skipped: SkipCounter,
) -> ForeignAnnotation | None:
    from camlabel.backends.labelstudio.convert import brush_rle_to_mask
    from camlabel.geometry import pct_to_px

    where = f"'{f}' task {task.get('id')} annotation {ann.get('id')}"
    fa = ForeignAnnotation(
        ref=ref,
        annotation_id=f"{task.get('id')}/{ann.get('id')}",
        annotator=_who(ann.get("completed_by")),
        source_file=str(f),
        fmt="labelstudio",
        created_at=_ts(ann.get("created_at")),
        updated_at=_ts(ann.get("updated_at")),
    )
    regions = 0
    for r in ann.get("result") or []:
        kind = str(r.get("type"))
        if kind not in _REGION_TYPES:
            skipped[kind] += 1
            continue
        value = r.get("value") or {}
        key = _REGION_TYPES[kind]
        names = list(value.get(key) or []) if key else ["lesion"]
        targets = {labels(n) for n in names} - {None}
        if not targets:
            skipped[f"{kind} label {names} not mapped"] += 1
            continue
        target = "lesion" if "lesion" in targets else IGNORE
        ow, oh = r.get("original_width"), r.get("original_height")
        if ow is None or oh is None:
            raise AnnotationError(
                f"{where}: a {kind} result has no original_width/original_height",
                hint="export from Label Studio >= 1.0 (results carry the image size)",
            )
        size = (int(ow), int(oh))
        if fa.size not in (None, size):
            raise AnnotationError(
                f"{where}: results disagree on the image size ({fa.size}, {size})"
            )
        fa.size = size
        try:
            if kind == "brushlabels":
                m = brush_rle_to_mask(value.get("rle") or [], size[1], size[0])
                _add_mask(fa, m, target)
            else:
                pts = value.get("points") or []
                if len(pts) < 3:
                    skipped["unfinished polygon (< 3 points)"] += 1
                    continue
                rings = [pct_to_px(pts, size[0], size[1])]
                (fa.polygons if target == "lesion" else fa.ignore_polygons).append(rings)
        except CamlabelError as exc:
            raise AnnotationError(f"{where}: {kind} cannot be read ({exc.message})") from None
        regions += 1
    if not regions:
        skipped["annotation without lesion regions"] += 1
        return None
    return fa


def _who(completed_by: Any) -> str:
    """``completed_by`` is a user id, or (in some exports) a user object."""
    if isinstance(completed_by, Mapping):
        return str(completed_by.get("email") or completed_by.get("id") or "unknown")
    return "unknown" if completed_by is None else str(completed_by)


def _add_mask(fa: ForeignAnnotation, m: np.ndarray, target: str) -> None:
    if target == "lesion":
        fa.mask = m if fa.mask is None else fa.mask | m
    else:
        fa.ignore_mask = m if fa.ignore_mask is None else fa.ignore_mask | m


def _ts(value: Any) -> str | None:
    from camlabel.backends.labelstudio.tasks import utc_timestamp

    return utc_timestamp(value) or None
