"""train-cls / evaluate / gradcam / audit through the CLI (click's CliRunner), asserting on files
and ledger state. One tiny phantom set and one 64 px model per module.

The models here are one-backbone ensembles (EfficientNetB0): every command loads its model
from disk, and the three-backbone graph costs ~10 s per load on two cores. The full ensemble's
CAM and training step are covered in test_cam.py and test_ensemble.py; the code path is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from camlabel.cli.main import cli  # noqa: E402
from camlabel.workspace import Workspace  # noqa: E402


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from camlabel.phantoms import generate_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(out, count=9, seed=3, size=96)
    return out


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    path = tmp_path_factory.mktemp("broken") / "truncated.png"
    src = next((phantoms / "images" / "covid").glob("*.png")).read_bytes()
    path.write_bytes(src[: len(src) // 3])
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from camlabel.models.ensemble import build_ensemble

    keras.utils.set_random_seed(11)
    path = tmp_path_factory.mktemp("model") / "cls.keras"
    build_ensemble(image_size=64, backbones=("efficientnetb0",)).save(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.init(tmp_path_factory.mktemp("ws") / "ws")


def _json(result) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(result.stdout)


def test_gradcam_writes_heatmaps_records_and_resumes(
    phantoms: Path, broken: Path, model_path: Path, workspace: Workspace
) -> None:
    from camlabel.classify import load_classifier
    from camlabel.models.preprocess import ClassifierInput

    clf = load_classifier(model_path)
    assert clf.preprocess == ClassifierInput(64)
    version = clf.model_version
    ws_arg = ["-w", str(workspace.root)]
    args = [
        "gradcam",
        str(model_path),
        str(phantoms / "metadata.csv"),
        str(broken),
        *ws_arg,
        "--batch-size",
        "4",
        "--json",
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 1, first.output  # a failed image fails the command, after the others
    assert "truncated.png" in first.stderr
    s = _json(first)
    assert (s["inputs"], s["registered"], s["processed"], s["skipped"]) == (10, 9, 9, 0)
    assert len(s["failures"]) == 1 and "truncated.png" in s["failures"][0][0]

    records = workspace.ledger.all()
    assert len(records) == 9
    lesion = set(workspace.lesion_classes)
    for rec in records:
        assert rec.label in ("covid", "pneumonia", "normal") and rec.patient_id  # from metadata.csv
        assert rec.prediction is not None and rec.prediction.model_version == version
        assert rec.prediction.probability == pytest.approx(
            max(rec.prediction.probabilities.values())
        )
        hm = rec.heatmap
        assert hm is not None and (hm.method, hm.model_version, hm.fusion) == (
            "gradcam",
            version,
            "normalize-mean",
        )
        assert hm.target_class == rec.prediction.predicted_class
        grid = np.load(workspace.abs(hm.path))
        assert (
            grid.dtype == np.float16
            and grid.shape == (64, 64)
            and grid.min() >= 0
            and grid.max() <= 1
        )
        import cv2

        overlay = cv2.imread(str(workspace.abs(hm.overlay_path)))
        assert overlay.shape == (rec.height, rec.width, 3)
        pre = rec.preannotation
        assert (pre is not None) == (
            rec.prediction.predicted_class in lesion
        )  # lesion classes only
        if pre is not None:
            assert (pre.source, pre.model_version, pre.threshold) == ("gradcam", version, 0.5)
            assert pre.score == rec.prediction.probability
            for poly in pre.polygons:
                ext = np.asarray(poly["exterior"])
                assert ext[:, 0].min() >= 0 and ext[:, 0].max() <= rec.width
                assert ext[:, 1].min() >= 0 and ext[:, 1].max() <= rec.height

    again = CliRunner().invoke(
        cli, ["gradcam", str(model_path), str(phantoms / "images"), *ws_arg, "--json"]
    )
    assert again.exit_code == 0, again.output
    s = _json(again)
    assert (s["processed"], s["skipped"]) == (0, 9)
    assert [r.to_json() for r in workspace.ledger.all()] == [
        r.to_json() for r in records
    ]  # untouched

    pp = CliRunner().invoke(
        cli,
        [
            "gradcam",
            str(model_path),
            str(phantoms / "images"),
            *ws_arg,
            "--method",
            "gradcampp",
            "--all",
            "--json",
        ],
    )
    assert pp.exit_code == 0, pp.output
    s = _json(pp)
    assert (s["processed"], s["skipped"], s["preannotated"]) == (9, 0, 9)
    after = workspace.ledger.all()
    assert all(r.state == "preannotated" and r.preannotation.source == "gradcampp" for r in after)  # type: ignore[union-attr]
    assert sum(1 for run in workspace.ledger.runs("gradcam")) == 3


@pytest.fixture(scope="module")
def gradcam_workspace(
    tmp_path_factory: pytest.TempPathFactory, phantoms: Path, model_path: Path
) -> Workspace:
    """A workspace of its own where every phantom has a heatmap and a Grad-CAM pre-annotation."""
    ws = Workspace.init(tmp_path_factory.mktemp("ws-cam") / "ws")
    r = CliRunner().invoke(
        cli, ["gradcam", str(model_path), str(phantoms / "images"), "-w", str(ws.root), "--all"]
    )
    assert r.exit_code == 0, r.output
    return ws


def test_stored_heatmap_maps_back_to_the_polygons(gradcam_workspace: Workspace) -> None:
    from camlabel.geometry import PolygonPx, iou, polygons_to_mask, threshold_heatmap
    from camlabel.preannotate import cam_settings, load_heatmap

    ws = gradcam_workspace
    recs = [r for r in ws.ledger.all() if r.preannotation and r.preannotation.polygons]
    assert recs, "gradcam --all left no pre-annotation polygon"
    settings = cam_settings(ws)
    for rec in recs:
        heat = load_heatmap(ws, rec)
        assert heat.shape == (rec.height, rec.width)
        polys = [PolygonPx.from_json(p) for p in rec.preannotation.polygons]  # type: ignore[union-attr]
        drawn = polygons_to_mask(polys, rec.height, rec.width)
        # float16 storage and polygon simplification (epsilon 1.5 px) are the only differences
        assert iou(drawn, threshold_heatmap(heat, threshold=settings["threshold"])) > 0.85


def test_gradcam_rejects_unknown_target(
    phantoms: Path, model_path: Path, workspace: Workspace
) -> None:
    r = CliRunner().invoke(
        cli,
        [
            "gradcam",
            str(model_path),
            str(phantoms / "images"),
            "-w",
            str(workspace.root),
            "--target",
            "flu",
        ],
    )
    assert r.exit_code == 2 and "--target must be one of the model's classes" in r.stderr


def test_train_cls_imagenet_offline_fails_clearly(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    out = tmp_path / "m.keras"
    r = CliRunner().invoke(
        cli,
        [
            "train-cls",
            str(phantoms),
            "--out",
            str(out),
            "--weights",
            "imagenet",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--backbones",
            "vgg19",
        ],
    )
    assert r.exit_code == 1
    assert "could not download the ImageNet weights of vgg19" in r.stderr
    assert "hint:" in r.stderr and "--weights PATH" in r.stderr
    assert not out.exists()


def test_train_evaluate_audit(
    phantoms: Path, tmp_path: Path, model_path: Path, workspace: Workspace
) -> None:
    out = tmp_path / "models" / "cls.keras"
    ws_arg = ["-w", str(workspace.root)]
    r = CliRunner().invoke(
        cli,
        [
            "train-cls",
            str(phantoms / "metadata.csv"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--backbones",
            "efficientnetb0",
            "--eager",
            "--seed",
            "3",
            "--json",
            *ws_arg,
        ],
    )
    assert r.exit_code == 0, r.output
    s = _json(r)
    assert s["epochs_run"] == 1 and s["classes"] == ["covid", "pneumonia", "normal"]
    split = s["split"]
    assert split["n_train"] + split["n_val"] == 9 and split["grouped_by"] == "patient_id"
    assert out.is_file() and (tmp_path / "models" / "cls.keras.json").is_file()
    assert (tmp_path / "models" / "cls.curves.png").is_file()
    csv_lines = (tmp_path / "models" / "cls.curves.csv").read_text().splitlines()
    assert csv_lines[0] == "epoch,loss,accuracy,val_loss,val_accuracy" and len(csv_lines) == 2
    side = json.loads((tmp_path / "models" / "cls.keras.json").read_text())
    assert side["model_version"] == s["model_version"] and side["seed"] == 3
    assert workspace.ledger.runs("train-cls")[-1]["model_version"] == s["model_version"]

    ev = CliRunner().invoke(
        cli, ["evaluate", str(out), str(phantoms / "metadata.csv"), "--json", *ws_arg]
    )
    assert ev.exit_code == 0, ev.output
    m = _json(ev)
    assert (
        m["split"] == "val" and m["n"] == split["n_val"]
    )  # auto: the training data -> its validation split
    assert set(m) >= {
        "accuracy",
        "macro_f1",
        "macro_auc",
        "per_class",
        "confusion_matrix",
        "model_version",
    }
    assert sum(map(sum, m["confusion_matrix"]["matrix"])) == m["n"]
    report_dir = workspace.root / "reports" / "classifier"
    for name in ("metrics.json", "confusion_matrix.png", "curves.png"):
        assert (report_dir / name).is_file(), name

    # (a 32 px model has 1x1 conv maps, i.e. flat CAMs: audit the 64 px one)
    au = CliRunner().invoke(
        cli,
        [
            "audit",
            str(model_path),
            str(phantoms / "metadata.csv"),
            "--lung-masks",
            str(phantoms / "lung_masks"),
            "--json",
            "--worst",
            "4",
            *ws_arg,
        ],
    )
    assert au.exit_code == 0, au.output
    a = _json(au)
    o = a["overall"]
    assert (
        o["n_images"] == 9 and o["with_lung_mask"] == 9 and a["model_version"] != s["model_version"]
    )
    assert 0 <= o["mean_lung_energy"] <= 1 and 0 <= o["mean_border_energy"] <= 1
    assert set(a["by_label"]) == {"covid", "pneumonia", "normal"}
    for row in a["images"]:
        assert row["lung_energy_share"] is not None and row["flagged"] == (
            row["lung_energy_share"] < 0.5
        )
        assert row["lung_mask"].endswith(
            row["file"].split("/", 1)[1]
        )  # images/<c>/<id> <-> lung_masks/<c>/<id>
    assert (workspace.root / "reports" / "audit.json").is_file() and (
        workspace.root / "reports" / "audit_worst.png"
    ).is_file()


def test_audit_shares_on_a_known_map() -> None:
    from camlabel.audit import border_band

    band = border_band(100, 50, 0.1)
    assert band[:10].all() and band[90:].all() and band[:, :5].all() and band[:, 45:].all()
    assert not band[10:90, 5:45].any()
    assert band.mean() == pytest.approx(1 - 0.8 * 0.8)


def test_audit_takes_the_lung_field_from_a_segmenter_where_no_mask_exists(
    phantoms: Path, tmp_path: Path, model_path: Path
) -> None:
    """Lung masks for the covid images only; a segmenter that says "lung" everywhere for the
    rest: those rows get the whole image as lung field (energy share 1.0), the others their mask."""
    import shutil

    from tests.seg_factory import make_constant_segmenter

    masks = tmp_path / "lungs"
    shutil.copytree(phantoms / "lung_masks" / "covid", masks / "covid")
    seg_dir = make_constant_segmenter(tmp_path / "lung-seg")  # p = 0.9975 everywhere

    r = CliRunner().invoke(
        cli,
        [
            "audit",
            str(model_path),
            str(phantoms / "metadata.csv"),
            "--lung-masks",
            str(masks),
            "--lung-model",
            str(seg_dir),
            "--worst",
            "0",
            "--out",
            str(tmp_path / "audit"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    a = _json(r)
    assert a["lung_model"] == str(seg_dir.resolve())
    rows = a["images"]
    assert a["overall"]["with_lung_mask"] == len(rows) == 9
    by_source = {row["file"]: row["lung_source"] for row in rows}
    for row in rows:
        if row["label"] == "covid":
            assert row["lung_source"] == "mask" and row["lung_area_share"] < 0.9
        else:
            assert row["lung_source"] == "segmenter", by_source
            assert row["lung_mask"].startswith("segmenter:")
            assert row["lung_area_share"] == 1.0 and row["lung_energy_share"] == 1.0
            assert row["flagged"] is False


def test_lung_field_keeps_the_two_lungs_and_drops_islands() -> None:
    from camlabel.lungs import lung_field

    m = np.zeros((60, 80), bool)
    m[10:50, 5:30] = True  # right lung, 1000 px
    m[12:50, 45:70] = True  # left lung, 950 px
    m[2:5, 36:40] = True  # an island of 12 px
    m[55:58, 2:4] = True  # another
    out = lung_field(m)
    assert out.sum() == 1000 + 950
    assert out[10:50, 5:30].all() and out[12:50, 45:70].all() and not out[2:5, 36:40].any()
    one = np.zeros((20, 20), bool)
    one[5:15, 5:15] = True
    one[0, 0] = True
    assert lung_field(one).sum() == 100  # a single lung plus a speck: the speck goes
    assert not lung_field(np.zeros((4, 4), bool)).any()


def test_gradcam_refines_inside_the_lung_field_and_redoes_on_another_refinement(
    tmp_path: Path, phantoms: Path, model_path: Path
) -> None:
    from camlabel.geometry import PolygonPx, polygons_to_mask
    from camlabel.imaging import read_mask_png

    ws = Workspace.init(tmp_path / "ws")
    base = ["gradcam", str(model_path), str(phantoms / "metadata.csv"), "-w", str(ws.root)]
    lungs = ["--lung-masks", str(phantoms / "lung_masks")]
    r = CliRunner().invoke(cli, [*base, "--all", "--refine", "lung+grabcut", *lungs, "--json"])
    assert r.exit_code == 0, r.output
    assert (_json(r)["processed"], _json(r)["preannotated"]) == (9, 9)
    for rec in ws.ledger.all():
        pre = rec.preannotation
        assert pre is not None and (pre.source, pre.refine) == ("gradcam", "lung+grabcut")
        rel = Path(rec.source_path).relative_to(phantoms / "images")
        lung = read_mask_png(phantoms / "lung_masks" / rel)
        polys = [PolygonPx.from_json(p) for p in pre.polygons]
        drawn = polygons_to_mask(polys, rec.height, rec.width) if polys else lung & False
        assert (drawn & ~lung).sum() <= 0.05 * max(1, drawn.sum())  # simplification only
    assert sum(1 for _ in ws.ledger.runs("gradcam")) == 1

    # another refinement redoes the pre-annotations; without a lung field "lung" is "none"
    again = CliRunner().invoke(cli, [*base, "--all", "--refine", "lung", "--json"])
    assert again.exit_code == 0, again.output
    assert _json(again)["processed"] == 9
    assert {r.preannotation.refine for r in ws.ledger.all()} == {"none"}  # type: ignore[union-attr]
    same = CliRunner().invoke(cli, [*base, "--all", "--refine", "lung", "--json"])
    assert (_json(same)["processed"], _json(same)["skipped"]) == (0, 9)


def test_preannotate_from_cam_refines_the_stored_heatmaps_again(
    gradcam_workspace: Workspace, phantoms: Path
) -> None:
    """Runs after the tests that read gradcam_workspace's Grad-CAM polygons (file order)."""
    from camlabel.geometry import PolygonPx, polygons_to_mask
    from camlabel.imaging import read_mask_png

    ws = gradcam_workspace
    assert {r.preannotation.refine for r in ws.ledger.all()} == {"none"}  # type: ignore[union-attr]
    args = ["preannotate", "-w", str(ws.root), "--from", "cam", "--refine", "lung+opacity"]
    args += ["--lung-masks", str(phantoms / "lung_masks"), "--json"]
    r = CliRunner().invoke(cli, [*args, str(phantoms / "metadata.csv")])
    assert r.exit_code == 0, r.output
    assert _json(r)["preannotated"] == 9
    for rec in ws.ledger.all():
        pre = rec.preannotation
        assert pre is not None and (pre.source, pre.refine) == ("gradcam", "lung+opacity")
        assert pre.model_version == rec.heatmap.model_version  # type: ignore[union-attr]
        rel = Path(rec.source_path).relative_to(phantoms / "images")
        lung = read_mask_png(phantoms / "lung_masks" / rel)
        polys = [PolygonPx.from_json(p) for p in pre.polygons]
        drawn = polygons_to_mask(polys, rec.height, rec.width) if polys else lung & False
        assert (drawn & ~lung).sum() <= 0.05 * max(1, drawn.sum())
    again = CliRunner().invoke(cli, args)
    assert (_json(again)["preannotated"], _json(again)["unchanged"]) == (0, 9)
    # a lung segmenter as the lung field (here one that calls everything lung): "lung" runs
    from tests.seg_factory import make_constant_segmenter

    seg = make_constant_segmenter(phantoms.parent / "const-lung-seg")
    args = ["preannotate", "-w", str(ws.root), "--from", "cam", "--refine", "lung"]
    r = CliRunner().invoke(cli, [*args, "--lung-model", str(seg), "--json"])
    assert r.exit_code == 0, r.output
    assert _json(r)["preannotated"] == 9
    assert {rec.preannotation.refine for rec in ws.ledger.all()} == {"lung"}  # type: ignore[union-attr]
