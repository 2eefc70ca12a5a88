"""Label Studio annotations -> camlabel records and masks, and the brush RLE codec.

Pure functions: no request is made here (a project's predictions and user names are fetched
by the lazy helpers of :mod:`camlabel.backends.labelstudio.tasks` only when an annotation
needs them). Polygon points are percent of ``original_width``/``original_height`` and become
pixels through :func:`camlabel.geometry.pct_to_px`; brush strokes are read with
:func:`brush_rle_to_mask` (see docs/pixel-convention.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from camlabel.backends.base import AnnotationResult
from camlabel.backends.labelstudio.tasks import (
    BRUSH_FROM,
    CLASS_FROM,
    POLYGON_FROM,
    TO_NAME,
    LazyPredictions,
    LazyUsers,
    utc_timestamp,
)
from camlabel.errors import AnnotationError, GeometryError
from camlabel.records import Annotation

BoolArray = npt.NDArray[np.bool_]
UInt8Array = npt.NDArray[np.uint8]


# ================================================================ Label Studio brush RLE
# Label Studio stores a brush mask as thi.ng "rle-pack" over the RGBA pixels (H * W * 4
# values). Stream: 32-bit value count, 5-bit word size - 1, four 4-bit run-length field
# sizes - 1; then blocks of [1-bit repeat flag][2-bit size index][count - 1 in that many
# bits] followed by one word (repeat) or `count` words (literal). Bits are MSB first.
_RLE_SIZES = (3, 4, 8, 16)
_RLE_MAX_RUN = 1 << _RLE_SIZES[-1]


def _rle_bytes(rle: Any) -> bytes:
    hint = "pass result['value']['rle'] of a brushlabels result unchanged"
    if isinstance(rle, bytes | bytearray | memoryview):
        return bytes(rle)
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1 or (rle.size and not np.issubdtype(rle.dtype, np.integer)):
            raise GeometryError(
                f"brush RLE must be a flat list of integers 0..255. "
                f"Received: dtype={rle.dtype}, shape={rle.shape}",
                hint=hint,
            )
        if rle.size and (rle.min() < 0 or rle.max() > 255):
            raise GeometryError(
                f"brush RLE values must be bytes 0..255. Received: min={rle.min()}, max={rle.max()}",
                hint=hint,
            )
        return rle.astype(np.uint8).tobytes()
    try:
        return bytes(rle)  # validates 0..255 and integer type, ~10x faster than np.asarray
    except (TypeError, ValueError) as exc:
        raise GeometryError(
            f"brush RLE must be a flat list of integers 0..255. Received: {rle!r:.80}", hint=hint
        ) from exc


def _read_words(padded: UInt8Array, bit_pos: npt.NDArray[np.int64], word: int) -> UInt8Array:
    """The ``word``-bit (<= 8) values starting at each bit position, MSB first."""
    byte = bit_pos >> 3
    pair = (padded[byte].astype(np.uint16) << 8) | padded[byte + 1]
    shift = (16 - word - (bit_pos & 7)).astype(np.uint16)
    return ((pair >> shift) & ((1 << word) - 1)).astype(np.uint8)


def rle_decode(rle: Sequence[int] | npt.ArrayLike | bytes, length: int) -> UInt8Array:
    """Decode Label Studio brush RLE to ``length`` uint8 values (RGBA pixels flattened).

    Output is identical to ``label_studio_sdk.converter.brush.decode_rle`` (~20x faster
    on a 2048 x 2048 mask, see docs/benchmarks.md); a stream that ends inside its last word,
    which the SDK decodes by reading the bits that are left, raises GeometryError instead.
    The run headers are chained in a Python loop that does one table lookup and one append
    per run (a few thousand for a mask); everything else (header fields, words, expansion)
    is vectorised with numpy.

    Args:
        rle: the ``rle`` list of a ``brushlabels`` result (or its bytes).
        length: expected number of values, ``height * width * 4``; must match the header.
    """
    data = _rle_bytes(rle)
    n_bytes = len(data)
    n_bits = n_bytes * 8
    if n_bits < 53:
        raise GeometryError(
            f"brush RLE is shorter than its 53-bit header. Received: {n_bytes} bytes",
            hint="the annotation's rle list is truncated or not Label Studio brush RLE",
        )
    head = int.from_bytes(data[:7], "big")
    num = head >> 24
    word = ((head >> 19) & 31) + 1
    sizes = [((head >> (15 - 4 * k)) & 15) + 1 for k in range(4)]
    if num != length:
        raise GeometryError(
            f"brush RLE holds {num} values but {length} were expected",
            hint="length must be original_height * original_width * 4 (RGBA) of the result",
        )
    if word > 8:
        raise GeometryError(f"brush RLE word size must be <= 8 bits for uint8. Received: {word}")
    padded = np.frombuffer(data + bytes(8), dtype=np.uint8)
    # windows[b]: the 32 bits starting at byte b. A header (3 + <= 16 bits) at any bit offset
    # (<= 7) fits in it, so one lookup per run finds the next run's position.
    wide = padded.astype(np.uint32)
    windows = np.asarray(
        (wide[:n_bytes] << 24)
        | (wide[1 : n_bytes + 1] << 16)
        | (wide[2 : n_bytes + 2] << 8)
        | wide[3 : n_bytes + 3],
        dtype=np.uint32,
    )
    window = memoryview(windows)  # type: ignore[arg-type]  # ndarray is a buffer
    # Per (repeat flag, size index): shift and mask of the count field, header bits, bits per
    # counted value (literal runs carry `count` words, repeat runs one).
    runs = [
        (29 - n, (1 << n) - 1, 3 + n + (word if flag else 0), 0 if flag else word)
        for flag in (0, 1)
        for n in sizes
    ]
    # Walk the run headers to the end of the data (the loop's only job, so it stays tight);
    # the runs past value `num` (at most a padding artefact or two) are cut off below.
    starts: list[int] = []
    append = starts.append
    pos = 53
    try:
        while True:
            bits = window[pos >> 3] << (pos & 7)  # IndexError once pos runs past the data
            append(pos)
            shift, count_mask, header, per_value = runs[(bits >> 29) & 7]
            pos += header + (((bits >> shift) & count_mask) + 1) * per_value
    except IndexError:
        pass
    # Header fields of every run, vectorised.
    run_pos = np.asarray(starts, dtype=np.int64)
    bits_at = windows[run_pos >> 3].astype(np.int64) << (run_pos & 7)
    repeat = ((bits_at >> 31) & 1).astype(np.bool_)
    n_run = np.asarray(sizes, dtype=np.int64)[(bits_at >> 29) & 3]
    count_run = ((bits_at >> (29 - n_run)) & ((1 << n_run) - 1)) + 1
    first_value = np.cumsum(count_run) - count_run
    n_runs = int(np.searchsorted(first_value, num))  # runs that start before value `num`
    run_pos, repeat, n_run = run_pos[:n_runs], repeat[:n_runs], n_run[:n_runs]
    count_run, first_value = count_run[:n_runs], first_value[:n_runs]
    word_pos = run_pos + 3 + n_run
    decoded = int(first_value[-1] + count_run[-1]) if n_runs else 0
    end_bit = int(word_pos[-1] + (word if repeat[-1] else count_run[-1] * word)) if n_runs else 53
    if decoded < num or end_bit > n_bits:
        raise GeometryError(
            f"brush RLE is truncated: its {n_bytes} bytes end before value "
            f"{min(decoded, num)} of {num}",
            hint="the annotation's rle list was cut off; re-export it from Label Studio",
        )
    value = np.zeros(len(run_pos), dtype=np.uint8)
    value[repeat] = _read_words(padded, word_pos[repeat], word)
    out = np.repeat(value, count_run)[:num]
    literal = ~repeat
    if literal.any():
        lit_count = count_run[literal]
        first = np.cumsum(lit_count) - lit_count
        k = np.arange(int(lit_count.sum()), dtype=np.int64) - np.repeat(first, lit_count)
        out_idx = np.repeat(first_value[literal], lit_count) + k
        bit_idx = np.repeat(word_pos[literal], lit_count) + k * word
        keep = out_idx < num  # the last run may overshoot; thi.ng drops the excess
        out[out_idx[keep]] = _read_words(padded, bit_idx[keep], word)
    return out


def rle_encode(values: npt.ArrayLike) -> list[int]:
    """Encode uint8 values (flattened, C order) as Label Studio brush RLE (byte list).

    Runs of >= 2 equal values become repeat blocks, lone values are grouped into literal
    blocks; field sizes 3/4/8/16 bits and 8-bit words as Label Studio writes them. The output
    decodes identically with ``label_studio_sdk.converter.brush.decode_rle``.
    """
    v = np.asarray(values)
    if v.dtype != np.uint8 and (
        not np.issubdtype(v.dtype, np.integer) or (v.size and (v.min() < 0 or v.max() > 255))
    ):
        raise GeometryError(
            f"brush RLE encodes integers 0..255. Received: dtype={v.dtype}"
            + (f", min={v.min()}, max={v.max()}" if v.size else ""),
            hint="convert a bool mask with mask.astype(np.uint8) * 255",
        )
    v = v.reshape(-1)
    run_start = _run_starts(v)
    return _encode_runs(v[run_start], np.diff(np.append(run_start, v.size)), v.size)


def _run_starts(flat: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Indices where a new run of equal values begins (0 first; empty for empty input)."""
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1)).astype(np.int64)


def _encode_runs(values: npt.NDArray[Any], run_len: npt.NDArray[np.int64], n: int) -> list[int]:
    """RLE stream for consecutive runs (``values[k]`` repeated ``run_len[k]`` times)."""
    if n >= 1 << 32:
        raise GeometryError(f"brush RLE holds at most 2**32 - 1 values. Received: {n}")
    header_v = [n, 7, *(s - 1 for s in _RLE_SIZES)]
    header_w = [32, 5, 4, 4, 4, 4]
    if n == 0:
        return _pack_fields(np.array(header_v, np.uint64), np.array(header_w, np.int64))
    run_val = values.astype(np.uint64)
    single = run_len == 1
    # Repeat blocks: one per run of >= 2, split into pieces of at most 2**16.
    rep_runs = np.flatnonzero(~single)
    pieces = -(-run_len[rep_runs] // _RLE_MAX_RUN)
    rep_block_run = np.repeat(rep_runs, pieces)
    rep_first = np.cumsum(pieces) - pieces
    piece_idx = np.arange(len(rep_block_run)) - np.repeat(rep_first, pieces)
    rep_count = np.minimum(run_len[rep_block_run] - piece_idx * _RLE_MAX_RUN, _RLE_MAX_RUN).astype(
        np.int64
    )
    # Literal blocks: maximal stretches of single values, split every 2**16 values.
    sgl = np.flatnonzero(single)
    stretch_start = np.ones(len(sgl), dtype=np.bool_)
    stretch_start[1:] = sgl[1:] != sgl[:-1] + 1
    stretch_id = np.cumsum(stretch_start) - 1
    stretch_first = np.flatnonzero(stretch_start)
    within = np.arange(len(sgl)) - stretch_first[stretch_id]
    lit_start = np.flatnonzero(within % _RLE_MAX_RUN == 0)
    lit_block_run = sgl[lit_start]
    lit_count = np.diff(np.append(lit_start, len(sgl))).astype(np.int64)
    # Interleave in stream order (stable: a run's pieces keep their order).
    block_run = np.concatenate((rep_block_run, lit_block_run))
    order = np.argsort(block_run, kind="stable")
    is_rep = np.concatenate((np.ones(len(rep_block_run), bool), np.zeros(len(lit_start), bool)))[
        order
    ]
    count = np.concatenate((rep_count, lit_count))[order]
    size_idx = np.searchsorted(np.array([1 << s for s in _RLE_SIZES]), count)
    size_bits = np.array(_RLE_SIZES, dtype=np.int64)[size_idx]
    head_w = 3 + size_bits
    head_v = (
        (is_rep.astype(np.uint64) << (size_bits + 2).astype(np.uint64))
        | (size_idx.astype(np.uint64) << size_bits.astype(np.uint64))
        | (count - 1).astype(np.uint64)
    )
    n_words = np.where(is_rep, 1, count)
    # Fields: each block's header followed by its words.
    field_count = len(count) + int(n_words.sum())
    head_at = np.cumsum(1 + n_words) - (1 + n_words)
    field_v = np.empty(field_count, dtype=np.uint64)
    field_w = np.full(field_count, 8, dtype=np.int64)
    field_v[head_at] = head_v
    field_w[head_at] = head_w
    is_word = np.ones(field_count, dtype=np.bool_)
    is_word[head_at] = False
    # Words in stream order: one per single run, one per piece of a longer run.
    field_v[is_word] = np.repeat(run_val, np.where(single, 1, -(-run_len // _RLE_MAX_RUN)))
    return _pack_fields(
        np.concatenate((np.array(header_v, np.uint64), field_v)),
        np.concatenate((np.array(header_w, np.int64), field_w)),
    )


def _pack_fields(field_v: npt.NDArray[np.uint64], field_w: npt.NDArray[np.int64]) -> list[int]:
    """Concatenate fields (value, width <= 32 bits, MSB first) into bytes, zero-padded."""
    chunks: list[UInt8Array] = []
    carry: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
    step = 1 << 20
    col = np.arange(32)
    for lo in range(0, len(field_v), step):
        v, w = field_v[lo : lo + step], field_w[lo : lo + step]
        aligned = (v << (32 - w).astype(np.uint64)).astype(">u4")
        bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
        bits = np.concatenate((carry, bits[col < w[:, None]]))
        whole = len(bits) // 8 * 8
        chunks.append(np.packbits(bits[:whole]))
        carry = bits[whole:]
    if carry.size:
        chunks.append(np.packbits(carry))
    return list(np.concatenate(chunks).tolist())


def brush_rle_to_mask(
    rle: Sequence[int] | npt.ArrayLike | bytes, height: int, width: int
) -> BoolArray:
    """Label Studio brush RLE to a bool ``height x width`` mask (alpha channel > 0).

    Label Studio paints brush strokes into RGBA and the SDK's own converter
    (``decode_from_annotation``) keeps the alpha channel, so this does the same.
    """
    from camlabel.geometry import check_size

    h, w = check_size(height, width)
    rgba = rle_decode(rle, h * w * 4).reshape(h, w, 4)
    return rgba[:, :, 3] > 0


def brush_result(
    polygons: Sequence[Mapping[str, Any]], width: int, height: int, label: str
) -> dict[str, Any]:
    """Polygons (original-image pixels, holes included) as one Label Studio brush result:
    rasterized at the original size (centre rule) and brush-RLE encoded."""
    from camlabel.geometry import PolygonPx, polygons_to_mask

    mask = polygons_to_mask([PolygonPx.from_json(p) for p in polygons], height, width)
    return {
        "id": "brush0",
        "from_name": BRUSH_FROM,
        "to_name": TO_NAME,
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
    }


def mask_to_brush_rle(mask: npt.ArrayLike) -> list[int]:
    """A 2-D mask to Label Studio brush RLE: 255 in all four RGBA channels where set.

    Same pixels as ``label_studio_sdk.converter.brush.mask2rle(mask.astype(np.uint8) * 255)``
    (the encoding itself is more compact).
    """
    from camlabel.geometry import as_mask

    flat = as_mask(mask).reshape(-1)
    # Every pixel is 4 equal values, so the runs are the pixel runs x 4: no RGBA array needed.
    run_start = _run_starts(flat)
    run_len = np.diff(np.append(run_start, flat.size)) * 4
    return _encode_runs(np.where(flat[run_start], 255, 0), run_len, flat.size * 4)


#: Result types of the lesion controls; "polygon" and "brush" are the unlabeled variants.
_POLYGON_TYPES = ("polygonlabels", "polygon")
_BRUSH_TYPES = ("brushlabels", "brush")
#: Result types that carry no drawing and no class (a comment box, a rating, a relation)
#: and may be added to a project's config without changing a mask.
_IGNORED_TYPES = ("textarea", "rating", "number", "datetime", "relation")


def convert_annotation(
    ann: Mapping[str, Any],
    task_id: str,
    width: int,
    height: int,
    prediction: Mapping[str, Any] | None = None,
    users: LazyUsers | None = None,
    *,
    lesion_label: str | None = None,
    classes: Sequence[str] | None = None,
) -> AnnotationResult:
    """One Label Studio annotation -> an :class:`Annotation` record and its mask (original size).

    An answer that cannot be read exactly as drawn raises :class:`AnnotationError` naming the
    task, the annotation and the reason; it never becomes an empty mask ("no lesion"). Refused:
    a region of another type (``rectanglelabels``...) or control (``from_name``), a label other
    than ``lesion_label``, a class choice not in ``classes``, a polygon with fewer than 3
    vertices or covering no pixel of the image, a brush stroke that does not decode, and any
    field of the wrong type. ``lesion_label``/``classes`` None skip those two checks. Only
    :class:`CamlabelError` subclasses are raised (a network error reading user names is a
    :class:`~camlabel.errors.BackendError`; everything about the data is an AnnotationError).
    """
    ann_id = str(ann.get("id")) if isinstance(ann, Mapping) else "?"
    where = f"task {task_id}, annotation {ann_id}"
    if not isinstance(ann, Mapping):
        raise AnnotationError(f"{where}: not a JSON object. Received: {ann!r:.80}")
    try:
        return _convert(ann, where, width, height, prediction, users, lesion_label, classes)
    except AnnotationError:
        raise
    except GeometryError as exc:
        raise AnnotationError(f"{where}: {exc.message}", hint=exc.hint) from None
    except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
        # Shapes no check above anticipated: still this annotation's fault, not the pull's.
        raise AnnotationError(
            f"{where}: unreadable annotation data ({type(exc).__name__}: {exc!s:.120})",
            hint="open the task in Label Studio, fix or delete this annotation, then pull again",
        ) from None


def _convert(
    ann: Mapping[str, Any],
    where: str,
    width: int,
    height: int,
    prediction: Mapping[str, Any] | None,
    users: LazyUsers | None,
    lesion_label: str | None,
    classes: Sequence[str] | None,
) -> AnnotationResult:
    from camlabel.geometry import PolygonPx, pct_to_px, polygons_to_mask, repair_polygon

    ann_id = str(ann.get("id"))
    who = ann.get("completed_by")
    annotator = users.name(who) if users is not None else str(who)
    created = utc_timestamp(ann.get("created_at"))
    updated = utc_timestamp(ann.get("updated_at")) or created
    lead = ann.get("lead_time")
    common: dict[str, Any] = {
        "backend": "labelstudio",
        "annotation_id": ann_id,
        "annotator": annotator,
        "created_at": created,
        "updated_at": updated,
        "lead_time_s": float(lead)
        if isinstance(lead, int | float) and not isinstance(lead, bool) and np.isfinite(lead)
        else None,
    }
    if ann.get("was_cancelled"):
        return AnnotationResult(Annotation(status="skipped", **common), None)
    results = ann.get("result")
    if results is None:
        results = []
    if not isinstance(results, list):
        raise AnnotationError(
            f"{where}: 'result' must be a list of regions. Received: {type(results).__name__}"
        )
    polys: list[PolygonPx] = []
    brush: np.ndarray | None = None  # allocated at the first stroke only
    has_brush = False
    class_choice: str | None = None
    regions: list[Mapping[str, Any]] = []
    for i, r in enumerate(results):
        what = f"{where}, region {i}"
        if not isinstance(r, Mapping):
            raise AnnotationError(f"{what}: not a JSON object. Received: {r!r:.80}")
        kind, source = r.get("type"), r.get("from_name")
        if kind in _IGNORED_TYPES:
            continue
        value = r.get("value")
        if not isinstance(value, Mapping):
            raise AnnotationError(f"{what}: 'value' must be a JSON object. Received: {value!r:.80}")
        to_name = r.get("to_name")
        if to_name is not None and to_name != TO_NAME:
            raise AnnotationError(
                f"{what}: drawn on {to_name!r}, not on the image {TO_NAME!r}",
                hint=_CONFIG_HINT,
            )
        if kind == "choices":
            class_choice = _class_choice(what, source, value, classes)
            continue
        expected = (
            POLYGON_FROM if kind in _POLYGON_TYPES else BRUSH_FROM if kind in _BRUSH_TYPES else None
        )
        if expected is None:
            raise AnnotationError(
                f"{what}: a {kind!r} region cannot be read as a lesion mask (camlabel reads "
                f"polygons from {POLYGON_FROM!r} and brush strokes from {BRUSH_FROM!r})",
                hint="redraw the region with the polygon (key 1) or brush (key 2) tool, or "
                "delete it; " + _CONFIG_HINT,
            )
        if source != expected:
            raise AnnotationError(
                f"{what}: a {kind} region from the unknown control {source!r} (expected "
                f"from_name {expected!r})",
                hint=_CONFIG_HINT,
            )
        _check_labels(what, kind, value, lesion_label)
        _check_original_size(what, r, width, height)
        regions.append(r)
        if kind in _BRUSH_TYPES:
            fmt = value.get("format", "rle")
            rle = value.get("rle")
            if fmt != "rle" or not isinstance(rle, list) or not rle:
                raise AnnotationError(
                    f"{what}: a brush stroke needs format 'rle' and a non-empty 'rle' list. "
                    f"Received: format={fmt!r}, rle={type(rle).__name__}"
                    + (f" of {len(rle)}" if isinstance(rle, list) else ""),
                    hint="re-export the annotation from Label Studio unchanged",
                )
            try:
                stroke = brush_rle_to_mask(rle, height, width)
            except GeometryError as exc:
                raise AnnotationError(
                    f"{what}: brush stroke cannot be decoded ({exc.message})", hint=exc.hint
                ) from None
            if not stroke.any():
                raise AnnotationError(f"{what}: the brush stroke covers no pixel of the image")
            brush = stroke if brush is None else brush | stroke
            has_brush = True
            continue
        pts = value.get("points")
        if not isinstance(pts, list) or len(pts) < 3:
            n = len(pts) if isinstance(pts, list) else type(pts).__name__
            raise AnnotationError(
                f"{what}: a polygon needs at least 3 points. Received: {n}",
                hint="an unfinished polygon (closed too early) covers nothing: finish or delete "
                "it in Label Studio",
            )
        try:
            parts = repair_polygon(pct_to_px(pts, width, height), width, height)
        except GeometryError as exc:
            raise AnnotationError(
                f"{what}: invalid polygon ({exc.message})",
                hint="redraw or delete the region in Label Studio",
            ) from None
        if not polygons_to_mask(parts, height, width).any():
            raise AnnotationError(
                f"{what}: the polygon covers no pixel of the {width}x{height} image",
                hint="redraw or delete the region in Label Studio",
            )
        polys.extend(parts)
    mask = polygons_to_mask(polys, height, width)
    if brush is not None:
        mask |= brush
    record = Annotation(
        status="submitted",
        polygons=tuple(p.to_json() for p in polys),
        has_brush=has_brush,
        accepted_unchanged=_accepted_unchanged(regions, prediction),
        class_choice=class_choice,
        **common,
    )
    return AnnotationResult(record, mask)


_CONFIG_HINT = (
    "the project's labeling config differs from camlabel's (templates/labelstudio/lesion.xml); "
    "fix or delete the annotation in Label Studio, or publish into a project camlabel created"
)


def _class_choice(
    what: str, source: Any, value: Mapping[str, Any], classes: Sequence[str] | None
) -> str | None:
    if source != CLASS_FROM:
        raise AnnotationError(
            f"{what}: a choice from the unknown control {source!r} (expected from_name "
            f"{CLASS_FROM!r})",
            hint=_CONFIG_HINT,
        )
    choices = value.get("choices")
    if choices in (None, []):
        return None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
        raise AnnotationError(
            f"{what}: the image class must be one name. Received: choices={choices!r:.80}"
        )
    if classes is not None and choices[0] not in classes:
        raise AnnotationError(
            f"{what}: unknown image class {choices[0]!r}; the workspace's classes are "
            f"{list(classes)}",
            hint=_CONFIG_HINT,
        )
    return choices[0]


def _check_labels(what: str, kind: Any, value: Mapping[str, Any], lesion_label: str | None) -> None:
    if kind not in ("polygonlabels", "brushlabels"):
        return
    labels = value.get(kind)
    if labels is None:
        return
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise AnnotationError(
            f"{what}: {kind} must be a list of label names. Received: {labels!r:.80}"
        )
    other = [x for x in labels if lesion_label is not None and x != lesion_label]
    if other:
        raise AnnotationError(
            f"{what}: label {other[0]!r} is not the lesion label {lesion_label!r}",
            hint=_CONFIG_HINT,
        )


def _check_original_size(what: str, r: Mapping[str, Any], width: int, height: int) -> None:
    ow, oh = r.get("original_width"), r.get("original_height")
    if ow is None and oh is None:
        return
    for name, v in (("original_width", ow), ("original_height", oh)):
        ok = isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer()
        if not ok:
            raise AnnotationError(
                f"{what}: {name} must be a whole number of pixels. Received: {v!r:.40}",
                hint="re-export the annotation from Label Studio unchanged",
            )
    assert ow is not None and oh is not None  # checked above
    if (int(ow), int(oh)) != (width, height):
        raise AnnotationError(
            f"{what}: drawn on a {ow}x{oh} image but the image is {width}x{height} px "
            "(original_width x original_height must equal the image size)",
            hint="the task shows a different picture than the one registered; re-push the image "
            "(camlabel push-jobs) and annotate the new task",
        )


def prediction_for(
    ann: Mapping[str, Any], task: Mapping[str, Any], predictions: LazyPredictions | None
) -> dict[str, Any] | None:
    """The prediction an annotation is compared with for ``accepted_unchanged`` (None: there is none)."""
    embedded = ann.get("prediction")
    if isinstance(embedded, Mapping) and embedded.get("result"):
        return dict(embedded)  # the prediction this annotation started from
    preds = list(task.get("predictions") or [])
    if not preds:
        return None
    if all(isinstance(p, Mapping) for p in preds):
        return _camlabel_prediction(preds)
    regions = [
        r
        for r in ann.get("result") or []
        if isinstance(r, Mapping) and r.get("from_name") in (POLYGON_FROM, BRUSH_FROM)
    ]
    if any(r.get("origin") != "prediction" for r in regions) or predictions is None:
        return {"result": []}  # some region is the annotator's own: not accepted unchanged
    return _camlabel_prediction(predictions.of(int(task.get("id") or 0)))


def _camlabel_prediction(predictions: Sequence[Any]) -> dict[str, Any] | None:
    """The (latest) prediction that carries camlabel polygons, else the latest one, else None."""
    preds = [p for p in predictions if isinstance(p, Mapping)]
    preds.sort(key=lambda p: int(p.get("id") or 0))
    for p in reversed(preds):
        if any(
            isinstance(r, Mapping) and r.get("from_name") == POLYGON_FROM
            for r in p.get("result") or []
        ):
            return dict(p)
    return dict(preds[-1]) if preds else None


def _accepted_unchanged(
    regions: Sequence[Mapping[str, Any]], prediction: Mapping[str, Any] | None
) -> bool | None:
    """True when every lesion region came from the prediction unchanged (origin and points).

    None when there was no prediction to accept.
    """
    if prediction is None:
        return None
    predicted = [
        r.get("value", {}).get("points") or []
        for r in prediction.get("result") or []
        if isinstance(r, Mapping) and r.get("from_name") == POLYGON_FROM
    ]
    if len(regions) != len(predicted):
        return False
    if any(r.get("origin") != "prediction" or r.get("type") != "polygonlabels" for r in regions):
        return False
    drawn = [r.get("value", {}).get("points") or [] for r in regions]
    remaining = [np.asarray(p, dtype=np.float64) for p in predicted]
    for pts in drawn:
        a = np.asarray(pts, dtype=np.float64)
        hit = next(
            (
                i
                for i, b in enumerate(remaining)
                if a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6)
            ),
            None,
        )
        if hit is None:
            return False
        remaining.pop(hit)
    return True
