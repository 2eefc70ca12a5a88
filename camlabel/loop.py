"""The labeling loop's backend-independent steps: push-jobs, pull-masks, status.

Nothing here knows which backend it talks to: it builds :class:`PushItem` from ledger
records, hands them to ``Backend.push`` and commits the returned job ids after each chunk;
``Backend.pull`` returns annotations with masks at the original resolution, and this module
writes one raster per annotation, merges them by the consensus rule, writes the mask
atomically (a new version only when it changed), and records provenance and effort
telemetry in the ledger. The pull cursor is saved only after the ledger commit, so an
interrupted pull is simply redone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camlabel import consensus
from camlabel.backends.base import PullReport, PushItem, PushReport, TaskOutcome, get_backend
from camlabel.errors import AnnotationError, CamlabelError, UsageError, WorkspaceError
from camlabel.fileio import atomic_write_text
from camlabel.locks import DEFAULT_WAIT_S, exclusive
from camlabel.records import Annotation, ImageRecord, JobRef, MaskInfo
from camlabel.workspace import Workspace


# --------------------------------------------------------------------------- push
def push_jobs(
    ws: Workspace,
    backend: str = "labelstudio",
    *,
    options: Mapping[str, Any] | None = None,
    include_all: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    select: int | None = None,
    strategy: str = "uncertainty",
    round: int | None = None,
    seed: int = 0,
    on_wait: Callable[[str], None] | None = None,
    lock_wait_s: float = DEFAULT_WAIT_S,
) -> PushReport:
    """Publish images that have a pre-annotation (or all registered images with ``include_all``).

    Job ids are committed to the ledger after every chunk the backend confirms; the backend
    itself skips images already present on its side, so a re-run after any interruption
    publishes nothing twice.

    ``select=N`` publishes only the ``N`` not-yet-published images that ``strategy``
    (:mod:`camlabel.active`) ranks first, with their score as the task's priority. Each newly
    published image records its ``round`` (default: the last round while the pre-annotations
    come from the sources it used, so a resumed push stays in its round; the next round when
    they come from a new source, e.g. a trained segmenter; 1 at first); images already
    published keep theirs.

    The whole publication holds the workspace's push lock for this
    backend (:mod:`camlabel.locks`), so concurrent pushes wait for each other instead of
    racing between the listing and the import (``on_wait`` is told when it must wait).
    """
    with contextlib.ExitStack() as stack:
        if not dry_run:
            stack.enter_context(
                exclusive(
                    ws.root,
                    f"push-{backend}",
                    what=f"push-jobs --backend {backend}",
                    wait_s=lock_wait_s,
                    on_wait=on_wait,
                )
            )
        return _push(
            ws,
            backend,
            options=options,
            include_all=include_all,
            dry_run=dry_run,
            progress=progress,
            select=select,
            strategy=strategy,
            round=round,
            seed=seed,
        )


def _push(
    ws: Workspace,
    backend: str,
    *,
    options: Mapping[str, Any] | None,
    include_all: bool,
    dry_run: bool,
    progress: bool,
    select: int | None,
    strategy: str,
    round: int | None,
    seed: int,
) -> PushReport:
    """:func:`push_jobs`' work, under the push lock: plan (selection, round), publish, commit."""
    # Planned by index: without --all only the pre-annotated rows are read and parsed.
    planned = ws.ledger.iter_records() if include_all else ws.ledger.with_preannotation()
    candidates = sorted(planned, key=lambda r: r.image_id)
    round_no = round if round is not None else _next_round(ws, backend, candidates)
    if round_no < 1:
        raise UsageError(f"--round must be at least 1. Received: {round_no}")
    priority: dict[str, float] = {}
    if select is not None:
        from camlabel.active import select_images

        fresh = [rec for rec in candidates if backend not in rec.jobs]
        # a re-run of the same round tops the round up to N instead of adding N more
        quota = select - sum(
            1 for rec in candidates if (j := rec.jobs.get(backend)) and j.round == round_no
        )
        chosen = select_images(fresh, quota, strategy, seed=seed) if fresh and quota > 0 else []
        priority = {s.record.image_id: s.score for s in chosen}
        candidates = [s.record for s in chosen]
    items = [
        dataclasses.replace(_push_item(ws, rec, backend), priority=priority.get(rec.image_id))
        for rec in candidates
    ]
    run_settings = {
        "backend": backend,
        "include_all": include_all,
        "dry_run": dry_run,
        "select": select,
        "strategy": strategy if select is not None else None,
        "round": round_no,
        "seed": seed,
    }
    if select is not None and not items:  # the round is full, or every image is published
        ws.record_run(
            "push-jobs",
            run_settings,
            result={"project": None, "pushed": 0, "already_present": 0, "failures": 0},
        )
        return PushReport()
    if not items:
        raise UsageError(
            "nothing to push: no image in the ledger has a pre-annotation",
            hint="run camlabel gradcam MODEL IMAGES -w WS first, or pass --all to push empty tasks",
        )
    be = get_backend(backend, ws, options)

    def on_pushed(jobs: Mapping[str, JobRef]) -> None:
        if dry_run:
            return
        with ws.ledger.transaction() as txn:
            for image_id, job in jobs.items():
                rec = txn.get(image_id)
                if rec is None:
                    continue
                old = rec.jobs.get(backend)
                if job.round is None:
                    kept = old.round if old is not None and old.round is not None else None
                    job = dataclasses.replace(job, round=kept if kept is not None else round_no)
                if old != job:
                    txn.put(rec.with_job(job))

    report = be.push(items, dry_run=dry_run, progress=progress, on_pushed=on_pushed)
    if not dry_run:
        on_pushed({**report.already_present, **report.pushed})
    ws.record_run(
        "push-jobs",
        {**run_settings, **be.describe()},
        result={
            "project": report.project,
            "pushed": len(report.pushed),
            "already_present": len(report.already_present),
            "failures": len(report.failures),
        },
    )
    return report


def _next_round(ws: Workspace, backend: str, candidates: list[ImageRecord]) -> int:
    """The round new publications join when ``--round`` is not given.

    A new round starts when the pre-annotations about to be published come from a source the
    last round did not use (a trained segmenter after CAMs, a newer model); otherwise the last
    round goes on, so a re-run after an interruption, or ``--select`` topping up, stays in the
    round it continues. 1 when nothing is published yet.
    """
    by_round: dict[int, set[str | None]] = {}
    for rec in ws.ledger.all():
        job = rec.jobs.get(backend)
        if job is not None and job.round is not None:
            by_round.setdefault(job.round, set()).add(_source_of(rec))
    if not by_round:
        return 1
    last = max(by_round)
    fresh = {_source_of(rec) for rec in candidates if backend not in rec.jobs}
    return last if fresh <= by_round[last] else last + 1


def _source_of(rec: ImageRecord) -> str | None:
    pre = rec.preannotation
    if pre is None:
        return None
    # a CAM kept where a segmenter found nothing belongs to that segmenter's round
    fallback = f" fallback for {pre.fallback_for}" if pre.fallback_for else ""
    return f"{pre.source}@{pre.model_version}{fallback}"


def _push_item(ws: Workspace, rec: ImageRecord, backend: str) -> PushItem:
    pred = rec.prediction
    return PushItem(
        image_id=rec.image_id,
        width=rec.width,
        height=rec.height,
        display_png=ws.abs(rec.display_path),
        preannotation=rec.preannotation,
        predicted_class=pred.predicted_class if pred else None,
        probability=pred.probability if pred else None,
        existing=rec.jobs.get(backend),
    )


# --------------------------------------------------------------------------- pull
@dataclass
class PullSummary:
    """What one pull did (also printed by the CLI and recorded in runs.jsonl)."""

    backend: str
    tasks: int = 0
    new_annotations: int = 0
    masks_written: int = 0
    masks_unchanged: int = 0
    #: annotations that were in the ledger but are gone from the labeling tool
    deleted_annotations: int = 0
    #: images whose mask was withdrawn because the annotations it came from were deleted
    masks_withdrawn: list[str] = field(default_factory=list)
    waiting_for_annotations: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "tasks": self.tasks,
            "new_annotations": self.new_annotations,
            "masks_written": self.masks_written,
            "masks_unchanged": self.masks_unchanged,
            "deleted_annotations": self.deleted_annotations,
            "masks_withdrawn": len(self.masks_withdrawn),
            "waiting_for_annotations": len(self.waiting_for_annotations),
            "skipped": len(self.skipped),
            "unannotated": len(self.unannotated),
            "failed": [{"item": i, "reason": r} for i, r in self.failed],
        }


def cursor_path(ws: Workspace, backend: str) -> Path:
    return ws.dir("exports") / f"{backend}-cursor.json"


def read_cursor(path: Path) -> dict[str, Any] | None:
    """The saved pull cursor (None when there is none); a damaged file is a clear error."""
    if not path.exists():
        return None
    try:
        cursor = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        cursor = exc
    if not isinstance(cursor, dict):
        raise WorkspaceError(
            f"the pull cursor {path} is damaged (not a JSON object: {str(cursor)[:80]})",
            hint="run pull-masks --full once: it reads every task again and writes a new cursor",
        )
    return cursor


def pull_masks(
    ws: Workspace,
    backend: str = "labelstudio",
    *,
    options: Mapping[str, Any] | None = None,
    consensus_rule: str | None = None,
    min_annotations: int | None = None,
    full: bool = False,
    progress: bool = True,
) -> PullSummary:
    """Fetch new/updated annotations, write masks and provenance. Safe to interrupt and re-run."""
    settings = ws.settings.consensus
    rule = consensus_rule or settings.rule
    k = int(min_annotations if min_annotations is not None else settings.min_annotations)
    if rule not in consensus.RULES:
        consensus.merge([np.zeros((1, 1), bool)], rule)  # raises the listing error
    if k < 1:
        raise UsageError(f"--min-annotations must be >= 1. Received: {k}")
    jobs = ws.ledger.jobs_for(backend)
    summary = PullSummary(backend=backend)
    if not jobs:
        raise UsageError(
            f"nothing to pull: no image in the ledger was pushed to {backend}",
            hint=f"run camlabel push-jobs --backend {backend} -w {ws.root} first",
        )
    be = get_backend(backend, ws, options)
    cpath = cursor_path(ws, backend)
    cursor = None if full else read_cursor(cpath)
    report: PullReport = be.pull(jobs, cursor=cursor, progress=progress)
    summary.tasks = len(report.outcomes)
    summary.failed.extend(report.failures)

    refused: set[str] = {o.image_id for o in report.outcomes if o.status == "failed"}
    with ws.ledger.transaction(durable=True) as txn:  # the cursor below relies on it
        for outcome in report.outcomes:
            rec = txn.get(outcome.image_id)
            if rec is None:
                summary.failed.append(
                    (outcome.image_id, "not in the ledger (pushed from another workspace?)")
                )
                continue
            try:
                new_rec = _apply_outcome(
                    ws, rec, outcome, rule, k, summary, deletions=be.lists_all_annotations
                )
            except AnnotationError as exc:
                summary.failed.append(
                    (f"{outcome.image_id[:12]} (task {outcome.job.task})", exc.message)
                )
                refused.add(outcome.image_id)
                continue
            if new_rec is not rec:
                txn.put(new_rec)
    # Only now that the ledger holds everything is the cursor advanced. The tasks whose
    # annotations were refused go with it ("retry"): the next pull reads them again (and says
    # so again) until they are fixed in the labeling tool, without re-reading everything else.
    if report.cursor is not None:
        read = {o.image_id for o in report.outcomes}
        earlier = set((cursor or {}).get("retry") or []) - read
        retry = sorted((earlier | refused) & set(jobs))
        atomic_write_text(cpath, json.dumps({**report.cursor, "retry": retry}, sort_keys=True))
    if any(c is not None and c != rule for c in ws.ledger.count_by("mask_consensus")):
        _remerge_all(ws, rule, k, summary)
    ws.record_run(
        "pull-masks",
        {
            "backend": backend,
            "consensus": rule,
            "min_annotations": k,
            "full": full,
            **be.describe(),
        },
        result=summary.to_json(),
    )
    return summary


def _apply_outcome(
    ws: Workspace,
    rec: ImageRecord,
    outcome: TaskOutcome,
    rule: str,
    k: int,
    summary: PullSummary,
    *,
    deletions: bool = False,
) -> ImageRecord:
    from camlabel.imaging import write_png_atomic

    if outcome.status == "failed":
        summary.failed.append((rec.image_id[:12], outcome.message or "failed on the backend"))
        return rec
    rec, deleted = _mark_deleted(rec, outcome) if deletions else (rec, 0)
    summary.deleted_annotations += deleted
    if outcome.status == "unannotated":
        summary.unannotated.append(rec.image_id)
        return _after_deletion(ws, rec, rule, k, summary) if deleted else rec
    new_anns: list[Annotation] = []
    for res in outcome.annotations:
        ann = res.annotation
        old = next(
            (
                a
                for a in rec.annotations
                if (a.backend, a.annotation_id) == (ann.backend, ann.annotation_id)
            ),
            None,
        )
        if old is not None and old.updated_at == ann.updated_at and old.raster_path:
            continue  # unchanged since the last pull
        if res.mask is not None:
            if res.mask.shape != (rec.height, rec.width):
                raise AnnotationError(
                    f"annotation {ann.annotation_id} of image {rec.image_id[:12]} is "
                    f"{res.mask.shape[1]}x{res.mask.shape[0]} px but the image is {rec.width}x{rec.height}",
                    hint="the task was annotated on a different image; re-push the image",
                )
            raster = (
                ws.dir("annotations")
                / rec.image_id
                / f"{ann.backend}-{_safe(ann.annotation_id)}.png"
            )
            write_png_atomic(raster, res.mask)
            ann = _replace(ann, raster_path=ws.rel(raster))
        new_anns.append(ann)
    summary.new_annotations += len(new_anns)
    if new_anns:
        rec = rec.with_annotations(new_anns)
    if outcome.status == "skipped" and not any(a.status == "submitted" for a in rec.annotations):
        summary.skipped.append(rec.image_id)
        return _after_deletion(ws, rec, rule, k, summary) if deleted else rec
    if deleted:  # one new mask version for the deletions and any new annotations together
        return _after_deletion(ws, rec, rule, k, summary)
    return _remerge(ws, rec, rule, k, summary)


def _mark_deleted(rec: ImageRecord, outcome: TaskOutcome) -> tuple[ImageRecord, int]:
    """Annotations of this task that the ledger holds but the backend no longer lists.

    Called only for backends whose outcomes list every annotation a task has now
    (``Backend.lists_all_annotations``: Label Studio), so one missing from the outcome was
    deleted in the labeling tool. It stays in the ledger, marked ``deleted`` (the history is
    kept), and no longer counts for the consensus.
    """
    backend = outcome.job.backend
    present = {r.annotation.annotation_id for r in outcome.annotations}
    gone = [
        a
        for a in rec.annotations
        if a.backend == backend and a.status != "deleted" and a.annotation_id not in present
    ]
    if not gone:
        return rec, 0
    return rec.with_annotations([_replace(a, status="deleted") for a in gone]), len(gone)


def _after_deletion(
    ws: Workspace, rec: ImageRecord, rule: str, k: int, summary: PullSummary
) -> ImageRecord:
    """Recompute the mask without the deleted annotations, or withdraw it when too few remain.

    A withdrawn mask leaves the ledger record (the image goes back to waiting for
    annotations, and train-seg no longer uses it); its versioned file stays on disk.
    """
    submitted = [a for a in rec.annotations if a.status == "submitted" and a.raster_path]
    if len(submitted) >= k:
        return _remerge(ws, rec, rule, k, summary)
    if rec.mask is None:
        return rec
    summary.masks_withdrawn.append(rec.image_id)
    return rec.evolve(mask=None)


def _remerge(
    ws: Workspace, rec: ImageRecord, rule: str, k: int, summary: PullSummary
) -> ImageRecord:
    """Recompute the consensus mask of one record; write a new version only if it changed."""
    from camlabel.imaging import read_mask_png, write_png_atomic

    submitted = [a for a in rec.annotations if a.status == "submitted" and a.raster_path]
    if len(submitted) < k:
        summary.waiting_for_annotations.append(rec.image_id)
        return rec
    masks = [read_mask_png(ws.abs(a.raster_path)) for a in submitted if a.raster_path]
    merged = consensus.merge(masks, rule, [a.updated_at for a in submitted])
    png = (merged.astype(np.uint8) * 255).tobytes()
    sha = hashlib.sha256(f"{merged.shape[0]}x{merged.shape[1]}:".encode() + png).hexdigest()
    ann_ids = tuple(sorted(f"{a.backend}:{a.annotation_id}" for a in submitted))
    mask_file = ws.abs(rec.mask.path) if rec.mask is not None else None
    intact = mask_file is not None and mask_file.is_file() and mask_file.stat().st_size > 0
    if rec.mask is not None and rec.mask.sha256 == sha and rec.mask.consensus == rule and intact:
        if rec.mask.annotation_ids != ann_ids:
            rec = rec.evolve(mask=_replace(rec.mask, annotation_ids=ann_ids))
        summary.masks_unchanged += 1
        return rec
    if rec.mask is not None and rec.mask.sha256 == sha and rec.mask.consensus == rule:
        # Same mask, but its file was deleted or emptied in the workspace: write it again.
        assert mask_file is not None
        write_png_atomic(mask_file, merged)
        summary.masks_written += 1
        return rec
    version = 1 if rec.mask is None else rec.mask.version + 1
    path = ws.dir("masks") / f"{rec.image_id}-v{version}.png"
    write_png_atomic(path, merged)
    pre_iou = None
    if rec.preannotation is not None:
        pre_iou = consensus.iou(preannotation_mask(rec), merged)
    mask = MaskInfo(
        path=ws.rel(path),
        version=version,
        annotation_ids=ann_ids,
        consensus=rule,
        sha256=sha,
        agreement_dice=consensus.pairwise_dice(masks),
        preannotation_iou=pre_iou,
        area_px=int(merged.sum()),
    )
    summary.masks_written += 1
    return rec.evolve(mask=mask)


def _remerge_all(ws: Workspace, rule: str, k: int, summary: PullSummary) -> None:
    with ws.ledger.transaction() as txn:
        for rec in txn.all():
            if rec.mask is not None or any(a.status == "submitted" for a in rec.annotations):
                new = _remerge(ws, rec, rule, k, summary)
                if new is not rec:
                    txn.put(new)


def preannotation_mask(rec: ImageRecord) -> np.ndarray:
    """The pre-annotation polygons rasterized at the original resolution."""
    from camlabel.geometry import PolygonPx, polygons_to_mask

    polys = [
        PolygonPx.from_json(p) for p in (rec.preannotation.polygons if rec.preannotation else ())
    ]
    return polygons_to_mask(polys, rec.height, rec.width)


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))


# --------------------------------------------------------------------------- status
def workspace_status(ws: Workspace, *, detail: bool = True) -> dict[str, Any]:
    """Counts per state and backend, mask agreement and effort telemetry (JSON-ready).

    The counts come from SQL over the ledger's indexed columns (no record is parsed: well
    under a second at a million images). ``detail`` adds what needs the records of the
    annotated images and their mask files: ``masks.missing_files`` (recorded masks deleted or
    emptied on disk) and ``rounds`` (:func:`round_telemetry`); its cost grows with the number
    of annotated images, not with the ledger (``camlabel status --fast`` leaves it out).
    """
    c = ws.ledger.status_counts()
    out: dict[str, Any] = {
        "workspace": str(ws.root),
        "images": c["images"],
        "states": c["states"],
        "labels": {"unknown" if k is None else str(k): n for k, n in c["labels"].items()},
        "backends": c["backends"],
        "effort": {
            "annotated": c["submitted"],
            "accepted_unchanged_share": c["accepted_unchanged_share"],
            "preannotation_iou_mean": c["preannotation_iou_mean"],
            "lead_time_s_median": c["lead_time_s_median"],
        },
        "masks": {
            "count": c["masks"],
            "agreement_dice_mean": c["agreement_dice_mean"],
            "multi_annotator": c["multi_annotator"],
        },
    }
    if not detail:
        return out
    annotated = list(
        ws.ledger.get_many(ws.ledger.ids_in_state("annotated", "masked", "skipped")).values()
    )
    # recorded in the ledger but deleted or emptied on disk (pull-masks --full rewrites them)
    out["masks"]["missing_files"] = sum(
        1
        for r in annotated
        if r.mask is not None
        and (not ws.abs(r.mask.path).is_file() or ws.abs(r.mask.path).stat().st_size == 0)
    )
    published = {str(k): n for k, n in ws.ledger.count_by("round").items() if k is not None}
    out["rounds"] = round_telemetry(ws, annotated, published=published)
    return out


def round_telemetry(
    ws: Workspace, recs: list[ImageRecord], *, published: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Effort per labeling round (``JobRef.round``; ``"unknown"`` for images published before
    rounds were recorded): how close the pre-annotations came to what annotators returned.

    Per round: images published and masked, the pre-annotation sources, pre-annotation vs final
    mask IoU (median, mean, quartiles, share >= 0.8), the share of annotations accepted
    unchanged, the edited area ``|pre XOR final| / |final|`` (median, mean) and the median
    lead time. ``published`` (round -> images published, from the ledger's index) counts the
    images not annotated yet too; without it only ``recs`` are counted.
    """
    out: dict[str, Any] = {}
    for key, sample in round_samples(ws, recs, published=published).items():
        group = sample["records"]
        ious, edited, lead = (
            sample["preannotation_iou"],
            sample["edited_area"],
            sample["lead_time_s"],
        )
        accepted = sample["accepted_unchanged"]
        out[key] = {
            "published": (published or {}).get(key, len(group)),
            "masked": sum(1 for r in group if r.mask is not None),
            "sources": _count(_source_name(r) for r in group),
            "preannotation_iou": _distribution(ious),
            "preannotation_iou_ge_0_8_share": (
                sum(1 for v in ious if v >= 0.8) / len(ious) if ious else None
            ),
            "accepted_unchanged_share": (sum(accepted) / len(accepted)) if accepted else None,
            "edited_area": _distribution(edited),
            "lead_time_s_median": statistics.median(lead) if lead else None,
        }
    return out


def round_samples(
    ws: Workspace, recs: list[ImageRecord], *, published: Mapping[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """The per-image values behind :func:`round_telemetry`, per round (``"1"``, ``"2"``, ...,
    ``"unknown"`` last): ``records``, ``preannotation_iou`` and ``edited_area`` (per masked
    image with a pre-annotation), ``accepted_unchanged`` and ``lead_time_s`` (per submitted
    annotation). The report plots their distributions."""
    from camlabel.geometry import PolygonPx, polygons_to_mask
    from camlabel.imaging import read_mask_png

    groups: dict[str, list[ImageRecord]] = {}
    for rec in recs:
        rounds = [j.round for j in rec.jobs.values() if j.round is not None]
        if rec.jobs:
            groups.setdefault(str(min(rounds)) if rounds else "unknown", []).append(rec)
    for key in published or {}:
        groups.setdefault(key, [])
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(groups, key=lambda k: (k == "unknown", int(k) if k.isdigit() else 0)):
        group = groups[key]
        ious, edited = [], []
        for rec in group:
            if rec.mask is None or rec.preannotation is None:
                continue
            if rec.mask.preannotation_iou is not None:
                ious.append(rec.mask.preannotation_iou)
            try:
                final = read_mask_png(ws.abs(rec.mask.path))
            except CamlabelError:  # deleted or damaged on disk: counted in masks.missing_files
                continue
            if final.any():
                polys = [PolygonPx.from_json(p) for p in rec.preannotation.polygons]
                pre = polygons_to_mask(polys, rec.height, rec.width) if polys else final & False
                edited.append(float((pre ^ final).sum() / final.sum()))
        subs = [a for r in group for a in r.annotations if a.status == "submitted"]
        out[key] = {
            "records": group,
            "preannotation_iou": ious,
            "edited_area": edited,
            "accepted_unchanged": [
                bool(a.accepted_unchanged) for a in subs if a.accepted_unchanged is not None
            ],
            "lead_time_s": [a.lead_time_s for a in subs if a.lead_time_s is not None],
        }
    return out


def _source_name(rec: ImageRecord) -> str | None:
    pre = rec.preannotation
    if pre is None:
        return None
    if pre.source == "segmenter":
        return f"segmenter {pre.model_version}"
    name = f"{pre.source}+{pre.refine}" if pre.refine else pre.source
    return f"{name} (segmenter {pre.fallback_for} found nothing)" if pre.fallback_for else name


def _distribution(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    q1, q2, q3 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 4),
        "q1": round(q1, 4),
        "median": round(q2, 4),
        "q3": round(q3, 4),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        key = "unknown" if v is None else str(v)
        out[key] = out.get(key, 0) + 1
    return out


# --------------------------------------------------------------------------- imported annotations
def merge_annotations(
    ws: Workspace,
    rec: ImageRecord,
    annotations: list[Annotation],
    summary: PullSummary,
    *,
    consensus_rule: str | None = None,
    min_annotations: int | None = None,
) -> ImageRecord:
    """Add annotations whose rasters are already written, then recompute the consensus mask.

    What pull-masks does for one task, for annotations that came from elsewhere (``camlabel
    import-annotations``): the same consensus rule and mask versioning.
    """
    settings = ws.settings.consensus
    rule = consensus_rule or settings.rule
    k = int(min_annotations if min_annotations is not None else settings.min_annotations)
    return _remerge(ws, rec.with_annotations(annotations), rule, k, summary)
