"""LayerCAM (Jiang et al., 2021): per-position weights, so shallower layers give finer maps.

``M = ReLU(sum_c ReLU(dS/dA_ij^c) * A_ij^c)``: each position keeps its own positive gradient
instead of the channel's spatial mean (Grad-CAM). On a final layer it is close to Grad-CAM; on a
stride-8 layer it stays localized where Grad-CAM's averaged weights blur (the paper's reason to
fuse several layers). On the demo's small ensemble it was measured beside Grad-CAM
(docs/benchmarks.md, "Higher-resolution CAMs").
"""

from __future__ import annotations

from typing import Any

from keras import ops

from camlabel.cam.base import BaseCAM


class LayerCAM(BaseCAM):
    """``w_ij^c = ReLU(dS/dA_ij^c)`` (per position, broadcast against the activations)."""

    name = "layercam"

    def get_cam_weights(self, activations: Any, grads: Any) -> Any:
        return ops.relu(grads)
