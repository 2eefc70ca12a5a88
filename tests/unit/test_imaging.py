"""camlabel.imaging: every format reads to the right pixels; hostile files fail clearly;
the letterbox maps coordinates and heatmaps exactly; nothing from DICOM tags leaks."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from pydicom.uid import JPEGLSLossless

from camlabel.errors import ImageReadError
from camlabel.imaging import (
    Letterbox,
    draw_polygons,
    iter_image_paths,
    overlay_heatmap,
    overlay_mask,
    put_label,
    read_image,
    read_images,
    read_mask_png,
    to_model_input,
    write_png_atomic,
)
from tests.dicom_factory import FAKE_TAGS, fake_tag_needles, make_dicom

RNG = np.random.default_rng(1234)


def _gray8(h: int = 24, w: int = 37) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


# ----------------------------------------------------------------------------- raster formats


def test_png_8bit_is_exact_and_keyed_by_pixels(tmp_path: Path) -> None:
    arr = _gray8()
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), arr, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    cv2.imwrite(str(b), arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert a.read_bytes() != b.read_bytes()

    img = read_image(a)
    assert img.source_format == "png" and img.bit_depth == 8 and img.pixel_spacing_mm is None
    assert (img.height, img.width) == arr.shape
    np.testing.assert_array_equal(img.display, arr)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)
    assert img.pixels.dtype == np.float32 and img.display.dtype == np.uint8
    expected = hashlib.sha256(
        f"{arr.shape[0]}x{arr.shape[1]}:".encode() + arr.tobytes()
    ).hexdigest()
    assert img.image_id == expected
    assert read_image(b).image_id == expected  # re-encoding keeps the key
    assert read_image(str(a)).source_path == a


def test_loaded_image_arrays_are_read_only(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _gray8())
    img = read_image(tmp_path / "a.png")
    with pytest.raises(ValueError):
        img.pixels[0, 0] = 1.0
    with pytest.raises(ValueError):
        img.display[0, 0] = 1


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_is_min_max_scaled(tmp_path: Path, suffix: str) -> None:
    arr = RNG.integers(1000, 5001, size=(20, 30)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 1000, 5000
    path = tmp_path / f"a{suffix}"
    cv2.imwrite(str(path), arr)
    img = read_image(path)
    assert img.bit_depth == 16 and img.source_format == ("png" if suffix == ".png" else "tiff")
    np.testing.assert_allclose(img.pixels, (arr - 1000.0) / 4000.0, atol=1e-6)
    np.testing.assert_array_equal(img.display, np.rint((arr - 1000.0) / 4000.0 * 255))


def test_16bit_full_range_is_plain_division(tmp_path: Path) -> None:
    arr = RNG.integers(0, 65536, size=(16, 16)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    cv2.imwrite(str(tmp_path / "a.png"), arr)
    np.testing.assert_allclose(read_image(tmp_path / "a.png").pixels, arr / 65535.0, atol=1e-6)


def test_8bit_tiff_is_exact(tmp_path: Path) -> None:
    arr = _gray8()
    cv2.imwrite(str(tmp_path / "a.tiff"), arr)
    img = read_image(tmp_path / "a.tiff")
    assert img.source_format == "tiff" and img.bit_depth == 8
    np.testing.assert_array_equal(img.display, arr)


def test_rgb_becomes_luminance_and_alpha_is_ignored(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    rgba = np.dstack([rgb, RNG.integers(0, 256, size=(12, 15), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    expected = (rgb.astype(float) @ [0.299, 0.587, 0.114]) / 255.0
    for name in ("rgb.png", "rgba.png"):
        img = read_image(tmp_path / name)
        assert img.pixels.ndim == 2
        np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_16bit_rgb_png_keeps_its_precision(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 65536, size=(10, 11, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])  # OpenCV writes BGR
    lum = rgb.astype(float) @ [0.299, 0.587, 0.114]
    img = read_image(tmp_path / "a.png")
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.pixels, (lum - lum.min()) / (lum.max() - lum.min()), atol=1e-6)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_jpeg_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    # Stored 40 rows x 60 columns with a white block in the stored top-left corner.
    # Orientation 6 = "rotate 90° clockwise to display": the block shows top-right, 60 x 40.
    stored = np.zeros((40, 60), np.uint8)
    stored[:12, :12] = 255
    Image.fromarray(stored, "L").save(tmp_path / "a.jpg", quality=95, exif=_exif(6))
    img = read_image(tmp_path / "a.jpg")
    assert img.source_format == "jpeg" and (img.height, img.width) == (60, 40)
    assert img.display[:12, -12:].mean() > 200  # top-right
    assert img.display[:12, :12].mean() < 40
    assert img.display[-12:, -12:].mean() < 40


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(tmp_path: Path, orientation: int) -> None:
    stored = _gray8(18, 29)
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored, "L").save(path, quality=90, exif=_exif(orientation))
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("L"))
    np.testing.assert_array_equal(read_image(path).display, expected)


def test_format_is_detected_by_magic_not_extension(tmp_path: Path) -> None:
    arr = _gray8()
    cv2.imwrite(str(tmp_path / "real.png"), arr)
    (tmp_path / "misnamed.jpg").write_bytes((tmp_path / "real.png").read_bytes())
    img = read_image(tmp_path / "misnamed.jpg")
    assert img.source_format == "png"
    np.testing.assert_array_equal(img.display, arr)


# ----------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_and_monochrome1_pixels(tmp_path: Path) -> None:
    stored = np.array([[0, 1024, 2048], [3072, 4095, 4095]], np.uint16)
    m2 = read_image(make_dicom(tmp_path / "m2.dcm", stored, bits_stored=12))
    m1 = read_image(
        make_dicom(tmp_path / "m1.dcm", stored, bits_stored=12, photometric="MONOCHROME1")
    )
    assert m2.source_format == "dicom" and m2.bit_depth == 12
    np.testing.assert_allclose(m2.pixels, stored / 4095.0, atol=1e-6)  # no window: min-max
    np.testing.assert_allclose(m1.pixels, 1.0 - stored / 4095.0, atol=1e-6)
    assert m1.display[0, 0] == 255 and m1.display[1, 1] == 0  # stored 0 is white in MONOCHROME1


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 2000, 3000, 4095]] * 2, np.uint16)
    path = make_dicom(
        tmp_path / "w.dcm",
        stored,
        rescale_slope=2.0,
        rescale_intercept=-1000.0,
        window_center=3000.0,
        window_width=2001.0,
    )
    # modality: 2 v - 1000 = [-1000, 1000, 3000, 5000, 7190]; LINEAR window (PS3.3 C.11.2.1.2):
    # <= c - 0.5 - (w - 1)/2 = 1999.5 -> 0; > 3999.5 -> 1; 3000 -> (3000 - 2999.5)/2000 + 0.5
    expected = np.array([0.0, 0.0, 0.50025, 1.0, 1.0])
    np.testing.assert_allclose(read_image(path).pixels[0], expected, atol=1e-6)


def test_dicom_window_on_monochrome1_is_inverted_after_windowing(tmp_path: Path) -> None:
    stored = np.array([[100, 200, 300]], np.uint16)
    path = make_dicom(
        tmp_path / "w1.dcm",
        stored,
        photometric="MONOCHROME1",
        window_center=200.5,
        window_width=101.0,
        voi_lut_function="LINEAR_EXACT",
    )
    # LINEAR_EXACT: (x - c) / w + 0.5 inside [c - w/2, c + w/2]
    np.testing.assert_allclose(
        read_image(path).pixels[0], 1.0 - np.array([0.0, 0.49505, 1.0]), atol=1e-5
    )


def test_dicom_pixel_spacing_and_imager_fallback(tmp_path: Path) -> None:
    assert read_image(
        make_dicom(tmp_path / "a.dcm", pixel_spacing=(0.2, 0.15))
    ).pixel_spacing_mm == (
        0.2,
        0.15,
    )
    path = make_dicom(tmp_path / "b.dcm", pixel_spacing=None, imager_pixel_spacing=(0.14, 0.143))
    assert read_image(path).pixel_spacing_mm == (0.14, 0.143)
    assert read_image(make_dicom(tmp_path / "c.dcm", pixel_spacing=None)).pixel_spacing_mm is None


def test_dicom_without_preamble_reads_when_named_dcm(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "np.dcm", preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert read_image(path).source_format == "dicom"


def test_dicom_multi_frame_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"multi-frame.*3 frames") as err:
        read_image(make_dicom(tmp_path / "mf.dcm", frames=3))
    assert "mf.dcm" in err.value.message


def test_dicom_compressed_without_decoder_names_syntax_and_package(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(ImageReadError) as err:
        read_image(make_dicom(tmp_path / "ls.dcm", transfer_syntax=JPEGLSLossless))
    text = str(err.value)
    assert "ls.dcm" in text and "JPEG-LS Lossless" in text and JPEGLSLossless in text
    assert "pylibjpeg" in text and "python-gdcm" in (err.value.hint or "")


def test_no_dicom_tag_value_leaks_into_loaded_image_or_png(tmp_path: Path) -> None:
    src = make_dicom(tmp_path / "scan.dcm")
    assert FAKE_TAGS["PatientID"].encode() in src.read_bytes()  # the needles are really there
    img = read_image(src)
    out = tmp_path / "out" / f"{img.image_id}.png"
    write_png_atomic(out, img.display)
    blobs = {
        "pickled LoadedImage": pickle.dumps(img),
        "repr": repr(img).encode(),
        "display PNG": out.read_bytes(),
    }
    for name, blob in blobs.items():
        for needle in fake_tag_needles():
            assert needle not in blob, f"{needle!r} leaked into {name}"


# ----------------------------------------------------------------------------- hostile input


def _corrupt_png(path: Path) -> Path:
    cv2.imwrite(str(path), _gray8(64, 64))
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside IDAT: CRC mismatch
    path.write_bytes(bytes(data))
    return path


def _truncated_png(path: Path) -> Path:
    cv2.imwrite(str(path), _gray8(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(_gray8(64, 64)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_dicom(path: Path) -> Path:
    make_dicom(path)
    data = path.read_bytes()
    path.write_bytes(data[:-60])
    return path


def _header_only_dicom(path: Path) -> Path:
    make_dicom(path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text_as_png(path: Path) -> Path:
    path.write_text("patient list\nthis is not an image\n")
    return path


def _gif(path: Path) -> Path:
    Image.fromarray(_gray8()).save(path, format="GIF")
    return path


def _pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    return path


HOSTILE = {
    "corrupt.png": (_corrupt_png, "corrupt"),
    "truncated.png": (_truncated_png, "truncated"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "truncated.dcm": (_truncated_dicom, "truncated"),
    "header-only.dcm": (_header_only_dicom, "no pixel data"),
    "empty.png": (_empty, "empty"),
    "notes.png": (_text_as_png, "text file"),
    "anim.gif": (_gif, "GIF"),
    "paper.pdf": (_pdf, "PDF"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_raise_image_read_error_naming_the_file(tmp_path: Path, name: str) -> None:
    make, cause = HOSTILE[name]
    path = make(tmp_path / name)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert name in err.value.message
    assert cause in err.value.message
    assert err.value.hint


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file") as err:
        read_image(tmp_path / "ghost.png")
    assert "ghost.png" in err.value.message
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_read_images_goes_on_past_failures(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _gray8())
    bad = [make(tmp_path / name) for name, (make, _) in sorted(HOSTILE.items())]
    dcm = make_dicom(tmp_path / "fine.dcm")
    paths = [good, *bad, tmp_path / "ghost.png", dcm]
    images, failures = read_images(paths, progress=True)
    assert [i.source_path for i in images] == [good, dcm]
    assert [f[0] for f in failures] == [str(p) for p in [*bad, tmp_path / "ghost.png"]]
    for path, reason in failures:
        assert Path(path).name in reason


# ----------------------------------------------------------------------------- paths


def test_iter_image_paths_expands_sorts_and_dedupes(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ["b.png", "a.JPG", "sub/c.tif", "sub/deeper/d.jpeg", "notes.txt", ".hidden.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "e.png").write_bytes(b"x")
    make_dicom(root / "sub" / "IM0001")  # extension-less DICOM
    make_dicom(root / "sub" / "1.2.840.113619")  # UID-named DICOM
    (root / "README").write_text("not dicom")

    expected = sorted(
        [
            root / "a.JPG",
            root / "b.png",
            root / "sub" / "1.2.840.113619",
            root / "sub" / "IM0001",
            root / "sub" / "c.tif",
            root / "sub" / "deeper" / "d.jpeg",
        ],
        key=str,
    )
    assert iter_image_paths([root]) == expected
    assert iter_image_paths([root, root / "b.png", str(root / "sub")]) == expected
    flat = iter_image_paths([root], recursive=False)
    assert flat == [root / "a.JPG", root / "b.png"]
    assert iter_image_paths([root / "notes.txt"]) == [root / "notes.txt"]  # explicit file kept
    with pytest.raises(ImageReadError, match="No such file or folder"):
        iter_image_paths([root / "nope"])


# ----------------------------------------------------------------------------- PNG writing


def test_write_png_atomic_bool_and_uint8(tmp_path: Path) -> None:
    mask = np.zeros((9, 13), bool)
    mask[2:5, 3:11] = True
    path = tmp_path / "deep" / "er" / "m.png"
    write_png_atomic(path, mask)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(read_mask_png(path), mask)
    gray = _gray8()
    write_png_atomic(path, gray)  # overwrite
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), gray)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.png"]  # no temp files left
    with pytest.raises(ValueError, match="dtype=float64"):
        write_png_atomic(path, np.zeros((4, 4)))
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), gray)


def test_write_png_atomic_leaves_old_file_when_encoding_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.png"
    write_png_atomic(path, np.ones((4, 4), bool))
    before = path.read_bytes()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("camlabel.imaging.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_png_atomic(path, np.zeros((4, 4), bool))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_read_mask_png_variants_and_errors(tmp_path: Path) -> None:
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[1, 2] = (0, 0, 9)
    rgb[4, 5] = (200, 0, 0)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    expected = np.zeros((6, 7), bool)
    expected[1, 2] = expected[4, 5] = True
    np.testing.assert_array_equal(read_mask_png(tmp_path / "rgb.png"), expected)
    with pytest.raises(ImageReadError, match=r"ghost\.png"):
        read_mask_png(tmp_path / "ghost.png")
    with pytest.raises(ImageReadError, match="not a PNG"):
        read_mask_png(_text_as_png(tmp_path / "t.png"))
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        read_mask_png(_truncated_png(tmp_path / "half.png"))


# ----------------------------------------------------------------------------- letterbox


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 3000),
    w=st.integers(1, 3000),
    size=st.sampled_from([32, 64, 224, 256, 299]),
    pts=st.lists(st.tuples(st.floats(-50, 3050), st.floats(-50, 3050)), min_size=1, max_size=8),
)
def test_letterbox_round_trip(h: int, w: int, size: int, pts: list[tuple[float, float]]) -> None:
    box = Letterbox.fit(h, w, size)
    xy = np.array(pts)
    np.testing.assert_allclose(
        box.model_to_image_xy(box.image_to_model_xy(xy)), xy, atol=1e-9, rtol=0
    )
    np.testing.assert_allclose(
        box.image_to_model_xy(box.model_to_image_xy(xy)), xy, atol=1e-9, rtol=0
    )


@pytest.mark.parametrize(("h", "w"), [(300, 200), (200, 300), (1000, 777), (37, 1024), (64, 64)])
def test_letterbox_corners_and_centring(h: int, w: int) -> None:
    box = Letterbox.fit(h, w, 224)
    corners = box.image_to_model_xy(np.array([[0.0, 0.0], [w, h]]))
    np.testing.assert_allclose(corners[0], [box.pad_x, box.pad_y], atol=1e-9)
    np.testing.assert_allclose(corners[1], [224 - box.pad_x, 224 - box.pad_y], atol=1e-9)
    assert min(box.pad_x, box.pad_y) == pytest.approx(0.0, abs=1e-9)
    assert box.scale == pytest.approx(224 / max(h, w))


@pytest.mark.parametrize(
    ("h", "w", "cells"), [(300, 200, 7), (200, 300, 7), (90, 250, 14), (250, 90, 224)]
)
def test_heatmap_to_image_one_hot_lands_on_its_cell(h: int, w: int, cells: int) -> None:
    box = Letterbox.fit(h, w, 224)
    # the cell whose centre is nearest the centre of the content, pushed one cell off-centre
    content_centre = box.image_to_model_xy(np.array([w / 2, h / 2])) * cells / 224
    r, c = (np.floor(content_centre[::-1]).astype(int) + 1).tolist()
    hm = np.zeros((cells, cells))
    hm[r, c] = 1.0
    out = box.heatmap_to_image(hm)
    assert out.shape == (h, w) and out.dtype == np.float32
    y, x = np.unravel_index(np.argmax(out), out.shape)
    expected = box.model_to_image_xy(np.array([(c + 0.5) * 224 / cells, (r + 0.5) * 224 / cells]))
    half_cell_px = 224 / cells / box.scale / 2  # half a heatmap cell, in image pixels
    assert abs((x + 0.5) - expected[0]) <= half_cell_px + 0.5
    assert abs((y + 0.5) - expected[1]) <= half_cell_px + 0.5
    # the bilinear tent is symmetric: its centre of mass is the cell centre
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    centroid = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, expected, atol=0.6)


def test_heatmap_to_image_is_exact_on_a_linear_ramp() -> None:
    # Bilinear sampling reproduces a linear function: each image pixel gets its model x.
    h, w, size, cells = 120, 80, 64, 16
    box = Letterbox.fit(h, w, size)
    centres = (np.arange(cells) + 0.5) * size / cells
    hm = np.tile(centres, (cells, 1))
    out = box.heatmap_to_image(hm)
    model_x = box.image_to_model_xy(np.stack([np.arange(w) + 0.5, np.zeros(w)], axis=1))[:, 0]
    inside = (model_x >= centres[0]) & (model_x <= centres[-1])
    np.testing.assert_allclose(out[h // 2, inside], model_x[inside], atol=1e-4)


def test_heatmap_to_image_matches_cv2_resize_without_padding() -> None:
    hm = RNG.random((7, 7)).astype(np.float32)
    box = Letterbox.fit(150, 150, 224)
    expected = cv2.resize(hm, (150, 150), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(box.heatmap_to_image(hm), expected, atol=1e-3)


def test_to_model_input_places_content_where_the_letterbox_says() -> None:
    img = np.full((100, 50), 255, np.uint8)  # portrait: 64 px tall, 32 wide, pad 16 each side
    x, box = to_model_input(img, 64)
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    assert (box.pad_x, box.pad_y, box.scale) == (16.0, 0.0, 0.64)
    assert np.all(x[:, :16] == 0) and np.all(x[:, 48:] == 0)
    np.testing.assert_allclose(x[:, 16:48], 255.0, atol=1e-3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])

    odd = np.full((100, 45), 255, np.uint8)  # content 28.8 wide: pad 17.6, fractional
    x, box = to_model_input(odd, 64)
    assert box.pad_x == pytest.approx(17.6)
    assert x[:, 17, 0].mean() == pytest.approx(0.4 * 255, abs=10)  # 40 % covered
    assert np.all(x[:, 16] == 0) and x[:, 18:46].min() > 250


@pytest.mark.parametrize(("h", "w"), [(300, 180), (180, 300), (40, 70)])
def test_to_model_input_maps_a_dot_through_the_letterbox(h: int, w: int) -> None:
    img = np.zeros((h, w), np.uint8)
    r, c = h // 3, (2 * w) // 3
    img[r - 2 : r + 3, c - 2 : c + 3] = 255
    x, box = to_model_input(img, 96)
    m = x[..., 0]
    yy, xx = np.mgrid[0:96, 0:96] + 0.5
    centroid = np.array([(m * xx).sum(), (m * yy).sum()]) / m.sum()
    np.testing.assert_allclose(
        centroid, box.image_to_model_xy(np.array([c + 0.5, r + 0.5])), atol=0.35
    )


def test_to_model_input_accepts_loaded_image_and_rejects_bad_floats(tmp_path: Path) -> None:
    arr = _gray8(30, 20)
    cv2.imwrite(str(tmp_path / "a.png"), arr)
    from_image, _ = to_model_input(read_image(tmp_path / "a.png"), 32)
    from_array, _ = to_model_input(arr, 32)
    np.testing.assert_allclose(from_image, from_array, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_model_input(arr.astype(np.float32), 32)


# ----------------------------------------------------------------------------- overlays


def test_overlay_heatmap_and_mask() -> None:
    disp = np.full((20, 30), 100, np.uint8)
    heat = np.zeros((20, 30))
    heat[5, 5] = 1.0
    out = overlay_heatmap(disp, heat, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    jet_hot = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0]
    jet_cold = cv2.applyColorMap(np.array([[0]], np.uint8), cv2.COLORMAP_JET)[0, 0]
    np.testing.assert_allclose(out[5, 5], 0.5 * 100 + 0.5 * jet_hot.astype(float), atol=1)
    np.testing.assert_allclose(out[0, 0], 0.5 * 100 + 0.5 * jet_cold.astype(float), atol=1)
    np.testing.assert_array_equal(overlay_heatmap(disp, heat, alpha=0.0)[..., 1], disp)
    with pytest.raises(ValueError, match="heatmap_to_image"):
        overlay_heatmap(disp, np.zeros((7, 7)))

    mask = np.zeros((20, 30), bool)
    mask[4:16, 6:20] = True
    out = overlay_mask(disp, mask, color=(0, 0, 255), alpha=0.5, contour=False)
    np.testing.assert_array_equal(out[10, 10], [50, 50, 178])
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    outlined = overlay_mask(disp, mask, color=(0, 255, 0), alpha=0.5, contour=True)
    assert tuple(outlined[4, 10]) != tuple(out[4, 10])  # the border is drawn
    assert tuple(outlined[10, 10]) == (50, 178, 50)  # the inside is only tinted


def test_draw_polygons_uses_continuous_coordinates() -> None:
    canvas = np.zeros((12, 12), np.uint8)
    # continuous (2.5, 2.5) is the centre of pixel (row 2, col 2)
    square = np.array([[2.5, 2.5], [9.5, 2.5], [9.5, 9.5], [2.5, 9.5]])
    out = draw_polygons(canvas, [square], color=(255, 255, 255), thickness=1)
    assert out[2, 5].min() > 200 and out[9, 5].min() > 200 and out[5, 2].min() > 200
    assert out[5, 5].max() == 0 and out[1, 5].max() < 60 and out[5, 1].max() < 60
    assert canvas.max() == 0  # the input is not modified


def test_put_label_darkens_a_banner_and_writes_text() -> None:
    img = np.full((60, 200, 3), 128, np.uint8)
    out = put_label(img, "covid 0.93")
    assert out.shape == img.shape and img.min() == 128
    assert out[:4].max() < 128 and out[-10:].min() == 128
    assert out[:20].max() > 230  # white text
    assert put_label(img, "a very long label " * 10).shape == img.shape
