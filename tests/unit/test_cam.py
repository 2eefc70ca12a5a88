"""Grad-CAM / Grad-CAM++ of the ensemble: exactness against tf-keras-vis, localization, mapping.

The ensemble is built once per module at 64x64 (the smallest input whose last conv maps still
have structure: 2x2 / 2x2 / 4x4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from camlabel.cam import (  # noqa: E402
    CAM_METHODS,
    FUSIONS,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    fuse_maps,
    get_cam_method,
)
from camlabel.errors import ModelError  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def ensemble() -> keras.Model:
    from camlabel.models.ensemble import build_ensemble

    keras.utils.set_random_seed(7)
    return build_ensemble(image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Three phantom radiographs as model inputs (structured, not noise)."""
    from camlabel.imaging import to_model_input
    from camlabel.phantoms import render_phantom

    out = []
    for i, label in enumerate(("covid", "pneumonia", "normal")):
        img, _, _ = render_phantom(np.random.default_rng(i), label, 80, 70)
        out.append(to_model_input(img, SIZE)[0])
    return np.stack(out)


@pytest.fixture(scope="module")
def gradcam(ensemble: keras.Model) -> GradCAM:
    return GradCAM(ensemble)  # compiled once for the module


@pytest.fixture(scope="module")
def gradcam_result(gradcam: GradCAM, images: np.ndarray):  # type: ignore[no-untyped-def]
    return gradcam(images, targets=[0, 1, 2])


@pytest.fixture(scope="module")
def gradcampp_result(ensemble: keras.Model, images: np.ndarray):  # type: ignore[no-untyped-def]
    return GradCAMPlusPlus(ensemble)(images, targets=[2, 0, 1])


@pytest.fixture(scope="module")
def layercam_result(ensemble: keras.Model, images: np.ndarray):  # type: ignore[no-untyped-def]
    return LayerCAM(ensemble)(images, targets=[1, 2, 0])


def _logit_model(ensemble: keras.Model) -> keras.Model:
    return keras.Model(ensemble.inputs, ensemble.get_layer("logits").output)


def _reference_map(
    method: type, ensemble: keras.Model, images: np.ndarray, targets: list[int], index: int
) -> np.ndarray:
    """tf-keras-vis' map (class ``method``: Gradcam, GradcamPlusPlus, Layercam) of the
    ensemble's ``index``-th CAM layer, unnormalized at the layer's resolution."""
    from tf_keras_vis.utils.scores import CategoricalScore

    return np.asarray(
        method(_logit_model(ensemble), clone=False)(
            CategoricalScore(targets),
            images,
            penultimate_layer=ensemble.cam_layers[index],
            seek_penultimate_conv_layer=False,
            expand_cam=False,
            normalize_cam=False,
        )
    )


def _assert_close(mine: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-4 of the reference's scale (the maps of a random-init net are tiny)."""
    scale = float(np.abs(ref).max())
    assert scale > 0, "reference map is all zero: the comparison would be vacuous"
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize(
    "index",
    [0, 1, 2],
    ids=["densenet121-relu", "efficientnetb0-top_activation", "vgg19-block5_conv4"],
)
def test_gradcam_equals_tf_keras_vis_per_backbone(ensemble, images, gradcam_result, index) -> None:  # type: ignore[no-untyped-def]
    from tf_keras_vis.gradcam import Gradcam

    ref = _reference_map(Gradcam, ensemble, images, [0, 1, 2], index)
    _assert_close(gradcam_result.layer_maps[index], ref)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["densenet121", "efficientnetb0", "vgg19"])
def test_gradcampp_equals_tf_keras_vis_per_backbone(
    ensemble, images, gradcampp_result, index
) -> None:  # type: ignore[no-untyped-def]
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

    targets = [2, 0, 1]
    ref = _reference_map(GradcamPlusPlus, ensemble, images, targets, index)
    # tf-keras-vis keeps the paper's exp(score) factor; camlabel drops it (see gradcampp.py).
    factor = np.exp(gradcampp_result.scores[np.arange(3), targets])[:, None, None]
    _assert_close(gradcampp_result.layer_maps[index] * factor, ref)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["densenet121", "efficientnetb0", "vgg19"])
def test_layercam_equals_tf_keras_vis_per_backbone(
    ensemble, images, layercam_result, index
) -> None:  # type: ignore[no-untyped-def]
    """LayerCAM: ReLU(sum_c ReLU(g_ij^c) A_ij^c), the reference implementation's map."""
    from tf_keras_vis.layercam import Layercam

    ref = _reference_map(Layercam, ensemble, images, [1, 2, 0], index)
    _assert_close(layercam_result.layer_maps[index], ref)


def test_fused_heatmap_is_normalized_upsampled_mean(ensemble, gradcam_result) -> None:  # type: ignore[no-untyped-def]
    res = gradcam_result
    assert res.heatmaps.shape == (3, SIZE, SIZE)
    assert np.isfinite(res.heatmaps).all()
    assert res.heatmaps.min() >= 0 and res.heatmaps.max() <= 1 + 1e-6
    np.testing.assert_array_equal(res.targets, [0, 1, 2])
    np.testing.assert_allclose(res.probabilities.sum(axis=1), 1, atol=1e-5)
    # Recompute the fusion from the per-layer maps with TF's half-pixel bilinear resize.
    import tensorflow as tf

    ups = [
        tf.image.resize(m[..., None], (SIZE, SIZE), method="bilinear").numpy()[..., 0]
        for m in res.layer_maps
    ]
    expected = np.asarray(fuse_maps(ups, "normalize-mean"))
    np.testing.assert_allclose(res.heatmaps, expected, atol=1e-5)


def test_default_target_is_the_predicted_class_and_batches_are_independent(
    ensemble, gradcam, images
) -> None:  # type: ignore[no-untyped-def]
    cam = gradcam
    whole = cam(images)
    np.testing.assert_array_equal(whole.targets, whole.probabilities.argmax(axis=1))
    one_by_one = cam(images, batch_size=1)
    np.testing.assert_allclose(whole.heatmaps, one_by_one.heatmaps, atol=1e-5)
    direct = np.asarray(ensemble(images, training=False))
    np.testing.assert_allclose(whole.probabilities, direct, atol=1e-5)


def test_fusions() -> None:
    a = np.zeros((1, 4, 4), np.float32)
    a[0, 0, 0] = 2.0
    b = np.zeros((1, 4, 4), np.float32)
    b[0, 3, 3] = 10.0
    mean = np.asarray(fuse_maps([a, b], "normalize-mean"))
    assert mean[0, 0, 0] == pytest.approx(1.0, abs=1e-6) and mean[0, 3, 3] == pytest.approx(
        1.0, abs=1e-6
    )
    raw = np.asarray(fuse_maps([a, b], "sum"))
    assert raw[0, 3, 3] == pytest.approx(1.0, abs=1e-6) and raw[0, 0, 0] == pytest.approx(
        0.2, abs=1e-6
    )
    # contribution: a 2x2-cell map (value 2) and a 4x4-cell one (value 10), both upsampled:
    # weights 4 and 16 -> 8 vs 160
    contrib = np.asarray(fuse_maps([a, b], "contribution", [4, 16]))
    assert contrib[0, 3, 3] == pytest.approx(1.0, abs=1e-6) and contrib[0, 0, 0] == pytest.approx(
        8 / 160, abs=1e-6
    )
    with pytest.raises(ModelError, match="cell count"):
        fuse_maps([a, b], "contribution")
    with pytest.raises(ModelError, match="supported fusions"):
        fuse_maps([a], "max")


def test_contribution_fusion_weighs_each_backbone_by_its_share_of_the_score() -> None:
    """GAP + dense head over two branches of different resolution: per branch, the
    'contribution'-scaled map (h*w*cam) averages over the image to exactly that branch's share
    of the class score. Softplus activations and positive weights for the target class keep
    every map positive, so Grad-CAM's ReLU changes nothing and the identity is exact."""
    import keras
    from keras import layers

    from camlabel.cam import GradCAM

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    coarse = layers.Conv2D(3, 4, strides=4, activation="softplus", name="coarse")(inp)  # 4x4
    fine = layers.Conv2D(3, 2, strides=2, activation="softplus", name="fine")(inp)  # 8x8
    feats = layers.Concatenate()(
        [layers.GlobalAveragePooling2D()(coarse), layers.GlobalAveragePooling2D()(fine)]
    )
    head = layers.Dense(2, name="logits")
    model = keras.Model(inp, layers.Softmax()(head(feats)))
    kernel, bias = head.get_weights()
    kernel[:, 0] = np.abs(kernel[:, 0]) + 0.1
    kernel[3:, 0] *= 5.0  # the fine branch carries most of the class-0 score
    head.set_weights([kernel, bias])
    x = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    res = GradCAM(model, ["coarse", "fine"], score_layer="logits", fusion="contribution")(
        x, targets=0
    )
    share_c = np.asarray(keras.Model(inp, coarse)(x)).mean(axis=(1, 2)) @ kernel[:3, 0]
    share_f = np.asarray(keras.Model(inp, fine)(x)).mean(axis=(1, 2)) @ kernel[3:, 0]
    coarse_map, fine_map = res.layer_maps
    assert (coarse_map > 0).all() and (fine_map > 0).all()
    np.testing.assert_allclose((coarse_map * 16).mean(axis=(1, 2)), share_c, rtol=1e-4)
    np.testing.assert_allclose((fine_map * 64).mean(axis=(1, 2)), share_f, rtol=1e-4)
    np.testing.assert_allclose(
        share_c + share_f + bias[0],
        np.asarray(keras.Model(inp, head.output)(x))[:, 0],
        rtol=1e-4,
    )


def test_registry_lists_valid_names_and_cli_agrees() -> None:
    from camlabel.cli.classify import CAM_METHOD_NAMES, FUSION_NAMES

    assert set(CAM_METHODS) == {"gradcam", "gradcampp", "layercam"} == set(CAM_METHOD_NAMES)
    assert tuple(FUSIONS) == FUSION_NAMES
    for name, cls in CAM_METHODS.items():
        assert cls.name == name and get_cam_method(name) is cls
    with pytest.raises(
        ModelError, match=r"supported methods: \['gradcam', 'gradcampp', 'layercam'\]"
    ):
        get_cam_method("scorecam")


def test_bad_target_layer_lists_conv_layers(ensemble) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="not in model"):
        GradCAM(ensemble, ["no_such_layer"])


# ----------------------------------------------------------------------------- localization
class _RegionMask(keras.layers.Layer):
    """Multiplies a feature map by a fixed spatial 0/1 mask (test-only, never saved)."""

    def __init__(self, mask: np.ndarray, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.mask = np.asarray(mask, np.float32)[None, :, :, None]

    def call(self, x):  # type: ignore[no-untyped-def]
        return x * self.mask


def test_handcrafted_region_model_gives_cam_inside_that_region() -> None:
    """Class 0's score depends only on region A of the image, class 1's only on region B."""
    from keras import layers

    grid = 16  # conv map resolution for a 64 px input (pool 4)
    region_a = np.zeros((grid, grid), bool)
    region_a[2:6, 9:14] = True  # upper right
    region_b = np.zeros((grid, grid), bool)
    region_b[10:15, 1:5] = True  # lower left
    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.AveragePooling2D(4)(inp)
    x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", activation="relu")(x)
    feats = layers.Concatenate(name="cam_conv")(
        [_RegionMask(region_a)(x), _RegionMask(region_b)(x)]
    )
    pooled = layers.GlobalAveragePooling2D()(feats)
    logits = layers.Dense(2, use_bias=False, name="logits")(pooled)
    probs = layers.Activation("softmax")(logits)
    model = keras.Model(inp, probs)
    model.get_layer("logits").set_weights([np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)])

    rng = np.random.default_rng(0)
    imgs = rng.uniform(20, 255, size=(4, SIZE, SIZE, 3)).astype(np.float32)  # bright everywhere
    cam = GradCAM(model, ["cam_conv"])
    for target, region in ((0, region_a), (1, region_b)):
        res = cam(imgs, targets=target)
        inside = cv2.resize(
            region.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
        near = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(
            bool
        )  # bilinear spill
        for h in res.heatmaps:
            peak = np.unravel_index(np.argmax(h), h.shape)
            assert inside[peak]
            assert h[~near].max() < 1e-6  # nothing outside the region (beyond interpolation)
            assert h[inside].sum() / h.sum() > 0.8


def test_briefly_trained_cnn_puts_the_cam_peak_inside_the_true_lesion() -> None:
    """A small CNN trained ~30 s on phantoms, explained by the same CAM code path.

    (The full 31 M-parameter ensemble cannot learn phantoms within a unit-test budget on two
    CPU cores; the CAM pipeline under test is identical.)
    """
    from keras import layers

    from camlabel.imaging import to_model_input
    from camlabel.phantoms import render_phantom

    classes = ("covid", "pneumonia", "normal")
    xs, ys, lesions = [], [], []
    for i in range(240):
        img, lesion, _ = render_phantom(np.random.default_rng(10_000 + i), classes[i % 3], 80, 72)
        x, box = to_model_input(img, SIZE)
        xs.append(x)
        ys.append(i % 3)
        lesions.append((lesion, box))
    x_all, y_all = np.stack(xs), np.array(ys)

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = layers.Rescaling(1 / 255.0)(inp)
    for filters in (16, 32):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization(momentum=0.9)(h)
        h = layers.Activation("relu")(h)
        h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(64, 3, padding="same", use_bias=False)(h)
    h = layers.BatchNormalization(momentum=0.9)(h)
    h = layers.Activation("relu", name="last_conv")(h)
    h = layers.GlobalAveragePooling2D()(h)
    logits = layers.Dense(3, name="logits")(h)
    model = keras.Model(inp, layers.Activation("softmax")(logits))
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    n_train = 180
    model.fit(x_all[:n_train], y_all[:n_train], epochs=40, batch_size=16, verbose=0)

    res = GradCAM(model, ["last_conv"])(x_all, targets=y_all)
    val_acc = float((res.probabilities[n_train:].argmax(1) == y_all[n_train:]).mean())
    assert val_acc >= 0.7, f"the small CNN did not learn the phantoms (val accuracy {val_acc:.2f})"
    hits = total = 0
    for i in range(len(x_all)):
        if classes[y_all[i]] == "normal":
            continue
        lesion, box = lesions[i]
        heat = box.heatmap_to_image(res.heatmaps[i])  # back to the 80x72 source
        # one CAM cell (4 model px ~ 5 source px) of tolerance around the lesion
        near = cv2.dilate(lesion.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        peak = np.unravel_index(np.argmax(heat), heat.shape)
        hits += bool(near[peak])
        total += 1
    # A peak placed at random would hit ~10 % (lesions cover 3-10 % of the image).
    assert hits / total >= 0.6, f"CAM peak inside the lesion for only {hits}/{total} lesion images"


# ------------------------------------------------------------------ mapping back to the image
@pytest.mark.parametrize("shape", [(120, 75), (75, 120)], ids=["tall", "wide"])
def test_polygons_map_back_to_original_pixels_exactly(shape: tuple[int, int]) -> None:
    """A map defined on the ORIGINAL image (a disc), sampled on the letterboxed model grid as the
    CAM would be, comes back as polygons at the disc's place and size in original pixels."""
    from camlabel.geometry import PolygonPx, polygons_to_mask
    from camlabel.imaging import Letterbox
    from camlabel.preannotate import cam_settings, preannotation_from_map

    h, w = shape
    size = 224
    box = Letterbox.fit(h, w, size)
    cx, cy, radius = 0.3 * w, 0.7 * h, 0.15 * min(h, w)  # off-centre: a flip or shift would show
    # Model-grid pixel centres -> image coordinates -> smooth bump around the disc.
    gy, gx = np.mgrid[0:size, 0:size] + 0.5
    img_xy = box.model_to_image_xy(np.stack([gx, gy], axis=-1))
    dist = np.hypot(img_xy[..., 0] - cx, img_xy[..., 1] - cy)
    grid = np.clip(1.0 - dist / (2 * radius), 0, 1).astype(
        np.float32
    )  # 0.5 exactly at the disc edge
    heat = box.heatmap_to_image(grid)
    assert heat.shape == (h, w)
    settings = cam_settings(
        None, threshold=0.5, epsilon_px=0.0, max_vertices=None, min_area_fraction=0.0
    )
    pre = preannotation_from_map(
        heat, settings=settings, source="gradcam", model_version="v", score=0.9
    )
    assert len(pre.polygons) == 1
    poly = PolygonPx.from_json(pre.polygons[0])
    ext = poly.exterior
    assert (
        ext[:, 0].min() >= 0
        and ext[:, 0].max() <= w
        and ext[:, 1].min() >= 0
        and ext[:, 1].max() <= h
    )
    mask = polygons_to_mask([poly], h, w)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    truth = np.hypot(xx - cx, yy - cy) <= radius
    inter, union = (mask & truth).sum(), (mask | truth).sum()
    assert inter / union > 0.95
    my, mx = np.argwhere(mask).mean(axis=0) + 0.5
    assert abs(mx - cx) < 0.5 and abs(my - cy) < 0.5
    assert abs(np.sqrt(mask.sum() / np.pi) - radius) < 0.75


# ------------------------------------------------------------------------------ JAX backend
def test_jax_backend_gives_the_same_heatmaps(images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The JAX gradient path (jax.grad + jax.jit) against the TensorFlow one, on the same saved
    model, in a subprocess with KERAS_BACKEND=jax. A one-backbone (VGG19) ensemble keeps the
    XLA compile short; the code path is the one the full ensemble takes."""
    pytest.importorskip("jax")
    from camlabel.models.ensemble import build_ensemble

    keras.utils.set_random_seed(3)
    model = build_ensemble(image_size=SIZE, backbones=("vgg19",))
    expected = GradCAMPlusPlus(model)(images, targets=[0, 1, 2]).heatmaps
    expected_gc = GradCAM(model)(images).heatmaps
    model_path = tmp_path / "ens.keras"
    model.save(model_path)
    np.save(tmp_path / "x.npy", images)
    code = (
        "import json, sys, numpy as np, keras\n"
        "from camlabel.models.ensemble import load_ensemble\n"
        "from camlabel.cam import GradCAM, GradCAMPlusPlus\n"
        "assert keras.backend.backend() == 'jax'\n"
        f"m = load_ensemble({str(model_path)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'pp.npy')!r}, GradCAMPlusPlus(m)(x, targets=[0, 1, 2]).heatmaps)\n"
        f"np.save({str(tmp_path / 'gc.npy')!r}, GradCAM(m)(x[:2]).heatmaps)\n"  # short batch: padded
        "print(json.dumps({'tf_loaded': 'tensorflow' in sys.modules}))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"tf_loaded": False}
    np.testing.assert_allclose(np.load(tmp_path / "pp.npy"), expected, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "gc.npy"), expected_gc[:2], atol=1e-4)


def test_absolute_threshold_for_probability_maps() -> None:
    """A segmenter-like probability map: relative thresholds (CAMs) find the faint bump,
    absolute ones (probabilities) do not; both find a confident region."""
    from camlabel.preannotate import cam_settings, preannotation_from_map

    settings = cam_settings(None, threshold=0.5, min_area_fraction=0.0)
    prob = np.zeros((40, 60), np.float32)
    prob[10:20, 30:50] = 0.1
    rel = preannotation_from_map(prob, settings=settings, source="segmenter", model_version="s1")
    ab = preannotation_from_map(
        prob, settings=settings, source="segmenter", model_version="s1", absolute=True
    )
    assert len(rel.polygons) == 1 and ab.polygons == ()
    prob[10:20, 30:50] = 0.9
    ab = preannotation_from_map(
        prob, settings=settings, source="segmenter", model_version="s1", absolute=True
    )
    assert len(ab.polygons) == 1
    xs = np.asarray(ab.polygons[0]["exterior"])[:, 0]
    assert (xs.min(), xs.max()) == (30.0, 50.0)
