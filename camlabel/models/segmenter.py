"""The segmenter: load it and compute lesion probability maps.

:func:`load_segmenter` -> :class:`Segmenter` (a model folder written by ``camlabel train-seg``
or a ``.keras`` file); :func:`segment_probability` gives probability maps at each image's
original resolution, for :mod:`camlabel.predict`, the audit's lung field and pre-annotations
from a segmenter. ``Segmenter.preprocess``
(:class:`~camlabel.models.preprocess.SegmenterInput`) letterboxes exactly as in training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.errors import ModelError
from camlabel.models.preprocess import SegmenterInput

if TYPE_CHECKING:
    from camlabel.imaging import LoadedImage

SIDECAR = "segmenter.json"
MODEL_FILE = "model.keras"


@dataclass
class Segmenter:
    """A loaded segmenter and how to feed it (see :func:`load_segmenter`)."""

    model: Any
    image_size: int
    threshold: float
    path: Path
    info: dict[str, Any] = field(default_factory=dict)
    _predict_fn: Any = None
    #: the model-input preprocessor (from ``image_size``), the training letterbox
    preprocess: SegmenterInput = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.preprocess = SegmenterInput(self.image_size)

    @property
    def version(self) -> str:
        return str(self.info.get("run_id") or self.path.parent.name or self.path.name)


def load_segmenter(path: str | Path) -> Segmenter:
    """Load a segmenter from its model folder (``model.keras`` + sidecars) or a ``.keras`` file.

    Raises:
        ModelError: the file is missing or is not a camlabel segmenter.
    """
    import keras

    from camlabel.models import seg_metrics, tiramisu  # noqa: F401  (registers the classes)
    from camlabel.models.ensemble import check_keras_archive

    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise ModelError(
            f"no segmenter at {path} (expected a model folder with {MODEL_FILE}, or a .keras file)",
            hint="train one with 'camlabel train-seg' (it writes WS/models/seg-<run>/)",
        )
    check_keras_archive(file)
    try:
        model = keras.models.load_model(file, compile=False)
    except Exception as exc:
        raise ModelError(
            f"cannot load the segmenter {file}: {exc}", hint="is it a .keras file?"
        ) from exc
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != 1:
        raise ModelError(
            f"{file} is not a camlabel segmenter: it expects input {shape}, not (None, H, W, 1)",
            hint="pass the model folder written by 'camlabel train-seg'",
        )
    info: dict[str, Any] = {}
    for name in ("model_info.json", SIDECAR):
        side = file.parent / name
        if side.is_file():
            info.update(json.loads(side.read_text(encoding="utf-8")))
    size_known = info.get("image_size") or getattr(model, "image_size", None)
    if not size_known:
        # A fully convolutional Tiramisu runs at any size, but only the training size gives
        # its accuracy: a guess would give plausible-looking, wrong masks.
        raise ModelError(
            f"{file}: the segmenter's training image size is unknown (no model_info.json or "
            f"{SIDECAR} beside it, and the model accepts any input size)",
            hint=f'write {file.parent / "model_info.json"} as {{"image_size": <training size>}}',
        )
    size = int(size_known)
    threshold = float(info.get("threshold", 0.5))
    return Segmenter(model=model, image_size=size, threshold=threshold, path=file, info=info)


def segment_probability(
    segmenter: Segmenter, images: Sequence[LoadedImage | np.ndarray], *, batch_size: int = 8
) -> list[np.ndarray]:
    """Lesion probability maps (float32 HxW in [0, 1]) at each image's original resolution.

    ``images`` are LoadedImage objects or arrays (float in [0, 1], uint8 or uint16; colour is
    converted to gray). Each image is letterboxed exactly as in training.
    """
    pre = segmenter.preprocess
    out: list[np.ndarray] = []
    for start in range(0, len(images), max(1, batch_size)):
        chunk = images[start : start + max(1, batch_size)]
        canvases, boxes = [], []
        for img in chunk:
            canvas, box = pre(img)
            canvases.append(canvas)
            boxes.append(box)
        x = np.stack(canvases)[..., None].astype(np.float32)
        prob = np.asarray(segmenter.model.predict_on_batch(x), dtype=np.float32)[..., 0]
        out.extend(
            np.clip(pre.unletterbox(p, b), 0.0, 1.0) for p, b in zip(prob, boxes, strict=True)
        )
    return out
