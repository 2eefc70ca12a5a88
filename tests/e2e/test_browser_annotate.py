"""An annotator in a real browser: log in, see the pre-annotation, draw, submit, pull the mask."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camlabel import loop
from camlabel.geometry import iou
from camlabel.imaging import read_mask_png
from tests.integration.lshelpers import phantom_workspace, rasterize_centres
from tests.lsserver import LSServer


@pytest.mark.browser
@pytest.mark.server
def test_annotator_draws_a_polygon_and_pull_returns_its_mask(
    ls_server: LSServer, browser_context: Any, tmp_path: Path, artifacts_dir: Path
) -> None:
    ws, (rec,) = phantom_workspace(tmp_path, 1, size=256, seed=5)
    ws.config["labelstudio"]["project_title"] = f"browser-{uuid.uuid4().hex[:8]}"
    report = loop.push_jobs(ws, "labelstudio", options=ls_server.options(), progress=False)
    task = ws.ledger.get(rec.image_id).jobs["labelstudio"].task  # type: ignore[union-attr]
    assert rec.preannotation is not None

    page = browser_context.new_page()
    page.goto(f"{ls_server.url}/user/login/")
    page.fill("input[name=email]", ls_server.creds.email)
    page.fill("input[name=password]", ls_server.creds.password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")

    image = page.locator("img[src^='blob:']").first  # the main image (loaded through a blob)
    regions = page.locator(".lsf-outliner-item")
    for attempt in (1, 2):  # a cold, busy machine can take long to build the editor once
        page.goto(f"{ls_server.url}/projects/{report.project}/data?task={task}")
        try:
            image.wait_for(state="visible", timeout=45_000)
            regions.first.wait_for(timeout=45_000)
            break
        except Exception:
            page.screenshot(path=str(artifacts_dir / f"browser-annotate-failure-{attempt}.png"))
            if attempt == 2:
                raise
    page.screenshot(path=str(artifacts_dir / "browser-preannotation.png"))
    # The pre-annotation is there: one region per pre-annotated polygon, from the model.
    assert regions.count() == len(rec.preannotation.polygons)
    assert page.get_by_text("phantom-truth").first.is_visible()

    while regions.count():  # the annotator rejects the pre-annotation...
        regions.first.click()
        page.keyboard.press("Backspace")
        page.wait_for_timeout(150)

    box = image.bounding_box()
    assert box is not None
    natural_w, natural_h = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert (natural_w, natural_h) == (rec.width, rec.height)
    page.keyboard.press("1")  # ...and draws a polygon with the lesion label
    fractions = [(0.30, 0.30), (0.62, 0.28), (0.70, 0.60), (0.45, 0.72), (0.28, 0.55)]
    clicks = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in fractions]
    for x, y in clicks:
        page.mouse.click(x, y)
        page.wait_for_timeout(100)
    page.mouse.click(*clicks[0])  # close it
    assert regions.count() == 1
    page.get_by_text("pneumonia").first.click()  # the image class
    page.screenshot(path=str(artifacts_dir / "browser-annotate.png"))
    page.get_by_role("button", name="Submit").click()
    page.wait_for_timeout(1500)
    assert browser_context.blocked == []

    summary = loop.pull_masks(ws, "labelstudio", options=ls_server.options(), progress=False)
    assert summary.failed == [] and summary.masks_written == 1
    rec = ws.ledger.get(rec.image_id)
    assert rec is not None and rec.mask is not None
    (ann,) = rec.annotations
    assert ann.status == "submitted" and ann.accepted_unchanged is False
    assert ann.annotator == ls_server.creds.email and ann.class_choice == "pneumonia"
    assert ann.lead_time_s is not None and ann.lead_time_s > 0
    clicked_px = [
        ((x - box["x"]) * rec.width / box["width"], (y - box["y"]) * rec.height / box["height"])
        for x, y in clicks
    ]
    want = rasterize_centres([clicked_px], rec.height, rec.width)
    got = read_mask_png(ws.abs(rec.mask.path))
    assert got.shape == (rec.height, rec.width)
    score = iou(got, want)
    assert score >= 0.95, f"IoU {score:.3f} between the pulled mask and the clicked polygon"
    assert np.count_nonzero(got) > 0.05 * got.size
