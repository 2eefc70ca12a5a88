"""The simulated annotators' edit: a near pre-annotation is moved toward the truth, as a
person drags its outline, without handing the exact truth back."""

from __future__ import annotations

import numpy as np

from camlabel.backends.labelstudio.simulate import edited_mask
from camlabel.geometry import iou


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_edit_fixes_wide_errors_and_keeps_thin_slivers() -> None:
    truth = _disk(96, 96, 48, 48, 20)
    # the pre-annotation is shifted by 1 px (a sliver along the boundary) and has a wide
    # spurious lobe and a wide missing bite
    pre = _disk(96, 96, 48, 49, 20)
    pre |= _disk(96, 96, 48, 74, 8)  # spurious lobe to the right
    pre &= ~_disk(96, 96, 30, 40, 7)  # missing bite at the top left
    before = iou(pre, truth)
    out = edited_mask(pre, truth)
    assert iou(out, truth) > before and iou(out, truth) >= 0.9
    assert not out[48, 80]  # the lobe is removed
    assert out[30, 40]  # the bite is filled
    # the 1-px shift along the boundary was left as it was: not the exact truth
    assert not np.array_equal(out, truth)
    assert out[36, 65] and not truth[36, 65]


def test_edit_of_an_exact_pre_annotation_changes_nothing() -> None:
    truth = _disk(64, 64, 32, 32, 12)
    assert np.array_equal(edited_mask(truth, truth), truth)


def test_edit_of_an_empty_pre_annotation_draws_the_lesion() -> None:
    truth = _disk(64, 64, 32, 32, 12)
    out = edited_mask(np.zeros_like(truth), truth)
    assert iou(out, truth) >= 0.95


def test_the_first_annotator_accepts_edits_or_redraws_by_how_close_the_pre_annotation_is() -> None:
    from camlabel.backends.labelstudio.simulate import choose_action

    truth = _disk(64, 64, 32, 32, 12)
    empty = np.zeros_like(truth)
    assert choose_action(truth.copy(), truth) == "accept"
    assert choose_action(_disk(64, 64, 32, 34, 12), truth) == "edit"  # IoU ~0.8
    assert choose_action(_disk(64, 64, 10, 10, 6), truth) == "redraw"
    assert choose_action(None, truth) == "redraw"
    # a lesion-free image: an empty pre-annotation is right as it is, drawn regions go
    assert choose_action(empty, empty) == "accept"
    assert choose_action(truth, empty) == "edit"
    assert not edited_mask(truth, empty).any()
