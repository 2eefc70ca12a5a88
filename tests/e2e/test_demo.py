"""`camlabel demo --quick`: the whole loop on the embedded Label Studio, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camlabel import labelstudio_server as srv
from camlabel.errors import ConfigError
from camlabel.workspace import Workspace

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_quick_demo_runs_the_loop_to_a_report(tmp_path: Path, artifacts_dir: Path) -> None:
    try:
        srv.find_ls_bin()
    except ConfigError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"Label Studio server not installed: {exc.message}")
    ws_dir = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "camlabel", "demo", "-w", str(ws_dir), "--quick", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "CAMLABEL_QUIET": "1"},
    )
    (artifacts_dir / "demo-quick.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in ("1/9", "5/9", "7/9", "9/9"):
        assert step in r.stderr
    ws = Workspace.open(ws_dir)
    summary = json.loads((ws_dir / "reports" / "summary.json").read_text())
    recs = ws.ledger.all()
    assert len(recs) == 24
    pushed = [x for x in recs if "labelstudio" in x.jobs]
    masked = [x for x in recs if x.mask is not None]
    assert len(pushed) == 24  # --quick pre-annotates every image
    assert summary["masks"] == len(masked) >= 12
    skipped = [x for x in recs if x.state == "skipped"]
    assert len(masked) + len(skipped) == len(pushed)
    for x in masked:  # each mask is a real file at the image's size, with provenance
        assert (ws_dir / x.mask.path).is_file()
        assert x.mask.annotation_ids and x.mask.consensus == "majority"
    assert summary["preannotation_iou_mean"] is not None
    held = json.loads((ws_dir / "reports" / "heldout.json").read_text())
    assert len(held) == 9 and all(Path(h["overlay_path"]).is_file() for h in held)
    html = (ws_dir / "reports" / "index.html").read_text()
    assert "Masks and U-Net predictions" in html and "Grad-CAM pointing game" in html
    # the embedded server was stopped
    assert not srv.status(ws).running
    # a second run resumes: nothing is pushed or annotated twice
    r2 = subprocess.run(
        [sys.executable, "-m", "camlabel", "demo", "-w", str(ws_dir), "--quick", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "CAMLABEL_QUIET": "1"},
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "0 new task(s), 24 already present" in r2.stderr
    assert len(Workspace.open(ws_dir).ledger.all()) == 24
