"""The workspace ledger: one SQLite row per image, keyed by content hash.

Guarantees:
- **Atomic**: a transaction is one SQLite transaction (WAL journal); a process crash at any
  point, ``kill -9`` included, leaves the last committed state. Commits are not fsync'ed one
  by one (``synchronous=NORMAL``, SQLite's setting for WAL): after a power loss or OS crash
  the ledger is still consistent but may lack its last commits, which a re-run redoes.
  ``transaction(durable=True)`` fsyncs that commit, for a write that something outside the
  ledger (the pull cursor) relies on.
- **Serialized**: a transaction starts with ``BEGIN IMMEDIATE`` (the single write lock) and
  reads under it, so concurrent writers never lose updates; readers never block on a writer.
- **No duplicates**: rows are keyed by ``image_id``; a re-run updates in place.
- **Flat per-image cost**: reads are by index; a commit writes only the records it changed;
  status-like counts come from indexed columns (state, round, label, backend job, mask,
  submitted-annotation telemetry) kept beside the nested record (stored as JSON).

The diff-able interchange format stays JSON Lines, one :class:`ImageRecord` per line
(schema ``manifests/ledger.schema.json``): :meth:`Ledger.export_jsonl` /
:meth:`Ledger.import_jsonl`. A workspace's old ``ledger.jsonl`` is migrated automatically on
first open and kept as ``ledger.jsonl.migrated-<UTC timestamp>``.

Use :meth:`Ledger.transaction` for batches (one commit per batch, not per record).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlabel.errors import LedgerError
from camlabel.fileio import atomic_write_text
from camlabel.records import STATES, ImageRecord, JobRef, utcnow

log = logging.getLogger("camlabel.ledger")

#: the file name of the SQLite ledger inside a workspace
LEDGER_DB = "ledger.db"
#: the pre-SQLite ledger file, migrated on first open
LEGACY_JSONL = "ledger.jsonl"

#: indexed columns that :meth:`Ledger.count_by` may group on
COUNT_COLUMNS = ("state", "round", "label", "mask_consensus")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY,
    image_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    round INTEGER,
    label TEXT,
    has_preannotation INTEGER NOT NULL,
    mask_consensus TEXT,
    mask_agreement REAL,
    mask_preannotation_iou REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_state ON images(state);
CREATE INDEX IF NOT EXISTS images_round ON images(round);
CREATE INDEX IF NOT EXISTS images_label ON images(label);
CREATE INDEX IF NOT EXISTS images_pre ON images(has_preannotation, image_id);
CREATE INDEX IF NOT EXISTS images_mask
    ON images(mask_consensus, mask_agreement, mask_preannotation_iou);
CREATE TABLE IF NOT EXISTS jobs (
    image_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    project TEXT NOT NULL,
    task TEXT NOT NULL,
    annotation_state TEXT,
    job TEXT NOT NULL,
    PRIMARY KEY (image_id, backend)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_task ON jobs(backend, task);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(backend, annotation_state);
CREATE TABLE IF NOT EXISTS submitted (
    image_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    annotation_id TEXT NOT NULL,
    accepted_unchanged INTEGER,
    lead_time_s REAL,
    PRIMARY KEY (image_id, backend, annotation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS submitted_lead ON submitted(lead_time_s);
CREATE INDEX IF NOT EXISTS submitted_accepted ON submitted(accepted_unchanged);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

_UPSERT = (
    "INSERT INTO images (image_id, state, round, label, has_preannotation, mask_consensus, "
    "mask_agreement, mask_preannotation_iou, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(image_id) DO UPDATE SET state=excluded.state, round=excluded.round, "
    "label=excluded.label, has_preannotation=excluded.has_preannotation, "
    "mask_consensus=excluded.mask_consensus, mask_agreement=excluded.mask_agreement, "
    "mask_preannotation_iou=excluded.mask_preannotation_iou, record=excluded.record"
)


def record_line(rec: ImageRecord) -> str:
    """One interchange line (no newline): sorted keys, compact, as ``ledger.jsonl`` had it."""
    return json.dumps(rec.to_json(), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- JSONL reading
@dataclass
class JsonlRead:
    """Records parsed from a JSON Lines ledger, plus what was suspicious about the file."""

    records: dict[str, ImageRecord] = field(default_factory=dict)
    #: human-readable warnings (duplicate images); the read itself succeeded
    warnings: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> JsonlRead:
    """Parse a JSON Lines ledger strictly, naming the file and line of any problem.

    A torn or invalid line and non-UTF-8 bytes raise :class:`LedgerError`; two lines for one
    image are accepted (the last wins, as the JSONL ledger always did) with a warning.
    """
    out = JsonlRead()
    first_line: dict[str, int] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LedgerError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1})",
                    hint="the file was edited or copied with another encoding; restore it from "
                    "a backup or fix that line (a ledger is always written as UTF-8)",
                ) from exc
            if not line.strip():
                continue
            try:
                rec = ImageRecord.from_json(json.loads(line))
            except json.JSONDecodeError as exc:
                raise LedgerError(
                    f"{path}:{lineno}: invalid ledger line (torn or not JSON: {exc.msg} at "
                    f"column {exc.colno})",
                    hint="restore the file from a backup or remove that line; "
                    "camlabel never writes partial lines",
                ) from exc
            except (LedgerError, TypeError) as exc:
                raise LedgerError(
                    f"{path}:{lineno}: invalid ledger line ({exc})",
                    hint="fix or remove that line (the schema is manifests/ledger.schema.json)",
                ) from exc
            if rec.image_id in first_line:
                out.warnings.append(
                    f"{path}:{lineno}: image {rec.image_id[:12]}… already on line "
                    f"{first_line[rec.image_id]}; the later line wins"
                )
            first_line[rec.image_id] = lineno
            out.records[rec.image_id] = rec
    return out


# --------------------------------------------------------------------------- transactions
class LedgerTransaction:
    """A view of the ledger under the write lock; the changed records are written on exit."""

    def __init__(self, ledger: Ledger, conn: sqlite3.Connection) -> None:
        self._ledger = ledger
        self._conn = conn
        self._changed: dict[str, ImageRecord] = {}
        self.dirty = False

    def get(self, image_id: str) -> ImageRecord | None:
        if image_id in self._changed:
            return self._changed[image_id]
        return self._ledger._read_one(self._conn, image_id)

    def get_many(self, image_ids: Iterable[str]) -> dict[str, ImageRecord]:
        ids = list(image_ids)
        out = self._ledger._read_many(self._conn, [i for i in ids if i not in self._changed])
        out.update({i: self._changed[i] for i in ids if i in self._changed})
        return out

    def __contains__(self, image_id: str) -> bool:
        return self.get(image_id) is not None

    def all(self) -> list[ImageRecord]:
        """Every record (O(N): for whole-ledger passes only, never per item)."""
        recs = {r.image_id: r for r in self._ledger._read_all(self._conn)}
        recs.update(self._changed)
        return list(recs.values())

    def put(self, record: ImageRecord) -> None:
        """Insert or replace the record with this ``image_id``."""
        self._changed[record.image_id] = record
        self.dirty = True

    def update(self, image_id: str, fn: Callable[[ImageRecord], ImageRecord]) -> ImageRecord:
        rec = self.get(image_id)
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

    @property
    def changed(self) -> list[ImageRecord]:
        return list(self._changed.values())


# --------------------------------------------------------------------------- the ledger
class Ledger:
    """The SQLite ledger at ``path`` (``<workspace>/ledger.db``).

    ``Ledger(WS / "ledger.jsonl")`` is accepted too and means the database beside it
    (``ledger.db``), migrating that file on first open.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.suffix == ".jsonl":
            self.jsonl_path = path
            self.path = path.with_suffix(".db")
        else:
            self.path = path
            self.jsonl_path = path.with_suffix(".jsonl")
        self.lock_path = self.path.with_suffix(".lock")
        self.runs_path = self.path.parent / "runs.jsonl"
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}
        self._guard = threading.Lock()

    # -- connection ---------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This process's and thread's connection (a forked child opens its own)."""
        key = (os.getpid(), threading.get_ident())
        conn = self._conns.get(key)
        if conn is not None:
            return conn
        with self._guard:
            if key[0] not in {k[0] for k in self._conns}:
                self._conns = {}  # inherited from a parent process: never reuse
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(
                    self.path, timeout=120, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages per connection
                conn.execute("PRAGMA mmap_size=2147418112")  # reads from the OS cache, no copy
                conn.execute("PRAGMA foreign_keys=OFF")
                conn.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise LedgerError(
                    f"{self.path}: cannot open the ledger database ({exc})",
                    hint="restore it from a backup, or rebuild it with "
                    "camlabel ledger import FILE.jsonl from an export",
                ) from exc
            self._conns[key] = conn
        if self.jsonl_path.exists():
            self._migrate_jsonl(conn)
        return conn

    def __getstate__(self) -> dict[str, Any]:
        # connections and locks stay with their process: a pickled ledger reconnects
        return {k: v for k, v in self.__dict__.items() if k not in ("_conns", "_guard")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._conns = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        """Close this process's connections (they also close when the object is collected)."""
        pid = os.getpid()
        for key, conn in list(self._conns.items()):
            if key[0] == pid:
                conn.close()
            del self._conns[key]

    @contextlib.contextmanager
    def _write_txn(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    @contextlib.contextmanager
    def _read_txn(conn: sqlite3.Connection) -> Iterator[None]:
        """One snapshot for several reads (inside an open write transaction: that one)."""
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    # -- migration from ledger.jsonl -------------------------------------------------
    def _migrate_jsonl(self, conn: sqlite3.Connection) -> None:
        src = self.jsonl_path
        with self._write_txn(conn):
            if not src.exists():  # another process migrated it meanwhile
                return
            st = src.stat()
            ident = f"{st.st_size}:{st.st_mtime_ns}"
            row = conn.execute("SELECT value FROM meta WHERE key = 'migrated_jsonl'").fetchone()
            if row is None or row[0] != ident:
                parsed = read_jsonl(src)
                for w in parsed.warnings:
                    log.warning("migrating the ledger: %s", w)
                self._write_records(conn, parsed.records.values())
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_jsonl', ?)",
                    (ident,),
                )
                log.info("migrated %d records from %s to %s", len(parsed.records), src, self.path)
        # The commit above recorded the file's identity, so a crash before this rename
        # only repeats the rename on the next open, never the import over newer writes.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = src.with_name(f"{src.name}.migrated-{stamp}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(src, backup)

    # -- low-level reads and writes ---------------------------------------------------
    @staticmethod
    def _parse(raw: str) -> ImageRecord:
        return ImageRecord.from_json(json.loads(raw))

    def _read_one(self, conn: sqlite3.Connection, image_id: str) -> ImageRecord | None:
        row = conn.execute("SELECT record FROM images WHERE image_id = ?", (image_id,)).fetchone()
        return None if row is None else self._parse(row[0])

    def _read_many(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, ImageRecord]:
        out: dict[str, ImageRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for iid, raw in conn.execute(
                f"SELECT image_id, record FROM images WHERE image_id IN ({marks})", chunk
            ):
                out[iid] = self._parse(raw)
        return out

    def _read_all(self, conn: sqlite3.Connection) -> Iterator[ImageRecord]:
        for (raw,) in conn.execute("SELECT record FROM images ORDER BY seq"):
            yield self._parse(raw)

    @staticmethod
    def _write_records(conn: sqlite3.Connection, records: Iterable[ImageRecord]) -> None:
        rows, jobs, subs, ids = [], [], [], []
        for r in records:
            ids.append((r.image_id,))
            m = r.mask
            # the labeling round the image was first published in (JobRef.round)
            rounds = [j.round for j in r.jobs.values() if isinstance(j.round, int)]
            rnd = min(rounds) if rounds else None
            rows.append(
                (
                    r.image_id,
                    r.state,
                    rnd if isinstance(rnd, int) else None,
                    r.label,
                    int(r.preannotation is not None),
                    m.consensus if m is not None else None,
                    m.agreement_dice if m is not None else None,
                    m.preannotation_iou if m is not None else None,
                    record_line(r),
                )
            )
            for name, job in r.jobs.items():
                anns = [a for a in r.annotations if a.backend == name and a.status != "deleted"]
                ann_state = (
                    "annotated"
                    if any(a.status == "submitted" for a in anns)
                    else ("skipped" if anns else None)
                )
                jobs.append(
                    (
                        r.image_id,
                        name,
                        str(job.project),
                        str(job.task),
                        ann_state,
                        json.dumps(job.to_json(), sort_keys=True, separators=(",", ":")),
                    )
                )
            for a in r.annotations:
                if a.status == "submitted":
                    acc = a.accepted_unchanged
                    subs.append(
                        (
                            r.image_id,
                            a.backend,
                            a.annotation_id,
                            None if acc is None else int(acc),
                            a.lead_time_s,
                        )
                    )
        conn.executemany(_UPSERT, rows)
        conn.executemany("DELETE FROM jobs WHERE image_id = ?", ids)
        conn.executemany("DELETE FROM submitted WHERE image_id = ?", ids)
        conn.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)", jobs)
        conn.executemany("INSERT OR REPLACE INTO submitted VALUES (?, ?, ?, ?, ?)", subs)

    # -- reading ---------------------------------------------------------------------
    def all(self) -> list[ImageRecord]:
        """All records in insertion order (a consistent snapshot)."""
        return list(self.iter_records())

    def iter_records(self) -> Iterator[ImageRecord]:
        """All records, streamed in insertion order (one read transaction)."""
        conn = self._conn()
        with self._read_txn(conn):
            yield from self._read_all(conn)

    def get(self, image_id: str) -> ImageRecord | None:
        return self._read_one(self._conn(), image_id)

    def get_many(self, image_ids: Iterable[str]) -> dict[str, ImageRecord]:
        """The records of these ids that exist (one indexed query per 500 ids)."""
        return self._read_many(self._conn(), list(image_ids))

    def __contains__(self, image_id: str) -> bool:
        row = (
            self._conn().execute("SELECT 1 FROM images WHERE image_id = ?", (image_id,)).fetchone()
        )
        return row is not None

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM images").fetchone()[0])

    def count_by(self, column: str) -> dict[Any, int]:
        """Record counts grouped by one indexed column (``state``, ``round``, ``label``...)."""
        if column not in COUNT_COLUMNS:
            raise LedgerError(f"count_by: unknown column {column!r}; known: {list(COUNT_COLUMNS)}")
        rows = self._conn().execute(f"SELECT {column}, count(*) FROM images GROUP BY {column}")
        return {k: int(n) for k, n in rows}

    def counts_by_state(self) -> dict[str, int]:
        counts = self.count_by("state")
        return {s: counts.get(s, 0) for s in STATES}

    def ids_in_state(self, *states: str) -> list[str]:
        """Image ids (sorted) whose state is one of ``states``."""
        marks = ",".join("?" * len(states))
        rows = self._conn().execute(
            f"SELECT image_id FROM images WHERE state IN ({marks}) ORDER BY image_id", states
        )
        return [r[0] for r in rows]

    def with_preannotation(self) -> Iterator[ImageRecord]:
        """Records that have a pre-annotation, streamed in ledger order.

        One sequential pass over the table: at a million rows, visiting them in image-id
        order through the index costs a random page read per row, several times more.
        """
        rows = self._conn().execute(
            "SELECT record FROM images NOT INDEXED WHERE has_preannotation = 1 ORDER BY seq"
        )
        for (raw,) in rows:
            yield self._parse(raw)

    def jobs_for(self, backend: str) -> dict[str, JobRef]:
        """image id -> the job on ``backend`` for every image pushed there (no record parsing)."""
        rows = self._conn().execute(  # sequential, like with_preannotation
            "SELECT image_id, job FROM jobs WHERE +backend = ?", (backend,)
        )
        return {iid: JobRef.from_json(json.loads(job)) for iid, job in rows}

    def image_for_task(self, backend: str, task: str) -> str | None:
        """The image id whose job on ``backend`` is ``task`` (by index), or None."""
        row = (
            self._conn()
            .execute(
                "SELECT image_id FROM jobs WHERE backend = ? AND task = ?", (backend, str(task))
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def status_counts(self) -> dict[str, Any]:
        """Aggregates for ``camlabel status`` from the indexed columns, in one snapshot."""
        conn = self._conn()
        with self._read_txn(conn):
            images = int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
            states = dict(conn.execute("SELECT state, count(*) FROM images GROUP BY state"))
            labels = dict(conn.execute("SELECT label, count(*) FROM images GROUP BY label"))
            # Every aggregate below is answered from a covering index, never the records.
            backends: dict[str, dict[str, int]] = {}
            for name, ann_state, n in conn.execute(
                "SELECT backend, annotation_state, count(*) FROM jobs "
                "GROUP BY backend, annotation_state"
            ):
                b = backends.setdefault(name, {"tasks": 0, "annotated": 0, "skipped": 0})
                b["tasks"] += int(n)
                if ann_state in ("annotated", "skipped"):
                    b[ann_state] += int(n)
            submitted = int(conn.execute("SELECT count(*) FROM submitted").fetchone()[0])
            acc_n, acc_sum = conn.execute(
                "SELECT count(accepted_unchanged), sum(accepted_unchanged) FROM submitted "
                "WHERE accepted_unchanged IS NOT NULL"
            ).fetchone()
            n_lead = int(
                conn.execute(
                    "SELECT count(*) FROM submitted WHERE lead_time_s IS NOT NULL"
                ).fetchone()[0]
            )
            lead_median = None
            if n_lead:
                mid = [
                    r[0]
                    for r in conn.execute(
                        "SELECT lead_time_s FROM submitted WHERE lead_time_s IS NOT NULL "
                        "ORDER BY lead_time_s LIMIT ? OFFSET ?",
                        (2 - n_lead % 2, (n_lead - 1) // 2),
                    )
                ]
                lead_median = sum(mid) / len(mid)
            masks, agree_n, agree_mean, iou_n, iou_mean = conn.execute(
                "SELECT count(mask_consensus), count(mask_agreement), avg(mask_agreement), "
                "count(mask_preannotation_iou), avg(mask_preannotation_iou) FROM images "
                "WHERE mask_consensus IS NOT NULL"
            ).fetchone()
        return {
            "images": images,
            "states": {s: int(states.get(s, 0)) for s in STATES},
            "labels": {k: int(v) for k, v in labels.items()},
            "backends": backends,
            "submitted": int(submitted),
            "accepted_unchanged_share": (acc_sum / acc_n) if acc_n else None,
            "lead_time_s_median": lead_median,
            "masks": int(masks),
            "agreement_dice_mean": agree_mean if agree_n else None,
            "multi_annotator": int(agree_n),
            "preannotation_iou_mean": iou_mean if iou_n else None,
        }

    # -- writing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[LedgerTransaction]:
        """Take the write lock, yield a view; commit the changed records if no exception.

        ``durable``: the commit is on disk (fsync'ed) when the block exits, not only safe
        from a process crash.
        """
        conn = self._conn()
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            with self._write_txn(conn):
                txn = LedgerTransaction(self, conn)
                yield txn
                if txn.dirty:
                    self._write_records(conn, txn.changed)
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")

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

    # -- interchange -------------------------------------------------------------------
    def export_jsonl(self, path: Path) -> int:
        """Write every record as one JSON line (insertion order), atomically; returns the count."""
        lines = [record_line(r) + "\n" for r in self.iter_records()]
        atomic_write_text(Path(path), "".join(lines))
        return len(lines)

    def import_jsonl(self, path: Path, *, replace: bool = False) -> JsonlRead:
        """Insert or update every record of a JSON Lines file in one transaction.

        With ``replace`` the ledger holds exactly the file's records afterwards.
        """
        parsed = read_jsonl(Path(path))
        conn = self._conn()
        with self._write_txn(conn):
            if replace:
                for table in ("images", "jobs", "submitted"):
                    conn.execute(f"DELETE FROM {table}")
            self._write_records(conn, parsed.records.values())
        return parsed

    def integrity_check(self) -> str:
        """SQLite's own check: ``"ok"`` or the first problems it finds."""
        rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    # -- run log -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def append_run(self, run: dict[str, Any]) -> dict[str, Any]:
        """Append one run record (command, settings, seeds, versions) to ``runs.jsonl``.

        The run log is append-only; the append happens under a file lock and is a
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
