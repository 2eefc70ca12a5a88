"""SageMaker Ground Truth output manifest: semantic segmentation and crowd polygons.

- Semantic segmentation (``groundtruth/semantic-segmentation``): the label attribute holds the
  S3 URI of a colour PNG. Download the job's ``annotations/`` folder next to the manifest first
  (the PNG is looked up under the manifest's folder by its S3 key, then by its file name);
  its ``internal-color-map`` names the classes, mapped with ``--label-map``.
- Crowd polygons (camlabel's polygon job, ``groundtruth/custom``): one annotation per worker in
  ``workers[]``, or the consolidated ``annotatedResult``.
- Other task types (bounding boxes, classification, verification) are counted and skipped.

Lines carrying ``camlabel-image-id`` (jobs camlabel published) match that image directly; others
by the file name of ``source-ref``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from camlabel.errors import AnnotationError
from camlabel.interop.importers import (
    ForeignAnnotation,
    ImageRef,
    LabelMap,
    SkipCounter,
)


def read(files: Sequence[Path], labels: LabelMap, skipped: SkipCounter) -> list[ForeignAnnotation]:
    from camlabel.backends.groundtruth import convert as conv

    out: list[ForeignAnnotation] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as exc:
            raise AnnotationError(f"cannot read '{f}': {exc.strerror}") from exc
        for i, raw in enumerate(text.splitlines()):
            if not raw.strip():
                continue
            lines, problems = conv.parse_output_manifest(raw, "")
            if problems:
                raise AnnotationError(
                    f"'{f}' line {i + 1}: {problems[0][1]}",
                    hint="pass the output.manifest of the labeling job, unmodified",
                )
            out.extend(_line(f, i, lines[0].data, labels, skipped))
    return out


def _attributes(data: Mapping[str, Any]) -> list[str]:
    return [k[: -len("-metadata")] for k in data if k.endswith("-metadata") and k[:-9] in data]


def _line(
    f: Path, i: int, data: Mapping[str, Any], labels: LabelMap, skipped: SkipCounter
) -> list[ForeignAnnotation]:
    from camlabel.backends.groundtruth import convert as conv

    source = str(data.get("source-ref") or "")
    ref = ImageRef(
        name=Path(urlparse(source).path).name or f"line-{i + 1}",
        image_id=data.get(conv.IMAGE_ID_KEY),
    )
    out: list[ForeignAnnotation] = []
    for attr in _attributes(data):
        meta = data[f"{attr}-metadata"]
        kind = str(meta.get("type") or "")
        if meta.get("failure-reason"):
            skipped["object Ground Truth gave up on (failure-reason)"] += 1
            continue
        when = conv.iso_utc(meta.get("creation-date"), "") or None
        common = {"ref": ref, "source_file": str(f), "fmt": "groundtruth", "created_at": when}
        where = f"'{f}' line {i + 1} attribute {attr!r}"
        if kind in conv.SEMSEG_TYPES:
            out.append(_semseg(f, where, data[attr], meta, labels, skipped, common, f"{i}/{attr}"))
        elif kind in conv.POLYGON_TYPES or kind.startswith("groundtruth/custom"):
            out.extend(_polygons(where, data[attr], labels, skipped, common, f"{i}/{attr}"))
        else:
            skipped[f"Ground Truth task type {kind or 'unknown'!r}"] += 1
    return out


def _local_png(manifest: Path, uri: str) -> Path:
    parsed = urlparse(uri)
    for candidate in (
        manifest.parent / parsed.path.lstrip("/"),
        manifest.parent / Path(parsed.path).name,
    ):
        if candidate.is_file():
            return candidate
    raise AnnotationError(
        f"label image {uri} of '{manifest}' is not on this machine",
        hint=f"download it next to the manifest: aws s3 cp {uri} {manifest.parent}/",
    )


def _semseg(
    f: Path,
    where: str,
    uri: Any,
    meta: Mapping[str, Any],
    labels: LabelMap,
    skipped: SkipCounter,
    common: dict[str, Any],
    ann_id: str,
) -> ForeignAnnotation:
    from camlabel.backends.groundtruth import convert as conv

    cmap = meta.get("internal-color-map")
    try:
        classes = conv.decode_label_png(_local_png(f, str(uri)).read_bytes(), cmap)
    except AnnotationError as exc:
        raise AnnotationError(f"{where}: {exc.message}", hint=exc.hint) from None
    lesion = np.zeros(classes.shape, bool)
    ignore = np.zeros(classes.shape, bool)
    for idx in np.unique(classes).tolist():
        name = str((cmap or {}).get(str(idx), {}).get("class-name", idx))
        if name == conv.BACKGROUND:
            continue
        target = labels(name)
        if target is None:
            skipped[f"class '{name}' not mapped"] += 1
        elif target == "lesion":
            lesion |= classes == idx
        else:
            ignore |= classes == idx
    return ForeignAnnotation(
        annotation_id=ann_id,
        annotator=str(meta.get("job-name") or "groundtruth"),
        size=(classes.shape[1], classes.shape[0]),
        mask=lesion,
        ignore_mask=ignore if ignore.any() else None,
        **common,
    )


def _polygons(
    where: str,
    value: Any,
    labels: LabelMap,
    skipped: SkipCounter,
    common: dict[str, Any],
    ann_id: str,
) -> list[ForeignAnnotation]:
    from camlabel.backends.groundtruth import convert as conv

    if not isinstance(value, Mapping):
        raise AnnotationError(f"{where}: expected a crowd-polygon answer. Received: {value!r:.80}")
    if isinstance(value.get("workers"), list):
        answers = [
            (str(w.get("workerId") or "unknown"), w.get("annotatedResult"))
            for w in value["workers"]
        ]
    else:
        answers = [("consolidated", value.get("annotatedResult", value))]
    out = []
    for worker, result in answers:
        if not isinstance(result, Mapping) or not isinstance(result.get("polygons"), list):
            raise AnnotationError(f"{where} worker {worker}: the answer has no 'polygons' list")
        props = result.get("inputImageProperties") or {}
        size = (int(props["width"]), int(props["height"])) if "width" in props else None
        fa = ForeignAnnotation(
            annotation_id=f"{ann_id}/{worker}", annotator=worker, size=size, **common
        )
        for p in result["polygons"]:
            target = labels(p.get("label", "lesion"))
            verts = p.get("vertices") or []
            if target is None:
                skipped[f"polygon label '{p.get('label')}' not mapped"] += 1
                continue
            if len(verts) < 3:
                skipped["polygon with < 3 vertices"] += 1
                continue
            rings = [np.asarray(conv.gt_vertices_to_px(verts), dtype=float)]
            (fa.polygons if target == "lesion" else fa.ignore_polygons).append(rings)
        out.append(fa)
    return out
