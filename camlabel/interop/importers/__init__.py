"""Readers of foreign annotation files: one module per format plus one registry line.

Each reader turns its files into :class:`ForeignAnnotation` objects (geometry in the pixels of
the image the file describes) and counts what it cannot turn into a lesion mask in a
:class:`SkipCounter`; it never writes anything. :mod:`camlabel.interop.importing` matches the
images, validates the whole batch, and commits it in one ledger transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.errors import UsageError

#: format name -> module under camlabel.interop.importers (each defines ``read(files, labels)``)
IMPORTERS: dict[str, str] = {
    "labelstudio": "labelstudio",
    "groundtruth": "groundtruth",
    "coco": "coco",
    "darwin": "darwin",
    "masks": "masks",
}

LESION = "lesion"
IGNORE = "ignore"


@dataclass(frozen=True)
class ImageRef:
    """How a foreign file names its image.

    ``name`` is the file name (no folders); ``path`` an image file on this machine that the
    annotation file points at (read to match by content hash); ``image_id`` a camlabel id the
    file carries itself (camlabel's own exports and Ground Truth manifests).
    """

    name: str
    path: Path | None = None
    image_id: str | None = None


@dataclass
class ForeignAnnotation:
    """One annotator's lesion (and ignore) regions for one image, not yet matched."""

    ref: ImageRef
    annotation_id: str
    annotator: str
    source_file: str
    fmt: str
    #: size (width, height) the geometry below is expressed in; None: "the image's own size"
    size: tuple[int, int] | None = None
    #: lesion polygons: lists of rings, each ring an (N, 2) array of x, y pixels (first = exterior)
    polygons: list[list[np.ndarray]] = field(default_factory=list)
    ignore_polygons: list[list[np.ndarray]] = field(default_factory=list)
    #: lesion raster (bool HxW at ``size``): brush strokes, RLE, mask PNGs
    mask: np.ndarray | None = None
    ignore_mask: np.ndarray | None = None
    created_at: str | None = None
    updated_at: str | None = None
    status: str = "submitted"


class SkipCounter(Counter[str]):
    """Counts of what was skipped, by kind (``"rectanglelabels"``, ``"label 'Lung' not mapped"``)."""


@dataclass
class LabelMap:
    """Foreign label name -> ``lesion``, ``ignore`` or skipped.

    By default the workspace's lesion label and lesion classes (and ``lesion``) count as lesion,
    ``Ignore`` as ignore, case-insensitively; ``--label-map NAME=lesion|ignore|skip`` adds to that.
    """

    explicit: Mapping[str, str]
    defaults: Mapping[str, str]

    @classmethod
    def build(cls, ws_lesion_names: Sequence[str], pairs: Sequence[str] = ()) -> LabelMap:
        explicit: dict[str, str] = {}
        valid = {LESION, IGNORE, "skip"}
        lesion_names = {n.lower() for n in ws_lesion_names}
        for pair in pairs:
            name, sep, target = pair.partition("=")
            target = target.strip()
            if target.lower() in lesion_names:
                target = LESION
            if not sep or not name.strip() or target.lower() not in valid:
                raise UsageError(
                    "--label-map takes NAME=lesion, NAME=ignore or NAME=skip (or NAME=<a lesion "
                    f"class of the workspace: {sorted(lesion_names)}). Received: {pair!r}",
                    hint="e.g. --label-map Lung=lesion --label-map Pacemaker=ignore",
                )
            explicit[name.strip()] = target.lower()
        defaults = {n: LESION for n in lesion_names | {LESION}}
        defaults[IGNORE] = IGNORE
        return cls(explicit=explicit, defaults=defaults)

    def __call__(self, name: Any) -> str | None:
        """``lesion``, ``ignore``, or None (not mapped: skipped and counted)."""
        key = str(name).strip()
        folded = {k.lower(): v for k, v in self.explicit.items()}
        if key in self.explicit:
            target = self.explicit[key]
        elif key.lower() in folded:
            target = folded[key.lower()]
        else:
            target = self.defaults.get(key.lower(), "skip")
        return None if target == "skip" else target


Reader = Callable[[Sequence[Path], LabelMap, SkipCounter], list[ForeignAnnotation]]


def get_importer(fmt: str) -> Reader:
    """The ``read`` function of a format; an unknown name lists the valid ones."""
    from camlabel.interop.common import load_format

    reader: Reader = load_format("import", IMPORTERS, __name__, fmt, "read")
    return reader


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    import json

    from camlabel.errors import AnnotationError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotationError(f"cannot read '{path}': {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            hint="pass the export file itself, unmodified",
        ) from exc


def ring(points: Any, where: str) -> np.ndarray:
    """An (N, 2) float ring from ``[[x, y], ...]`` or a flat ``[x0, y0, x1, y1, ...]`` list."""
    from camlabel.errors import AnnotationError

    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1 and arr.size % 2 == 0:
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise AnnotationError(
            f"{where}: polygon points must be x, y pairs. Received: {points!r:.80}"
        )
    return arr
