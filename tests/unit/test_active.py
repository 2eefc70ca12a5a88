"""Active learning (camlabel.active) on ledger records, and push-jobs --select/--round through
the in-memory fake backend: which images are published, in which round, with which score."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from camlabel import loop
from camlabel.active import (
    STRATEGIES,
    binary_entropy_mean,
    committee_disagreement,
    normalized_entropy,
    segmenter_uncertainty,
    select_images,
)
from camlabel.backends.fake import FakeServer
from camlabel.errors import UsageError
from camlabel.records import ImageRecord, Preannotation, Prediction
from camlabel.workspace import Workspace

SQUARE = {"exterior": [[1.0, 1.0], [6.0, 1.0], [6.0, 6.0], [1.0, 6.0]], "holes": []}


def _rec(i: int, probs: tuple[float, float, float] | None, **pre: object) -> ImageRecord:
    prediction = None
    if probs is not None:
        p = dict(zip(("covid", "pneumonia", "normal"), probs, strict=True))
        top = max(p, key=p.__getitem__)
        prediction = Prediction(top, p[top], p, "m1")
    return ImageRecord(
        image_id=f"{i:064x}",
        source_path=f"/x/{i}.png",
        source_format="png",
        width=8,
        height=8,
        display_path=f"images/{i}.png",
        prediction=prediction,
        preannotation=Preannotation(
            (SQUARE,),
            str(pre.get("source", "gradcam")),
            "m1",
            **{k: v for k, v in pre.items() if k != "source"},
        ),
    )


def test_entropies() -> None:
    assert normalized_entropy({"a": 1.0, "b": 0.0, "c": 0.0}) == 0.0
    assert normalized_entropy([1 / 3] * 3) == pytest.approx(1.0)
    assert normalized_entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2) / math.log(3))
    assert binary_entropy_mean(np.array([[0.5, 0.5]])) == pytest.approx(1.0)
    assert binary_entropy_mean(np.array([[0.0, 1.0]])) == pytest.approx(0.0, abs=1e-5)
    same = {"a": 0.7, "b": 0.3}
    assert committee_disagreement([same, same, same]) == pytest.approx(0.0)
    split = committee_disagreement([{"a": 0.9, "b": 0.1}, {"a": 0.1, "b": 0.9}])
    assert split > committee_disagreement([{"a": 0.6, "b": 0.4}, {"a": 0.4, "b": 0.6}]) > 0


def test_uncertainty_ranks_the_least_certain_first_and_scores_are_entropies() -> None:
    recs = [
        _rec(1, (0.98, 0.01, 0.01)),
        _rec(2, (0.34, 0.33, 0.33)),
        _rec(3, (0.6, 0.3, 0.1)),
        _rec(4, None),  # no prediction: cannot be scored, left out
    ]
    got = select_images(recs, 3, "uncertainty")
    assert [s.record.image_id for s in got] == [
        recs[1].image_id,
        recs[2].image_id,
        recs[0].image_id,
    ]
    assert got[0].score == pytest.approx(normalized_entropy([0.34, 0.33, 0.33]), abs=1e-6)
    assert [s.record.image_id for s in select_images(recs, 1, "uncertainty")] == [recs[1].image_id]


def test_a_segmenter_preannotation_is_ranked_by_the_segmenter_uncertainty() -> None:
    recs = [
        _rec(1, (0.6, 0.3, 0.1)),  # normalized entropy 0.82
        _rec(2, (0.98, 0.01, 0.01), source="segmenter", uncertainty=0.9),
        _rec(3, (0.5, 0.5, 0.0), source="segmenter"),  # no stored uncertainty: the classifier's
    ]
    got = select_images(recs, 3, "uncertainty")
    assert [s.record.image_id for s in got] == [
        r.image_id for r in recs[1:2] + recs[0:1] + recs[2:]
    ]
    assert got[0].score == 0.9


def test_segmenter_uncertainty_adds_the_chance_of_a_missed_lesion() -> None:
    """Mean pixel entropy + P(lesion) x (1 - peak): a map at p = 0.01 everywhere is nearly
    certain (entropy 0.08 bits), yet on an image called a lesion at 0.98 it is a likely miss."""
    empty = np.full((4, 4), 0.01)
    h = binary_entropy_mean(empty)
    assert h == pytest.approx(-(0.01 * math.log2(0.01) + 0.99 * math.log2(0.99)))
    assert segmenter_uncertainty(empty, 0.01, None) == pytest.approx(h)
    assert segmenter_uncertainty(empty, 0.01, 0.0) == pytest.approx(h)
    assert segmenter_uncertainty(empty, 0.01, 0.98) == pytest.approx(h + 0.98 * 0.99)
    found = np.zeros((4, 4))
    found[1:3, 1:3] = 0.99
    u = segmenter_uncertainty(found, 0.99, 0.98)
    assert u == pytest.approx(binary_entropy_mean(found) + 0.98 * 0.01)
    assert u < segmenter_uncertainty(empty, 0.01, 0.98)
    # probabilities outside [0, 1] (a corrupt record) are clipped, not amplified
    assert segmenter_uncertainty(empty, -1.0, 2.0) == pytest.approx(h + 1.0)


def test_random_is_seeded_and_independent_of_the_input_order() -> None:
    recs = [_rec(i, (0.5, 0.25, 0.25)) for i in range(20)]
    a = [s.record.image_id for s in select_images(recs, 5, "random", seed=3)]
    b = [s.record.image_id for s in select_images(recs[::-1], 5, "random", seed=3)]
    c = [s.record.image_id for s in select_images(recs, 5, "random", seed=4)]
    assert a == b and a != c and len(set(a)) == 5


def test_committee_needs_member_probabilities_and_says_so() -> None:
    recs = [_rec(1, (0.5, 0.3, 0.2))]
    with pytest.raises(UsageError, match="each ensemble member's probabilities"):
        select_images(recs, 1, "committee")
    members = {"densenet": {"covid": 0.9, "normal": 0.1}, "vgg": {"covid": 0.1, "normal": 0.9}}
    agree = {"densenet": {"covid": 0.9, "normal": 0.1}, "vgg": {"covid": 0.9, "normal": 0.1}}
    a = _rec(2, (0.5, 0.0, 0.5)).evolve(
        prediction=Prediction("covid", 0.5, {"covid": 0.5, "normal": 0.5}, "m", members=members)
    )
    b = _rec(3, (0.5, 0.0, 0.5)).evolve(
        prediction=Prediction("covid", 0.9, {"covid": 0.9, "normal": 0.1}, "m", members=agree)
    )
    assert [s.record.image_id for s in select_images([b, a], 2, "committee")] == [
        a.image_id,
        b.image_id,
    ]
    assert set(STRATEGIES) == {"random", "uncertainty", "committee"}
    with pytest.raises(UsageError, match=r"'entropy'.*\['random', 'uncertainty', 'committee'\]"):
        select_images(recs, 1, "entropy")
    with pytest.raises(UsageError, match="at least 1"):
        select_images(recs, 0, "random")


# ------------------------------------------------------------------ push-jobs --select / --round
def _workspace(tmp_path: Path, probs: list[tuple[float, float, float]]) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    paths = []
    for i in range(len(probs)):
        path = tmp_path / "in" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((8, 8), 10 + 20 * i, np.uint8))
        paths.append(path)
    records, _ = ws.register_images(paths)
    with ws.ledger.transaction() as txn:
        for rec, p in zip(sorted(records, key=lambda r: r.source_path), probs, strict=True):
            probs_d = dict(zip(("covid", "pneumonia", "normal"), p, strict=True))
            top = max(probs_d, key=probs_d.__getitem__)
            txn.put(
                rec.evolve(
                    prediction=Prediction(top, probs_d[top], probs_d, "m1"),
                    preannotation=Preannotation((SQUARE,), "gradcam", "m1", score=probs_d[top]),
                )
            )
    return ws


def test_push_select_publishes_the_most_uncertain_per_round_with_its_score(
    tmp_path: Path,
) -> None:
    probs = [
        (0.9, 0.05, 0.05),
        (0.34, 0.33, 0.33),
        (0.5, 0.4, 0.1),
        (0.7, 0.2, 0.1),
        (0.4, 0.35, 0.25),
    ]
    ws = _workspace(tmp_path, probs)
    by_src = {Path(r.source_path).name: r.image_id for r in ws.ledger.all()}
    server = FakeServer()
    opts = {"server": server}
    first = loop.push_jobs(ws, "fake", options=opts, select=2, progress=False)
    assert set(first.pushed) == {by_src["img1.png"], by_src["img4.png"]}
    for image_id in first.pushed:
        task = server.tasks[image_id]
        rec = ws.ledger.get(image_id)
        assert rec is not None and rec.prediction is not None
        assert task.item.priority == pytest.approx(
            normalized_entropy(rec.prediction.probabilities), abs=1e-6
        )
        assert rec.jobs["fake"].round == 1
    # the same round again: full, nothing added; explicitly named
    again = loop.push_jobs(ws, "fake", options=opts, select=2, round=1, progress=False)
    assert again.pushed == {} and len(server.tasks) == 2
    # without --round, the same source's pre-annotations continue round 1 (a resumed or
    # repeated push): the round is full, nothing is added
    same = loop.push_jobs(ws, "fake", options=opts, select=2, progress=False)
    assert same.pushed == {} and len(server.tasks) == 2
    # the next round, named: the next two most uncertain, in round 2
    second = loop.push_jobs(ws, "fake", options=opts, select=2, round=2, progress=False)
    assert set(second.pushed) == {by_src["img2.png"], by_src["img3.png"]}
    rounds = {
        r.image_id: (r.jobs["fake"].round if "fake" in r.jobs else None) for r in ws.ledger.all()
    }
    assert rounds == {
        by_src["img0.png"]: None,
        by_src["img1.png"]: 1,
        by_src["img4.png"]: 1,
        by_src["img2.png"]: 2,
        by_src["img3.png"]: 2,
    }
    # a round topped up after an interruption: round 2 asks for 3, gets the one left
    top_up = loop.push_jobs(ws, "fake", options=opts, select=3, round=2, progress=False)
    assert set(top_up.pushed) == {by_src["img0.png"]}
    assert ws.ledger.get(by_src["img0.png"]).jobs["fake"].round == 2  # type: ignore[union-attr]
    runs = ws.ledger.runs("push-jobs")
    assert [(r["settings"]["round"], r["result"]["pushed"]) for r in runs] == [
        (1, 2),
        (1, 0),
        (1, 0),
        (2, 2),
        (2, 1),
    ]
    # a plain push (no selection) re-publishes nothing and keeps every round
    plain = loop.push_jobs(ws, "fake", options=opts, progress=False)
    assert plain.pushed == {} and len(plain.already_present) == 5
    assert ws.ledger.get(by_src["img1.png"]).jobs["fake"].round == 1  # type: ignore[union-attr]


def test_the_default_round_goes_on_until_a_new_source_pre_annotates(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, [(0.9, 0.05, 0.05), (0.34, 0.33, 0.33), (0.5, 0.4, 0.1)])
    ids = sorted(r.image_id for r in ws.ledger.all())
    opts = {"server": FakeServer()}
    loop.push_jobs(ws, "fake", options=opts, select=1, progress=False)
    (first,) = [r.image_id for r in ws.ledger.all() if "fake" in r.jobs]
    rest = [i for i in ids if i != first]
    # a trained segmenter pre-annotates one of the images left: a new source, a new round
    with ws.ledger.transaction() as txn:
        rec = txn.get(rest[0])
        assert rec is not None
        txn.put(rec.evolve(preannotation=Preannotation((SQUARE,), "segmenter", "seg-1")))
    loop.push_jobs(ws, "fake", options=opts, progress=False)
    rounds = {r.image_id: r.jobs["fake"].round for r in ws.ledger.all()}
    assert rounds == {first: 1, rest[0]: 2, rest[1]: 2}


def test_the_cli_lists_the_registered_strategies() -> None:
    from camlabel.cli.labeling import SELECTION_STRATEGIES

    assert tuple(STRATEGIES) == SELECTION_STRATEGIES


def test_the_selection_score_is_the_label_studio_prediction_score(tmp_path: Path) -> None:
    import dataclasses

    from camlabel.backends.base import PushItem
    from camlabel.backends.labelstudio import LabelStudioBackend

    ws = Workspace.init(tmp_path / "ws")
    be = LabelStudioBackend(ws, url="http://127.0.0.1:9", token="t" * 40)
    pre = Preannotation((SQUARE,), "gradcam", "m1", score=0.97)
    item = PushItem("a" * 64, 8, 8, ws.root / "images" / "a.png", preannotation=pre)
    assert be.task_payload(item, "/x")["predictions"][0]["score"] == 0.97  # no selection
    chosen = dataclasses.replace(item, priority=0.42)
    assert be.task_payload(chosen, "/x")["predictions"][0]["score"] == 0.42


def test_status_reports_effort_per_round(tmp_path: Path) -> None:
    from camlabel.geometry import PolygonPx, polygons_to_mask

    ws = _workspace(tmp_path, [(0.34, 0.33, 0.33), (0.4, 0.35, 0.25), (0.9, 0.05, 0.05)])
    by_src = {Path(r.source_path).name: r.image_id for r in ws.ledger.all()}
    server = FakeServer()
    opts = {"server": server}
    loop.push_jobs(ws, "fake", options=opts, select=2, progress=False)  # img0, img1
    loop.push_jobs(ws, "fake", options=opts, select=1, round=2, progress=False)  # img2
    pre = polygons_to_mask([PolygonPx.from_json(SQUARE)], 8, 8)  # 5 x 5 pixels
    bigger = np.zeros((8, 8), bool)
    bigger[1:8, 1:8] = True  # 7 x 7: IoU 25/49, edited area 24/49
    server.annotate(by_src["img0.png"], pre)
    server.annotate(by_src["img1.png"], bigger)
    server.annotate(by_src["img2.png"], pre)
    loop.pull_masks(ws, "fake", options=opts, progress=False)
    rounds = loop.workspace_status(ws)["rounds"]
    assert set(rounds) == {"1", "2"}
    one, two = rounds["1"], rounds["2"]
    assert (one["published"], one["masked"], two["published"], two["masked"]) == (2, 2, 1, 1)
    assert one["sources"] == {"gradcam": 2}
    assert one["preannotation_iou"]["median"] == pytest.approx((1 + 25 / 49) / 2, abs=1e-3)
    assert one["preannotation_iou_ge_0_8_share"] == 0.5
    assert one["edited_area"]["mean"] == pytest.approx(24 / 49 / 2, abs=1e-3)
    assert two["preannotation_iou"]["median"] == pytest.approx(1.0)
    assert two["edited_area"]["median"] == 0.0 and two["preannotation_iou_ge_0_8_share"] == 1.0


def test_the_report_plots_effort_per_round(tmp_path: Path) -> None:
    """The report's effort charts are PNG files under reports/effort/, embedded in the HTML,
    drawn from the rounds (and the demo's held-out Dice per round when summary.json has it)."""
    import base64
    import json
    from html import escape as html_escape

    import cv2

    from camlabel.geometry import PolygonPx, polygons_to_mask
    from camlabel.report import EFFORT_PLOTS, build_report

    ws = _workspace(tmp_path, [(0.34, 0.33, 0.33), (0.4, 0.35, 0.25), (0.9, 0.05, 0.05)])
    by_src = {Path(r.source_path).name: r.image_id for r in ws.ledger.all()}
    server = FakeServer()
    opts = {"server": server}
    loop.push_jobs(ws, "fake", options=opts, select=2, progress=False)
    loop.push_jobs(ws, "fake", options=opts, select=1, round=2, progress=False)
    pre = polygons_to_mask([PolygonPx.from_json(SQUARE)], 8, 8)
    bigger = np.zeros((8, 8), bool)
    bigger[1:8, 1:8] = True
    server.annotate(by_src["img0.png"], pre)
    server.annotate(by_src["img1.png"], bigger)
    server.annotate(by_src["img2.png"], pre)
    loop.pull_masks(ws, "fake", options=opts, progress=False)
    rounds = {"1": {"heldout_lesion_dice": 0.5}, "2": {"heldout_lesion_dice": 0.9}}
    (ws.dir("reports") / "summary.json").write_text(json.dumps({"rounds": rounds}))
    html = build_report(ws).read_text()
    assert "Effort per round" in html
    for name, caption in EFFORT_PLOTS:
        png = ws.dir("reports") / "effort" / name
        img = cv2.imread(str(png))
        assert img is not None and img.shape[0] > 100 and (img < 250).any()  # drawn, not blank
        assert base64.b64encode(png.read_bytes()).decode() in html
        assert html_escape(caption) in html


def test_effort_charts_put_values_where_they_belong() -> None:
    from camlabel.plots import PALETTE, bar_chart, box_plot

    # box plot on 0..1: the median line of [0.25, 0.5, 0.75] lies halfway up the axis
    img = box_plot({"round 1": [0.25, 0.5, 0.75]}, title="t", limits=(0.0, 1.0))
    top, bottom = 34, img.shape[0] - 44
    dark = np.where((img[:, 60:-20] == 30).all(axis=2).sum(axis=1) >= 10)[0]
    assert abs(int(dark.mean()) - (top + bottom) / 2) <= 2
    # grouped bars: the second round's 0.8 bar is twice as tall as the first round's 0.4
    bars = bar_chart({"r1": {"a": 0.4, "b": None}, "r2": {"a": 0.8, "b": 0.1}}, title="t")
    blue = (bars == np.array(PALETTE[0], np.uint8)).all(axis=2)
    cols = np.where(blue.any(axis=0))[0]
    left, right = cols[cols < bars.shape[1] // 2], cols[cols >= bars.shape[1] // 2]
    h1 = blue[:, left[len(left) // 2]].sum()
    h2 = blue[:, right[len(right) // 2]].sum()
    assert h2 == pytest.approx(2 * h1, rel=0.05)
    second = (bars == np.array(PALETTE[1], np.uint8)).all(axis=2)
    xs = np.where(second[:-70].any(axis=0))[0]
    assert xs.size and xs.min() > bars.shape[1] // 2
