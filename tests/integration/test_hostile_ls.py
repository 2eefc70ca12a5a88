"""Hostile conditions against a real Label Studio (tests/lsserver.py) or a frozen socket:
concurrent pushes, duplicate tasks and their repair, malformed annotations among good ones,
a task deleted between two incremental pulls, a server that accepts and never answers.

Assertions are on the server's tasks, the ledger and the mask files, plus the CLI's exit
code and message.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camlabel import loop
from camlabel.imaging import read_mask_png
from camlabel.workspace import Workspace
from tests.integration.lshelpers import phantom_workspace, polygon_result
from tests.lsserver import LSServer

REPO = Path(__file__).resolve().parents[2]


def _tasks(server: LSServer, project: str | int) -> list[dict[str, Any]]:
    ls = server.sdk()
    return [
        t.model_dump() for t in ls.tasks.list(project=int(project), fields="all", page_size=1000)
    ]


def _titled(ws: Workspace, prefix: str) -> None:
    ws.config["labelstudio"]["project_title"] = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ws.save_config()


def _pushed(server: LSServer, tmp_path: Path, n: int, prefix: str) -> tuple[Any, ...]:
    """A phantom workspace pushed to a new project: (ws, opts, sdk, records, tasks by image)."""
    ws, _ = phantom_workspace(tmp_path, n, size=64)
    _titled(ws, prefix)
    opts = server.options(cursor_margin_s=0)
    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    recs = sorted(ws.ledger.all(), key=lambda r: r.image_id)
    tasks = {t["data"]["camlabel_image_id"]: t for t in _tasks(server, report.project)}
    return ws, opts, server.sdk(), recs, tasks


SQUARE = [[8.2, 8.1], [30.3, 8.1], [30.3, 30.2], [8.2, 30.2]]


def _env(server: LSServer | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CAMLABEL_QUIET": "1", "OMP_NUM_THREADS": "1"}
    if server is not None:
        env |= {
            "CAMLABEL_LS_URL": server.url,
            "CAMLABEL_LS_TOKEN": server.token,
            "CAMLABEL_LS_UPLOAD": "false",
            "CAMLABEL_LS_DOCUMENT_ROOT": str(server.document_root),
        }
    return env | extra


def _cli(*args: str, server: LSServer | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camlabel", *args],
        capture_output=True,
        text=True,
        env=_env(server, **env),
        timeout=300,
        cwd=REPO,
    )


# --------------------------------------------------------------------------- push lock
@pytest.mark.server
def test_concurrent_push_jobs_make_each_task_once(ls_server: LSServer, tmp_path: Path) -> None:
    """Two push-jobs processes started together: the second waits for the lock, then finds
    every image present. Without the lock both listed an empty project and imported all."""
    n = 12
    ws, records = phantom_workspace(tmp_path, n, size=64)
    _titled(ws, "race")
    # chunks of 2 stretch the push over several requests, widening the old race window
    env = _env(ls_server, CAMLABEL_LS_CHUNK_SIZE="2")
    cmd = [sys.executable, "-m", "camlabel", "push-jobs", "-w", str(ws.root), "--json"]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    tasks_project = {t["project"] for t in _tasks_all_projects(ls_server, ws)}
    assert len(tasks_project) == 1
    (project,) = tasks_project
    tasks = _tasks(ls_server, project)
    per_image = Counter(t["data"]["camlabel_image_id"] for t in tasks)
    assert per_image == Counter({r.image_id: 1 for r in records})
    ledger = {r.image_id: r.jobs["labelstudio"].task for r in Workspace.open(ws.root).ledger.all()}
    assert ledger == {t["data"]["camlabel_image_id"]: str(t["id"]) for t in tasks}
    import json

    reports = [json.loads(out) for out, _ in outs]
    assert sorted(r["pushed"] for r in reports) == [0, n]
    assert sorted(r["already_present"] for r in reports) == [0, n]


def _tasks_all_projects(server: LSServer, ws: Workspace) -> list[dict[str, Any]]:
    title = ws.config["labelstudio"]["project_title"]
    ls = server.sdk()
    out = []
    for p in ls.projects.list(title=title):
        if p.title == title:
            out.extend({**t, "project": p.id} for t in _tasks(server, p.id))
    return out


# --------------------------------------------------------------------------- duplicates
@pytest.mark.server
def test_duplicate_tasks_are_reported_then_repaired_keeping_the_annotated_one(
    ls_server: LSServer, tmp_path: Path
) -> None:
    ws, _ = phantom_workspace(tmp_path, 3, size=64)
    _titled(ws, "dups")
    opts = ls_server.options(cursor_margin_s=0)
    report = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    pid = int(report.project)
    ls = ls_server.sdk()
    recs = sorted(ws.ledger.all(), key=lambda r: r.image_id)
    first = {t["data"]["camlabel_image_id"]: t for t in _tasks(ls_server, pid)}
    # Duplicates as a racing push made them: same data, imported again.
    ls.projects.import_tasks(
        pid, request=[{"data": dict(first[r.image_id]["data"])} for r in recs[:2]]
    )
    dup = {
        t["data"]["camlabel_image_id"]: t
        for t in _tasks(ls_server, pid)
        if t["id"] != first[t["data"]["camlabel_image_id"]]["id"]
    }
    assert set(dup) == {recs[0].image_id, recs[1].image_id}
    # The annotator worked on the duplicate of image 1.
    r1 = recs[1]
    square = [[8.2, 8.1], [30.3, 8.1], [30.3, 30.2], [8.2, 30.2]]
    ls.annotations.create(
        id=dup[r1.image_id]["id"], result=[polygon_result(square, r1.width, r1.height)]
    )

    # A pull reads the annotated task and says how to repair.
    pulled = loop.pull_masks(ws, "labelstudio", options=opts, progress=False)
    assert pulled.masks_written == 1
    rec1 = Workspace.open(ws.root).ledger.get(r1.image_id)
    assert rec1 is not None and rec1.mask is not None
    assert read_mask_png(ws.abs(rec1.mask.path)).sum() == 22 * 22
    reasons = dict(pulled.failed)
    assert "--repair-duplicates" in reasons[r1.image_id[:12]]

    # push-jobs reports both duplicates (and deletes nothing) ...
    again = loop.push_jobs(ws, "labelstudio", options=opts, progress=False)
    reasons = dict(again.failures)
    assert set(reasons) == {recs[0].image_id[:12], r1.image_id[:12]}
    assert all("push-jobs --repair-duplicates" in v for v in reasons.values())
    assert len(_tasks(ls_server, pid)) == 5
    # ... and with --repair-duplicates deletes the extra ones, never the annotated task.
    fixed = loop.push_jobs(
        ws, "labelstudio", options={**opts, "repair_duplicates": True}, progress=False
    )
    assert not fixed.failures and fixed.details["duplicates_deleted"] == 2
    left = {t["data"]["camlabel_image_id"]: t for t in _tasks(ls_server, pid)}
    assert len(left) == 3 and len(_tasks(ls_server, pid)) == 3
    assert left[r1.image_id]["id"] == dup[r1.image_id]["id"]  # the annotated one
    assert left[recs[0].image_id]["id"] == first[recs[0].image_id]["id"]  # the oldest
    jobs = {r.image_id: r.jobs["labelstudio"].task for r in Workspace.open(ws.root).ledger.all()}
    assert jobs == {iid: str(t["id"]) for iid, t in left.items()}


# --------------------------------------------------------------------------- pull
@pytest.mark.server
def test_malformed_annotations_are_refused_one_by_one_and_the_rest_pulled(
    ls_server: LSServer, tmp_path: Path
) -> None:
    ws, _opts, ls, recs, tasks = _pushed(ls_server, tmp_path, 4, "bad-ann")
    good, bad_size, two_points, banana = recs
    square = SQUARE

    def size(rec: Any) -> tuple[int, int]:
        return rec.width, rec.height

    def annotate(rec: Any, region: dict[str, Any]) -> int:
        return int(ls.annotations.create(id=tasks[rec.image_id]["id"], result=[region]).id)

    annotate(good, polygon_result(square, good.width, good.height))
    annotate(bad_size, {**polygon_result(square, *size(bad_size)), "original_width": "abc"})
    annotate(two_points, polygon_result(square[:2], *size(two_points)))
    banana_id = annotate(banana, polygon_result(square, *size(banana), label="Banana"))

    res = _cli("pull-masks", "-w", str(ws.root), server=ls_server)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "3 task(s) could not be read; the others were pulled" in res.stderr
    assert "original_width must be a whole number" in res.stderr
    assert "a polygon needs at least 3 points" in res.stderr
    assert "label 'Banana' is not the lesion label 'Opacity'" in res.stderr
    ledger = {r.image_id: r for r in Workspace.open(ws.root).ledger.all()}
    assert ledger[good.image_id].mask is not None
    assert read_mask_png(ws.abs(ledger[good.image_id].mask.path)).sum() == 22 * 22
    for rec in (bad_size, two_points, banana):
        assert ledger[rec.image_id].mask is None and not ledger[rec.image_id].annotations
    # The cursor moves on but keeps the refused tasks ("retry"): once the annotator fixes one,
    # the next (incremental) pull reads it; the two others are read and reported again.
    cursor = json.loads((ws.root / "exports" / "labelstudio-cursor.json").read_text())
    assert cursor["retry"] == sorted(r.image_id for r in (bad_size, two_points, banana))
    ls.annotations.update(id=banana_id, result=[polygon_result(square, *size(banana))])
    res = _cli("pull-masks", "-w", str(ws.root), "--json", server=ls_server)
    assert res.returncode == 1 and "2 task(s) could not be read" in res.stderr, res.stderr
    assert json.loads(res.stdout)["tasks"] >= 3
    cursor = json.loads((ws.root / "exports" / "labelstudio-cursor.json").read_text())
    assert cursor["retry"] == sorted(r.image_id for r in (bad_size, two_points))
    fixed = Workspace.open(ws.root).ledger.get(banana.image_id)
    assert fixed is not None and fixed.mask is not None
    assert read_mask_png(ws.abs(fixed.mask.path)).sum() == 22 * 22


@pytest.mark.server
def test_incremental_pull_notices_a_task_deleted_in_label_studio(
    ls_server: LSServer, tmp_path: Path
) -> None:
    ws, opts, ls, recs, tasks = _pushed(ls_server, tmp_path, 2, "deleted")
    square = SQUARE
    for rec in recs:
        ls.annotations.create(
            id=tasks[rec.image_id]["id"], result=[polygon_result(square, rec.width, rec.height)]
        )
    first = loop.pull_masks(ws, "labelstudio", options=opts, progress=False)
    assert first.masks_written == 2 and not first.failed
    ls.tasks.delete(str(tasks[recs[0].image_id]["id"]))
    second = loop.pull_masks(ws, "labelstudio", options=opts, progress=False)  # incremental
    reasons = dict(second.failed)
    assert list(reasons) == [recs[0].image_id[:12]]
    assert (
        f"task {tasks[recs[0].image_id]['id']} is no longer in project"
        in reasons[recs[0].image_id[:12]]
    )


# --------------------------------------------------------------------------- frozen server
@pytest.fixture
def frozen_server() -> Iterator[str]:
    """A socket that accepts connections and never answers (a SIGSTOPped server looks so)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


@pytest.mark.parametrize("command", ["pull-masks", "push-jobs"])
def test_a_frozen_server_is_a_clear_error_within_the_timeout(
    frozen_server: str, tmp_path: Path, command: str
) -> None:
    from camlabel.records import JobRef

    ws, _ = phantom_workspace(tmp_path, 1, size=64)
    with ws.ledger.transaction() as txn:
        for rec in txn.all():
            txn.put(rec.with_job(JobRef(backend="labelstudio", project="1", task="1")))
    t0 = time.monotonic()
    res = _cli(
        command,
        "-w",
        str(ws.root),
        "--url",
        frozen_server,
        "--token",
        "secret-token-123",
        CAMLABEL_LS_TIMEOUT="2",
        CAMLABEL_LS_RETRIES="4",
    )
    elapsed = time.monotonic() - t0
    assert res.returncode == 1, res.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s"  # interpreter start + one 2 s timeout
    assert "Traceback" not in res.stderr
    assert frozen_server in res.stderr and "did not answer" in res.stderr
    assert "timed out after 2 s" in res.stderr and "CAMLABEL_LS_TIMEOUT" in res.stderr
    assert "secret-token-123" not in res.stderr + res.stdout


@pytest.mark.server
def test_a_frozen_embedded_server_is_not_called_stopped(
    ls_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from click.testing import CliRunner

    from camlabel.backends.labelstudio import server as srv
    from camlabel.cli.main import cli

    for var in ("CAMLABEL_LS_URL", "CAMLABEL_LS_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    ws, _ = phantom_workspace(tmp_path, 1, size=64)
    runner = CliRunner()
    try:
        res = runner.invoke(cli, ["labelstudio", "start", "-w", str(ws.root)])
        assert res.exit_code == 0, res.output
        pid = srv.status(ws).pid
        assert pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            res = runner.invoke(cli, ["push-jobs", "-w", str(ws.root)])
            elapsed = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert res.exit_code == 1 and elapsed < 20, (elapsed, res.output)
        assert f"(pid {pid}," in res.output and "is running but does not answer" in res.output
        assert "frozen" in res.output and "not running" not in res.output
    finally:
        srv.stop(ws, grace=3)
