"""``camlabel demo``: the whole loop on synthetic phantoms with the embedded Label Studio.

phantoms -> ensemble classifier -> evaluate -> Grad-CAM pre-annotations -> shortcut audit ->
Label Studio (embedded, 127.0.0.1) -> round 1: the CAM pre-annotations of the images the
ensemble is least sure of -> simulated annotators (or a person, ``--interactive``) ->
pull-masks -> FC-DenseNet103 -> round 2: NEW images pre-annotated by that U-Net, picked by its
uncertainty -> annotators -> pull-masks -> the U-Net fine-tuned from round 1's weights ->
predict on held-out phantoms -> HTML report.

Every step is the library call behind the matching CLI command, so the demo exercises the
same code a user runs. Each step is resumable: re-running the demo skips what is done
(phantoms on disk, a trained model, heatmaps of the same model, tasks already in the
project, annotations already made, masks unchanged).

The figures it reports (``WS/reports/summary.json`` and the report's headline):

- Grad-CAM pointing game: share of lesion images whose fused-CAM peak lies inside the true
  lesion (the phantoms know it), for the raw map and for the refined one (the CAM pooled over
  the pre-annotation's regions, :func:`camlabel.cam.refine.region_saliency`);
- pre-annotation vs final-mask IoU, and the share of pre-annotations accepted unchanged;
- U-Net lesion Dice on held-out phantoms (the paper's figure is 0.92), its mask restricted to
  the lung field as the demo's ``predict --lung-masks`` does (the phantoms' lung masks stand in
  for a lung segmenter), and without that restriction (``..._without_lung_field``);
- per round (``rounds``): pre-annotation IoU against the true lesion (median, mean, share
  >= 0.8), against the final masks, accepted unchanged, edited area, lead time, and the
  held-out lesion Dice of the U-Net trained after the round.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.workspace import Workspace

DICE_GOAL = 0.92
STEPS = 12


@dataclass(frozen=True)
class DemoSettings:
    """Sizes chosen so that the loop runs in minutes on a 2-core CPU (see docs/loop.md)."""

    seed: int = 0
    #: 80 per class: 160 lesion images, enough for two rounds of lesion masks
    n_train: int = 240
    n_heldout: int = 30
    phantom_size: int = 192
    cls_image_size: int = 96
    cls_epochs: int = 12
    backbones: tuple[str, ...] = ("densenet-s", "efficientnet-s", "vgg-s")
    cls_batch_size: int = 16
    cls_lr: float = 1e-3
    seg_image_size: int = 128
    #: round 1's U-Net (round 2's fine-tunes it for ``seg_round2_epochs``)
    seg_epochs: int = 45
    seg_batch_size: int = 8
    seg_lr: float = 2e-3
    #: cosine decay and no early stopping: on ~40 masks the validation Dice of the first
    #: epochs is noise (BatchNorm statistics still settling), and patience-based stopping
    #: ended an earlier demo at epoch 11 with the epoch-1 model (held-out Dice 0.24); the
    #: best-validation checkpoint is still the one kept
    seg_lr_schedule: str = "cosine"
    seg_blocks: tuple[int, ...] = (3, 4, 5, 5)
    seg_bottleneck: int = 6
    seg_growth: int = 12
    seg_first_filters: int = 24
    #: strided first convolution, logits upsampled bilinearly: ~4x less compute at 128 px,
    #: so the CPU affords the epochs the model needs (phantom lesions have wide, smooth
    #: boundaries; docs/segmentation.md)
    seg_stem_stride: int = 2
    #: lesion-free images (labelled normal, never annotated) trained on with an empty mask:
    #: masks alone taught the network to mark dark areas at the shoulders as lesions
    seg_negatives: int = 30
    #: how the members' CAMs combine: by their share of the class score (see camlabel.cam.base);
    #: the small ensemble's decision rests almost entirely on densenet-s; an equal say for the
    #: other two members ("normalize-mean") can bury its map (docs/classifier.md)
    cam_fusion: str = "contribution"
    skip_rate: float = 0.08
    #: pre-annotate every image, not only those predicted as a lesion class (the smoke-test
    #: run's one-epoch classifier finds too few lesions for a loop to run on)
    cam_all_images: bool = False
    double_rate: float = 0.25
    #: round 1: images published with their (refined) CAM pre-annotation, picked by the
    #: ensemble's predictive entropy; round 2: NEW images pre-annotated by round 1's U-Net,
    #: picked by the U-Net's own uncertainty (camlabel push-jobs --select N --strategy ...)
    round1_images: int = 80
    round2_images: int = 60
    select_strategy: str = "uncertainty"
    #: round 2's U-Net starts from round 1's weights (train-seg ``init-weights``) and
    #: fine-tunes on every mask; both trainings together (45 + 25 epochs) cost less than the
    #: single 75-epoch training of the one-round demo did (the demo's time goal: <= 15 min)
    seg_round2_epochs: int = 25


Log = Callable[[str], None]


def _truth_index(metadata_csv: Path) -> dict[str, dict[str, str]]:
    """Resolved image path -> its metadata row (label, lesion_mask, lung_mask, ...)."""
    root = metadata_csv.parent
    out = {}
    with metadata_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out[str((root / row["file"]).resolve())] = {
                k: (str((root / v).resolve()) if k in ("lesion_mask", "lung_mask", "file") else v)
                for k, v in row.items()
            }
    return out


def _step(log: Log, name: str) -> float:
    log(f"\n== {name}")
    return time.perf_counter()


def _done(log: Log, t0: float, what: str = "") -> None:
    log(f"   done in {time.perf_counter() - t0:.1f} s{(' — ' + what) if what else ''}")


def run_demo(
    workspace: str | Path,
    *,
    settings: DemoSettings | None = None,
    interactive: bool = False,
    keep_server: bool = False,
    progress: bool = True,
    log: Log = print,
    poll_s: float = 10.0,
) -> dict[str, Any]:
    """Run the loop end to end; returns the summary also written to ``reports/summary.json``."""
    from camlabel.audit import run_audit
    from camlabel.backends.labelstudio import server as lss
    from camlabel.evaluate import evaluate_classifier
    from camlabel.loop import pull_masks, workspace_status
    from camlabel.models.segmenter import MODEL_FILE
    from camlabel.phantoms import generate_phantoms
    from camlabel.preannotate import run_gradcam, run_preannotate
    from camlabel.report import build_report
    from camlabel.train.classifier import train_classifier

    s = settings or DemoSettings()
    t_start = time.perf_counter()
    ws = Workspace.init(workspace, seed=s.seed, image_size=s.cls_image_size)
    ws.config["seg_image_size"] = s.seg_image_size
    ws.config.setdefault("cam", {})["fusion"] = s.cam_fusion
    ws.save_config()
    reports = ws.dir("reports")
    data = ws.root / "data"
    train_dir, held_dir = data / "train", data / "heldout"

    # 1. phantoms -------------------------------------------------------------------
    t = _step(log, f"1/{STEPS} phantoms: {s.n_train} for the loop, {s.n_heldout} held out")
    for d, n, seed in ((train_dir, s.n_train, s.seed), (held_dir, s.n_heldout, s.seed + 1000)):
        if not (d / "metadata.csv").is_file():
            generate_phantoms(d, count=n, seed=seed, size=s.phantom_size, progress=progress)
    truth = _truth_index(train_dir / "metadata.csv")
    held_truth = _truth_index(held_dir / "metadata.csv")
    _done(log, t)

    # 2. classifier ---------------------------------------------------------------------
    model = ws.dir("models") / "ensemble.keras"
    t = _step(
        log,
        f"2/{STEPS} train a small DenseNet + EfficientNet + VGG ensemble ({', '.join(s.backbones)}; {s.cls_image_size} px, {s.cls_epochs} epochs, weights=none)",
    )
    if not model.is_file():
        train_classifier(
            train_dir / "metadata.csv",
            model,
            classes=ws.classes,
            image_size=s.cls_image_size,
            epochs=s.cls_epochs,
            batch_size=s.cls_batch_size,
            lr=s.cls_lr,
            weights="none",
            backbones=s.backbones,
            seed=s.seed,
            workspace=ws,
            progress=progress,
        )
    metrics = evaluate_classifier(
        model, held_dir / "metadata.csv", split="all", out_dir=reports / "classifier", workspace=ws
    )
    _done(log, t, f"held-out accuracy {metrics.get('accuracy', float('nan')):.3f}")

    # 3. Grad-CAM ---------------------------------------------------------------------------
    t = _step(log, f"3/{STEPS} Grad-CAM heatmaps -> pre-annotation polygons")
    cam = run_gradcam(
        ws,
        model,
        [train_dir / "metadata.csv"],
        all_images=s.cam_all_images,
        progress=progress,
        lung_masks=train_dir / "lung_masks",  # the lung field of cam.refine's default
    )
    points = _pointing_game(ws, truth)
    pointing = points["raw"]["rate"]
    _done(
        log,
        t,
        f"{cam.preannotated} pre-annotated; pointing game: Grad-CAM "
        f"{points['raw']['hits']}/{points['raw']['lesion_images']}, refined "
        f"{points['refined']['hits']}/{points['refined']['lesion_images']}",
    )

    # 4. audit -------------------------------------------------------------------------------
    t = _step(log, f"4/{STEPS} shortcut audit (CAM energy inside the lungs)")
    audit = run_audit(
        model,
        train_dir / "metadata.csv",
        lung_masks=train_dir / "lung_masks",
        fusion=s.cam_fusion,
        out_dir=reports,
        workspace=ws,
    )
    _done(log, t)

    # 5. Label Studio -------------------------------------------------------------------
    t = _step(log, f"5/{STEPS} start the embedded Label Studio (127.0.0.1)")
    st, creds, _ = lss.start(ws)
    log(f"   {st.url}  (login {creds.email}; password in {lss.secrets_path(ws)})")
    _done(log, t)
    try:
        # 6-7. round 1: the CAM's pre-annotations ------------------------------------------
        t = _step(
            log,
            f"6/{STEPS} round 1: push-jobs --select {s.round1_images} --strategy "
            f"{s.select_strategy}: tasks with the Grad-CAM polygons as predictions",
        )
        pushed = _push_round(ws, s, 1, progress)
        _done(
            log,
            t,
            f"{len(pushed.pushed)} new task(s), {len(pushed.already_present)} already present, project {pushed.project}",
        )
        _annotate(ws, 1, 7, truth, s, str(st.url), creds.email, interactive, log, poll_s)
        t = _step(log, f"8/{STEPS} round 1: pull-masks -> consensus masks; train the U-Net")
        pulled = pull_masks(ws, "labelstudio", progress=progress)
        log(f"   {pulled.masks_written} mask(s) written, {len(pulled.skipped)} skipped task(s)")
        seg1 = _train_seg(ws, s, s.seg_epochs, None, progress)
        held1 = _heldout_dice(ws, seg1.model_dir, held_truth)
        _done(
            log,
            t,
            f"segmenter {seg1.model_dir.name} ({len(seg1.mask_versions)} masks, "
            f"{len(seg1.negatives)} lesion-free images): val Dice "
            f"{_f(seg1.metrics.get('val_dice'))}, held-out lesion Dice {_f(held1)}",
        )

        # 9-10. round 2: the U-Net's pre-annotations, picked by its uncertainty ---------------
        t = _step(
            log,
            f"9/{STEPS} round 2: preannotate --from segmenter (new images); push-jobs "
            f"--select {s.round2_images} --strategy {s.select_strategy}",
        )
        pre2 = run_preannotate(
            ws,
            "segmenter",
            seg1.model_dir,
            all_images=s.cam_all_images,
            lung_masks=train_dir / "lung_masks",  # the lung field, as for the CAM in round 1
            progress=progress,
        )
        pushed2 = _push_round(ws, s, 2, progress)
        _done(
            log,
            t,
            f"{pre2.preannotated} pre-annotated by {pre2.model_version} ({pre2.cam_fallback} kept "
            "their CAM regions: the U-Net found nothing); "
            f"{len(pushed2.pushed)} new task(s), {len(pushed2.already_present)} already present",
        )
        _annotate(ws, 2, 10, truth, s, str(st.url), creds.email, interactive, log, poll_s)
        t = _step(
            log, f"11/{STEPS} round 2: pull-masks; fine-tune the U-Net from round 1's weights"
        )
        pulled = pull_masks(ws, "labelstudio", progress=progress)
        log(f"   {pulled.masks_written} mask(s) written, {len(pulled.skipped)} skipped task(s)")
    finally:
        if not keep_server:
            lss.stop(ws)

    seg = _train_seg(ws, s, s.seg_round2_epochs, seg1.model_dir / MODEL_FILE, progress)
    _done(
        log,
        t,
        f"segmenter {seg.model_dir.name} ({len(seg.mask_versions)} masks, "
        f"{len(seg.negatives)} lesion-free images): "
        f"val Dice {seg.metrics.get('val_dice', float('nan')):.3f}",
    )

    # 12. predict + report ------------------------------------------------------------------
    t = _step(log, f"12/{STEPS} predict on held-out phantoms; report")
    held = _heldout(ws, model, seg.model_dir, held_dir, held_truth, progress)
    _annotated_vs_predicted(ws, seg.model_dir)
    st_now = workspace_status(ws)
    rounds = _round_summary(ws, truth, st_now["rounds"], {"1": held1, "2": held["lesion_dice"]})
    summary = {
        "settings": asdict(s),
        "pointing_game_hit_rate": pointing,
        "pointing_game": points["raw"],
        "pointing_game_refined": points["refined"],
        "pointing_game_refined_rim": points["refined_rim"],
        "preannotation_iou_mean": st_now["effort"]["preannotation_iou_mean"],
        "accepted_unchanged_share": st_now["effort"]["accepted_unchanged_share"],
        "annotator_agreement_dice": st_now["masks"]["agreement_dice_mean"],
        "masks": st_now["masks"]["count"],
        "classifier_accuracy": metrics.get("accuracy"),
        "classifier_macro_f1": metrics.get("macro_f1"),
        "audit": audit.get("overall", {}),
        "segmenter_val_dice": seg.metrics.get("val_dice"),
        "segmenter_negatives": len(seg.negatives),
        "segmenter_init": str(seg1.model_dir.name),
        "heldout_lesion_dice": held["lesion_dice"],
        "heldout_lesion_dice_without_lung_field": held["lesion_dice_without_lung_field"],
        "heldout_pipeline_dice": held["pipeline_dice"],
        "rounds": rounds,
        "dice_goal": DICE_GOAL,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (reports / "summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
    )
    ws.record_run("demo", asdict(s), result={k: v for k, v in summary.items() if k != "settings"})
    report_path = build_report(ws)
    _done(log, t)
    log(f"\nreport: {report_path}")
    log(
        f"pointing game {_f(pointing)} · pre-annotation IoU {_f(summary['preannotation_iou_mean'])} · "
        f"held-out lesion Dice {_f(held['lesion_dice'])} (goal {DICE_GOAL}) · {summary['seconds']:.0f} s"
    )
    for key, rnd in rounds.items():
        log(
            f"round {key}: pre-annotation IoU vs truth median {_f(rnd['preannotation_iou_truth_median'])}, "
            f"{_pct(rnd['preannotation_iou_ge_0_8_share'])} at IoU >= 0.8 vs final masks, "
            f"{_pct(rnd['accepted_unchanged_share'])} accepted unchanged, final masks' Dice vs "
            f"truth {_f(rnd['final_mask_dice_truth_mean'])}, held-out lesion Dice after the round "
            f"{_f(rnd['heldout_lesion_dice'])}"
        )
    return summary


def _pointing_game(ws: Workspace, truth: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """The pointing game over the lesion images (does the map's peak lie inside the true
    lesion?), for two maps:

    - ``raw``: the fused Grad-CAM as the classifier produced it;
    - ``refined``: the Grad-CAM pooled over its refined region (``cam.refine``, the region the
      pre-annotation outlines; :func:`camlabel.cam.refine.region_saliency`): its peak is the
      interior of the region holding most CAM energy. Images without a pre-annotation count as
      misses;
    - ``refined_rim``: the raw map's peak within the refined region (this figure's definition
      before 2026-12-07; kept for comparison): on a region slightly wider than the lesion, a
      stride-16 map often peaks on its rim.
    """
    from camlabel.cam.refine import region_saliency
    from camlabel.imaging import read_mask_png
    from camlabel.loop import preannotation_mask
    from camlabel.preannotate import load_heatmap

    raw = refined = rim = n = 0
    by_path = {r.source_path: r for r in ws.ledger.all()}
    for path, row in truth.items():
        rec = by_path.get(path)
        if rec is None or rec.heatmap is None or row["label"] not in ws.lesion_classes:
            continue
        lesion = read_mask_png(row["lesion_mask"])
        if not lesion.any():
            continue
        hm = load_heatmap(ws, rec)
        n += 1
        r, c = np.unravel_index(int(np.argmax(hm)), hm.shape)
        raw += bool(lesion[r, c])
        region = preannotation_mask(rec)  # empty without a pre-annotation
        if region.shape == hm.shape and region.any():
            r, c = np.unravel_index(int(np.argmax(np.where(region, hm, -np.inf))), hm.shape)
            rim += bool(lesion[r, c])
            sal = region_saliency(hm, region)
            if sal.max() > 0:
                r, c = np.unravel_index(int(np.argmax(sal)), sal.shape)
                refined += bool(lesion[r, c])
    return {
        name: {"hits": hits, "lesion_images": n, "rate": hits / n if n else None}
        for name, hits in (("raw", raw), ("refined", refined), ("refined_rim", rim))
    }


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _annotate(
    ws: Workspace,
    round_no: int,
    step: int,
    truth: dict[str, dict[str, str]],
    s: DemoSettings,
    url: str,
    email: str,
    interactive: bool,
    log: Log,
    poll_s: float,
) -> None:
    """Round ``round_no``'s tasks annotated: by a person in the browser, or simulated."""
    jobs = {
        r.image_id: r.jobs["labelstudio"]
        for r in ws.ledger.all()
        if "labelstudio" in r.jobs and r.jobs["labelstudio"].round == round_no
    }
    if interactive:
        project = next((j.project for j in jobs.values()), None)
        t = _step(
            log,
            f"{step}/{STEPS} round {round_no}: annotate in the browser: {url}/projects/{project}/data"
            f"  (login {email})",
        )
        _wait_for_people(ws, jobs, log, poll_s)
        _done(log, t)
        return
    t = _step(
        log,
        f"{step}/{STEPS} round {round_no}: simulated annotators accept, edit or redraw the "
        "pre-annotations through the Label Studio API",
    )
    sim = _simulate(ws, jobs, truth, s, seed=s.seed + 100 * (round_no - 1))
    _done(
        log,
        t,
        f"{sim.annotated} annotated ({sim.double_annotated} by two people), {sim.skipped} "
        f"skipped; first annotators: {sim.accepted_unchanged} accepted unchanged, "
        f"{sim.edited} edited, {sim.redrawn} redrawn",
    )


def _push_round(ws: Workspace, s: DemoSettings, round_no: int, progress: bool) -> Any:
    """push-jobs --select N --strategy S --round R (a re-run tops the round up: idempotent)."""
    from camlabel.loop import push_jobs

    return push_jobs(
        ws,
        "labelstudio",
        progress=progress,
        select=s.round1_images if round_no == 1 else s.round2_images,
        strategy=s.select_strategy,
        round=round_no,
        seed=s.seed,
    )


def _train_seg(
    ws: Workspace, s: DemoSettings, epochs: int, init: Path | None, progress: bool
) -> Any:
    from camlabel.train.segmenter import train_segmenter

    return train_segmenter(
        ws,
        epochs=epochs,
        batch_size=s.seg_batch_size,
        lr=s.seg_lr,
        lr_schedule=s.seg_lr_schedule,
        image_size=s.seg_image_size,
        min_masks=8,
        seed=s.seed,
        patience=epochs,
        negatives=s.seg_negatives,
        model_overrides={
            **({"stem-stride": s.seg_stem_stride} if s.seg_stem_stride != 1 else {}),
            "down-blocks": ",".join(str(b) for b in s.seg_blocks),
            "bottleneck-layers": s.seg_bottleneck,
            "growth-rate": s.seg_growth,
            "initial-filters": s.seg_first_filters,
            **({"init-weights": str(init)} if init is not None else {}),
        },
        progress=progress,
    )


def _round_summary(
    ws: Workspace,
    truth: dict[str, dict[str, str]],
    telemetry: dict[str, Any],
    heldout_dice: dict[str, float | None],
) -> dict[str, dict[str, Any]]:
    """Per round: pre-annotation IoU against the phantoms' TRUE lesion (median, mean, n),
    beside the workspace's effort telemetry (vs the final masks), the final masks' own Dice
    against the true lesion (what the U-Net learns from: a ceiling for its held-out Dice), and
    the held-out lesion Dice of the U-Net trained after the round."""
    from camlabel.geometry import dice, iou
    from camlabel.imaging import read_mask_png
    from camlabel.loop import preannotation_mask

    by_round: dict[str, list[float]] = {}
    mask_dice: dict[str, list[float]] = {}
    for rec in ws.ledger.all():
        job = rec.jobs.get("labelstudio")
        row = truth.get(rec.source_path)
        if job is None or job.round is None or rec.preannotation is None or row is None:
            continue
        lesion = read_mask_png(row["lesion_mask"])
        if row["label"] in ws.lesion_classes and lesion.any():
            by_round.setdefault(str(job.round), []).append(iou(preannotation_mask(rec), lesion))
            if rec.mask is not None:
                final = read_mask_png(ws.abs(rec.mask.path))
                mask_dice.setdefault(str(job.round), []).append(dice(final, lesion))
    out = {}
    for key in sorted(set(by_round) | set(heldout_dice) | set(telemetry)):
        tel = telemetry.get(key) or {}
        vals = by_round.get(key, [])
        out[key] = {
            "published": tel.get("published"),
            "masked": tel.get("masked"),
            "sources": tel.get("sources"),
            "preannotation_iou_truth_median": float(np.median(vals)) if vals else None,
            "preannotation_iou_truth_mean": float(np.mean(vals)) if vals else None,
            "preannotation_iou_truth_ge_0_8_share": (
                sum(v >= 0.8 for v in vals) / len(vals) if vals else None
            ),
            "lesion_images": len(vals),
            "preannotation_iou_final": tel.get("preannotation_iou"),
            "preannotation_iou_ge_0_8_share": tel.get("preannotation_iou_ge_0_8_share"),
            "accepted_unchanged_share": tel.get("accepted_unchanged_share"),
            "edited_area": tel.get("edited_area"),
            "lead_time_s_median": tel.get("lead_time_s_median"),
            "final_mask_dice_truth_mean": (
                float(np.mean(mask_dice[key])) if mask_dice.get(key) else None
            ),
            "heldout_lesion_dice": heldout_dice.get(key),
        }
    return out


def _lesion_dice(prob: np.ndarray, threshold: float, row: dict[str, str]) -> tuple[float, float]:
    """A segmenter map's Dice with a phantom's true lesion: ``(within its lung field, over the
    whole image)``; the first is what ``camlabel predict --lung-masks`` delivers."""
    from camlabel.geometry import dice
    from camlabel.imaging import read_mask_png

    mask, true = prob >= threshold, read_mask_png(row["lesion_mask"])
    return dice(mask & read_mask_png(row["lung_mask"]), true), dice(mask, true)


def _heldout_dice(
    ws: Workspace, segmenter: Path, held_truth: dict[str, dict[str, str]]
) -> float | None:
    """Mean lesion Dice of ``segmenter`` on the held-out lesion phantoms (no classifier gate),
    its mask restricted to the lung field as ``camlabel predict --lung-masks`` does."""
    from camlabel.imaging import read_image, read_mask_png
    from camlabel.models.segmenter import load_segmenter, segment_probability

    seg = load_segmenter(segmenter)
    rows = [
        r
        for r in held_truth.values()
        if r["label"] in ws.lesion_classes and read_mask_png(r["lesion_mask"]).any()
    ]
    if not rows:
        return None
    probs = segment_probability(seg, [read_image(r["file"]) for r in rows])
    return float(
        np.mean([_lesion_dice(p, seg.threshold, r)[0] for p, r in zip(probs, rows, strict=True)])
    )


def _simulate(
    ws: Workspace,
    jobs: dict[str, Any],
    truth: dict[str, dict[str, str]],
    s: DemoSettings,
    seed: int,
) -> Any:
    from camlabel.backends.base import get_backend
    from camlabel.backends.labelstudio.simulate import simulate_annotators
    from camlabel.imaging import read_mask_png
    from camlabel.loop import preannotation_mask

    recs = {r.image_id: r for r in ws.ledger.all()}
    masks, labels, pre = {}, {}, {}
    for image_id in jobs:
        rec = recs[image_id]
        row = truth.get(rec.source_path)
        if row is None:
            continue
        masks[image_id] = read_mask_png(row["lesion_mask"])
        labels[image_id] = row["label"]
        if rec.preannotation is not None:
            pre[image_id] = preannotation_mask(rec)
    backend = get_backend("labelstudio", ws)
    return simulate_annotators(
        backend,  # type: ignore[arg-type]
        jobs,
        masks,
        labels=labels,
        seed=seed,
        skip_rate=s.skip_rate,
        double_rate=s.double_rate,
        preannotation_masks=pre,
    )


def _wait_for_people(ws: Workspace, jobs: dict[str, Any], log: Log, poll_s: float) -> None:
    """Poll Label Studio until every task has an annotation or was skipped."""
    from camlabel.backends.base import get_backend

    backend = get_backend("labelstudio", ws)
    total = len(jobs)
    last = -1
    while True:
        report = backend.pull(jobs, cursor=None, progress=False)
        done = sum(o.status in ("annotated", "skipped") for o in report.outcomes)
        if done != last:
            log(f"   {done}/{total} task(s) done")
            last = done
        if done >= total:
            return
        time.sleep(poll_s)


def _heldout(
    ws: Workspace,
    classifier: Path,
    segmenter: Path,
    held_dir: Path,
    held_truth: dict[str, dict[str, str]],
    progress: bool,
) -> dict[str, Any]:
    """camlabel predict on the held-out phantoms; lesion Dice against the true masks."""
    from camlabel.geometry import dice
    from camlabel.imaging import read_image, read_mask_png
    from camlabel.models.segmenter import load_segmenter, segment_probability
    from camlabel.predict import predict

    out = ws.dir("reports") / "heldout"
    result = predict(
        classifier,
        segmenter,
        [held_dir / "images"],
        out,
        lung_masks=held_dir / "lung_masks",
        progress=progress,
    )
    seg = load_segmenter(segmenter)
    items, seg_dices, pipe_dices, whole_dices = [], [], [], []
    for j in sorted(out.glob("*.json")):
        rec = json.loads(j.read_text())
        src = str(Path(rec["input"]).resolve())
        row = held_truth.get(src)
        if row is None:
            continue
        true = read_mask_png(row["lesion_mask"])
        is_lesion = row["label"] in ws.lesion_classes and true.any()
        pm = read_mask_png(rec["mask_path"]) if rec.get("mask_path") else np.zeros_like(true)
        d_pipe = dice(pm, true) if is_lesion else None
        d_seg = d_whole = None
        if is_lesion:
            prob = segment_probability(seg, [read_image(src)])[0]
            d_seg, d_whole = _lesion_dice(prob, seg.threshold, row)
            seg_dices.append(d_seg)
            whole_dices.append(d_whole)
            pipe_dices.append(d_pipe)
        items.append(
            {
                "name": Path(src).name,
                "label": row["label"],
                "predicted_class": rec.get("predicted_class"),
                "overlay_path": rec.get("overlay_path"),
                "dice": d_seg,
                "dice_without_lung_field": d_whole,
                "pipeline_dice": d_pipe,
            }
        )
    (ws.dir("reports") / "heldout.json").write_text(json.dumps(items, indent=2) + "\n")
    del result
    return {
        "lesion_dice": float(np.mean(seg_dices)) if seg_dices else None,
        "lesion_dice_without_lung_field": float(np.mean(whole_dices)) if whole_dices else None,
        "pipeline_dice": float(np.mean([d for d in pipe_dices if d is not None]))
        if pipe_dices
        else None,
        "n": len(items),
    }


def _annotated_vs_predicted(ws: Workspace, segmenter: Path) -> None:
    """Segment the annotated images so the report can show mask beside prediction."""
    from camlabel.imaging import read_image, write_png_atomic
    from camlabel.models.segmenter import load_segmenter, segment_probability

    seg = load_segmenter(segmenter)
    out = ws.dir("reports") / "predict"
    recs = [r for r in ws.ledger.all() if r.mask is not None][:12]
    for r in recs:
        prob = segment_probability(seg, [read_image(ws.abs(r.display_path))])[0]
        mpath = out / f"{r.image_id}.png"
        write_png_atomic(mpath, prob >= seg.threshold)
        (out / f"{r.image_id}.json").write_text(
            json.dumps({"image_id": r.image_id, "mask_path": str(mpath)})
        )
