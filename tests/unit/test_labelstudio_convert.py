"""Unit tests of the Label Studio brush RLE codec (camlabel.backends.labelstudio.convert)."""

from __future__ import annotations

from unittest import mock

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush

from camlabel.backends.labelstudio import convert as lsconv
from camlabel.errors import GeometryError

uint8_arrays = st.one_of(
    # noise
    st.lists(st.integers(0, 255), min_size=0, max_size=600).map(lambda v: np.array(v, np.uint8)),
    # long runs of a few values (what brush masks look like), incl. > 2**16 runs
    st.lists(st.tuples(st.integers(0, 255), st.integers(1, 3000)), min_size=1, max_size=12).map(
        lambda runs: np.repeat(*map(np.array, zip(*runs, strict=True))).astype(np.uint8)
    ),
    # runs mixed with noise
    st.lists(
        st.tuples(st.sampled_from([0, 255, 7]), st.integers(1, 40)), min_size=1, max_size=60
    ).map(lambda runs: np.repeat(*map(np.array, zip(*runs, strict=True))).astype(np.uint8)),
)


# ------------------------------------------------------------------ brush RLE
@given(uint8_arrays)
@settings(max_examples=120, deadline=None)
def test_rle_round_trip_and_sdk_interop(values: np.ndarray) -> None:
    ours = lsconv.rle_encode(values)
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in ours)
    np.testing.assert_array_equal(lsconv.rle_decode(ours, values.size), values)
    np.testing.assert_array_equal(brush.decode_rle(ours), values)
    if values.size:  # the SDK encoder cannot encode an empty array
        np.testing.assert_array_equal(
            lsconv.rle_decode(brush.encode_rle(values), values.size), values
        )


def test_rle_long_runs_and_all_field_sizes() -> None:
    values = np.concatenate(
        [
            np.full(200_000, 255, np.uint8),  # > 2**16: split into several repeat blocks
            np.arange(256, dtype=np.uint8),  # a literal stretch
            np.full(65_536, 3, np.uint8),  # exactly 2**16
            np.full(16, 4, np.uint8),
            np.full(17, 5, np.uint8),
            np.full(256, 6, np.uint8),
            np.full(257, 7, np.uint8),
            np.array([9], np.uint8),
        ]
    )
    ours = lsconv.rle_encode(values)
    np.testing.assert_array_equal(lsconv.rle_decode(ours, values.size), values)
    np.testing.assert_array_equal(brush.decode_rle(ours), values)
    np.testing.assert_array_equal(lsconv.rle_decode(brush.encode_rle(values), values.size), values)
    big_literal = np.random.default_rng(0).integers(0, 256, 70_000).astype(np.uint8)
    np.testing.assert_array_equal(
        lsconv.rle_decode(lsconv.rle_encode(big_literal), 70_000), big_literal
    )
    assert lsconv.rle_decode(lsconv.rle_encode(np.zeros(0, np.uint8)), 0).size == 0


@given(
    num=st.integers(0, 300),
    word=st.integers(1, 8),
    sizes=st.lists(st.integers(1, 16), min_size=4, max_size=4),
    body=st.binary(min_size=0, max_size=120),
)
@example(num=4, word=2, sizes=[4, 1, 1, 1], body=bytes(4))  # ends 1 bit into its last word
@settings(max_examples=200, deadline=None)
def test_rle_decode_fuzz_matches_sdk_or_raises_geometry_error(
    num: int, word: int, sizes: list[int], body: bytes
) -> None:
    head = (
        (num << 21) | ((word - 1) << 16) | sum((s - 1) << (12 - 4 * k) for k, s in enumerate(sizes))
    )
    rle = list((head << 3).to_bytes(7, "big")[:7]) + list(body)  # 53-bit header, MSB first

    class Tracking(brush.InputStream):  # type: ignore[misc]
        """The SDK's bit reader, noting a read past the end (it then returns the bits left)."""

        overrun = False

        def read(self, size: int) -> int:
            Tracking.overrun |= self.i + size > len(self.data)
            return int(super().read(size))

    with mock.patch.object(brush, "InputStream", Tracking):
        try:
            expected = brush.decode_rle(rle)
        except Exception:  # the SDK fails on truncated or overflowing streams
            expected = None
    try:
        ours = lsconv.rle_decode(rle, num)
    except GeometryError:
        # ours refuses a stream that ends inside its last word, which the SDK reads short
        assert expected is None or Tracking.overrun or len(expected) != num or word > 8
        return
    if expected is not None:
        np.testing.assert_array_equal(ours, expected)
    assert ours.shape == (num,) and ours.dtype == np.uint8


def test_rle_decode_rejects_bad_input() -> None:
    rle = lsconv.rle_encode(np.repeat(np.arange(50, dtype=np.uint8), 3))
    with pytest.raises(GeometryError, match="holds 150 values but 600 were expected"):
        lsconv.rle_decode(rle, 600)
    with pytest.raises(GeometryError, match="truncated"):
        lsconv.rle_decode(rle[: len(rle) // 2], 150)
    with pytest.raises(GeometryError, match="53-bit header"):
        lsconv.rle_decode([0, 0, 1], 1)
    with pytest.raises(GeometryError, match=r"integers 0\.\.255"):
        lsconv.rle_decode([0, 300, 1, 2, 3, 4, 5, 6], 1)
    with pytest.raises(GeometryError, match=r"integers 0\.\.255"):
        lsconv.rle_encode(np.array([0.5, 1.0]))


def test_brush_mask_matches_sdk() -> None:
    mask = np.zeros((37, 53), bool)
    cv2.circle(mask.view(np.uint8), (20, 18), 11, 1, -1)
    mask[0, :] = True
    ours = lsconv.mask_to_brush_rle(mask)
    sdk = brush.mask2rle(mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(brush.decode_rle(ours), brush.decode_rle(sdk))
    np.testing.assert_array_equal(lsconv.brush_rle_to_mask(sdk, 37, 53), mask)
    np.testing.assert_array_equal(lsconv.brush_rle_to_mask(ours, 37, 53), mask)
    layer = brush.decode_from_annotation(
        "tag",
        [
            {
                "type": "brushlabels",
                "rle": ours,
                "original_width": 53,
                "original_height": 37,
                "brushlabels": ["x"],
            }
        ],
    )["tag-x-0"]
    np.testing.assert_array_equal(layer > 0, mask)
