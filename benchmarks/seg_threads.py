"""CPU time of the demo's U-Net training child, user vs kernel, under thread settings side by side.

The demo's time goes mostly into ``python -m camlabel.train.segmenter_job`` (the U-Net). This
runs that child on the same data with the demo's model size, alternating the thread
configurations (A B A B ...) so that the load of a shared machine hits them alike, and reports
per configuration the wall time, user and system CPU seconds (``getrusage`` of the children),
the system share and the voluntary / involuntary context switches:

- ``default``: as the demo ran it before (TensorFlow's own pools: intra-op = inter-op = the
  core count; 4 data-loading threads, each free to use OpenCV's pool);
- ``pinned``: what ``camlabel.train.local`` now sets for the child on a CPU-only machine
  (``child_thread_env``): TF intra-op = cores, inter-op = 1, OpenMP/BLAS pools of 1, data
  threads = min(4, cores), OpenCV single-threaded inside the loader threads.

- ``host-sized`` (``--host-cores N``): TensorFlow's pools sized for N cores, as it sizes them
  in a container with a 2-CPU quota on an N-core host (it reads the host's core count).

Usage:
    .venv/bin/python benchmarks/seg_threads.py DATA_DIR [--epochs 2] [--repeats 2]
        [--host-cores 16] [--only pinned,host-sized] [--json OUT]

DATA_DIR: an export folder (index.csv, images/, masks/), e.g. WS/exports/seg-<run> of a demo.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_MODEL = [
    "--image-size", "128", "--batch-size", "8", "--lr", "0.002", "--lr-schedule", "cosine",
    "--stem-stride", "2", "--down-blocks", "3,4,5,5", "--bottleneck-layers", "6",
    "--growth-rate", "12", "--initial-filters", "24",
]  # fmt: skip


def _configs(host_cores: int = 0) -> dict[str, dict[str, str]]:
    from camlabel.train.local import child_thread_env

    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("TF_NUM_", "OMP_", "OPENBLAS_", "MKL_", "CAMLABEL_THREADS", "CAMLABEL_CV2")
        )
    }
    base.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)})
    # the previous behaviour: no thread settings at all (CAMLABEL_THREADS=0 turns them off)
    configs = {
        "default": {**base, "CAMLABEL_THREADS": "0"},
        "pinned": {**base, **child_thread_env({})},
    }
    if host_cores:
        # what TensorFlow does in a container with a 2-CPU quota on a host_cores-core host:
        # it sizes both pools by the host's cores (os.cpu_count() ignores the quota)
        configs["host-sized"] = {
            **base,
            "CAMLABEL_THREADS": "0",
            "TF_NUM_INTRAOP_THREADS": str(host_cores),
            "TF_NUM_INTEROP_THREADS": str(host_cores),
        }
    return configs


def _run(data: Path, env: dict[str, str], epochs: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable, "-m", "camlabel.train.segmenter_job", "--train", str(data),
            "--model-dir", out, "--epochs", str(epochs), "--patience", str(epochs), *DEMO_MODEL,
        ]  # fmt: skip
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "nvcsw": after.ru_nvcsw - before.ru_nvcsw,
        "nivcsw": after.ru_nivcsw - before.ru_nivcsw,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--host-cores",
        type=int,
        default=0,
        help="also run TensorFlow's pools sized for this many cores (a container's host)",
    )
    p.add_argument("--only", default="", help="comma-separated configurations to run")
    args = p.parse_args()
    configs = _configs(args.host_cores)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    for i in range(args.repeats):
        for name, env in configs.items():
            r = _run(args.data, env, args.epochs)
            runs[name].append(r)
            print(f"run {i + 1} {name:8s} " + " ".join(f"{k} {v:.1f}" for k, v in r.items()))
    out: dict[str, Any] = {"cores": os.cpu_count(), "epochs": args.epochs, "configs": {}}
    for name, rs in runs.items():
        tot = {k: sum(r[k] for r in rs) for k in rs[0]}
        out["configs"][name] = {
            **{k: round(v / len(rs), 2) for k, v in tot.items()},
            "sys_share": round(tot["sys_s"] / (tot["user_s"] + tot["sys_s"]), 4),
        }
    pn = out["configs"].get("pinned")
    for name, d in out["configs"].items():
        if pn is None or name == "pinned":
            continue
        out[f"pinned_vs_{name}"] = {
            "wall": round(pn["wall_s"] / d["wall_s"], 3),
            "cpu": round((pn["user_s"] + pn["sys_s"]) / (d["user_s"] + d["sys_s"]), 3),
            "sys": round(pn["sys_s"] / d["sys_s"], 3) if d["sys_s"] else None,
        }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
