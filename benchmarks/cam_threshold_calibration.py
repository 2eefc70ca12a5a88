"""A CAM threshold calibrated per class on the previous round's masks vs the fixed default.

Issue 14 asks to measure, beside the other round-1 refinements, "the threshold calibrated per
class from the previous round's final masks (the threshold that maximized IoU with what
annotators returned)". On a finished demo workspace (``camlabel demo -w WS``; it keeps the
heatmaps, round 1's final masks and the phantoms' truth):

- calibration set: the images annotated in round 1 (their final masks, as annotators returned
  them), grouped by the class the classifier predicted (what a user knows; not the truth);
- evaluation set: every other lesion phantom with a heatmap (not annotated in round 1);
- for ``none`` and ``lung`` (the refinements that take a threshold): the per-class threshold of
  :func:`camlabel.cam.refine.calibrate_threshold` vs the default 0.5, and ``lung+opacity``
  (no threshold; the default) on the same images: IoU of the refined mask with the TRUE lesion.

Masks are compared as rasterized maps (not through polygons). The lung field is the phantoms'
lung mask. ~1 min.

Usage:
    .venv/bin/python benchmarks/cam_threshold_calibration.py WS [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("workspace", type=Path, help="a finished demo workspace")
    ap.add_argument("--data", type=Path, default=None, help="phantoms [WS/data/train]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from camlabel.cam.refine import calibrate_threshold, refine_cam
    from camlabel.demo import _truth_index
    from camlabel.geometry import iou
    from camlabel.imaging import read_image, read_mask_png
    from camlabel.preannotate import load_heatmap
    from camlabel.workspace import Workspace

    ws = Workspace.open(args.workspace)
    data = args.data or args.workspace / "data" / "train"
    truth = _truth_index(data / "metadata.csv")
    calib: dict[str, list[Any]] = {}
    evaluate: list[tuple[str, Any, Any, Any, Any]] = []
    for rec in ws.ledger.all():
        row = truth.get(rec.source_path)
        if row is None or rec.heatmap is None or rec.prediction is None:
            continue
        job = rec.jobs.get("labelstudio")
        cls = rec.prediction.predicted_class
        heat = load_heatmap(ws, rec)
        lung = read_mask_png(row["lung_mask"])
        image = read_image(rec.source_path).display
        if job is not None and job.round == 1 and rec.mask is not None:
            if cls in ws.lesion_classes:
                final = read_mask_png(ws.abs(rec.mask.path))
                calib.setdefault(cls, []).append((heat, image, lung, final))
            continue
        lesion = read_mask_png(row["lesion_mask"])
        if row["label"] in ws.lesion_classes and lesion.any():
            evaluate.append((cls, heat, image, lung, lesion))
    if not calib or not evaluate:
        raise SystemExit(f"{args.workspace}: no round-1 masks or no images left to evaluate")

    results: dict[str, Any] = {"workspace": str(args.workspace), "thresholds": {}, "methods": {}}
    print(
        f"calibration: round-1 masks { ({k: len(v) for k, v in calib.items()}) }; "
        f"evaluation: {len(evaluate)} other lesion phantoms"
    )
    print("| refinement | threshold | IoU vs truth: median | mean | share >= 0.8 |")
    print("|---|---|---|---|---|")
    for method in ("none", "lung"):
        found = {}
        for cls, samples in sorted(calib.items()):
            t, fit = calibrate_threshold(
                [(h, img, lung if method == "lung" else None, m) for h, img, lung, m in samples],
                method=method,
            )
            found[cls] = {"threshold": t, "calibration_iou": round(fit, 3), "n": len(samples)}
        results["thresholds"][method] = found
        per_class = {c: v["threshold"] for c, v in found.items()}
        named = ", ".join(f"{c} {t:.2f}" for c, t in sorted(per_class.items()))
        for label, thresholds in (("0.5", {}), (f"per class: {named}", per_class)):
            ious = [
                iou(
                    refine_cam(h, img, method=method, threshold=thresholds.get(c, 0.5), lung=lung),
                    les,
                )
                for c, h, img, lung, les in evaluate
            ]
            _row(results, method, label, ious)
    ious = [
        iou(refine_cam(h, img, method="lung+opacity", lung=lung), les)
        for _, h, img, lung, les in evaluate
    ]
    _row(results, "lung+opacity", "-", ious)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _row(results: dict[str, Any], method: str, label: str, ious: list[float]) -> None:
    import numpy as np

    a = np.asarray(ious)
    row = {
        "median": round(float(np.median(a)), 3),
        "mean": round(float(a.mean()), 3),
        "ge_0_8": round(float((a >= 0.8).mean()), 3),
        "n": len(ious),
    }
    results["methods"][f"{method} @ {label}"] = row
    print(f"| {method} | {label} | {row['median']:.3f} | {row['mean']:.3f} | {row['ge_0_8']:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
