"""Validation Dice of a trained segmenter before and after BatchNorm recalibration, side by side.

Loads a segmenter folder written by training/train_seg.py (model.keras, model_info.json,
split.csv), scores its validation images through ``camlabel.models.segmenter.segment_probability`` (the
inference path ``camlabel predict`` uses, threshold 0.5, "ignore" mask pixels excluded), sets
the BatchNorm statistics from its un-augmented training images with dropout off
(``recalibrate_batchnorm``, as train_seg.py now does before saving), and scores again. The
weights are not changed and nothing is written.

Usage:
    .venv/bin/python benchmarks/bn_recalibration.py MODEL_DIR DATA_DIR [--json OUT.json]

DATA_DIR is the export the model was trained on (index.csv, images/, masks/).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import cv2
    import numpy as np

    from camlabel.geometry import dice
    from camlabel.models.seg_data import IGNORE, mask_codes, read_index
    from camlabel.models.segmenter import load_segmenter, segment_probability
    from camlabel.models.tiramisu import recalibrate_batchnorm
    from camlabel.train import segmenter_job as train_seg

    with (args.model_dir / "split.csv").open(newline="") as fh:
        split = {r["id"]: r["split"] for r in csv.DictReader(fh)}
    rows = read_index(args.data_dir)
    train = [r for r in rows if split.get(r.id) == "train"]
    val = [r for r in rows if split.get(r.id) == "val"]
    if not train or not val:
        raise SystemExit(f"{args.model_dir / 'split.csv'} names no train or no val images")
    seg = load_segmenter(args.model_dir)

    def score() -> dict[str, float]:
        dices = []
        for r in val:
            img = cv2.imread(str(args.data_dir / "images" / f"{r.id}.png"), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(args.data_dir / "masks" / f"{r.id}.png"), cv2.IMREAD_UNCHANGED)
            codes = mask_codes(mask)
            pred = segment_probability(seg, [img])[0] >= seg.threshold
            keep = codes != IGNORE
            dices.append(dice(pred & keep, (codes == 1) & keep))
        d = np.asarray(dices)
        return {"mean": float(d.mean()), "median": float(np.median(d)), "worst": float(d.min())}

    before = score()
    x, c = train_seg.load_rows(args.data_dir, train, seg.image_size)
    n = recalibrate_batchnorm(seg.model, train_seg._recalibration_batches(x, c, 8, 1234))
    after = score()
    out: dict[str, Any] = {
        "model": str(args.model_dir),
        "n_train": len(train),
        "n_val": len(val),
        "batches": n,
        "before": before,
        "after": after,
    }
    print("| validation Dice | mean | median | worst |")
    print("|---|---|---|---|")
    for name in ("before", "after"):
        s = out[name]
        print(f"| {name} | {s['mean']:.3f} | {s['median']:.3f} | {s['worst']:.3f} |")
    print(f"ratio after / before (mean): {after['mean'] / before['mean']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
