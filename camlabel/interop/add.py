"""``camlabel add``: register images (PNG, JPEG, 16-bit, DICOM) without a classifier.

Images are keyed by the hash of their decoded pixels, so the same picture given twice (two
paths, or a copy in another folder) becomes one record and is reported once as a duplicate.
Patient ids come from a metadata CSV (``file,patient_id[,label]``) or, for DICOM, from the
Patient ID tag; either way they stay in the local ledger (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlabel.errors import UsageError
from camlabel.interop.common import read_table, resolve_beside
from camlabel.workspace import Workspace


@dataclass
class AddReport:
    """What ``add`` did: new records, images already in the ledger, duplicates, failures."""

    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    #: (path, image_id of the identical image met first in this run)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "already_present": len(self.already_present),
            "duplicates": [{"path": p, "image_id": i} for p, i in self.duplicates],
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
        }


def read_metadata_csv(path: Path) -> dict[str, dict[str, str]]:
    """``file`` -> ``{"patient_id": ..., "label": ...}`` from a CSV with a ``file`` column.

    Relative file names are taken relative to the CSV's folder (the key is the resolved path).
    """
    rows = read_table(
        path,
        "metadata",
        ["file"],
        hint="write a header line: file,patient_id,label (patient_id and label optional)",
    )
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("file"):
            out[resolve_beside(path, row["file"])] = {
                k: row[k] for k in ("patient_id", "label") if row.get(k)
            }
    return out


def dicom_patient_id(path: Path) -> str | None:
    """The Patient ID tag of a DICOM file (None for other formats or when absent)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # not DICOM (PNG/JPEG) or unreadable header: no patient id
        return None
    value = str(getattr(ds, "PatientID", "") or "").strip()
    return value or None


def add_images(
    ws: Workspace,
    inputs: Sequence[str | Path],
    *,
    label: str | None = None,
    metadata: Path | None = None,
    progress: bool = False,
) -> AddReport:
    """Register the images under ``inputs`` (files or folders, recursing) in ``ws``."""
    from camlabel.imaging import iter_image_paths

    if label is not None and label not in ws.classes:
        raise UsageError(
            f"--label must be one of the workspace classes {list(ws.classes)}. Received: {label!r}",
            hint="leave --label out for images whose class is unknown",
        )
    meta = read_metadata_csv(metadata) if metadata is not None else {}
    bad = sorted({m["label"] for m in meta.values() if "label" in m} - set(ws.classes))
    if bad:
        raise UsageError(
            f"metadata CSV '{metadata}' names labels {bad} that are not workspace classes "
            f"{list(ws.classes)}",
            hint="fix the label column, or create the workspace with those --classes",
        )
    paths = iter_image_paths(inputs)
    if not paths:
        raise UsageError(
            f"no image files under {[str(i) for i in inputs]}",
            hint="give PNG, JPEG, TIFF or DICOM files, or folders that contain them",
        )
    labels: dict[str, str] = {}
    patients: dict[str, str] = {}
    for p in paths:
        key = str(p.resolve())
        row = meta.get(key, {})
        lab = row.get("label", label)
        if lab:
            labels[key] = lab
        pid = row.get("patient_id") or dicom_patient_id(p)
        if pid:
            patients[key] = pid
    before = {r.image_id for r in ws.ledger.all()}
    records, failures = ws.register_images(
        paths, labels=labels, patient_ids=patients, progress=progress
    )
    report = AddReport(failures=list(failures))
    failed = {f for f, _ in failures}
    ok_paths = [p for p in paths if str(p) not in failed]
    seen: set[str] = set()
    for path, rec in zip(ok_paths, records, strict=True):
        if rec.image_id in seen:
            report.duplicates.append((str(path), rec.image_id))
        elif rec.image_id in before:
            report.already_present.append(rec.image_id)
        else:
            report.added.append(rec.image_id)
        seen.add(rec.image_id)
    ws.record_run(
        "add",
        {"inputs": [str(i) for i in inputs], "label": label, "metadata": str(metadata or "")},
        result=report.to_json(),
    )
    return report
