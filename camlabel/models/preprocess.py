"""Model-input preprocessing: one small preprocessor object per model kind.

Training and inference call the same object, so a model always sees its inputs prepared the
same way:

- :class:`ClassifierInput` (``Classifier.preprocess``; the classifier's tf.data pipeline):
  RGB ``size x size`` float32 in [0, 255], letterboxed by
  :func:`camlabel.imaging.to_model_input` (sub-pixel placement, exact :class:`Letterbox`
  inverse for heatmaps) and rounded to whole grey levels, as training caches uint8.
- :class:`SegmenterInput` (``Segmenter.preprocess``): grey float32 ``size x size`` in [0, 1],
  letterboxed as :mod:`camlabel.models.seg_data` does for the segmenter's training data (that
  module keeps the letterbox primitives because it travels alone to SageMaker), and
  :meth:`SegmenterInput.unletterbox` back to the original resolution.

Each has ``to_json()`` / ``from_json()``. Heavy imports happen inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from camlabel.errors import ModelError

if TYPE_CHECKING:
    from camlabel.imaging import Letterbox, LoadedImage
    from camlabel.models.seg_data import Box


def _checked_size(kind: str, data: Any) -> int:
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise ModelError(
            f"not a {kind} preprocessor. Received: {data!r}",
            hint=f'expected {{"kind": "{kind}", "size": <pixels>}}',
        )
    size = data.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ModelError(f"a {kind} preprocessor needs a positive integer size. Received: {size!r}")
    return size


@dataclass(frozen=True)
class ClassifierInput:
    """The classifier's input: letterboxed RGB ``size x size`` in whole grey levels [0, 255]."""

    size: int
    kind: ClassVar[str] = "classifier-input"

    def __call__(self, image: LoadedImage | np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Float32 ``size x size x 3`` model input and its :class:`Letterbox`.

        ``image`` is a ``LoadedImage`` (full precision of 16-bit sources) or an array (uint8,
        or float in [0, 1]); see :func:`camlabel.imaging.to_model_input`.
        """
        from camlabel.imaging import to_model_input

        x, box = to_model_input(image, self.size)
        return np.clip(np.rint(x), 0.0, 255.0).astype(np.float32), box

    def load(self, path: str | Path) -> np.ndarray:
        """One image file as the model sees it: ``size x size x 3`` uint8 (training's cache)."""
        from camlabel.imaging import read_image

        return self(read_image(path))[0].astype(np.uint8)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size}

    @classmethod
    def from_json(cls, data: Any) -> ClassifierInput:
        return cls(_checked_size(cls.kind, data))


@dataclass(frozen=True)
class SegmenterInput:
    """The segmenter's input: grey [0, 1], letterboxed onto a ``size x size`` zero canvas."""

    size: int
    kind: ClassVar[str] = "segmenter-input"

    @staticmethod
    def gray(image: LoadedImage | np.ndarray) -> np.ndarray:
        """Float32 grey in [0, 1] from a ``LoadedImage`` or an array (uint8, uint16, float in
        [0, 1] clipped, or colour converted to grey)."""
        arr = np.asarray(getattr(image, "pixels", image))
        if arr.ndim == 3:
            from camlabel.models.seg_data import to_unit_gray

            return to_unit_gray(arr)
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        if arr.dtype == np.uint16:
            return arr.astype(np.float32) / 65535.0
        return np.clip(arr.astype(np.float32), 0.0, 1.0)

    def __call__(self, image: LoadedImage | np.ndarray) -> tuple[np.ndarray, Box]:
        """Float32 ``size x size`` canvas and the :class:`~camlabel.models.seg_data.Box`."""
        from camlabel.models.seg_data import letterbox

        return letterbox(self.gray(image), self.size)

    @staticmethod
    def unletterbox(prob: np.ndarray, box: Box) -> np.ndarray:
        """A canvas-sized map back at the original image size (float32 HxW)."""
        from camlabel.models.seg_data import unletterbox

        return unletterbox(prob, box)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size}

    @classmethod
    def from_json(cls, data: Any) -> SegmenterInput:
        return cls(_checked_size(cls.kind, data))
