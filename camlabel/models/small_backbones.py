"""Small members of the three backbone families, for CPU demos and tests.

The paper's ensemble (DenseNet121 + EfficientNetB0 + VGG19, 31 M parameters) needs ImageNet
weights or a GPU to learn in reasonable time; from scratch on two CPU cores it does not learn
phantoms within minutes. These variants keep each family's design and its Grad-CAM layer
name, at a fraction of the depth/width, so ``camlabel demo`` trains "a small ensemble" through
the very same ensemble, CAM and save/load code:

- ``densenet-s``: DenseNet with blocks (2, 2, 2, 2) (DenseNet121 has 6, 12, 24, 16); CAM layer
  ``pool4_relu`` (stride 16, the input of the last transition): at the demo's 96 px the final
  ``relu`` is a 3 x 3 map, too coarse to point inside a lesion (on one demo model, pointing
  game 0.017 with ``relu`` vs 0.25 with ``pool4_relu`` and the "contribution" fusion;
  benchmarks/cam_pointing.py).
- ``efficientnet-s``: EfficientNet with width 0.25 and depth 0.25 of B0; CAM layer ``top_activation``.
- ``vgg-s``: three VGG blocks of two 3x3 convolutions (32, 64, 128 filters); CAM layer
  ``vggs_block3_conv2`` (stride 4: finer heatmaps than VGG19's stride 16).

No ImageNet weights exist for them (``weights="imagenet"`` is refused by the ensemble).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

# The family constructors behind DenseNet121/EfficientNetB0 are not exported by
# keras.applications; they are stable in keras.src across Keras 3 releases.
from keras.src.applications import densenet as _densenet
from keras.src.applications import efficientnet as _efficientnet


def _fast_bn(model: keras.Model, momentum: float = 0.9) -> keras.Model:
    """BatchNorm momentum 0.9 (Keras applications use 0.99): with the few hundred steps of a
    CPU demo, 0.99 leaves the moving statistics near their initial values and inference
    collapses to one class even when training accuracy is high."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
    return model


def densenet_small(
    *, include_top: bool = False, weights: Any = None, input_tensor: Any = None, **kw: Any
) -> keras.Model:
    return _fast_bn(
        _densenet.DenseNet(
            [2, 2, 2, 2],
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            name="densenet_s",
        )
    )


def efficientnet_small(
    *, include_top: bool = False, weights: Any = None, input_tensor: Any = None, **kw: Any
) -> keras.Model:
    return _fast_bn(
        _efficientnet.EfficientNet(
            0.25,
            0.25,
            224,
            dropout_rate=0.1,
            name="efficientnet_s",
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
        )
    )


def vgg_small(
    *, include_top: bool = False, weights: Any = None, input_tensor: Any = None, **kw: Any
) -> keras.Model:
    x = input_tensor
    for b, filters in enumerate((32, 64, 128), 1):
        for c in (1, 2):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"vggs_block{b}_conv{c}"
            )(x)
        if b < 3:
            x = layers.MaxPooling2D(2, name=f"vggs_block{b}_pool")(x)
    from keras.src.ops.operation_utils import get_source_inputs

    return keras.Model(get_source_inputs(input_tensor), x, name="vgg_s")
