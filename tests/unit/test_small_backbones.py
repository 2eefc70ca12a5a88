"""The small ensemble members used by the CPU demo: same families, CAM layers, save/load."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from camlabel.models.ensemble import BACKBONES, build_ensemble, load_ensemble

SMALL = ("densenet-s", "efficientnet-s", "vgg-s")


def test_small_ensemble_round_trip_and_cam_layers(tmp_path: Path) -> None:
    model = build_ensemble(image_size=64, backbones=SMALL)
    assert model.cam_layers == ("pool4_relu", "top_activation", "vggs_block3_conv2")
    for name in model.cam_layers:
        assert model.get_layer(name) is not None
    # far smaller than the paper's 31 M-parameter ensemble
    assert model.count_params() < 1_500_000
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == 0.9 for layer in bns)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    path = tmp_path / "small.keras"
    model.save(path)
    again = load_ensemble(path)
    np.testing.assert_array_equal(again.predict(x, verbose=0), y)
    assert again.backbones == SMALL


def test_small_variants_are_registered_beside_the_papers() -> None:
    for name in ("densenet121", "efficientnetb0", "vgg19", *SMALL):
        assert name in BACKBONES
