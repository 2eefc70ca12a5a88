"""The shortcut audit (``camlabel audit``): where does the CAM put its energy?

:func:`run_audit` measures, per image, the share of the CAM inside the lung field (from lung
masks, or a lung segmenter) and in the border band, flags images whose CAM lies mostly
outside the lungs, and draws the worst ones.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.classify import load_classifier
from camlabel.errors import ImageReadError, UsageError
from camlabel.fileio import atomic_write_text
from camlabel.lungs import LungFields
from camlabel.preannotate import resolve_inputs

if TYPE_CHECKING:
    from camlabel.workspace import Workspace


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


def worst_tile(
    display: np.ndarray, heat: np.ndarray, lung: np.ndarray | None, row: Mapping[str, Any]
) -> tuple[np.ndarray, str]:
    """A tile of ``audit_worst.png`` and its caption: the CAM over the image, the lung field
    outlined in white, scaled to 256 px on the long side, labelled with label -> prediction
    and lung share; the caption names the file and its border share."""
    import cv2

    from camlabel.imaging import overlay_heatmap, put_label

    tile = overlay_heatmap(display, heat)
    if lung is not None:
        contours, _ = cv2.findContours(
            lung.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(
            tile, contours, -1, (255, 255, 255), max(1, round(max(tile.shape[:2]) / 300))
        )
    s = 256 / max(tile.shape[:2])
    tile = cv2.resize(
        tile,
        (max(1, round(tile.shape[1] * s)), max(1, round(tile.shape[0] * s))),
        interpolation=cv2.INTER_AREA,
    )
    share = row["lung_energy_share"]
    lung_txt = "-" if share is None else f"{share:.2f}"
    tile = put_label(tile, f"{row['label'] or '?'}->{row['predicted_class']} lung {lung_txt}")
    caption = f"{Path(row['file']).name} border {row['border_energy_share'] or 0:.2f}"
    return tile, caption


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
    from camlabel.cam import get_cam_method
    from camlabel.imaging import read_image
    from camlabel.plots import image_grid, save_png
    from camlabel.progress import progress_bar

    if not 0 < border_fraction < 0.5:
        raise UsageError(f"border fraction must be in (0, 0.5). Received: {border_fraction}")
    clf = load_classifier(model_path)
    cam = get_cam_method(method)(clf.model, clf.cam_layers, fusion=fusion)
    items = [data] if isinstance(data, str | Path) else list(data)
    listing = resolve_inputs(items, clf.classes)
    lungs = LungFields.open(lung_masks, lung_model)
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
                lung, row["lung_source"], row["lung_mask"] = lungs.get(rel, img)
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
                        tile, caption = worst_tile(img.display, heat, lung, row)
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
