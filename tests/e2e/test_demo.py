"""`camlabel demo --quick`: the whole loop on the embedded Label Studio, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camlabel.backends.labelstudio import server as srv
from camlabel.errors import ConfigError
from camlabel.workspace import Workspace

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _require_ls_server() -> None:
    """Skip without the Label Studio server's venv, except in CI, where it must be there."""
    try:
        srv.find_ls_bin()
    except ConfigError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"Label Studio server not installed: {exc.message}")


def test_quick_demo_runs_the_loop_to_a_report(tmp_path: Path, artifacts_dir: Path) -> None:
    _require_ls_server()
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
    for step in ("1/12", "5/12", "7/12", "9/12", "10/12", "11/12", "12/12"):
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
    raw, refined = summary["pointing_game"], summary["pointing_game_refined"]
    assert raw["lesion_images"] == refined["lesion_images"] >= 1
    assert summary["pointing_game_hit_rate"] == raw["hits"] / raw["lesion_images"]
    assert refined["rate"] == refined["hits"] / refined["lesion_images"]
    # two rounds: 14 images on CAM pre-annotations, then the 10 others on round 1's U-Net's
    by_round = {n: [x for x in pushed if x.jobs["labelstudio"].round == n] for n in (1, 2)}
    assert len(by_round[1]) == 14 and len(by_round[2]) == 10
    assert all(x.preannotation.source != "segmenter" for x in by_round[1])
    # round 2: the U-Net's, or the CAM's kept where that U-Net found nothing (fallback_for)
    seg_versions = {
        x.preannotation.model_version
        if x.preannotation.source == "segmenter"
        else x.preannotation.fallback_for
        for x in by_round[2]
    }
    assert seg_versions == {summary["segmenter_init"]}
    for x in by_round[2]:
        if x.preannotation.source != "segmenter":
            assert x.preannotation.polygons and x.preannotation.fallback_for
    assert set(summary["rounds"]) == {"1", "2"}
    for key, rnd in summary["rounds"].items():
        assert rnd["published"] == len(by_round[int(key)])
        assert rnd["heldout_lesion_dice"] is not None and 0.0 <= rnd["heldout_lesion_dice"] <= 1
        assert rnd["lesion_images"] >= 1
        assert 0.0 <= rnd["final_mask_dice_truth_mean"] <= 1.0
        assert 0.0 <= rnd["preannotation_iou_truth_median"] <= 1.0
    sources2 = summary["rounds"]["2"]["sources"]
    assert sum(sources2.values()) == 10
    version = seg_versions.pop()
    assert all(
        k == f"segmenter {version}" or f"(segmenter {version} found nothing)" in k for k in sources2
    )
    # every image went to annotators, so no image is a lesion-free negative by label alone
    assert summary["segmenter_negatives"] == 0
    held = json.loads((ws_dir / "reports" / "heldout.json").read_text())
    assert len(held) == 9 and all(Path(h["overlay_path"]).is_file() for h in held)
    for h in held:  # the lung field only removes mask pixels: Dice within it is never lower
        if h["dice"] is not None:  # (no FP outside the lungs can count against it)
            assert 0.0 <= h["dice_without_lung_field"] <= 1.0
    rim = summary["pointing_game_refined_rim"]
    assert rim["lesion_images"] == raw["lesion_images"]
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
    # both rounds are full: nothing new is pushed in either
    assert r2.stderr.count("0 new task(s), 0 already present") == 2
    assert {x.image_id: x.jobs for x in Workspace.open(ws_dir).ledger.all()} == {
        x.image_id: x.jobs for x in recs
    }
    assert len(Workspace.open(ws_dir).ledger.all()) == 24


def test_interactive_demo_waits_for_a_person_and_goes_on(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    """`demo --interactive`: the loop stops after push-jobs, prints the URL and login, and
    goes on to pull-masks, training and the report once a "person" (here: this test, through
    the Label Studio API, as the browser would) has annotated or skipped every task."""
    import csv
    import time

    from camlabel.backends.base import get_backend
    from camlabel.backends.labelstudio.simulate import simulate_annotators
    from camlabel.imaging import read_mask_png

    _require_ls_server()
    ws_dir = tmp_path / "demo-i"
    log = artifacts_dir / "demo-interactive.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "camlabel",
                "demo",
                "-w",
                str(ws_dir),
                "--quick",
                "--interactive",
                "--seed",
                "2",
                "--poll-seconds",
                "1",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CAMLABEL_QUIET": "1"},
        )
    annotated = skipped = 0
    try:
        root = ws_dir / "data" / "train"
        truth_rows = {}
        for round_no, n_tasks in ((1, 14), (2, 10)):
            # the person waits until the demo says where to annotate this round
            deadline = time.monotonic() + 900
            while log.read_text().count("annotate in the browser") < round_no:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the demo never asked for annotations"
                time.sleep(1)
            text = log.read_text()
            assert "http://127.0.0.1:" in text and "login admin@" in text
            ws = Workspace.open(ws_dir)
            jobs = {
                r.image_id: r.jobs["labelstudio"]
                for r in ws.ledger.all()
                if r.jobs and r.jobs["labelstudio"].round == round_no
            }
            assert len(jobs) == n_tasks
            time.sleep(3)
            assert proc.poll() is None  # still waiting: nothing is annotated yet
            truth_rows = truth_rows or {
                str((root / row["file"]).resolve()): row
                for row in csv.DictReader((root / "metadata.csv").open(newline=""))
            }
            truth = {
                r.image_id: read_mask_png(root / truth_rows[r.source_path]["lesion_mask"])
                for r in ws.ledger.all()
                if r.image_id in jobs
            }
            person = simulate_annotators(
                get_backend("labelstudio", ws),  # type: ignore[arg-type]
                jobs,
                truth,
                seed=7 + round_no,
                skip_rate=0.2,
                double_rate=0.0,
            )
            assert person.annotated + person.skipped == n_tasks
            annotated += person.annotated
            skipped += person.skipped
        assert skipped >= 1
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop(Workspace.open(ws_dir))
    text = log.read_text()
    assert "14/14 task(s) done" in text and "10/10 task(s) done" in text and "12/12" in text
    ws = Workspace.open(ws_dir)
    masked = [r for r in ws.ledger.all() if r.mask is not None]
    # every task annotated by the person with a lesion drawn has a mask; skipped ones none
    assert len(masked) == annotated
    assert (ws_dir / "reports" / "index.html").is_file()
    summary = json.loads((ws_dir / "reports" / "summary.json").read_text())
    assert summary["masks"] == annotated
