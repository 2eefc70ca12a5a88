"""Registered Keras layers used inside camlabel models.

Per-backbone input preprocessing is a layer of the model (not a ``Lambda``, which would
make ``keras.saving.load_model`` require ``safe_mode=False``), so a saved ``.keras`` file
takes the same input as training: RGB float32 in ``[0, 255]``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# ImageNet statistics as used by keras.applications.imagenet_utils.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESS_MODES = ("torch", "caffe", "efficientnet-imagenet", "none")


@keras.saving.register_keras_serializable(package="camlabel")
class BackbonePreprocess(keras.layers.Layer):
    """Maps RGB ``[0, 255]`` input to what one ImageNet backbone expects.

    Args:
        mode: ``"torch"`` (DenseNet: scale to ``[0, 1]``, subtract the ImageNet mean, divide
            by its std), ``"caffe"`` (VGG: RGB -> BGR, subtract the ImageNet mean in BGR),
            ``"efficientnet-imagenet"`` (EfficientNet with ImageNet weights, see below) or
            ``"none"`` (identity; EfficientNet rescales and normalizes inside its own graph).

    Keras builds EfficientNet with an extra ``Rescaling(1/sqrt(std))`` only when
    ``weights="imagenet"`` (it reproduces the original implementation's division by the
    variance). camlabel always builds the ``weights=None`` graph, so that a saved model
    rebuilds identically from its config, and moves that extra per-channel scale here as
    the equivalent affine map on pixels: ``p' = 255*mean + (p - 255*mean) / sqrt(std)``.
    """

    def __init__(self, mode: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(
                f"`mode` must be one of {list(PREPROCESS_MODES)}. Received: mode={mode!r}"
            )
        self.mode = mode
        self.supports_masking = True

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "efficientnet-imagenet":
            center = ops.convert_to_tensor([255.0 * m for m in _TORCH_MEAN], dtype=x.dtype)
            scale = ops.convert_to_tensor([1.0 / s**0.5 for s in _TORCH_STD], dtype=x.dtype)
            return center + (x - center) * scale
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
