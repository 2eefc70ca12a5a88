"""``camlabel import-annotations``: foreign annotation files -> ledger annotations -> masks.

The whole batch is read, matched and rasterized before anything is written; a problem anywhere
(an unreadable file, an image that matches nothing, a size that does not fit) stops the import
with every problem listed, and the ledger is left as it was. What cannot become a lesion mask
(rectangles, keypoints, boxes, labels not mapped to the lesion class) is counted per kind and
skipped, never rasterized. The rasters of the accepted annotations are then written and the
ledger updated in one transaction; consensus and mask versions follow the pull-masks rules
(:func:`camlabel.loop.merge_annotations`).

Images are matched, in order, by a camlabel image id the file carries, by the content hash of an
image file the annotation file points at, by a ``--mapping`` CSV (``name,image``: a file name as
the annotation file writes it, and an image file or image id), and by file name (with or without
its extension) against the source files of the ledger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.errors import AnnotationError, BatchError, CamlabelError, UsageError
from camlabel.interop.common import read_table, resolve_beside
from camlabel.interop.importers import ForeignAnnotation, LabelMap, SkipCounter, get_importer
from camlabel.records import Annotation, ImageRecord, utcnow
from camlabel.workspace import Workspace

IMPORT_BACKEND = "import"
#: widths/heights whose aspect ratios differ by more than this are different pictures
ASPECT_TOLERANCE = 0.02


@dataclass
class ImportReport:
    """What an import did (or, with dry_run, would do)."""

    fmt: str
    files: int = 0
    annotations: int = 0
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    masks_written: int = 0
    masks_unchanged: int = 0
    waiting_for_annotations: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            "files": self.files,
            "annotations": self.annotations,
            "images": self.images,
            "skipped": dict(sorted(self.skipped.items())),
            "unmatched": list(self.unmatched),
            "masks_written": self.masks_written,
            "masks_unchanged": self.masks_unchanged,
            "waiting_for_annotations": self.waiting_for_annotations,
            "dry_run": self.dry_run,
        }


@dataclass
class _Ready:
    """One matched, rasterized annotation waiting to be written."""

    image_id: str
    annotation: Annotation
    mask: np.ndarray
    ignore: np.ndarray | None


def read_mapping_csv(path: Path) -> dict[str, str]:
    """``name`` -> image file (resolved) or image id, from a CSV with ``name`` and ``image`` columns."""
    rows = read_table(
        path,
        "mapping",
        ["name", "image"],
        hint="name = the image file name as the annotation file writes it; "
        "image = an image file on this machine or a camlabel image id",
    )
    out: dict[str, str] = {}
    for row in rows:
        name, image = row.get("name", ""), row.get("image", "")
        if name and image:
            out[name] = image if _is_image_id(image) else resolve_beside(path, image)
    return out


def _is_image_id(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


class _Matcher:
    """Finds the ledger record an annotation file's image reference means."""

    def __init__(self, records: Sequence[ImageRecord], mapping: dict[str, str]) -> None:
        self.by_id = {r.image_id: r for r in records}
        self.mapping = mapping
        self.by_name: dict[str, set[str]] = {}
        for r in records:
            for key in _name_keys(r.source_path):
                self.by_name.setdefault(key, set()).add(r.image_id)
        self._hashed: dict[Path, str | None] = {}

    def match(self, fa: ForeignAnnotation) -> tuple[ImageRecord | None, str]:
        """(record, how) or (None, why not)."""
        ref = fa.ref
        if ref.image_id and ref.image_id in self.by_id:
            return self.by_id[ref.image_id], "image id"
        if ref.path is not None:
            rec = self.by_id.get(self._hash(ref.path) or "")
            if rec is not None:
                return rec, "content hash"
        target = self.mapping.get(ref.name) or self.mapping.get(Path(ref.name).name)
        if target is not None:
            image_id = target if _is_image_id(target) else self._hash(Path(target))
            rec = self.by_id.get(image_id or "")
            if rec is None:
                return (
                    None,
                    f"the mapping CSV points '{ref.name}' at {target}, which is not in the ledger",
                )
            return rec, "mapping CSV"
        for key in _name_keys(ref.name):
            ids = self.by_name.get(key, set())
            if len(ids) == 1:
                return self.by_id[next(iter(ids))], "file name"
            if len(ids) > 1:
                return None, f"the name '{ref.name}' fits {len(ids)} images of the ledger"
        return None, f"no image of the ledger is named '{ref.name}'"

    def _hash(self, path: Path) -> str | None:
        from camlabel.imaging import read_image

        path = path.resolve()
        if path not in self._hashed:
            try:
                self._hashed[path] = read_image(path).image_id
            except CamlabelError:
                self._hashed[path] = None
        return self._hashed[path]


def _name_keys(name: str) -> list[str]:
    """A file name, then its stem (lower case): ``a/B.png`` -> ``["b.png", "b"]``."""
    n = Path(name).name.lower()
    stem = Path(n).stem
    return [n, stem] if stem and stem != n else [n]


def rasterize(fa: ForeignAnnotation, rec: ImageRecord) -> tuple[np.ndarray, np.ndarray | None]:
    """Lesion and ignore masks of ``fa`` at the size of ``rec`` (polygons scaled if needed)."""
    from camlabel.geometry import PolygonPx, polygons_to_mask

    w, h = fa.size or (rec.width, rec.height)
    if (w, h) != (rec.width, rec.height):
        if abs((w / h) / (rec.width / rec.height) - 1) > ASPECT_TOLERANCE:
            raise AnnotationError(
                f"{fa.source_file}: annotation {fa.annotation_id} was drawn on a {w}x{h} image but "
                f"the matched image is {rec.width}x{rec.height} px (another aspect ratio)",
                hint="the annotation belongs to another picture; fix the --mapping CSV",
            )
        if fa.mask is not None or fa.ignore_mask is not None:
            raise AnnotationError(
                f"{fa.source_file}: mask of annotation {fa.annotation_id} is {w}x{h} px but the "
                f"matched image is {rec.width}x{rec.height} px",
                hint="register the image at the size the mask was drawn on",
            )
    sx, sy = rec.width / w, rec.height / h

    def polys(rings_list: list[list[np.ndarray]]) -> np.ndarray:
        ps = [
            PolygonPx(rings[0] * (sx, sy), tuple(r * (sx, sy) for r in rings[1:]))
            for rings in rings_list
        ]
        return polygons_to_mask(ps, rec.height, rec.width)

    def checked(m: np.ndarray) -> np.ndarray:
        if m.shape != (rec.height, rec.width):
            raise AnnotationError(
                f"{fa.source_file}: mask of annotation {fa.annotation_id} is "
                f"{m.shape[1]}x{m.shape[0]} px but the matched image is {rec.width}x{rec.height} px",
                hint="register the image at the size the mask was drawn on",
            )
        return m.astype(bool)

    try:
        lesion = polys(fa.polygons)
        ignore = polys(fa.ignore_polygons) if fa.ignore_polygons else None
    except CamlabelError as exc:
        raise AnnotationError(
            f"{fa.source_file}: annotation {fa.annotation_id} has an invalid polygon ({exc.message})"
        ) from None
    if fa.mask is not None:
        lesion |= checked(fa.mask)
    if fa.ignore_mask is not None:
        ignore = checked(fa.ignore_mask) | (ignore if ignore is not None else False)
    return lesion, ignore


def import_annotations(
    ws: Workspace,
    files: Sequence[Path],
    fmt: str,
    *,
    label_map: Sequence[str] = (),
    mapping: Path | None = None,
    skip_unmatched: bool = False,
    dry_run: bool = False,
    consensus_rule: str | None = None,
    min_annotations: int | None = None,
) -> ImportReport:
    """Import ``files`` of format ``fmt``; all or nothing (see the module docstring)."""
    reader = get_importer(fmt)
    files = [Path(f) for f in files]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {missing}")
    names = (ws.settings.workspace.lesion_label, *ws.lesion_classes)
    labels = LabelMap.build(names, label_map)
    skipped = SkipCounter()
    foreign = reader(files, labels, skipped)
    matcher = _Matcher(ws.ledger.all(), read_mapping_csv(mapping) if mapping else {})
    report = ImportReport(fmt=fmt, files=len(files), dry_run=dry_run)
    problems: list[tuple[str, str]] = []
    ready: list[_Ready] = []
    for fa in foreign:
        rec, how = matcher.match(fa)
        if rec is None:
            report.unmatched.append(fa.ref.name)
            if not skip_unmatched:
                problems.append((f"{fa.source_file} ({fa.ref.name})", how))
            continue
        try:
            lesion, ignore = rasterize(fa, rec)
        except AnnotationError as exc:
            problems.append((fa.source_file, exc.message))
            continue
        ready.append(_Ready(rec.image_id, _annotation(fa, how), lesion, ignore))
    report.skipped = dict(skipped)
    if problems:
        raise BatchError(
            f"nothing imported: {len(problems)} problem(s) in {len(files)} file(s)",
            problems,
            hint="fix them (--mapping CSV for names that do not match, or camlabel add the "
            "images first), or pass --skip-unmatched to import the rest",
        )
    report.annotations = len(ready)
    report.images = len({r.image_id for r in ready})
    if dry_run:
        return report
    _commit(ws, ready, report, consensus_rule, min_annotations)
    ws.record_run(
        "import-annotations",
        {
            "format": fmt,
            "files": [str(f) for f in files],
            "label_map": list(label_map),
            "mapping": str(mapping or ""),
            "skip_unmatched": skip_unmatched,
        },
        result=report.to_json(),
    )
    return report


def _annotation(fa: ForeignAnnotation, how: str) -> Annotation:
    created = fa.created_at or utcnow()
    key = hashlib.sha256(f"{fa.fmt}\0{Path(fa.source_file).name}\0{fa.annotation_id}".encode())
    return Annotation(
        backend=IMPORT_BACKEND,
        annotation_id=f"{fa.fmt}-{key.hexdigest()[:16]}",
        annotator=fa.annotator,
        status=fa.status,
        created_at=created,
        updated_at=fa.updated_at or created,
        origin={
            "format": fa.fmt,
            "file": fa.source_file,
            "annotator": fa.annotator,
            "id": fa.annotation_id,
            "matched_by": how,
        },
    )


def _commit(
    ws: Workspace,
    ready: list[_Ready],
    report: ImportReport,
    rule: str | None,
    k: int | None,
) -> None:
    import dataclasses

    from camlabel.imaging import write_png_atomic
    from camlabel.loop import PullSummary, merge_annotations

    by_image: dict[str, list[Annotation]] = {}
    for r in ready:
        folder = ws.dir("annotations") / r.image_id
        raster = folder / f"{r.annotation.backend}-{r.annotation.annotation_id}.png"
        write_png_atomic(raster, r.mask)
        ann = dataclasses.replace(r.annotation, raster_path=ws.rel(raster))
        if r.ignore is not None:
            ignore = folder / f"{r.annotation.backend}-{r.annotation.annotation_id}-ignore.png"
            write_png_atomic(ignore, r.ignore)
            ann = dataclasses.replace(ann, ignore_path=ws.rel(ignore))
        by_image.setdefault(r.image_id, []).append(ann)
    summary = PullSummary(backend=IMPORT_BACKEND)
    with ws.ledger.transaction() as txn:
        for image_id, anns in by_image.items():
            rec = txn.get(image_id)
            if rec is None:  # removed by a concurrent writer since the match
                raise AnnotationError(f"image {image_id[:12]} left the ledger during the import")
            new = merge_annotations(ws, rec, anns, summary, consensus_rule=rule, min_annotations=k)
            txn.put(new)
    report.masks_written = summary.masks_written
    report.masks_unchanged = summary.masks_unchanged
    report.waiting_for_annotations = len(summary.waiting_for_annotations)
