"""Ground Truth formats <-> camlabel records: pure functions, no AWS calls.

Input side: the manifest line of one image, the CAM mask as a Ground-Truth colour PNG with
its ``internal-color-map``, the CAM polygons as crowd-polygon vertices. Output side: the
output-manifest line of one object, the semantic-segmentation colour PNG, crowd-polygon
answers and raw worker responses -> binary lesion masks at the original resolution plus
:class:`~camlabel.records.Annotation` records. Every problem raises
:class:`~camlabel.errors.AnnotationError` naming the object, the value and the rule.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from camlabel.errors import AnnotationError, GeometryError

FloatArray = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]
Int16Array = npt.NDArray[np.int16]

#: Manifest keys camlabel adds to each input line (they pass through to the output manifest).
IMAGE_ID_KEY = "camlabel-image-id"
LABELS_KEY = "camlabel-labels"
#: The prior label attributes that carry the CAM pre-annotation.
PRIOR_MASK_ATTRIBUTE = "camlabel-cam-ref"
PRIOR_POLYGON_ATTRIBUTE = "camlabel-cam-polygons"
#: The label attributes the jobs write (semantic segmentation must end in ``-ref``).
LABEL_ATTRIBUTE = {"adjustment": "camlabel-lesion-ref", "polygon": "camlabel-lesion-polygons"}
BACKGROUND = "BACKGROUND"
BACKGROUND_HEX = "#ffffff"
DEFAULT_LESION_HEX = "#2ca02c"
MAX_LINE_CHARS = 100_000
SEMSEG_TYPES = ("groundtruth/semantic-segmentation",)
POLYGON_TYPES = ("groundtruth/custom",)
#: Output ``type`` values of task types camlabel cannot turn into a lesion mask, with a name.
UNSUPPORTED_TYPES = {
    "groundtruth/object-detection": "bounding box",
    "groundtruth/image-classification": "image classification",
    "groundtruth/image-classification-multilabel": "multi-label image classification",
    "groundtruth/label-verification": "label verification",
    "groundtruth/text-classification": "text classification",
    "groundtruth/text-span": "named entity recognition",
}


# ----------------------------------------------------------------------------- colours
def hex_to_rgb(hex_color: str) -> tuple[int, int, int]:
    """``"#2ca02c"`` -> ``(44, 160, 44)``; AnnotationError for anything else."""
    s = str(hex_color).strip().lower()
    if len(s) != 7 or s[0] != "#" or any(c not in "0123456789abcdef" for c in s[1:]):
        raise AnnotationError(f"colour must be '#rrggbb'. Received: {hex_color!r}")
    return int(s[1:3], 16), int(s[3:5], 16), int(s[5:7], 16)


def color_map_for(label: str, lesion_hex: str = DEFAULT_LESION_HEX) -> dict[str, dict[str, Any]]:
    """The ``internal-color-map`` of a CAM mask: 0 = BACKGROUND #ffffff, 1 = the lesion label."""
    if label.strip().upper() == BACKGROUND:
        raise AnnotationError(
            f"the lesion label cannot be {BACKGROUND!r} (Ground Truth reserves it)"
        )
    if hex_to_rgb(lesion_hex) == hex_to_rgb(BACKGROUND_HEX):
        raise AnnotationError(f"the lesion colour must differ from the background {BACKGROUND_HEX}")
    return {
        "0": {"class-name": BACKGROUND, "hex-color": BACKGROUND_HEX, "confidence": 0.0},
        "1": {"class-name": label, "hex-color": lesion_hex.lower(), "confidence": 0.0},
    }


def _check_color_map(internal_color_map: Any) -> Mapping[str, Any]:
    if not isinstance(internal_color_map, Mapping) or not internal_color_map:
        raise AnnotationError(
            f"internal-color-map must be a non-empty object. Received: {internal_color_map!r:.80}"
        )
    return internal_color_map


def class_mask_to_png(class_mask: np.ndarray, internal_color_map: Mapping[str, Any]) -> bytes:
    """Encode a class-index mask as a Ground-Truth colour PNG (RGB, deterministic bytes)."""
    import cv2

    rgb = class_mask_to_color_mask(class_mask, internal_color_map)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise AnnotationError("could not encode the CAM mask as PNG")
    return bytes(buf)


def decode_label_png(data: bytes, internal_color_map: Any) -> np.ndarray:
    """A Ground Truth colour PNG -> class-index mask (int HxW) through ``internal-color-map``.

    Gray, RGB, RGBA and palette PNGs are read as RGB; fully transparent pixels (alpha 0)
    count as BACKGROUND. A colour missing from the map raises AnnotationError naming the
    unknown colours, their pixel counts and the known colours.
    """
    import cv2

    cmap = _check_color_map(internal_color_map)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise AnnotationError(f"the label image is not a readable PNG ({len(data)} bytes)")
    if arr.dtype != np.uint8:
        raise AnnotationError(f"the label image must be 8-bit per channel. Received: {arr.dtype}")
    if arr.ndim == 2:
        rgb = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 4:
        rgb = np.ascontiguousarray(arr[..., 2::-1])
        bg = [
            v for v in cmap.values() if isinstance(v, Mapping) and v.get("class-name") == BACKGROUND
        ]
        if bg:
            rgb[arr[..., 3] == 0] = hex_to_rgb(bg[0].get("hex-color", BACKGROUND_HEX))
    else:
        rgb = np.ascontiguousarray(arr[..., ::-1])
    return np.asarray(color_mask_to_class_mask(rgb, cmap))


def lesion_classes(internal_color_map: Mapping[str, Any], label: str) -> list[int]:
    """Class indices whose ``class-name`` is the lesion label (case-insensitive)."""
    want = label.strip().casefold()
    return [
        int(k)
        for k, v in internal_color_map.items()
        if str(v.get("class-name", "")).strip().casefold() == want
    ]


def lesion_mask_from_png(
    data: bytes, internal_color_map: Any, label: str, size: tuple[int, int] | None
) -> np.ndarray:
    """Binary lesion mask (bool HxW) from a semantic-segmentation colour PNG.

    ``size`` is the original (height, width): a PNG of another size is an AnnotationError
    (masks are never resized: the annotator drew on a different image). Other classes of a
    multi-class job are not lesion; but when the map has no class named like the lesion label
    while the image shows other classes, the job labeled something else: AnnotationError.
    """
    classes = decode_label_png(data, internal_color_map)
    if size is not None and classes.shape != tuple(size):
        raise AnnotationError(
            f"the label image is {classes.shape[1]}x{classes.shape[0]} px but the image is "
            f"{size[1]}x{size[0]} px",
            hint="the task was annotated on a different image; re-push the image",
        )
    wanted = lesion_classes(internal_color_map, label)
    background = [
        int(k) for k, v in internal_color_map.items() if str(v.get("class-name")) == BACKGROUND
    ]
    present = {int(c) for c in np.unique(classes)}
    other = sorted(present - set(wanted) - set(background))
    if other and not wanted:
        names = [internal_color_map[str(c)].get("class-name") for c in other]
        raise AnnotationError(
            f"the label image uses class(es) {names} but the lesion label is {label!r}",
            hint="pass the lesion label the job used (workspace setting lesion_label)",
        )
    return np.isin(classes, wanted)


# ----------------------------------------------------------------------------- polygons
def preannotation_vertices(
    polygons: Sequence[Mapping[str, Any]], label: str
) -> list[dict[str, Any]]:
    """camlabel polygons (px JSON) -> crowd-polygon ``[{"label", "vertices": [{"x", "y"}]}]``.

    crowd-polygon has no holes: only the exteriors are offered (annotators cut holes by
    drawing the lesion around them).
    """
    from camlabel.geometry import PolygonPx

    out = []
    for p in polygons:
        poly = PolygonPx.from_json(p)
        out.append({"label": label, "vertices": px_to_gt_vertices(poly.exterior)})
    return out


def answer_polygons(
    result: Any, label: str, size: tuple[int, int] | None, where: str
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """One crowd-polygon answer -> (camlabel polygons as JSON, bool mask) at ``size``.

    Checks ``inputImageProperties`` against the original size and every vertex against the
    image bounds. Polygons of other labels are ignored.
    """
    from camlabel.geometry import PolygonPx, polygons_to_mask

    if not isinstance(result, Mapping) or not isinstance(result.get("polygons"), list):
        raise AnnotationError(
            f"{where}: the answer has no 'polygons' list. Received: {result!r:.100}"
        )
    props = result.get("inputImageProperties")
    if size is not None and isinstance(props, Mapping):
        got = (props.get("height"), props.get("width"))
        if got != tuple(size):
            raise AnnotationError(
                f"{where}: the annotator saw a {got[1]}x{got[0]} px image (inputImageProperties) "
                f"but the image is {size[1]}x{size[0]} px",
                hint="the task was annotated on a different image; re-push the image",
            )
    if size is None and isinstance(props, Mapping):
        size = (int(props["height"]), int(props["width"]))
    want = label.strip().casefold()
    polys: list[PolygonPx] = []
    for i, p in enumerate(result["polygons"]):
        if not isinstance(p, Mapping) or not isinstance(p.get("vertices"), list):
            raise AnnotationError(
                f"{where}: polygon {i} has no vertices list. Received: {p!r:.100}"
            )
        if str(p.get("label", label)).strip().casefold() != want:
            continue
        verts = p["vertices"]
        for j, v in enumerate(verts):
            if not isinstance(v, Mapping) or not all(
                isinstance(v.get(k), int | float) and not isinstance(v.get(k), bool) for k in "xy"
            ):
                raise AnnotationError(
                    f"{where}: polygon {i} vertex {j} is not {{x, y}} numbers: {v!r:.80}"
                )
            if size is not None and not (0 <= v["x"] <= size[1] and 0 <= v["y"] <= size[0]):
                raise AnnotationError(
                    f"{where}: polygon {i} vertex {j} ({v['x']}, {v['y']}) lies outside the "
                    f"{size[1]}x{size[0]} px image"
                )
        if len(verts) < 3:
            raise AnnotationError(
                f"{where}: polygon {i} has {len(verts)} vertices; a polygon needs >= 3"
            )
        try:
            polys.append(PolygonPx(exterior=np.asarray(gt_vertices_to_px(verts), dtype=float)))
        except GeometryError as exc:
            raise AnnotationError(f"{where}: polygon {i}: {exc.message}") from exc
    mask = (
        None if size is None else np.asarray(polygons_to_mask(polys, size[0], size[1]), dtype=bool)
    )
    return [p.to_json() for p in polys], mask


# ----------------------------------------------------------------------------- output lines
@dataclass(frozen=True)
class OutputLine:
    """One parsed output-manifest line with what camlabel needs from it."""

    index: int
    data: dict[str, Any]
    image_id: str | None
    label_attribute: str

    @property
    def value(self) -> Any:
        return self.data.get(self.label_attribute)

    @property
    def metadata(self) -> dict[str, Any]:
        md = self.data.get(f"{self.label_attribute}-metadata")
        return md if isinstance(md, dict) else {}

    @property
    def failure_reason(self) -> str | None:
        """Ground Truth's reason when it gave up on this object (None when it did not)."""
        for holder in (self.metadata, self.data):
            reason = holder.get("failure-reason")
            if reason:
                return str(reason)
        return None

    @property
    def task_type(self) -> str | None:
        t = self.metadata.get("type")
        return str(t) if t else None


def parse_output_manifest(
    text: str, label_attribute: str
) -> tuple[list[OutputLine], list[tuple[int, str]]]:
    """Parse JSON Lines; returns (lines, [(line number, problem)]) without stopping at a bad line."""
    lines: list[OutputLine] = []
    problems: list[tuple[int, str]] = []
    for i, raw in enumerate(text.splitlines()):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(
                (i, f"line {i + 1} is not valid JSON ({exc.msg} at column {exc.colno})")
            )
            continue
        if not isinstance(obj, dict):
            problems.append((i, f"line {i + 1} is not a JSON object. Received: {raw[:80]!r}"))
            continue
        image_id = obj.get(IMAGE_ID_KEY)
        lines.append(
            OutputLine(
                index=i,
                data=obj,
                image_id=str(image_id) if image_id else None,
                label_attribute=label_attribute,
            )
        )
    return lines, problems


def unsupported_reason(line: OutputLine) -> str | None:
    """Why this line's label is of a task type camlabel cannot convert (None if it can)."""
    t = line.task_type
    value = line.value
    if t in UNSUPPORTED_TYPES or (
        isinstance(value, Mapping) and "annotations" in value and "image_size" in value
    ):
        name = UNSUPPORTED_TYPES.get(t or "", "bounding box")
        return (
            f"unsupported task type {t or 'groundtruth/object-detection'!r} ({name}); camlabel reads "
            "semantic-segmentation (colour PNG) and crowd-polygon outputs"
        )
    if t and t not in SEMSEG_TYPES + POLYGON_TYPES and not t.startswith("groundtruth/custom"):
        return (
            f"unsupported task type {t!r}; camlabel reads semantic-segmentation (colour PNG) "
            "and crowd-polygon outputs"
        )
    return None


# ----------------------------------------------------------------------------- worker responses
@dataclass(frozen=True)
class WorkerAnswer:
    """One worker's raw answer from ``annotations/worker-response``."""

    worker_id: str
    content: dict[str, Any]
    submission_time: str | None
    acceptance_time: str | None
    time_spent_s: float | None

    def find(self, key: str) -> Any:
        """The first value of ``key`` in the answer content (searched one level deep too)."""
        if key in self.content:
            return self.content[key]
        for v in self.content.values():
            if isinstance(v, Mapping) and key in v:
                return v[key]
        return None


def parse_worker_response(text: str) -> list[WorkerAnswer]:
    """A worker-response file ``{"answers": [{workerId, answerContent, ...}]}`` -> answers."""
    obj = json.loads(text)
    answers = obj.get("answers") if isinstance(obj, Mapping) else None
    if not isinstance(answers, list):
        raise AnnotationError(
            f"a worker-response file has no 'answers' list. Received: {text[:80]!r}"
        )
    out = []
    for a in answers:
        if not isinstance(a, Mapping):
            continue
        content = a.get("answerContent")
        if isinstance(content, str):
            content = json.loads(content)
        spent = a.get("timeSpentInSeconds")
        out.append(
            WorkerAnswer(
                worker_id=str(a.get("workerId") or "unknown"),
                content=dict(content) if isinstance(content, Mapping) else {},
                submission_time=a.get("submissionTime"),
                acceptance_time=a.get("acceptanceTime"),
                time_spent_s=float(spent) if isinstance(spent, int | float) else None,
            )
        )
    return out


def latest_per_worker(answers: Sequence[WorkerAnswer]) -> list[WorkerAnswer]:
    """One answer per worker (the latest submission), in a stable order (by worker id)."""
    by_worker: dict[str, WorkerAnswer] = {}
    for a in answers:
        old = by_worker.get(a.worker_id)
        if old is None or (a.submission_time or "") >= (old.submission_time or ""):
            by_worker[a.worker_id] = a
    return [by_worker[k] for k in sorted(by_worker)]


def iso_utc(ts: Any, default: str) -> str:
    """Ground Truth timestamps (``2022-09-09T17:25:32.047919``, ``...321Z``) -> ``...Z`` seconds."""
    if not isinstance(ts, str) or not ts:
        return default
    s = ts.strip().replace("Z", "+00:00")
    try:
        dt = _dt.datetime.fromisoformat(s)
    except ValueError:
        return default
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    return dt.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def same_polygons(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """Whether two crowd-polygon lists hold the same shapes (vertices rounded to 0.01 px)."""

    def key(polys: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[float, float], ...]]:
        return sorted(
            tuple((round(float(v["x"]), 2), round(float(v["y"]), 2)) for v in p.get("vertices", []))
            for p in polys
        )

    try:
        return key(a) == key(b)
    except (TypeError, ValueError, KeyError):
        return False


# ==================================================== Ground Truth vertices
def gt_vertices_to_px(vertices: Sequence[Mapping[str, Any]]) -> FloatArray:
    """Ground Truth crowd-polygon vertices ``[{"x": 10, "y": 20}, ...]`` to ``(N, 2)`` px.

    Ground Truth vertices are pixel coordinates with the origin at the top-left corner,
    i.e. already camlabel's continuous convention; they are only converted to float64.
    """
    from camlabel.geometry import as_points

    pts = np.empty((len(vertices), 2), dtype=np.float64)
    for i, v in enumerate(vertices):
        try:
            pts[i] = (float(v["x"]), float(v["y"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(
                f'Ground Truth vertex {i} must be {{"x": number, "y": number}}. Received: {v!r:.80}',
                hint="pass annotatedResult.polygons[k].vertices unchanged",
            ) from exc
    return as_points(pts, "Ground Truth vertices")


def px_to_gt_vertices(points_px: npt.ArrayLike) -> list[dict[str, int]]:
    """``(N, 2)`` px to Ground Truth vertices, rounded half up to whole pixels."""
    from camlabel.geometry import as_points

    pts = np.floor(as_points(points_px, "points_px") + 0.5).astype(np.int64)
    return [{"x": int(x), "y": int(y)} for x, y in pts]


# ============================================================= Ground Truth colour masks
def _parse_hex(hex_color: Any, where: str) -> int:
    s = str(hex_color).strip().lstrip("#")
    if len(s) == 3:
        s = "".join(ch * 2 for ch in s)
    try:
        if len(s) != 6:
            raise ValueError(s)
        return int(s, 16)
    except ValueError as exc:
        raise AnnotationError(
            f"{where}: hex-color must look like '#rrggbb'. Received: {hex_color!r}"
        ) from exc


def _parse_color_map(
    color_map: Mapping[str, Mapping[str, Any]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], list[str]]:
    """(class indices, packed 0xRRGGBB colours, descriptions) of an internal-color-map."""
    if not isinstance(color_map, Mapping) or not color_map:
        raise AnnotationError(
            f"internal-color-map must be a non-empty mapping. Received: {color_map!r:.120}",
            hint='expected {"0": {"class-name": "BACKGROUND", "hex-color": "#ffffff"}, ...}',
        )
    indices: list[int] = []
    colors: list[int] = []
    names: list[str] = []
    for key, entry in color_map.items():
        try:
            idx = int(key)
        except (TypeError, ValueError) as exc:
            raise AnnotationError(
                f"internal-color-map keys must be class indices like '0'. Received: {key!r}"
            ) from exc
        if not isinstance(entry, Mapping) or "hex-color" not in entry:
            raise AnnotationError(
                f"internal-color-map[{key!r}] needs a 'hex-color'. Received: {entry!r:.80}"
            )
        if not 0 <= idx <= np.iinfo(np.int16).max:
            raise AnnotationError(f"class index must be in 0..32767. Received: {key!r}")
        color = _parse_hex(entry["hex-color"], f"internal-color-map[{key!r}]")
        if color in colors:
            other = indices[colors.index(color)]
            raise AnnotationError(
                f"classes {other} and {idx} share the colour #{color:06x} in internal-color-map"
            )
        indices.append(idx)
        colors.append(color)
        names.append(f"#{color:06x} ({idx}: {entry.get('class-name', '?')})")
    return np.array(indices, np.int64), np.array(colors, np.uint32), names


def color_mask_to_class_mask(
    rgb: npt.ArrayLike, color_map: Mapping[str, Mapping[str, Any]]
) -> Int16Array:
    """Ground Truth colour mask (``H x W x 3`` uint8) to class indices (``H x W`` int16).

    Args:
        rgb: the consolidated semantic-segmentation PNG as RGB (palette PNGs:
            ``Image.open(p).convert("RGB")``).
        color_map: ``<label-attribute>-metadata["internal-color-map"]``.

    Raises:
        AnnotationError: a pixel colour is not in the map (names the colours, their pixel
            counts and the known colours).
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise AnnotationError(
            f"colour mask must be an H x W x 3 uint8 RGB array. "
            f"Received: shape={arr.shape}, dtype={arr.dtype}",
            hint='read the PNG with Image.open(path).convert("RGB")',
        )
    indices, colors, names = _parse_color_map(color_map)
    packed = (
        (arr[:, :, 0].astype(np.uint32) << 16)
        | (arr[:, :, 1].astype(np.uint32) << 8)
        | arr[:, :, 2].astype(np.uint32)
    )
    order = np.argsort(colors)
    sorted_colors = colors[order]
    pos = np.searchsorted(sorted_colors, packed).clip(max=len(sorted_colors) - 1)
    known = sorted_colors[pos] == packed
    if not known.all():
        unknown, n_px = np.unique(packed[~known], return_counts=True)
        worst = np.argsort(-n_px)[:5]
        listed = ", ".join(f"#{int(unknown[i]):06x} ({int(n_px[i])} px)" for i in worst)
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise AnnotationError(
            f"colour mask has {int((~known).sum())} pixels in {len(unknown)} colour(s) that are "
            f"not in internal-color-map: {listed}{more}. Known colours: {', '.join(names)}",
            hint="the PNG must be the job's consolidated mask, read losslessly as RGB "
            "(no JPEG, no resampling); check that the colour map belongs to this mask",
        )
    return indices[order][pos].astype(np.int16)


def class_mask_to_color_mask(
    class_mask: npt.ArrayLike, color_map: Mapping[str, Mapping[str, Any]]
) -> UInt8Array:
    """Inverse of :func:`color_mask_to_class_mask`: class indices to ``H x W x 3`` RGB."""
    cls = np.asarray(class_mask)
    if cls.ndim != 2 or not np.issubdtype(cls.dtype, np.integer):
        raise AnnotationError(
            f"class mask must be a 2-D integer array. Received: shape={cls.shape}, dtype={cls.dtype}"
        )
    indices, colors, names = _parse_color_map(color_map)
    lut = np.zeros((int(indices.max()) + 1, 3), dtype=np.uint8)
    defined = np.zeros(len(lut), dtype=np.bool_)
    lut[indices] = np.stack([(colors >> s) & 0xFF for s in (16, 8, 0)], axis=1).astype(np.uint8)
    defined[indices] = True
    present = np.unique(cls)
    bad = [int(c) for c in present if not (0 <= c < len(lut) and defined[c])]
    if bad:
        raise AnnotationError(
            f"class mask uses indices {bad} that are not in internal-color-map. "
            f"Known: {', '.join(names)}"
        )
    return lut[cls]
