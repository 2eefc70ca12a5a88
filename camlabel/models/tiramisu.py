"""FC-DenseNet ("The One Hundred Layers Tiramisu", Jégou et al. 2017) in Keras 3.

The defaults build FC-DenseNet103: growth rate 16, 48 initial filters, dense blocks
4-5-7-10-12 / bottleneck 15 / 12-10-7-5-4, dropout 0.2 -> about 9.42 M parameters for one
gray input channel and one output map (the paper: 9.4 M). Every size is an argument, so tests
build a 0.1 M-parameter model with the same code.

Inputs of any height and width work: the model pads the bottom and right edges with zeros up
to a multiple of ``2 ** len(down_blocks)`` (32 by default) and crops the output back to the
input's size, so a pixel's prediction sits at that pixel's coordinates. Padding only at the
bottom/right (never centred) keeps this exact: ``model(x)`` equals
``model(zero_pad(x))[:, :h, :w]``.

Only ``keras.ops`` is used, so the model runs under TensorFlow and JAX. This module is also
copied into the SageMaker source bundle (see camlabel/train/sagemaker.py): keep its imports
to keras (and the standard library).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import keras
from keras import layers, ops

FC_DENSENET103: dict[str, Any] = {
    "growth_rate": 16,
    "initial_filters": 48,
    "down_blocks": (4, 5, 7, 10, 12),
    "bottleneck_layers": 15,
    "up_blocks": (12, 10, 7, 5, 4),
    "dropout": 0.2,
}

# Named sizes. A new one is one line here; the up path mirrors the down path.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "fc-densenet103": FC_DENSENET103,
    # The paper's two smaller models.
    "fc-densenet67": {
        "growth_rate": 16,
        "initial_filters": 48,
        "down_blocks": (5,) * 5,
        "bottleneck_layers": 5,
    },
    "fc-densenet56": {
        "growth_rate": 12,
        "initial_filters": 48,
        "down_blocks": (4,) * 5,
        "bottleneck_layers": 4,
    },
    # For tests and CPU demos only (about 0.01 M parameters).
    "tiny": {"growth_rate": 4, "initial_filters": 8, "down_blocks": (2, 2), "bottleneck_layers": 2},
}


def architecture(name: str) -> dict[str, Any]:
    """The Tiramisu arguments of a named size (see :data:`ARCHITECTURES`)."""
    try:
        return dict(ARCHITECTURES[name])
    except KeyError:
        raise ValueError(
            f"Unknown Tiramisu architecture {name!r}; supported: {sorted(ARCHITECTURES)}. "
            f"Received: arch={name!r}"
        ) from None


@keras.saving.register_keras_serializable(package="camlabel")
class PadToMultiple(layers.Layer):
    """Zero-pads the bottom and right edges so height and width are multiples of ``multiple``."""

    def __init__(self, multiple: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(multiple) < 1:
            raise ValueError(
                f"`multiple` must be a positive integer. Received: multiple={multiple}"
            )
        self.multiple = int(multiple)

    def call(self, x: Any) -> Any:
        shape = ops.shape(x)
        pad_h = (-shape[1]) % self.multiple
        pad_w = (-shape[2]) % self.multiple
        return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        def up(n: int | None) -> int | None:
            return None if n is None else -(-n // self.multiple) * self.multiple

        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), input_shape[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="camlabel")
class CropToReference(layers.Layer):
    """Crops ``x`` (top-left anchored) to the height and width of ``reference``."""

    def call(self, x: Any, reference: Any) -> Any:
        shape = ops.shape(reference)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(
        self, x_shape: tuple[Any, ...], reference_shape: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def _bn_relu_conv(
    x: Any, filters: int, kernel: int, dropout: float, momentum: float, name: str
) -> Any:
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(
        filters, kernel, padding="same", kernel_initializer="he_uniform", name=f"{name}_conv"
    )(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def _dense_block(
    x: Any, n_layers: int, growth: int, dropout: float, momentum: float, name: str
) -> tuple[Any, Any]:
    """Returns (input + all new features, the new features only)."""
    new = []
    for i in range(n_layers):
        f = _bn_relu_conv(x, growth, 3, dropout, momentum, f"{name}_l{i}")
        new.append(f)
        x = layers.Concatenate(name=f"{name}_cat{i}")([x, f])
    only_new = new[0] if len(new) == 1 else layers.Concatenate(name=f"{name}_new")(new)
    return x, only_new


def _check_blocks(name: str, value: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(v) for v in value)
    if not out or any(v < 1 for v in out):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive layer counts. Received: {name}={value!r}"
        )
    return out


@keras.saving.register_keras_serializable(package="camlabel")
class Tiramisu(keras.Model):
    """FC-DenseNet for binary or multi-class segmentation (FC-DenseNet103 by default).

    Args:
        input_channels: channels of the input image (1 for gray radiographs).
        num_classes: output maps. 1 gives a sigmoid probability map; more give a softmax.
        growth_rate: feature maps each dense layer adds (k in the paper).
        initial_filters: filters of the first 3x3 convolution.
        down_blocks: layers per dense block on the down path (one pooling after each).
        bottleneck_layers: layers in the bottleneck dense block.
        up_blocks: layers per dense block on the up path; defaults to ``down_blocks`` reversed.
        dropout: dropout rate after every convolution (0 turns it off).
        bn_momentum: BatchNormalization moving-average momentum. 0.9 as in the original
            (Lasagne) implementation; Keras's 0.99 leaves the inference statistics far from
            the data after the few hundred steps a small mask set gives.
        image_size: fix the input to ``image_size x image_size``; ``None`` accepts any size.
        output_dtype: dtype of the last layer; float32 keeps probabilities stable under
            mixed precision.
        stem_stride: 1 (the paper) runs the network on the input grid; 2 or 4 make the
            first convolution strided (kernel ``2 * stride + 1``), run the dense blocks on
            that coarser grid and upsample the logits bilinearly to the input grid: about
            ``stride ** 2`` times less compute, for structures with smooth, wide boundaries
            (lesions, lungs) rather than thin ones.
    """

    def __init__(
        self,
        *,
        input_channels: int = 1,
        num_classes: int = 1,
        growth_rate: int = 16,
        initial_filters: int = 48,
        down_blocks: Sequence[int] = (4, 5, 7, 10, 12),
        bottleneck_layers: int = 15,
        up_blocks: Sequence[int] | None = None,
        dropout: float = 0.2,
        bn_momentum: float = 0.9,
        image_size: int | None = None,
        output_dtype: str = "float32",
        stem_stride: int = 1,
        **kwargs: Any,
    ) -> None:
        down = _check_blocks("down_blocks", down_blocks)
        up = (
            _check_blocks("up_blocks", up_blocks)
            if up_blocks is not None
            else tuple(reversed(down))
        )
        if len(up) != len(down):
            raise ValueError(
                "`up_blocks` needs one entry per down block. "
                f"Received: down_blocks={down!r}, up_blocks={up!r}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        if not 0.0 <= float(bn_momentum) < 1.0:
            raise ValueError(
                f"`bn_momentum` must be in [0, 1). Received: bn_momentum={bn_momentum}"
            )
        for arg, val in (
            ("input_channels", input_channels),
            ("num_classes", num_classes),
            ("growth_rate", growth_rate),
            ("initial_filters", initial_filters),
            ("bottleneck_layers", bottleneck_layers),
        ):
            if int(val) < 1:
                raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={val}")

        if int(stem_stride) not in (1, 2, 4):
            raise ValueError(
                f"`stem_stride` must be 1, 2 or 4. Received: stem_stride={stem_stride}"
            )
        stride = int(stem_stride)
        side = None if image_size is None else int(image_size)
        inputs = keras.Input((side, side, int(input_channels)), name="image")
        x = PadToMultiple(2 ** len(down) * stride, name="pad")(inputs)
        x = layers.Conv2D(
            initial_filters,
            3 if stride == 1 else 2 * stride + 1,
            strides=stride,
            padding="same",
            kernel_initializer="he_uniform",
            name="stem_conv",
        )(x)
        n_filters = int(initial_filters)
        skips = []
        for i, n in enumerate(down):
            x, _ = _dense_block(x, n, growth_rate, dropout, bn_momentum, f"down{i}")
            n_filters += n * growth_rate
            skips.append(x)
            x = _bn_relu_conv(x, n_filters, 1, dropout, bn_momentum, f"td{i}")
            x = layers.MaxPooling2D(2, name=f"td{i}_pool")(x)
        x, to_upsample = _dense_block(
            x, int(bottleneck_layers), growth_rate, dropout, bn_momentum, "bottleneck"
        )
        keep = int(bottleneck_layers) * growth_rate
        for i, n in enumerate(up):
            x = layers.Conv2DTranspose(
                keep,
                3,
                strides=2,
                padding="same",
                kernel_initializer="he_uniform",
                name=f"tu{i}_deconv",
            )(to_upsample)
            x = layers.Concatenate(name=f"tu{i}_cat")([x, skips[-1 - i]])
            x, to_upsample = _dense_block(x, n, growth_rate, dropout, bn_momentum, f"up{i}")
            keep = n * growth_rate
        activation = "sigmoid" if int(num_classes) == 1 else "softmax"
        x = layers.Conv2D(int(num_classes), 1, name="head_conv", dtype=output_dtype)(x)
        if stride > 1:
            # logits back to the input grid; bilinear keeps the boundaries smooth
            x = layers.UpSampling2D(
                stride, interpolation="bilinear", name="head_up", dtype=output_dtype
            )(x)
        x = layers.Activation(activation, name="head_act", dtype=output_dtype)(x)
        outputs = CropToReference(name="crop", dtype=output_dtype)(x, inputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.input_channels = int(input_channels)
        self.num_classes = int(num_classes)
        self.growth_rate = int(growth_rate)
        self.initial_filters = int(initial_filters)
        self.down_blocks = down
        self.bottleneck_layers = int(bottleneck_layers)
        self.up_blocks = up
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.image_size = side
        self.output_dtype = output_dtype
        self.stem_stride = stride
        self.pad_multiple = 2 ** len(down) * stride

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "input_channels": self.input_channels,
            "num_classes": self.num_classes,
            "growth_rate": self.growth_rate,
            "initial_filters": self.initial_filters,
            "down_blocks": list(self.down_blocks),
            "bottleneck_layers": self.bottleneck_layers,
            "up_blocks": list(self.up_blocks),
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
            "image_size": self.image_size,
            "output_dtype": self.output_dtype,
            "stem_stride": self.stem_stride,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Tiramisu:
        return cls(**config)


_TRAIN_MODE_FORWARD: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _train_mode_forward(model: keras.Model) -> Any:
    """``model(x, training=True)``, compiled once per model where the backend allows."""
    fn = _TRAIN_MODE_FORWARD.get(model)
    if fn is None:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            fn = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
        else:  # eager (JAX, torch): slower per batch, but runs anywhere
            fn = lambda x: model(x, training=True)  # noqa: E731
        _TRAIN_MODE_FORWARD[model] = fn
    return fn


def recalibrate_batchnorm(model: keras.Model, batches: Iterable[Any]) -> int:
    """Set every BatchNormalization layer's moving statistics to their mean over ``batches``.

    Training leaves the moving statistics of an exponential average of *augmented* batches
    *with dropout on*; inference sees neither. With dropout after every convolution, as in
    FC-DenseNet, the variance the next BatchNorm learned is larger than what it meets at
    inference ("variance shift", Li et al. 2019), and the error compounds through the dense
    blocks: a strided-stem model trained on phantoms predicted almost nothing in inference
    mode (held-out Dice 0.15) while the same weights in training mode scored 0.83. Running
    the un-augmented training images through the network in training mode with dropout off
    and averaging each layer's batch mean and variance gives the statistics inference will
    meet (0.80). Only the moving statistics change; weights do not. Returns the number of
    batches used (0 leaves the model as it was).
    """
    import numpy as np

    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    drops = [layer for layer in model.layers if isinstance(layer, layers.Dropout)]
    momenta = [b.momentum for b in bns]
    rates = [d.rate for d in drops]
    before = [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in bns]
    sums = [(np.zeros_like(m), np.zeros_like(v)) for m, v in before]
    n = 0
    done = False
    try:
        # momentum 0: after each batch a layer's moving statistics are that batch's; the
        # compiled forward bakes these values in, so they are the same on every call
        for b in bns:
            b.momentum = 0.0
        for d in drops:
            d.rate = 0.0
        forward = _train_mode_forward(model)
        for x in batches:
            forward(x)
            for (sm, sv), b in zip(sums, bns, strict=True):
                sm += b.moving_mean.numpy()
                sv += b.moving_variance.numpy()
            n += 1
        done = True
    finally:
        for b, m in zip(bns, momenta, strict=True):
            b.momentum = m
        for d, r in zip(drops, rates, strict=True):
            d.rate = r
        for b, (sm, sv), (m0, v0) in zip(bns, sums, before, strict=True):
            # an interrupted pass leaves the statistics as they were
            b.moving_mean.assign(sm / n if done and n else m0)
            b.moving_variance.assign(sv / n if done and n else v0)
    return n


def fc_densenet103(**overrides: Any) -> Tiramisu:
    """FC-DenseNet103 with the paper's sizes; ``overrides`` change any argument of Tiramisu."""
    return Tiramisu(**{**FC_DENSENET103, **overrides})
