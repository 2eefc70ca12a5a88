"""Does the classifier's CAM point at the lesion? Pointing game per ensemble member, and a twin test.

On phantoms (whose lesion masks are known), for each CAM method: the **pointing game** (share of
lesion images whose CAM peak lies inside the true lesion) and the **lesion energy enrichment**
(share of CAM energy inside the lesion / lesion area share; 1.0 = no better than a uniform map),
for the fused map under each fusion rule and for each member's own map (at its layer's
resolution, upsampled).

The **twin test** says whether the classifier *uses* the lesion at all: every lesion phantom is
re-rendered from the same seeds as a "normal" phantom — same patient anatomy, same acquisition,
no lesion — and both are classified. If the lesion images are called covid/pneumonia and their
lesion-free twins normal, the decision rests on the lesion, whatever the CAM shows.

Usage (the demo's workspace after ``camlabel demo -w WS``):
    .venv/bin/python benchmarks/cam_pointing.py --model WS/models/ensemble.keras \\
        --data WS/data/train [--methods gradcam,gradcampp]
        [--fusions normalize-mean,sum,contribution] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pointing(maps: Any, boxes: list[Any], truths: list[Any], size: int) -> tuple[float, float]:
    import cv2
    import numpy as np

    hits, enrich = 0, []
    for m, box, t in zip(maps, boxes, truths, strict=True):
        grid = np.asarray(m, np.float32)
        if grid.shape != (size, size):
            grid = cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)
        heat = box.heatmap_to_image(grid).astype(np.float64)
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hits += bool(t[r, c])
        total = heat.sum()
        enrich.append(float(heat[t].sum() / total / t.mean()) if total > 0 else 0.0)
    return hits / len(truths), float(np.mean(enrich))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="phantom folder (metadata.csv)")
    ap.add_argument("--methods", default="gradcam,gradcampp")
    ap.add_argument("--fusions", default="normalize-mean,sum,contribution")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import cv2
    import numpy as np

    from camlabel.cam import get_cam_method
    from camlabel.classify import load_classifier
    from camlabel.imaging import read_image, read_mask_png, write_png_atomic
    from camlabel.phantoms import render_phantom

    clf = load_classifier(args.model)
    rows = list(csv.DictReader((args.data / "metadata.csv").open(newline="")))
    first_seed: dict[str, int] = {}
    for r in rows:  # generate_phantoms seeds a patient's anatomy with its first image's seed
        first_seed.setdefault(r["patient_id"], int(r["seed"]))
    lesion_rows = [r for r in rows if r["label"] != "normal"]
    xs, boxes, truths = [], [], []
    for r in lesion_rows:
        x, box = clf.model_input(read_image(args.data / r["file"]))
        xs.append(x)
        boxes.append(box)
        truths.append(read_mask_png(args.data / r["lesion_mask"]))
    batch = np.stack(xs)
    size = batch.shape[1]
    results: dict[str, Any] = {"model": str(args.model), "lesion_images": len(lesion_rows)}
    print(
        f"{len(lesion_rows)} lesion phantoms; model {clf.model_version}; CAM layers {clf.cam_layers}"
    )
    print("| method | map | pointing game | lesion energy enrichment |")
    print("|---|---|---|---|")
    for method in [m for m in args.methods.split(",") if m]:
        per: dict[str, Any] = {}
        fused = []
        for fusion in [f for f in args.fusions.split(",") if f]:
            res = get_cam_method(method)(clf.model, clf.cam_layers, fusion=fusion)(
                batch, batch_size=16
            )
            fused.append((f"fused {fusion}", res.heatmaps))
        for name, maps in [*fused, *zip(res.layers, res.layer_maps, strict=True)]:
            hit, enr = pointing(maps, boxes, truths, size)
            shape = "x".join(map(str, np.asarray(maps).shape[1:]))
            per[name] = {"pointing_game": round(hit, 3), "enrichment": round(enr, 2), "grid": shape}
            print(f"| {method} | {name} ({shape}) | {hit:.3f} | {enr:.2f} |")
        results[method] = per

    # twin test
    lesion_idx = [clf.classes.index(c) for c in clf.classes if c != "normal"]
    normal_idx = clf.classes.index("normal") if "normal" in clf.classes else None
    called_lesion = twin_normal = identical = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(lesion_rows):
            h, w = int(r["height"]), int(r["width"])
            pseed = first_seed[r["patient_id"]]
            seed = int(r["seed"])
            same, _, _ = render_phantom(
                np.random.default_rng(seed), r["label"], h, w, patient_seed=pseed
            )
            twin, _, _ = render_phantom(
                np.random.default_rng(seed), "normal", h, w, patient_seed=pseed
            )
            on_disk = cv2.imread(str(args.data / r["file"]), cv2.IMREAD_UNCHANGED)
            identical += bool(np.array_equal(same, on_disk))
            p = Path(tmp) / "twin.png"
            write_png_atomic(p, twin)
            xb, _ = clf.model_input(read_image(p))  # batch[i]: the lesion image itself
            prob = np.asarray(clf.model.predict_on_batch(np.stack([batch[i], xb])))
            called_lesion += int(np.argmax(prob[0])) in lesion_idx
            twin_normal += normal_idx is not None and int(np.argmax(prob[1])) == normal_idx
    n = len(lesion_rows)
    results["twin_test"] = {
        "re_rendered_identically": identical,
        "lesion_image_called_lesion": called_lesion,
        "twin_called_normal": twin_normal,
        "n": n,
    }
    print(
        f"\ntwin test: {identical}/{n} phantoms re-rendered byte-identical; lesion image called "
        f"covid/pneumonia {called_lesion}/{n}; its lesion-free twin called normal {twin_normal}/{n}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
