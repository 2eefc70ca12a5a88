"""Simulated annotators for the demo: real Label Studio API calls, as people would make them.

For each task the simulation knows the true lesion mask (phantoms carry one) and behaves like
an annotator correcting a pre-annotation: it traces the true lesion outline with human-like
noise (vertex jitter, a slight shift and scale, Douglas-Peucker simplification as a person
clicks fewer vertices), confirms or corrects the image class, skips a few tasks, and on some
tasks a second annotator answers too. What the first annotator does depends on how close the
pre-annotation comes to the truth, as with a person looking at both:

- close (IoU >= ``accept_iou``): accepts it unchanged;
- near (IoU >= ``edit_iou``): edits it - the regions where it is wrong by more than a couple of
  pixels are corrected toward the truth, thin slivers along the boundary stay as they were,
  and the corrected outline is clicked with a little vertex noise;
- far: redraws the lesion from scratch.

On a lesion-free image (empty truth) an empty pre-annotation is accepted, and regions drawn
on it are deleted (an edit).

The exact truth is never handed back. Everything goes through the Label Studio REST API (users, annotations), so
``pull-masks`` reads exactly what a browser session would have produced.

Re-running it annotates only tasks that have no annotation yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from camlabel.backends.labelstudio.backend import LabelStudioBackend
from camlabel.backends.labelstudio.tasks import CLASS_FROM, POLYGON_FROM, TO_NAME
from camlabel.records import JobRef

ANNOTATORS = ("annotator1@camlabel.local", "annotator2@camlabel.local")


@dataclass
class SimulationReport:
    annotated: int = 0
    skipped: int = 0
    double_annotated: int = 0
    accepted_unchanged: int = 0
    edited: int = 0
    redrawn: int = 0
    already_done: int = 0
    annotations: list[dict[str, Any]] = field(default_factory=list)


def _noisy_polygons(
    truth: np.ndarray, rng: np.random.Generator, *, jitter_px: float, max_vertices: int
) -> list[np.ndarray]:
    """The outline a person would click around the true lesion (original pixels)."""
    from camlabel.geometry import mask_to_polygons

    h, w = truth.shape
    polys = mask_to_polygons(truth, min_area_px=12.0, epsilon_px=1.2, max_vertices=max_vertices)
    out = []
    for p in polys:
        ext = p.exterior.astype(float)
        centre = ext.mean(axis=0)
        scale = 1.0 + rng.normal(0.0, 0.02)
        shift = rng.normal(0.0, jitter_px * 0.5, size=2)
        pts = (ext - centre) * scale + centre + shift + rng.normal(0.0, jitter_px, size=ext.shape)
        pts[:, 0] = np.clip(pts[:, 0], 0.0, w)
        pts[:, 1] = np.clip(pts[:, 1], 0.0, h)
        out.append(pts)
    return out


def _result(
    polys_px: list[np.ndarray],
    label: str,
    klass: str | None,
    w: int,
    h: int,
    origin: str = "manual",
) -> list[dict[str, Any]]:
    from camlabel.geometry import px_to_pct

    res: list[dict[str, Any]] = []
    for i, pts in enumerate(polys_px):
        res.append(
            {
                "id": f"sim{i}",
                "from_name": POLYGON_FROM,
                "to_name": TO_NAME,
                "type": "polygonlabels",
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "origin": origin,
                "value": {
                    "points": px_to_pct(pts, w, h).tolist(),
                    "closed": True,
                    "polygonlabels": [label],
                },
            }
        )
    if klass is not None:
        res.append(
            {
                "id": "simclass",
                "from_name": CLASS_FROM,
                "to_name": TO_NAME,
                "type": "choices",
                "origin": "manual",
                "value": {"choices": [klass]},
            }
        )
    return res


def edited_mask(pre: np.ndarray, truth: np.ndarray, *, tolerance_px: int = 2) -> np.ndarray:
    """The pre-annotation after a person's edit: every disagreement with the truth wider than
    ``tolerance_px`` (a morphological opening of ``pre XOR truth``) is corrected, thinner
    slivers along the boundary are left as they were. On a lesion-free image every region
    is deleted."""
    import cv2

    pre_b, truth_b = pre.astype(bool), truth.astype(bool)
    if not truth_b.any():  # no lesion: the regions are deleted, not trimmed
        return np.zeros_like(pre_b)
    diff = (pre_b ^ truth_b).astype(np.uint8)
    k = 2 * max(1, int(tolerance_px)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fixed = cv2.morphologyEx(diff, cv2.MORPH_OPEN, kernel).astype(bool)
    return pre_b ^ fixed


def choose_action(
    pre: np.ndarray | None, truth: np.ndarray, *, accept_iou: float = 0.9, edit_iou: float = 0.5
) -> str:
    """What the first annotator does with pre-annotation ``pre`` (None: there is none) given
    the true lesion: ``"accept"`` (unchanged), ``"edit"`` or ``"redraw"``."""
    from camlabel.geometry import iou

    if pre is None:
        return "redraw"
    if not truth.any():  # nothing to draw: keep an empty answer, delete what was drawn
        return "edit" if pre.any() else "accept"
    score = iou(pre, truth)
    return "accept" if score >= accept_iou else "edit" if score >= edit_iou else "redraw"


def _user_ids(backend: LabelStudioBackend) -> list[int]:
    ls = backend.ls
    existing = {
        getattr(u, "email", None) or getattr(u, "username", None): u.id
        for u in backend._call("listing users", ls.users.list)
    }
    ids = []
    for email in ANNOTATORS:
        if email not in existing:
            u = backend._call(
                f"creating user {email}",
                ls.users.create,
                username=email.split("@")[0],
                email=email,
                first_name="Simulated",
                last_name=email.split("@")[0].title(),
            )
            existing[email] = u.id
        ids.append(int(existing[email]))
    return ids


def simulate_annotators(
    backend: LabelStudioBackend,
    jobs: Mapping[str, JobRef],
    truth: Mapping[str, np.ndarray],
    *,
    labels: Mapping[str, str] | None = None,
    seed: int = 0,
    skip_rate: float = 0.08,
    double_rate: float = 0.25,
    jitter_px: float = 0.8,
    accept_iou: float = 0.9,
    edit_iou: float = 0.5,
    preannotation_masks: Mapping[str, np.ndarray] | None = None,
    max_vertices: int = 40,
) -> SimulationReport:
    """Annotate the tasks of ``jobs`` ({image_id: JobRef}) through the API.

    ``truth`` maps image_id -> true lesion mask (original resolution); ``labels`` the true
    class (the annotator corrects the model's class with it). A pre-annotation whose IoU with
    the truth is at least ``accept_iou`` is accepted unchanged (submitted as the prediction's
    own regions, ``origin: prediction``), one at least ``edit_iou`` is edited
    (:func:`edited_mask`, ``origin: prediction-changed``), others are redrawn; see the module
    docstring. ``report.edited`` / ``report.redrawn`` count the first annotators' choices.
    """

    rng = np.random.default_rng(seed)
    user_ids = _user_ids(backend)
    ls = backend.ls
    report = SimulationReport()
    label = backend.lesion_label
    for image_id in sorted(jobs):
        job = jobs[image_id]
        if job.task is None or image_id not in truth:
            continue
        task = backend._call(f"reading task {job.task}", ls.tasks.get, id=int(job.task))
        if (getattr(task, "total_annotations", 0) or 0) + (
            getattr(task, "cancelled_annotations", 0) or 0
        ) > 0:
            report.already_done += 1
            continue
        t = truth[image_id]
        h, w = t.shape
        klass = (labels or {}).get(image_id)
        if rng.random() < skip_rate:
            backend._call(
                f"skipping task {job.task}",
                ls.annotations.create,
                id=int(job.task),
                result=[],
                was_cancelled=True,
                completed_by=user_ids[0],
                lead_time=float(rng.uniform(3, 10)),
            )
            report.skipped += 1
            continue
        n_annotators = 2 if rng.random() < double_rate else 1
        pre = (preannotation_masks or {}).get(image_id)
        for k in range(n_annotators):
            predictions = list(getattr(task, "predictions", None) or [])
            action = (
                choose_action(pre, t, accept_iou=accept_iou, edit_iou=edit_iou)
                if k == 0
                else "redraw"
            )
            if action == "accept" and not predictions and pre is not None and pre.any():
                action = "edit"  # the regions are not on the task: drawn again, as edited
            if action == "accept":
                pred = predictions[-1] if predictions else {}
                pres = (
                    pred.get("result")
                    if isinstance(pred, Mapping)
                    else getattr(pred, "result", None)
                )
                result = [dict(r, origin="prediction") for r in (pres or [])]
                result += _result([], label, klass, w, h)
                report.accepted_unchanged += 1
            elif action == "edit" and pre is not None:
                polys = _noisy_polygons(
                    edited_mask(pre, t), rng, jitter_px=jitter_px * 0.5, max_vertices=max_vertices
                )
                result = _result(polys, label, klass, w, h, origin="prediction-changed")
                report.edited += 1
            else:
                polys = _noisy_polygons(
                    t, rng, jitter_px=jitter_px * (1 + 0.5 * k), max_vertices=max_vertices
                )
                result = _result(polys, label, klass, w, h)
                report.redrawn += k == 0
            ann = backend._call(
                f"annotating task {job.task}",
                ls.annotations.create,
                id=int(job.task),
                result=result,
                was_cancelled=False,
                completed_by=user_ids[k],
                lead_time=float(rng.uniform(12, 75)),
            )
            report.annotations.append(
                {"image_id": image_id, "task": job.task, "annotation": getattr(ann, "id", None)}
            )
        report.annotated += 1
        report.double_annotated += n_annotators == 2
    return report
