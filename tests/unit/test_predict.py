"""predict: classify -> segment lesion classes -> overlay, mask and JSON per image.

The classifier is a real (small) camlabel ensemble saved to .keras, whose head is set so that
its answer is known: zero weights and a bias that picks one class for every input. The
segmenter is a tiny Tiramisu whose head says "lesion" everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from click.testing import CliRunner  # noqa: E402

from camlabel.cli.main import cli  # noqa: E402
from camlabel.models.preprocess import SegmenterInput  # noqa: E402
from camlabel.models.segmenter import load_segmenter, segment_probability  # noqa: E402
from camlabel.predict import predict  # noqa: E402
from tests.seg_factory import make_constant_segmenter  # noqa: E402

CLASSES = ("covid", "pneumonia", "normal")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from camlabel.models.ensemble import build_ensemble

    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    clf = build_ensemble(CLASSES, image_size=32, backbones=("efficientnetb0",))
    head = clf.get_layer("logits")
    kernel, _ = head.get_weights()
    out: dict[str, Path] = {}
    for forced in ("covid", "normal"):
        bias = np.full(len(CLASSES), -8.0, np.float32)
        bias[CLASSES.index(forced)] = 8.0
        head.set_weights([np.zeros_like(kernel), bias])
        out[forced] = root / f"always-{forced}.keras"
        clf.save(out[forced])
    seg_dir = make_constant_segmenter(root / "seg-test")  # p = 0.9975 everywhere
    (seg_dir / "segmenter.json").write_text(json.dumps({"run_id": "seg-test", "image_size": 32}))
    out["segmenter"] = seg_dir
    return out


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    from camlabel.phantoms import render_phantom
    from tests.dicom_factory import make_dicom

    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    d.mkdir()
    img, _, _ = render_phantom(rng, "covid", 70, 50)
    cv2.imwrite(str(d / "chest.png"), img)
    img2, _, _ = render_phantom(rng, "normal", 64, 64)
    cv2.imwrite(str(d / "other.png"), img2)
    dcm = make_dicom(tmp_path / "dicom" / "scan.dcm", (img.astype(np.uint16) * 16), bits_stored=12)
    return {"png": d / "chest.png", "png2": d / "other.png", "dir": d, "dcm": dcm}


def _json(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}.json").read_text())


def test_a_normal_image_gets_no_mask(
    models: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    other = tmp_path / "elsewhere" / "chest.png"  # same file name, another image
    other.parent.mkdir()
    other.write_bytes(images["png2"].read_bytes())
    out = tmp_path / "out"
    res = predict(
        models["normal"], models["segmenter"], [images["png"], other], out, progress=False
    )
    # inputs are processed in sorted path order: the first "chest.png" keeps its stem, the
    # second gets the image hash appended (whichever folder sorts first)
    first, second = res.items
    assert Path(first["overlay_path"]).name == "chest.overlay.png"
    assert Path(second["overlay_path"]).name == f"chest-{second['image_id'][:8]}.overlay.png"
    (item,) = [i for i in res.items if Path(i["input"]) == images["png"]]
    stem = Path(item["overlay_path"]).name.removesuffix(".overlay.png")
    assert item["predicted_class"] == "normal" and item["probability"] > 0.99
    assert item["segmented"] is False and item["mask_path"] is None
    assert not list(out.glob("*.mask.png"))
    assert _json(out, stem) == item
    overlay = cv2.imread(str(out / f"{stem}.overlay.png"))
    assert overlay.shape == (70, 50, 3)
    body = overlay[20:]  # below the banner: the gray image, untinted
    assert (body[..., 0] == body[..., 2]).all()


def test_a_lesion_image_gets_a_mask_at_original_resolution(
    models: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = predict(models["covid"], models["segmenter"], [images["png"]], out, progress=False)
    (item,) = res.items
    assert item["predicted_class"] == "covid" and item["segmented"] is True
    mask = cv2.imread(str(out / "chest.mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (70, 50) and set(np.unique(mask)) == {255}
    assert item["mask_area_px"] == 70 * 50 and item["mask_fraction"] == 1.0
    assert item["segmenter_version"] == "seg-test"
    overlay = cv2.imread(str(out / "chest.overlay.png"))
    body = overlay[30:60, 10:40].astype(int)
    assert (body[..., 2] > body[..., 0]).all()  # tinted red where the mask is
    # The banner carries class and probability: it is darker than the image below it.
    assert overlay[:8].mean() < overlay[30:].mean()


def test_folders_batches_dicom_and_failures(
    models: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    from tests.dicom_factory import fake_tag_needles

    (images["dir"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    res = predict(
        models["covid"],
        models["segmenter"],
        [images["dir"], images["dcm"]],
        out,
        batch_size=2,
        progress=False,
    )
    assert sorted(Path(i["input"]).name for i in res.items) == [
        "chest.png",
        "other.png",
        "scan.dcm",
    ]
    assert [Path(p).name for p, _ in res.failures] == ["broken.png"]
    dcm = _json(out, "scan")
    assert dcm["segmented"] is True and (dcm["height"], dcm["width"]) == (70, 50)
    assert cv2.imread(str(out / "scan.mask.png"), cv2.IMREAD_UNCHANGED).shape == (70, 50)
    for f in out.iterdir():  # nothing derived from the DICOM carries its patient tags
        data = f.read_bytes()
        assert not any(n in data for n in fake_tag_needles()), f


def test_segment_probability_maps_back_to_each_image(models: dict[str, Path]) -> None:
    seg = load_segmenter(models["segmenter"])
    imgs = [np.zeros((40, 90), np.uint8), np.ones((33, 17), np.float32) * 0.5]
    probs = segment_probability(seg, imgs, batch_size=1)
    assert [p.shape for p in probs] == [(40, 90), (33, 17)]
    assert all(p.dtype == np.float32 and p.min() > 0.99 for p in probs)


def test_load_segmenter_refuses_a_classifier(models: dict[str, Path]) -> None:
    from camlabel.errors import ModelError

    with pytest.raises(ModelError, match="not a camlabel segmenter"):
        load_segmenter(models["covid"])
    with pytest.raises(ModelError, match="no segmenter at"):
        load_segmenter(models["covid"].parent / "nothing-here")


def test_load_segmenter_refuses_to_guess_the_training_size(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """A bare model.keras of a size-agnostic Tiramisu: the size is not guessed."""
    import shutil

    from camlabel.errors import ModelError

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(models["segmenter"] / "model.keras", bare / "model.keras")
    with pytest.raises(ModelError, match="training image size is unknown") as exc:
        load_segmenter(bare)
    assert "model_info.json" in (exc.value.hint or "")
    (bare / "model_info.json").write_text(json.dumps({"image_size": 48}))
    loaded = load_segmenter(bare)
    assert loaded.image_size == 48 and loaded.preprocess == SegmenterInput(48)


def test_cli_predict(models: dict[str, Path], images: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            "-c",
            str(models["covid"]),
            "-s",
            str(models["segmenter"]),
            str(images["png"]),
            "--out",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    items = json.loads(r.output)["items"]
    assert items[0]["segmented"] is True and (out / "chest.mask.png").is_file()


def _half_lung_masks(tmp_path: Path) -> Path:
    """Lung masks for chest.png (70x50) covering its left half only; none for other.png."""
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    lung = np.zeros((70, 50), np.uint8)
    lung[:, :25] = 255
    cv2.imwrite(str(lungs / "chest.png"), lung)
    return lungs


def test_lung_masks_keep_the_lesion_mask_inside_the_lung_field(
    models: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    """The constant segmenter marks every pixel; with a half-image lung mask, mask.png is that
    half (the same pixels as without lung masks there, none outside). other.png has no lung
    mask: unrestricted, lung_field null."""
    lungs = _half_lung_masks(tmp_path)
    plain, restricted = tmp_path / "plain", tmp_path / "restricted"
    predict(models["covid"], models["segmenter"], [images["dir"]], plain, progress=False)
    res = predict(
        models["covid"],
        models["segmenter"],
        [images["dir"]],
        restricted,
        progress=False,
        lung_masks=lungs,
    )
    before = cv2.imread(str(plain / "chest.mask.png"), cv2.IMREAD_UNCHANGED)
    after = cv2.imread(str(restricted / "chest.mask.png"), cv2.IMREAD_UNCHANGED)
    assert not after[:, 25:].any()
    assert (after[:, :25] == before[:, :25]).all() and after[:, :25].all()
    chest = _json(restricted, "chest")
    assert chest["lung_field"] == "mask"
    assert chest["lung_field_source"] == str(lungs / "chest.png")
    assert chest["mask_area_px"] == 70 * 25 and chest["mask_fraction"] == 0.5
    overlay = cv2.imread(str(restricted / "chest.overlay.png")).astype(int)
    assert (overlay[30:60, 30:48, 0] == overlay[30:60, 30:48, 2]).all()  # untinted outside
    other = _json(restricted, "other")
    assert other["lung_field"] is None and other["lung_field_source"] is None
    assert cv2.imread(str(restricted / "other.mask.png"), cv2.IMREAD_UNCHANGED).all()
    assert {i["input"] for i in res.items} == {str(images["png"]), str(images["png2"])}
    assert _json(plain, "chest")["lung_field"] is None


def test_an_unreadable_lung_mask_is_an_error_naming_it(
    models: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    from camlabel.errors import ImageReadError

    lungs = tmp_path / "lungs"
    lungs.mkdir()
    (lungs / "chest.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"chest\.png"):
        predict(
            models["covid"],
            models["segmenter"],
            [images["png"]],
            tmp_path / "out",
            progress=False,
            lung_masks=lungs,
        )


def test_cli_predict_passes_lung_masks(
    models: dict[str, Path], images: dict[str, Path], tmp_path: Path
) -> None:
    lungs = _half_lung_masks(tmp_path)
    out = tmp_path / "cli-out"
    args = ["predict", "-c", str(models["covid"]), "-s", str(models["segmenter"])]
    r = CliRunner().invoke(
        cli, [*args, str(images["png"]), "-o", str(out), "--lung-masks", str(lungs), "--json"]
    )
    assert r.exit_code == 0, r.output
    (item,) = json.loads(r.output)["items"]
    assert item["lung_field"] == "mask" and item["mask_area_px"] == 70 * 25
    assert not cv2.imread(str(out / "chest.mask.png"), cv2.IMREAD_UNCHANGED)[:, 25:].any()
