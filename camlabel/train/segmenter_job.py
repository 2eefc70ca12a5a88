"""Train the FC-DenseNet103 segmenter: the training job, local and on SageMaker.

Local::

    python -m camlabel.train.segmenter_job --train DATA --model-dir OUT --epochs 40 --batch-size 30

(``python training/train_seg.py ...`` is the same, through the thin entry script.) On SageMaker
``training/train_seg.py`` is the entry script (camlabel.train.sagemaker uploads it with a copy
of the camlabel modules this one imports): inputs come from ``SM_CHANNEL_TRAIN``, the model
goes to ``SM_MODEL_DIR`` (tarred into model.tar.gz), curves and metrics also to
``SM_OUTPUT_DATA_DIR``; hyperparameters arrive as ``--name value`` arguments (and in
``SM_HPS`` / /opt/ml/input/config/hyperparameters.json, read as defaults). Explicit
arguments win over environment values, which win over built-in defaults.

DATA layout: ``index.csv`` (id, patient_id, split, label, mask_version) + ``images/<id>.png``
+ ``masks/<id>.png``; see camlabel/models/seg_data.py. Rows whose ``split`` is ``val`` form
the validation set; when no row names a split, a patient-grouped split is drawn
(``--val-fraction``, ``--seed``), so no patient is on both sides.

Writes to the model dir: ``model.keras`` (best validation Dice), ``model_info.json`` (how to
feed it), ``metrics.json``, ``history.csv`` and ``curves.png`` (Dice and IoU per epoch),
``split.csv``. Checkpoints (best model + a backup to resume an interrupted run) go to
``--checkpoint-dir`` (default /opt/ml/checkpoints on SageMaker, else MODEL_DIR/checkpoints).

Progress: one line per epoch on stdout, ``CAMLABEL_PROGRESS {json}``, which
camlabel.train.local turns into a progress bar. Only keras, numpy, cv2 and camlabel modules
of the same kind are imported (the SageMaker bundle carries exactly those), so it runs in the
AWS TensorFlow training image.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlabel.config import DEFAULT_SEED
from camlabel.fileio import atomic_write_json
from camlabel.progress import PROGRESS_PREFIX

if TYPE_CHECKING:
    import numpy as np

LR_SCHEDULES = ("constant", "cosine")
HPS_JSON = Path("/opt/ml/input/config/hyperparameters.json")

# name -> (type, default, help). Dashes and underscores are both accepted on the command line.
HYPERPARAMETERS: dict[str, tuple[type, Any, str]] = {
    "epochs": (int, 40, "training epochs (the paper: 40)"),
    "batch-size": (int, 30, "global batch size, split across GPUs (the paper: 30)"),
    "lr": (float, 1e-4, "Adam learning rate (the paper: 1e-4)"),
    "lr-schedule": (
        str,
        "constant",
        "constant (the paper) or cosine (decay to 1 %% of lr over the run: steadier on few masks)",
    ),
    "image-size": (int, 256, "letterbox side in pixels"),
    "val-fraction": (float, 0.2, "validation share of patients when index.csv has no split"),
    "seed": (int, DEFAULT_SEED, "seed of the split, augmentation and weights"),
    "patience": (int, 10, "early stopping: epochs without a better val Dice"),
    "augment": (int, 1, "1: rotation/scale/shift/intensity augmentation; 0: none"),
    "threshold": (float, 0.5, "probability threshold of the Dice/IoU metrics"),
    "arch": (str, "fc-densenet103", "named Tiramisu size (fc-densenet103/67/56, tiny)"),
    "growth-rate": (int, 0, "Tiramisu growth rate (0: the arch's)"),
    "initial-filters": (int, 0, "Tiramisu first-convolution filters (0: the arch's)"),
    "down-blocks": (
        str,
        "",
        "Tiramisu down-path block sizes, e.g. 4,5,7,10,12 (empty: the arch's)",
    ),
    "bottleneck-layers": (int, 0, "Tiramisu bottleneck layers (0: the arch's)"),
    "stem-stride": (
        int,
        1,
        "1 (the paper): full-resolution network; 2 or 4: strided first convolution and "
        "bilinear logits, ~stride^2 less compute",
    ),
    "dropout": (float, 0.2, "Tiramisu dropout"),
    "bn-recalibrate": (
        int,
        1,
        "1: before each validation and at the end, set the BatchNorm statistics from the "
        "un-augmented training images with dropout off (see recalibrate_batchnorm); 0: keep "
        "the training-time moving averages",
    ),
    "bn-recalibrate-images": (
        int,
        64,
        "training images the recalibration before each validation uses (it runs every epoch; "
        "the final one, before saving, uses up to 256)",
    ),
    "backup-every": (
        int,
        5,
        "epochs between crash-recovery backups (an interrupted run resumes from the last one; "
        "each backup costs ~0.8 s on a 2-core CPU for the demo's model)",
    ),
    "mixed-precision": (str, "auto", "auto (on when a GPU is visible), on, off"),
    "workers": (int, 4, "data-loading threads"),
    "steps-per-execution": (int, 1, "batches per compiled step (raise on fast GPUs)"),
    "eager": (int, 0, "1: run eagerly (tests: avoids tracing cost on tiny models)"),
    "max-train-images": (int, 0, "use at most this many training images (0: all)"),
    "init-weights": (
        str,
        "",
        "a model.keras of the same Tiramisu size whose weights training starts from "
        "(fine-tuning a previous round's segmenter); empty: random initialisation",
    ),
}


def _env_hyperparameters(env: dict[str, str]) -> dict[str, Any]:
    """Hyperparameters SageMaker wrote to SM_HPS or hyperparameters.json (keys normalised)."""
    raw: dict[str, Any] = {}
    if HPS_JSON.exists():
        with contextlib.suppress(json.JSONDecodeError):
            raw.update(json.loads(HPS_JSON.read_text()))
    if env.get("SM_HPS"):
        with contextlib.suppress(json.JSONDecodeError):
            raw.update(json.loads(env["SM_HPS"]))
    out = {}
    for key, value in raw.items():
        name = key.replace("_", "-")
        if name in HYPERPARAMETERS:
            typ = HYPERPARAMETERS[name][0]
            if isinstance(value, str) and typ is not str:
                value = json.loads(value)
            out[name] = typ(value)
    return out


def parse_args(
    argv: list[str] | None = None, env: dict[str, str] | None = None
) -> argparse.Namespace:
    env = dict(os.environ if env is None else env)
    from_env = _env_hyperparameters(env)
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--train", default=env.get("SM_CHANNEL_TRAIN"), help="data folder (SM_CHANNEL_TRAIN)"
    )
    p.add_argument(
        "--model-dir", "--model_dir", default=env.get("SM_MODEL_DIR"), help="SM_MODEL_DIR"
    )
    p.add_argument(
        "--output-dir",
        "--output_dir",
        default=env.get("SM_OUTPUT_DATA_DIR"),
        help="extra copy of metrics and curves (SM_OUTPUT_DATA_DIR)",
    )
    default_ckpt = (
        "/opt/ml/checkpoints" if env.get("SM_MODEL_DIR") and Path("/opt/ml").is_dir() else None
    )
    p.add_argument("--checkpoint-dir", "--checkpoint_dir", default=default_ckpt)
    for name, (typ, default, help_) in HYPERPARAMETERS.items():
        p.add_argument(
            f"--{name}",
            f"--{name.replace('-', '_')}",
            dest=name.replace("-", "_"),
            type=typ,
            default=from_env.get(name, default),
            help=f"{help_} (default: {default})",
        )
    args = p.parse_args(argv)
    if not args.train or not args.model_dir:
        p.error("--train and --model-dir are required (or SM_CHANNEL_TRAIN and SM_MODEL_DIR)")
    if args.lr_schedule not in LR_SCHEDULES:
        p.error(
            f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}. Received: {args.lr_schedule!r}"
        )
    return args


# -- devices --------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def device_description(gpus: list[str]) -> str:
    import keras

    where = f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else "CPU (no GPU visible)"
    return f"{where}; keras {keras.__version__}, backend {keras.backend.backend()}"


class _Distribution:
    """Scope that builds the model for all GPUs (MirroredStrategy / DataParallel) or one device."""

    def __init__(self, gpus: list[str]) -> None:
        import contextlib

        import keras

        self.scope: Any = contextlib.nullcontext()
        self.kind = "single-device"
        if len(gpus) > 1:
            backend = keras.backend.backend()
            if backend == "tensorflow":
                import tensorflow as tf

                strategy = tf.distribute.MirroredStrategy()
                self.scope = strategy.scope()
                self.kind = f"tf.distribute.MirroredStrategy({strategy.num_replicas_in_sync})"
            elif backend == "jax":
                devices = keras.distribution.list_devices("gpu")
                keras.distribution.set_distribution(
                    keras.distribution.DataParallel(devices=devices)
                )
                self.kind = f"keras.distribution.DataParallel({len(devices)})"


def model_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Tiramisu arguments: the named ``--arch``, then any explicit size on top."""
    from camlabel.models.tiramisu import architecture

    kw = architecture(args.arch)
    kw.pop("up_blocks", None)  # mirrored from down_blocks
    if args.growth_rate:
        kw["growth_rate"] = args.growth_rate
    if args.initial_filters:
        kw["initial_filters"] = args.initial_filters
    if str(args.down_blocks).strip():
        kw["down_blocks"] = [int(v) for v in str(args.down_blocks).split(",") if v.strip()]
    if args.bottleneck_layers:
        kw["bottleneck_layers"] = args.bottleneck_layers
    kw["down_blocks"] = list(kw["down_blocks"])
    kw["dropout"] = args.dropout
    if args.stem_stride != 1:
        kw["stem_stride"] = args.stem_stride
    return {"input_channels": 1, "num_classes": 1, **kw}


# -- data ---------------------------------------------------------------------------
def split_rows(rows: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any], str]:
    """(train, val, how): the index's own split, else a patient-grouped one."""
    named = {r.split for r in rows}
    if "val" in named or "train" in named:
        train = [r for r in rows if r.split != "val"]
        val = [r for r in rows if r.split == "val"]
        return train, val, "index.csv"
    if val_fraction <= 0:
        return list(rows), [], "none"
    from camlabel.models.data import grouped_stratified_split

    labels = [r.label or "x" for r in rows]
    groups = [r.patient_id for r in rows]
    tr_idx, va_idx = grouped_stratified_split(labels, groups, val_fraction, seed)
    return [rows[i] for i in tr_idx], [rows[i] for i in va_idx], "patient-grouped"


def load_rows(root: Path, rows: list[Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, mask codes) letterboxed to ``size``, uint8 (N x size x size; N may be 0)."""
    import numpy as np

    from camlabel.models.seg_data import load_pair

    imgs = np.zeros((len(rows), size, size), np.uint8)
    codes = np.zeros((len(rows), size, size), np.uint8)
    for i, r in enumerate(rows):
        imgs[i], codes[i] = load_pair(root, r.id, size)
    return imgs, codes


# -- reporting ------------------------------------------------------------------------
def _recalibration_batches(
    images: np.ndarray, codes: np.ndarray, batch: int, seed: int, limit: int = 256
) -> list[np.ndarray]:
    """Model-ready, un-augmented batches of up to ``limit`` training images (seeded pick)."""
    import numpy as np

    from camlabel.models.seg_data import SegBatches

    idx = np.random.default_rng(seed).permutation(len(images))[:limit]
    idx.sort()
    ds = SegBatches(images[idx], codes[idx], batch)
    return [ds[i][0] for i in range(len(ds))]


def _backup_callback(keras: Any, path: Path, every: int) -> Any:
    """BackupAndRestore that writes every ``every`` epochs and after the last one.

    A resumed run redoes at most ``every - 1`` epochs (read_history keeps each epoch once).
    """

    class EveryNEpochs(keras.callbacks.BackupAndRestore):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            last = epoch + 1 >= int(self.params.get("epochs") or 0)
            if (epoch + 1) % every == 0 or last:
                super().on_epoch_end(epoch, logs)

    return EveryNEpochs(str(path))


def emit(event: dict[str, Any]) -> None:
    print(PROGRESS_PREFIX + json.dumps(event, sort_keys=True), flush=True)


def _progress_callback(total_epochs: int, n_train: int) -> Any:
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.t0 = 0.0
            self.images_per_s: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            dt = time.perf_counter() - self.t0
            self.images_per_s.append(n_train / dt if dt > 0 else 0.0)
            metrics = {
                k: round(float(v), 5) for k, v in (logs or {}).items() if k != "learning_rate"
            }
            emit(
                {
                    "event": "epoch",
                    "epoch": epoch + 1,
                    "epochs": total_epochs,
                    "seconds": round(dt, 2),
                    **metrics,
                }
            )

    return EpochProgress()


def learning_rate(args: argparse.Namespace, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate: a float, or a cosine decay over all training steps."""
    import keras

    if args.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            args.lr, decay_steps=max(1, args.epochs * steps_per_epoch), alpha=0.01
        )
    return float(args.lr)


def read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from Keras's CSVLogger file, robust to an interrupted run.

    A run killed mid-write and resumed (BackupAndRestore) leaves NUL padding or a torn line
    and repeats the epochs it redoes: unparsable rows are skipped and, per epoch, the last
    row wins, so the curves show each epoch once.
    """
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace").replace("\x00", "")
    by_epoch: dict[int, dict[str, float]] = {}
    for r in csv.DictReader(line for line in text.splitlines() if line.strip()):
        try:
            row = {k: float(v) for k, v in r.items() if k and v not in (None, "")}
            epoch = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            continue
        by_epoch[epoch] = row
    out: dict[str, list[float]] = {}
    for epoch in sorted(by_epoch):
        for k, v in by_epoch[epoch].items():
            out.setdefault(k, []).append(v)
    return out


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Dice and IoU per epoch (train thin, validation thick) as a PNG, drawn with cv2."""
    import cv2
    import numpy as np

    w, h, ml, mr, mt, mb = 760, 440, 60, 170, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    pw, ph = w - ml - mr, h - mt - mb
    epochs = len(history.get("epoch", []))
    n = max(epochs, 2)
    for i in range(6):
        y = mt + ph - int(ph * i / 5)
        cv2.line(img, (ml, y), (ml + pw, y), (225, 225, 225), 1)
        cv2.putText(
            img, f"{i / 5:.1f}", (ml - 38, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (60, 60, 60), 1
        )
    cv2.rectangle(img, (ml, mt), (ml + pw, mt + ph), (90, 90, 90), 1)
    for e in range(1, n + 1, max(1, n // 10)):
        x = ml + int(pw * (e - 1) / (n - 1))
        cv2.putText(
            img, str(e), (x - 6, mt + ph + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (60, 60, 60), 1
        )
    cv2.putText(
        img, "epoch", (ml + pw // 2 - 20, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1
    )
    cv2.putText(img, title, (ml, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
    series = [  # (column, BGR colour, thick)
        ("dice", (200, 90, 30), False),
        ("val_dice", (200, 90, 30), True),
        ("iou", (40, 140, 40), False),
        ("val_iou", (40, 140, 40), True),
    ]
    ly = mt + 10
    for key, color, solid in series:
        vals = history.get(key)
        if not vals:
            continue
        pts = [
            (ml + int(pw * i / (n - 1)), mt + ph - int(ph * min(max(v, 0.0), 1.0)))
            for i, v in enumerate(vals)
        ]
        for a, b in itertools.pairwise(pts):
            cv2.line(img, a, b, color, 2 if solid else 1, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 2, color, -1)
        cv2.line(img, (ml + pw + 12, ly), (ml + pw + 40, ly), color, 2 if solid else 1)
        cv2.putText(img, key, (ml + pw + 46, ly + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        ly += 22
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj)


# -- main -----------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one training; returns the final metrics (also written to metrics.json)."""
    import keras
    import numpy as np

    from camlabel.models.seg_data import Augment, SegBatches, read_index
    from camlabel.models.seg_metrics import DiceBCELoss, DiceCoefficient, IoUCoefficient
    from camlabel.models.tiramisu import Tiramisu, recalibrate_batchnorm

    started = time.time()
    data = Path(args.train)
    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else model_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    gpus = visible_gpus()
    mp = args.mixed_precision == "on" or (args.mixed_precision == "auto" and bool(gpus))
    if mp:
        keras.mixed_precision.set_global_policy("mixed_float16")
    device = device_description(gpus)
    dist = _Distribution(gpus)
    emit({"event": "device", "device": device, "mixed_precision": mp, "distribution": dist.kind})

    rows = read_index(data)
    train_rows, val_rows, split_how = split_rows(rows, args.val_fraction, args.seed)
    if args.max_train_images > 0:
        train_rows = train_rows[: args.max_train_images]
    if not train_rows:
        raise SystemExit(
            f"no training images in {data} (all {len(rows)} rows are in the validation split)"
        )
    with (model_dir / "split.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "patient_id", "split", "mask_version"])
        for name, part in (("train", train_rows), ("val", val_rows)):
            for r in part:
                w.writerow([r.id, r.patient_id, name, r.mask_version])
    size = args.image_size
    x_tr, c_tr = load_rows(data, train_rows, size)
    x_va, c_va = load_rows(data, val_rows, size)
    emit(
        {
            "event": "data",
            "train": len(train_rows),
            "val": len(val_rows),
            "split": split_how,
            "image_size": size,
        }
    )

    batch = max(1, min(args.batch_size, len(train_rows)))
    aug = Augment() if args.augment else None
    # more loader threads than cores only queue up behind each other (see child_thread_env)
    threads = max(1, args.workers)
    if os.environ.get("CAMLABEL_THREADS", "").strip() != "0":
        from camlabel.train.local import usable_cores

        threads = min(threads, usable_cores())
    if os.environ.get("CAMLABEL_CV2_THREADS", "").strip().isdigit():
        import cv2

        cv2.setNumThreads(int(os.environ["CAMLABEL_CV2_THREADS"]))
    train_ds = SegBatches(
        x_tr, c_tr, batch, augment=aug, shuffle=True, seed=args.seed, workers=threads
    )
    val_ds = SegBatches(x_va, c_va, batch, workers=threads) if len(x_va) else None
    model_kwargs = model_arguments(args)
    with dist.scope:
        model = Tiramisu(**model_kwargs, name="tiramisu")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate(args, len(train_ds))),
            loss=DiceBCELoss(),
            metrics=[DiceCoefficient(args.threshold), IoUCoefficient(args.threshold)],
            run_eagerly=bool(args.eager),
            steps_per_execution=max(1, args.steps_per_execution),
        )
        if str(args.init_weights).strip():
            model(np.zeros((1, size, size, 1), np.float32))  # build before loading
            with warnings.catch_warnings():  # a fresh optimizer is the point of fine-tuning
                warnings.filterwarnings("ignore", message="Skipping variable loading for optim")
                model.load_weights(str(args.init_weights))
            emit({"event": "init", "weights": str(args.init_weights)})
    # a small seeded subset before each validation (every epoch: ~25 % of an epoch's time with
    # all images on a 2-core CPU), the larger one for the statistics the saved model keeps;
    # neither is built when recalibration is off
    recal = {"on": bool(args.bn_recalibrate)}
    epoch_batches = final_batches = []
    if recal["on"]:
        epoch_batches = _recalibration_batches(
            x_tr, c_tr, batch, args.seed, limit=max(1, args.bn_recalibrate_images)
        )
        final_batches = _recalibration_batches(x_tr, c_tr, batch, args.seed, limit=256)

    def recalibrate(m: Any, batches: list[np.ndarray]) -> None:
        if not recal["on"]:
            return
        try:
            recalibrate_batchnorm(m, batches)
        except Exception as exc:  # e.g. a distribution strategy that refuses the eager pass
            recal["on"] = False  # the model stays usable with its training-time statistics
            emit(
                {
                    "event": "warning",
                    "message": f"BatchNorm recalibration failed ({type(exc).__name__}: "
                    f"{exc}); keeping the training-time statistics",
                }
            )

    class RecalibrateBatchNorm(keras.callbacks.Callback):
        """Inference statistics before every validation, so the best checkpoint is chosen
        (and saved) with the statistics it will be used with."""

        def on_test_begin(self, logs: Any = None) -> None:
            recalibrate(self.model, epoch_batches)

    monitor = "val_dice" if val_ds is not None else "dice"
    progress = _progress_callback(args.epochs, len(train_rows))
    best_path = ckpt_dir / "best.keras"
    resuming = (ckpt_dir / "backup").is_dir() and any((ckpt_dir / "backup").iterdir())
    callbacks = [
        _backup_callback(keras, ckpt_dir / "backup", every=max(1, args.backup_every)),
        *([RecalibrateBatchNorm()] if recal["on"] else []),
        keras.callbacks.ModelCheckpoint(
            str(best_path), monitor=monitor, mode="max", save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=args.patience, restore_best_weights=True
        ),
        # append when resuming an interrupted run, so the epochs before the crash stay
        keras.callbacks.CSVLogger(str(model_dir / "history.csv"), append=resuming),
        progress,
    ]
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, callbacks=callbacks, verbose=0)
    if best_path.exists():
        # EarlyStopping only restores weights when it stops early; the checkpoint is the best.
        model.load_weights(str(best_path))
    recalibrate(model, final_batches)
    model.save(str(model_dir / "model.keras"))

    final: dict[str, Any] = {}
    for name, x, c in (("train", x_tr, c_tr), ("val", x_va, c_va)):
        if not len(x):
            continue
        res = model.evaluate(SegBatches(x, c, batch), return_dict=True, verbose=0)
        final[name] = {k: float(v) for k, v in res.items()}
    history = read_history(model_dir / "history.csv")
    best_epoch = None
    if history.get(monitor):
        best_epoch = int(np.argmax(history[monitor])) + 1
    ips = progress.images_per_s[1:] or progress.images_per_s
    info = {
        "format": "camlabel-segmenter/1",
        "architecture": "FC-DenseNet (Tiramisu)",
        "model_config": model_kwargs,
        "parameters": int(model.count_params()),
        "image_size": size,
        "input": "gray in [0,1], letterboxed to image_size x image_size (camlabel.models.seg_data)",
        "threshold": args.threshold,
    }
    _write_json(model_dir / "model_info.json", info)
    metrics = {
        "val_dice": final.get("val", {}).get("dice"),
        "val_iou": final.get("val", {}).get("iou"),
        "train_dice": final.get("train", {}).get("dice"),
        "train_iou": final.get("train", {}).get("iou"),
        "evaluation": final,
        "best_epoch": best_epoch,
        "epochs_run": len(history.get("epoch", [])),
        "monitor": monitor,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "split": split_how,
        "train_images_per_second": float(np.median(ips)) if ips else None,
        "seconds": round(time.time() - started, 1),
        "device": device,
        "mixed_precision": mp,
        "distribution": dist.kind,
        "hyperparameters": {k: getattr(args, k.replace("-", "_")) for k in HYPERPARAMETERS},
        **info,
    }
    _write_json(model_dir / "metrics.json", metrics)
    plot_curves(
        history,
        model_dir / "curves.png",
        f"FC-DenseNet: Dice / IoU ({len(train_rows)} train, {len(val_rows)} val)",
    )
    if args.output_dir and Path(args.output_dir).resolve() != model_dir.resolve():
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "history.csv", "curves.png", "split.csv"):
            if (model_dir / name).exists():
                (out / name).write_bytes((model_dir / name).read_bytes())
    emit({"event": "done", "val_dice": metrics["val_dice"], "val_iou": metrics["val_iou"]})
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
