"""Evaluate a classifier on a dataset: metrics, confusion matrix, training curves.

:func:`evaluate_classifier` (``camlabel evaluate``) writes ``metrics.json`` and
``confusion_matrix.png`` (metrics: :mod:`camlabel.models.metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.classify import Classifier, load_classifier, sidecar_path
from camlabel.errors import CamlabelError, UsageError
from camlabel.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from camlabel.workspace import Workspace


def headline_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The few metrics a run log records (n, accuracy, macro F1, macro AUC)."""
    if not metrics:
        return None
    return {k: metrics.get(k) for k in ("n", "accuracy", "macro_f1", "macro_auc")}


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
            result=headline_metrics(metrics),
        )
    return result
