"""FC-DenseNet (Tiramisu): size, padding, serialization, loss/metrics, and that it learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from camlabel.models.seg_metrics import DiceBCELoss, DiceCoefficient, IoUCoefficient  # noqa: E402
from camlabel.models.tiramisu import (  # noqa: E402
    ARCHITECTURES,
    PadToMultiple,
    Tiramisu,
    architecture,
    fc_densenet103,
    recalibrate_batchnorm,
)

TINY = {"growth_rate": 4, "initial_filters": 8, "down_blocks": (2, 2), "bottleneck_layers": 2}


@pytest.fixture(scope="module")
def tiny() -> Tiramisu:
    keras.utils.set_random_seed(1)
    return Tiramisu(**TINY, name="tiny")


def test_fc_densenet103_has_the_papers_parameter_count() -> None:
    model = fc_densenet103()
    n = model.count_params()
    assert abs(n - 9.42e6) < 0.01e6, n  # the Tiramisu paper: 9.4 M
    assert model.pad_multiple == 32
    assert model.up_blocks == (12, 10, 7, 5, 4)
    # 103 = stem + 4-5-7-10-12 + 5 TD + 15 + 5 TU + 12-10-7-5-4 + head (conv layers)
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose)
    ]
    assert len(convs) == 1 + 38 + 5 + 15 + 5 + 38 + 1


def test_bad_sizes_are_refused_with_the_received_value() -> None:
    with pytest.raises(ValueError, match=r"up_blocks.*Received"):
        Tiramisu(down_blocks=(2, 2), up_blocks=(2,))
    with pytest.raises(ValueError, match=r"dropout=1.5"):
        Tiramisu(**{**TINY, "dropout": 1.5})
    with pytest.raises(ValueError, match=r"supported: \["):
        architecture("fc-densenet1000")
    assert set(ARCHITECTURES) >= {"fc-densenet103", "fc-densenet67", "fc-densenet56", "tiny"}


@pytest.mark.parametrize("h,w", [(50, 70), (33, 31), (64, 64), (5, 9)])
def test_odd_sizes_come_back_exactly_and_unshifted(tiny: Tiramisu, h: int, w: int) -> None:
    x = np.random.default_rng(h * w).random((2, h, w, 1)).astype("float32")
    y = np.asarray(tiny(x, training=False))
    assert y.shape == (2, h, w, 1)
    # Same result as padding by hand (zeros at the bottom/right) and cropping the top-left:
    # the internal padding does not move content.
    ph, pw = (-h) % tiny.pad_multiple, (-w) % tiny.pad_multiple
    padded = np.pad(x, [(0, 0), (0, ph), (0, pw), (0, 0)])
    y_pad = np.asarray(tiny(padded, training=False))[:, :h, :w]
    np.testing.assert_allclose(y, y_pad, atol=1e-5)


def test_pad_layer_pads_bottom_right_with_zeros() -> None:
    x = np.arange(2 * 5 * 7, dtype="float32").reshape(1, 5, 7, 2) + 1
    out = np.asarray(PadToMultiple(4)(x))
    assert out.shape == (1, 8, 8, 2)
    np.testing.assert_array_equal(out[:, :5, :7], x)
    assert not out[:, 5:].any() and not out[:, :, 7:].any()
    assert PadToMultiple(4).compute_output_shape((None, 5, None, 2)) == (None, 8, None, 2)


def test_get_config_round_trip(tiny: Tiramisu) -> None:
    cfg = tiny.get_config()
    assert cfg["down_blocks"] == [2, 2] and cfg["up_blocks"] == [2, 2] and cfg["bn_momentum"] == 0.9
    clone = Tiramisu.from_config(cfg)
    assert clone.get_config() == cfg
    assert clone.count_params() == tiny.count_params()


def test_save_load_gives_identical_outputs(tiny: Tiramisu, tmp_path: Path) -> None:
    tiny.compile(
        optimizer="adam", loss=DiceBCELoss(), metrics=[DiceCoefficient(), IoUCoefficient()]
    )
    tiny.optimizer.build(tiny.trainable_variables)
    x = np.random.default_rng(0).random((2, 40, 44, 1)).astype("float32")
    before = np.asarray(tiny.predict(x, verbose=0))
    path = tmp_path / "tiny.keras"
    tiny.save(path)
    loaded = keras.models.load_model(path)  # safe_mode stays on: every class is registered
    assert isinstance(loaded, Tiramisu)
    np.testing.assert_array_equal(np.asarray(loaded.predict(x, verbose=0)), before)
    assert isinstance(loaded.loss, DiceBCELoss)


@pytest.mark.parametrize("h,w", [(50, 70), (33, 31)])
def test_a_strided_stem_runs_on_a_coarser_grid_and_answers_on_the_input_grid(
    h: int, w: int, tmp_path: Path
) -> None:
    keras.utils.set_random_seed(2)
    m = Tiramisu(**TINY, stem_stride=2)
    assert m.pad_multiple == 8  # 2 poolings x stride 2
    stem = m.get_layer("stem_conv")
    assert stem.strides == (2, 2) and stem.kernel_size == (5, 5)
    x = np.random.default_rng(h + w).random((1, h, w, 1)).astype("float32")
    y = np.asarray(m(x, training=False))
    assert y.shape == (1, h, w, 1)
    ph, pw = (-h) % 8, (-w) % 8
    y_pad = np.asarray(m(np.pad(x, [(0, 0), (0, ph), (0, pw), (0, 0)]), training=False))
    np.testing.assert_allclose(y, y_pad[:, :h, :w], atol=1e-5)
    # the dense blocks see half the grid: the bottleneck of a 64 px input is 64 / 2 / 4
    probe = keras.Model(m.inputs, m.get_layer("bottleneck_new").output)
    assert probe([np.zeros((1, 64, 64, 1), "float32")]).shape[1:3] == (8, 8)
    assert m.get_config()["stem_stride"] == 2
    path = tmp_path / "s2.keras"
    m.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.stem_stride == 2
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), y, atol=1e-6)
    with pytest.raises(ValueError, match=r"stem_stride=3"):
        Tiramisu(**TINY, stem_stride=3)


def test_recalibrated_batchnorm_holds_the_mean_batch_statistics_without_dropout() -> None:
    keras.utils.set_random_seed(3)
    inp = keras.Input((4, 4, 2))
    bn1 = keras.layers.BatchNormalization(momentum=0.9)
    drop = keras.layers.Dropout(0.5)
    bn2 = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inp, bn2(drop(bn1(inp))))
    rng = np.random.default_rng(0)
    b1 = (rng.normal(3.0, 2.0, (5, 4, 4, 2))).astype("float32")
    b2 = (rng.normal(-1.0, 0.5, (5, 4, 4, 2))).astype("float32")
    assert recalibrate_batchnorm(model, [b1, b2]) == 2
    want_mean = (b1.mean((0, 1, 2)) + b2.mean((0, 1, 2))) / 2
    want_var = (b1.var((0, 1, 2)) + b2.var((0, 1, 2))) / 2
    np.testing.assert_allclose(np.asarray(bn1.moving_mean), want_mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn1.moving_variance), want_var, rtol=1e-4)
    # bn2 saw bn1's batch-normalised output with dropout off: per batch mean 0, variance
    # var / (var + eps) (1 - 1e-3 / var)
    np.testing.assert_allclose(np.asarray(bn2.moving_mean), 0.0, atol=1e-5)
    assert np.all(np.asarray(bn2.moving_variance) > 0.99)
    assert bn1.momentum == bn2.momentum == 0.9 and drop.rate == 0.5  # restored


def test_recalibrated_tiramisu_infers_as_it_trains_without_dropout() -> None:
    keras.utils.set_random_seed(4)
    m = Tiramisu(**TINY, dropout=0.2)
    x = np.random.default_rng(1).random((4, 16, 16, 1)).astype("float32")
    recalibrate_batchnorm(m, [x])
    for layer in m.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    # one batch: the moving statistics are that batch's, so inference = training mode
    np.testing.assert_allclose(
        np.asarray(m(x, training=False)), np.asarray(m(x, training=True)), atol=1e-4
    )


def test_fixed_size_model_and_softmax_head() -> None:
    m = Tiramisu(**TINY, image_size=32, num_classes=3, input_channels=3)
    assert m.input_shape == (None, 32, 32, 3)
    y = np.asarray(m(np.zeros((1, 32, 32, 3), "float32")))
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


def test_dice_iou_metrics_and_ignore_pixels() -> None:
    t = np.zeros((2, 4, 4, 1), "float32")
    p = np.zeros((2, 4, 4, 1), "float32")
    t[0, :2, :2] = 1  # 4 px
    p[0, :2, :] = 0.9  # 8 px, 4 overlap -> Dice 8/12, IoU 4/8
    # image 1: both empty -> 1
    d, i = DiceCoefficient(), IoUCoefficient()
    d.update_state(t, p)
    i.update_state(t, p)
    assert float(d.result()) == pytest.approx((8 / 12 + 1) / 2)
    assert float(i.result()) == pytest.approx((0.5 + 1) / 2)
    # Ignore (-1) the false-positive half: image 0 becomes perfect.
    t2 = t.copy()
    t2[0, :2, 2:] = -1
    d2 = DiceCoefficient()
    d2.update_state(t2, p)
    assert float(d2.result()) == pytest.approx(1.0)
    loss = DiceBCELoss()
    assert float(loss(t2, p)) < float(loss(t, p))
    perfect = float(loss(t, t))
    assert perfect < 1e-3


def test_a_tiny_tiramisu_learns_phantom_lesion_masks() -> None:
    from camlabel.phantoms import render_phantom

    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(8):
        img, lesion, _ = render_phantom(rng, ("covid", "pneumonia")[i % 2], 64, 64)
        xs.append(img / 255.0)
        ys.append(lesion)
    x = np.stack(xs)[..., None].astype("float32")
    y = np.stack(ys)[..., None].astype("float32")
    assert 0.01 < y.mean() < 0.3
    keras.utils.set_random_seed(0)
    model = Tiramisu(
        growth_rate=8, initial_filters=16, down_blocks=(2, 2), bottleneck_layers=2, dropout=0.0
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=DiceBCELoss(),
        metrics=[DiceCoefficient(), IoUCoefficient()],
        run_eagerly=True,
    )
    start = model.evaluate(x, y, return_dict=True, verbose=0)
    assert start["dice"] < 0.3
    # Evaluated in inference mode (BatchNorm moving statistics) every 10 steps; TensorFlow
    # passes the bar after 40 steps here (Dice ~0.86); other backends draw other initial
    # weights, hence the margin of up to 80 steps.
    history = []
    for _ in range(8):
        for _ in range(10):
            model.train_on_batch(x, y)
        end = model.evaluate(x, y, return_dict=True, verbose=0)
        history.append(round(float(end["dice"]), 3))
        if end["dice"] > 0.7:
            break
    assert end["dice"] > 0.7, history
    assert end["iou"] > 0.5, end
