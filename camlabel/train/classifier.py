"""Train the classifier ensemble (``camlabel train-cls``): :func:`train_classifier`.

Writes ``MODEL.keras``, its ``.json`` sidecar (settings, split, validation metrics, history,
versions) and the training curves, and records the run in the workspace.
Heavy imports (TensorFlow/Keras) happen inside the functions.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.classify import sidecar_path
from camlabel.config import DEFAULT_SEED
from camlabel.errors import UsageError
from camlabel.evaluate import headline_metrics
from camlabel.fileio import atomic_write_text
from camlabel.records import utcnow

if TYPE_CHECKING:
    from camlabel.workspace import Workspace


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_classifier` wrote and measured."""

    model_path: Path
    sidecar_path: Path
    curves_png: Path
    curves_csv: Path
    model_version: str
    epochs_run: int
    best_epoch: int | None
    val_metrics: dict[str, Any] | None
    info: dict[str, Any]


def check_training_data(
    ds: Any, data: str | Path, *, classes_given: bool, workspace: Workspace | None
) -> None:
    """Refuse, before any training, data that would train the wrong model.

    Every listed file must exist; a label outside the workspace's classes (or, without a
    workspace, the default classes) needs ``--classes`` naming it; at least two classes must
    have images (one class trains a model that can only say that class).
    """
    from camlabel.models.ensemble import DEFAULT_CLASSES

    missing = [str(p) for p in ds.paths if not Path(p).is_file()]
    if missing:
        raise UsageError(
            f"{data}: {len(missing)} listed image file(s) do not exist: "
            + ", ".join(missing[:5])
            + (" ..." if len(missing) > 5 else ""),
            hint="fix the paths in the CSV (relative to the CSV's folder) or remove those rows",
        )
    found = sorted(set(ds.labels))
    if not classes_given:
        allowed = tuple(workspace.classes) if workspace is not None else tuple(DEFAULT_CLASSES)
        unknown = [c for c in found if c not in allowed]
        if unknown:
            where = (
                f"the workspace's classes {list(allowed)}"
                if workspace
                else (f"the default classes {list(allowed)}")
            )
            raise UsageError(
                f"{data}: labels {unknown} are not among {where}",
                hint="fix the labels, or pass --classes naming every class to train (e.g. "
                f"--classes {','.join(sorted(set(allowed) | set(found)))})",
            )
    if len(found) < 2:
        raise UsageError(
            f"{data}: every image has the label {found[0]!r}; a classifier needs images of at "
            "least 2 classes",
            hint="add images of the other classes (DATA/<class>/*.png or rows in the CSV)",
        )


def check_writable(out: Path) -> None:
    """Fail before training, not after it, when ``out`` cannot be written."""
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=True):
            pass
    except OSError as exc:
        raise UsageError(
            f"--out {out} cannot be written ({exc.strerror or exc}); checked before training so "
            "that no trained model is lost",
            hint="pass --out in a folder you can write to",
        ) from None
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; pass a file name ending in .keras")


def train_classifier(
    data: str | Path,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    image_size: int = 224,
    epochs: int = 60,
    batch_size: int = 30,
    lr: float = 1e-4,
    weights: str = "none",
    freeze_fraction: float = 0.0,
    class_weights: str | Mapping[str, float] | None = "auto",
    seed: int = DEFAULT_SEED,
    val_fraction: float = 0.2,
    patience: int = 10,
    backbones: Sequence[str] | None = None,
    dropout: float = 0.5,
    bn_momentum: float | None = None,
    augment: bool = True,
    workspace: Workspace | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    run_eagerly: bool = False,
) -> TrainResult:
    """Train the ensemble on DATA (class folders or ``metadata.csv``).

    An 80/20 split (``val_fraction``) stratified by class and grouped by patient; the best
    model (lowest validation loss) is kept at ``out``; early stopping after ``patience``
    epochs without improvement. Writes ``out`` (``.keras``), ``out.json`` (settings, split,
    validation metrics, history, versions) and ``<stem>.curves.png/.csv`` beside it, and
    records the run in the workspace when one is given.
    """
    import keras

    from camlabel.models.data import grouped_stratified_split, make_tf_dataset, read_dataset
    from camlabel.models.ensemble import DEFAULT_BACKBONES, build_ensemble, parse_class_weights
    from camlabel.workspace import tool_versions

    out = Path(out)
    if out.suffix != ".keras":
        raise UsageError(f"--out must end in .keras. Received: {out}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UsageError(
            f"epochs, batch size and lr must be positive. Received: {epochs}, {batch_size}, {lr}"
        )
    ds = read_dataset(data, classes)
    check_training_data(ds, data, classes_given=classes is not None, workspace=workspace)
    check_writable(out)
    train_idx, val_idx = grouped_stratified_split(ds.labels, ds.patient_ids, val_fraction, seed)
    if len(train_idx) == 0:
        raise UsageError(f"{data}: too few images to train ({len(ds)})")
    train, val = ds.subset(train_idx), ds.subset(val_idx)
    counts = train.counts()
    cw = parse_class_weights(class_weights, ds.classes, counts)

    keras.utils.set_random_seed(seed)
    model = build_ensemble(
        ds.classes,
        image_size=image_size,
        backbones=tuple(backbones or DEFAULT_BACKBONES),
        weights=weights,
        dropout=dropout,
        freeze_fraction=freeze_fraction,
        bn_momentum=bn_momentum,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    k = len(ds.classes)
    read_failures: list[tuple[str, str]] = []
    train_ds = make_tf_dataset(
        train.paths,
        train.label_indices,
        k,
        image_size=image_size,
        batch_size=batch_size,
        training=True,
        seed=seed,
        augment=augment,
        failures=read_failures,
    )
    val_ds = (
        make_tf_dataset(
            val.paths,
            val.label_indices,
            k,
            image_size=image_size,
            batch_size=batch_size,
            training=False,
            failures=read_failures,
        )
        if len(val)
        else None
    )
    monitor = "val_loss" if val_ds is not None else "loss"
    out.parent.mkdir(parents=True, exist_ok=True)
    callbacks: list[Any] = [
        keras.callbacks.ModelCheckpoint(out, monitor=monitor, save_best_only=True, verbose=0),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=patience, restore_best_weights=True
        ),
    ]
    if on_epoch is not None:
        callbacks.append(_EpochCallback(on_epoch))
    verbose = (
        1 if progress and sys.stdout.isatty() and os.environ.get("CAMLABEL_QUIET") != "1" else 0
    )
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        class_weight=cw,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
    )
    hist = {key: [float(v) for v in values] for key, values in history.history.items()}
    epochs_run = len(hist.get("loss", []))
    best_epoch = int(np.argmin(hist[monitor])) + 1 if hist.get(monitor) else None
    if not out.exists():  # the monitored loss was never finite: keep the last weights
        model.save(out)
    # The checkpoint holds the best epoch (EarlyStopping restores it only when it stops early).
    model.load_weights(out)
    curves_png, curves_csv = _write_curves(out, hist)

    val_metrics = None
    if val_ds is not None:
        from camlabel.models.metrics import classification_metrics

        ys, ps = [], []
        for x, y in val_ds:
            ps.append(np.asarray(model.predict_on_batch(x)))
            ys.append(np.argmax(np.asarray(y), axis=1))
        if ys:
            val_metrics = classification_metrics(np.concatenate(ys), np.concatenate(ps), ds.classes)
    info: dict[str, Any] = {
        "kind": "camlabel-classifier",
        "model_version": model.model_version,
        "created_at": utcnow(),
        "classes": list(ds.classes),
        "image_size": image_size,
        "backbones": list(model.backbones),
        "cam_layers": list(model.cam_layers),
        "weights": str(weights),
        "freeze_fraction": freeze_fraction,
        "dropout": dropout,
        "bn_momentum": bn_momentum,
        "epochs": epochs,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "monitor": monitor,
        "batch_size": batch_size,
        "lr": lr,
        "augment": augment,
        "class_weights": {ds.classes[i]: w for i, w in cw.items()} if cw else None,
        "seed": seed,
        "data": str(Path(data).resolve()),
        "split": {
            "val_fraction": val_fraction,
            "seed": seed,
            "grouped_by": "patient_id" if any(p is not None for p in ds.patient_ids) else "image",
            "n_train": len(train),
            "n_val": len(val),
            "train_counts": dict(zip(ds.classes, counts, strict=True)),
            "val_counts": dict(zip(ds.classes, val.counts(), strict=True)),
            "val_files": [val.relpath(i) for i in range(len(val))],
        },
        "val_metrics": val_metrics,
        "unreadable": sorted(set(read_failures)),
        "history": hist,
        "curves_png": curves_png.name,
        "curves_csv": curves_csv.name,
        "versions": tool_versions(),
    }
    side = sidecar_path(out)
    atomic_write_text(side, json.dumps(info, indent=2, sort_keys=True) + "\n")
    if workspace is not None:
        workspace.record_run(
            "train-cls",
            {
                k: info[k]
                for k in (
                    "classes",
                    "image_size",
                    "backbones",
                    "weights",
                    "freeze_fraction",
                    "dropout",
                    "bn_momentum",
                    "epochs",
                    "batch_size",
                    "lr",
                    "augment",
                    "class_weights",
                    "data",
                )
            },
            seeds={"seed": seed},
            model=str(out.resolve()),
            model_version=model.model_version,
            result={
                "epochs_run": epochs_run,
                "best_epoch": best_epoch,
                "val_metrics": headline_metrics(val_metrics),
            },
        )
    return TrainResult(
        out,
        side,
        curves_png,
        curves_csv,
        model.model_version,
        epochs_run,
        best_epoch,
        val_metrics,
        info,
    )


class _EpochCallback:
    """Adapter: a plain function called after each epoch with the logs (Keras callback API)."""

    def __new__(cls, fn: Callable[[int, dict[str, float]], None]) -> Any:
        import keras

        class _CB(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                fn(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

        return _CB()


def _write_curves(out: Path, hist: Mapping[str, Sequence[float]]) -> tuple[Path, Path]:
    from camlabel.plots import line_chart, save_png

    stem = out.name[: -len(".keras")]
    csv_path = out.with_name(f"{stem}.curves.csv")
    png_path = out.with_name(f"{stem}.curves.png")
    cols = [c for c in ("loss", "accuracy", "val_loss", "val_accuracy") if c in hist]
    n = len(hist.get("loss", []))
    lines = ["epoch," + ",".join(cols)]
    for i in range(n):
        lines.append(f"{i + 1}," + ",".join(f"{hist[c][i]:.6f}" for c in cols))
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    acc = {
        name: hist[key]
        for key, name in (("accuracy", "train"), ("val_accuracy", "validation"))
        if key in hist
    }
    loss = {
        name: hist[key]
        for key, name in (("loss", "train"), ("val_loss", "validation"))
        if key in hist
    }
    top = line_chart(acc, title="accuracy", dashed=("validation",))
    bottom = line_chart(loss, title="loss", dashed=("validation",))
    save_png(png_path, np.concatenate([top, bottom], axis=0))
    return png_path, csv_path
