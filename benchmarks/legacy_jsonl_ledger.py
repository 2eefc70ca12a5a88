"""camlabel's JSON Lines ledger as it was before the SQLite ledger (frozen copy, for comparisons).

Used by benchmarks/scale.py (the old ledger side by side with the new) and by
tests/unit/test_ledger_sqlite.py (a ledger written by the old code migrates record by record).
Not part of the package; do not import it from camlabel.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from camlabel.errors import LedgerError
from camlabel.ledger import atomic_write_text
from camlabel.records import STATES, ImageRecord


class LedgerTransaction:
    """A mutable view of the ledger inside a lock; written once on successful exit."""

    def __init__(self, records: dict[str, ImageRecord]) -> None:
        self._records = records
        self.dirty = False

    def get(self, image_id: str) -> ImageRecord | None:
        return self._records.get(image_id)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._records

    def all(self) -> list[ImageRecord]:
        return list(self._records.values())

    def put(self, record: ImageRecord) -> None:
        """Insert or replace the record with this ``image_id``."""
        self._records[record.image_id] = record
        self.dirty = True

    def update(self, image_id: str, fn: Callable[[ImageRecord], ImageRecord]) -> ImageRecord:
        rec = self._records.get(image_id)
        if rec is None:
            raise LedgerError(
                f"no image {image_id[:12]}… in the ledger",
                hint="register it first (camlabel gradcam / push-jobs register images they see)",
            )
        new = fn(rec)
        if new.image_id != image_id:
            raise LedgerError(
                f"an update may not change image_id ({image_id[:12]} -> {new.image_id[:12]})"
            )
        self.put(new)
        return new


class Ledger:
    """JSON Lines ledger at ``path`` (``<workspace>/ledger.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")
        self.runs_path = self.path.parent / "runs.jsonl"

    # -- reading ---------------------------------------------------------------
    def _load(self) -> dict[str, ImageRecord]:
        if not self.path.exists():
            return {}
        records: dict[str, ImageRecord] = {}
        with self.path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = ImageRecord.from_json(json.loads(line))
                except (json.JSONDecodeError, LedgerError, TypeError) as exc:
                    raise LedgerError(
                        f"{self.path}:{lineno}: invalid ledger line ({exc})",
                        hint="restore the file from a backup or remove that line; "
                        "camlabel never writes partial lines",
                    ) from exc
                records[rec.image_id] = rec
        return records

    def all(self) -> list[ImageRecord]:
        """All records (a consistent snapshot: the file is only ever replaced atomically)."""
        return list(self._load().values())

    def get(self, image_id: str) -> ImageRecord | None:
        return self._load().get(image_id)

    def __len__(self) -> int:
        return len(self._load())

    def counts_by_state(self) -> dict[str, int]:
        counts = Counter(r.state for r in self.all())
        return {s: counts.get(s, 0) for s in STATES}

    # -- writing ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, records: Iterable[ImageRecord]) -> None:
        lines = [json.dumps(r.to_json(), sort_keys=True, separators=(",", ":")) for r in records]
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """Lock, load, yield a mutable view; write once if changed and no exception."""
        with self._locked():
            txn = LedgerTransaction(self._load())
            yield txn
            if txn.dirty:
                self._write(txn.all())

    def put(self, record: ImageRecord) -> None:
        with self.transaction() as txn:
            txn.put(record)

    def put_many(self, records: Iterable[ImageRecord]) -> None:
        with self.transaction() as txn:
            for r in records:
                txn.put(r)

    def update(self, image_id: str, fn: Callable[[ImageRecord], ImageRecord]) -> ImageRecord:
        with self.transaction() as txn:
            return txn.update(image_id, fn)


def status_by_pass(recs: list[ImageRecord], root: Path) -> dict[str, Any]:
    """camlabel status as it was computed before (loop.workspace_status): one pass over
    every parsed record."""
    states = {
        s: 0 for s in ("registered", "preannotated", "pushed", "skipped", "annotated", "masked")
    }
    for r in recs:
        states[r.state] += 1
    backends: dict[str, dict[str, int]] = {}
    for r in recs:
        for name in r.jobs:
            b = backends.setdefault(name, {"tasks": 0, "annotated": 0, "skipped": 0})
            b["tasks"] += 1
            anns = [a for a in r.annotations if a.backend == name and a.status != "deleted"]
            if any(a.status == "submitted" for a in anns):
                b["annotated"] += 1
            elif anns:
                b["skipped"] += 1
    submitted = [a for r in recs for a in r.annotations if a.status == "submitted"]
    accepted = [a.accepted_unchanged for a in submitted if a.accepted_unchanged is not None]
    lead = [a.lead_time_s for a in submitted if a.lead_time_s is not None]
    masks = [r.mask for r in recs if r.mask is not None]
    pre_iou = [m.preannotation_iou for m in masks if m.preannotation_iou is not None]
    agree = [m.agreement_dice for m in masks if m.agreement_dice is not None]
    labels: dict[str, int] = {}
    for r in recs:
        key = "unknown" if r.label is None else r.label
        labels[key] = labels.get(key, 0) + 1
    return {
        "workspace": str(root),
        "images": len(recs),
        "states": states,
        "labels": labels,
        "backends": backends,
        "effort": {
            "annotated": len(submitted),
            "accepted_unchanged_share": (sum(accepted) / len(accepted)) if accepted else None,
            "preannotation_iou_mean": statistics.fmean(pre_iou) if pre_iou else None,
            "lead_time_s_median": statistics.median(lead) if lead else None,
        },
        "masks": {
            "count": len(masks),
            "agreement_dice_mean": statistics.fmean(agree) if agree else None,
            "multi_annotator": len(agree),
        },
    }
