"""camlabel add / import-annotations / export: records, pixels and files, through the CLI.

Inputs are built here (tiny PNGs, a DICOM from tests/dicom_factory.py, hand-written Label
Studio and COCO JSON); the real exports under ../shared/data are in test_interop_real.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from camlabel import loop
from camlabel.backends.fake import FakeServer
from camlabel.backends.labelstudio.convert import mask_to_brush_rle
from camlabel.cli.main import cli
from camlabel.errors import AnnotationError, BatchError, UsageError
from camlabel.geometry import PolygonPx, polygons_to_mask
from camlabel.imaging import read_image, read_mask_png
from camlabel.interop import cocorle
from camlabel.interop.importing import import_annotations
from camlabel.workspace import Workspace
from tests.dicom_factory import fake_tag_needles, make_dicom


def _run(*args: Any) -> Any:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _image(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 256, (h, w), dtype=np.uint8))
    return path


def _box(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def _snapshot(ws: Workspace) -> list[dict[str, Any]]:
    """The ledger's content through its public API (whatever stores it)."""
    return sorted((r.to_json() for r in ws.ledger.all()), key=lambda d: d["image_id"])


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


# ----------------------------------------------------------------------------- add
def test_add_registers_png_16bit_dicom_recursively_with_patients_and_duplicates(
    tmp_path: Path, ws: Workspace
) -> None:
    src = tmp_path / "src"
    a = _image(src / "a.png", 20, 30, 1)
    _image(src / "sub" / "deeper" / "b.jpg", 24, 24, 2)
    wide = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250).astype(np.uint16)
    cv2.imwrite(str(src / "sub" / "c16.png"), wide)
    make_dicom(src / "d.dcm", np.arange(18 * 18, dtype=np.uint16).reshape(18, 18) * 10)
    (src / "copy").mkdir()
    (src / "copy" / "a-again.png").write_bytes(a.read_bytes())
    (tmp_path / "meta.csv").write_text("file,patient_id,label\nsrc/a.png,P-A,covid\n")

    r = _run("add", src, "-w", ws.root, "--metadata", tmp_path / "meta.csv", "--json")
    out = json.loads(r.output)
    assert out["added"] == 4 and out["already_present"] == 0
    assert len(out["duplicates"]) == 1 and out["duplicates"][0]["path"].endswith("a-again.png")
    recs = {Path(r.source_path).name: r for r in ws.ledger.all()}
    assert len(ws.ledger.all()) == 4
    assert recs["a.png"].patient_id == "P-A" and recs["a.png"].label == "covid"
    assert recs["d.dcm"].patient_id == "PID-12345"  # from the DICOM, kept local
    assert recs["d.dcm"].source_format == "dicom" and (
        recs["d.dcm"].width,
        recs["d.dcm"].height,
    ) == (18, 18)
    assert recs["a.png"].image_id == read_image(a).image_id
    assert (ws.root / recs["c16.png"].display_path).exists()
    # a re-run adds nothing
    again = json.loads(_run("add", src, "-w", ws.root, "--json").output)
    assert again["added"] == 0 and again["already_present"] == 4
    # and push-jobs --all now publishes them for annotation from scratch
    server = FakeServer()
    report = loop.push_jobs(
        ws, "fake", options={"server": server}, include_all=True, progress=False
    )
    assert len(report.pushed) == 4
    assert all("fake" in r.jobs for r in ws.ledger.all())
    # the patient id stays in the local ledger: nothing published carries a DICOM tag value
    for task in server.tasks.values():
        published = repr(task).encode() + task.item.display_png.read_bytes()
        assert not [n for n in fake_tag_needles() if n in published]


def test_add_rejects_unknown_label_and_lists_classes(tmp_path: Path, ws: Workspace) -> None:
    _image(tmp_path / "a.png", 8, 8, 0)
    r = CliRunner().invoke(
        cli, ["add", str(tmp_path / "a.png"), "-w", str(ws.root), "--label", "cat"]
    )
    assert r.exit_code != 0
    assert "'cat'" in r.output and "covid" in r.output
    assert len(ws.ledger.all()) == 0


# ----------------------------------------------------------------------------- import
def _ls_export(path: Path, name: str, w: int, h: int, results: list[dict[str, Any]]) -> Path:
    task = {
        "id": 7,
        "data": {"image": f"/data/upload/3/1a2b3c4d-{name}"},
        "annotations": [
            {
                "id": 70,
                "completed_by": 2,
                "created_at": "2026-01-02T03:04:05.123Z",
                "updated_at": "2026-01-02T03:05:05.123Z",
                "result": [
                    {**r, "original_width": w, "original_height": h, "from_name": "x"}
                    for r in results
                ],
            }
        ],
        "predictions": [{"result": []}],
    }
    path.write_text(json.dumps([task]))
    return path


def test_import_labelstudio_polygon_and_brush_skips_other_kinds_with_counts(
    tmp_path: Path, ws: Workspace
) -> None:
    h, w = 40, 50
    _image(tmp_path / "imgs" / "chest.png", h, w, 3)
    _run("add", tmp_path / "imgs", "-w", ws.root)
    brush = _box(h, w, 25, 35, 5, 15)
    poly_px = np.array([[30.0, 5.0], [45.0, 5.0], [45.0, 20.0], [30.0, 20.0]])
    results = [
        {
            "type": "polygonlabels",
            "value": {
                "points": (poly_px / [w / 100, h / 100]).tolist(),
                "polygonlabels": ["Opacity"],
            },
        },
        {
            "type": "brushlabels",
            "value": {"format": "rle", "rle": mask_to_brush_rle(brush), "brushlabels": ["Opacity"]},
        },
        {
            "type": "rectanglelabels",
            "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["Opacity"]},
        },
        {"type": "keypointlabels", "value": {"x": 1, "y": 1, "keypointlabels": ["Opacity"]}},
        {
            "type": "polygonlabels",
            "value": {"points": [[1, 1], [9, 1], [9, 9]], "polygonlabels": ["Heart"]},
        },
    ]
    export = _ls_export(tmp_path / "export.json", "chest.png", w, h, results)
    dry = json.loads(
        _run(
            "import-annotations",
            export,
            "-w",
            ws.root,
            "--format",
            "labelstudio",
            "--dry-run",
            "--json",
        ).output
    )
    assert dry["annotations"] == 1 and dry["dry_run"]
    assert ws.ledger.all()[0].mask is None  # nothing written
    out = json.loads(
        _run(
            "import-annotations", export, "-w", ws.root, "--format", "labelstudio", "--json"
        ).output
    )
    assert out["skipped"] == {
        "rectanglelabels": 1,
        "keypointlabels": 1,
        "polygonlabels label ['Heart'] not mapped": 1,
        "prediction (model output)": 1,
    }
    rec = ws.ledger.all()[0]
    expected = polygons_to_mask([PolygonPx(poly_px)], h, w) | brush
    assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), expected)
    ann = rec.annotations[0]
    assert ann.origin == {
        "format": "labelstudio",
        "file": str(export),
        "annotator": "2",
        "id": "7/70",
        "matched_by": "file name",
    }
    assert ann.updated_at.startswith("2026-01-02T03:05:05")
    # re-importing the same file adds no annotation and no mask version
    _run("import-annotations", export, "-w", ws.root, "--format", "labelstudio")
    rec2 = ws.ledger.all()[0]
    assert len(rec2.annotations) == 1 and rec2.mask.version == 1


def test_import_is_all_or_nothing_and_names_the_unmatched(tmp_path: Path, ws: Workspace) -> None:
    _image(tmp_path / "imgs" / "known.png", 10, 10, 4)
    _run("add", tmp_path / "imgs", "-w", ws.root)
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "known.png"), _box(10, 10, 2, 5, 2, 5).astype(np.uint8) * 255)
    cv2.imwrite(str(masks / "stranger.png"), _box(10, 10, 2, 5, 2, 5).astype(np.uint8) * 255)
    before = _snapshot(ws)
    with pytest.raises(BatchError) as exc:
        import_annotations(ws, [masks], "masks")
    assert "stranger.png" in str(exc.value.failures)
    assert _snapshot(ws) == before
    assert not any((ws.root / "annotations").iterdir())
    report = import_annotations(ws, [masks], "masks", skip_unmatched=True)
    assert report.annotations == 1 and report.unmatched == ["stranger.png"]


def test_import_mapping_csv_and_label_map_for_mask_values(tmp_path: Path, ws: Workspace) -> None:
    img = _image(tmp_path / "imgs" / "x.png", 12, 12, 5)
    _run("add", img, "-w", ws.root)
    sem = np.zeros((12, 12), np.uint8)
    sem[1:4, 1:4] = 255
    sem[6:9, 6:9] = 127
    sem[10:, 10:] = 60
    (tmp_path / "m").mkdir()
    cv2.imwrite(str(tmp_path / "m" / "1676262.png"), sem)
    (tmp_path / "map.csv").write_text(f"name,image\n1676262.png,{img}\n")
    r = import_annotations(
        ws,
        [tmp_path / "m"],
        "masks",
        label_map=["255=lesion", "127=ignore"],
        mapping=tmp_path / "map.csv",
    )
    assert r.skipped == {"mask value 60 not mapped (files)": 1}
    rec = ws.ledger.all()[0]
    assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), sem == 255)
    assert np.array_equal(read_mask_png(ws.abs(rec.annotations[0].ignore_path)), sem == 127)
    assert rec.annotations[0].origin["matched_by"] == "mapping CSV"


def test_import_rejects_size_mismatch_and_unknown_format(tmp_path: Path, ws: Workspace) -> None:
    _image(tmp_path / "imgs" / "x.png", 12, 12, 6)
    _run("add", tmp_path / "imgs", "-w", ws.root)
    (tmp_path / "m").mkdir()
    cv2.imwrite(str(tmp_path / "m" / "x.png"), np.full((10, 12), 255, np.uint8))
    with pytest.raises(BatchError) as exc:
        import_annotations(ws, [tmp_path / "m"], "masks")
    assert "drawn on a 12x10 image but the matched image is 12x12 px" in str(exc.value.failures)
    cv2.imwrite(str(tmp_path / "m" / "x.png"), np.full((6, 6), 255, np.uint8))
    with pytest.raises(BatchError) as exc:
        import_annotations(ws, [tmp_path / "m"], "masks")
    assert "is 6x6 px but the matched image is 12x12 px" in str(exc.value.failures)
    with pytest.raises(UsageError, match=r"supported formats: \['coco', 'darwin'"):
        import_annotations(ws, [tmp_path / "m"], "yolo")
    r = CliRunner().invoke(
        cli, ["import-annotations", str(tmp_path / "m"), "-w", str(ws.root), "--format", "masks"]
    )
    assert r.exit_code == 1 and "nothing imported" in r.output


def test_import_coco_polygons_rle_and_skips_boxes(tmp_path: Path, ws: Workspace) -> None:
    pycocotools_mask = pytest.importorskip("pycocotools.mask")
    h, w = 30, 40
    _image(tmp_path / "coco" / "img" / "p1.png", h, w, 7)
    _run("add", tmp_path / "coco" / "img", "-w", ws.root)
    rle_region = _box(h, w, 20, 28, 25, 38)
    rle = pycocotools_mask.encode(np.asfortranarray(rle_region.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": [{"id": 5, "file_name": "img/p1.png", "width": w, "height": h}],
        "categories": [{"id": 1, "name": "opacity"}, {"id": 2, "name": "lung"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 1,
                "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]],
            },
            {"id": 2, "image_id": 5, "category_id": 1, "segmentation": rle},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [0, 0, 3, 3]},
            {"id": 4, "image_id": 5, "category_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]]},
        ],
    }
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(doc))
    r = import_annotations(
        ws, [tmp_path / "coco" / "ann.json"], "coco", label_map=["opacity=lesion"]
    )
    assert r.skipped == {"bbox (object detection)": 1, "category 'lung' not mapped": 1}
    rec = ws.ledger.all()[0]
    expected = polygons_to_mask(
        [PolygonPx(np.array([[2, 2], [12, 2], [12, 12], [2, 12]], float))], h, w
    )
    assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), expected | rle_region)
    assert rec.annotations[0].origin["matched_by"] == "content hash"


def test_coco_rle_codec_matches_pycocotools() -> None:
    pycocotools_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for shape, p in [((1, 1), 0.5), ((7, 5), 0.5), ((64, 48), 0.05), ((33, 70), 0.9)]:
        m = rng.random(shape) < p
        ours = cocorle.encode(m)
        theirs = pycocotools_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"].decode() and ours["size"] == theirs["size"]
        assert np.array_equal(cocorle.decode(ours), m)
        assert np.array_equal(
            cocorle.decode({"size": list(shape), "counts": cocorle.mask_to_counts(m)}), m
        )


# ----------------------------------------------------------------------------- export + round trips
@pytest.fixture
def masked(tmp_path: Path) -> Workspace:
    """Four images of three patients with masks (one empty), imported from mask PNGs."""
    ws = Workspace.init(tmp_path / "src-ws")
    imgs, masks = tmp_path / "imgs", tmp_path / "msk"
    rows = ["file,patient_id"]
    for i, (pid, box) in enumerate(
        [("P1", (2, 9, 3, 12)), ("P1", (10, 20, 10, 22)), ("P2", None), ("P3", (0, 5, 0, 30))]
    ):
        _image(imgs / f"im{i}.png", 24, 32, 10 + i)
        m = _box(24, 32, *box) if box else np.zeros((24, 32), bool)
        masks.mkdir(exist_ok=True)
        cv2.imwrite(str(masks / f"im{i}.png"), m.astype(np.uint8) * 255)
        rows.append(f"imgs/im{i}.png,{pid}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    _run("add", imgs, "-w", ws.root, "--metadata", tmp_path / "meta.csv")
    import_annotations(ws, [masks], "masks")
    assert all(r.mask is not None for r in ws.ledger.all())
    return ws


def _masks_by_id(ws: Workspace) -> dict[str, np.ndarray]:
    return {r.image_id: read_mask_png(ws.abs(r.mask.path)) for r in ws.ledger.all() if r.mask}


@pytest.mark.parametrize(
    ("fmt", "images", "annotations", "import_fmt"),
    [
        ("png", "images", "masks", "masks"),
        ("coco", "images", "annotations.json", "coco"),
        ("nnunet", "imagesTr", "labelsTr", "masks"),
    ],
)
def test_export_then_import_gives_identical_masks(
    tmp_path: Path, masked: Workspace, fmt: str, images: str, annotations: str, import_fmt: str
) -> None:
    out = tmp_path / f"out-{fmt}"
    _run("export", out, "-w", masked.root, "--format", fmt)
    manifest = json.loads((out / "camlabel-export.json").read_text())
    assert {c["image_id"]: c["mask_version"] for c in manifest["cases"]} == {
        r.image_id: r.mask.version for r in masked.ledger.all()
    }
    run = [json.loads(x) for x in masked.ledger.runs_path.read_text().splitlines()][-1]
    assert run["kind"] == "export" and len(run["result"]["mask_versions"]) == 4
    fresh = Workspace.init(tmp_path / f"fresh-{fmt}")
    _run("add", out / images, "-w", fresh.root)
    mapping: list[str] = []
    if fmt == "nnunet":  # nnU-Net names images <case>_0000.png and labels <case>.png
        (tmp_path / "map.csv").write_text(
            "name,image\n"
            + "".join(
                f"{p.name},{out / images / (p.stem + '_0000.png')}\n"
                for p in (out / annotations).iterdir()
            )
        )
        mapping = ["--mapping", str(tmp_path / "map.csv")]
    _run(
        "import-annotations", out / annotations, "-w", fresh.root, "--format", import_fmt, *mapping
    )
    a, b = _masks_by_id(masked), _masks_by_id(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_export_png_index_and_coco_loads_in_pycocotools(tmp_path: Path, masked: Workspace) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    _run("export", tmp_path / "png", "-w", masked.root, "--format", "png")
    rows = list(csv.DictReader((tmp_path / "png" / "index.csv").read_text().splitlines()))
    recs = {r.image_id: r for r in masked.ledger.all()}
    assert len(rows) == 4
    for row in rows:
        rec = recs[row["image_id"]]
        assert row["patient"] == rec.patient_id and int(row["mask_version"]) == rec.mask.version
        assert np.array_equal(
            read_mask_png(tmp_path / "png" / row["mask"]), read_mask_png(masked.abs(rec.mask.path))
        )
        assert read_image(tmp_path / "png" / row["image"]).image_id == rec.image_id
    _run("export", tmp_path / "coco", "-w", masked.root, "--format", "coco")
    coco = coco_api.COCO(str(tmp_path / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 4
    for img in coco.loadImgs(coco.getImgIds()):
        union = np.zeros((img["height"], img["width"]), bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            union |= coco.annToMask(ann).astype(bool)
        rec = recs[img["camlabel_image_id"]]
        assert np.array_equal(union, read_mask_png(masked.abs(rec.mask.path)))


def test_export_refuses_a_foreign_nonempty_folder_and_unknown_format(
    tmp_path: Path, masked: Workspace
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.docx").write_text("x")
    r = CliRunner().invoke(
        cli, ["export", str(tmp_path / "busy"), "-w", str(masked.root), "--format", "png"]
    )
    assert r.exit_code == 2 and "not empty" in r.output
    r = CliRunner().invoke(
        cli, ["export", str(tmp_path / "o"), "-w", str(masked.root), "--format", "yolo"]
    )
    assert r.exit_code == 2 and "'nnunet'" in r.output and "'dicom-seg'" in r.output


def read_nnunet_dataset(folder: Path) -> dict[str, Any]:
    """What nnU-Net v2's verify_dataset_integrity checks, reading files the way it does.

    (nnunetv2.experiment_planning.verify_dataset_integrity: dataset.json keys, one label per
    case and every channel per case named <case>_<XXXX><file_ending>, identical image/label
    geometry, label values a subset of dataset.json's labels, ignore label the highest.)
    """
    from PIL import Image

    ds = json.loads((folder / "dataset.json").read_text())
    for key in ("labels", "channel_names", "numTraining", "file_ending"):
        assert key in ds, key
    assert ds["labels"]["background"] == 0
    if "ignore" in ds["labels"]:
        assert ds["labels"]["ignore"] == max(ds["labels"].values())
    ending = ds["file_ending"]
    labels = sorted((folder / "labelsTr").glob(f"*{ending}"))
    assert len(labels) == ds["numTraining"]
    cases = [p.name[: -len(ending)] for p in labels]
    for case in cases:
        for ch in ds["channel_names"]:
            img = np.asarray(Image.open(folder / "imagesTr" / f"{case}_{int(ch):04d}{ending}"))
            seg = np.asarray(Image.open(folder / "labelsTr" / f"{case}{ending}"))
            assert img.shape[:2] == seg.shape[:2], case
            assert set(np.unique(seg).tolist()) <= set(ds["labels"].values()), case
    return {"cases": cases, "dataset": ds}


def test_nnunet_dataset_passes_the_integrity_check_and_splits_keep_patients_apart(
    tmp_path: Path, masked: Workspace
) -> None:
    out = tmp_path / "Dataset501_Lesion"
    _run("export", out, "-w", masked.root, "--format", "nnunet")
    found = read_nnunet_dataset(out)
    assert found["dataset"]["labels"] == {"background": 0, "lesion": 1}
    splits = json.loads((out / "splits_final.json").read_text())
    assert len(splits) == 3  # three patients -> three folds
    patient = {f"cxr_{r.image_id[:12]}": r.patient_id for r in masked.ledger.all()}
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(found["cases"])
        assert not {patient[c] for c in fold["train"]} & {patient[c] for c in fold["val"]}


def test_import_groundtruth_polygon_workers_and_semantic_png(tmp_path: Path, ws: Workspace) -> None:
    from camlabel.backends.groundtruth.convert import class_mask_to_png

    h, w = 20, 30
    img = _image(tmp_path / "imgs" / "g.png", h, w, 8)
    _run("add", img, "-w", ws.root)
    image_id = ws.ledger.all()[0].image_id
    tri = [{"x": 2, "y": 2}, {"x": 12, "y": 2}, {"x": 12, "y": 12}]
    poly_line = {
        "source-ref": "s3://b/p/other-name.png",
        "camlabel-image-id": image_id,
        "camlabel-lesion-polygons": {
            "workers": [
                {
                    "workerId": "w1",
                    "annotatedResult": {
                        "inputImageProperties": {"width": w, "height": h},
                        "polygons": [{"label": "Opacity", "vertices": tri}],
                    },
                },
                {
                    "workerId": "w2",
                    "annotatedResult": {
                        "inputImageProperties": {"width": w, "height": h},
                        "polygons": [
                            {"label": "Opacity", "vertices": tri},
                            {
                                "label": "Rib",
                                "vertices": [
                                    {"x": 20, "y": 2},
                                    {"x": 28, "y": 2},
                                    {"x": 28, "y": 9},
                                ],
                            },
                        ],
                    },
                },
            ]
        },
        "camlabel-lesion-polygons-metadata": {
            "type": "groundtruth/custom",
            "creation-date": "2026-01-01T00:00:00",
        },
        "boxes": {"annotations": [], "image_size": []},
        "boxes-metadata": {"type": "groundtruth/object-detection"},
    }
    classes = np.zeros((h, w), np.uint8)
    classes[5:15, 15:25] = 1
    classes[0:3, 0:3] = 2
    cmap = {
        "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff"},
        "1": {"class-name": "Opacity", "hex-color": "#2ca02c"},
        "2": {"class-name": "Device", "hex-color": "#1f77b4"},
    }
    (tmp_path / "ann" / "consolidated").mkdir(parents=True)
    (tmp_path / "ann" / "consolidated" / "0_x.png").write_bytes(class_mask_to_png(classes, cmap))
    sem_line = {
        "source-ref": "s3://b/p/g.png",
        "seg-ref": "s3://b/ann/consolidated/0_x.png",
        "seg-ref-metadata": {
            "type": "groundtruth/semantic-segmentation",
            "internal-color-map": cmap,
            "job-name": "labeling-job/j",
        },
    }
    manifest = tmp_path / "output.manifest"
    manifest.write_text(json.dumps(poly_line) + "\n" + json.dumps(sem_line) + "\n")
    r = import_annotations(ws, [manifest], "groundtruth", label_map=["Device=ignore"])
    assert r.skipped == {
        "Ground Truth task type 'groundtruth/object-detection'": 1,
        "polygon label 'Rib' not mapped": 1,
    }
    rec = ws.ledger.all()[0]
    assert sorted(a.annotator for a in rec.annotations) == ["labeling-job/j", "w1", "w2"]
    sem = next(a for a in rec.annotations if a.annotator == "labeling-job/j")
    assert np.array_equal(read_mask_png(ws.abs(sem.raster_path)), classes == 1)
    assert np.array_equal(read_mask_png(ws.abs(sem.ignore_path)), classes == 2)
    w1 = next(a for a in rec.annotations if a.annotator == "w1")
    tri_mask = polygons_to_mask([PolygonPx(np.array([[2, 2], [12, 2], [12, 12]], float))], h, w)
    assert np.array_equal(read_mask_png(ws.abs(w1.raster_path)), tri_mask)
    # majority of three: the triangle (2 of 3); the square only 1 of 3
    assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), tri_mask)
    # a label PNG that was not downloaded: the error says where to put it
    sem_line["seg-ref"] = "s3://b/ann/missing.png"
    manifest.write_text(json.dumps(sem_line) + "\n")
    with pytest.raises(AnnotationError) as err:
        import_annotations(ws, [manifest], "groundtruth")
    assert "s3://b/ann/missing.png" in err.value.message
    assert err.value.hint is not None and "aws s3 cp s3://b/ann/missing.png" in err.value.hint


def test_import_darwin_polygons_complex_holes_and_ignore(tmp_path: Path, ws: Workspace) -> None:
    h, w = 40, 40
    _image(tmp_path / "imgs" / "orig.png", h, w, 9)
    _run("add", tmp_path / "imgs", "-w", ws.root)

    def path(pts: list[tuple[int, int]]) -> list[dict[str, int]]:
        return [{"x": x, "y": y} for x, y in pts]

    doc = {
        "image": {
            "width": 80,
            "height": 80,
            "filename": "0001.jpg",
            "original_filename": "orig.png",
        },
        "annotations": [
            {"name": "Lung", "polygon": {"path": path([(4, 4), (36, 4), (36, 36), (4, 36)])}},
            {
                "name": "Lung",
                "complex_polygon": {
                    "path": [
                        path([(40, 40), (76, 40), (76, 76), (40, 76)]),
                        path([(50, 50), (66, 50), (66, 66), (50, 66)]),
                    ]
                },
            },
            {"name": "Ignore", "polygon": {"path": path([(40, 4), (60, 4), (60, 20), (40, 20)])}},
            {"name": "COVID-19", "tag": {}},
            {"name": "Lung", "bounding_box": {"x": 1, "y": 1, "w": 2, "h": 2}},
        ],
    }
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.json").write_text(json.dumps(doc))
    dry = import_annotations(ws, [tmp_path / "d"], "darwin", dry_run=True)
    assert dry.annotations == 0 and dry.skipped == {
        "class 'Lung' not mapped": 2,
        "tag": 1,
        "bounding_box": 1,
        "file without lesion regions": 1,
    }
    r = import_annotations(ws, [tmp_path / "d"], "darwin", label_map=["Lung=lesion"])
    assert r.skipped == {"tag": 1, "bounding_box": 1}
    rec = ws.ledger.all()[0]
    # drawn on 80x80, the image is 40x40: coordinates halve
    sq = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)  # noqa: E731
    expected = polygons_to_mask(
        [PolygonPx(sq(2, 2, 18, 18)), PolygonPx(sq(20, 20, 38, 38), (sq(25, 25, 33, 33),))], h, w
    )
    assert np.array_equal(read_mask_png(ws.abs(rec.mask.path)), expected)
    ignore = polygons_to_mask([PolygonPx(sq(20, 2, 30, 10))], h, w)
    assert np.array_equal(read_mask_png(ws.abs(rec.annotations[0].ignore_path)), ignore)
    # the ignore label travels to nnU-Net as label 2 (the highest, as nnU-Net requires)
    out = tmp_path / "nn"
    _run("export", out, "-w", ws.root, "--format", "nnunet")
    assert json.loads((out / "dataset.json").read_text())["labels"] == {
        "background": 0,
        "lesion": 1,
        "ignore": 2,
    }
    lab = cv2.imread(str(next((out / "labelsTr").iterdir())), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(lab == 1, expected) and np.array_equal(lab == 2, ignore & ~expected)


def test_export_dicom_seg_references_the_source_and_reads_back(
    tmp_path: Path, ws: Workspace
) -> None:
    hd = pytest.importorskip("highdicom")
    import pydicom

    src = tmp_path / "src"
    make_dicom(src / "a.dcm", (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 7))
    _image(src / "b.png", 20, 24, 11)
    _run("add", src, "-w", ws.root)
    recs = {Path(r.source_path).name: r for r in ws.ledger.all()}
    masks = tmp_path / "m"
    masks.mkdir()
    lesion = _box(20, 24, 4, 12, 6, 18)
    for name in ("a.png", "b.png"):  # named like the images (a.dcm -> a.png)
        cv2.imwrite(str(masks / name), lesion.astype(np.uint8) * 255)
    import_annotations(ws, [masks], "masks")
    out = tmp_path / "seg"
    _run("export", out, "-w", ws.root, "--format", "dicom-seg")
    manifest = json.loads((out / "camlabel-export.json").read_text())
    assert manifest["written"]["skipped_not_dicom"] == [f"cxr_{recs['b.png'].image_id[:12]}"]
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 1
    source = pydicom.dcmread(src / "a.dcm")
    seg = hd.seg.segread(files[0])
    assert seg.Modality == "SEG"
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID  # patient data stays in the local DICOM file
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    pix = seg.get_segment_mask(1) if hasattr(seg, "get_segment_mask") else None
    arr = np.asarray(seg.pixel_array).reshape(20, 24) if pix is None else pix
    assert np.array_equal(arr.astype(bool), lesion)


@pytest.mark.slow
def test_nnunet_own_integrity_check(tmp_path: Path, masked: Workspace) -> None:
    """nnU-Net's verify_dataset_integrity itself, where nnunetv2 is installed (it pulls torch)."""
    pytest.importorskip("nnunetv2")
    import os

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    out = tmp_path / "Dataset501_Lesion"
    _run("export", out, "-w", masked.root, "--format", "nnunet")
    os.environ.setdefault("nnUNet_raw", str(tmp_path))
    verify_dataset_integrity(str(out), 1)  # raises on any problem


@pytest.mark.parametrize(
    ("fmt", "name", "content", "message"),
    [
        ("labelstudio", "min.json", [{"image": "/x.png", "label": []}], "is not a task"),
        ("labelstudio", "obj.json", "{not json", "is not valid JSON (line 1"),
        ("coco", "c.json", {"annotations": []}, "is not a COCO file"),
        (
            "coco",
            "c2.json",
            {
                "images": [{"id": 1, "file_name": "x.png"}],
                "annotations": [
                    {"id": 1, "image_id": 9, "category_id": 1, "segmentation": [[0, 0, 1, 1, 1, 0]]}
                ],
                "categories": [{"id": 1, "name": "lesion"}],
            },
            "image_id 9 is not in 'images'",
        ),
        (
            "coco",
            "c3.json",
            {
                "images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 1,
                        "segmentation": {"size": [4, 4], "counts": [3, 2]},
                    }
                ],
                "categories": [{"id": 1, "name": "lesion"}],
            },
            "RLE runs cover 5 pixels but size 4x4 has 16",
        ),
        ("darwin", "d.json", {"annotations": []}, "is not a Darwin JSON file"),
        ("groundtruth", "o.manifest", "not json\n", "line 1"),
    ],
)
def test_malformed_files_are_refused_naming_the_file(
    tmp_path: Path, ws: Workspace, fmt: str, name: str, content: Any, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    before = _snapshot(ws)
    with pytest.raises(AnnotationError) as err:
        import_annotations(ws, [path], fmt)
    assert message in err.value.message and name in err.value.message
    assert _snapshot(ws) == before


def test_nnunet_test_split_goes_to_imagests_without_labels(
    tmp_path: Path, masked: Workspace
) -> None:
    held_out = sorted(r.image_id for r in masked.ledger.all())[0]
    with masked.ledger.transaction() as txn:
        txn.put(txn.get(held_out).evolve(split="test"))
    out = tmp_path / "Dataset503_Split"
    _run("export", out, "-w", masked.root, "--format", "nnunet")
    case = f"cxr_{held_out[:12]}"
    assert [p.name for p in (out / "imagesTs").iterdir()] == [f"{case}_0000.png"]
    assert not (out / "labelsTr" / f"{case}.png").exists()
    found = read_nnunet_dataset(out)
    assert found["dataset"]["numTraining"] == 3 and case not in found["cases"]
    assert all(
        case not in f["train"] + f["val"]
        for f in json.loads((out / "splits_final.json").read_text())
    )
