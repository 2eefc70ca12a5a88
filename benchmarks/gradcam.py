"""Fused, batched Grad-CAM of the three-backbone ensemble vs the usual ways, side by side.

    .venv/bin/python benchmarks/gradcam.py                      # 1,000 images at 224 px (TensorFlow)
    .venv/bin/python benchmarks/gradcam.py --images 128         # a shorter run
    python benchmarks/gradcam.py --backend jax --batch-size 64  # JAX (e.g. on a GPU machine)

Modes (all at the same input size, ensemble built with random weights; speed does not depend on
the weights):

- ``fused``: camlabel's GradCAM — one compiled function (tf.function with a fixed input
  signature / jax.jit) per batch computing all three backbones' CAMs, upsampling and fusion.
- ``naive``: (a) the tutorial way — eager, one image at a time, one GradientTape per backbone
  (three forward + backward passes per image).
- ``tfkv``: (b) tf-keras-vis ``Gradcam`` called once per backbone per batch, then fused.
- ``floor``: (c) one compiled plain forward + backward pass of the ensemble (gradient of the
  target logits with respect to the input image), same batch size — the cost of any
  gradient-based explanation. ``forward`` (compiled inference only) is reported for reference.

Peak RSS is sampled (every 20 ms) during each mode. ``fused`` streams: each batch's
heatmaps are reduced and dropped, as ``camlabel gradcam`` writes them out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_bytes() -> int:
    """Current RSS (psutil; else /proc/self/statm, Linux)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak_gb`` after the ``with`` block."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_gb(self) -> float:
        return self.peak / 2**30


def make_images(n_pool: int, size: int, seed: int) -> np.ndarray:
    """A pool of phantom radiographs as model inputs (cycled to reach --images); uniform noise
    where OpenCV is not installed (e.g. a bare GPU machine: speed does not depend on content)."""
    try:
        from camlabel.imaging import to_model_input
        from camlabel.phantoms import render_phantom
    except ImportError:
        return (
            np.random.default_rng(seed).uniform(0, 255, (n_pool, size, size, 3)).astype(np.float32)
        )

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_pool):
        img, _, _ = render_phantom(
            np.random.default_rng(int(rng.integers(1 << 31))),
            ("covid", "pneumonia", "normal")[i % 3],
            size,
            int(size * 0.9),
        )
        out.append(to_model_input(img, size)[0])
    return np.stack(out)


def batches(pool: np.ndarray, n: int, bs: int) -> Any:
    for start in range(0, n, bs):
        idx = np.arange(start, min(start + bs, n)) % len(pool)
        yield pool[idx]


def timed(name: str, n: int, fn: Callable[[], None]) -> dict[str, Any]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    res = {
        "mode": name,
        "images": n,
        "seconds": round(dt, 2),
        "images_per_s": round(n / dt, 3),
        "peak_rss_gb": round(mem.peak_gb, 2),
    }
    print(
        f"  {name:<8} {n:>5} images  {dt:8.1f} s  {n / dt:8.2f} img/s  peak RSS {mem.peak_gb:5.2f} GB",
        flush=True,
    )
    return res


def run_fused(model: Any, pool: np.ndarray, n: int, bs: int) -> tuple[dict[str, Any], float]:
    from camlabel.cam import GradCAM

    cam = GradCAM(model)
    t0 = time.perf_counter()
    cam(pool[:bs])  # trace / compile once
    warm = time.perf_counter() - t0
    checksum = [0.0]

    def go() -> None:
        for x in batches(pool, n, bs):
            checksum[0] += float(cam(x).heatmaps.mean())  # stream: reduce and drop

    return timed("fused", n, go), warm


def run_naive(model: Any, pool: np.ndarray, n: int) -> dict[str, Any]:
    import tensorflow as tf

    size = model.input_shape[1]
    grad_models = [
        tf.keras.Model(
            model.inputs, [model.get_layer(name).output, model.get_layer("logits").output]
        )
        for name in model.cam_layers
    ]

    def one(img: np.ndarray) -> np.ndarray:
        x = tf.convert_to_tensor(img[None])
        maps = []
        for gm in grad_models:
            with tf.GradientTape() as tape:
                conv, logits = gm(x)
                score = logits[:, int(tf.argmax(logits[0]))]
            grads = tape.gradient(score, conv)
            w = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            m = tf.nn.relu(tf.reduce_sum(w * conv, axis=-1))[..., None]
            m = tf.image.resize(m, (size, size))[0, ..., 0].numpy()
            maps.append((m - m.min()) / (m.max() - m.min() + 1e-7))
        return np.mean(maps, axis=0)

    one(pool[0])  # warm-up (first eager call builds kernels)

    def go() -> None:
        for i in range(n):
            one(pool[i % len(pool)])

    return timed("naive", n, go)


def run_tfkv(model: Any, pool: np.ndarray, n: int, bs: int) -> dict[str, Any]:
    import tensorflow as tf
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    logit_model = tf.keras.Model(model.inputs, model.get_layer("logits").output)
    vis = Gradcam(logit_model, clone=False)

    def batch_cam(x: np.ndarray) -> np.ndarray:
        targets = np.argmax(logit_model(x, training=False).numpy(), axis=1)
        maps = [
            vis(
                CategoricalScore(list(targets)),
                x,
                penultimate_layer=name,
                seek_penultimate_conv_layer=False,
            )
            for name in model.cam_layers
        ]
        return np.mean(maps, axis=0)

    batch_cam(pool[:bs])  # warm-up

    def go() -> None:
        for x in batches(pool, n, bs):
            batch_cam(x)

    return timed("tfkv", n, go)


def run_floor(model: Any, pool: np.ndarray, n: int, bs: int, backend: str) -> list[dict[str, Any]]:
    size = model.input_shape[1]
    if backend == "tensorflow":
        import tensorflow as tf

        logit_model = tf.keras.Model(model.inputs, model.get_layer("logits").output)

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def fwd_bwd(x: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = logit_model(x, training=False)
                score = tf.reduce_sum(tf.reduce_max(logits, axis=1))
            return tape.gradient(score, x)

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def fwd(x: Any) -> Any:
            return logit_model(x, training=False)

        def call_fb(x: np.ndarray) -> None:
            fwd_bwd(tf.convert_to_tensor(x)).numpy()

        def call_f(x: np.ndarray) -> None:
            fwd(tf.convert_to_tensor(x)).numpy()
    else:
        import jax
        import jax.numpy as jnp
        import keras

        logit_model = keras.Model(model.inputs, model.get_layer("logits").output)
        tv = [v.value for v in logit_model.trainable_variables]
        ntv = [v.value for v in logit_model.non_trainable_variables]

        def score(x: Any) -> Any:
            logits, _ = logit_model.stateless_call(tv, ntv, x, training=False)
            return jnp.sum(jnp.max(logits, axis=1))

        grad = jax.jit(jax.grad(score))
        fwd_j = jax.jit(lambda x: logit_model.stateless_call(tv, ntv, x, training=False)[0])

        def call_fb(x: np.ndarray) -> None:
            np.asarray(grad(jnp.asarray(x)))

        def call_f(x: np.ndarray) -> None:
            np.asarray(fwd_j(jnp.asarray(x)))

    out = []
    for name, call in (("floor", call_fb), ("forward", call_f)):
        call(pool[:bs])  # trace / compile

        def go(call: Callable[[np.ndarray], None] = call) -> None:
            for x in batches(pool, n, bs):
                if len(x) < bs:  # keep one compiled shape (JAX)
                    x = np.concatenate([x, pool[: bs - len(x)]])
                call(x)

        out.append(timed(name, n, go))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--images", type=int, default=1000, help="images for the fused mode and the floor [1000]"
    )
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    ap.add_argument(
        "--floor-images",
        type=int,
        default=None,
        help="images for the floor/forward passes [same as --images]",
    )
    ap.add_argument(
        "--naive-images", type=int, default=8, help="images for the eager one-at-a-time loop [8]"
    )
    ap.add_argument("--tfkv-images", type=int, default=32, help="images for tf-keras-vis [32]")
    ap.add_argument(
        "--tfkv-batch-size",
        type=int,
        default=8,
        help="tf-keras-vis batch (eager: memory grows fast) [8]",
    )
    ap.add_argument("--skip", default="", help="comma-separated modes to skip: naive,tfkv,floor")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    from camlabel.models.ensemble import build_ensemble

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.backend == "jax":
        skip |= {"naive", "tfkv"}  # TensorFlow-only baselines
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    model = build_ensemble(image_size=args.size)
    print(
        f"ensemble {model.count_params() / 1e6:.1f} M params built in {time.perf_counter() - t0:.1f} s; backend {keras.backend.backend()}",
        flush=True,
    )
    pool = make_images(min(64, max(args.batch_size, 8)), args.size, args.seed)
    results: dict[str, Any] = {}
    fused, warm = run_fused(model, pool, args.images, args.batch_size)
    results["fused"] = fused | {"batch_size": args.batch_size, "compile_s": round(warm, 1)}
    print(f"  (fused compile/trace: {warm:.1f} s, not counted)", flush=True)
    if "floor" not in skip:
        for r in run_floor(
            model, pool, args.floor_images or args.images, args.batch_size, args.backend
        ):
            results[r["mode"]] = r | {"batch_size": args.batch_size}
    if "tfkv" not in skip:
        results["tfkv"] = run_tfkv(model, pool, args.tfkv_images, args.tfkv_batch_size) | {
            "batch_size": args.tfkv_batch_size
        }
    if "naive" not in skip:
        results["naive"] = run_naive(model, pool, args.naive_images) | {"batch_size": 1}

    f = results["fused"]["images_per_s"]
    ratios = {}
    for name, label in (
        ("naive", "fused vs naive eager loop (goal >= 5x)"),
        ("tfkv", "fused vs tf-keras-vis per backbone (goal >= 1.5x)"),
    ):
        if name in results:
            ratios[name] = round(f / results[name]["images_per_s"], 2)
            print(f"{label}: {ratios[name]:.2f}x")
    if "floor" in results:
        ratios["floor"] = round(results["floor"]["images_per_s"] / f, 2)
        print(f"fused time / plain forward+backward time (goal <= 1.5x): {ratios['floor']:.2f}x")
    if "forward" in results:
        ratios["forward"] = round(results["forward"]["images_per_s"] / f, 2)
        print(f"fused time / forward-only time: {ratios['forward']:.2f}x")
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "size": args.size,
        "backend": args.backend,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "results": results,
        "ratios": ratios,
    }
    try:
        import jax

        summary["machine"]["jax_devices"] = (
            [str(d) for d in jax.devices()] if args.backend == "jax" else None
        )
    except ImportError:
        pass
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["ratios"]))


if __name__ == "__main__":
    main()
