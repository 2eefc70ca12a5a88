"""The classifier side of camlabel: train, evaluate, classify, Grad-CAM, shortcut audit.

The library behind ``camlabel train-cls``, ``evaluate``, ``gradcam`` and ``audit``; the
commands only parse arguments, call one function here and print its summary.

Public API:

- :func:`load_classifier` -> :class:`Classifier`; :func:`classify_images` /
  :meth:`Classifier.classify` -> :class:`~camlabel.records.Prediction` per image.
- :func:`train_classifier` -> :class:`TrainResult` (writes ``MODEL.keras``, its ``.json``
  sidecar and the training curves).
- :func:`evaluate_classifier` -> metrics dict (see :mod:`camlabel.models.metrics`).
- :func:`run_gradcam` -> :class:`GradcamSummary` (heatmaps, overlays, ledger records).
- :func:`preannotation_from_map` (any probability/heatmap -> ledger ``Preannotation``).
- :func:`run_audit` -> audit dict (CAM energy inside the lungs and in the border band).
- :func:`load_heatmap` (a record's stored heatmap, back at the original resolution).

Heavy imports (TensorFlow/Keras) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.errors import CamlabelError, ImageReadError, ModelError, UsageError
from camlabel.ledger import atomic_write_bytes, atomic_write_text
from camlabel.records import Heatmap, ImageRecord, Preannotation, Prediction, utcnow

if TYPE_CHECKING:
    import keras

    from camlabel.imaging import Letterbox, LoadedImage
    from camlabel.workspace import Workspace

SIDECAR_SUFFIX = ".json"  # MODEL.keras -> MODEL.keras.json
PREANNOTATION_REPLACEABLE_STATES = ("registered", "preannotated")


# ============================================================================ classifier
@dataclass
class Classifier:
    """A loaded classifier and what is needed to feed it and to name its outputs.

    Attributes:
        model: the Keras model (input: RGB float32 ``image_size``² in [0, 255]).
        classes: class names in output order.
        image_size: model input side.
        model_version: recorded with every prediction and heatmap.
        cam_layers: Grad-CAM target layers (one per backbone).
        path: the ``.keras`` file.
        info: the training sidecar (``MODEL.keras.json``), when present.
    """

    model: keras.Model
    classes: tuple[str, ...]
    image_size: int
    model_version: str
    cam_layers: tuple[str, ...]
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def model_input(self, image: LoadedImage) -> tuple[np.ndarray, Letterbox]:
        """Letterboxed model input (as in training: rounded to whole grey levels)."""
        return model_input(image, self.image_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, K)`` for model inputs ``(B, S, S, 3)``."""
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.asarray(self.model.predict_on_batch(np.asarray(batch, np.float32)), np.float32)

    def prediction(self, probabilities: np.ndarray) -> Prediction:
        """A ledger :class:`Prediction` from one probability vector."""
        k = int(np.argmax(probabilities))
        return Prediction(
            predicted_class=self.classes[k],
            probability=round(float(probabilities[k]), 6),
            probabilities={
                c: round(float(p), 6) for c, p in zip(self.classes, probabilities, strict=True)
            },
            model_version=self.model_version,
        )

    def classify(self, images: Sequence[LoadedImage], *, batch_size: int = 16) -> list[Prediction]:
        """Predictions for decoded images, in order."""
        out: list[Prediction] = []
        step = max(1, batch_size)
        for i in range(0, len(images), step):
            x = np.stack([self.model_input(img)[0] for img in images[i : i + step]])
            out.extend(self.prediction(p) for p in self.predict(x))
        return out


def model_input(image: LoadedImage | np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """``to_model_input`` rounded to whole grey levels, exactly what training sees."""
    from camlabel.models.data import letterbox_input

    return letterbox_input(image, size)


def sidecar_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def load_classifier(path: str | Path) -> Classifier:
    """Load a ``.keras`` classifier.

    A camlabel ``EnsembleClassifier`` carries its classes, image size, model version and
    CAM layers in its config. Any other functional Keras model works too when the sidecar
    ``MODEL.keras.json`` names ``classes``, ``model_version`` and ``cam_layers``.

    Raises:
        ModelError: missing/unreadable file, or metadata that cannot be found.
    """
    from camlabel.models.ensemble import EnsembleClassifier, load_keras_model

    path = Path(path)
    model = load_keras_model(path)
    info: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            info = json.loads(side.read_text(encoding="utf-8"))
    if isinstance(model, EnsembleClassifier):
        return Classifier(
            model=model,
            classes=tuple(model.classes),
            image_size=model.image_size,
            model_version=model.model_version,
            cam_layers=model.cam_layers,
            path=path,
            info=info,
        )
    missing = [k for k in ("classes", "model_version", "cam_layers") if not info.get(k)]
    if missing:
        raise ModelError(
            f"{path} is not a camlabel ensemble and its sidecar {side.name} lacks {missing}",
            hint="train with camlabel train-cls, or write the sidecar JSON with classes, "
            "model_version and cam_layers",
        )
    return Classifier(
        model=model,
        classes=tuple(info["classes"]),
        image_size=int(model.inputs[0].shape[1]),
        model_version=str(info["model_version"]),
        cam_layers=tuple(info["cam_layers"]),
        path=path,
        info=info,
    )


def classify_images(
    classifier: Classifier, images: Sequence[LoadedImage], *, batch_size: int = 16
) -> list[Prediction]:
    """Predictions (class, probability, all probabilities, model version) for decoded images."""
    return classifier.classify(images, batch_size=batch_size)


# ============================================================================== training
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
    seed: int = 1234,
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
                "val_metrics": _headline(val_metrics),
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


def _headline(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    return {k: metrics.get(k) for k in ("n", "accuracy", "macro_f1", "macro_auc")}


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


def _predict_paths(
    clf: Classifier, paths: Sequence[Path], *, batch_size: int = 16
) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities for image files (rows of unreadable files are NaN) and failures by index."""
    from camlabel.imaging import read_image

    probs = np.full((len(paths), len(clf.classes)), np.nan, np.float32)
    failures: dict[int, str] = {}
    step = max(1, batch_size)
    for start in range(0, len(paths), step):
        xs, idx = [], []
        for i in range(start, min(start + step, len(paths))):
            try:
                xs.append(clf.model_input(read_image(paths[i]))[0])
                idx.append(i)
            except CamlabelError as exc:
                failures[i] = exc.message
        if xs:
            probs[idx] = clf.predict(np.stack(xs))
    return probs, failures


# ============================================================================ evaluation
def evaluate_classifier(
    model_path: str | Path,
    data: str | Path,
    *,
    split: str = "auto",
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    workspace: Workspace | None = None,
) -> dict[str, Any]:
    """Metrics of a classifier on DATA; writes ``metrics.json`` and ``confusion_matrix.png``.

    Args:
        split: ``"all"`` (every image of DATA), ``"val"``/``"train"`` (the validation or
            training images recorded in the model's sidecar), or ``"auto"``: ``"val"`` when
            DATA is the data the model was trained on, else ``"all"``.
        out_dir: default ``<model folder>/<model stem>-eval``. Training curves recorded in
            the sidecar are copied there as ``curves.png``/``curves.csv``.

    Returns:
        The :func:`~camlabel.models.metrics.classification_metrics` dict plus ``split``,
        ``model_version``, ``model``, ``data``, ``failures`` and ``files``.
    """
    from camlabel.models.data import read_dataset
    from camlabel.models.metrics import classification_metrics
    from camlabel.plots import confusion_matrix_image, save_png

    clf = load_classifier(model_path)
    ds = read_dataset(data, clf.classes)
    trained_on = clf.info.get("data")
    same_data = trained_on is not None and Path(trained_on) == Path(data).resolve()
    if split == "auto":
        split = "val" if same_data and clf.info.get("split", {}).get("val_files") else "all"
    if split in ("val", "train"):
        val_files = set((clf.info.get("split") or {}).get("val_files") or [])
        if not val_files:
            raise UsageError(
                f"--split {split} needs the validation file list of the model's sidecar "
                f"({sidecar_path(model_path).name}), which is missing",
                hint="use --split all",
            )
        keep = [i for i in range(len(ds)) if (ds.relpath(i) in val_files) == (split == "val")]
        ds = ds.subset(keep)
    elif split != "all":
        raise UsageError(f"split must be auto, all, val or train. Received: split={split!r}")
    probs, failures = _predict_paths(clf, ds.paths, batch_size=batch_size)
    ok = [i for i in range(len(ds)) if i not in failures]
    metrics = classification_metrics(ds.label_indices[ok], probs[ok], clf.classes)
    out = Path(out_dir) if out_dir else Path(model_path).with_name(Path(model_path).stem + "-eval")
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": str(out / "metrics.json"),
        "confusion_matrix_png": str(out / "confusion_matrix.png"),
    }
    save_png(
        out / "confusion_matrix.png",
        confusion_matrix_image(
            metrics["confusion_matrix"]["matrix"],
            clf.classes,
            title=f"confusion matrix ({split}, n={metrics['n']})",
        ),
    )
    base = Path(model_path)
    for key in ("curves_png", "curves_csv"):
        name = clf.info.get(key)
        if name and (base.parent / name).is_file():
            target = out / ("curves" + Path(name).suffix)
            atomic_write_bytes(target, (base.parent / name).read_bytes())
            files[key] = str(target)
    result = {
        **metrics,
        "split": split,
        "model": str(base.resolve()),
        "model_version": clf.model_version,
        "data": str(Path(data).resolve()),
        "failures": [[str(ds.paths[i]), r] for i, r in sorted(failures.items())],
        "files": files,
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    if workspace is not None:
        workspace.record_run(
            "evaluate",
            {
                "model": result["model"],
                "data": result["data"],
                "split": split,
                "batch_size": batch_size,
            },
            model_version=clf.model_version,
            result=_headline(metrics),
        )
    return result


# ========================================================================= input listing
@dataclass(frozen=True)
class InputImages:
    """Image files with optional labels and patient ids, and paths relative to their root."""

    paths: list[Path]
    labels: dict[str, str]
    patient_ids: dict[str, str]
    relpaths: dict[str, str]


def resolve_inputs(inputs: Sequence[str | Path], classes: Sequence[str] = ()) -> InputImages:
    """Files, folders and ``metadata.csv`` files -> image paths (+ labels/patient ids).

    From a CSV come its labels and patient ids; in folders, an image whose parent folder is
    named after one of ``classes`` gets that label.
    """
    from camlabel.imaging import iter_image_paths
    from camlabel.models.data import read_dataset

    paths: list[Path] = []
    labels: dict[str, str] = {}
    pids: dict[str, str] = {}
    rel: dict[str, str] = {}
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix.lower() == ".csv":
            ds = read_dataset(p)  # any labels: they are recorded, not predicted
            for i, path in enumerate(ds.paths):
                key = str(path)
                if path.resolve() in seen:
                    continue
                seen.add(path.resolve())
                paths.append(path)
                labels[key] = ds.labels[i]
                rel[key] = ds.relpath(i)
                if ds.patient_ids[i]:
                    pids[key] = ds.patient_ids[i]  # type: ignore[assignment]
            continue
        root = p if p.is_dir() else p.parent
        for path in iter_image_paths([p]):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            key = str(path)
            paths.append(path)
            if path.parent.name in classes:
                labels[key] = path.parent.name
            try:
                rel[key] = path.relative_to(root).as_posix()
            except ValueError:
                rel[key] = path.name
    return InputImages(paths, labels, pids, rel)


# =============================================================================== Grad-CAM
def cam_settings(ws: Workspace | None = None, **overrides: Any) -> dict[str, Any]:
    """CAM settings: flag (``overrides`` not None) > ``CAMLABEL_CAM_*`` env > workspace > defaults."""
    from camlabel import config

    section = ws.config.get("cam") if ws is not None else None
    resolved = config.resolve(
        config.CamSettings, overrides, section, "CAMLABEL_CAM_", section="cam"
    )
    return config.describe(resolved)


def preannotation_from_map(
    heatmap: np.ndarray,
    *,
    settings: Mapping[str, Any],
    source: str,
    model_version: str,
    score: float | None = None,
    absolute: bool = False,
) -> Preannotation:
    """Polygons around the hot part of a map at ORIGINAL image resolution -> ``Preannotation``.

    ``heatmap`` is HxW at the image's own resolution (``Letterbox.heatmap_to_image`` maps a
    model-grid map back exactly), so the polygons are in original-image pixels.
    ``settings`` are the workspace CAM settings (:func:`cam_settings`): ``threshold``,
    ``min_area_fraction`` (of the image area), ``epsilon_px`` and ``max_vertices``.

    The threshold is a fraction of the map's maximum (or ``"otsu"``), right for CAMs, whose
    scale is arbitrary. With ``absolute=True`` it is a value of the map itself (pixels
    ``>= threshold``), right for probability maps: a segmenter's map (``source="segmenter"``)
    whose maximum is 0.1 then gives no polygon instead of a noisy one.
    """
    from camlabel.geometry import heatmap_to_polygons, mask_to_polygons

    h, w = heatmap.shape
    common = {
        "min_area_px": float(settings["min_area_fraction"]) * h * w,
        "epsilon_px": float(settings["epsilon_px"]),
        "max_vertices": settings.get("max_vertices"),
    }
    threshold = settings["threshold"]
    if absolute:
        if threshold == "otsu":
            raise UsageError("an absolute threshold must be a number, not 'otsu'")
        polys = mask_to_polygons(np.asarray(heatmap) >= float(threshold), **common)
    else:
        polys = heatmap_to_polygons(heatmap, threshold=threshold, **common)
    return Preannotation(
        polygons=tuple(p.to_json() for p in polys),
        source=source,
        model_version=model_version,
        threshold=threshold,
        score=None if score is None else round(float(score), 6),
    )


def load_heatmap(ws: Workspace, record: ImageRecord) -> np.ndarray:
    """A record's stored heatmap mapped back to its original resolution (float32 HxW).

    The ``.npy`` holds the fused CAM on the square model-input grid (letterboxed, padding
    included; ``S x S``); ``Letterbox.fit(height, width, S)`` reproduces the mapping.
    """
    from camlabel.imaging import Letterbox

    if record.heatmap is None:
        raise ModelError(
            f"image {record.image_id[:12]} has no heatmap", hint="run camlabel gradcam first"
        )
    grid = np.load(ws.abs(record.heatmap.path)).astype(np.float32)
    return Letterbox.fit(record.height, record.width, grid.shape[0]).heatmap_to_image(grid)


@dataclass
class GradcamSummary:
    """What :func:`run_gradcam` did (``to_json`` for ``--json``)."""

    model_version: str
    method: str
    fusion: str
    inputs: int = 0
    registered: int = 0
    processed: int = 0
    skipped: int = 0
    preannotated: int = 0
    kept_preannotation: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "method": self.method,
            "fusion": self.fusion,
            "inputs": self.inputs,
            "registered": self.registered,
            "processed": self.processed,
            "skipped": self.skipped,
            "preannotated": self.preannotated,
            "kept_preannotation": self.kept_preannotation,
            "by_class": dict(self.by_class),
            "failures": [list(f) for f in self.failures],
        }


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _overlay(
    display: np.ndarray, heat: np.ndarray, polygons: Sequence[Mapping[str, Any]], label: str
) -> np.ndarray:
    from camlabel.imaging import draw_polygons, overlay_heatmap, put_label

    bgr = overlay_heatmap(display, heat)
    rings = [np.asarray(p["exterior"], np.float64) for p in polygons]
    rings += [np.asarray(h, np.float64) for p in polygons for h in p.get("holes", [])]
    if rings:
        thickness = max(1, round(max(display.shape[:2]) / 400))
        bgr = draw_polygons(bgr, rings, color=(0, 255, 0), thickness=thickness)
    return put_label(bgr, label)


def run_gradcam(
    ws: Workspace,
    model_path: str | Path,
    inputs: Sequence[str | Path],
    *,
    method: str | None = None,
    fusion: str | None = None,
    batch_size: int = 8,
    all_images: bool = False,
    target: str | None = None,
    progress: bool = False,
) -> GradcamSummary:
    """Register images, compute fused CAMs in batches, write heatmaps/overlays, update the ledger.

    For each image: ``heatmaps/<image_id>.npy`` (float16 ``S x S`` fused CAM in [0, 1] on the
    model-input grid, see :func:`load_heatmap`), ``heatmaps/<image_id>.png`` (overlay at the
    original resolution with the polygons), and ledger ``prediction``, ``heatmap`` and — for
    images predicted as a lesion class (``ws.lesion_classes``), or all with ``all_images`` —
    ``preannotation`` (polygons in original-image pixels, source = method).

    Resumable: images whose ledger heatmap has this model version, method and fusion (and
    whose file exists) are skipped; the ledger is written after every batch. An existing
    pre-annotation is replaced only while the image is not yet pushed or annotated, and
    only if it came from a CAM method. Unreadable images are reported in ``failures``.
    """
    from camlabel.cam import get_cam_method
    from camlabel.imaging import read_image, write_png_atomic
    from camlabel.progress import progress_bar

    settings = cam_settings(ws, method=method, fusion=fusion)
    method_name = str(settings["method"])
    cam_cls = get_cam_method(method_name)
    clf = load_classifier(model_path)
    target_idx = -1
    if target is not None:
        if target not in clf.classes:
            raise UsageError(
                f"--target must be one of the model's classes {list(clf.classes)}. Received: {target!r}"
            )
        target_idx = clf.classes.index(target)
    listing = resolve_inputs(inputs, clf.classes)
    summary = GradcamSummary(
        model_version=clf.model_version, method=method_name, fusion=str(settings["fusion"])
    )
    summary.inputs = len(listing.paths)
    records, failures = ws.register_images(
        listing.paths, labels=listing.labels, patient_ids=listing.patient_ids, progress=progress
    )
    summary.failures.extend(failures)
    summary.registered = len(records)
    unique = list({r.image_id: r for r in records}.values())
    todo: list[ImageRecord] = []
    for rec in unique:
        hm = rec.heatmap
        if (
            hm is not None
            and hm.model_version == clf.model_version
            and hm.method == method_name
            and hm.fusion == str(settings["fusion"])
            and ws.abs(hm.path).is_file()
        ):
            summary.skipped += 1
        else:
            todo.append(rec)
    if not todo:
        _record_gradcam_run(ws, clf, settings, batch_size, all_images, target, summary)
        return summary

    cam = cam_cls(clf.model, clf.cam_layers, fusion=str(settings["fusion"]))
    lesion = set(ws.lesion_classes)
    heat_dir = ws.dir("heatmaps")
    step = max(1, batch_size)
    with progress_bar(total=len(todo), desc=method_name, enabled=progress, unit="img") as bar:
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            loaded: list[tuple[ImageRecord, LoadedImage, Letterbox]] = []
            xs = []
            for rec in chunk:
                try:
                    img = read_image(rec.source_path)
                except ImageReadError as exc:
                    summary.failures.append((rec.source_path, exc.message))
                    continue
                if img.image_id != rec.image_id:
                    summary.failures.append(
                        (rec.source_path, "the file changed since it was registered; run again")
                    )
                    continue
                x, box = clf.model_input(img)
                loaded.append((rec, img, box))
                xs.append(x)
            if not loaded:
                bar.update(len(chunk))
                continue
            result = cam(np.stack(xs), targets=target_idx)
            updates: dict[str, Callable[[ImageRecord], ImageRecord]] = {}
            for i, (rec, img, box) in enumerate(loaded):
                probs = result.probabilities[i]
                pred = clf.prediction(probs)
                grid = result.heatmaps[i]
                heat = box.heatmap_to_image(grid)
                npy = heat_dir / f"{rec.image_id}.npy"
                png = heat_dir / f"{rec.image_id}.png"
                _save_npy_atomic(npy, grid.astype(np.float16))
                wants = all_images or pred.predicted_class in lesion
                pre = (
                    preannotation_from_map(
                        heat,
                        settings=settings,
                        source=method_name,
                        model_version=clf.model_version,
                        score=pred.probability,
                    )
                    if wants
                    else None
                )
                target_class = clf.classes[int(result.targets[i])]
                label = f"{pred.predicted_class} {pred.probability:.2f} | {method_name} -> {target_class}"
                write_png_atomic(
                    png, _overlay(img.display, heat, pre.polygons if pre else (), label)
                )
                heatmap = Heatmap(
                    path=ws.rel(npy),
                    overlay_path=ws.rel(png),
                    method=method_name,
                    model_version=clf.model_version,
                    target_class=target_class,
                    fusion=str(settings["fusion"]),
                )
                updates[rec.image_id] = _gradcam_update(pred, heatmap, pre, summary)
                summary.processed += 1
                summary.by_class[pred.predicted_class] = (
                    summary.by_class.get(pred.predicted_class, 0) + 1
                )
            with ws.ledger.transaction() as txn:
                for image_id, fn in updates.items():
                    txn.update(image_id, fn)
            bar.update(len(chunk))
    _record_gradcam_run(ws, clf, settings, batch_size, all_images, target, summary)
    return summary


def _gradcam_update(
    pred: Prediction, heatmap: Heatmap, pre: Preannotation | None, summary: GradcamSummary
) -> Callable[[ImageRecord], ImageRecord]:
    from camlabel.cam import CAM_METHODS

    def fn(rec: ImageRecord) -> ImageRecord:
        changes: dict[str, Any] = {"prediction": pred, "heatmap": heatmap}
        old = rec.preannotation
        replaceable = rec.state in PREANNOTATION_REPLACEABLE_STATES and (
            old is None or old.source in CAM_METHODS
        )
        if replaceable:
            changes["preannotation"] = pre
            if pre is not None:
                summary.preannotated += 1
        elif pre is not None:
            summary.kept_preannotation += 1
        return rec.evolve(**changes)

    return fn


def _record_gradcam_run(
    ws: Workspace,
    clf: Classifier,
    settings: Mapping[str, Any],
    batch_size: int,
    all_images: bool,
    target: str | None,
    summary: GradcamSummary,
) -> None:
    ws.record_run(
        "gradcam",
        {
            "model": str(clf.path.resolve()) if clf.path else None,
            "cam": dict(settings),
            "batch_size": batch_size,
            "all": all_images,
            "target": target,
        },
        model_version=clf.model_version,
        result={k: v for k, v in summary.to_json().items() if k != "failures"}
        | {"failed": len(summary.failures)},
    )


# ================================================================================ audit
def _index_masks(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in (".png", ".tif", ".tiff", ".bmp"):
            rel = p.relative_to(folder).with_suffix("").as_posix()
            by_rel[rel] = p
            by_stem.setdefault(p.stem, []).append(p)
    return by_rel, by_stem


def find_lung_mask(
    relpath: str, by_rel: Mapping[str, Path], by_stem: Mapping[str, list[Path]]
) -> Path | None:
    """The mask for an image: same relative path (any mask suffix), else a unique same-stem file."""
    key = Path(relpath).with_suffix("").as_posix()
    if key in by_rel:
        return by_rel[key]
    # phantoms: images/<class>/<id>.png beside lung_masks/<class>/<id>.png
    parts = key.split("/")
    for k in range(1, len(parts)):
        sub = "/".join(parts[k:])
        if sub in by_rel:
            return by_rel[sub]
    same = by_stem.get(Path(relpath).stem, [])
    return same[0] if len(same) == 1 else None


def read_lung_mask(path: Path, height: int, width: int) -> np.ndarray:
    """A lung mask as bool HxW at the image size: lung = the top value (255 in 0/255 masks and in
    V7's 0/127/255 masks, where 127 is "Ignore"). Resized with nearest neighbour if needed."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(
            f"cannot read lung mask {path}", hint="lung masks are 8-bit PNGs (lung = 255)"
        )
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    full = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
    lung = arr >= 0.75 * full
    if lung.shape != (height, width):
        lung = cv2.resize(
            lung.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    return lung


def border_band(height: int, width: int, fraction: float) -> np.ndarray:
    """Bool HxW: pixels whose centre lies within ``fraction`` of the width/height of an edge."""
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    by = (ys < fraction) | (ys > 1 - fraction)
    bx = (xs < fraction) | (xs > 1 - fraction)
    return by[:, None] | bx[None, :]


def _summarize(rows: Sequence[Mapping[str, Any]], outside_threshold: float) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    def median(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.median(vals)), 4) if vals else None

    with_mask = [r for r in rows if r.get("lung_mask") is not None]
    scored = [r for r in with_mask if r.get("lung_energy_share") is not None]
    flagged = sum(1 for r in scored if r["flagged"])
    return {
        "n_images": len(rows),
        "with_lung_mask": len(with_mask),
        "mean_lung_energy": mean("lung_energy_share"),
        "median_lung_energy": median("lung_energy_share"),
        "mean_lung_area": mean("lung_area_share"),
        "mean_lung_enrichment": mean("lung_enrichment"),
        "mean_border_energy": mean("border_energy_share"),
        "median_border_energy": median("border_energy_share"),
        "flagged": flagged,
        "flagged_share": round(flagged / len(scored), 4) if scored else None,
        "no_cam_energy": sum(1 for r in rows if r.get("border_energy_share") is None),
    }


def lung_field(mask: np.ndarray, keep: int = 2, min_share: float = 0.1) -> np.ndarray:
    """A segmenter's lung mask cleaned the way a lung field is shaped: the ``keep`` largest
    connected components (two lungs), each at least ``min_share`` of the largest; stray
    islands (a bowel gas bubble, a shoulder) are dropped."""
    import cv2

    m = np.asarray(mask, dtype=bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return m
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][:keep]
    kept = [int(i) + 1 for i in order if areas[i] >= min_share * areas[order[0]]]
    return np.isin(labels, kept)


def run_audit(
    model_path: str | Path,
    data: str | Path | Sequence[str | Path],
    *,
    lung_masks: str | Path | None = None,
    lung_model: str | Path | None = None,
    method: str = "gradcam",
    fusion: str = "normalize-mean",
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    border_fraction: float = 0.08,
    outside_threshold: float = 0.5,
    worst: int = 12,
    workspace: Workspace | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Shortcut audit: where does the CAM put its energy?

    For each image (CAM of the predicted class, fused, at the original resolution):
    ``lung_energy_share`` = sum(CAM inside the lung mask) / sum(CAM), ``lung_area_share``
    (what a uniform map would give), ``lung_enrichment`` (their ratio),
    ``border_energy_share`` = the share in the border band (outer ``border_fraction`` of
    width and height on each side; its area share is ``border_area_share``). An image is
    ``flagged`` when its lung energy share is below ``outside_threshold`` (the CAM lies
    mostly outside the lungs); images without a lung mask are never flagged.

    ``lung_model`` (a lung segmenter trained with ``camlabel train-seg`` / train_seg.py, e.g. on
    annotated lung fields) gives the lung field of every image that ``lung_masks`` does not
    cover; such rows say ``"lung_source": "segmenter"`` and name the model in ``lung_mask``.

    Writes ``audit.json`` and ``audit_worst.png`` (the ``worst`` images with the lowest lung
    share — or, without masks, the highest border share — with CAM overlay and lung
    outline) into ``out_dir`` (default ``<model folder>/<model stem>-audit``).
    """
    import cv2

    from camlabel.cam import get_cam_method
    from camlabel.imaging import overlay_heatmap, put_label, read_image
    from camlabel.plots import image_grid, save_png
    from camlabel.progress import progress_bar

    if not 0 < border_fraction < 0.5:
        raise UsageError(f"border fraction must be in (0, 0.5). Received: {border_fraction}")
    clf = load_classifier(model_path)
    cam = get_cam_method(method)(clf.model, clf.cam_layers, fusion=fusion)
    items = [data] if isinstance(data, str | Path) else list(data)
    listing = resolve_inputs(items, clf.classes)
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    if lung_masks is not None:
        if not Path(lung_masks).is_dir():
            raise UsageError(f"--lung-masks must be a folder. Received: {lung_masks}")
        by_rel, by_stem = _index_masks(Path(lung_masks))
    lung_seg = None
    if lung_model is not None:
        from camlabel.segment import load_segmenter, segment_probability

        lung_seg = load_segmenter(lung_model)
    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    heap: list[tuple[float, int, np.ndarray, str]] = []  # (-badness, tiebreak, tile, caption)
    step = max(1, batch_size)
    with progress_bar(total=len(listing.paths), desc="audit", enabled=progress, unit="img") as bar:
        for start in range(0, len(listing.paths), step):
            chunk = listing.paths[start : start + step]
            loaded = []
            for p in chunk:
                try:
                    img = read_image(p)
                except ImageReadError as exc:
                    failures.append((str(p), exc.message))
                    continue
                x, box = clf.model_input(img)
                loaded.append((p, img, box, x))
            if not loaded:
                bar.update(len(chunk))
                continue
            res = cam(np.stack([t[3] for t in loaded]))
            for i, (p, img, box, _) in enumerate(loaded):
                heat = box.heatmap_to_image(res.heatmaps[i]).astype(np.float64)
                total = float(heat.sum())
                band = border_band(img.height, img.width, border_fraction)
                pred = clf.prediction(res.probabilities[i])
                rel = listing.relpaths.get(str(p), p.name)
                row: dict[str, Any] = {
                    "file": rel,
                    "image_id": img.image_id,
                    "label": listing.labels.get(str(p)),
                    "predicted_class": pred.predicted_class,
                    "probability": pred.probability,
                    "border_energy_share": round(float(heat[band].sum()) / total, 4)
                    if total > 0
                    else None,
                    "lung_mask": None,
                    "lung_source": None,
                    "lung_energy_share": None,
                    "lung_area_share": None,
                    "lung_enrichment": None,
                    "flagged": False,
                }
                lung = None
                mask_path = find_lung_mask(rel, by_rel, by_stem) if by_rel else None
                if mask_path is not None:
                    lung = read_lung_mask(mask_path, img.height, img.width)
                    row["lung_mask"] = str(mask_path)
                    row["lung_source"] = "mask"
                elif lung_seg is not None:
                    lung = lung_field(segment_probability(lung_seg, [img])[0] >= lung_seg.threshold)
                    row["lung_mask"] = f"segmenter:{lung_seg.path}"
                    row["lung_source"] = "segmenter"
                if lung is not None:
                    area = float(lung.mean())
                    row["lung_area_share"] = round(area, 4)
                    if total > 0:
                        share = float(heat[lung].sum()) / total
                        row["lung_energy_share"] = round(share, 4)
                        row["lung_enrichment"] = round(share / area, 4) if area > 0 else None
                        row["flagged"] = share < outside_threshold
                rows.append(row)
                if worst > 0:
                    if row["lung_energy_share"] is not None:
                        badness = 1.0 - row["lung_energy_share"]
                    else:
                        badness = (
                            row["border_energy_share"] or 0.0
                        ) - 1.0  # ranks after masked ones
                    if len(heap) < worst or badness > heap[0][0]:
                        tile = overlay_heatmap(img.display, heat)
                        if lung is not None:
                            contours, _ = cv2.findContours(
                                lung.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
                            )
                            cv2.drawContours(
                                tile,
                                contours,
                                -1,
                                (255, 255, 255),
                                max(1, round(max(tile.shape[:2]) / 300)),
                            )
                        s = 256 / max(tile.shape[:2])
                        tile = cv2.resize(
                            tile,
                            (max(1, round(tile.shape[1] * s)), max(1, round(tile.shape[0] * s))),
                            interpolation=cv2.INTER_AREA,
                        )
                        lung_txt = (
                            "-"
                            if row["lung_energy_share"] is None
                            else f"{row['lung_energy_share']:.2f}"
                        )
                        tile = put_label(
                            tile, f"{row['label'] or '?'}->{pred.predicted_class} lung {lung_txt}"
                        )
                        caption = f"{Path(rel).name} border {row['border_energy_share'] or 0:.2f}"
                        entry = (badness, len(rows), tile, caption)
                        if len(heap) < worst:
                            heapq.heappush(heap, entry)
                        else:
                            heapq.heapreplace(heap, entry)
            bar.update(len(chunk))
    out = Path(out_dir) if out_dir else Path(model_path).with_name(Path(model_path).stem + "-audit")
    out.mkdir(parents=True, exist_ok=True)
    worst_png = out / "audit_worst.png"
    ordered = sorted(heap, key=lambda e: (-e[0], e[1]))
    save_png(
        worst_png, image_grid([e[2] for e in ordered], [e[3] for e in ordered], tile=256, columns=4)
    )

    def group(key: str) -> dict[str, Any]:
        names = sorted({str(r[key]) for r in rows if r.get(key) is not None})
        return {
            n: _summarize([r for r in rows if str(r.get(key)) == n], outside_threshold)
            for n in names
        }

    report = {
        "model": str(Path(model_path).resolve()),
        "model_version": clf.model_version,
        "method": method,
        "fusion": fusion,
        "lung_masks": str(Path(lung_masks).resolve()) if lung_masks else None,
        "lung_model": str(Path(lung_model).resolve()) if lung_model else None,
        "border_fraction": border_fraction,
        "border_area_share": round(float(1 - (1 - 2 * border_fraction) ** 2), 4),
        "outside_threshold": outside_threshold,
        "overall": _summarize(rows, outside_threshold),
        "by_label": group("label"),
        "by_predicted": group("predicted_class"),
        "images": rows,
        "failures": [list(f) for f in failures],
        "files": {"json": str(out / "audit.json"), "worst_png": str(worst_png)},
    }
    atomic_write_text(out / "audit.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    if workspace is not None:
        workspace.record_run(
            "audit",
            {
                "model": report["model"],
                "lung_masks": report["lung_masks"],
                "method": method,
                "fusion": fusion,
                "border_fraction": border_fraction,
                "outside_threshold": outside_threshold,
            },
            model_version=clf.model_version,
            result=report["overall"],
        )
    return report
