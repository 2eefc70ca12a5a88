"""Grad-CAM++ (Chattopadhay et al., 2018), as in the authors' code and tf-keras-vis.

With ``g = dS/dA``: ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)`` (0 where ``g = 0``), normalized
to sum 1 over the spatial positions of each channel; ``w_c = sum_ij alpha * ReLU(g)``.

The paper writes the class score as ``exp(S)``; its factor cancels in ``alpha`` and only
scales ``w`` by ``exp(S)`` per image, so it is left out (it would overflow for large
logits and changes nothing after normalization).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from camlabel.cam.base import BaseCAM


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted per position by ``alpha``."""

    name = "gradcampp"

    def get_cam_weights(self, activations: Any, grads: Any) -> Any:
        g2 = grads * grads
        g3 = g2 * grads
        total = ops.sum(activations, axis=(1, 2), keepdims=True)
        denom = 2.0 * g2 + total * g3
        denom = denom + ops.cast(ops.equal(g2, 0.0), denom.dtype)
        alphas = g2 / denom
        norm = ops.sum(alphas, axis=(1, 2), keepdims=True)
        alphas = alphas / (norm + ops.cast(ops.equal(norm, 0.0), norm.dtype))
        return ops.sum(alphas * ops.relu(grads), axis=(1, 2), keepdims=True)
