"""``camlabel export``: the workspace's masks in the formats the field trains and views with.

Every image with a mask is exported (``--version N`` is not needed: the ledger's current mask
version is the one used, and the manifest ``camlabel-export.json`` in OUT lists each image's
mask version and SHA-256, so a training set can be rebuilt exactly). Regions annotators marked
"ignore" (V7 Darwin ``Ignore``) travel as an ignore label where the format has one.

Case names are ``cxr_<first 12 hex digits of the image id>``: stable when images are added, and
they carry no source file name or patient data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.errors import UsageError
from camlabel.records import ImageRecord, utcnow
from camlabel.workspace import Workspace

#: format name -> module under camlabel.interop.exporters (each defines ``write(items, out)``)
EXPORTERS: dict[str, str] = {
    "nnunet": "nnunet",
    "coco": "coco",
    "png": "png",
    "dicom-seg": "dicom_seg",
}
MANIFEST = "camlabel-export.json"


@dataclass(frozen=True)
class ExportItem:
    """One masked image on its way out."""

    ws: Workspace
    rec: ImageRecord
    case: str

    def image(self) -> np.ndarray:
        """The 8-bit display image (what annotators saw; its hash is the image id)."""
        import cv2

        arr = cv2.imread(str(self.ws.abs(self.rec.display_path)), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise UsageError(
                f"display image {self.rec.display_path} of {self.rec.image_id[:12]} is missing",
                hint="register the image again (camlabel add SOURCE -w WS)",
            )
        return np.asarray(arr)

    def mask(self) -> np.ndarray:
        from camlabel.imaging import read_mask_png

        assert self.rec.mask is not None
        return read_mask_png(self.ws.abs(self.rec.mask.path))

    def ignore(self) -> np.ndarray | None:
        """Union of the ignore regions of the annotations the mask came from, minus the lesion."""
        from camlabel.imaging import read_mask_png

        assert self.rec.mask is not None
        used = set(self.rec.mask.annotation_ids)
        paths = [
            a.ignore_path
            for a in self.rec.annotations
            if a.ignore_path and f"{a.backend}:{a.annotation_id}" in used
        ]
        if not paths:
            return None
        out = np.zeros((self.rec.height, self.rec.width), bool)
        for p in paths:
            out |= read_mask_png(self.ws.abs(p))
        return out & ~self.mask()


Writer = Callable[[Sequence[ExportItem], Path], dict[str, Any]]


def get_exporter(fmt: str) -> Writer:
    """The ``write`` function of a format; an unknown name lists the valid ones."""
    from camlabel.interop.common import load_format

    writer: Writer = load_format("export", EXPORTERS, "camlabel.interop.exporters", fmt, "write")
    return writer


def case_name(image_id: str) -> str:
    return f"cxr_{image_id[:12]}"


def patient_folds(items: Sequence[ExportItem], n_folds: int = 5) -> list[dict[str, list[str]]]:
    """nnU-Net style folds (``[{"train": [...], "val": [...]}, ...]``) grouped by patient.

    Images of one patient are always on the same side; an image without a patient id is its
    own group. Groups are dealt largest first to the fold with the fewest cases (deterministic).
    """
    groups: dict[str, list[str]] = {}
    for it in items:
        groups.setdefault(it.rec.patient_id or f"image:{it.rec.image_id}", []).append(it.case)
    k = max(1, min(n_folds, len(groups)))
    folds: list[list[str]] = [[] for _ in range(k)]
    for _, cases in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        min(folds, key=len).extend(cases)
    every = sorted(it.case for it in items)
    return [{"train": [c for c in every if c not in set(f)], "val": sorted(f)} for f in folds]


def iter_items(ws: Workspace, records: Sequence[ImageRecord]) -> Iterator[ExportItem]:
    for rec in sorted(records, key=lambda r: r.image_id):
        yield ExportItem(ws=ws, rec=rec, case=case_name(rec.image_id))


def export(
    ws: Workspace,
    fmt: str,
    out: Path,
    *,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Write every masked image of ``ws`` to ``out`` in ``fmt``; returns the manifest."""
    writer = get_exporter(fmt)
    records = [r for r in ws.ledger.all() if r.mask is not None]
    if not records:
        raise UsageError(
            "nothing to export: no image in the ledger has a mask",
            hint="pull masks (camlabel pull-masks) or import them (camlabel import-annotations)",
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise UsageError(
            f"{out} is not empty and holds no camlabel export",
            hint="export into a new or empty folder (a previous camlabel export is overwritten)",
        )
    items = list(iter_items(ws, records))
    manifest: dict[str, Any] = {
        "format": fmt,
        "workspace": str(ws.root),
        "created_at": utcnow(),
        "cases": [
            {
                "case": it.case,
                "image_id": it.rec.image_id,
                "mask_version": it.rec.mask.version if it.rec.mask else None,
                "mask_sha256": it.rec.mask.sha256 if it.rec.mask else None,
                "mask_path": it.rec.mask.path if it.rec.mask else None,
            }
            for it in items
        ],
    }
    if dry_run:
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest["written"] = writer(items, out)
    from camlabel.fileio import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    ws.record_run(
        "export",
        {"format": fmt, "out": str(out.resolve())},
        result={
            "cases": len(items),
            "mask_versions": {it.rec.image_id: it.rec.mask.version for it in items if it.rec.mask},
        },
    )
    return manifest
