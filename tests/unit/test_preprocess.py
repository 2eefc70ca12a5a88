"""The model-input preprocessors give exactly the pixels the code before them gave.

The ``_old_*`` functions are verbatim copies of the preprocessing that ``ClassifierInput`` and
``SegmenterInput`` replaced (``models/data.letterbox_input`` and ``segment._as_gray`` +
``seg_data.letterbox`` / ``unletterbox``), so a change of pixel values fails here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from camlabel.errors import ModelError
from camlabel.imaging import read_image, to_model_input
from camlabel.models.preprocess import ClassifierInput, SegmenterInput
from camlabel.models.seg_data import letterbox, to_unit_gray, unletterbox


def _old_letterbox_input(image: object, size: int) -> tuple[np.ndarray, object]:
    x, box = to_model_input(image, size)  # type: ignore[arg-type]
    return np.clip(np.rint(x), 0.0, 255.0).astype(np.float32), box


def _old_as_gray(image: object) -> np.ndarray:
    arr = np.asarray(getattr(image, "pixels", image))
    if arr.ndim == 3:
        return to_unit_gray(arr)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _images(tmp_path: Path) -> dict[str, object]:
    rng = np.random.default_rng(13)
    u8 = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (61, 29), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "u8.png"), u8)
    cv2.imwrite(str(tmp_path / "u16.png"), u16)
    return {
        "uint8": u8,
        "uint8-rgb": rng.integers(0, 256, (40, 31, 3), dtype=np.uint8),
        "float": rng.random((45, 45)).astype(np.float32),
        "loaded-uint8": read_image(tmp_path / "u8.png"),
        "loaded-uint16": read_image(tmp_path / "u16.png"),
    }


@pytest.mark.parametrize("size", [32, 64])
def test_classifier_input_matches_the_old_letterbox_input(tmp_path: Path, size: int) -> None:
    pre = ClassifierInput(size)
    for name, img in _images(tmp_path).items():
        x, box = pre(img)  # type: ignore[arg-type]
        old_x, old_box = _old_letterbox_input(img, size)
        assert x.dtype == np.float32 and x.shape == (size, size, 3), name
        assert np.array_equal(x, old_x), name
        assert box == old_box, name
    loaded = pre.load(tmp_path / "u16.png")
    assert loaded.dtype == np.uint8
    old = _old_letterbox_input(read_image(tmp_path / "u16.png"), size)[0].astype(np.uint8)
    assert np.array_equal(loaded, old)


def test_segmenter_input_matches_the_old_gray_letterbox(tmp_path: Path) -> None:
    images = _images(tmp_path)
    images["uint16"] = np.random.default_rng(2).integers(0, 65536, (30, 70), dtype=np.uint16)
    images["float-out-of-range"] = np.linspace(-0.5, 1.5, 24 * 18, dtype=np.float32).reshape(24, 18)
    pre = SegmenterInput(48)
    for name, img in images.items():
        canvas, box = pre(img)  # type: ignore[arg-type]
        old_canvas, old_box = letterbox(_old_as_gray(img), 48)
        assert canvas.dtype == old_canvas.dtype == np.float32, name
        assert np.array_equal(canvas, old_canvas), name
        assert box == old_box, name
        prob = np.random.default_rng(3).random((48, 48)).astype(np.float32)
        assert np.array_equal(pre.unletterbox(prob, box), unletterbox(prob, old_box)), name


def test_preprocessors_round_trip_through_json() -> None:
    for pre in (ClassifierInput(224), SegmenterInput(256)):
        data = pre.to_json()
        assert type(pre).from_json(data) == pre
    with pytest.raises(ModelError, match="classifier-input"):
        ClassifierInput.from_json(SegmenterInput(8).to_json())
    with pytest.raises(ModelError, match="positive integer"):
        SegmenterInput.from_json({"kind": "segmenter-input", "size": 0})
