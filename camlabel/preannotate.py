"""Pre-annotations: the home of every source of draft polygons for the annotators.

- :func:`cam_settings`: the CAM settings (flag > ``CAMLABEL_CAM_*`` env > workspace > default).
- :func:`preannotation_from_map`: any heatmap or probability map -> ledger ``Preannotation``
  (polygons in original-image pixels). A new source (a segmenter, another model) turns its
  map into a pre-annotation here.
- :func:`run_gradcam` (``camlabel gradcam``) -> :class:`GradcamSummary`: register images,
  compute fused CAMs, write heatmaps and overlays, record predictions, heatmaps and
  pre-annotations in the ledger.
- :func:`load_heatmap`: a record's stored heatmap, back at the original resolution.
- :func:`resolve_inputs` -> :class:`InputImages`: files, folders and ``metadata.csv`` files
  -> image paths with labels and patient ids (also used by :mod:`camlabel.audit`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.classify import Classifier, load_classifier
from camlabel.errors import ImageReadError, ModelError, UsageError
from camlabel.ledger import atomic_write_bytes
from camlabel.records import Heatmap, ImageRecord, Preannotation, Prediction

if TYPE_CHECKING:
    from camlabel.imaging import Letterbox, LoadedImage
    from camlabel.workspace import Workspace

PREANNOTATION_REPLACEABLE_STATES = ("registered", "preannotated")


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
    select: Callable[[Path], bool] | None = None,
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
    ``select`` keeps only the input paths it accepts (a shard, see :mod:`camlabel.shards`).
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
    if select is not None:  # e.g. one shard of the images (camlabel.shards)
        import dataclasses

        listing = dataclasses.replace(listing, paths=[p for p in listing.paths if select(p)])
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
