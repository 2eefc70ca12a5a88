"""camlabel preannotate --from segmenter|cam: which images get which pre-annotation, and
re-runs change nothing. Asserts on ledger records and rasterized polygons."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from camlabel.active import binary_entropy_mean  # noqa: E402
from camlabel.cli.main import cli  # noqa: E402
from camlabel.geometry import PolygonPx, polygons_to_mask  # noqa: E402
from camlabel.records import JobRef, Preannotation  # noqa: E402
from camlabel.workspace import Workspace  # noqa: E402

SQUARE = {"exterior": [[1.0, 1.0], [6.0, 1.0], [6.0, 6.0], [1.0, 6.0]], "holes": []}


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.seg_factory import make_constant_segmenter

    return make_constant_segmenter(tmp_path_factory.mktemp("seg") / "seg-1")


def _images(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True)
    out = []
    for i in range(n):
        img = np.full((40, 48), 30 + 40 * i, np.uint8)
        img[10:20, 10 + i : 30] = 220
        path = root / f"cxr{i}.png"
        cv2.imwrite(str(path), img)
        out.append(path)
    return out


def test_the_segmenter_preannotates_what_is_not_yet_published_and_reruns_change_nothing(
    tmp_path: Path, segmenter: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    paths = _images(tmp_path / "in", 4)
    records, _ = ws.register_images(paths)
    by_name = {Path(r.source_path).name: r.image_id for r in records}
    with ws.ledger.transaction() as txn:  # cxr0 already published: it must keep its CAM polygons
        rec = txn.get(by_name["cxr0.png"])
        assert rec is not None
        cam = Preannotation((SQUARE,), "gradcam", "cls-1")
        txn.put(rec.evolve(preannotation=cam).with_job(JobRef("labelstudio", "1", "7", round=1)))
    args = ["preannotate", "-w", str(ws.root), "--from", "segmenter", str(segmenter), "--json"]
    r = CliRunner().invoke(cli, [*args, str(tmp_path / "in")])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["candidates"], s["preannotated"], s["skipped_annotated"]) == (3, 3, 1)
    assert s["model_version"] == "seg-1"
    for rec in ws.ledger.all():
        pre = rec.preannotation
        assert pre is not None
        if rec.image_id == by_name["cxr0.png"]:
            assert pre.source == "gradcam"  # published: untouched
            continue
        assert (pre.source, pre.model_version, pre.threshold) == ("segmenter", "seg-1", 0.5)
        drawn = polygons_to_mask([PolygonPx.from_json(p) for p in pre.polygons], 40, 48)
        assert drawn.all()  # p = 0.9975 everywhere: the whole image, at the original size
        assert pre.uncertainty == pytest.approx(
            binary_entropy_mean(np.full((2, 2), 0.9975)), abs=1e-3
        )
    before = [x.to_json() for x in ws.ledger.all()]
    again = CliRunner().invoke(cli, args)  # no IMAGES: every ledger record is a candidate
    assert again.exit_code == 0, again.output
    s = json.loads(again.stdout)
    assert (s["preannotated"], s["unchanged"]) == (0, 3)
    assert [x.to_json() for x in ws.ledger.all()] == before
    runs = ws.ledger.runs("preannotate")
    assert [run["result"]["preannotated"] for run in runs] == [3, 0]


def test_errors_name_what_is_missing(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    r = CliRunner().invoke(cli, ["preannotate", "-w", str(ws.root), "--from", "segmenter"])
    assert r.exit_code == 2 and "needs the segmenter MODEL" in r.output
    r = CliRunner().invoke(cli, ["preannotate", "-w", str(ws.root), "--from", "unet"])
    assert r.exit_code == 2 and "'unet' is not one of 'cam', 'segmenter'" in r.output


def test_the_segmenter_leaves_out_images_predicted_lesion_free_unless_all(
    tmp_path: Path, segmenter: Path
) -> None:
    """As the paper segments only images classified COVID-19 or pneumonia: a normal
    prediction is skipped (and counted), no prediction or a lesion class is pre-annotated;
    --all takes the normal one too."""
    from camlabel.records import Prediction

    ws = Workspace.init(tmp_path / "ws")
    records, _ = ws.register_images(_images(tmp_path / "in", 3))
    names = {Path(r.source_path).name: r.image_id for r in records}
    normal, lesion = ws.classes[-1], ws.lesion_classes[0]
    assert normal not in ws.lesion_classes
    with ws.ledger.transaction() as txn:
        for name, cls in (("cxr0.png", normal), ("cxr1.png", lesion)):
            rec = txn.get(names[name])
            assert rec is not None
            txn.put(rec.evolve(prediction=Prediction(cls, 0.9, {cls: 0.9}, "cls-1")))
    args = ["preannotate", "-w", str(ws.root), "--from", "segmenter", str(segmenter)]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["preannotated"], s["skipped_not_lesion"]) == (2, 1)
    pre = {Path(x.source_path).name: x.preannotation for x in ws.ledger.all()}
    assert pre["cxr0.png"] is None
    assert pre["cxr1.png"] is not None and pre["cxr2.png"] is not None
    r = CliRunner().invoke(cli, args)
    assert "1 predicted lesion-free (--all to include them)" in r.output
    r = CliRunner().invoke(cli, [*args, "--all", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["preannotated"], s["unchanged"], s["skipped_not_lesion"]) == (1, 2, 0)
    normal_pre = {Path(x.source_path).name: x.preannotation for x in ws.ledger.all()}["cxr0.png"]
    assert normal_pre is not None and normal_pre.source == "segmenter"


def test_the_segmenter_map_is_restricted_to_the_lung_field_when_one_is_given(
    tmp_path: Path, segmenter: Path
) -> None:
    """The constant segmenter marks the whole image; with lung masks the pre-annotation is
    the lung field (refine "lung"); a re-run with the same lungs changes nothing, one
    without lungs gives the whole map back (refine None)."""
    from camlabel.geometry import iou

    ws = Workspace.init(tmp_path / "ws")
    paths = _images(tmp_path / "in", 2)
    lungs_dir = tmp_path / "lungs"
    lungs_dir.mkdir()
    lung = np.zeros((40, 48), np.uint8)
    lung[6:30, 8:22] = 255
    lung[6:30, 26:42] = 255
    for p in paths:
        cv2.imwrite(str(lungs_dir / p.name), lung)
    args = ["preannotate", "-w", str(ws.root), "--from", "segmenter", str(segmenter)]
    r = CliRunner().invoke(cli, [*args, str(tmp_path / "in"), "--lung-masks", str(lungs_dir)])
    assert r.exit_code == 0, r.output
    for rec in ws.ledger.all():
        pre = rec.preannotation
        assert pre is not None and pre.refine == "lung"
        drawn = polygons_to_mask([PolygonPx.from_json(p) for p in pre.polygons], 40, 48)
        assert iou(drawn, lung > 0) >= 0.9
        assert not drawn[:, 22:26].any() and not drawn[:4].any()  # nothing between the lungs
    r = CliRunner().invoke(cli, [*args, "--lung-masks", str(lungs_dir), "--json"])
    assert json.loads(r.stdout)["unchanged"] == 2
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert json.loads(r.stdout)["preannotated"] == 2
    for rec in ws.ledger.all():
        pre = rec.preannotation
        assert pre is not None and pre.refine is None
        assert polygons_to_mask([PolygonPx.from_json(p) for p in pre.polygons], 40, 48).all()


def test_a_lesion_the_classifier_sees_and_the_segmenter_misses_ranks_first(
    tmp_path: Path, segmenter: Path
) -> None:
    """Pixel entropy alone ranks a confident miss (an empty map at p ~ 0) last; with the
    classifier's lesion probability it comes first in push-jobs --strategy uncertainty."""
    from camlabel.active import select_images
    from camlabel.records import Prediction
    from tests.seg_factory import make_constant_segmenter

    blind = make_constant_segmenter(tmp_path / "seg-blind", logit=-6.0)  # p = 0.0025 everywhere
    ws = Workspace.init(tmp_path / "ws")
    records, _ = ws.register_images(_images(tmp_path / "in", 3))
    names = {Path(r.source_path).name: r.image_id for r in records}
    lesion, normal = ws.lesion_classes[0], ws.classes[-1]
    probs = {"cxr0.png": 0.95, "cxr1.png": 0.2}  # P(lesion class); cxr2: no prediction
    with ws.ledger.transaction() as txn:
        for name, p in probs.items():
            rec = txn.get(names[name])
            assert rec is not None
            pred = Prediction(lesion, p, {lesion: p, normal: 1 - p}, "cls-1")
            txn.put(rec.evolve(prediction=pred))
    r = CliRunner().invoke(
        cli, ["preannotate", "-w", str(ws.root), "--from", "segmenter", str(blind), "--all"]
    )
    assert r.exit_code == 0, r.output
    pre = {Path(x.source_path).name: x.preannotation for x in ws.ledger.all()}
    entropy = binary_entropy_mean(np.full((2, 2), 0.0025))
    for name in ("cxr0.png", "cxr1.png", "cxr2.png"):
        got = pre[name]
        assert got is not None and got.polygons == ()  # nothing found
        assert got.score == pytest.approx(0.0025, abs=2e-4)
        miss = probs.get(name, 0.0) * (1 - 0.0025)
        assert got.uncertainty == pytest.approx(entropy + miss, abs=1e-3)
    order = [Path(s.record.source_path).name for s in select_images(ws.ledger.all(), 3)]
    assert order == ["cxr0.png", "cxr1.png", "cxr2.png"]


def test_where_the_segmenter_finds_nothing_the_cam_pre_annotation_is_kept(
    tmp_path: Path,
) -> None:
    """An image classified as a lesion class with CAM regions keeps them (fallback_for, the
    segmenter's uncertainty); one without CAM regions gets the empty segmenter one; a re-run
    changes nothing; --no-cam-fallback takes the segmenter's everywhere."""
    from camlabel.records import Prediction
    from tests.seg_factory import make_constant_segmenter

    blind = make_constant_segmenter(tmp_path / "seg-blind", logit=-6.0)
    ws = Workspace.init(tmp_path / "ws")
    records, _ = ws.register_images(_images(tmp_path / "in", 2))
    names = {Path(r.source_path).name: r.image_id for r in records}
    lesion, normal = ws.lesion_classes[0], ws.classes[-1]
    cam = Preannotation((SQUARE,), "gradcam", "cls-1", refine="lung+opacity")
    with ws.ledger.transaction() as txn:
        for name in names:
            rec = txn.get(names[name])
            assert rec is not None
            pred = Prediction(lesion, 0.9, {lesion: 0.9, normal: 0.1}, "cls-1")
            txn.put(rec.evolve(prediction=pred, preannotation=cam if name == "cxr0.png" else None))
    args = ["preannotate", "-w", str(ws.root), "--from", "segmenter", str(blind), "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["preannotated"], s["cam_fallback"], s["empty"]) == (2, 1, 1)
    pre = {Path(x.source_path).name: x.preannotation for x in ws.ledger.all()}
    kept, empty = pre["cxr0.png"], pre["cxr1.png"]
    assert kept is not None and empty is not None
    assert (kept.source, kept.polygons, kept.fallback_for) == ("gradcam", (SQUARE,), "seg-blind")
    drawn = polygons_to_mask([PolygonPx.from_json(p) for p in kept.polygons], 40, 48)
    assert drawn.sum() == 25 and drawn[1:6, 1:6].all()  # the CAM's square, unchanged
    miss = binary_entropy_mean(np.full((2, 2), 0.0025)) + 0.9 * (1 - 0.0025)
    assert kept.uncertainty == pytest.approx(miss, abs=1e-3)
    assert (empty.source, empty.polygons, empty.fallback_for) == ("segmenter", (), None)
    assert empty.uncertainty == pytest.approx(miss, abs=1e-3)
    before = [x.to_json() for x in ws.ledger.all()]
    again = json.loads(CliRunner().invoke(cli, args).stdout)
    assert (again["preannotated"], again["unchanged"]) == (0, 2)
    assert [x.to_json() for x in ws.ledger.all()] == before
    r = CliRunner().invoke(cli, [*args, "--no-cam-fallback"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cam_fallback"] == 0
    pre = {Path(x.source_path).name: x.preannotation for x in ws.ledger.all()}
    assert pre["cxr0.png"] is not None and pre["cxr0.png"].source == "segmenter"
    assert pre["cxr0.png"].polygons == ()
