"""Typed, frozen ledger records with to/from JSON and validation.

One :class:`ImageRecord` per image, keyed by the SHA-256 of its decoded pixels
(``image_id``). Geometry inside records is stored as JSON polygons in original-image
pixels (``{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}``, see
docs/pixel-convention.md); :class:`camlabel.geometry.PolygonPx` converts them.

The JSON Schema of a ledger line is ``manifests/ledger.schema.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from camlabel.errors import LedgerError

SCHEMA_VERSION = 1

AnnotationStatus = Literal["submitted", "skipped", "cancelled", "deleted"]
ANNOTATION_STATUSES: tuple[str, ...] = ("submitted", "skipped", "cancelled", "deleted")
STATES: tuple[str, ...] = (
    "registered",
    "preannotated",
    "pushed",
    "skipped",
    "annotated",
    "masked",
)
JsonPolygon = dict[str, Any]


def utcnow() -> str:
    """ISO-8601 UTC timestamp with seconds precision, e.g. ``2026-11-26T23:30:00Z``."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validate_polygons(polys: Any, where: str) -> tuple[JsonPolygon, ...]:
    if not isinstance(polys, list | tuple):
        raise LedgerError(f"{where}: polygons must be a list. Received: {type(polys).__name__}")
    out = []
    for i, p in enumerate(polys):
        if not isinstance(p, Mapping) or "exterior" not in p:
            raise LedgerError(
                f"{where}: polygon {i} must be an object with 'exterior' (and optional 'holes'). "
                f"Received: {p!r:.80}"
            )
        ext = p["exterior"]
        if not isinstance(ext, list) or len(ext) < 3:
            raise LedgerError(
                f"{where}: polygon {i} needs >= 3 exterior points. Received: {ext!r:.80}"
            )
        out.append({"exterior": ext, "holes": list(p.get("holes", []))})
    return tuple(out)


class _Record:
    """Mixin: JSON round trip for nested frozen dataclasses."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = _to_json(v)
        return out


def _to_json(v: Any) -> Any:
    if isinstance(v, _Record):
        return v.to_json()
    if isinstance(v, tuple | list):
        return [_to_json(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _to_json(x) for k, x in v.items()}
    return v


def _pick(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise LedgerError(f"{where}: expected an object. Received: {d!r:.80}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = required - set(d)
    if missing:
        raise LedgerError(
            f"{where}: missing field(s) {sorted(missing)}. Received keys: {sorted(d)}"
        )
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class Heatmap(_Record):
    """A saved CAM heatmap of one image (paths relative to the workspace)."""

    path: str
    overlay_path: str
    method: str
    model_version: str
    target_class: str
    fusion: str = "normalize-mean"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Heatmap:
        return cls(**_pick(cls, d, "heatmap"))


@dataclass(frozen=True)
class Prediction(_Record):
    """Classifier output for one image."""

    predicted_class: str
    probability: float
    probabilities: dict[str, float]
    model_version: str
    #: each ensemble member's class probabilities (``{member: {class: p}}``), for the
    #: ``committee`` selection strategy (camlabel.active); None where not recorded
    members: dict[str, dict[str, float]] | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Prediction:
        return cls(**_pick(cls, d, "prediction"))


@dataclass(frozen=True)
class Preannotation(_Record):
    """Polygons offered to annotators, in original-image pixels.

    ``source`` is what produced them: a CAM method (``gradcam``, ``gradcampp``), a trained
    ``segmenter``, or ``truth`` (phantom lesion masks, for tests and the demo).
    """

    polygons: tuple[JsonPolygon, ...]
    source: str
    model_version: str
    threshold: float | str | None = None
    score: float | None = None
    created_at: str = field(default_factory=utcnow)
    #: how a CAM became the polygons (``camlabel.cam.refine``: none, lung, grabcut,
    #: lung+grabcut, lung+opacity); for a segmenter ``lung`` when its map was restricted to the
    #: lung field; None otherwise and for records written before refinements
    refine: str | None = None
    #: the source's own uncertainty (a segmenter: :func:`camlabel.active.segmenter_uncertainty`),
    #: for the ``uncertainty`` selection strategy (camlabel.active)
    uncertainty: float | None = None
    #: a CAM pre-annotation kept because this segmenter version found nothing on an image the
    #: classifier calls a lesion class (``preannotate --from segmenter``'s CAM fallback); its
    #: ``uncertainty`` is then the segmenter's
    fallback_for: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "polygons", _validate_polygons(self.polygons, "preannotation"))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Preannotation:
        return cls(**_pick(cls, d, "preannotation"))


@dataclass(frozen=True)
class JobRef(_Record):
    """Where an image was published: a backend's project/job and task ids."""

    backend: str
    project: str
    task: str | None = None
    pushed_at: str = field(default_factory=utcnow)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the labeling round the image was published in (1, 2, ...); None before rounds existed
    round: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobRef:
        return cls(**_pick(cls, d, "job"))


@dataclass(frozen=True)
class Annotation(_Record):
    """One annotator's answer for one image, as camlabel keeps it.

    ``polygons`` are original-image pixels; ``raster_path`` (workspace-relative PNG, 0/255)
    holds that annotator's full mask (polygons and brush strokes rasterized together).
    """

    backend: str
    annotation_id: str
    annotator: str
    status: str
    created_at: str
    updated_at: str
    polygons: tuple[JsonPolygon, ...] = ()
    has_brush: bool = False
    raster_path: str | None = None
    lead_time_s: float | None = None
    accepted_unchanged: bool | None = None
    class_choice: str | None = None
    #: where an imported annotation came from: format, file, annotator, foreign id
    origin: dict[str, str] | None = None
    #: workspace-relative PNG (0/255) of regions marked "ignore" (not lesion, not background)
    ignore_path: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ANNOTATION_STATUSES:
            raise LedgerError(
                f"annotation {self.annotation_id}: status must be one of {list(ANNOTATION_STATUSES)}. "
                f"Received: status={self.status!r}"
            )
        object.__setattr__(self, "polygons", _validate_polygons(self.polygons, "annotation"))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Annotation:
        return cls(**_pick(cls, d, "annotation"))


@dataclass(frozen=True)
class MaskInfo(_Record):
    """The ground-truth mask derived from annotations, with provenance."""

    path: str
    version: int
    annotation_ids: tuple[str, ...]
    consensus: str
    sha256: str
    created_at: str = field(default_factory=utcnow)
    agreement_dice: float | None = None
    preannotation_iou: float | None = None
    area_px: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MaskInfo:
        kw = _pick(cls, d, "mask")
        kw["annotation_ids"] = tuple(kw.get("annotation_ids", ()))
        return cls(**kw)


@dataclass(frozen=True)
class ImageRecord(_Record):
    """One ledger line: everything camlabel knows about one image."""

    image_id: str
    source_path: str
    source_format: str
    width: int
    height: int
    display_path: str
    pixel_spacing_mm: tuple[float, float] | None = None
    label: str | None = None
    patient_id: str | None = None
    split: str | None = None
    prediction: Prediction | None = None
    heatmap: Heatmap | None = None
    preannotation: Preannotation | None = None
    jobs: dict[str, JobRef] = field(default_factory=dict)
    annotations: tuple[Annotation, ...] = ()
    mask: MaskInfo | None = None
    created_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if len(self.image_id) != 64 or any(c not in "0123456789abcdef" for c in self.image_id):
            raise LedgerError(
                "image_id must be a lowercase SHA-256 hex digest (64 chars). "
                f"Received: image_id={self.image_id!r}"
            )
        if self.width <= 0 or self.height <= 0:
            raise LedgerError(
                f"image {self.image_id[:12]}: width and height must be positive. "
                f"Received: width={self.width}, height={self.height}"
            )

    @property
    def state(self) -> str:
        """The furthest step reached: registered < preannotated < pushed < skipped < annotated < masked."""
        if self.mask is not None:
            return "masked"
        if any(a.status == "submitted" for a in self.annotations):
            return "annotated"
        if any(a.status != "deleted" for a in self.annotations):
            return "skipped"
        if self.jobs:
            return "pushed"
        if self.preannotation is not None:
            return "preannotated"
        return "registered"

    def evolve(self, **changes: Any) -> ImageRecord:
        """A copy with ``changes`` applied and ``updated_at`` refreshed."""
        changes.setdefault("updated_at", utcnow())
        return dataclasses.replace(self, **changes)

    def with_job(self, job: JobRef) -> ImageRecord:
        jobs = dict(self.jobs)
        jobs[job.backend] = job
        return self.evolve(jobs=jobs)

    def with_annotations(
        self, annotations: tuple[Annotation, ...] | list[Annotation]
    ) -> ImageRecord:
        """Merge by (backend, annotation_id): a newer copy replaces the old one, none is duplicated."""
        by_key = {(a.backend, a.annotation_id): a for a in self.annotations}
        for a in annotations:
            by_key[(a.backend, a.annotation_id)] = a
        return self.evolve(annotations=tuple(by_key.values()))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ImageRecord:
        kw = _pick(cls, d, "image record")
        if kw.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger record schema_version {kw['schema_version']} is newer than this camlabel "
                f"understands ({SCHEMA_VERSION})",
                hint="upgrade camlabel",
            )
        if kw.get("pixel_spacing_mm") is not None:
            kw["pixel_spacing_mm"] = tuple(kw["pixel_spacing_mm"])
        for name, typ in (("prediction", Prediction), ("heatmap", Heatmap), ("mask", MaskInfo)):
            if kw.get(name) is not None:
                kw[name] = typ.from_json(kw[name])  # type: ignore[attr-defined]
        if kw.get("preannotation") is not None:
            kw["preannotation"] = Preannotation.from_json(kw["preannotation"])
        kw["jobs"] = {k: JobRef.from_json(v) for k, v in (kw.get("jobs") or {}).items()}
        kw["annotations"] = tuple(Annotation.from_json(a) for a in kw.get("annotations") or ())
        return cls(**kw)
