"""Active learning on phantoms: held-out lesion Dice of the U-Net at equal annotation budget.

Issue 14, item 3. Which images should annotators label next? Measured side by side in one run
on synthetic phantoms (camlabel.phantoms), whose true lesion masks are known:

1. a pool of phantoms (``--pool``, seed ``--seed``) and a held-out set (``--heldout``, seed
   ``--seed + 1000``). The candidates are the pool's lesion images (covid / pneumonia), as the
   loop pre-annotates and sends for segmentation only images of a lesion class
   (``preannotate --from segmenter``); the classifier's gate is taken as perfect here;
2. a seed set of ``--seed-images`` candidates drawn at random (seeded) is "labelled": the
   simulated annotators return the phantoms' TRUE lesion masks (no Label Studio, no
   annotation noise: this isolates the choice of images from the quality of the masks);
3. round 1: the demo's small Tiramisu (camlabel.demo.DemoSettings, at ``--image-size``) is
   trained on the seed set by the training job's own ``train()``
   (camlabel.train.segmenter_job, in this process);
4. each strategy picks ``--select`` more candidates with camlabel.active.select_images, the
   function behind ``push-jobs --select N --strategy S``:

   - ``random``: the library's seeded draw (``--random-seeds`` draws);
   - ``uncertainty``: round 1's U-Net on every remaining candidate; its mean binary entropy
     (camlabel.active.binary_entropy_mean of the probability map, what run_preannotate stored
     in ``Preannotation.uncertainty`` before the confident-miss term);
   - ``uncertainty + miss``: the same plus P(lesion class) x (1 - the map's peak), with the
     committee's classifier's probabilities (camlabel.active.segmenter_uncertainty, what
     run_preannotate stores now);
   - ``committee``: the disagreement of the classifier ensemble's members
     (camlabel.active.committee_disagreement of ``Classifier.member_probabilities``, as
     run_gradcam stores them in ``Prediction.members``), from a small ensemble trained with
     camlabel.train.classifier.train_classifier on the pool's image-level labels (as the demo
     does); ``--no-committee`` skips it;

5. for each strategy the U-Net is fine-tuned from round 1's weights (``train-seg --init``) on
   seed + selected with the same settings and seed, and scored: mean lesion Dice over the
   held-out lesion images, at the phantoms' resolution (the probability map letterboxed back,
   thresholded at the model's threshold).

The table gives each strategy's images labelled, held-out Dice, the standard error of that
mean over held-out images, the ratio to random (the mean of the random draws), and the mean
paired difference from random per held-out image with its standard error. One
training seed and a few dozen held-out images: differences of a few hundredths are within
noise (the spread of the random draws shows how much the choice of images alone moves it).

Usage:
    .venv/bin/python benchmarks/active_learning.py [--pool 90] [--heldout 45]
        [--seed-images 12] [--select 12] [--round1-epochs 40] [--finetune-epochs 15]
        [--random-seeds 2] [--no-committee] [--json OUT] [--workdir DIR] [--quick]
    .venv/bin/python benchmarks/active_learning.py --table OUT   (a saved run's table again)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LESION_CLASSES = ("covid", "pneumonia")


@dataclass(frozen=True)
class Candidate:
    """A pool phantom: its ledger-like record and where its truth lies."""

    record: Any  # camlabel.records.ImageRecord
    file: Path
    lesion_mask: Path
    lesion_area_px: int


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _candidates(root: Path) -> list[Candidate]:
    from camlabel.imaging import read_image
    from camlabel.records import ImageRecord

    out = []
    for r in _rows(root):
        if r["label"] not in LESION_CLASSES or int(r["lesion_area_px"]) == 0:
            continue
        path = root / r["file"]
        img = read_image(path)
        rec = ImageRecord(
            image_id=img.image_id,
            source_path=str(path),
            source_format="png",
            width=int(r["width"]),
            height=int(r["height"]),
            display_path=str(path),
            label=r["label"],
            patient_id=r["patient_id"],
        )
        out.append(Candidate(rec, path, root / r["lesion_mask"], int(r["lesion_area_px"])))
    return sorted(out, key=lambda c: c.record.image_id)


def _export(out: Path, chosen: Sequence[Candidate]) -> Path:
    """The training job's data folder: the images and their TRUE masks (the "annotators")."""
    from camlabel.models.seg_data import IndexRow, write_index

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for c in chosen:
        rid = c.record.image_id[:16]
        shutil.copyfile(c.file, out / "images" / f"{rid}.png")
        shutil.copyfile(c.lesion_mask, out / "masks" / f"{rid}.png")
        # every labelled image trains: no validation split (the best-train-Dice checkpoint
        # under a cosine schedule is the end of the run), so no strategy loses images to it
        rows.append(IndexRow(rid, c.record.patient_id or rid, "train", c.record.label or "", "1"))
    write_index(out, rows)
    return out


def _train(
    data: Path, model_dir: Path, epochs: int, args: argparse.Namespace, init: Path | None
) -> dict[str, Any]:
    from camlabel.demo import DemoSettings
    from camlabel.train import segmenter_job

    d = DemoSettings()
    argv = [
        "--train", str(data), "--model-dir", str(model_dir), "--epochs", str(epochs),
        "--patience", str(epochs), "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--lr", str(d.seg_lr),
        "--lr-schedule", d.seg_lr_schedule, "--stem-stride", str(d.seg_stem_stride),
        "--down-blocks", ",".join(map(str, d.seg_blocks)),
        "--bottleneck-layers", str(d.seg_bottleneck), "--growth-rate", str(d.seg_growth),
        "--initial-filters", str(d.seg_first_filters), "--seed", str(args.seed),
        "--backup-every", str(epochs + 1),
    ]  # fmt: skip
    if init is not None:
        argv += ["--init-weights", str(init)]
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = model_dir.parent / f"{model_dir.name}.log"
    with log_path.open("w") as log, contextlib.redirect_stdout(log):
        return segmenter_job.train(segmenter_job.parse_args(argv, env={}))


def _heldout_dice(model_dir: Path, held: Sequence[Candidate]) -> list[float]:
    """Per held-out lesion image: Dice of the thresholded probability map vs the true mask."""
    from camlabel.geometry import dice
    from camlabel.imaging import read_image, read_mask_png
    from camlabel.models.segmenter import load_segmenter, segment_probability

    seg = load_segmenter(model_dir)
    probs = segment_probability(seg, [read_image(c.file) for c in held])
    return [
        dice(p >= seg.threshold, read_mask_png(c.lesion_mask))
        for p, c in zip(probs, held, strict=True)
    ]


def _uncertainty_records(
    model_dir: Path,
    cands: Sequence[Candidate],
    p_lesion: dict[str, float | None] | None = None,
) -> list[Any]:
    """Records carrying round 1's U-Net uncertainty: the mean binary entropy of its map, or,
    with ``p_lesion`` (image id -> the classifier's P(lesion class)), the entropy
    plus the confident-miss term, as run_preannotate stores it (segmenter_uncertainty)."""
    from camlabel.active import segmenter_uncertainty
    from camlabel.imaging import read_image
    from camlabel.models.segmenter import load_segmenter, segment_probability
    from camlabel.records import Preannotation

    seg = load_segmenter(model_dir)
    probs = segment_probability(seg, [read_image(c.file) for c in cands])
    return [
        replace(
            c.record,
            preannotation=Preannotation(
                polygons=(),
                source="segmenter",
                model_version=seg.version,
                # without p_lesion: the entropy alone (segmenter_uncertainty's None case)
                uncertainty=round(
                    segmenter_uncertainty(
                        p, float(p.max()), (p_lesion or {}).get(c.record.image_id)
                    ),
                    6,
                ),
            ),
        )
        for c, p in zip(cands, probs, strict=True)
    ]


def _committee_records(
    pool: Path, work: Path, cands: Sequence[Candidate], args: argparse.Namespace
) -> list[Any]:
    """Records carrying each ensemble member's class probabilities (Prediction.members)."""
    import numpy as np

    from camlabel.classify import load_classifier
    from camlabel.demo import DemoSettings
    from camlabel.imaging import read_image
    from camlabel.phantoms import LESION_KINDS
    from camlabel.train.classifier import train_classifier

    d = DemoSettings()
    model = work / "ensemble.keras"
    with (work / "ensemble.log").open("w") as log, contextlib.redirect_stdout(log):
        train_classifier(
            pool / "metadata.csv",
            model,
            classes=LESION_KINDS,
            image_size=args.cls_image_size,
            epochs=args.cls_epochs,
            batch_size=d.cls_batch_size,
            lr=d.cls_lr,
            weights="none",
            backbones=d.backbones,
            seed=args.seed,
            progress=False,
        )
    clf = load_classifier(model)
    out = []
    for start in range(0, len(cands), 16):
        chunk = cands[start : start + 16]
        x = np.stack([clf.model_input(read_image(c.file))[0] for c in chunk])
        probs = clf.predict(x)
        members = clf.member_probabilities(x)
        if members is None:
            raise SystemExit(f"{model}: the classifier exposes no members' probabilities")
        for c, p, m in zip(chunk, probs, members, strict=True):
            out.append(replace(c.record, prediction=replace(clf.prediction(p), members=m)))
    return out


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    import numpy as np

    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def _summarize(results: dict[str, dict[str, Any]]) -> tuple[list[str], float]:
    """Print the table; adds the mean, SE, ratio and paired difference to each result."""
    import numpy as np

    random_names = [k for k in results if k.startswith("random")]
    random_mean = float(np.mean([np.mean(results[k]["dice"]) for k in random_names]))
    # per held-out image, the random draws' mean: the paired difference below cancels how
    # hard each held-out image is, which dominates the plain SE of a mean
    random_per_image = np.mean([results[k]["dice"] for k in random_names], axis=0)
    print(
        f"\n{'strategy':26s} {'labelled':>8s} {'held-out Dice':>13s} {'± SE':>6s} "
        f"{'vs random':>9s} {'Δ paired ± SE':>14s} {'picked lesion px':>16s}"
    )
    for name, r in results.items():
        mean, se = _mean_se(r["dice"])
        d_mean, d_se = _mean_se(np.asarray(r["dice"]) - random_per_image)
        r["dice_mean"], r["dice_se"] = mean, se
        r["ratio_vs_random"] = mean / random_mean if random_mean else None
        r["paired_diff_vs_random"], r["paired_diff_se"] = d_mean, d_se
        area = r["selected_lesion_area_px"]
        print(
            f"{name:26s} {r['images']:8d} {mean:13.3f} {se:6.3f} "
            f"{r['ratio_vs_random']:9.2f} {f'{d_mean:+.3f} ± {d_se:.3f}':>14s} "
            f"{('-' if area is None else f'{area:.0f}'):>16s}"
        )
    return random_names, random_mean


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--pool", type=int, default=90, help="pool phantoms (1/3 per class)")
    p.add_argument("--heldout", type=int, default=45, help="held-out phantoms (1/3 per class)")
    p.add_argument("--phantom-size", type=int, default=128, help="phantom height in pixels")
    p.add_argument("--image-size", type=int, default=96, help="the U-Net's letterbox side")
    p.add_argument("--seed-images", type=int, default=12, help="labelled before round 1 (K0)")
    p.add_argument("--select", type=int, default=12, help="images each strategy adds (K)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="U-Net batch (the demo's is 8; on a dozen masks 4 gives twice the optimizer steps)",
    )
    p.add_argument("--round1-epochs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--random-seeds", type=int, default=2, help="random draws (seeds 0..n-1)")
    p.add_argument("--no-committee", action="store_true", help="skip the classifier ensemble")
    p.add_argument("--cls-image-size", type=int, default=64)
    p.add_argument("--cls-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="phantoms, seed set, training")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and models here")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (~4 min)")
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="print the table of a saved --json run; no training",
    )
    args = p.parse_args()
    if args.table:
        _summarize(json.loads(args.table.read_text())["results"])
        return 0
    if args.quick:
        args.pool, args.heldout, args.seed_images, args.select = 24, 9, 4, 4
        args.round1_epochs, args.finetune_epochs, args.random_seeds = 2, 1, 1
        args.phantom_size, args.image_size, args.cls_image_size, args.cls_epochs = 96, 64, 48, 1

    # the training job's thread settings (camlabel.train.local sets them for its child)
    from camlabel.train.local import child_thread_env

    os.environ.update(child_thread_env(os.environ))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    from camlabel.active import lesion_probability, select_images
    from camlabel.phantoms import generate_phantoms

    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        pool, held_dir = work / "pool", work / "heldout"
        for d, n, seed in (
            (pool, args.pool, args.seed),
            (held_dir, args.heldout, args.seed + 1000),
        ):
            if not (d / "metadata.csv").is_file():
                generate_phantoms(d, count=n, seed=seed, size=args.phantom_size)
        cands, held = _candidates(pool), _candidates(held_dir)
        order = np.random.default_rng(args.seed).permutation(len(cands))
        seed_set = [cands[i] for i in order[: args.seed_images]]
        seed_ids = {c.record.image_id for c in seed_set}
        rest = [c for c in cands if c.record.image_id not in seed_ids]
        if len(rest) < args.select:
            raise SystemExit(f"only {len(rest)} candidates left for --select {args.select}")
        print(
            f"pool {args.pool} phantoms ({len(cands)} lesion candidates), held-out "
            f"{len(held)} lesion images; seed set {len(seed_set)}, each strategy adds "
            f"{args.select}; U-Net {args.image_size} px, {args.round1_epochs} + "
            f"{args.finetune_epochs} epochs",
            flush=True,
        )
        timings: dict[str, float] = {}

        t = time.perf_counter()
        r1_dir = work / "models" / "round1"
        _train(_export(work / "data" / "round1", seed_set), r1_dir, args.round1_epochs, args, None)
        r1_dice = _heldout_dice(r1_dir, held)
        timings["round1_train_s"] = time.perf_counter() - t
        print(f"round 1: held-out Dice {np.mean(r1_dice):.3f} ({timings['round1_train_s']:.0f} s)")

        by_id = {c.record.image_id: c for c in rest}
        picks: dict[str, list[Any]] = {}
        for s in range(args.random_seeds):
            picks[f"random (seed {s})"] = select_images(
                [c.record for c in rest], args.select, "random", seed=s
            )
        t = time.perf_counter()
        picks["uncertainty"] = select_images(
            _uncertainty_records(r1_dir / "model.keras", rest), args.select, "uncertainty"
        )
        timings["uncertainty_scoring_s"] = time.perf_counter() - t
        if not args.no_committee:
            t = time.perf_counter()
            committee = _committee_records(pool, work, rest, args)
            picks["committee"] = select_images(committee, args.select, "committee")
            timings["committee_scoring_s"] = time.perf_counter() - t
            # the same classifier's P(lesion class) turns pixel entropy into the demo's
            # uncertainty: + P(lesion) x (1 - the map's peak), the confident-miss term
            p_lesion = {
                r.image_id: lesion_probability(r.prediction, LESION_CLASSES) for r in committee
            }
            picks["uncertainty + miss"] = select_images(
                _uncertainty_records(r1_dir / "model.keras", rest, p_lesion),
                args.select,
                "uncertainty",
            )

        results: dict[str, dict[str, Any]] = {
            "round 1 (seed set only)": {
                "images": len(seed_set),
                "dice": r1_dice,
                "selected_lesion_area_px": None,
            }
        }
        r1_model = r1_dir / "model.keras"
        for name, chosen in picks.items():
            t = time.perf_counter()
            picked = [by_id[sel.record.image_id] for sel in chosen]
            slug = name.replace(" ", "").replace("(", "-").replace(")", "")
            model_dir = work / "models" / slug
            data = _export(work / "data" / slug, seed_set + picked)
            _train(data, model_dir, args.finetune_epochs, args, r1_model)
            dices = _heldout_dice(model_dir, held)
            timings[f"{slug}_train_s"] = time.perf_counter() - t
            results[name] = {
                "images": len(seed_set) + len(picked),
                "dice": dices,
                "selected_lesion_area_px": float(np.mean([c.lesion_area_px for c in picked])),
                "selected_labels": {
                    lab: sum(c.record.label == lab for c in picked) for lab in LESION_CLASSES
                },
                "scores": [sel.score for sel in chosen],
            }
            print(
                f"{name}: held-out Dice {np.mean(dices):.3f} ({timings[f'{slug}_train_s']:.0f} s)"
            )

    random_names, random_mean = _summarize(results)
    pool_area = float(np.mean([c.lesion_area_px for c in rest]))
    total = time.perf_counter() - t_start
    print(
        f"\nrandom = mean of {len(random_names)} draw(s): {random_mean:.3f}; mean lesion area "
        f"of the remaining candidates {pool_area:.0f} px; SE over the {len(held)} held-out "
        f"lesion images (one training seed); total {total:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "heldout_lesion_images": len(held),
                    "candidates": len(cands),
                    "random_mean_dice": random_mean,
                    "candidate_mean_lesion_area_px": pool_area,
                    "results": results,
                    "timings_s": timings,
                    "total_s": total,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
