"""Records and the ledger: round trips, atomicity, crash safety, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import jsonschema
import pytest

from camlabel.errors import LedgerError
from camlabel.fileio import atomic_write_text
from camlabel.ledger import Ledger
from camlabel.records import Annotation, ImageRecord, JobRef, MaskInfo, Preannotation

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "manifests" / "ledger.schema.json").read_text())


def rec(i: int, **kw) -> ImageRecord:
    iid = f"{i:064x}"
    return ImageRecord(
        image_id=iid,
        source_path=f"/x/{i}.png",
        source_format="png",
        width=40,
        height=30,
        display_path=f"images/{iid}.png",
        **kw,
    )


def test_examples_validate_against_schema_and_parse() -> None:
    lines = (REPO / "manifests" / "examples" / "ledger.example.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        d = json.loads(line)
        jsonschema.validate(d, SCHEMA)
        r = ImageRecord.from_json(d)
        assert r.to_json() == d
    full = ImageRecord.from_json(json.loads(lines[1]))
    assert full.state == "masked"
    assert full.mask is not None and full.mask.annotation_ids == (
        "labelstudio:41",
        "labelstudio:42",
    )


def test_record_round_trip_and_schema(tmp_path: Path) -> None:
    r = rec(
        1,
        label="covid",
        preannotation=Preannotation(
            polygons=[{"exterior": [[0, 0], [4, 0], [4, 4]]}], source="truth", model_version="t"
        ),
        jobs={"labelstudio": JobRef(backend="labelstudio", project="3", task="9")},
    )
    r = r.with_annotations(
        [
            Annotation(
                backend="labelstudio",
                annotation_id="5",
                annotator="a",
                status="submitted",
                created_at="t",
                updated_at="t",
            )
        ]
    )
    r = r.evolve(
        mask=MaskInfo(
            path="masks/x.png",
            version=1,
            annotation_ids=("labelstudio:5",),
            consensus="majority",
            sha256="0" * 64,
        )
    )
    led = Ledger(tmp_path / "ledger.db")
    led.put(r)
    assert led.export_jsonl(tmp_path / "export.jsonl") == 1
    line = json.loads((tmp_path / "export.jsonl").read_text())
    jsonschema.validate(line, SCHEMA)
    back = led.get(r.image_id)
    assert back == r
    assert back.state == "masked"


def test_states_progress() -> None:
    r = rec(2)
    assert r.state == "registered"
    r = r.evolve(preannotation=Preannotation(polygons=[], source="gradcam", model_version="m"))
    assert r.state == "preannotated"
    r = r.with_job(JobRef(backend="labelstudio", project="1", task="2"))
    assert r.state == "pushed"
    skip = Annotation(
        backend="labelstudio",
        annotation_id="1",
        annotator="a",
        status="skipped",
        created_at="t",
        updated_at="t",
    )
    assert r.with_annotations([skip]).state == "skipped"
    sub = Annotation(
        backend="labelstudio",
        annotation_id="2",
        annotator="b",
        status="submitted",
        created_at="t",
        updated_at="t",
    )
    assert r.with_annotations([skip, sub]).state == "annotated"


def test_with_annotations_never_duplicates() -> None:
    a1 = Annotation(
        backend="labelstudio",
        annotation_id="1",
        annotator="a",
        status="submitted",
        created_at="t",
        updated_at="t1",
    )
    a1b = Annotation(
        backend="labelstudio",
        annotation_id="1",
        annotator="a",
        status="submitted",
        created_at="t",
        updated_at="t2",
    )
    r = rec(3).with_annotations([a1]).with_annotations([a1b])
    assert len(r.annotations) == 1 and r.annotations[0].updated_at == "t2"


def test_rerun_never_duplicates(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    led.put_many([rec(i) for i in range(5)])
    led.put_many([rec(i, label="normal") for i in range(5)])
    led.export_jsonl(tmp_path / "export.jsonl")
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    assert len(lines) == 5 and len(led) == 5
    assert {r.label for r in led.all()} == {"normal"}


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"image_id": "xyz"}, "SHA-256"),
        ({"width": 0}, "width and height must be positive"),
    ],
)
def test_invalid_records_rejected(bad: dict, needle: str) -> None:
    d = rec(4).to_json()
    d.update(bad)
    with pytest.raises(LedgerError, match=needle):
        ImageRecord.from_json(d)


def test_bad_annotation_status_and_polygon() -> None:
    with pytest.raises(LedgerError, match="status must be one of"):
        Annotation(
            backend="x",
            annotation_id="1",
            annotator="a",
            status="done",
            created_at="t",
            updated_at="t",
        )
    with pytest.raises(LedgerError, match=">= 3 exterior points"):
        Preannotation(
            polygons=[{"exterior": [[0, 0], [1, 1]]}], source="gradcam", model_version="m"
        )


def test_corrupt_line_gives_clear_error(tmp_path: Path) -> None:
    """A torn line in an old ledger.jsonl stops the migration, naming the file and line."""
    p = tmp_path / "ledger.jsonl"
    p.write_text(json.dumps(rec(1).to_json()) + "\n" + '{"image_id": "trunc')
    with pytest.raises(LedgerError, match=r"ledger.jsonl:2: invalid ledger line"):
        Ledger(p).all()
    assert p.exists()  # nothing migrated, nothing renamed


def test_exception_in_transaction_writes_nothing(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    led.put_many([rec(i) for i in range(3)])
    with pytest.raises(RuntimeError), led.transaction() as txn:
        txn.put(rec(100))
        txn.update(rec(1).image_id, lambda r: r.evolve(label="x"))
        raise RuntimeError("boom")
    assert len(led.all()) == 3
    assert led.get(rec(1).image_id).label is None
    with pytest.raises(KeyboardInterrupt), led.transaction() as txn:
        txn.put(rec(101))
        raise KeyboardInterrupt("simulated interrupt")
    assert len(led) == 3 and rec(101).image_id not in led


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"


def _writer(path: str, start: int, n: int) -> None:
    led = Ledger(Path(path))
    for i in range(start, start + n):
        with led.transaction() as txn:
            txn.put(rec(i))
        led.update(rec(i).image_id, lambda r: r.evolve(label="seen"))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, k * 100, 25)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    led = Ledger(Path(path))
    recs = led.all()
    assert len(recs) == 50
    assert all(r.label == "seen" for r in recs)
    assert led.integrity_check() == "ok"


def test_run_log_appends(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    led.append_run({"kind": "gradcam", "settings": {"seed": 1}})
    led.append_run({"kind": "push-jobs", "settings": {}})
    with led.runs_path.open("a") as fh:
        fh.write('{"kind": "torn')  # a killed process's torn line is ignored
    assert [r["kind"] for r in led.runs()] == ["gradcam", "push-jobs"]
    assert led.runs("gradcam")[0]["settings"] == {"seed": 1}
