"""CAM refinements (camlabel.cam.refine) on a drawn image whose lesion and lungs are known."""

from __future__ import annotations

import numpy as np
import pytest

from camlabel.cam.refine import REFINEMENTS, refine_cam, region_saliency
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


def test_region_saliency_peaks_inside_the_region_the_cam_favours_not_on_its_rim() -> None:
    """A wide region A (x 10..39) whose CAM peaks on its left rim, and a smaller region B with
    less CAM energy: the raw map's peak within the regions is A's rim pixel; the region
    saliency peaks at A's most interior pixel, is 0 outside both, and ranks A over B."""
    heat = np.zeros((40, 80), np.float32)
    heat[:, :12] = 1.0  # the coarse map's hot spot overlaps A's left edge only
    heat[:, 12:40] = 0.3
    heat[:, 50:70] = 0.1
    region = np.zeros((40, 80), bool)
    region[5:35, 10:40] = True  # A
    region[10:30, 52:68] = True  # B
    r, c = np.unravel_index(int(np.argmax(np.where(region, heat, -1))), heat.shape)
    assert c in (10, 11)  # the raw peak: A's rim
    sal = region_saliency(heat, region)
    assert sal.dtype == np.float32 and sal.shape == heat.shape
    assert not sal[~region].any()
    r, c = np.unravel_index(int(np.argmax(sal)), sal.shape)
    assert 17 <= r <= 22 and 22 <= c <= 27  # A's centre (19.5, 24.5), not its rim
    energy_a = (heat[5:35, 10:40]).sum()
    energy_b = (heat[10:30, 52:68]).sum()
    assert sal.max() == pytest.approx(energy_a / (energy_a + energy_b), rel=1e-5)
    assert sal[20, 60] == pytest.approx(energy_b / (energy_a + energy_b), rel=0.05)  # B's centre


def test_region_saliency_of_an_empty_region_or_a_cold_map_is_zero() -> None:
    heat = np.ones((10, 10), np.float32)
    assert not region_saliency(heat, np.zeros((10, 10), bool)).any()
    region = np.zeros((10, 10), bool)
    region[2:8, 2:8] = True
    assert not region_saliency(np.zeros((10, 10)), region).any()
    with pytest.raises(UsageError, match=r"heatmap's shape \(10, 10\)"):
        region_saliency(heat, np.ones((5, 5), bool))


def test_threshold_calibration_finds_the_cut_that_matches_the_annotators() -> None:
    """A radial map whose level 0.7 outlines the annotated disc: calibration returns 0.7, and
    the map cut there reproduces the disc (mean IoU ~1); 0.5 would draw a wider blob."""
    from camlabel.cam.refine import calibrate_threshold

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 30)
    heat = np.clip(1.0 - r / 40.0, 0, None).astype(np.float32)  # 0.7 at r = 12
    disc = r <= 12
    image = np.zeros((64, 64), np.uint8)
    t, mean_iou = calibrate_threshold([(heat, image, None, disc)] * 3, method="none")
    assert t == pytest.approx(0.7)
    assert mean_iou > 0.95
    assert iou(refine_cam(heat, image, method="none", threshold=0.5), disc) < 0.6
    with pytest.raises(UsageError, match="at least one annotated image"):
        calibrate_threshold([], method="none")
