"""push-jobs / pull-masks against a real Label Studio (started by the session fixture)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from camlabel import loop
from camlabel.backends.base import PushItem
from camlabel.backends.labelstudio import LabelStudioBackend
from camlabel.backends.labelstudio.convert import mask_to_brush_rle
from camlabel.errors import BackendError, BackendUnavailable
from camlabel.imaging import read_mask_png
from camlabel.records import JobRef
from camlabel.workspace import Workspace
from tests.integration.lshelpers import phantom_workspace, polygon_result, px, rasterize_centres
from tests.lsserver import LSServer


def _project_tasks(server: LSServer, project: str) -> list[dict]:
    ls = server.sdk()
    return [
        t.model_dump() for t in ls.tasks.list(project=int(project), fields="all", page_size=1000)
    ]


def _items(ws: Workspace) -> list[PushItem]:
    return [
        loop._push_item(ws, r, "labelstudio")
        for r in sorted(ws.ledger.all(), key=lambda r: r.image_id)
    ]


# --------------------------------------------------------------------------- push
@pytest.mark.server
def test_push_creates_one_task_per_image_with_the_predictions(
    ls_server: LSServer, tmp_path: Path
) -> None:
    n = 8
    ws, records = phantom_workspace(tmp_path, n)
    opts = ls_server.options()
    ws.config["labelstudio"]["project_title"] = f"push-{uuid.uuid4().hex[:8]}"

    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    assert len(report.pushed) == n and not report.already_present and not report.failures

    tasks = _project_tasks(ls_server, report.project)
    assert len(tasks) == n
    by_id = {t["data"]["camlabel_image_id"]: t for t in tasks}
    assert set(by_id) == {r.image_id for r in records}
    ledger = {r.image_id: r for r in ws.ledger.all()}
    for image_id, task in by_id.items():
        rec = ledger[image_id]
        # Privacy: the task carries the served image and the content hash, nothing else.
        assert set(task["data"]) == {"image", "camlabel_image_id"}
        rel = ws.abs(rec.display_path).resolve().relative_to(ls_server.document_root).as_posix()
        assert task["data"]["image"] == f"/data/local-files/?d={rel}" and rel.endswith(
            f"/images/{image_id}.png"
        )
        assert rec.jobs["labelstudio"].task == str(task["id"])
        assert rec.jobs["labelstudio"].project == report.project
        (pred,) = task["predictions"]
        assert pred["model_version"] == "phantom-truth" and pred["score"] == pytest.approx(0.75)
        regions = [r for r in pred["result"] if r["type"] == "polygonlabels"]
        assert rec.preannotation is not None
        assert len(regions) == len(rec.preannotation.polygons)
        for region, poly in zip(regions, rec.preannotation.polygons, strict=True):
            assert (region["original_width"], region["original_height"]) == (rec.width, rec.height)
            assert region["value"]["polygonlabels"] == ["Opacity"]
            back = np.asarray(px(region["value"]["points"], rec.width, rec.height))
            np.testing.assert_allclose(
                back, np.asarray(poly["exterior"], dtype=float), rtol=0, atol=1e-6
            )
        # The served image is the display PNG itself.
        resp = httpx.get(
            ls_server.url + task["data"]["image"],
            headers={"Authorization": f"Token {ls_server.token}"},
        )
        assert resp.status_code == 200 and resp.content == ws.abs(rec.display_path).read_bytes()

    again = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    assert again.project == report.project
    assert not again.pushed and len(again.already_present) == n
    assert len(_project_tasks(ls_server, report.project)) == n


@pytest.mark.server
def test_push_finds_tasks_the_ledger_lost(ls_server: LSServer, tmp_path: Path) -> None:
    """Idempotence does not rely on the ledger: a crash before the ledger commit adds nothing twice."""
    ws, _records = phantom_workspace(tmp_path, 4)
    ws.config["labelstudio"]["project_title"] = f"lost-{uuid.uuid4().hex[:8]}"
    be = LabelStudioBackend(ws, **ls_server.options())
    first = be.push(_items(ws), progress=False)  # no on_pushed: the ledger never hears of it
    assert len(first.pushed) == 4
    second = LabelStudioBackend(ws, **ls_server.options()).push(_items(ws), progress=False)
    assert not second.pushed and second.already_present.keys() == first.pushed.keys()
    assert {k: v.task for k, v in second.already_present.items()} == {
        k: v.task for k, v in first.pushed.items()
    }
    assert len(_project_tasks(ls_server, first.project)) == 4


# --------------------------------------------------------------------------- pull
def _disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 < r * r


@pytest.mark.server
def test_pull_masks_match_an_independent_rasterization(ls_server: LSServer, tmp_path: Path) -> None:
    ws, _records = phantom_workspace(tmp_path, 7, size=96, seed=11)
    ws.config["labelstudio"]["project_title"] = f"pull-{uuid.uuid4().hex[:8]}"
    opts = ls_server.options(cursor_margin_s=0)
    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    ls = ls_server.sdk()
    recs = sorted(ws.ledger.all(), key=lambda r: r.image_id)
    tasks = {t["data"]["camlabel_image_id"]: t for t in _project_tasks(ls_server, report.project)}
    tag = uuid.uuid4().hex[:6]
    u2 = ls.users.create(
        username=f"ann2-{tag}", email=f"ann2-{tag}@example.org", password="pw-ann2-" + tag
    )
    u3 = ls.users.create(
        username=f"ann3-{tag}", email=f"ann3-{tag}@example.org", password="pw-ann3-" + tag
    )
    admin = ls.users.whoami()

    expected: dict[str, np.ndarray] = {}  # annotation id -> mask
    rec_moved, rec_new, rec_brush, rec_skip, rec_three, rec_none, rec_badsize = recs

    def pred_points(rec) -> list[list[float]]:
        (pred,) = tasks[rec.image_id]["predictions"]
        region = next(r for r in pred["result"] if r["type"] == "polygonlabels")
        return px(region["value"]["points"], rec.width, rec.height)

    def create(rec, result, **kw):
        a = ls.annotations.create(id=tasks[rec.image_id]["id"], result=result, **kw)
        return str(a.id)

    # 1. a moved vertex (and the class corrected)
    pts = pred_points(rec_moved)
    pts[0] = [pts[0][0] + 3.3, pts[0][1] + 2.1]
    moved = polygon_result(pts, rec_moved.width, rec_moved.height, origin="prediction-changed")
    cls = {
        "id": "c",
        "from_name": "image_class",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": ["pneumonia"]},
    }
    aid = create(rec_moved, [moved, cls], lead_time=42.5)
    expected[aid] = rasterize_centres([pts], rec_moved.height, rec_moved.width)

    # 2. the prediction accepted unchanged plus a new polygon; and one accepting it unchanged only
    (pred_new,) = tasks[rec_new.image_id]["predictions"]
    kept = [
        dict(r, origin="prediction") for r in pred_new["result"] if r["type"] == "polygonlabels"
    ]
    pts_pred = [px(r["value"]["points"], rec_new.width, rec_new.height) for r in kept]
    new_poly = [[10.3, 12.7], [40.2, 15.1], [35.6, 44.9], [12.1, 38.4]]
    aid_new = create(
        rec_new, [*kept, polygon_result(new_poly, rec_new.width, rec_new.height, rid="n1")]
    )
    expected[aid_new] = rasterize_centres([*pts_pred, new_poly], rec_new.height, rec_new.width)
    aid_acc = create(rec_new, kept, completed_by=u2.id, lead_time=3.0)
    expected[aid_acc] = rasterize_centres(pts_pred, rec_new.height, rec_new.width)

    # 3. a brush stroke together with a polygon
    h, w = rec_brush.height, rec_brush.width
    stroke = _disk(h, w, w * 0.3, h * 0.6, 9.5)
    brush = {
        "id": "b1",
        "from_name": "lesion_brush",
        "to_name": "image",
        "type": "brushlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_brush_rle(stroke), "brushlabels": ["Opacity"]},
    }
    tri = [[50.4, 10.2], [70.7, 12.3], [60.1, 30.6]]
    aid_brush = create(rec_brush, [brush, polygon_result(tri, w, h, rid="t1")])
    expected[aid_brush] = stroke | rasterize_centres([tri], h, w)

    # 4. skipped
    create(rec_skip, [], was_cancelled=True)

    # 5. three annotators on one task (majority differs from union and intersection)
    h, w = rec_three.height, rec_three.width
    boxes = [
        [[10.2, 10.3], [50.6, 10.3], [50.6, 50.7], [10.2, 50.7]],
        [[20.1, 20.4], [60.3, 20.4], [60.3, 60.2], [20.1, 60.2]],
        [[30.7, 5.2], [70.1, 5.2], [70.1, 40.6], [30.7, 40.6]],
    ]
    three = []
    for user, box in zip((admin.id, u2.id, u3.id), boxes, strict=True):
        aid3 = create(rec_three, [polygon_result(box, w, h)], completed_by=user)
        expected[aid3] = rasterize_centres([box], h, w)
        three.append(aid3)
        time.sleep(0.05)

    # 7. drawn on an image of another size: rejected, the others go on
    bad = polygon_result([[5, 5], [30, 5], [30, 30]], rec_badsize.width + 7, rec_badsize.height)
    create(rec_badsize, [bad])

    summary = loop.pull_masks(
        ws, "labelstudio", options=opts, consensus_rule="majority", progress=False
    )
    assert summary.tasks == 7
    assert summary.skipped == [rec_skip.image_id]
    assert summary.unannotated == [rec_none.image_id]
    (failed,) = summary.failed
    assert str(tasks[rec_badsize.image_id]["id"]) in failed[1]
    assert f"{rec_badsize.width + 7}x{rec_badsize.height}" in failed[1]
    assert f"{rec_badsize.width}x{rec_badsize.height}" in failed[1]

    ledger = {r.image_id: r for r in ws.ledger.all()}
    anns = {a.annotation_id: (a, r) for r in ledger.values() for a in r.annotations}
    for aid_, mask in expected.items():
        ann, rec = anns[aid_]
        assert ann.status == "submitted"
        got = read_mask_png(ws.abs(ann.raster_path))
        assert got.shape == (rec.height, rec.width)
        assert np.array_equal(got, mask), (
            f"annotation {aid_}: {int((got ^ mask).sum())} pixel(s) differ"
        )
    a_moved = anns[aid][0]
    assert (
        a_moved.accepted_unchanged is False
        and a_moved.class_choice == "pneumonia"
        and a_moved.lead_time_s == 42.5
    )
    assert anns[aid_acc][0].accepted_unchanged is True
    assert anns[aid_new][0].accepted_unchanged is False
    assert anns[aid_brush][0].has_brush is True
    assert anns[aid_acc][0].annotator in (u2.email, str(u2.id))
    assert anns[aid][0].annotator in (admin.email, str(admin.id))
    assert [a.status for a in ledger[rec_skip.image_id].annotations] == ["skipped"]
    assert ledger[rec_skip.image_id].mask is None

    # Single-annotator masks equal the annotation; rec_new (2 annotators, majority = intersection).
    m = read_mask_png(ws.abs(ledger[rec_moved.image_id].mask.path))
    assert np.array_equal(m, expected[aid])
    m = read_mask_png(ws.abs(ledger[rec_new.image_id].mask.path))
    assert np.array_equal(m, expected[aid_new] & expected[aid_acc])

    masks3 = [expected[a] for a in three]
    rules = {
        "majority": np.sum(masks3, axis=0) >= 2,
        "union": np.any(masks3, axis=0),
        "intersection": np.all(masks3, axis=0),
        "latest": masks3[-1],
    }
    assert len({r.tobytes() for r in rules.values()}) == 4
    for rule, want in rules.items():
        if rule != "majority":
            loop.pull_masks(ws, "labelstudio", options=opts, consensus_rule=rule, progress=False)
        rec = ws.ledger.get(rec_three.image_id)
        assert rec is not None and rec.mask is not None and rec.mask.consensus == rule
        got = read_mask_png(ws.abs(rec.mask.path))
        assert np.array_equal(got, want), f"{rule}: {int((got ^ want).sum())} pixel(s) differ"
        assert rec.mask.agreement_dice is not None and 0 < rec.mask.agreement_dice < 1

    # Incremental: only the task annotated since the last pull is read again, and the task
    # refused above (read again, and reported again, until it is fixed in Label Studio).
    time.sleep(1.1)
    late = [[20.3, 20.6], [60.2, 22.9], [40.7, 60.1]]
    aid_late = create(rec_none, [polygon_result(late, rec_none.width, rec_none.height)])
    again = loop.pull_masks(
        ws, "labelstudio", options=opts, consensus_rule="latest", progress=False
    )
    assert again.tasks == 2 and again.new_annotations == 1 and again.unannotated == []
    assert [f[0] for f in again.failed] == [f[0] for f in summary.failed]
    rec = ws.ledger.get(rec_none.image_id)
    assert rec is not None and rec.mask is not None
    ann = next(a for a in rec.annotations if a.annotation_id == aid_late)
    assert np.array_equal(
        read_mask_png(ws.abs(ann.raster_path)), rasterize_centres([late], rec.height, rec.width)
    )


@pytest.mark.server
def test_annotations_deleted_in_label_studio_leave_the_masks(
    ls_server: LSServer, tmp_path: Path
) -> None:
    """Two annotators on A, one on B; pull. Delete one of A's and B's only annotation, add a
    new one on A; pull: A's mask is recomputed once from what is there now, B's is withdrawn,
    both deleted annotations stay in the ledger marked deleted; a third pull changes nothing."""
    ws, _records = phantom_workspace(tmp_path, 2, size=80, seed=5)
    ws.config["labelstudio"]["project_title"] = f"delete-{uuid.uuid4().hex[:8]}"
    opts = ls_server.options(cursor_margin_s=0)
    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    ls = ls_server.sdk()
    tasks = {t["data"]["camlabel_image_id"]: t for t in _project_tasks(ls_server, report.project)}
    rec_a, rec_b = sorted(ws.ledger.all(), key=lambda r: r.image_id)
    tag = uuid.uuid4().hex[:6]
    u2 = ls.users.create(
        username=f"del2-{tag}", email=f"del2-{tag}@example.org", password="pw-del2-" + tag
    )
    box1 = [[10.2, 10.3], [50.6, 10.3], [50.6, 50.7], [10.2, 50.7]]
    box2 = [[20.1, 20.4], [60.3, 20.4], [60.3, 60.2], [20.1, 60.2]]
    box3 = [[5.5, 30.2], [40.4, 30.2], [22.8, 70.1]]

    def create(rec, pts, **kw) -> str:
        res = [polygon_result(pts, rec.width, rec.height)]
        return str(ls.annotations.create(id=tasks[rec.image_id]["id"], result=res, **kw).id)

    a1 = create(rec_a, box1)
    a2 = create(rec_a, box2, completed_by=u2.id)
    b1 = create(rec_b, box3)
    first = loop.pull_masks(ws, "labelstudio", options=opts, consensus_rule="union", progress=False)
    assert first.masks_written == 2 and first.deleted_annotations == 0
    got_a = ws.ledger.get(rec_a.image_id)
    assert got_a is not None and got_a.mask is not None and got_a.mask.version == 1
    want_union = rasterize_centres([box1], rec_a.height, rec_a.width) | rasterize_centres(
        [box2], rec_a.height, rec_a.width
    )
    assert np.array_equal(read_mask_png(ws.abs(got_a.mask.path)), want_union)

    time.sleep(1.1)
    ls.annotations.delete(id=int(a2))
    ls.annotations.delete(id=int(b1))
    a3 = create(rec_a, box3)  # and a new one on A in the same round
    second = loop.pull_masks(
        ws, "labelstudio", options=opts, consensus_rule="union", progress=False
    )
    assert second.deleted_annotations == 2, second.to_json()
    assert second.masks_withdrawn == [rec_b.image_id]
    assert second.masks_written == 1 and second.new_annotations == 1
    got_a = ws.ledger.get(rec_a.image_id)
    got_b = ws.ledger.get(rec_b.image_id)
    assert got_a is not None and got_b is not None
    status_a = {a.annotation_id: a.status for a in got_a.annotations}
    assert status_a == {a1: "submitted", a2: "deleted", a3: "submitted"}
    # one new version for the deletion and the new annotation together
    assert got_a.mask is not None and got_a.mask.version == 2
    assert got_a.mask.annotation_ids == tuple(sorted([f"labelstudio:{a1}", f"labelstudio:{a3}"]))
    assert np.array_equal(
        read_mask_png(ws.abs(got_a.mask.path)),
        rasterize_centres([box1], rec_a.height, rec_a.width)
        | rasterize_centres([box3], rec_a.height, rec_a.width),
    )
    assert got_b.mask is None and [a.status for a in got_b.annotations] == ["deleted"]
    assert got_b.state == "pushed"
    assert (ws.root / "masks" / f"{rec_b.image_id}-v1.png").is_file()  # history kept on disk
    st = loop.workspace_status(ws)
    assert st["masks"]["count"] == 1

    third = loop.pull_masks(ws, "labelstudio", options=opts, consensus_rule="union", progress=False)
    assert third.deleted_annotations == 0 and third.masks_written == 0
    assert ws.ledger.get(rec_a.image_id) == got_a and ws.ledger.get(rec_b.image_id) == got_b


# --------------------------------------------------------------------------- reliability
@pytest.mark.server
def test_push_interrupted_by_a_server_stop_resumes_without_duplicates(
    ls_server: LSServer, tmp_path: Path
) -> None:
    n = 30
    ws, records = phantom_workspace(tmp_path, n, size=64, seed=3)
    ws.config["labelstudio"]["project_title"] = f"interrupt-{uuid.uuid4().hex[:8]}"
    opts = ls_server.options(chunk_size=3, retries=1, backoff=0.1, timeout=10)
    first_chunk = threading.Event()
    committed: dict[str, JobRef] = {}

    def on_pushed(jobs):  # what loop.push_jobs commits to the ledger
        committed.update(jobs)
        first_chunk.set()

    killer = threading.Thread(target=lambda: (first_chunk.wait(60), ls_server.stop()))
    killer.start()
    be = LabelStudioBackend(ws, **opts)
    try:
        with pytest.raises(BackendUnavailable) as err:
            be.push(_items(ws), progress=False, on_pushed=on_pushed)
    finally:
        killer.join()
        ls_server.start()  # same data dir and port
    assert ls_server.url in err.value.message and "camlabel labelstudio start" in (
        err.value.hint or ""
    )
    assert 0 < len(committed) < n
    project = be.describe()["project"]
    before = {t["data"]["camlabel_image_id"] for t in _project_tasks(ls_server, project)}
    assert set(committed) <= before

    report = loop.push_jobs(
        ws, "labelstudio", options=ls_server.options(chunk_size=7), progress=False
    )
    assert report.project == project
    assert len(report.pushed) + len(report.already_present) == n
    assert before <= set(report.already_present)
    tasks = _project_tasks(ls_server, project)
    hashes = [t["data"]["camlabel_image_id"] for t in tasks]
    assert len(hashes) == n and set(hashes) == {r.image_id for r in records}
    assert all(r.jobs["labelstudio"].project == project for r in ws.ledger.all())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_fails_fast_without_leaking_the_token(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    token = "tok-" + uuid.uuid4().hex
    url = f"http://127.0.0.1:{_closed_port()}"
    png = ws.dir("images") / ("a" * 64 + ".png")
    png.write_bytes(b"\x89PNG")
    item = PushItem(image_id="a" * 64, width=10, height=10, display_png=png)
    be = LabelStudioBackend(ws, url=url, token=token, retries=2, backoff=0.1, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        be.push([item], progress=False)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"took {elapsed:.1f} s"
    text = str(err.value)
    assert url in text and "3 attempt(s)" in text and "camlabel labelstudio start" in text
    assert token not in text and token not in repr(err.value)
    with pytest.raises(BackendUnavailable) as err2:
        LabelStudioBackend(ws, url=url, token=token, retries=0).pull(
            {"a" * 64: JobRef(backend="labelstudio", project="1", task="1")}, progress=False
        )
    assert token not in str(err2.value) and url in str(err2.value)


def test_no_server_and_no_url_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAMLABEL_LS_URL", raising=False)
    ws = Workspace.init(tmp_path / "ws")
    with pytest.raises(BackendUnavailable) as err:
        LabelStudioBackend(ws).pull({}, progress=False)
    assert "camlabel labelstudio start" in (err.value.hint or "")


@pytest.mark.server
def test_a_wrong_token_is_refused_and_never_echoed(ls_server: LSServer, tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    bad = "bad" + uuid.uuid4().hex
    with pytest.raises(BackendError) as err:
        LabelStudioBackend(ws, url=ls_server.url, token=bad, upload=False).ensure_project()
    assert "401" in err.value.message and bad not in str(err.value)
    assert not isinstance(err.value, BackendUnavailable)


def test_dry_run_calls_nothing_and_writes_the_payload(tmp_path: Path) -> None:
    ws, records = phantom_workspace(tmp_path, 2)
    url = f"http://127.0.0.1:{_closed_port()}"
    report = loop.push_jobs(
        ws, "labelstudio", options={"url": url, "token": "x" * 40}, dry_run=True, progress=False
    )
    (path,) = report.dry_run_files
    payload = json.loads(path.read_text())
    assert len(payload["tasks"]) == 2 and "x" * 40 not in path.read_text()
    assert {t["data"]["camlabel_image_id"] for t in payload["tasks"]} == {
        r.image_id for r in records
    }
    assert all(not r.jobs for r in ws.ledger.all())


@pytest.mark.server
def test_an_import_whose_answer_is_lost_is_not_sent_twice(
    ls_server: LSServer, tmp_path: Path
) -> None:
    """The server commits a chunk but the response never arrives (read timeout)."""
    ws, records = phantom_workspace(tmp_path, 6, size=64, seed=9)
    ws.config["labelstudio"]["project_title"] = f"lost-answer-{uuid.uuid4().hex[:8]}"
    be = LabelStudioBackend(ws, **ls_server.options(chunk_size=4, backoff=0.05))
    be.ls  # noqa: B018  (creates the HTTP client)
    assert be._http is not None
    real = be._http.request
    posts: list[str] = []

    def answer_lost(method: str, url: str, **kw):  # type: ignore[no-untyped-def]
        resp = real(method, url, **kw)
        if method == "POST" and url.endswith("/import"):
            posts.append(url)
            if len(posts) == 1:
                raise httpx.ReadTimeout("the answer was lost", request=resp.request)
        return resp

    be._http.request = answer_lost  # type: ignore[method-assign]
    report = be.push(_items(ws), progress=False)
    assert len(posts) == 2  # the first chunk was never re-sent; the second went normally
    tasks = _project_tasks(ls_server, report.project)
    assert len(tasks) == 6 and {t["data"]["camlabel_image_id"] for t in tasks} == {
        r.image_id for r in records
    }
    by_hash = {t["data"]["camlabel_image_id"]: str(t["id"]) for t in tasks}
    assert {k: v.task for k, v in report.pushed.items()} == by_hash


@pytest.mark.server
def test_upload_mode_for_a_remote_server(ls_server: LSServer, tmp_path: Path) -> None:
    """--upload: the display PNGs go through the import API; tasks point at the uploads."""
    ws, _ = phantom_workspace(tmp_path, 3, size=64, seed=21)
    ws.config["labelstudio"]["project_title"] = f"upload-{uuid.uuid4().hex[:8]}"
    opts = {"url": ls_server.url, "token": ls_server.token, "upload": True}
    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    assert len(report.pushed) == 3 and report.details["images"] == "upload"
    tasks = _project_tasks(ls_server, report.project)
    assert len(tasks) == 3
    ledger = {r.image_id: r for r in ws.ledger.all()}
    for task in tasks:
        image_id = task["data"]["camlabel_image_id"]
        url = task["data"]["image"]
        assert url.startswith(f"/data/upload/{report.project}/") and url.endswith(
            f"-{image_id}.png"
        )
        resp = httpx.get(ls_server.url + url, headers={"Authorization": f"Token {ls_server.token}"})
        assert resp.status_code == 200
        assert resp.content == ws.abs(ledger[image_id].display_path).read_bytes()
    again = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    assert not again.pushed and len(again.already_present) == 3
    assert len(_project_tasks(ls_server, report.project)) == 3


@pytest.mark.server
def test_two_rounds_go_to_one_project_with_scores_and_a_brush_for_holes(
    ls_server: LSServer, tmp_path: Path
) -> None:
    """Round 1 (2 images chosen by uncertainty), round 2 (the rest, one of them with a
    segmenter pre-annotation that has a hole): one project, the selection score as the
    prediction score, the holed region as brush RLE whose pixels are the polygon's."""
    from camlabel.backends.labelstudio.convert import brush_rle_to_mask
    from camlabel.geometry import PolygonPx, polygons_to_mask
    from camlabel.records import Preannotation, Prediction

    ws, records = phantom_workspace(tmp_path, 4)
    ws.config["labelstudio"]["project_title"] = f"rounds-{uuid.uuid4().hex[:8]}"
    probs = [(0.9, 0.05, 0.05), (0.34, 0.33, 0.33), (0.5, 0.4, 0.1), (0.7, 0.2, 0.1)]
    ring = {
        "exterior": [[10.0, 10.0], [60.0, 10.0], [60.0, 60.0], [10.0, 60.0]],
        "holes": [[[25.0, 25.0], [45.0, 25.0], [45.0, 45.0], [25.0, 45.0]]],
    }
    holed = records[0].image_id
    with ws.ledger.transaction() as txn:
        for rec, p in zip(records, probs, strict=True):
            d = dict(zip(("covid", "pneumonia", "normal"), p, strict=True))
            cur = txn.get(rec.image_id)
            assert cur is not None
            cur = cur.evolve(prediction=Prediction(max(d, key=d.__getitem__), max(p), d, "m1"))
            if rec.image_id == holed:
                cur = cur.evolve(
                    preannotation=Preannotation((ring,), "segmenter", "seg-1", uncertainty=0.3)
                )
            txn.put(cur)
    opts = ls_server.options()
    first = loop.push_jobs(ws, "labelstudio", options=opts, select=2, progress=False)
    second = loop.push_jobs(ws, "labelstudio", options=opts, select=2, progress=False)
    assert first.project == second.project and len(first.pushed) == len(second.pushed) == 2
    ledger = {r.image_id: r for r in ws.ledger.all()}
    assert sorted(r.jobs["labelstudio"].round for r in ledger.values()) == [1, 1, 2, 2]
    tasks = {t["data"]["camlabel_image_id"]: t for t in _project_tasks(ls_server, first.project)}
    assert len(tasks) == 4
    for image_id, task in tasks.items():
        (pred,) = task["predictions"]
        rec = ledger[image_id]
        assert rec.prediction is not None
        if image_id == holed:
            assert pred["score"] == pytest.approx(0.3)  # the segmenter's own uncertainty
            (brush,) = [r for r in pred["result"] if r["type"] == "brushlabels"]
            got = brush_rle_to_mask(brush["value"]["rle"], rec.height, rec.width)
            want = polygons_to_mask([PolygonPx.from_json(ring)], rec.height, rec.width)
            assert np.array_equal(got, want) and not got[35, 35]
        else:
            from camlabel.active import normalized_entropy

            want_score = normalized_entropy(rec.prediction.probabilities)
            assert pred["score"] == pytest.approx(want_score, abs=1e-5)


def test_paged_export_reads_every_task_and_finds_renumbered_ones(
    ls_server: LSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pull exports by task id, a few ids per request, the next page prefetched."""
    from camlabel.backends.labelstudio import backend as ls_backend

    monkeypatch.setattr(ls_backend, "EXPORT_PAGE", 2)  # 5 tasks: 3 pages
    ws, records = phantom_workspace(tmp_path, 5, size=64, seed=13)
    ws.config["labelstudio"]["project_title"] = f"paged-{uuid.uuid4().hex[:8]}"
    opts = ls_server.options(cursor_margin_s=0)
    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    tasks = {t["data"]["camlabel_image_id"]: t for t in _project_tasks(ls_server, report.project)}
    ls = ls_server.sdk()
    shapes = [[10.2, 11.7], [40.6, 12.3], [30.1, 50.4]]
    for rec in records:
        ls.annotations.create(
            id=tasks[rec.image_id]["id"], result=[polygon_result(shapes, rec.width, rec.height)]
        )
    jobs = {r.image_id: r.jobs["labelstudio"] for r in ws.ledger.all()}
    renumbered = records[2].image_id
    jobs[renumbered] = JobRef(
        backend="labelstudio", project=report.project, task="999999", extra=jobs[renumbered].extra
    )
    be = LabelStudioBackend(ws, **opts)
    pulled = be.pull(jobs, progress=False)
    assert not pulled.failures
    by_id = {o.image_id: o for o in pulled.outcomes}
    assert set(by_id) == {r.image_id for r in records}
    for rec in records:
        want = rasterize_centres([shapes], rec.height, rec.width)
        out = by_id[rec.image_id]
        assert out.status == "annotated" and out.job.task == str(tasks[rec.image_id]["id"])
        (ann,) = out.annotations
        assert ann.mask is not None and np.array_equal(ann.mask, want)
