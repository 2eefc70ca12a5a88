"""camlabel.phantoms: deterministic, class-typical lesions inside the lungs, consistent files."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from camlabel.imaging import read_image, read_mask_png
from camlabel.phantoms import CSV_COLUMNS, PhantomRecord, generate_phantoms, render_phantom

SEEDS = range(12)


def _render(seed: int, label: str, h: int = 128, w: int = 112, **kw):
    return render_phantom(np.random.default_rng(seed), label, h, w, **kw)


def _lungs(lung: np.ndarray) -> list[np.ndarray]:
    n, labels = cv2.connectedComponents(lung.astype(np.uint8))
    assert n == 3, f"expected two lungs, got {n - 1} components"
    return [labels == k for k in (1, 2)]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PhantomRecord]]:
    out = tmp_path_factory.mktemp("phantoms")
    return out, generate_phantoms(out, count=31, seed=5, size=96, text_marker_rate=0.3)


def test_same_seed_same_bytes_other_seed_other_bytes(
    generated: tuple[Path, list[PhantomRecord]], tmp_path: Path
) -> None:
    out, _ = generated
    again = generate_phantoms(tmp_path / "again", count=31, seed=5, size=96, text_marker_rate=0.3)
    assert _digest(out) == _digest(tmp_path / "again")
    assert len(again) == 31
    other = generate_phantoms(tmp_path / "other", count=31, seed=6, size=96, text_marker_rate=0.3)
    assert [r.seed for r in other] != [r.seed for r in again]
    first = "images/covid/phantom-0001.png"
    assert (tmp_path / "other" / first).read_bytes() != (out / first).read_bytes()


def test_render_is_deterministic_and_label_changes_only_the_lesion() -> None:
    a = _render(3, "covid")
    b = _render(3, "covid")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    _, no_lesion, lung = _render(3, "normal")
    np.testing.assert_array_equal(lung, a[2])  # same anatomy and acquisition
    assert not no_lesion.any()
    assert not np.array_equal(_render(4, "covid")[0], a[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_covid_is_bilateral_peripheral_and_lower_zone(seed: int) -> None:
    image, lesion, lung = _render(seed, "covid", w=96 + seed * 2)
    assert not (lesion & ~lung).any()
    assert lesion.mean() > 0.025
    for one in _lungs(lung):
        part = lesion & one
        assert part.any(), "both lungs have ground glass"
        ys, xs = np.nonzero(one)
        top, bottom = ys.min(), ys.max()
        ly, lx = np.nonzero(part)
        assert ly.min() >= top + 0.45 * (bottom - top), "lower zone only"
        outward = 1 if xs.mean() > image.shape[1] / 2 else -1
        assert (lx.mean() - xs.mean()) * outward > 0, "peripheral: lateral of the lung's centre"


@pytest.mark.parametrize("seed", SEEDS)
def test_pneumonia_is_one_contiguous_region_in_one_lung(seed: int) -> None:
    _, lesion, lung = _render(seed, "pneumonia", h=112, w=90 + seed)
    assert not (lesion & ~lung).any()
    assert lesion.mean() > 0.025
    assert sum(bool((lesion & one).any()) for one in _lungs(lung)) == 1
    assert cv2.connectedComponents(lesion.astype(np.uint8))[0] == 2  # background + one region


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_normal_has_no_lesion(seed: int) -> None:
    _, lesion, lung = _render(seed, "normal")
    assert lesion.dtype == bool and not lesion.any()
    assert 0.15 < lung.mean() < 0.45


@pytest.mark.parametrize(("label", "min_gain"), [("covid", 20), ("pneumonia", 40)])
def test_lesions_are_visibly_brighter_than_the_same_region_without_them(
    label: str, min_gain: int
) -> None:
    for seed in SEEDS:
        image, lesion, _ = _render(seed, label)
        normal, _, _ = _render(seed, "normal")
        gain = image[lesion].astype(float).mean() - normal[lesion].astype(float).mean()
        assert gain > min_gain, f"seed {seed}: lesion only {gain:.1f} grey levels brighter"


def test_covid_mask_outline_is_where_the_opacity_falls_off() -> None:
    # The mask is the patches' half-maximum contour: the added density drops sharply across
    # the outline (a 2-px ring inside holds ~3x the gain of a 2-px ring outside, still in the
    # lung). Gaussian blobs cut at 30 % of their peak gave < 2x: an outline nobody could see.
    k = np.ones((3, 3), np.uint8)
    for seed in SEEDS[:6]:
        image, lesion, lung = _render(seed, "covid", h=192, w=170)
        normal, _, _ = _render(seed, "normal", h=192, w=170)
        gain = image.astype(float) - normal.astype(float)
        inner = lesion & ~cv2.erode(lesion.astype(np.uint8), k, iterations=2).astype(bool)
        outer = cv2.dilate(lesion.astype(np.uint8), k, iterations=2).astype(bool) & ~lesion & lung
        ratio = gain[inner].mean() / gain[outer].mean()
        assert ratio > 2.3, f"seed {seed}: inner/outer gain {ratio:.2f}"


def test_images_are_non_square_and_plausible() -> None:
    image, _, lung = _render(0, "normal", h=256, w=210)
    assert image.shape == (256, 210) and image.dtype == np.uint8
    lungs = image[lung].mean()
    outside = image[~lung]
    assert lungs < 110 and outside.mean() > lungs + 50  # dark lungs in a brighter body
    assert image[:, :5].mean() < image[:, 100:110].mean()  # air at the edges, spine in the middle


def test_text_marker_is_burned_into_a_corner_only() -> None:
    plain, lesion, lung = _render(1, "covid", h=160, w=140, text_marker_rate=0.0)
    marked, lesion2, lung2 = _render(1, "covid", h=160, w=140, text_marker_rate=1.0)
    np.testing.assert_array_equal(lesion, lesion2)
    np.testing.assert_array_equal(lung, lung2)
    changed = np.argwhere(plain != marked)
    assert len(changed) > 20
    rows, cols = changed[:, 0], changed[:, 1]
    in_top = rows.max() < 160 * 0.3
    in_bottom = rows.min() > 160 * 0.7
    in_left = cols.max() < 140 * 0.6
    in_right = cols.min() > 140 * 0.4
    assert (in_top or in_bottom) and (in_left or in_right)


def test_metadata_and_files_agree(generated: tuple[Path, list[PhantomRecord]]) -> None:
    out, records = generated
    with (out / "metadata.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert (
            tuple(reader.fieldnames or ())
            == CSV_COLUMNS
            == (
                "file",
                "label",
                "patient_id",
                "lesion_mask",
                "lung_mask",
                "width",
                "height",
                "seed",
                "lesion_area_px",
            )
        )
        rows = list(reader)
    assert len(rows) == len(records) == 31
    assert Counter(r["label"] for r in rows) == {"covid": 11, "pneumonia": 10, "normal": 10}
    for row, rec in zip(rows, records, strict=True):
        assert row["file"] == rec.file and row["patient_id"].startswith("phantom-p")
        assert row["file"] == f"images/{row['label']}/{Path(row['file']).name}"
        img = read_image(out / row["file"])
        lesion = read_mask_png(out / row["lesion_mask"])
        lung = read_mask_png(out / row["lung_mask"])
        assert (img.height, img.width) == (int(row["height"]), int(row["width"])) == lesion.shape
        assert int(row["height"]) == 96 and 0.8 * 96 - 1 <= int(row["width"]) <= 96
        assert int(row["lesion_area_px"]) == int(lesion.sum())
        assert not (lesion & ~lung).any()
        assert (int(row["lesion_area_px"]) == 0) == (row["label"] == "normal")
    widths = {int(r["width"]) for r in rows}
    assert len(widths) > 3 and min(widths) < 90  # non-square images, of several widths
    n_files = {
        kind: len(list((out / kind).rglob("*.png")))
        for kind in ("images", "lesion_masks", "lung_masks")
    }
    assert n_files == {"images": 31, "lesion_masks": 31, "lung_masks": 31}


def test_some_patients_have_two_images_of_one_class(
    generated: tuple[Path, list[PhantomRecord]],
) -> None:
    _, records = generated
    per_patient: dict[str, list[PhantomRecord]] = {}
    for rec in records:
        per_patient.setdefault(rec.patient_id, []).append(rec)
    sizes = Counter(len(v) for v in per_patient.values())
    assert set(sizes) == {1, 2} and sizes[2] >= 3
    for recs in per_patient.values():
        assert len({r.label for r in recs}) == 1


def test_a_record_seed_reproduces_its_image(generated: tuple[Path, list[PhantomRecord]]) -> None:
    out, records = generated
    first_seed: dict[str, int] = {}
    for rec in records:
        first_seed.setdefault(rec.patient_id, rec.seed)
    pair = next(r for r in records if first_seed[r.patient_id] != r.seed)
    for rec in (records[0], pair):
        image, lesion, _ = render_phantom(
            np.random.default_rng(rec.seed),
            rec.label,
            rec.height,
            rec.width,
            patient_seed=first_seed[rec.patient_id],
            text_marker_rate=0.3,
        )
        np.testing.assert_array_equal(image, read_image(out / rec.file).display)
        np.testing.assert_array_equal(lesion, read_mask_png(out / rec.lesion_mask))


def test_patient_seed_decides_the_anatomy() -> None:
    # Two images of one patient share the anatomy stream; acquisition (position, exposure,
    # noise) comes from rng. Same rng + other patient -> other lungs.
    _, _, a = render_phantom(np.random.default_rng(2), "normal", 128, 112, patient_seed=99)
    _, _, again = render_phantom(np.random.default_rng(2), "pneumonia", 128, 112, patient_seed=99)
    _, _, other = render_phantom(np.random.default_rng(2), "normal", 128, 112, patient_seed=7)
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, other)


def test_count_split_and_bad_arguments(tmp_path: Path) -> None:
    recs = generate_phantoms(
        tmp_path / "few", count=5, seed=0, size=64, classes=("pneumonia", "covid")
    )
    assert Counter(r.label for r in recs) == {"pneumonia": 3, "covid": 2}
    assert generate_phantoms(tmp_path / "none", count=0, seed=0, size=64) == []
    assert (tmp_path / "none" / "metadata.csv").read_text().startswith("file,label,")
    with pytest.raises(ValueError, match=r"supported classes: \['covid', 'pneumonia', 'normal'\]"):
        generate_phantoms(tmp_path / "x", count=3, seed=0, classes=("covid", "flu"))
    with pytest.raises(ValueError, match="supported labels"):
        _render(0, "tuberculosis")
    with pytest.raises(ValueError, match="text_marker_rate"):
        generate_phantoms(tmp_path / "x", count=3, seed=0, text_marker_rate=2.0)


def test_hundred_phantoms_are_fast(tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    recs = generate_phantoms(tmp_path / "many", count=100, seed=1, size=256)
    elapsed = time.perf_counter() - start
    assert len(recs) == 100
    assert elapsed < 15, f"100 phantoms took {elapsed:.1f} s"
