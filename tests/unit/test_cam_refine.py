"""CAM refinements (camlabel.cam.refine) on a drawn image whose lesion and lungs are known."""

from __future__ import annotations

import numpy as np
import pytest

from camlabel.cam.refine import REFINEMENTS, refine_cam
from camlabel.config import CAM_REFINEMENTS, CamSettings
from camlabel.errors import UsageError
from camlabel.geometry import iou

H, W = 120, 140


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8, coarse CAM, true lesion, lung field): a bright round lesion in the left
    lung; the CAM is a wide blob centred off the lesion that spills over the mediastinum."""
    yy, xx = np.mgrid[0:H, 0:W]
    lung = np.zeros((H, W), bool)
    lung[15:105, 10:60] = True
    lung[15:105, 80:130] = True
    image = np.full((H, W), 170.0)  # soft tissue and mediastinum: bright
    image[lung] = 50.0  # aerated lung: dark
    lesion = ((yy - 60) ** 2 + (xx - 40) ** 2) <= 14**2
    image[lesion] = 150.0
    rng = np.random.default_rng(0)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    cam = np.exp(-(((yy - 64) ** 2) + (xx - 52) ** 2) / (2 * 20.0**2)).astype(np.float32)
    return image, cam, lesion, lung


def test_the_setting_lists_every_registered_refinement() -> None:
    assert tuple(REFINEMENTS) == CAM_REFINEMENTS
    assert CamSettings().refine in CAM_REFINEMENTS


def test_grabcut_follows_the_lesion_where_the_threshold_draws_a_blob() -> None:
    image, cam, lesion, lung = _scene()
    plain = refine_cam(cam, image, method="none", threshold=0.5)
    cut = refine_cam(cam, image, method="grabcut")
    both = refine_cam(cam, image, method="lung+grabcut", lung=lung)
    assert iou(plain, lesion) < 0.6  # the blob: offset and too wide
    assert iou(cut, lesion) > 0.8
    assert iou(both, lesion) > 0.8
    assert not (both & ~lung).any()


def test_lung_restriction_keeps_the_mask_inside_the_lungs() -> None:
    image, cam, lesion, lung = _scene()
    plain = refine_cam(cam, image, method="none", threshold=0.3)
    inside = refine_cam(cam, image, method="lung", threshold=0.3, lung=lung)
    assert (plain & ~lung).sum() > 500  # the blob spills over the mediastinum
    assert not (inside & ~lung).any()
    assert inside.sum() == (plain & lung).sum()  # same peak here, so the same pixels inside
    assert iou(inside, lesion) > iou(plain, lesion)


def test_lung_refinements_without_a_lung_field_are_their_lung_free_variants() -> None:
    image, cam, _, _ = _scene()
    none = refine_cam(cam, image, method="none", threshold=0.5)
    assert np.array_equal(refine_cam(cam, image, method="lung", threshold=0.5), none)
    empty = np.zeros((H, W), bool)  # a segmenter that found nothing restricts nothing
    assert np.array_equal(refine_cam(cam, image, method="lung", lung=empty), none)
    assert np.array_equal(
        refine_cam(cam, image, method="lung+grabcut"), refine_cam(cam, image, method="grabcut")
    )


@pytest.mark.parametrize("method", CAM_REFINEMENTS)
def test_a_flat_or_empty_map_gives_no_mask(method: str) -> None:
    image, _, _, lung = _scene()
    for cam in (np.zeros((H, W), np.float32), np.full((H, W), np.nan, np.float32)):
        assert not refine_cam(cam, image, method=method, lung=lung).any()


def test_grabcut_is_deterministic_and_takes_float_images() -> None:
    image, cam, _, _ = _scene()
    a = refine_cam(cam, image, method="grabcut")
    b = refine_cam(cam, image.astype(np.float32) / 255.0, method="grabcut")
    assert np.array_equal(a, refine_cam(cam, image, method="grabcut"))
    assert iou(a, b) > 0.95


def test_errors_name_the_value_and_the_valid_names() -> None:
    image, cam, _, lung = _scene()
    with pytest.raises(UsageError, match=r"'watershed'.*\['none', 'lung', 'grabcut'"):
        refine_cam(cam, image, method="watershed")
    with pytest.raises(UsageError, match=r"heatmap \(60, 70\), image \(120, 140\)"):
        refine_cam(cam[::2, ::2], image, method="none")
    with pytest.raises(UsageError, match="lung field must have the heatmap's shape"):
        refine_cam(cam, image, method="lung", lung=lung[::2])


def test_lung_opacity_takes_the_opacity_the_cam_points_at_and_its_twin() -> None:
    image, cam, lesion, lung = _scene()
    yy, xx = np.mgrid[0:H, 0:W]
    twin = ((yy - 70) ** 2 + (xx - 105) ** 2) <= 13**2  # the other lung: bilateral disease
    speck = ((yy - 25) ** 2 + (xx - 100) ** 2) <= 3**2  # a vessel end-on: small and bright
    img = image.copy()
    img[twin | speck] = 150
    out = refine_cam(cam, img, method="lung+opacity", lung=lung)
    assert iou(out, lesion | twin) > 0.85
    assert not (out & speck).any() and not (out & ~lung).any()
    # the CAM picks the anchor: over the twin only, the mask is still both similar regions
    far = np.exp(-(((yy - 70) ** 2) + (xx - 105) ** 2) / (2 * 8.0**2)).astype(np.float32)
    assert iou(refine_cam(far, img, method="lung+opacity", lung=lung), lesion | twin) > 0.85
    # a lone opacity: the twin-sized rule keeps nothing else
    assert iou(refine_cam(cam, image, method="lung+opacity", lung=lung), lesion) > 0.85
    # without a lung field: the plain threshold
    none = refine_cam(cam, img, method="none")
    assert np.array_equal(refine_cam(cam, img, method="lung+opacity"), none)
