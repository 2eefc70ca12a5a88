"""Run the segmenter training job (camlabel.train.segmenter_job) on this machine, in a child.

A subprocess rather than an in-process call: TensorFlow's global state (mixed-precision
policy, distribution strategy, GPU memory) stays out of the caller, a crash or an
out-of-memory kill cannot take the CLI with it, and Ctrl-C stops the child cleanly. The child
is ``python -m camlabel.train.segmenter_job`` and imports the same camlabel as this process
(see :func:`child_environment`). It prints one ``CAMLABEL_PROGRESS {json}`` line per event on
stdout; they drive a progress bar and ``on_event``. Its other output (TensorFlow logs) goes
to ``<model_dir>/train.log``.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import camlabel
from camlabel.errors import ModelError
from camlabel.progress import PROGRESS_PREFIX, progress_bar

JOB_MODULE = "camlabel.train.segmenter_job"

Event = dict[str, Any]


def child_environment(
    base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The training child's environment: ``base`` without SM_* and with this camlabel first.

    The child runs with ``python -P`` (no current directory on sys.path) and must import the
    camlabel this process imported. From site-packages (a wheel) the child finds it alone, and
    a site-packages folder on PYTHONPATH would go before the standard library; from anywhere
    else (an editable install, a source tree on PYTHONPATH or in the current directory) the
    folder holding camlabel/ goes first on the child's PYTHONPATH.
    """
    env = {**base, "TF_CPP_MIN_LOG_LEVEL": base.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    # Locally the SageMaker variables must not leak in from a surrounding shell.
    for key in [k for k in env if k.startswith("SM_")]:
        del env[key]
    root = str(Path(camlabel.__file__).resolve().parents[1])
    site_dirs = {
        str(Path(d).resolve()) for d in [*site.getsitepackages(), site.getusersitepackages()]
    }
    if root not in site_dirs:
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env["PYTHONPATH"] = os.pathsep.join([root, *rest])
    env.update(child_thread_env(base))
    env.update(extra or {})
    return env


def child_thread_env(base: Mapping[str, str]) -> dict[str, str]:
    """Thread-pool sizes for the training child, so its pools do not oversubscribe the cores.

    Left alone, TensorFlow sizes its intra-op AND inter-op pools to the core count it sees
    (in a container with a CPU quota: the HOST's cores, see :func:`usable_cores`), oneDNN /
    OpenMP / BLAS add their own, and OpenCV a pool per loader thread: on a 2-core machine
    dozens of runnable threads, and the time goes into switching between them
    (benchmarks/seg_threads.py). Here: intra-op = cores (the convolutions use every core),
    inter-op = 1 (the training step is one chain of ops), OpenMP / BLAS pools of 1, OpenCV
    single-threaded inside the loader threads (``CAMLABEL_CV2_THREADS``). Variables already
    set in ``base`` win; ``CAMLABEL_THREADS=0`` turns all of this off.
    """
    if base.get("CAMLABEL_THREADS", "").strip() == "0":
        return {}
    cores = str(usable_cores())
    wanted = {
        "TF_NUM_INTRAOP_THREADS": cores,
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CAMLABEL_CV2_THREADS": "1",
    }
    return {k: v for k, v in wanted.items() if not base.get(k)}


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU
    quota (``cpu.max``: a container limited to 2 CPUs on a 64-core host sees 64 in
    ``os.cpu_count()``, and TensorFlow sizes its pools by that)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def hyperparameter_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """``{"batch-size": 30}`` -> ``["--batch-size", "30"]`` (what SageMaker does too)."""
    out: list[str] = []
    for key, value in hyperparameters.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        out += [f"--{key}", str(value)]
    return out


def run_training(
    data_dir: Path,
    model_dir: Path,
    hyperparameters: Mapping[str, Any],
    *,
    on_event: Callable[[Event], None] | None = None,
    progress: bool = True,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train in a child Python; returns metrics.json of the finished run.

    Args:
        data_dir: the export folder (index.csv, images/, masks/).
        model_dir: where model.keras, metrics.json, curves and train.log are written.
        hyperparameters: passed as ``--name value`` (see segmenter_job.HYPERPARAMETERS).
        on_event: called with every progress event (device, data, epoch, done).
        progress: show an epoch progress bar on stderr.
        env: extra environment variables for the child (e.g. KERAS_BACKEND).

    Raises:
        ModelError: the child exited non-zero (the message quotes the end of train.log).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    log_path = model_dir / "train.log"
    cmd = [
        sys.executable,
        "-u",
        "-P",
        "-m",
        JOB_MODULE,
        "--train",
        str(data_dir),
        "--model-dir",
        str(model_dir),
        *hyperparameter_args(hyperparameters),
    ]
    child_env = child_environment(os.environ, env)
    tail: deque[str] = deque(maxlen=40)
    total = int(hyperparameters.get("epochs") or 0) or None
    with (
        log_path.open("w", encoding="utf-8") as log,
        progress_bar(total=total, desc="train-seg", enabled=progress, unit="epoch") as bar,
    ):
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if not line.startswith(PROGRESS_PREFIX):
                    if line.strip():
                        tail.append(line.rstrip())
                    continue
                try:
                    event = json.loads(line[len(PROGRESS_PREFIX) :])
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "epoch":
                    bar.update(1)
                    shown = {k: event[k] for k in ("loss", "dice", "val_dice") if k in event}
                    bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
                if on_event is not None:
                    on_event(event)
            code = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if code != 0:
        raise ModelError(
            f"segmenter training failed (exit code {code}); last lines of {log_path}:\n  "
            + "\n  ".join(list(tail)[-12:]),
            hint=f"read the whole log in {log_path}",
        )
    metrics_path = model_dir / "metrics.json"
    if not metrics_path.exists():
        raise ModelError(f"training finished but wrote no {metrics_path}", hint=f"see {log_path}")
    metrics: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8"))
    return metrics
