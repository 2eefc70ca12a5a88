"""camlabel.loop through the in-memory fake backend: push idempotence and chunked commits,
pull of new / updated / deleted / skipped annotations, consensus rules, mask versions and
withdrawal. Assertions are on ledger records and mask pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from camlabel import loop
from camlabel.backends.base import PushReport
from camlabel.backends.fake import FakeServer
from camlabel.errors import BackendError
from camlabel.geometry import PolygonPx, polygons_to_mask
from camlabel.imaging import read_mask_png
from camlabel.records import ImageRecord
from camlabel.workspace import Workspace

H, W = 24, 32


def _workspace(tmp_path: Path, n: int) -> tuple[Workspace, list[ImageRecord]]:
    ws = Workspace.init(tmp_path / "ws")
    paths = []
    for i in range(n):
        img = np.full((H, W), 20 + 10 * i, np.uint8)
        img[3 : 6 + i, 4:10] = 250
        path = tmp_path / "in" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        paths.append(path)
    records, failures = ws.register_images(paths)
    assert failures == [] and len({r.image_id for r in records}) == n
    return ws, sorted(records, key=lambda r: r.image_id)


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _push(ws: Workspace, server: FakeServer, **flags: object) -> PushReport:
    return loop.push_jobs(
        ws, "fake", options={"server": server, **flags}, include_all=True, progress=False
    )


def _pull(ws: Workspace, server: FakeServer, **kw: object) -> loop.PullSummary:
    return loop.pull_masks(ws, "fake", options={"server": server}, progress=False, **kw)  # type: ignore[arg-type]


def _mask_of(ws: Workspace, image_id: str) -> np.ndarray | None:
    rec = ws.ledger.get(image_id)
    assert rec is not None
    return None if rec.mask is None else read_mask_png(ws.abs(rec.mask.path))


# --------------------------------------------------------------------------- push
def test_push_commits_each_chunk_and_a_rerun_pushes_nothing(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 5)
    server = FakeServer()
    report = _push(ws, server, chunk_size=2)
    assert len(report.pushed) == 5 and report.already_present == {}
    assert server.chunks == 3  # 2 + 2 + 1
    ledger = {r.image_id: r for r in ws.ledger.all()}
    for rec in recs:
        job = ledger[rec.image_id].jobs["fake"]
        assert job.task == server.tasks[rec.image_id].task_id
        assert job.project == server.project
    again = _push(ws, server, chunk_size=2)
    assert again.pushed == {} and set(again.already_present) == {r.image_id for r in recs}
    assert server.chunks == 3 and len(server.tasks) == 5
    runs = ws.ledger.runs("push-jobs")
    assert [r["result"]["pushed"] for r in runs] == [5, 0]


def test_interrupted_push_keeps_the_committed_chunks_and_resumes(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 5)
    server = FakeServer()
    server.fail_after_chunks = 2
    with pytest.raises(BackendError, match="interrupted after 2 chunk"):
        _push(ws, server, chunk_size=2)
    pushed = [r.image_id for r in ws.ledger.all() if "fake" in r.jobs]
    assert len(pushed) == 4  # two chunks were committed before the failure
    assert set(pushed) == set(server.tasks)
    server.fail_after_chunks = None
    report = _push(ws, server, chunk_size=2)
    assert len(report.pushed) == 1 and len(report.already_present) == 4
    assert sorted(server.tasks) == [r.image_id for r in recs]  # each image exactly once
    assert all("fake" in r.jobs for r in ws.ledger.all())


# --------------------------------------------------------------------------- pull
def test_pull_new_updated_deleted_skipped_and_unannotated(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 4)
    a, b, c, d = (r.image_id for r in recs)
    server = FakeServer()
    _push(ws, server)
    m1 = _box(2, 10, 3, 20)
    ann_a = server.annotate(a, m1)
    poly = {"exterior": [[4.0, 4.0], [24.0, 4.0], [24.0, 18.0], [4.0, 18.0]], "holes": []}
    server.annotate(b, polygons=[poly])
    server.skip(c)

    first = _pull(ws, server)
    # the skip is recorded too (an annotation without raster)
    assert (first.tasks, first.new_annotations, first.masks_written) == (4, 3, 2)
    assert first.skipped == [c] and first.unannotated == [d]
    assert np.array_equal(_mask_of(ws, a), m1)
    want_b = polygons_to_mask([PolygonPx.from_json(poly)], H, W)
    assert np.array_equal(_mask_of(ws, b), want_b)
    rec_b = ws.ledger.get(b)
    assert rec_b is not None and rec_b.annotations[0].polygons == (poly,)
    raster = read_mask_png(ws.abs(rec_b.annotations[0].raster_path or ""))
    assert np.array_equal(raster, want_b)
    rec_c = ws.ledger.get(c)
    assert rec_c is not None and rec_c.mask is None
    assert [x.status for x in rec_c.annotations] == ["skipped"]

    # nothing changed: the cursor skips every task, the ledger stays as it is
    before = {r.image_id: r for r in ws.ledger.all()}
    quiet = _pull(ws, server)
    assert (quiet.tasks, quiet.new_annotations, quiet.masks_written) == (0, 0, 0)
    assert {r.image_id: r for r in ws.ledger.all()} == before
    full = _pull(ws, server, full=True)
    # a full re-read re-records only the skip (it has no raster to compare with)
    assert (full.tasks, full.new_annotations, full.masks_written) == (4, 1, 0)
    assert full.masks_unchanged == 2

    # an updated annotation: a new mask version with the new pixels
    m2 = _box(5, 20, 10, 30)
    server.update(a, ann_a, m2)
    upd = _pull(ws, server)
    assert (upd.tasks, upd.new_annotations, upd.masks_written) == (1, 1, 1)
    rec_a = ws.ledger.get(a)
    assert rec_a is not None and rec_a.mask is not None and rec_a.mask.version == 2
    assert rec_a.mask.path.endswith(f"{a}-v2.png")
    assert np.array_equal(_mask_of(ws, a), m2)
    assert np.array_equal(read_mask_png(ws.root / "masks" / f"{a}-v1.png"), m1)  # kept

    # re-saved with the same pixels: re-read, but no new version
    server.update(a, ann_a, m2)
    same = _pull(ws, server)
    assert (same.new_annotations, same.masks_written, same.masks_unchanged) == (1, 0, 1)
    rec_a = ws.ledger.get(a)
    assert rec_a is not None and rec_a.mask is not None and rec_a.mask.version == 2

    # the only annotation deleted: the mask is withdrawn, the history stays
    server.delete(a, ann_a)
    gone = _pull(ws, server)
    assert gone.deleted_annotations == 1 and gone.masks_withdrawn == [a]
    rec_a = ws.ledger.get(a)
    assert rec_a is not None and rec_a.mask is None
    assert [x.status for x in rec_a.annotations] == ["deleted"]
    assert (ws.root / "masks" / f"{a}-v2.png").is_file()


def _three_annotators(ws: Workspace, server: FakeServer, image_id: str) -> list[np.ndarray]:
    masks = [_box(0, 12, 0, 16), _box(4, 16, 8, 24), _box(8, 20, 4, 28)]
    for i, m in enumerate(masks):
        server.annotate(image_id, m, annotator=f"annotator-{i + 1}")
    return masks


def test_consensus_rules(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 1)
    image_id = recs[0].image_id
    server = FakeServer()
    _push(ws, server)
    masks = _three_annotators(ws, server, image_id)
    want = {
        "majority": np.sum(masks, axis=0) >= 2,
        "union": np.any(masks, axis=0),
        "intersection": np.all(masks, axis=0),
        "latest": masks[-1],
    }
    assert len({m.tobytes() for m in want.values()}) == 4
    for version, (rule, expected) in enumerate(want.items(), start=1):
        _pull(ws, server, consensus_rule=rule)
        rec = ws.ledger.get(image_id)
        assert rec is not None and rec.mask is not None
        assert (rec.mask.consensus, rec.mask.version) == (rule, version)
        assert len(rec.mask.annotation_ids) == 3
        assert np.array_equal(_mask_of(ws, image_id), expected), rule
        assert rec.mask.agreement_dice is not None and 0 < rec.mask.agreement_dice < 1


def test_workspace_consensus_settings_apply_without_flags(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 1)
    ws.config["consensus"]["rule"] = "union"
    server = FakeServer()
    _push(ws, server)
    masks = _three_annotators(ws, server, recs[0].image_id)
    _pull(ws, server)
    rec = ws.ledger.get(recs[0].image_id)
    assert rec is not None and rec.mask is not None and rec.mask.consensus == "union"
    assert np.array_equal(_mask_of(ws, recs[0].image_id), np.any(masks, axis=0))


def test_min_annotations_waits_then_withdraws_after_a_deletion(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 2)
    x, y = (r.image_id for r in recs)
    server = FakeServer()
    _push(ws, server)
    mx1, mx2 = _box(0, 12, 0, 16), _box(4, 16, 8, 24)
    keep = server.annotate(x, mx1, annotator="annotator-1")
    drop = server.annotate(x, mx2, annotator="annotator-2")
    server.annotate(y, _box(1, 5, 1, 5))
    s = _pull(ws, server, min_annotations=2, consensus_rule="union")
    assert s.masks_written == 1 and s.waiting_for_annotations == [y]
    assert np.array_equal(_mask_of(ws, x), mx1 | mx2)
    assert _mask_of(ws, y) is None

    server.delete(x, drop)
    s = _pull(ws, server, min_annotations=2, consensus_rule="union")
    assert s.deleted_annotations == 1 and s.masks_withdrawn == [x]
    rec = ws.ledger.get(x)
    assert rec is not None and rec.mask is None
    assert {a.annotation_id: a.status for a in rec.annotations} == {
        keep: "submitted",
        drop: "deleted",
    }
    # with K = 1 the remaining annotation makes a mask again
    s = _pull(ws, server, min_annotations=1, consensus_rule="union", full=True)
    rec = ws.ledger.get(x)
    assert rec is not None and rec.mask is not None
    assert np.array_equal(_mask_of(ws, x), mx1)
    assert rec.mask.annotation_ids == (f"fake:{keep}",)


def test_deletion_and_a_new_annotation_make_one_new_version(tmp_path: Path) -> None:
    ws, recs = _workspace(tmp_path, 1)
    a = recs[0].image_id
    server = FakeServer()
    _push(ws, server)
    m1, m2, m3 = _box(0, 10, 0, 10), _box(5, 15, 5, 15), _box(10, 20, 12, 30)
    a1 = server.annotate(a, m1, annotator="annotator-1")
    a2 = server.annotate(a, m2, annotator="annotator-2")
    _pull(ws, server, consensus_rule="union")
    server.delete(a, a2)
    a3 = server.annotate(a, m3, annotator="annotator-3")
    s = _pull(ws, server, consensus_rule="union")
    assert (s.deleted_annotations, s.new_annotations, s.masks_written) == (1, 1, 1)
    rec = ws.ledger.get(a)
    assert rec is not None and rec.mask is not None and rec.mask.version == 2
    assert rec.mask.annotation_ids == tuple(sorted([f"fake:{a1}", f"fake:{a3}"]))
    assert np.array_equal(_mask_of(ws, a), m1 | m3)
