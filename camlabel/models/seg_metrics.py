"""Segmentation loss and metrics (Dice + BCE loss; Dice and IoU, the seed paper's metrics).

Target convention: ``y_true`` is 1 for the structure, 0 for background and **negative for
"ignore"** (pixels excluded from the loss and the metrics, e.g. V7's "Ignore" regions over
pacemakers; see training/train_seg.py for how mask PNG values map to this).

Metrics are per image, averaged over images: a hard mask (``y_pred >= threshold``) is
compared with the target; an image whose prediction and target are both empty scores 1.
Only ``keras.ops`` is used (TensorFlow and JAX). Like tiramisu.py, this module is copied into
the SageMaker source bundle: keep its imports to keras.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def _prepare(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    valid = ops.cast(y_true >= 0, "float32")
    return y_true * valid, y_pred, valid


def _axes(x: Any) -> list[int]:
    return list(range(1, len(x.shape)))


@keras.saving.register_keras_serializable(package="camlabel")
class DiceBCELoss(keras.losses.Loss):
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``, per image, ignore pixels excluded.

    Args:
        bce_weight: weight of the mean binary cross-entropy over valid pixels.
        dice_weight: weight of the soft-Dice term.
        smooth: added to the Dice numerator and denominator (keeps empty masks finite).
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        name: str = "dice_bce",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y, p, valid = _prepare(y_true, y_pred)
        axes = _axes(p)
        eps = keras.backend.epsilon()
        pc = ops.clip(p, eps, 1.0 - eps)
        bce = -(y * ops.log(pc) + (1.0 - y) * ops.log(1.0 - pc)) * valid
        bce = ops.sum(bce, axis=axes) / ops.maximum(ops.sum(valid, axis=axes), 1.0)
        pv = p * valid
        inter = ops.sum(y * pv, axis=axes)
        denom = ops.sum(y, axis=axes) + ops.sum(pv, axis=axes)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "bce_weight": self.bce_weight,
            "dice_weight": self.dice_weight,
            "smooth": self.smooth,
        }


class _OverlapMetric(keras.metrics.Metric):
    """Mean over images of a hard-mask overlap score; subclasses define :meth:`_score`."""

    def __init__(self, threshold: float = 0.5, name: str = "overlap", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _score(self, inter: Any, pred_sum: Any, true_sum: Any) -> Any:
        raise NotImplementedError

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y, p, valid = _prepare(y_true, y_pred)
        axes = _axes(p)
        hard = ops.cast(p >= self.threshold, "float32") * valid
        inter = ops.sum(hard * y, axis=axes)
        score = self._score(inter, ops.sum(hard, axis=axes), ops.sum(y, axis=axes))
        if sample_weight is not None:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            self.total.assign_add(ops.sum(score * w))
            self.count.assign_add(ops.sum(w))
        else:
            self.total.assign_add(ops.sum(score))
            self.count.assign_add(ops.cast(ops.shape(score)[0], "float32"))

    def result(self) -> Any:
        return self.total / ops.maximum(self.count, 1e-12)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="camlabel")
class DiceCoefficient(_OverlapMetric):
    """Per-image Dice ``2|P∩T| / (|P| + |T|)`` of the thresholded prediction, averaged."""

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs: Any) -> None:
        super().__init__(threshold=threshold, name=name, **kwargs)

    def _score(self, inter: Any, pred_sum: Any, true_sum: Any) -> Any:
        denom = pred_sum + true_sum
        return ops.where(denom > 0, 2.0 * inter / ops.maximum(denom, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="camlabel")
class IoUCoefficient(_OverlapMetric):
    """Per-image IoU (Jaccard) ``|P∩T| / |P∪T|`` of the thresholded prediction, averaged."""

    def __init__(self, threshold: float = 0.5, name: str = "iou", **kwargs: Any) -> None:
        super().__init__(threshold=threshold, name=name, **kwargs)

    def _score(self, inter: Any, pred_sum: Any, true_sum: Any) -> Any:
        union = pred_sum + true_sum - inter
        return ops.where(union > 0, inter / ops.maximum(union, 1.0), 1.0)


def segmentation_objects() -> dict[str, Any]:
    """The custom objects a saved segmenter may reference (for ``load_model``)."""
    from camlabel.models.tiramisu import CropToReference, PadToMultiple, Tiramisu

    return {
        "Tiramisu": Tiramisu,
        "PadToMultiple": PadToMultiple,
        "CropToReference": CropToReference,
        "DiceBCELoss": DiceBCELoss,
        "DiceCoefficient": DiceCoefficient,
        "IoUCoefficient": IoUCoefficient,
    }
