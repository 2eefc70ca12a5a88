"""CAM refinements side by side: pre-annotation IoU vs the true lesion, pointing game, cost.

On phantoms (known lesion and lung masks), for every lesion image: the fused Grad-CAM of a
classifier at the image's resolution, then each refinement of ``camlabel.cam.refine`` (``none`` =
the plain threshold camlabel used first, ``lung``, ``grabcut``, ``lung+grabcut``) at each
threshold, turned into the pre-annotation polygons exactly as ``camlabel gradcam`` does
(``preannotate.preannotation_from_mask``) and rasterized back. Per method:

- IoU of the pre-annotation with the true lesion: median, mean, share >= 0.8;
- pointing game: share of lesion images whose map peak (the lung-restricted map for the lung
  methods) lies inside the true lesion; refined pointing (rim): the same for the CAM's peak
  within the refined mask (an empty mask misses); region pointing: the peak of
  ``camlabel.cam.refine.region_saliency`` over the pre-annotation, the interior of the region
  holding most CAM energy (what the demo's ``pointing_game_refined`` reports);
- cost: the refinement's seconds per image beside Grad-CAM's own (batched, traced once; the
  tracing call is not timed), and their ratio (goal <= 0.25).

The lung field is the phantoms' lung mask (``--lung-source truth``, the default) or a lung
segmenter's (``--lung-model DIR``, trained with ``camlabel train-seg`` on the lung masks).

Usage (a classifier trained like the demo's: ``--train`` makes phantoms and trains one in
``--workdir``, ~3-5 min on 2 cores; or pass ``--model`` and ``--data``):
    .venv/bin/python benchmarks/cam_refine.py --train --seed 0 --workdir /tmp/cam_refine
    .venv/bin/python benchmarks/cam_refine.py --model WS/models/ensemble.keras --data WS/data/train
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO_CLASSIFIER = {  # camlabel.demo.DemoSettings
    "image_size": 96,
    "epochs": 12,
    "batch_size": 16,
    "lr": 1e-3,
    "backbones": ("densenet-s", "efficientnet-s", "vgg-s"),
}


def prepare(workdir: Path, seed: int, count: int) -> tuple[Path, Path]:
    """Phantoms and a demo-sized classifier in ``workdir`` (reused when present)."""
    from camlabel.config import DEFAULT_CLASSES
    from camlabel.phantoms import generate_phantoms
    from camlabel.train.classifier import train_classifier

    data = workdir / "train"
    if not (data / "metadata.csv").is_file():
        generate_phantoms(data, count=count, seed=seed, size=192, progress=False)
    model = workdir / "ensemble.keras"
    if not model.is_file():
        t = time.perf_counter()
        train_classifier(
            data / "metadata.csv",
            model,
            classes=DEFAULT_CLASSES,
            weights="none",
            seed=seed,
            progress=False,
            **DEMO_CLASSIFIER,  # type: ignore[arg-type]
        )
        print(f"trained {model} in {time.perf_counter() - t:.0f} s")
    return data, model


def prepare_lung_model(workdir: Path, seed: int, count: int = 60, epochs: int = 15) -> Path:
    """A small lung segmenter (the demo's Tiramisu at 96 px) trained with train-seg on the lung
    masks of ``count`` phantoms of another seed (``seed + 100``), as a user would on public
    lung outlines; reused when present."""
    import cv2

    from camlabel.imaging import write_png_atomic
    from camlabel.phantoms import generate_phantoms
    from camlabel.records import MaskInfo
    from camlabel.train.segmenter import train_segmenter
    from camlabel.workspace import Workspace

    done = workdir / "lung-model.txt"
    if done.is_file():
        return Path(done.read_text().strip())
    data = workdir / "lung-phantoms"
    if not (data / "metadata.csv").is_file():
        generate_phantoms(data, count=count, seed=seed + 100, size=192, progress=False)
    ws = Workspace.init(workdir / "lung-ws", seed=seed)
    rows = list(csv.DictReader((data / "metadata.csv").open(newline="")))
    records, _ = ws.register_images(
        [data / r["file"] for r in rows],
        patient_ids={str(data / r["file"]): r["patient_id"] for r in rows},
    )
    with ws.ledger.transaction() as txn:
        for rec, r in zip(records, rows, strict=True):
            mpath = ws.dir("masks") / f"{rec.image_id}.png"
            write_png_atomic(mpath, cv2.imread(str(data / r["lung_mask"]), cv2.IMREAD_GRAYSCALE))
            info = MaskInfo(ws.rel(mpath), 1, ("lung",), "single", "0" * 64)
            txn.put(rec.evolve(mask=info))
    t = time.perf_counter()
    res = train_segmenter(
        ws,
        epochs=epochs,
        batch_size=8,
        lr=2e-3,
        lr_schedule="cosine",
        image_size=96,
        min_masks=8,
        seed=seed,
        patience=epochs,
        model_overrides={
            "stem-stride": 2,
            "down-blocks": "3,4,5,5",
            "bottleneck-layers": 6,
            "growth-rate": 12,
            "initial-filters": 24,
        },
        progress=False,
    )
    print(
        f"lung segmenter {res.model_dir} in {time.perf_counter() - t:.0f} s: "
        f"val Dice {res.metrics.get('val_dice', float('nan')):.3f}"
    )
    done.write_text(str(res.model_dir))
    return res.model_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None, help="phantom folder (metadata.csv)")
    ap.add_argument("--train", action="store_true", help="make phantoms + a classifier first")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cam_refine"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=180)
    ap.add_argument("--cam-method", default="gradcam")
    ap.add_argument("--fusion", default="contribution")
    ap.add_argument(
        "--cam-layers",
        default=None,
        help="comma-separated CAM layers, one per ensemble member (default: the model's own; "
        "e.g. pool3_relu,top_activation,vggs_block3_conv2 for a stride-8 DenseNet-s map)",
    )
    ap.add_argument("--refinements", default="none,lung,grabcut,lung+grabcut,lung+opacity")
    ap.add_argument("--thresholds", default="0.5,0.3,otsu")
    ap.add_argument("--lung-model", type=Path, default=None)
    ap.add_argument(
        "--train-lung", action="store_true", help="train a lung segmenter first (--lung-model)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from camlabel.cam import get_cam_method
    from camlabel.cam.refine import NEEDS_LUNG, refine_cam, region_saliency
    from camlabel.classify import load_classifier
    from camlabel.config import CamSettings
    from camlabel.geometry import PolygonPx, iou, polygons_to_mask
    from camlabel.imaging import read_image, read_mask_png
    from camlabel.lungs import lung_field
    from camlabel.preannotate import preannotation_from_mask

    if args.train:
        args.data, args.model = prepare(args.workdir / f"s{args.seed}", args.seed, args.count)
    if args.train_lung:
        args.lung_model = prepare_lung_model(args.workdir / f"s{args.seed}", args.seed)
    if args.model is None or args.data is None:
        ap.error("give --model and --data, or --train")

    clf = load_classifier(args.model)
    rows = [r for r in csv.DictReader((args.data / "metadata.csv").open(newline=""))]
    rows = [r for r in rows if r["label"] != "normal"]
    imgs, xs, boxes, truths, lungs = [], [], [], [], []
    for r in rows:
        img = read_image(args.data / r["file"])
        x, box = clf.model_input(img)
        imgs.append(img)
        xs.append(x)
        boxes.append(box)
        truths.append(read_mask_png(args.data / r["lesion_mask"]))
        lungs.append(read_mask_png(args.data / r["lung_mask"]))
    if args.lung_model is not None:
        from camlabel.models.segmenter import load_segmenter, segment_probability

        seg = load_segmenter(args.lung_model)
        t = time.perf_counter()
        probs = segment_probability(seg, imgs)
        lung_s = (time.perf_counter() - t) / len(imgs)
        lungs = [lung_field(p >= seg.threshold) for p in probs]
        lung_iou = [
            iou(a, read_mask_png(args.data / r["lung_mask"]))
            for a, r in zip(lungs, rows, strict=True)
        ]
        print(
            f"lung segmenter: {lung_s * 1e3:.1f} ms/image, lung IoU median {np.median(lung_iou):.3f}"
        )
    else:
        lung_s = 0.0

    batch = np.stack(xs)
    layers = args.cam_layers.split(",") if args.cam_layers else clf.cam_layers
    cam = get_cam_method(args.cam_method)(clf.model, layers, fusion=args.fusion)
    cam(batch[:2])  # tracing, not timed
    t = time.perf_counter()
    res = cam(batch)
    cam_s = (time.perf_counter() - t) / len(batch)
    heats = [box.heatmap_to_image(g) for box, g in zip(boxes, res.heatmaps, strict=True)]
    n = len(rows)
    print(
        f"{n} lesion phantoms ({args.data}); model {clf.model_version}; {args.cam_method} "
        f"{','.join(layers)} "
        f"{args.fusion}: {cam_s * 1e3:.1f} ms/image"
    )
    print(
        "| refinement | threshold | IoU median | IoU mean | IoU >= 0.8 | pointing game "
        "| refined pointing (rim) | region pointing | refine ms/image | extra vs Grad-CAM |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    cam_defaults = CamSettings()
    results: dict[str, Any] = {
        "model": str(args.model),
        "data": str(args.data),
        "lesion_images": n,
        "gradcam_ms_per_image": round(cam_s * 1e3, 2),
        "lung_model": str(args.lung_model) if args.lung_model else None,
        "lung_segmenter_ms_per_image": round(lung_s * 1e3, 2),
        "methods": {},
    }
    for method in [m for m in args.refinements.split(",") if m]:
        uses_lung = method in NEEDS_LUNG
        hits = 0
        for heat, lung, truth in zip(heats, lungs, truths, strict=True):
            m = np.where(lung, heat, 0) if uses_lung else heat
            r, c = np.unravel_index(int(np.argmax(m)), m.shape)
            hits += bool(truth[r, c])
        thresholds = [t for t in args.thresholds.split(",") if t]
        if method not in ("none", "lung"):
            thresholds = thresholds[:1]  # the threshold applies to none and lung only
        for thr_s in thresholds:
            thr: Any = thr_s if thr_s == "otsu" else float(thr_s)
            settings = {
                "threshold": thr,
                "min_area_fraction": cam_defaults.min_area_fraction,
                "epsilon_px": cam_defaults.epsilon_px,
                "max_vertices": cam_defaults.max_vertices,
            }
            ious, spent, refined_hits, region_hits = [], 0.0, 0, 0
            for img, heat, lung, truth in zip(imgs, heats, lungs, truths, strict=True):
                t = time.perf_counter()
                mask = refine_cam(heat, img.display, method=method, threshold=thr, lung=lung)
                spent += time.perf_counter() - t
                if mask.any():  # the CAM's peak within the refined mask
                    r, c = np.unravel_index(int(np.argmax(np.where(mask, heat, -1))), mask.shape)
                    refined_hits += bool(truth[r, c])
                pre = preannotation_from_mask(
                    mask, settings=settings, source=method, model_version=""
                )
                polys = [PolygonPx.from_json(p) for p in pre.polygons]
                drawn = polygons_to_mask(polys, *truth.shape) if polys else np.zeros_like(truth)
                ious.append(iou(drawn, truth))
                sal = region_saliency(heat, drawn)
                if sal.max() > 0:
                    r, c = np.unravel_index(int(np.argmax(sal)), sal.shape)
                    region_hits += bool(truth[r, c])
            per_img = spent / n + (lung_s if uses_lung else 0.0)
            a = np.asarray(ious)
            row = {
                "threshold": thr,
                "iou_median": round(float(np.median(a)), 3),
                "iou_mean": round(float(a.mean()), 3),
                "iou_ge_0_8": round(float((a >= 0.8).mean()), 3),
                "pointing_game": round(hits / n, 3),
                "refined_pointing": round(refined_hits / n, 3),
                "region_pointing": round(region_hits / n, 3),
                "refine_ms_per_image": round(per_img * 1e3, 2),
                "extra_vs_gradcam": round(per_img / cam_s, 3),
            }
            results["methods"][f"{method}@{thr_s}"] = row
            print(
                f"| {method} | {thr_s} | {row['iou_median']:.3f} | {row['iou_mean']:.3f} | "
                f"{row['iou_ge_0_8']:.3f} | {row['pointing_game']:.3f} | "
                f"{row['refined_pointing']:.3f} | {row['region_pointing']:.3f} | "
                f"{row['refine_ms_per_image']:.1f} | {row['extra_vs_gradcam']:.2f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
