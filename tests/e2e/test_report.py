"""The HTML report, rendered in headless Chromium: self-contained, and showing the loop's figures."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camlabel.geometry import mask_to_polygons
from camlabel.imaging import overlay_heatmap, read_mask_png, write_png_atomic
from camlabel.phantoms import generate_phantoms
from camlabel.records import Annotation, Heatmap, JobRef, MaskInfo, Preannotation, Prediction
from camlabel.report import build_report
from camlabel.workspace import Workspace

pytestmark = pytest.mark.browser


@pytest.fixture
def loop_workspace(tmp_path: Path) -> Workspace:
    """A workspace as the loop leaves it: heatmaps, pre-annotations, annotations, masks, runs."""
    ph = tmp_path / "ph"
    recs = generate_phantoms(ph, count=6, seed=5, size=96)
    ws = Workspace.init(tmp_path / "ws")
    rows = {str((ph / r.file).resolve()): r for r in recs}
    registered, failures = ws.register_images(
        sorted(rows), labels={k: v.label for k, v in rows.items()}
    )
    assert not failures
    with ws.ledger.transaction() as txn:
        for i, rec in enumerate(registered):
            row = rows[rec.source_path]
            truth = read_mask_png(ph / row.lesion_mask)
            disp = np.asarray(read_mask_png(ph / row.lung_mask), np.uint8) * 120
            heat = np.zeros(truth.shape, np.float32)
            heat[truth] = 1.0
            write_png_atomic(
                ws.dir("heatmaps") / f"{rec.image_id}.png", overlay_heatmap(disp, heat)
            )
            np.save(ws.dir("heatmaps") / f"{rec.image_id}.npy", heat.astype(np.float16))
            new = rec.evolve(
                prediction=Prediction(row.label, 0.9, {row.label: 0.9}, "m1"),
                heatmap=Heatmap(
                    f"heatmaps/{rec.image_id}.npy",
                    f"heatmaps/{rec.image_id}.png",
                    "gradcam",
                    "m1",
                    row.label,
                ),
            )
            if truth.any():
                polys = [p.to_json() for p in mask_to_polygons(truth, epsilon_px=1.0)]
                mpath = ws.dir("masks") / f"{rec.image_id}-v1.png"
                write_png_atomic(mpath, truth)
                ann = Annotation(
                    backend="labelstudio",
                    annotation_id=str(i),
                    annotator="a1",
                    status="submitted",
                    created_at="2026-11-27T00:00:00Z",
                    updated_at="2026-11-27T00:00:00Z",
                    polygons=tuple(polys),
                    lead_time_s=20.0 + i,
                    accepted_unchanged=i % 2 == 0,
                )
                new = new.evolve(
                    preannotation=Preannotation(polys, "gradcam", "m1", 0.5, 0.9),
                    jobs={"labelstudio": JobRef("labelstudio", "1", str(i))},
                    annotations=(ann,),
                    mask=MaskInfo(
                        f"masks/{rec.image_id}-v1.png",
                        1,
                        (f"labelstudio:{i}",),
                        "majority",
                        "0" * 64,
                        agreement_dice=0.9,
                        preannotation_iou=0.75,
                        area_px=int(truth.sum()),
                    ),
                )
            txn.put(new)
    ws.ledger.append_run(
        {
            "kind": "push-jobs",
            "settings": {"backend": "labelstudio"},
            "result": {"pushed": 4, "already_present": 0},
        }
    )
    ws.ledger.append_run(
        {
            "kind": "pull-masks",
            "settings": {"backend": "labelstudio"},
            "result": {
                "tasks": 4,
                "new_annotations": 4,
                "masks_written": 4,
                "skipped": 0,
                "unannotated": 0,
            },
        }
    )
    cls = ws.dir("reports") / "classifier"
    cls.mkdir(parents=True, exist_ok=True)
    (cls / "metrics.json").write_text(
        json.dumps(
            {
                "accuracy": 0.8333,
                "macro_f1": 0.81,
                "per_class": {
                    "covid": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}
                },
            }
        )
    )
    (ws.dir("reports") / "audit.json").write_text(
        json.dumps({"overall": {"mean_lung_energy": 0.71, "flagged": 1, "n_images": 6}})
    )
    (ws.dir("reports") / "summary.json").write_text(
        json.dumps(
            {
                "pointing_game_hit_rate": 0.75,
                "pointing_game_refined": {"hits": 9, "lesion_images": 10, "rate": 0.9},
                "heldout_lesion_dice": 0.93,
                "heldout_lesion_dice_without_lung_field": 0.91,
                "dice_goal": 0.92,
            }
        )
    )
    return ws


@pytest.fixture
def served(loop_workspace: Workspace) -> Iterator[str]:
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(loop_workspace.dir("reports"))
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_report_renders_offline_with_the_loops_figures(
    loop_workspace: Workspace, served: str, browser_context: Any, artifacts_dir: Path
) -> None:
    path = build_report(loop_workspace)
    html = path.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside
    page = browser_context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{served}/index.html")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(artifacts_dir / "report.png"), full_page=True)
    assert browser_context.blocked == []
    assert [u for u in requests if not u.startswith("data:")] == [f"{served}/index.html"]

    headings = page.locator("h2").all_inner_texts()
    for h in (
        "Summary",
        "Labeling rounds",
        "Annotation effort and agreement",
        "Classifier",
        "Grad-CAM pre-annotations",
        "Masks and U-Net predictions",
        "Shortcut audit",
    ):
        assert h in headings, headings
    cards = dict(
        zip(
            page.locator(".card .k").all_inner_texts(),
            page.locator(".card .v").all_inner_texts(),
            strict=True,
        )
    )
    assert cards["images"] == "6"
    assert cards["Grad-CAM pointing game (hit rate)"] == "75%"
    assert cards["pointing game, CAM pooled over its refined regions"] == "90%"
    assert cards["U-Net lesion Dice in the lung field, held-out phantoms (goal ≥ 0.92)"] == "0.930"
    assert cards["U-Net lesion Dice, whole image (held-out)"] == "0.910"
    assert cards["pre-annotation vs final IoU"] == "0.750"
    assert cards["accuracy"] == "0.833"
    # every picture is an embedded PNG that the browser actually decoded
    imgs = page.locator("img")
    assert imgs.count() >= 6 + 4
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths)
    assert page.locator("#rounds tbody tr").count() == 2
