"""Synthetic frontal chest radiographs with known lesion and lung masks.

The phantoms exist so the whole loop (classifier -> Grad-CAM -> annotation -> U-Net) can be run and
scored without patient data. They are drawn in a linear "attenuation" map (bright = dense):
body soft tissue, two lungs (the image-right one, the patient's left, is cut by the heart), ribs,
clavicles, spine, heart and aortic knob, hila and vessels, diaphragm domes, a gastric bubble. The
acquisition then jitters position, scale and rotation, adds an exposure gradient, gamma and
contrast, blur and noise, and optionally a burned-in text marker in a corner.

Class-typical lesions (the lesion mask is where opacity was added, inside the lungs):

* ``covid``: bilateral, peripheral, lower-zone ground-glass opacities (several hazy patches near
  the outer edge of the lower half of both lungs; vessels and ribs stay visible through them,
  and the mask is each patch's half-maximum outline);
* ``pneumonia``: unilateral lobar consolidation (denser, one contiguous region of one lung,
  usually the lower or middle zone, with air bronchograms);
* ``normal``: none.

Randomness is split into three streams per image: anatomy (from ``patient_seed``, so the images of
one patient show the same body), acquisition and lesion. The same ``rng`` with another label
therefore gives the same radiograph with another lesion (or none), which tests use.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "LESION_KINDS",
    "PhantomRecord",
    "generate_phantoms",
    "render_phantom",
]

LESION_KINDS = ("covid", "pneumonia", "normal")
TEXT_MARKERS = ("L", "R", "PORTABLE", "AP SUPINE")
SECOND_IMAGE_SHARE = 0.2  # share of patients with a second image (grouped splits matter)
_MIN_LESION_FRACTION = 0.025  # of the image; lesions must be learnable
_GGO_MARGIN_PX = 1.2  # ground-glass margin (logistic scale), in pixels of a 256-px image


@dataclass(frozen=True)
class PhantomRecord:
    """One row of ``metadata.csv`` (paths relative to the output folder, POSIX style).

    ``seed`` reproduces the image: ``render_phantom(np.random.default_rng(seed), label, height,
    width, patient_seed=<seed of the patient's first image>, text_marker_rate=<rate used>)``.
    """

    file: str
    label: str
    patient_id: str
    lesion_mask: str
    lung_mask: str
    width: int
    height: int
    seed: int
    lesion_area_px: int


CSV_COLUMNS = tuple(f.name for f in fields(PhantomRecord))


# ----------------------------------------------------------------------------- public API


def generate_phantoms(
    out_dir: str | Path,
    *,
    count: int,
    seed: int,
    size: int = 256,
    classes: Sequence[str] = LESION_KINDS,
    text_marker_rate: float = 0.0,
    progress: bool = False,
) -> list[PhantomRecord]:
    """Write ``count`` phantoms and their masks under ``out_dir``; same seed -> same bytes.

    Layout: ``images/<class>/<id>.png`` (8-bit gray), ``lesion_masks/<class>/<id>.png`` and
    ``lung_masks/<class>/<id>.png`` (0/255), ``metadata.csv`` (columns of :class:`PhantomRecord`).
    ``count`` is split evenly over ``classes`` (remainder to the first ones). About 20 % of the
    patients (``phantom-p0001``...) get a second image of the same class. Height is ``size``;
    width is 80-100 % of it.
    """
    from camlabel.fileio import atomic_write_text
    from camlabel.imaging import write_png_atomic
    from camlabel.progress import track

    classes = tuple(classes)
    unknown = [c for c in classes if c not in LESION_KINDS]
    if unknown or not classes:
        raise ValueError(
            f"Unknown phantom class {unknown or classes!r}; supported classes: {list(LESION_KINDS)}. "
            f"Received: classes={list(classes)}"
        )
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat. Received: classes={list(classes)}")
    if count < 0:
        raise ValueError(f"count must be >= 0. Received: count={count}")
    if size < 64:
        raise ValueError(f"size must be >= 64 px. Received: size={size}")
    if not 0.0 <= text_marker_rate <= 1.0:
        raise ValueError(f"text_marker_rate must be in [0, 1]. Received: {text_marker_rate}")

    out = Path(out_dir)
    plan = _plan(count, seed, size, classes)
    records: list[PhantomRecord] = []
    for item in track(plan, desc="phantoms", total=len(plan), enabled=progress):
        image, lesion, lung = render_phantom(
            np.random.default_rng(item.seed),
            item.label,
            size,
            item.width,
            patient_seed=item.patient_seed,
            text_marker_rate=text_marker_rate,
        )
        rel = {
            kind: f"{kind}/{item.label}/{item.image_id}.png"
            for kind in ("images", "lesion_masks", "lung_masks")
        }
        write_png_atomic(out / rel["images"], image)
        write_png_atomic(out / rel["lesion_masks"], lesion)
        write_png_atomic(out / rel["lung_masks"], lung)
        records.append(
            PhantomRecord(
                file=rel["images"],
                label=item.label,
                patient_id=item.patient_id,
                lesion_mask=rel["lesion_masks"],
                lung_mask=rel["lung_masks"],
                width=int(item.width),
                height=int(size),
                seed=int(item.seed),
                lesion_area_px=int(lesion.sum()),
            )
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(asdict(rec))
    atomic_write_text(out / "metadata.csv", buf.getvalue())
    return records


def render_phantom(
    rng: np.random.Generator,
    label: str,
    height: int,
    width: int,
    *,
    patient_seed: int | None = None,
    text_marker_rate: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one phantom in memory.

    Args:
        rng: drives acquisition and lesion (and anatomy when ``patient_seed`` is None).
        label: ``"covid"``, ``"pneumonia"`` or ``"normal"``.
        patient_seed: seeds the anatomy, so several images can show the same patient.
        text_marker_rate: probability of a burned-in marker ("L", "PORTABLE"...) in a corner.

    Returns:
        ``(image uint8 HxW, lesion_mask bool HxW, lung_mask bool HxW)``; lesion ⊂ lung.
    """
    if label not in LESION_KINDS:
        raise ValueError(
            f"Unknown phantom label {label!r}; supported labels: {list(LESION_KINDS)}. "
            f"Received: label={label!r}"
        )
    if height < 32 or width < 32:
        raise ValueError(f"phantoms need at least 32x32 px. Received: {height}x{width}")
    seeds = rng.integers(0, 2**63 - 1, size=3)
    anatomy_rng = np.random.default_rng(seeds[0] if patient_seed is None else patient_seed)
    acquisition_rng = np.random.default_rng(seeds[1])
    lesion_rng = np.random.default_rng(seeds[2])

    grid = _Grid(height, width)
    body = _Anatomy.draw(anatomy_rng)
    atten, lungs = _draw_anatomy(grid, body, anatomy_rng)
    opacity, lesion = _draw_lesion(grid, body, lungs, label, lesion_rng)
    atten = atten + opacity
    lung = lungs[0] | lungs[1]
    return _acquire(grid, atten, lesion, lung, acquisition_rng, text_marker_rate)


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Planned:
    image_id: str
    label: str
    patient_id: str
    seed: int
    patient_seed: int
    width: int


def _plan(count: int, seed: int, size: int, classes: tuple[str, ...]) -> list[_Planned]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    per_class = [
        count // len(classes) + (1 if i < count % len(classes) else 0) for i in range(len(classes))
    ]
    # (label, images of this patient), patients numbered in order
    patients: list[tuple[str, int]] = []
    for label, n in zip(classes, per_class, strict=True):
        pairs = round(n * SECOND_IMAGE_SHARE / (1 + SECOND_IMAGE_SHARE))
        n_patients = n - pairs
        doubled = (
            set(rng.choice(n_patients, size=pairs, replace=False).tolist()) if pairs else set()
        )
        patients.extend((label, 2 if i in doubled else 1) for i in range(n_patients))
    pid_digits = max(4, len(str(len(patients))))
    img_digits = max(4, len(str(count)))
    planned: list[_Planned] = []
    for p, (label, n_images) in enumerate(patients, start=1):
        patient_id = f"phantom-p{p:0{pid_digits}d}"
        first_seed: int | None = None
        for _ in range(n_images):
            index = len(planned) + 1
            image_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            first_seed = image_seed if first_seed is None else first_seed
            planned.append(
                _Planned(
                    image_id=f"phantom-{index:0{img_digits}d}",
                    label=label,
                    patient_id=patient_id,
                    seed=image_seed,
                    patient_seed=first_seed,
                    width=round(size * float(rng.uniform(0.8, 1.0))),
                )
            )
    return planned


# ----------------------------------------------------------------------------- anatomy


class _Grid:
    """Normalised coordinates of pixel centres: ``u = (x + 0.5) / W``, ``v = (y + 0.5) / H``."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = int(height), int(width)
        self.u = ((np.arange(self.w, dtype=np.float32) + 0.5) / self.w)[None, :]
        self.v = ((np.arange(self.h, dtype=np.float32) + 0.5) / self.h)[:, None]
        self.px = self.h / 256.0  # pixels per "256-px pixel": keeps blur and lines size-invariant

    def blur(self, arr: np.ndarray, sigma_px: float) -> np.ndarray:
        sigma = max(0.3, sigma_px * self.px)
        return cv2.GaussianBlur(arr.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)

    def smooth_noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        """Low-frequency noise in [0, 1] (a coarse random grid, bicubically enlarged)."""
        coarse = rng.random((cells, cells)).astype(np.float32)
        big = cv2.resize(coarse, (self.w, self.h), interpolation=cv2.INTER_CUBIC)
        lo, hi = float(big.min()), float(big.max())
        return (big - lo) / (hi - lo + 1e-6)


@dataclass(frozen=True)
class _Anatomy:
    """Patient-level shape parameters, in normalised units (u across, v down)."""

    mid: float
    apex_v: tuple[float, float]  # (image-left lung, image-right lung)
    base_v: tuple[float, float]  # costophrenic angles
    d_lat: tuple[float, float]  # lateral edge, distance from the midline
    d_med: tuple[float, float]  # medial edge
    d_apex: tuple[float, float]
    dome_h: tuple[float, float]
    heart_u: float
    heart_v: float
    heart_ru: float
    heart_rv: float
    heart_tilt: float
    rib_gap: float
    bubble: bool

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Anatomy:
        apex = float(rng.uniform(0.12, 0.17))
        base = float(rng.uniform(0.76, 0.83))
        lat = float(rng.uniform(0.37, 0.42))
        return cls(
            mid=0.5 + float(rng.normal(0, 0.008)),
            apex_v=(apex, apex + float(rng.normal(0, 0.006))),
            # the right hemidiaphragm (image left) sits higher, over the liver
            base_v=(base - float(rng.uniform(0.01, 0.035)), base),
            d_lat=(lat, lat + float(rng.normal(0, 0.008))),
            d_med=(float(rng.uniform(0.045, 0.065)), float(rng.uniform(0.05, 0.07))),
            d_apex=(float(rng.uniform(0.17, 0.21)), float(rng.uniform(0.17, 0.21))),
            dome_h=(float(rng.uniform(0.05, 0.08)), float(rng.uniform(0.045, 0.075))),
            heart_u=float(rng.uniform(0.05, 0.075)),  # offset of the heart centre to image right
            heart_v=float(rng.uniform(0.62, 0.66)),
            heart_ru=float(rng.uniform(0.16, 0.19)),
            heart_rv=float(rng.uniform(0.11, 0.13)),
            heart_tilt=float(rng.uniform(0.3, 0.5)),
            rib_gap=(base - apex) / float(rng.uniform(8.0, 9.0)),
            bubble=bool(rng.random() < 0.6),
        )


def _side_distance(grid: _Grid, body: _Anatomy, side: int) -> np.ndarray:
    """Distance from the midline towards the lateral edge of lung ``side`` (0: image left)."""
    return (body.mid - grid.u) if side == 0 else (grid.u - body.mid)


def _lung_t(grid: _Grid, body: _Anatomy, side: int) -> np.ndarray:
    """0 at the apex, 1 at the costophrenic angle (broadcast HxW-able, shape Hx1)."""
    return (grid.v - body.apex_v[side]) / (body.base_v[side] - body.apex_v[side])


def _profile(t: np.ndarray) -> np.ndarray:
    """Quarter-ellipse width profile: 0 at the apex (rounded), 1 from ``t = 1`` on."""
    tc = np.clip(t, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - (1.0 - tc) ** 2, 0.0, 1.0))


def _lung_masks(grid: _Grid, body: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    heart = _heart(grid, body) <= 1.0
    knob = ((grid.u - body.mid - 0.065) / 0.04) ** 2 + ((grid.v - 0.36) / 0.032) ** 2 <= 1.0
    masks = []
    for side in (0, 1):
        d = _side_distance(grid, body, side)
        t = _lung_t(grid, body, side)
        d_apex, d_lat, d_med = body.d_apex[side], body.d_lat[side], body.d_med[side]
        lateral = d_apex + (d_lat - d_apex) * _profile(t)
        medial = d_apex - (d_apex - d_med) * _profile(t * 1.8)
        d_dome = d_med + 0.45 * (d_lat - d_med)
        half = np.where(d > d_dome, d_lat - d_dome, 1.3 * (d_dome - d_med))
        dome = body.base_v[side] - body.dome_h[side] * (1.0 - ((d - d_dome) / half) ** 2)
        inside = (t >= 0) & (d <= lateral) & (d >= medial) & (grid.v <= dome) & ~heart
        if side == 1:
            inside &= ~knob
        # round the corners the analytic cut leaves (apex tip, cardiophrenic angle)
        smooth = grid.blur(inside.astype(np.float32), 3.0) > 0.5
        # the heart and dome can pinch off a sliver at the cardiophrenic angle: one lung, one piece
        masks.append(_largest_component(smooth))
    return masks[0], masks[1]


def _heart(grid: _Grid, body: _Anatomy) -> np.ndarray:
    """Normalised elliptic radius of the heart (<= 1 inside); the apex points down and out."""
    du = grid.u - body.mid - body.heart_u
    dv = grid.v - body.heart_v
    cos, sin = math.cos(body.heart_tilt), math.sin(body.heart_tilt)
    along, across = du * cos + dv * sin, -du * sin + dv * cos
    return (along / body.heart_ru) ** 2 + (across / body.heart_rv) ** 2


def _band(offset: np.ndarray, half_width: float, power: int = 4) -> np.ndarray:
    """Flat-topped band profile (1 on the centre line, 0 far away)."""
    return np.exp(-(np.abs(offset / half_width) ** power))


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _draw_anatomy(
    grid: _Grid, body: _Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    u, v = grid.u, grid.v
    du = np.abs(u - body.mid)
    shape = (grid.h, grid.w)

    # trunk: neck at the top widening into the shoulders; thicker (brighter) in the middle
    half = 0.15 + 0.33 * _smoothstep(v, 0.03, 0.17)
    trunk = grid.blur((du < half).astype(np.float32), 2.0)
    atten = 0.03 + trunk * (0.36 + 0.1 * (1.0 - np.clip(du / 0.48, 0, 1) ** 2))
    # humeral heads in the upper corners
    for sign in (-1.0, 1.0):
        head = ((u - body.mid - sign * 0.47) / 0.07) ** 2 + ((v - 0.16) / 0.08) ** 2
        atten = atten + 0.10 * np.clip(1.0 - head, 0, 1) ** 0.5 * trunk

    lungs = _lung_masks(grid, body)
    lung_any = lungs[0] | lungs[1]
    # dense core: mediastinum, heart and the abdomen under the diaphragm domes
    heart = _heart(grid, body) <= 1.0
    pedicle = du < 0.055 + 0.03 * _smoothstep(v, 0.25, 0.5)
    rows = np.arange(grid.h)[:, None]
    lowest = np.where(lung_any.any(axis=0), grid.h - 1 - np.argmax(lung_any[::-1], axis=0), grid.h)
    abdomen = (rows > lowest[None, :]) & (v > 0.5)
    core = grid.blur((pedicle | heart | abdomen).astype(np.float32), 3.0)
    atten = atten + 0.2 * core * trunk
    for side, lung in enumerate(lungs):
        t = _lung_t(grid, body, side)
        depth = 0.27 + 0.08 * _smoothstep(t, 0.0, 0.45) - 0.03 * _smoothstep(t, 0.8, 1.05)
        atten = atten - depth * grid.blur(lung.astype(np.float32), 1.2)

    # spine with vertebrae, trachea, hila
    vertebrae = 0.75 + 0.25 * np.cos(np.pi * v / (body.rib_gap * 0.95)) ** 2
    atten = atten + 0.07 * _band(u - body.mid, 0.028) * vertebrae * _smoothstep(v, 0.02, 0.1)
    atten = atten - 0.1 * _band(u - body.mid, 0.012, 2) * (1.0 - _smoothstep(v, 0.3, 0.38))
    for side, sign in ((0, -1.0), (1, 1.0)):
        hilum = np.exp(-(((u - body.mid - sign * 0.11) / 0.045) ** 2 + ((v - 0.46) / 0.07) ** 2))
        atten = atten + 0.07 * hilum * lungs[side]

    # vessels fanning out from the hila, fading to the periphery
    vessels = np.zeros(shape, np.float32)
    for sign in (-1.0, 1.0):
        origin = np.array([(body.mid + sign * 0.1) * grid.w, 0.46 * grid.h])
        for _ in range(14):
            angle = rng.uniform(-1.2, 1.3)  # radians from the lateral horizontal, + is down
            length = rng.uniform(0.12, 0.3) * grid.h
            _draw_vessel(vessels, origin, sign, angle, length, rng, grid.px)
    vessels = grid.blur(vessels, 0.8)
    atten = atten + 0.1 * vessels * grid.blur(lung_any.astype(np.float32), 1.0)

    # posterior ribs (arching up from the spine, then down along the lateral wall) and fainter
    # anterior ribs (running down and in from the lateral wall)
    d_wall = max(body.d_lat)
    thorax = (1.0 - _smoothstep(du, d_wall + 0.01, d_wall + 0.05)) * _smoothstep(du, 0.03, 0.07)
    thorax = thorax * (1.0 - _smoothstep(v, max(body.base_v) + 0.02, max(body.base_v) + 0.08))
    apex = min(body.apex_v)
    centre = apex - 0.03 - 0.3 * du + 1.5 * du**2
    phase = (v - centre) / body.rib_gap
    k = np.floor(phase)
    offset = np.abs(phase - k - 0.5) * body.rib_gap
    in_range = (k >= 0) & (k <= 10)
    ribs = _band(offset, 0.0105) * 0.045 + np.exp(-(((offset - 0.0105) / 0.0025) ** 2)) * 0.025
    # bone shows less over the dense mediastinum and abdomen than over aerated lung
    lung_soft = grid.blur(lung_any.astype(np.float32), 2.0)
    thorax = thorax * (0.35 + 0.65 * lung_soft)
    atten = atten + thorax * ribs * in_range
    front = apex + 0.12 + 0.45 * (d_wall - du)
    phase2 = (v - front) / (body.rib_gap * 1.2)
    k2 = np.floor(phase2)
    anterior = _band((phase2 - k2 - 0.5) * body.rib_gap, 0.013) * ((k2 >= 0) & (k2 <= 5))
    atten = atten + 0.025 * anterior * thorax * _smoothstep(du, 0.12, 0.22)

    # clavicles: S-shaped bands from the sternal notch out and up to the shoulders
    s = np.clip((du - 0.04) / 0.32, 0.0, 1.0)
    clav_line = apex + 0.075 - 0.1 * s + 0.02 * np.sin(np.pi * s)
    clav_extent = _smoothstep(du, 0.035, 0.065) * (1.0 - _smoothstep(du, 0.35, 0.39))
    atten = atten + 0.13 * _band(v - clav_line, 0.015) * clav_extent

    if body.bubble:  # gastric air under the left hemidiaphragm (image right)
        bubble = ((u - body.mid - 0.2) / 0.05) ** 2 + ((v - body.base_v[1] - 0.02) / 0.025) ** 2
        atten = atten - 0.10 * grid.blur((bubble <= 1.0).astype(np.float32), 2.0)

    texture = grid.smooth_noise(rng, 12) - 0.5
    atten = atten + 0.03 * texture * lung_any
    return atten.astype(np.float32), lungs


def _draw_vessel(
    layer: np.ndarray,
    origin: np.ndarray,
    sign: float,
    angle: float,
    length: float,
    rng: np.random.Generator,
    px: float,
) -> None:
    steps = 5
    point = origin.copy()
    for i in range(steps):
        angle += rng.normal(0, 0.15)
        step = np.array([sign * math.cos(angle), math.sin(angle)]) * length / steps
        nxt = point + step
        weight = 1.0 - i / steps
        thickness = max(1, round((2.5 - 2.0 * i / steps) * px))
        p0 = (round(float(point[0])), round(float(point[1])))
        p1 = (round(float(nxt[0])), round(float(nxt[1])))
        cv2.line(layer, p0, p1, float(weight), thickness, lineType=cv2.LINE_AA)
        if i == 1 and rng.random() < 0.7:  # one side branch
            _draw_vessel(
                layer, point, sign, angle + rng.choice([-0.5, 0.5]), length * 0.5, rng, px * 0.7
            )
        point = nxt


# ----------------------------------------------------------------------------- lesions


def _draw_lesion(
    grid: _Grid,
    body: _Anatomy,
    lungs: tuple[np.ndarray, np.ndarray],
    label: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros((grid.h, grid.w), bool)
    if label == "normal":
        return np.zeros((grid.h, grid.w), np.float32), empty
    min_px = _MIN_LESION_FRACTION * grid.h * grid.w
    draw = _covid if label == "covid" else _pneumonia
    best: tuple[np.ndarray, np.ndarray] = (np.zeros((grid.h, grid.w), np.float32), empty)
    for attempt in range(8):  # bounded: a draw that comes out too small is redrawn larger
        opacity, mask = draw(grid, body, lungs, rng, attempt)
        if mask.sum() > best[1].sum():
            best = (opacity, mask)
        if mask.sum() >= min_px:
            break
    return best


def _covid(
    grid: _Grid,
    body: _Anatomy,
    lungs: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    attempt: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral peripheral lower-zone ground glass: hazy patches along the outer lung edges.

    Each patch is an ellipse whose density falls off over a few pixels (a logistic margin), and
    the lesion mask is the patches' half-maximum contour: the edge an observer sees. (Drawing
    Gaussian blobs and masking them at 30 % of the peak, as before, put the mask on a contour of
    a faint gradient that the mottle shifts by a pixel or more: a "known" mask that nobody, human
    or network, could find on the image.)
    """
    field: np.ndarray = np.zeros((grid.h, grid.w), np.float32)
    window: np.ndarray = np.zeros((grid.h, grid.w), np.float32)
    yy, xx = np.mgrid[0 : grid.h, 0 : grid.w].astype(np.float32)
    margin_px = _GGO_MARGIN_PX * grid.px
    for side, lung in enumerate(lungs):
        t = _lung_t(grid, body, side)
        lower = 1.0 / (1.0 + np.exp(-(t - 0.5) / 0.04))  # fades out above mid-lung
        window = np.maximum(window, (lower * lung).astype(np.float32))
        dist = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 5)
        d = _side_distance(grid, body, side)
        lateral_half = d > (body.d_med[side] + body.d_lat[side]) / 2
        candidates = lung & (t > 0.6) & (t < 1.0) & lateral_half & (dist < 0.07 * grid.w)
        ys, xs = np.nonzero(candidates)
        if len(ys) == 0:
            ys, xs = np.nonzero(lung & (t > 0.55))
        if len(ys) == 0:
            continue
        n_blobs = int(rng.integers(2, 5)) + attempt
        for idx in rng.choice(len(ys), size=n_blobs, replace=True):
            rx = 1.55 * rng.uniform(0.045, 0.075) * grid.w * (1 + 0.1 * attempt)
            ry = 1.55 * rng.uniform(0.045, 0.08) * grid.h * (1 + 0.1 * attempt)
            # signed distance to the ellipse's outline, approximately, in pixels
            rho = np.sqrt(((xx - xs[idx]) / rx) ** 2 + ((yy - ys[idx]) / ry) ** 2)
            outside_px = (rho - 1.0) * min(rx, ry)
            patch = 1.0 / (1.0 + np.exp(np.clip(outside_px / margin_px, -30.0, 30.0)))
            field = np.maximum(field, patch.astype(np.float32))
    mottle = 0.75 + 0.25 * grid.smooth_noise(rng, 16)
    field = field * window
    mask = (field > 0.5) & (lungs[0] | lungs[1])
    amplitude = float(rng.uniform(0.22, 0.28))
    soft_lung = grid.blur((lungs[0] | lungs[1]).astype(np.float32), 1.0)
    opacity = amplitude * field * mottle * soft_lung
    return opacity.astype(np.float32), mask


def _pneumonia(
    grid: _Grid,
    body: _Anatomy,
    lungs: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    attempt: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Unilateral lobar consolidation: one dense contiguous region of one lung."""
    side = int(rng.integers(0, 2))
    lung = lungs[side]
    t = _lung_t(grid, body, side)
    d = _side_distance(grid, body, side)
    span = body.d_lat[side] - body.d_med[side]
    rel_d = (d - body.d_med[side]) / span  # 0 medial .. 1 lateral
    zone = rng.choice(["lower", "middle", "upper"], p=[0.6, 0.25, 0.15])
    # the fissure: a gently curved, tilted line across the lung
    fissure = float(rng.uniform(-0.15, 0.15)) * (rel_d - 0.5) + 0.12 * (rel_d - 0.5) ** 2
    if zone == "lower":
        cut = float(rng.uniform(0.45, 0.62)) - 0.06 * attempt
        region = t > cut + fissure
    elif zone == "middle":
        top = float(rng.uniform(0.4, 0.5)) - 0.04 * attempt
        reach = 0.55 + 0.08 * attempt  # how far the lobe extends laterally
        lobe = ((rel_d - 0.15) / reach) ** 2 + ((t - 0.72) / 0.3) ** 2 <= 1.0
        region = (t > top + fissure) & lobe
    else:
        cut = float(rng.uniform(0.4, 0.52)) + 0.05 * attempt
        region = t < cut + fissure
    # ragged margins away from the fissure
    ragged = grid.blur(region.astype(np.float32), 5.0) + 0.7 * (grid.smooth_noise(rng, 16) - 0.5)
    region = (ragged > 0.5) & lung
    region = _largest_component(region)

    amplitude = float(rng.uniform(0.26, 0.33))
    dense = grid.blur(region.astype(np.float32), 2.0)
    texture = 0.8 + 0.2 * grid.smooth_noise(rng, 30)
    # air bronchograms: dark branching tubes inside the consolidation
    bronchi = np.zeros((grid.h, grid.w), np.float32)
    ys, xs = np.nonzero(region)
    if len(ys):
        sign = -1.0 if side == 0 else 1.0
        for idx in rng.choice(len(ys), size=3):
            origin = np.array([xs[idx], ys[idx]], dtype=np.float64)
            _draw_vessel(
                bronchi, origin, sign, rng.uniform(-0.3, 1.2), 0.08 * grid.h, rng, grid.px * 0.8
            )
    bronchi = grid.blur(bronchi, 0.7) * dense
    opacity = amplitude * dense * texture - 0.07 * bronchi
    return opacity.astype(np.float32), region


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.asarray(labels == biggest)


# ----------------------------------------------------------------------------- acquisition


def _acquire(
    grid: _Grid,
    atten: np.ndarray,
    lesion: np.ndarray,
    lung: np.ndarray,
    rng: np.random.Generator,
    text_marker_rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = grid.h, grid.w
    # patient position: small shift, rotation and magnification
    angle = float(rng.uniform(-2.5, 2.5))
    scale = float(rng.uniform(0.95, 1.05))
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
    matrix[0, 2] += float(rng.uniform(-0.03, 0.03)) * w
    matrix[1, 2] += float(rng.uniform(-0.025, 0.025)) * h
    image = cv2.warpAffine(
        atten, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    lesion_w = _warp_mask(lesion, matrix)
    lung_w = _warp_mask(lung, matrix)

    # exposure: uneven field, window, gamma, then detector blur and noise
    image = image + 0.05 * (grid.smooth_noise(rng, 3) - 0.5)
    lo = float(rng.uniform(-0.02, 0.05))
    hi = float(rng.uniform(0.72, 0.85))
    image = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    image = np.power(image, np.float32(rng.uniform(0.8, 1.25)), dtype=np.float32)
    image = grid.blur(image, float(rng.uniform(0.4, 0.9)))
    image = image + rng.normal(0.0, float(rng.uniform(0.008, 0.02)), size=image.shape).astype(
        np.float32
    )
    if rng.random() < text_marker_rate:
        _burn_text(image, str(rng.choice(TEXT_MARKERS)), int(rng.integers(0, 4)), grid)
    out = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out, lesion_w & lung_w, lung_w


def _warp_mask(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    warped = cv2.warpAffine(
        mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0
    )
    return np.asarray(warped > 0)


def _burn_text(image: np.ndarray, text: str, corner: int, grid: _Grid) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = 0.5 * grid.px * (1.4 if len(text) <= 2 else 0.8)
    thick = max(1, round(1.5 * grid.px))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    margin = round(6 * grid.px)
    x = margin if corner in (0, 2) else grid.w - tw - margin
    y = margin + th if corner in (0, 1) else grid.h - margin - base
    cv2.putText(image, text, (x, y), font, scale, 0.97, thick, cv2.LINE_AA)
