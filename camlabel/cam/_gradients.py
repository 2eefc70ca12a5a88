"""The only backend-specific code of camlabel's CAM: gradients and compilation.

Keras 3 has no backend-agnostic gradient API, so this module takes the gradient of the
target class score with respect to the CAM layers' activations — TensorFlow through
``tf.GradientTape`` inside a ``tf.function`` with a fixed input signature, JAX through
``jax.grad`` inside ``jax.jit`` — and hands activations, gradients and scores to a
backend-agnostic ``post`` function written with ``keras.ops`` (the CAM method's weight
hook, ReLU, upsampling and fusion), all inside the same compiled function.

The model is split at the CAM layers into ``features`` (input -> activations) and
``head`` (activations -> score, probabilities). The gradient then only flows back
through the (small) head, and the backbones run forward once per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

# post(activations, grads, scores, probabilities, targets) -> dict of named outputs
PostFn = Callable[[list[Any], list[Any], Any, Any, Any], dict[str, Any]]
CamFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]

BACKENDS = ("tensorflow", "jax")


def compile_cam_function(
    features: keras.Model, head: keras.Model, post: PostFn, input_shape: tuple[int, ...]
) -> CamFn:
    """A compiled ``fn(images (B,H,W,C) float32, targets (B,) int32) -> dict of numpy arrays``.

    ``targets[i] < 0`` means "the predicted class of image i". ``head`` must return
    ``[scores, probabilities]``; the gradient is taken of ``scores[i, target_i]``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow(features, head, post, input_shape)
    if backend == "jax":
        return _jax(features, head, post)
    from camlabel.errors import ModelError

    raise ModelError(
        f"Grad-CAM supports the Keras backends {list(BACKENDS)}. Received: KERAS_BACKEND={backend!r}",
        hint="set KERAS_BACKEND=tensorflow (default) or jax",
    )


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


def _tensorflow(
    features: keras.Model, head: keras.Model, post: PostFn, input_shape: tuple[int, ...]
) -> CamFn:
    import tensorflow as tf

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *input_shape], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def fn(images: Any, targets: Any) -> dict[str, Any]:
        acts = _as_list(features(images, training=False))
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(acts)
            scores, probs = head(acts if len(acts) > 1 else acts[0], training=False)
            predicted = tf.argmax(scores, axis=-1, output_type=tf.int32)
            tgt = tf.where(targets < 0, predicted, targets)
            # Each image's score depends on its own activations only (inference mode), so
            # one gradient of the batch sum gives every image's own gradient.
            total = tf.reduce_sum(tf.gather(scores, tgt, axis=1, batch_dims=1))
        grads = tape.gradient(total, acts)
        return post(acts, grads, scores, probs, tgt)

    def run(images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        out = fn(tf.convert_to_tensor(images, tf.float32), tf.convert_to_tensor(targets, tf.int32))
        return {k: v.numpy() for k, v in out.items()}

    return run


def _jax(features: keras.Model, head: keras.Model, post: PostFn) -> CamFn:
    import jax
    import jax.numpy as jnp

    def fn(fvars: Any, hvars: Any, images: Any, targets: Any) -> dict[str, Any]:
        acts, _ = features.stateless_call(fvars[0], fvars[1], images, training=False)
        acts = _as_list(acts)

        def score_fn(acts: list[Any]) -> tuple[Any, tuple[Any, Any, Any]]:
            (scores, probs), _ = head.stateless_call(
                hvars[0], hvars[1], acts if len(acts) > 1 else acts[0], training=False
            )
            predicted = jnp.argmax(jax.lax.stop_gradient(scores), axis=-1).astype(jnp.int32)
            tgt = jnp.where(targets < 0, predicted, targets)
            total = jnp.sum(jnp.take_along_axis(scores, tgt[:, None], axis=1))
            return total, (scores, probs, tgt)

        grads, (scores, probs, tgt) = jax.grad(score_fn, has_aux=True)(acts)
        return post(acts, grads, scores, probs, tgt)

    jitted = jax.jit(fn)

    def variables(model: keras.Model) -> tuple[list[Any], list[Any]]:
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )

    seen = {"batch": 0}

    def run(images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        # jax.jit compiles once per shape: a short last batch is padded to the largest
        # batch seen so far instead of compiling again. Variables are read per call (cheap
        # references), so weights loaded after compilation are used.
        n = len(images)
        size = max(seen["batch"], n)
        seen["batch"] = size
        if n < size:
            images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), images.dtype)])
            targets = np.concatenate([targets, np.full(size - n, -1, targets.dtype)])
        out = jitted(
            variables(features),
            variables(head),
            jnp.asarray(images, jnp.float32),
            jnp.asarray(targets, jnp.int32),
        )
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    return run
