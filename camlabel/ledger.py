"""The workspace ledger: one JSON line per image, keyed by content hash.

Guarantees:
- **Atomic**: every write goes to a temp file in the same folder, is fsync'ed, then
  renamed over ``ledger.jsonl``; a crash leaves the old or the new file, never half a line.
- **Serialized**: writers take an exclusive ``fcntl.flock`` on ``ledger.lock``; a
  transaction re-reads the file under the lock, so concurrent writers never lose updates.
- **No duplicates**: records are keyed by ``image_id``; a re-run updates in place.

Use :meth:`Ledger.transaction` for batches (one rewrite per batch, not per record).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from camlabel.errors import LedgerError
from camlabel.records import STATES, ImageRecord, utcnow


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename (same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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

    # -- run log ---------------------------------------------------------------
    def append_run(self, run: dict[str, Any]) -> dict[str, Any]:
        """Append one run record (command, settings, seeds, versions) to ``runs.jsonl``.

        The run log is append-only; the append happens under the ledger lock and is a
        single ``write`` of one line, so lines never interleave.
        """
        run = {"recorded_at": utcnow(), **run}
        line = json.dumps(run, sort_keys=True, default=str) + "\n"
        with self._locked(), self.runs_path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return run

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.runs_path.exists():
            return []
        out = []
        for line in self.runs_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed process: ignore, never fatal
            if kind is None or run.get("kind") == kind:
                out.append(run)
        return out
