"""The CAM pipeline as one template method; each CAM method overrides one hook.

For each target layer ``l`` (one per backbone of the ensemble):

1. ``A_l``: the layer's activations, ``G_l``: the gradient of the target class score
   (the pre-softmax logit) with respect to ``A_l`` — :mod:`camlabel.cam._gradients`,
   the only backend-specific code;
2. channel weights ``w_l = get_cam_weights(A_l, G_l)`` — **the hook** (Grad-CAM: the
   spatial mean of ``G_l``);
3. ``cam_l = ReLU(sum_c w_l[c] * A_l[..., c])`` at the layer's resolution;
4. bilinear upsampling (half-pixel centres) to the model input size;
5. fusion across layers (:data:`FUSIONS`): ``"normalize-mean"`` (default) scales each
   map to ``[0, 1]`` (min-max, per image) and averages; ``"sum"`` adds the raw maps;
   ``"contribution"`` adds the raw maps each multiplied by its layer's number of cells
   ``h_l * w_l``. Why: with a global-average-pooling + dense head (the ensemble's), Grad-CAM's
   weight is ``w_c = W[c, k] / (h_l * w_l)``, so ``h_l * w_l * cam_l`` (before the ReLU)
   averages over the image to exactly that backbone's share of the class score. A backbone
   that does not drive the decision then does not drive the map, whatever its resolution
   ("normalize-mean" gives it an equal say; "sum" under-weights fine maps by their cell count).
   The fused map is then min-max scaled to ``[0, 1]`` so that one threshold fits all.

Steps 1-5 run for the whole batch in one compiled function (``tf.function`` with a fixed
input signature, or ``jax.jit``): one forward pass through the backbones, one backward
pass through the small head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from camlabel.cam._gradients import CamFn, compile_cam_function
from camlabel.errors import ModelError

FUSIONS = ("normalize-mean", "sum", "contribution")
_EPS = 1e-7


@dataclass(frozen=True)
class CamResult:
    """CAMs of one batch of model inputs.

    Attributes:
        heatmaps: ``(B, H, W)`` float32 fused maps in ``[0, 1]`` at model-input resolution.
        probabilities: ``(B, K)`` class probabilities.
        scores: ``(B, K)`` the scores the gradients were taken of (logits).
        targets: ``(B,)`` the class index each CAM explains.
        layer_maps: per target layer, ``(B, h_l, w_l)`` un-normalized ``ReLU(sum w*A)`` at
            the layer's own resolution (before upsampling and fusion).
        layers: the target layer names, in the order of ``layer_maps``.
    """

    heatmaps: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    layer_maps: tuple[np.ndarray, ...]
    layers: tuple[str, ...]


def minmax(maps: Any) -> Any:
    """Scale each ``(B, H, W)`` map to ``[0, 1]``; a constant map becomes 0."""
    lo = ops.min(maps, axis=(1, 2), keepdims=True)
    hi = ops.max(maps, axis=(1, 2), keepdims=True)
    return (maps - lo) / (hi - lo + _EPS)


def fuse_maps(maps: Sequence[Any], fusion: str, cells: Sequence[int] | None = None) -> Any:
    """Fuse same-size ``(B, H, W)`` maps (see the module docstring).

    ``cells``: for ``"contribution"``, each map's number of cells at its layer's own
    resolution (``h_l * w_l``), in the order of ``maps``.
    """
    if fusion == "normalize-mean":
        fused = ops.mean(ops.stack([minmax(m) for m in maps], axis=0), axis=0)
    elif fusion == "sum":
        fused = ops.sum(ops.stack(list(maps), axis=0), axis=0)
    elif fusion == "contribution":
        if cells is None or len(cells) != len(maps):
            raise ModelError(
                "the 'contribution' fusion needs each map's cell count at its layer's resolution. "
                f"Received: cells={cells} for {len(maps)} map(s)"
            )
        fused = ops.sum(ops.stack([m * float(c) for m, c in zip(maps, cells, strict=True)]), axis=0)
    else:
        raise ModelError(f"Wrong fusion {fusion!r}, supported fusions: {list(FUSIONS)}")
    return minmax(fused)


def _output_rank(layer: keras.layers.Layer) -> int:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # no single output (shared layer or not built)
        return -1


def split_model(
    model: keras.Model, target_layers: Sequence[str], score_layer: str | None
) -> tuple[keras.Model, keras.Model]:
    """Split a functional model at ``target_layers`` into ``features`` and ``head``.

    ``head`` maps the target activations to ``[scores, probabilities]``; that requires
    the score to depend on the input only through the target layers (true of a
    backbone's last conv layer followed by pooling and dense layers).
    """
    names = [layer.name for layer in model.layers]
    missing = [n for n in target_layers if n not in names]
    if missing:
        convs = [layer.name for layer in model.layers if _output_rank(layer) == 4]
        raise ModelError(
            f"target layer(s) {missing} not in model {model.name!r}",
            hint=f"layers with 4-D outputs, last ones: {convs[-8:]}",
        )
    if score_layer is not None and score_layer not in names:
        raise ModelError(f"score layer {score_layer!r} not in model {model.name!r}")
    acts = [model.get_layer(n).output for n in target_layers]
    probs = model.outputs[0]
    scores = model.get_layer(score_layer).output if score_layer else probs
    features = keras.Model(model.inputs, acts, name=f"{model.name}_cam_features")
    try:
        head = keras.Model(
            acts if len(acts) > 1 else acts[0], [scores, probs], name=f"{model.name}_cam_head"
        )
    except Exception as exc:
        raise ModelError(
            f"the score of {model.name!r} does not depend on the input only through {list(target_layers)}: {exc}",
            hint="choose the last convolutional layer of each branch as target layers",
        ) from exc
    return features, head


class BaseCAM:
    """Base class of gradient CAM methods (template method: override ``get_cam_weights``).

    Args:
        model: a functional Keras model with one image input of fixed size; an
            ``EnsembleClassifier`` brings its own ``cam_layers`` and ``score_layer``.
        target_layers: layer names whose activations are explained (default:
            ``model.cam_layers``).
        score_layer: the layer giving the class scores whose gradients are used (default:
            ``model.score_layer``, else a layer named ``"logits"``, else the model output).
        fusion: one of :data:`FUSIONS`.

    Call with ``(images, targets=None, batch_size=None)``; ``images`` are model inputs
    ``(B, H, W, C)``; ``targets`` is ``None`` (the predicted class), an int for all images,
    or one int per image (``-1`` = predicted).
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        model: keras.Model,
        target_layers: Sequence[str] | None = None,
        *,
        score_layer: str | None = None,
        fusion: str = "normalize-mean",
    ) -> None:
        if target_layers is None:
            target_layers = getattr(model, "cam_layers", None)
            if not target_layers:
                raise ModelError(
                    f"model {model.name!r} does not name its CAM layers",
                    hint="pass target_layers=[<last conv layer name>, ...]",
                )
        if fusion not in FUSIONS:
            raise ModelError(f"Wrong fusion {fusion!r}, supported fusions: {list(FUSIONS)}")
        if score_layer is None:
            score_layer = getattr(model, "score_layer", None)
            if score_layer is None and any(layer.name == "logits" for layer in model.layers):
                score_layer = "logits"
        shape = tuple(model.inputs[0].shape[1:])
        if any(d is None for d in shape):
            raise ModelError(
                f"the model input must have a fixed size. Received: input shape {shape}"
            )
        self.model = model
        self.target_layers = tuple(target_layers)
        self.score_layer = score_layer
        self.fusion = fusion
        self.input_shape: tuple[int, ...] = shape  # (H, W, C)
        self._features, self._head = split_model(model, self.target_layers, score_layer)
        self._fn: CamFn | None = None

    # -- the hook ---------------------------------------------------------------------
    def get_cam_weights(self, activations: Any, grads: Any) -> Any:
        """Channel weights ``(B, 1, 1, C)`` from activations and gradients ``(B, h, w, C)``."""
        raise NotImplementedError

    # -- the template -----------------------------------------------------------------
    def cam_from_gradients(self, activations: Any, grads: Any) -> Any:
        """``ReLU(sum_c w_c * A_c)``: ``(B, h, w)`` at the layer's resolution."""
        weights = self.get_cam_weights(activations, grads)
        return ops.relu(ops.sum(weights * activations, axis=-1))

    def _post(
        self, acts: list[Any], grads: list[Any], scores: Any, probs: Any, targets: Any
    ) -> dict[str, Any]:
        height, width = self.input_shape[:2]
        raws, ups = [], []
        for a, g in zip(acts, grads, strict=True):
            raw = self.cam_from_gradients(ops.cast(a, "float32"), ops.cast(g, "float32"))
            up = ops.image.resize(raw[..., None], (height, width), interpolation="bilinear")[..., 0]
            raws.append(raw)
            ups.append(up)
        cells = [int(r.shape[1]) * int(r.shape[2]) for r in raws]
        out = {
            "heatmaps": fuse_maps(ups, self.fusion, cells),
            "probabilities": ops.cast(probs, "float32"),
            "scores": ops.cast(scores, "float32"),
            "targets": targets,
        }
        for i, raw in enumerate(raws):
            out[f"layer_{i}"] = raw
        return out

    def _compiled(self) -> CamFn:
        if self._fn is None:
            self._fn = compile_cam_function(
                self._features, self._head, self._post, self.input_shape
            )
        return self._fn

    def __call__(
        self,
        images: np.ndarray,
        targets: int | Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int | None = None,
    ) -> CamResult:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ModelError(
                f"images must have shape (B, {', '.join(map(str, self.input_shape))}). "
                f"Received: shape={images.shape}"
            )
        n = len(images)
        tgt: np.ndarray
        if targets is None:
            tgt = np.full(n, -1, np.int32)
        elif np.isscalar(targets):
            tgt = np.full(n, int(targets), np.int32)  # type: ignore[arg-type]
        else:
            tgt = np.asarray(targets, np.int32)
            if tgt.shape != (n,):
                raise ModelError(
                    f"targets must be one int per image ({n}). Received: shape={tgt.shape}"
                )
        n_classes = int(self.model.outputs[0].shape[-1])
        if np.any(tgt >= n_classes):
            raise ModelError(
                f"target class index must be < {n_classes}. Received: {sorted(set(tgt.tolist()))}"
            )
        fn = self._compiled()
        step = batch_size or max(n, 1)
        parts = [fn(images[i : i + step], tgt[i : i + step]) for i in range(0, n, step)]
        if not parts:
            parts = [fn(images, tgt)]

        def cat(key: str) -> np.ndarray:
            return np.concatenate([p[key] for p in parts], axis=0)

        return CamResult(
            heatmaps=cat("heatmaps"),
            probabilities=cat("probabilities"),
            scores=cat("scores"),
            targets=cat("targets").astype(np.int64),
            layer_maps=tuple(cat(f"layer_{i}") for i in range(len(self.target_layers))),
            layers=self.target_layers,
        )
