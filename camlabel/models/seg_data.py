"""The segmenter's data conventions: the export layout, letterboxing, augmentation, batches.

Shared by training/train_seg.py (also on SageMaker, so only keras, numpy and cv2 here) and
camlabel.models.preprocess / camlabel.models.segmenter (inference), so training and prediction resize images the same way.

Export layout (what ``camlabel train-seg`` writes and train_seg.py reads)::

    DIR/index.csv          id,patient_id,split,label,mask_version  (header required;
                           only ``id`` is mandatory; split is train/val or empty)
    DIR/images/<id>.png    gray image, 8- or 16-bit (colour is converted to gray)
    DIR/masks/<id>.png     same height and width; 0 background, 255 structure,
                           any other value = ignore (left out of loss and metrics;
                           e.g. 127 = V7's "Ignore" regions)

Letterbox: the image is scaled (aspect kept) so its long side is ``size``, then centred on a
``size x size`` zero canvas. :func:`unletterbox` undoes it for a probability map.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from camlabel.fileio import atomic_write_text

IGNORE = 255  # code of "ignore" pixels in the uint8 target arrays (0/1/IGNORE)
INDEX_NAME = "index.csv"


@dataclass(frozen=True)
class Box:
    """Where the scaled image sits on the letterbox canvas (pixels of the canvas)."""

    top: int
    left: int
    height: int
    width: int
    orig_height: int
    orig_width: int


def letterbox_box(h: int, w: int, size: int) -> Box:
    scale = size / max(h, w)
    nh = max(1, min(size, round(h * scale)))
    nw = max(1, min(size, round(w * scale)))
    return Box((size - nh) // 2, (size - nw) // 2, nh, nw, h, w)


def letterbox(image: np.ndarray, size: int, *, nearest: bool = False) -> tuple[np.ndarray, Box]:
    """Scale ``image`` (HxW) into a ``size x size`` canvas of zeros; returns (canvas, box).

    ``nearest`` keeps label values (masks); images use area (down) or linear (up) filtering.
    """
    h, w = image.shape[:2]
    box = letterbox_box(h, w, size)
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if box.height < h else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (box.width, box.height), interpolation=interp)
    canvas = np.zeros((size, size), dtype=image.dtype)
    canvas[box.top : box.top + box.height, box.left : box.left + box.width] = scaled
    return canvas, box


def unletterbox(prob: np.ndarray, box: Box) -> np.ndarray:
    """The part of a canvas-sized map that covers the image, resized to the original size."""
    crop = prob[box.top : box.top + box.height, box.left : box.left + box.width]
    return cv2.resize(
        np.ascontiguousarray(crop, dtype=np.float32),
        (box.orig_width, box.orig_height),
        interpolation=cv2.INTER_LINEAR,
    )


def to_unit_gray(img: np.ndarray) -> np.ndarray:
    """Any 8/16-bit gray or colour array -> float32 gray in [0, 1]."""
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY) if img.shape[2] >= 3 else img[..., 0]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    out = img.astype(np.float32)
    hi = float(out.max()) if out.size else 0.0
    return out / hi if hi > 1.0 else out


def mask_codes(mask: np.ndarray) -> np.ndarray:
    """Mask PNG values -> uint8 codes: 0 -> 0, 255 (or 1 in a 0/1 mask) -> 1, else IGNORE."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    out = np.full(mask.shape, IGNORE, dtype=np.uint8)
    out[mask == 0] = 0
    fg = 255 if mask.max(initial=0) > 1 else 1
    out[mask == fg] = 1
    return out


def codes_to_target(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> float32 targets (1, 0, -1 = ignore) as the loss expects."""
    t = codes.astype(np.float32)
    t[codes == IGNORE] = -1.0
    return t


@dataclass(frozen=True)
class IndexRow:
    id: str
    patient_id: str
    split: str
    label: str
    mask_version: str


def read_index(root: Path) -> list[IndexRow]:
    path = Path(root) / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: a segmentation data folder needs index.csv, images/ and masks/ "
            "(see camlabel/models/seg_data.py for the layout)"
        )
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise ValueError(
                f"{path}: the header must name an 'id' column. Received: {reader.fieldnames}"
            )
        rows = []
        for r in reader:
            rid = (r.get("id") or "").strip()
            if not rid:
                continue
            rows.append(
                IndexRow(
                    id=rid,
                    patient_id=(r.get("patient_id") or "").strip() or rid,
                    split=(r.get("split") or "").strip().lower(),
                    label=(r.get("label") or "").strip(),
                    mask_version=(r.get("mask_version") or "").strip(),
                )
            )
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


def write_index(root: Path, rows: list[IndexRow]) -> Path:
    path = Path(root) / INDEX_NAME
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["id", "patient_id", "split", "label", "mask_version"])
    for r in rows:
        w.writerow([r.id, r.patient_id, r.split, r.label, r.mask_version])
    atomic_write_text(path, buf.getvalue())
    return path


def load_pair(root: Path, rid: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 letterboxed image, uint8 letterboxed mask codes) of one index row."""
    ip = Path(root) / "images" / f"{rid}.png"
    mp = Path(root) / "masks" / f"{rid}.png"
    img = cv2.imread(str(ip), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image {ip}")
    mask = cv2.imread(str(mp), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"cannot read mask {mp}")
    if img.shape[:2] != mask.shape[:2]:
        raise ValueError(
            f"{rid}: image and mask sizes differ. Received: image {img.shape[:2]}, mask {mask.shape[:2]}"
        )
    gray = np.round(to_unit_gray(img) * 255.0).astype(np.uint8)
    canvas, _ = letterbox(gray, size)
    codes, _ = letterbox(mask_codes(mask), size, nearest=True)
    return canvas, codes


@dataclass(frozen=True)
class Augment:
    """Augmentation for chest radiographs, drawn per image.

    Small rotations, scaling and shifts (patient positioning varies a little) and
    brightness/contrast/gamma changes (exposure and processing vary between scanners).
    **No horizontal flip**: a radiograph is not left-right symmetric (the heart lies on the
    left, the left hemidiaphragm is lower, laterality markers are burned in), and whether a
    lesion is in the left or right lung matters; a flipped film shows an anatomy that the
    model never meets at inference. No vertical flips or large rotations for the same reason.
    """

    rotation_deg: float = 7.0
    scale: float = 0.08
    shift: float = 0.05
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.2

    def __call__(
        self, img: np.ndarray, codes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = img.shape
        angle = rng.uniform(-self.rotation_deg, self.rotation_deg)
        scale = math.exp(rng.uniform(-self.scale, self.scale))
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        m[0, 2] += rng.uniform(-self.shift, self.shift) * w
        m[1, 2] += rng.uniform(-self.shift, self.shift) * h
        x = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        c = cv2.warpAffine(codes, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        xf = x.astype(np.float32) / 255.0
        gamma = math.exp(rng.uniform(-self.gamma, self.gamma))
        xf = np.power(xf, gamma)
        xf = (xf - 0.5) * (1.0 + rng.uniform(-self.contrast, self.contrast)) + 0.5
        xf = xf + rng.uniform(-self.brightness, self.brightness)
        return np.clip(xf, 0.0, 1.0), c


class SegBatches(keras.utils.PyDataset):
    """Batches of (image [B,S,S,1] float32 in [0,1], target [B,S,S,1] with -1 = ignore).

    Images and masks are held letterboxed in memory as uint8; augmentation (optional) runs
    per batch in worker threads (cv2 releases the GIL).
    """

    def __init__(
        self,
        images: np.ndarray,
        codes: np.ndarray,
        batch_size: int,
        *,
        augment: Augment | None = None,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(images) != len(codes) or len(images) == 0:
            raise ValueError(
                f"need as many masks as images (> 0). Received: {len(images)}, {len(codes)}"
            )
        self.images = images
        self.codes = codes
        self.batch_size = int(batch_size)
        self.augment = augment
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.order = np.arange(len(images))
        if shuffle:
            np.random.default_rng(self.seed).shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self.order[idx * self.batch_size : (idx + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        xs, ys = [], []
        for i in sel:
            img, c = self.images[i], self.codes[i]
            if self.augment is not None:
                xf, c = self.augment(img, c, rng)
            else:
                xf = img.astype(np.float32) / 255.0
            xs.append(xf[..., None])
            ys.append(codes_to_target(c)[..., None])
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(self.order)
