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

import dataclasses
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.classify import Classifier, load_classifier
from camlabel.errors import ImageReadError, ModelError, UsageError
from camlabel.fileio import atomic_write_bytes
from camlabel.records import Heatmap, ImageRecord, Preannotation, Prediction

if TYPE_CHECKING:
    from camlabel.imaging import Letterbox, LoadedImage
    from camlabel.lungs import LungFields
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
    from camlabel.imaging import iter_image_paths, safe_resolve
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
            if safe_resolve(path) in seen:
                continue
            seen.add(safe_resolve(path))
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


def preannotation_from_mask(
    mask: np.ndarray,
    *,
    settings: Mapping[str, Any],
    source: str,
    model_version: str,
    score: float | None = None,
    threshold: float | str | None = None,
    refine: str | None = None,
) -> Preannotation:
    """A bool HxW mask at ORIGINAL image resolution -> ``Preannotation`` polygons.

    The path of refined CAMs (:func:`camlabel.cam.refine.refine_cam`): the mask is already
    decided, so only ``min_area_fraction``, ``epsilon_px`` and ``max_vertices`` of
    ``settings`` apply. ``threshold`` is recorded as given (default: ``settings["threshold"]``).
    """
    from camlabel.geometry import mask_to_polygons

    m = np.asarray(mask, bool)
    h, w = m.shape
    polys = mask_to_polygons(
        m,
        min_area_px=float(settings["min_area_fraction"]) * h * w,
        epsilon_px=float(settings["epsilon_px"]),
        max_vertices=settings.get("max_vertices"),
    )
    return Preannotation(
        polygons=tuple(p.to_json() for p in polys),
        source=source,
        model_version=model_version,
        threshold=settings["threshold"] if threshold is None else threshold,
        score=None if score is None else round(float(score), 6),
        refine=refine,
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
    #: things the user should know that are not failures (printed by the CLI)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "warnings": list(self.warnings),
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
    refine: str | None = None,
    lung_masks: str | Path | None = None,
    lung_model: str | Path | None = None,
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

    ``refine`` (default: the workspace's ``cam.refine``) turns each CAM into its mask
    (:mod:`camlabel.cam.refine`); the lung refinements take each image's lung field from
    ``lung_masks`` (a folder, matched by relative path) or else the ``lung_model`` segmenter,
    and fall back to their lung-free variant where neither has one (the pre-annotation's
    ``refine`` says which ran). An image whose pre-annotation came from another refinement is
    done again.

    ``select`` keeps only the input paths it accepts (a shard, see :mod:`camlabel.shards`).
    """
    from camlabel.cam import get_cam_method
    from camlabel.cam.refine import get_refinement
    from camlabel.imaging import read_image, write_png_atomic
    from camlabel.progress import progress_bar

    settings = cam_settings(ws, method=method, fusion=fusion, refine=refine)
    method_name = str(settings["method"])
    cam_cls = get_cam_method(method_name)
    refine_name = str(settings["refine"])
    get_refinement(refine_name)  # an unknown name fails before any work
    lungs = _open_lungs(refine_name, lung_masks, lung_model)
    clf = load_classifier(model_path)
    target_idx = -1
    if target is not None:
        if target not in clf.classes:
            raise UsageError(
                f"--target must be one of the model's classes {list(clf.classes)}. Received: {target!r}"
            )
        target_idx = clf.classes.index(target)
    listing = resolve_inputs(inputs, clf.classes)
    # records keep resolved source paths; lung masks are matched by the path under its input
    rel_by_source = {os.path.realpath(k): v for k, v in listing.relpaths.items()}
    if not listing.paths:
        raise ImageReadError(
            f"no image found in {', '.join(str(p) for p in inputs)}",
            hint="give image files (PNG, JPEG, TIFF, DICOM), folders holding them, or a "
            "metadata.csv",
        )
    if select is not None:  # e.g. one shard of the images (camlabel.shards)
        listing = dataclasses.replace(listing, paths=[p for p in listing.paths if select(p)])
    summary = GradcamSummary(
        model_version=clf.model_version, method=method_name, fusion=str(settings["fusion"])
    )
    summary.inputs = len(listing.paths)
    if set(clf.classes) != set(ws.classes):
        summary.warnings.append(
            f"the model's classes {list(clf.classes)} differ from the workspace's "
            f"{list(ws.classes)}: predictions are stored with the model's class names, and only "
            f"images predicted as {list(ws.lesion_classes)} get a pre-annotation"
            + ("" if all_images else " (pass --all to pre-annotate every image)")
        )
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
            and _refined_as(rec.preannotation, refine_name, lungs)
            # --all after a plain run: images done without a pre-annotation are done again
            and not (all_images and rec.preannotation is None)
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
            # each backbone's own class probabilities: the committee strategy's votes
            members = clf.member_probabilities(np.stack(xs))
            updates: dict[str, Callable[[ImageRecord], ImageRecord]] = {}
            for i, (rec, img, box) in enumerate(loaded):
                probs = result.probabilities[i]
                pred = clf.prediction(probs)
                if members is not None:
                    pred = dataclasses.replace(pred, members=members[i])
                grid = result.heatmaps[i]
                heat = box.heatmap_to_image(grid)
                npy = heat_dir / f"{rec.image_id}.npy"
                png = heat_dir / f"{rec.image_id}.png"
                _save_npy_atomic(npy, grid.astype(np.float16))
                wants = all_images or pred.predicted_class in lesion
                pre = None
                if wants and refine_name == "none":
                    pre = preannotation_from_map(
                        heat,
                        settings=settings,
                        source=method_name,
                        model_version=clf.model_version,
                        score=pred.probability,
                    )
                elif wants:
                    rel = rel_by_source.get(rec.source_path, Path(rec.source_path).name)
                    pre = refined_preannotation(
                        heat,
                        img,
                        settings=settings,
                        lungs=lungs,
                        relpath=rel,
                        source=method_name,
                        model_version=clf.model_version,
                        score=pred.probability,
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


def _open_lungs(
    refine: str, lung_masks: str | Path | None, lung_model: str | Path | None
) -> LungFields:
    from camlabel.cam.refine import NEEDS_LUNG
    from camlabel.lungs import LungFields

    if refine in NEEDS_LUNG:
        return LungFields.open(lung_masks, lung_model)
    return LungFields()


def _refined_as(pre: Preannotation | None, refine: str, lungs: LungFields) -> bool:
    """Whether a stored pre-annotation (or its absence) needs no redo for ``refine``: made by
    it, or by its lung-free fallback while no lung field is given."""
    if pre is None:
        return True
    done = pre.refine or "none"
    return done == refine or (not lungs.available and done == _fallback(refine))


def _fallback(refine: str) -> str:
    """What a lung refinement becomes without a lung field."""
    from camlabel.cam.refine import LUNG_FREE

    return LUNG_FREE.get(refine, refine)


def refined_preannotation(
    heat: np.ndarray,
    image: LoadedImage,
    *,
    settings: Mapping[str, Any],
    lungs: LungFields,
    relpath: str,
    source: str,
    model_version: str,
    score: float | None = None,
) -> Preannotation:
    """A CAM at the image's resolution -> refined mask (``settings["refine"]``) -> polygons.

    The lung field comes from ``lungs`` (for the lung refinements); without one, the lung
    refinement falls back to its lung-free variant, and the record says so in ``refine``.
    """
    from camlabel.cam.refine import NEEDS_LUNG, refine_cam

    name = str(settings["refine"])
    lung = None
    if name in NEEDS_LUNG:
        lung, _, _ = lungs.get(relpath, image)
        if lung is None or not lung.any():
            name, lung = _fallback(name), None
    mask = refine_cam(heat, image.display, method=name, threshold=settings["threshold"], lung=lung)
    return preannotation_from_mask(
        mask,
        settings=settings,
        source=source,
        model_version=model_version,
        score=score,
        refine=name,
    )


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


# ------------------------------------------------------------------ preannotate --from
PREANNOTATION_SOURCES = ("cam", "segmenter")


@dataclass
class PreannotateSummary:
    """What :func:`run_preannotate` did (``to_json`` for ``--json``)."""

    source: str
    model_version: str | None = None
    candidates: int = 0
    preannotated: int = 0
    unchanged: int = 0
    empty: int = 0
    #: images the segmenter found nothing on although the classifier calls them a lesion
    #: class: their CAM pre-annotation was kept (``cam_fallback``)
    cam_fallback: int = 0
    skipped_annotated: int = 0
    #: images the classifier predicted as a class without lesions (not pre-annotated unless
    #: ``all_images``: the paper segments only images classified COVID-19 or pneumonia)
    skipped_not_lesion: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model_version": self.model_version,
            "candidates": self.candidates,
            "preannotated": self.preannotated,
            "unchanged": self.unchanged,
            "empty": self.empty,
            "cam_fallback": self.cam_fallback,
            "skipped_annotated": self.skipped_annotated,
            "skipped_not_lesion": self.skipped_not_lesion,
            "failures": [list(f) for f in self.failures],
        }


def run_preannotate(
    ws: Workspace,
    source: str,
    model: str | Path | None = None,
    images: Sequence[str | Path] = (),
    *,
    refine: str | None = None,
    lung_masks: str | Path | None = None,
    lung_model: str | Path | None = None,
    batch_size: int = 8,
    all_images: bool = False,
    cam_fallback: bool = True,
    progress: bool = False,
) -> PreannotateSummary:
    """Pre-annotations for the images not yet published or annotated, from ``source``:

    - ``"cam"``: each image's stored heatmap (``camlabel gradcam``) through the CAM settings
      and ``refine`` (:func:`refined_preannotation`) - no model needed; images predicted as a
      lesion class (or already pre-annotated) only;
    - ``"segmenter"``: the ``model`` segmenter's probability map at the original resolution,
      restricted to the lung field when ``lung_masks`` / ``lung_model`` give one,
      thresholded at its own threshold (polygons with holes where the map has them); the
      pre-annotation records the model version and its uncertainty (mean binary entropy plus
      the chance of a missed lesion the classifier sees: :func:`camlabel.active.segmenter_uncertainty`);
      images the classifier predicted as a lesion-free class are left out (counted in
      ``skipped_not_lesion``) unless ``all_images``; images without a prediction are kept.
      Where the segmenter finds nothing on an image the classifier calls a lesion class and
      the image has a CAM pre-annotation with regions, that one is kept (``cam_fallback``,
      recorded as ``fallback_for=<segmenter version>`` with the segmenter's uncertainty): the
      annotator gets the best draft there is instead of an empty one, and the image still
      ranks as the segmenter's confident miss.

    ``images`` (files, folders, ``metadata.csv``) are registered first and limit the work to
    them; without, every record in the ledger is a candidate. Idempotent: an image whose
    pre-annotation already comes from the same source, model version (and refinement) is left
    as is; published or annotated images are never touched.
    """
    from camlabel.imaging import read_image

    if source not in PREANNOTATION_SOURCES:
        raise UsageError(
            f"--from must be one of {list(PREANNOTATION_SOURCES)}. Received: {source!r}"
        )
    summary = PreannotateSummary(source=source)
    relpaths: dict[str, str] = {}
    if images:
        listing = resolve_inputs(images, ws.classes)
        records, failures = ws.register_images(
            listing.paths, labels=listing.labels, patient_ids=listing.patient_ids
        )
        summary.failures.extend(failures)
        wanted = {r.image_id for r in records}
        relpaths = {os.path.realpath(k): v for k, v in listing.relpaths.items()}
        candidates = [r for r in ws.ledger.all() if r.image_id in wanted]
    else:
        candidates = ws.ledger.all()
    todo = []
    lesion = set(ws.lesion_classes)
    for rec in sorted(candidates, key=lambda r: r.image_id):
        if rec.state not in PREANNOTATION_REPLACEABLE_STATES:
            summary.skipped_annotated += 1
        elif (
            source == "segmenter"
            and not all_images
            and rec.preannotation is None
            and rec.prediction is not None
            and rec.prediction.predicted_class not in lesion
        ):
            summary.skipped_not_lesion += 1
        else:
            todo.append(rec)
    summary.candidates = len(todo)
    if source == "segmenter":
        if model is None:
            raise UsageError(
                "--from segmenter needs the segmenter MODEL (a train-seg model folder)",
                hint="camlabel preannotate -w WS --from segmenter WS/models/<run>",
            )
        lungs = _open_lungs("lung", lung_masks, lung_model)
        pres = _segmenter_preannotations(
            ws,
            model,
            todo,
            summary,
            batch_size,
            progress,
            lungs=lungs,
            relpaths=relpaths,
            cam_fallback=cam_fallback,
        )
    else:
        settings = cam_settings(ws, refine=refine)
        lungs = _open_lungs(str(settings["refine"]), lung_masks, lung_model)
        pres = {}
        for rec in todo:
            if rec.heatmap is None or not (
                rec.preannotation is not None
                or (rec.prediction is not None and rec.prediction.predicted_class in lesion)
            ):
                continue
            if _same_cam_preannotation(rec, settings, lungs):
                summary.unchanged += 1
                continue
            try:
                img = read_image(rec.source_path)
            except ImageReadError as exc:
                summary.failures.append((rec.source_path, exc.message))
                continue
            pres[rec.image_id] = refined_preannotation(
                load_heatmap(ws, rec),
                img,
                settings=settings,
                lungs=lungs,
                relpath=relpaths.get(rec.source_path, Path(rec.source_path).name),
                source=rec.heatmap.method,
                model_version=rec.heatmap.model_version,
                score=rec.prediction.probability if rec.prediction else None,
            )
    with ws.ledger.transaction() as txn:
        for image_id, pre in pres.items():
            cur = txn.get(image_id)
            if cur is None or cur.state not in PREANNOTATION_REPLACEABLE_STATES:
                continue
            txn.put(cur.evolve(preannotation=pre))
            summary.preannotated += 1
            summary.empty += not pre.polygons
    ws.record_run(
        "preannotate",
        {
            "from": source,
            "model": str(Path(model).resolve()) if model else None,
            "refine": refine,
            "lung_masks": str(lung_masks) if lung_masks else None,
            "lung_model": str(lung_model) if lung_model else None,
            "images": len(images),
            "all_images": all_images,
            "cam_fallback": cam_fallback,
        },
        model_version=summary.model_version,
        result={k: v for k, v in summary.to_json().items() if k != "failures"}
        | {"failed": len(summary.failures)},
    )
    return summary


def _same_cam_preannotation(
    rec: ImageRecord, settings: Mapping[str, Any], lungs: LungFields
) -> bool:
    pre, hm = rec.preannotation, rec.heatmap
    return (
        pre is not None
        and hm is not None
        and pre.source == hm.method
        and pre.model_version == hm.model_version
        and pre.refine is not None
        and _refined_as(pre, str(settings["refine"]), lungs)
    )


def _segmenter_preannotations(
    ws: Workspace,
    model: str | Path,
    todo: Sequence[ImageRecord],
    summary: PreannotateSummary,
    batch_size: int,
    progress: bool,
    *,
    lungs: LungFields,
    relpaths: Mapping[str, str],
    cam_fallback: bool = True,
) -> dict[str, Preannotation]:
    """The segmenter's pre-annotations; with a lung field (``lungs``: lung masks or a lung
    segmenter) its map is restricted to the lungs first (``refine="lung"``), as lesions lie in
    them; an image without a lung field keeps the whole map (``refine=None``)."""
    from camlabel.active import lesion_probability, segmenter_uncertainty
    from camlabel.imaging import read_image
    from camlabel.models.segmenter import load_segmenter, segment_probability
    from camlabel.progress import progress_bar

    seg = load_segmenter(model)
    summary.model_version = seg.version
    lesion = tuple(ws.lesion_classes)
    settings = dict(cam_settings(ws)) | {"threshold": float(seg.threshold)}
    work = []
    for rec in todo:
        pre = rec.preannotation
        if (
            pre is not None
            and pre.source == "segmenter"
            and pre.model_version == seg.version
            and (pre.refine == "lung") == lungs.available
        ) or (cam_fallback and pre is not None and pre.fallback_for == seg.version):
            summary.unchanged += 1
        else:
            work.append(rec)
    out: dict[str, Preannotation] = {}
    step = max(1, batch_size)
    with progress_bar(total=len(work), desc="segmenter", enabled=progress, unit="img") as bar:
        for start in range(0, len(work), step):
            chunk = work[start : start + step]
            loaded = []
            for rec in chunk:
                try:
                    loaded.append((rec, read_image(rec.source_path)))
                except ImageReadError as exc:
                    summary.failures.append((rec.source_path, exc.message))
            probs = segment_probability(seg, [img for _, img in loaded], batch_size=step)
            for (rec, img), whole in zip(loaded, probs, strict=True):
                relpath = relpaths.get(rec.source_path, Path(rec.source_path).name)
                prob, kind, _ = lungs.restrict(whole, relpath, img)
                refine = "lung" if kind is not None else None
                pre = preannotation_from_map(
                    prob,
                    settings=settings,
                    source="segmenter",
                    model_version=seg.version,
                    score=float(prob.max()) if prob.size else None,
                    absolute=True,
                )
                p_lesion = lesion_probability(rec.prediction, lesion)
                u = round(segmenter_uncertainty(whole, pre.score or 0.0, p_lesion), 6)
                cam = rec.preannotation
                if (
                    cam_fallback
                    and not pre.polygons
                    and rec.prediction is not None
                    and rec.prediction.predicted_class in lesion
                    and cam is not None
                    and cam.source != "segmenter"
                    and cam.polygons
                ):
                    out[rec.image_id] = dataclasses.replace(
                        cam, uncertainty=u, fallback_for=seg.version
                    )
                    summary.cam_fallback += 1
                    continue
                out[rec.image_id] = dataclasses.replace(pre, uncertainty=u, refine=refine)
            bar.update(len(chunk))
    return out
