"""The embedded Label Studio on a real PostgreSQL server (both started here, loopback only)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from camlabel import loop
from camlabel.backends.labelstudio import server as srv
from camlabel.cli.main import cli
from camlabel.imaging import read_mask_png
from tests.integration.lshelpers import phantom_workspace, polygon_result, rasterize_centres
from tests.pgserver import PGServer, pg_server  # noqa: F401  (the session fixture)


def _group_cmdlines(pgid: int) -> list[bytes]:
    """Command lines of every process in the server's process group (it and its children)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) == pgid:
                out.append((proc / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.server
@pytest.mark.slow
def test_embedded_server_keeps_its_tasks_in_postgresql(
    pg_server: PGServer,  # noqa: F811
    ls_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dbname = f"ls_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(dbname)
    password = pg_server.password
    monkeypatch.setenv("CAMLABEL_LS_DB_PASSWORD", password)
    ws, records = phantom_workspace(tmp_path, 4, size=96, seed=5)
    runner = CliRunner()
    start_args = ["labelstudio", "start", "-w", str(ws.root), "--timeout", "300", "--json"]
    res = runner.invoke(cli, [*start_args, "--database", url, "--port", str(srv.free_port())])
    assert res.exit_code == 0, res.output
    try:
        st = json.loads(res.output)
        assert st["running"] is True and st["database"] == url
        assert password not in res.output
        # The tables are in PostgreSQL: no SQLite database was created or copied.
        assert not (ws.root / "labelstudio" / "label_studio.sqlite3").exists()
        assert json.loads((ws.root / "labelstudio" / "database.json").read_text()) == {"url": url}
        # The password is in no command line of the server or its children.
        cmdlines = _group_cmdlines(st["pid"])
        assert cmdlines and all(password.encode() not in c for c in cmdlines)

        # push (idempotent), annotate two tasks through the API, pull.
        report = loop.push_jobs(ws, "labelstudio", options={"cursor_margin_s": 0}, progress=False)
        assert len(report.pushed) == 4 and not report.failures
        rows = pg_server.psql(
            "SELECT id, data->>'camlabel_image_id' FROM task "
            f"WHERE project_id = {int(report.project)} ORDER BY id",
            database=dbname,
        ).splitlines()
        in_pg = dict(reversed(r.split("|")) for r in rows)
        assert set(in_pg) == {r.image_id for r in records}
        ledger = {r.image_id: r for r in ws.ledger.all()}
        assert {i: r.jobs["labelstudio"].task for i, r in ledger.items()} == in_pg
        again = loop.push_jobs(ws, "labelstudio", options={"cursor_margin_s": 0}, progress=False)
        assert not again.pushed and len(again.already_present) == 4

        from label_studio_sdk import LabelStudio

        token = json.loads((ws.root / "secrets" / "labelstudio.json").read_text())["token"]
        ls = LabelStudio(base_url=st["url"], api_key=token, timeout=60)
        shapes = {
            records[0].image_id: [[10.3, 12.6], [60.2, 14.9], [35.7, 70.1]],
            records[1].image_id: [[30.1, 30.4], [80.6, 33.2], [70.3, 85.9], [28.8, 77.1]],
        }
        expected = {}
        for image_id, pts in shapes.items():
            rec = ledger[image_id]
            ls.annotations.create(
                id=int(in_pg[image_id]), result=[polygon_result(pts, rec.width, rec.height)]
            )
            expected[image_id] = rasterize_centres([pts], rec.height, rec.width)
        count = pg_server.psql(
            f"SELECT count(*) FROM task_completion WHERE project_id = {int(report.project)}",
            database=dbname,
        )
        assert count == "2"

        pulled = loop.pull_masks(ws, "labelstudio", options={"cursor_margin_s": 0}, progress=False)
        assert pulled.new_annotations == 2
        for image_id, want in expected.items():
            rec = ws.ledger.get(image_id)
            assert rec is not None and rec.mask is not None
            got = read_mask_png(ws.abs(rec.mask.path))
            assert np.array_equal(got, want), f"{int((got ^ want).sum())} pixel(s) differ"

        res = runner.invoke(cli, ["labelstudio", "status", "-w", str(ws.root), "--json"])
        assert res.exit_code == 0 and password not in res.output
        assert json.loads(res.output)["database"] == url

        # A restart without --database reuses the recorded database (the tasks are still there);
        # another database is refused instead of silently starting an empty server.
        assert runner.invoke(cli, ["labelstudio", "stop", "-w", str(ws.root)]).exit_code == 0
        monkeypatch.delenv("CAMLABEL_LS_DB_PASSWORD")
        (ws.root / "secrets" / "labelstudio-db.json").write_text(json.dumps({"password": password}))
        res = runner.invoke(cli, start_args)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["database"] == url
        assert loop.push_jobs(ws, "labelstudio", progress=False).already_present.keys() == set(
            in_pg
        )
        other = pg_server.url("postgres")
        res = runner.invoke(cli, ["labelstudio", "start", "-w", str(ws.root), "--database", other])
        assert res.exit_code == 1 and "was set up on " + url in res.output
    finally:
        runner.invoke(cli, ["labelstudio", "stop", "-w", str(ws.root)])

    # No log, ledger, run record or state file in the workspace holds the password.
    for path in ws.root.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(ws.root).parts:
            assert password.encode() not in path.read_bytes(), path
