"""Small PNG charts drawn with OpenCV (no matplotlib dependency).

Line charts (training curves), box plots and grouped bars (effort per labeling round), a
confusion-matrix grid and an image grid with captions.
They are meant to be read by people in a report, not to be publication figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from camlabel.imaging import write_png_atomic

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR, colour-blind friendly (Okabe-Ito)
PALETTE = (
    (178, 114, 0),
    (0, 94, 213),
    (115, 158, 0),
    (167, 121, 204),
    (66, 228, 240),
    (233, 180, 86),
)
_GRAY = (110, 110, 110)


def _text(
    img: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float = 0.45,
    color: tuple[int, int, int] = (30, 30, 30),
    thick: int = 1,
) -> None:
    cv2.putText(img, text, org, _FONT, scale, color, thick, cv2.LINE_AA)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "epoch",
    width: int = 640,
    height: int = 400,
    dashed: Sequence[str] = (),
) -> np.ndarray:
    """A BGR line chart of ``series`` (x = 1..n); NaN points are skipped. ``dashed`` names
    series drawn with dashes (e.g. validation curves)."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 150, 34, 44
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    values = np.array([v for s in series.values() for v in s if np.isfinite(v)], dtype=np.float64)
    n = max((len(s) for s in series.values()), default=0)
    _text(img, title, (left, 22), 0.55, thick=1)
    cv2.rectangle(img, (x0, y0), (x1, y1), _GRAY, 1)
    if values.size == 0 or n == 0:
        _text(img, "no data", ((x0 + x1) // 2 - 30, (y0 + y1) // 2))
        return img
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(i: int, v: float) -> tuple[int, int]:
        fx = 0.5 if n == 1 else i / (n - 1)
        return round(x0 + fx * (x1 - x0)), round(y1 - (v - lo) / (hi - lo) * (y1 - y0))

    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = px(0, v)[1]
        cv2.line(img, (x0, y), (x1, y), (235, 235, 235), 1)
        _text(img, _fmt(v), (4, y + 4), 0.4, _GRAY)
    ticks = sorted({0, n - 1, *range(0, n, max(1, n // 6))})
    for i in ticks:
        x = px(i, lo)[0]
        _text(img, str(i + 1), (x - 6, y1 + 16), 0.4, _GRAY)
    _text(img, xlabel, ((x0 + x1) // 2 - 20, height - 8), 0.45, _GRAY)
    for k, (name, s) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = [px(i, v) for i, v in enumerate(s) if np.isfinite(v)]
        for a, b in itertools.pairwise(pts):
            if name in dashed:
                _dashed(img, a, b, color)
            else:
                cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        ly = y0 + 14 + 20 * k
        if name in dashed:
            _dashed(img, (x1 + 10, ly - 4), (x1 + 34, ly - 4), color)
        else:
            cv2.line(img, (x1 + 10, ly - 4), (x1 + 34, ly - 4), color, 2, cv2.LINE_AA)
        _text(img, name, (x1 + 40, ly), 0.42)
    return img


def _dashed(
    img: np.ndarray,
    a: tuple[int, int],
    b: tuple[int, int],
    color: tuple[int, int, int],
    dash: int = 6,
) -> None:
    length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
    steps = max(1, int(length // dash))
    for s in range(0, steps, 2):
        t0, t1 = s / steps, min(1.0, (s + 1) / steps)
        p0 = (int(a[0] + (b[0] - a[0]) * t0), int(a[1] + (b[1] - a[1]) * t0))
        p1 = (int(a[0] + (b[0] - a[0]) * t1), int(a[1] + (b[1] - a[1]) * t1))
        cv2.line(img, p0, p1, color, 2, cv2.LINE_AA)


def _value_axis(
    img: np.ndarray, box: tuple[int, int, int, int], lo: float, hi: float
) -> Callable[[float], int]:
    """Grid lines and labels of a vertical value axis; returns value -> y pixel."""
    x0, x1, y0, y1 = box

    def py(v: float) -> int:
        return round(y1 - (v - lo) / (hi - lo) * (y1 - y0))

    for k in range(5):
        v = lo + (hi - lo) * k / 4
        cv2.line(img, (x0, py(v)), (x1, py(v)), (235, 235, 235), 1)
        _text(img, _fmt(v), (4, py(v) + 4), 0.4, _GRAY)
    cv2.rectangle(img, (x0, y0), (x1, y1), _GRAY, 1)
    return py


def _range(values: Sequence[float], limits: tuple[float, float] | None) -> tuple[float, float]:
    if limits is not None:
        return limits
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def box_plot(
    groups: Mapping[str, Sequence[float]],
    *,
    title: str,
    ylabel: str = "",
    limits: tuple[float, float] | None = None,
    width: int = 520,
    height: int = 340,
) -> np.ndarray:
    """A BGR box plot, one box per group (quartiles, median line, whiskers at min/max) with
    every value drawn as a dot beside it (few values per group are the common case here)."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 34, 44
    box = (left, width - right, top, height - bottom)
    _text(img, title, (left, 22), 0.55)
    values = [float(v) for vs in groups.values() for v in vs if np.isfinite(v)]
    lo, hi = _range(values, limits)
    py = _value_axis(img, box, lo, hi)
    if ylabel:
        _text(img, ylabel, (box[0] + 4, box[2] + 14), 0.4, _GRAY)
    n = max(1, len(groups))
    slot = (box[1] - box[0]) / n
    rng = np.random.default_rng(0)  # dot jitter only; fixed so the image is reproducible
    for k, (name, vs) in enumerate(groups.items()):
        color = PALETTE[k % len(PALETTE)]
        cx = round(box[0] + slot * (k + 0.5))
        _text(img, _fit(name, int(slot) - 4, 0.42), (cx - int(slot / 2) + 4, box[3] + 18), 0.42)
        arr = np.array([v for v in vs if np.isfinite(v)], np.float64)
        if arr.size == 0:
            _text(img, "no data", (cx - 28, (box[2] + box[3]) // 2), 0.42, _GRAY)
            continue
        q1, med, q3 = (float(q) for q in np.quantile(arr, [0.25, 0.5, 0.75]))
        half = max(6, round(slot * 0.18))
        cv2.line(img, (cx, py(float(arr.min()))), (cx, py(q1)), color, 1, cv2.LINE_AA)
        cv2.line(img, (cx, py(q3)), (cx, py(float(arr.max()))), color, 1, cv2.LINE_AA)
        cv2.rectangle(img, (cx - half, py(q3)), (cx + half, py(q1)), color, 2)
        cv2.line(img, (cx - half, py(med)), (cx + half, py(med)), (30, 30, 30), 2)
        for v in arr:
            dx = round(half + 6 + rng.uniform(0, half))
            cv2.circle(img, (cx + dx, py(float(v))), 2, color, -1, cv2.LINE_AA)
        _text(img, f"n={arr.size} med {_fmt(med)}", (cx - int(slot / 2) + 4, box[3] + 34), 0.38)
    return img


def bar_chart(
    groups: Mapping[str, Mapping[str, float | None]],
    *,
    title: str,
    limits: tuple[float, float] | None = (0.0, 1.0),
    width: int = 560,
    height: int = 340,
) -> np.ndarray:
    """Grouped BGR bars: one group per key of ``groups`` (e.g. a round), one bar per series
    (the inner keys, coloured and named in the legend); a ``None`` value leaves a gap marked
    "n/a". Each bar is labelled with its value."""
    img = np.full((height, width, 3), 255, np.uint8)
    series = list(dict.fromkeys(name for g in groups.values() for name in g))
    left, right, top, bottom = 60, 20, 34, 44 + 16 * len(series)
    box = (left, width - right, top, height - bottom)
    _text(img, title, (left, 22), 0.55)
    values = [float(v) for g in groups.values() for v in g.values() if v is not None]
    lo, hi = _range([*values, 0.0], limits)
    py = _value_axis(img, box, lo, hi)
    n = max(1, len(groups))
    slot = (box[1] - box[0]) / n
    bar = max(4, int(slot * 0.8 / max(1, len(series))))
    for k, (name, g) in enumerate(groups.items()):
        gx = box[0] + slot * k + (slot - bar * len(series)) / 2
        _text(
            img, _fit(name, int(slot) - 4, 0.42), (round(box[0] + slot * k) + 4, box[3] + 18), 0.42
        )
        for j, sname in enumerate(series):
            x = round(gx + j * bar)
            v = g.get(sname)
            if v is None:
                _text(img, "n/a", (x, box[3] - 6), 0.35, _GRAY)
                continue
            color = PALETTE[j % len(PALETTE)]
            cv2.rectangle(img, (x + 1, py(float(v))), (x + bar - 2, py(max(lo, 0.0))), color, -1)
            _text(img, f"{float(v):.2f}", (x, py(float(v)) - 4), 0.35)
    for j, sname in enumerate(series):
        y = box[3] + 34 + 16 * j
        cv2.rectangle(img, (left, y - 9), (left + 18, y), PALETTE[j % len(PALETTE)], -1)
        _text(img, sname, (left + 24, y), 0.4)
    return img


def confusion_matrix_image(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str = "confusion matrix"
) -> np.ndarray:
    """A BGR grid: rows = true class, columns = predicted; cell shade = row share."""
    cm = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    cell = 90 if k <= 6 else 56
    left, top = 130, 70
    w, h = left + cell * k + 20, top + cell * k + 40
    img = np.full((h, w, 3), 255, np.uint8)
    _text(img, title, (10, 22), 0.55)
    _text(img, "predicted ->", (left, top - 30), 0.42, _GRAY)
    _text(img, "true", (10, top + 14), 0.42, _GRAY)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    for j, name in enumerate(labels):
        _text(img, name[:10], (left + j * cell + 6, top - 8), 0.42)
    for i, name in enumerate(labels):
        _text(img, name[:14], (10, top + i * cell + cell // 2 + 5), 0.42)
        for j in range(k):
            x, y = left + j * cell, top + i * cell
            shade = 255 - round(share[i, j] * 200)
            color = (255, shade, shade) if i != j else (shade, 255, shade)
            cv2.rectangle(img, (x, y), (x + cell, y + cell), color, -1)
            cv2.rectangle(img, (x, y), (x + cell, y + cell), _GRAY, 1)
            txt = str(int(cm[i, j]))
            (tw, _), _ = cv2.getTextSize(txt, _FONT, 0.6, 1)
            _text(img, txt, (x + (cell - tw) // 2, y + cell // 2 + 6), 0.6, (0, 0, 0), 1)
    return img


def image_grid(
    tiles: Sequence[np.ndarray], captions: Sequence[str] = (), *, tile: int = 256, columns: int = 4
) -> np.ndarray:
    """Tiles (gray or BGR uint8, any size; fitted into ``tile x tile``) in a captioned grid."""
    n = len(tiles)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    cap = 22
    img = np.full((rows * (tile + cap), cols * tile, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        t = np.asarray(t)
        if t.ndim == 2:
            t = cv2.cvtColor(t, cv2.COLOR_GRAY2BGR)
        s = tile / max(t.shape[:2])
        t = cv2.resize(
            t,
            (max(1, round(t.shape[1] * s)), max(1, round(t.shape[0] * s))),
            interpolation=cv2.INTER_AREA,
        )
        r, c = divmod(k, cols)
        y, x = r * (tile + cap), c * tile
        oy, ox = (tile - t.shape[0]) // 2, (tile - t.shape[1]) // 2
        img[y + oy : y + oy + t.shape[0], x + ox : x + ox + t.shape[1]] = t
        if k < len(captions):
            _text(img, _fit(captions[k], tile - 8, 0.4), (x + 4, y + tile + 16), 0.4)
    return img


def _fit(text: str, width: int, scale: float) -> str:
    """``text`` shortened from the left ("...tail") until it fits ``width`` pixels."""
    while text and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width:
        text = "..." + text[4:] if text.startswith("...") else "..." + text[1:]
    return text


def save_png(path: str | Path, bgr: np.ndarray) -> Path:
    """Write a BGR chart atomically as PNG."""
    path = Path(path)
    write_png_atomic(path, bgr)
    return path
