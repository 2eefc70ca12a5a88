"""The SQLite ledger: migration from today's JSONL, crash safety under kill -9, readers never
blocked, indexed queries and SQL status equal to a pass over the records, export/import CLI."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from camlabel.cli.main import cli
from camlabel.errors import LedgerError
from camlabel.ledger import Ledger, record_line
from camlabel.loop import workspace_status
from camlabel.records import Annotation, ImageRecord, JobRef, MaskInfo, Preannotation
from camlabel.workspace import Workspace
from tests.unit.test_ledger import rec

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "manifests" / "ledger.schema.json").read_text())
EXAMPLE = REPO / "manifests" / "examples" / "ledger.example.jsonl"


def _legacy() -> Any:
    """Today's JSONL ledger, verbatim (benchmarks/legacy_jsonl_ledger.py)."""
    path = REPO / "benchmarks" / "legacy_jsonl_ledger.py"
    spec = importlib.util.spec_from_file_location("legacy_jsonl_ledger", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ann(aid: str, status: str, backend: str = "labelstudio", **kw: Any) -> Annotation:
    return Annotation(
        backend=backend,
        annotation_id=aid,
        annotator="a",
        status=status,
        created_at="t",
        updated_at="t",
        **kw,
    )


def varied(i: int) -> ImageRecord:
    """Records in every state, with jobs on two backends, telemetry and masks."""
    r = rec(i, label=("covid", "normal", None)[i % 3])
    if i % 7 == 0:
        return r
    r = r.evolve(
        preannotation=Preannotation(
            polygons=[{"exterior": [[0, 0], [4, 0], [4, 4]]}], source="gradcam", model_version="m"
        )
    )
    if i % 5 == 0:
        return r
    r = r.with_job(JobRef(backend="labelstudio", project="3", task=str(100 + i)))
    if i % 4 == 0:
        r = r.with_job(JobRef(backend="groundtruth", project="job-1", task=f"s3://b/{i}.png"))
    if i % 6 == 1:
        return r
    anns = [ann(f"{i}a", "submitted", accepted_unchanged=i % 2 == 0, lead_time_s=float(i % 13))]
    if i % 3 == 0:
        anns.append(ann(f"{i}b", "skipped"))
    if i % 11 == 0:
        anns = [ann(f"{i}c", "skipped"), ann(f"{i}d", "deleted")]
    if i % 9 == 0:
        anns.append(ann(f"{i}e", "submitted", backend="groundtruth", lead_time_s=None))
    r = r.with_annotations(anns)
    if i % 2 == 0 and r.state == "annotated":
        r = r.evolve(
            mask=MaskInfo(
                path=f"masks/{i}.png",
                version=1,
                annotation_ids=(f"labelstudio:{i}a",),
                consensus="majority" if i % 8 else "union",
                sha256="0" * 64,
                agreement_dice=(i % 10) / 10 if i % 3 else None,
                preannotation_iou=(i % 7) / 7,
            )
        )
    return r


# --------------------------------------------------------------------------- migration
def test_example_ledger_migrates_record_by_record(tmp_path: Path) -> None:
    src = tmp_path / "ledger.jsonl"
    src.write_bytes(EXAMPLE.read_bytes())
    expected = [ImageRecord.from_json(json.loads(x)) for x in EXAMPLE.read_text().splitlines()]
    led = Ledger(tmp_path / "ledger.db")
    assert led.all() == expected
    assert not src.exists()
    backups = list(tmp_path.glob("ledger.jsonl.migrated-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == EXAMPLE.read_bytes()
    # reopening does not migrate again, and the export is the interchange format
    assert Ledger(tmp_path / "ledger.db").all() == expected
    led.export_jsonl(tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [ImageRecord.from_json(json.loads(x)) for x in lines] == expected
    for line in lines:
        jsonschema.validate(json.loads(line), SCHEMA)


def test_ledger_written_by_todays_code_migrates_equal(tmp_path: Path) -> None:
    legacy = _legacy()
    old = legacy.Ledger(tmp_path / "ledger.jsonl")
    records = [varied(i) for i in range(60)]
    old.put_many(records[:40])
    with old.transaction() as txn:  # updates in place, as gradcam / pull do
        for r in records[40:]:
            txn.put(r)
        txn.update(records[3].image_id, lambda r: r.evolve(split="val"))
    before = old.all()
    old_bytes = (tmp_path / "ledger.jsonl").read_bytes()

    ws = Workspace.init(tmp_path)  # opening the workspace migrates it
    after = ws.ledger.all()
    assert len(after) == len(before) == 60
    for a, b in zip(before, after, strict=True):
        assert a == b
    assert ws.ledger.get(records[3].image_id).split == "val"
    # the export is byte-identical to what the old ledger wrote
    ws.ledger.export_jsonl(tmp_path / "export.jsonl")
    assert (tmp_path / "export.jsonl").read_bytes() == old_bytes
    for line in old_bytes.decode().splitlines():
        jsonschema.validate(json.loads(line), SCHEMA)
    assert list(tmp_path.glob("ledger.jsonl.migrated-*"))


def test_migration_duplicates_warn_last_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "ledger.jsonl"
    src.write_text(
        record_line(rec(1)) + "\n" + record_line(rec(2)) + "\n" + record_line(rec(1, label="x"))
    )
    with caplog.at_level(logging.WARNING, logger="camlabel.ledger"):
        led = Ledger(tmp_path / "ledger.db")
        assert led.get(rec(1).image_id).label == "x"
    assert "ledger.jsonl:3" in caplog.text and "already on line 1" in caplog.text
    assert len(led) == 2


def test_migration_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "ledger.jsonl"
    src.write_bytes(record_line(rec(1)).encode() + b"\n" + b'{"image_id": "\xff\xfe"}\n')
    with pytest.raises(LedgerError, match=r"ledger.jsonl:2: not UTF-8 \(byte 0xff"):
        Ledger(tmp_path / "ledger.db").all()
    assert src.exists()


def test_migration_after_crash_before_rename_does_not_reimport(tmp_path: Path) -> None:
    """The DB remembers the migrated file: a crash before the rename never re-imports it
    over newer writes."""
    src = tmp_path / "ledger.jsonl"
    src.write_text(record_line(rec(1)) + "\n")
    backup = src.read_bytes()
    led = Ledger(tmp_path / "ledger.db")
    led.put(rec(1, label="newer"))
    # put the old file back with its original identity, as if the rename never happened
    for b in tmp_path.glob("ledger.jsonl.migrated-*"):
        os.replace(b, src)
    assert src.read_bytes() == backup
    assert Ledger(tmp_path / "ledger.db").get(rec(1).image_id).label == "newer"
    assert not src.exists()


# --------------------------------------------------------------------------- crash safety
_STREAM = """
import sys
from camlabel.ledger import Ledger
from camlabel.records import ImageRecord
led = Ledger(sys.argv[1])
start = int(sys.argv[2])
for k in range(start, 10_000):
    with led.transaction() as txn:
        for j in range(32):
            i = k * 32 + j
            iid = f"{i:064x}"
            txn.put(ImageRecord(image_id=iid, source_path=f"/x/{i}.png", source_format="png",
                                width=40, height=30, display_path=f"images/{iid}.png",
                                label=f"batch-{k}"))
    print(k, flush=True)
"""


def _stream(db: Path, start: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", _STREAM, str(db), str(start)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_kill_9_during_commit_stream_keeps_last_committed_state(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    proc = _stream(db, 0)
    assert proc.stdout is not None
    last = -1
    while last < 20:  # wait for at least 21 committed batches, then kill mid-stream
        last = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    led = Ledger(db)
    assert led.integrity_check() == "ok"
    n = len(led)
    assert n % 32 == 0 and n >= 21 * 32  # whole batches only; every reported commit is there
    labels = led.count_by("label")
    assert set(labels.values()) == {32}
    # the rerun resumes after the last committed batch and finishes cleanly
    done = n // 32
    proc = _stream(db, done)
    assert proc.stdout is not None
    while int(proc.stdout.readline()) < done + 5:
        pass
    proc.kill()
    proc.wait()
    assert Ledger(db).integrity_check() == "ok"
    assert len(Ledger(db)) >= (done + 6) * 32


def test_readers_never_block_on_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    Ledger(db).put_many([rec(i) for i in range(10)])
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with Ledger(db).transaction() as txn:
            txn.put(rec(99))
            txn.update(rec(1).image_id, lambda r: r.evolve(label="w"))
            inside.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(30)
    reader = Ledger(db)
    t0 = time.perf_counter()
    assert len(reader) == 10 and reader.get(rec(1).image_id).label is None
    assert reader.status_counts()["images"] == 10
    assert time.perf_counter() - t0 < 5  # a blocked reader would wait for the 120 s timeout
    release.set()
    t.join(30)
    assert len(reader) == 11 and reader.get(rec(1).image_id).label == "w"


# --------------------------------------------------------------------------- indexed reads
def test_indexed_queries_match_a_pass_over_the_records(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    records = [varied(i) for i in range(200)]
    led.put_many(records)
    by_id = {r.image_id: r for r in records}
    assert led.all() == records
    assert led.get_many([records[5].image_id, "f" * 64, records[7].image_id]) == {
        records[5].image_id: records[5],
        records[7].image_id: records[7],
    }
    assert led.ids_in_state("pushed", "skipped") == sorted(
        r.image_id for r in records if r.state in ("pushed", "skipped")
    )
    assert list(led.with_preannotation()) == [r for r in records if r.preannotation is not None]
    for backend in ("labelstudio", "groundtruth"):
        assert led.jobs_for(backend) == {
            r.image_id: r.jobs[backend] for r in records if backend in r.jobs
        }
    assert led.image_for_task("labelstudio", "117") == records[17].image_id
    assert led.image_for_task("labelstudio", "nope") is None
    states = led.counts_by_state()
    assert sum(states.values()) == 200 and all(states.values())
    for s, n in states.items():
        assert n == sum(r.state == s for r in records)
    assert led.count_by("mask_consensus") == {
        k: sum((r.mask.consensus if r.mask else None) == k for r in records)
        for k in (None, "majority", "union")
    }
    with pytest.raises(LedgerError, match="unknown column 'record'"):
        led.count_by("record")
    assert list(by_id) == [r.image_id for r in led.all()]


def _rounded(obj: Any) -> Any:
    """SQL's avg and statistics.fmean differ in the last bits: compare to 9 decimals."""
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 9) if isinstance(obj, float) else obj


@pytest.mark.parametrize("n", [0, 1, 2, 201])
def test_sql_status_equals_a_pass_over_the_records(tmp_path: Path, n: int) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.ledger.put_many([varied(i) for i in range(1, n + 1)])
    assert _rounded(workspace_status(ws, detail=False)) == _rounded(
        _legacy().status_by_pass(ws.ledger.all(), ws.root)
    )
    # an update moves counts (the side tables follow the record)
    if n > 100:
        iid = varied(100).image_id
        ws.ledger.update(iid, lambda r: r.evolve(jobs={}, annotations=(), mask=None))
        assert _rounded(workspace_status(ws, detail=False)) == _rounded(
            _legacy().status_by_pass(ws.ledger.all(), ws.root)
        )


def test_commit_writes_only_changed_records(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    led.put_many([varied(i) for i in range(500)])
    conn = led._conn()
    before = conn.total_changes
    with led.transaction() as txn:
        txn.update(varied(3).image_id, lambda r: r.evolve(label="changed"))
        assert txn.get(varied(3).image_id).label == "changed"
        assert varied(4).image_id in txn
    # one row upserted, its 1 job and 1 submitted annotation deleted and re-inserted
    assert conn.total_changes - before <= 6


def test_put_then_all_in_one_transaction(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    led.put_many([rec(i) for i in range(3)])
    with led.transaction() as txn:
        txn.put(rec(1, label="a"))
        txn.put(rec(7))
        assert [r.label for r in txn.all()] == [None, "a", None, None]
        assert len(led.all()) == 3  # the same connection inside the transaction: no nesting error
    assert [r.image_id for r in led.all()] == [rec(i).image_id for i in (0, 1, 2, 7)]


def test_unreadable_database_names_the_file(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match=r"ledger.db: cannot open the ledger database"):
        len(Ledger(db))
    assert isinstance(sqlite3.sqlite_version, str)


# --------------------------------------------------------------------------- CLI
def test_cli_export_import_round_trip(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    records = [varied(i) for i in range(30)]
    ws.ledger.put_many(records)
    out = tmp_path / "export.jsonl"
    r = CliRunner().invoke(cli, ["ledger", "export", "-w", str(ws.root), "--jsonl", str(out)])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert len(lines) == 30
    for line in lines:
        jsonschema.validate(json.loads(line), SCHEMA)

    other = Workspace.init(tmp_path / "other")
    other.ledger.put(rec(999))
    r = CliRunner().invoke(cli, ["ledger", "import", "-w", str(other.root), str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 31
    r = CliRunner().invoke(cli, ["ledger", "import", "-w", str(other.root), str(out), "--replace"])
    assert r.exit_code == 0, r.output
    assert Workspace.open(other.root).ledger.all() == records
    assert workspace_status(Workspace.open(other.root))["states"] == workspace_status(ws)["states"]

    out.write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    r = CliRunner().invoke(cli, ["ledger", "import", "-w", str(other.root), str(out)])
    assert r.exit_code == 1
    assert "export.jsonl:2: invalid ledger line" in r.output
    assert len(Workspace.open(other.root).ledger) == 30  # nothing half-imported
