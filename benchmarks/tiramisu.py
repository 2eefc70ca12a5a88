"""FC-DenseNet103 training throughput (images/s) at several input sizes, side by side in one run.

Each size gets a fresh model compiled as train_seg.py compiles it (Adam, Dice+BCE, Dice/IoU,
graph mode, jit_compile="auto"); ``--warmup`` steps are discarded (the first traces the graph),
then ``--steps`` timed train steps on random data of batch ``--batch``. Mixed precision is
used when a GPU is visible (as train_seg.py does) unless ``--precision float32``.

Usage:
    .venv/bin/python benchmarks/tiramisu.py [--sizes 128,224] [--batch 4] [--steps 5]
        [--warmup 2] [--arch fc-densenet103] [--stem-strides 1,2] [--demo-model]
        [--json OUT.json]

Prints one Markdown table row per (size, stem stride), and with several strides the speed-up
of each over stride 1 at the same size, measured in the same run. ``--demo-model`` uses the
demo's small Tiramisu (blocks 3-4-5-5, bottleneck 6, growth 12, 24 filters) instead of
``--arch``. ``KERAS_BACKEND=jax`` benchmarks JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


DEMO_MODEL = {
    "growth_rate": 12,
    "initial_filters": 24,
    "down_blocks": (3, 4, 5, 5),
    "bottleneck_layers": 6,
}


def bench_size(size: int, stride: int, args: argparse.Namespace) -> dict[str, Any]:
    import keras
    import numpy as np

    from camlabel.models.seg_metrics import DiceBCELoss, DiceCoefficient, IoUCoefficient
    from camlabel.models.tiramisu import Tiramisu, architecture

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    kw = dict(DEMO_MODEL) if args.demo_model else architecture(args.arch)
    kw.pop("up_blocks", None)
    model = Tiramisu(**kw, stem_stride=stride)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=DiceBCELoss(),
        metrics=[DiceCoefficient(), IoUCoefficient()],
    )
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, size, size, 1), dtype=np.float32)
    y = (rng.random((args.batch, size, size, 1)) > 0.7).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    step = float(np.median(times))
    return {
        "size": size,
        "stem_stride": stride,
        "batch": args.batch,
        "params": int(model.count_params()),
        "warmup_s": round(warm, 1),
        "step_s_median": round(step, 3),
        "step_s_min": round(min(times), 3),
        "images_per_s": round(args.batch / step, 2),
        "peak_rss_gib": round(rss_gib(), 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="128,224")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--arch", default="fc-densenet103")
    p.add_argument("--stem-strides", default="1")
    p.add_argument("--demo-model", action="store_true")
    p.add_argument("--precision", choices=["auto", "float32", "mixed"], default="auto")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import keras

    from camlabel.train.segmenter_job import device_description, visible_gpus

    gpus = visible_gpus()
    mixed = args.precision == "mixed" or (args.precision == "auto" and bool(gpus))
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    env = {
        "device": device_description(gpus),
        "mixed_precision": mixed,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "arch": "demo model" if args.demo_model else args.arch,
    }
    print(json.dumps(env), flush=True)
    rows = []
    print(
        "| size | stem stride | batch | params | warm-up (s) | s/step (median) | images/s "
        "| vs stride 1 | peak RSS (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    strides = [int(v) for v in args.stem_strides.split(",")]
    for size in (int(s) for s in args.sizes.split(",")):
        base = None
        for stride in strides:
            r = bench_size(size, stride, args)
            if stride == 1:
                base = r["images_per_s"]
            r["speedup_vs_stride1"] = round(r["images_per_s"] / base, 2) if base else None
            rows.append(r)
            ratio = "–" if r["speedup_vs_stride1"] is None else f"{r['speedup_vs_stride1']}x"
            print(
                f"| {r['size']} | {stride} | {r['batch']} | {r['params'] / 1e6:.2f} M | "
                f"{r['warmup_s']} | {r['step_s_median']} | {r['images_per_s']} | {ratio} | "
                f"{r['peak_rss_gib']} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
