"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients."""

from __future__ import annotations

from typing import Any

from keras import ops

from camlabel.cam.base import BaseCAM


class GradCAM(BaseCAM):
    """``w_c = mean_ij dS/dA_ij^c``."""

    name = "gradcam"

    def get_cam_weights(self, activations: Any, grads: Any) -> Any:
        return ops.mean(grads, axis=(1, 2), keepdims=True)
