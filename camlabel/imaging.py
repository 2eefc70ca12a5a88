"""Read chest X-rays (PNG, JPEG, TIFF, DICOM) into one float image; letterbox; overlays.

Every reader ends in the same :class:`LoadedImage`: ``pixels`` (float32, HxW, [0, 1], bright =
dense) and ``display`` (uint8, the 8-bit image labeling tools show, ``round(pixels * 255)``).

Intensity rules, per source:

* 8-bit (and 1/2/4-bit) gray PNG/TIFF/JPEG: ``v / 255``, exact, no stretch.
* colour: Rec. 601 luminance ``0.299 R + 0.587 G + 0.114 B`` (as PIL's and OpenCV's gray
  conversions); alpha is ignored.
* 16-bit (and 32-bit / float) PNG/TIFF: min-max stretch ``(v - min) / (max - min)``. Data that
  already spans 0..65535 is therefore simply ``v / 65535``; a 12-bit image in a 16-bit file, or
  an export that uses a narrow band, would otherwise come out nearly black. A constant image
  becomes all zeros.
* DICOM: Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), then VOI LUT Sequence
  or Window Center/Width (pydicom, first window), normalised by the VOI output range; without a
  VOI the Modality output is min-max stretched. MONOCHROME1 is inverted afterwards, so bright is
  always dense. Only pixels and Pixel Spacing leave the DICOM: no tag value is kept.
* Orientation: the EXIF Orientation tag (JPEG, PNG eXIf, TIFF) is applied.

The image key (``image_id``) is the SHA-256 of the decoded 8-bit display pixels prefixed with the
shape (``b"{h}x{w}:" + display.tobytes()``): re-encoding a PNG keeps its key, and no file name,
header or tag takes part in it.

Coordinates are continuous ``xy``: origin at the top-left corner of the top-left pixel, pixel
centres at ``+0.5``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from camlabel.errors import ImageReadError
from camlabel.fileio import atomic_write_bytes

__all__ = [
    "IMAGE_SUFFIXES",
    "Letterbox",
    "LoadedImage",
    "draw_polygons",
    "image_key",
    "iter_image_paths",
    "overlay_heatmap",
    "overlay_mask",
    "put_label",
    "read_image",
    "read_images",
    "read_mask_png",
    "to_model_input",
    "write_png_atomic",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"})

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601, RGB order
_SUPPORTED = "camlabel reads PNG, JPEG, TIFF and DICOM"
# Magic numbers of formats people do feed in by mistake, to name them in the error.
_OTHER_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x93NUMPY", "NumPy array (.npy)"),
)


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One decoded image, ready for models and labeling tools.

    Args:
        pixels: float32 HxW in [0, 1] after orientation, MONOCHROME1 inversion and VOI/windowing.
        display: uint8 HxW, ``round(pixels * 255)``: what labeling tools show and what is hashed.
        image_id: SHA-256 hex of ``b"{h}x{w}:" + display.tobytes()``.
        source_path: the file read.
        source_format: ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"dicom"``.
        bit_depth: bits per sample of the source (DICOM: Bits Stored).
        pixel_spacing_mm: DICOM Pixel Spacing (else Imager Pixel Spacing), ``(row, column)``.

    Both arrays are read-only, so ``image_id`` stays the key of what the object holds. Instances
    compare by identity; compare ``image_id`` to compare content.
    """

    pixels: np.ndarray
    display: np.ndarray
    image_id: str
    source_path: Path
    source_format: str
    bit_depth: int
    pixel_spacing_mm: tuple[float, float] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def image_key(display: np.ndarray) -> str:
    """SHA-256 hex of an 8-bit display image, prefixed with its shape (see module docstring)."""
    h, w = display.shape[:2]
    digest = hashlib.sha256(f"{h}x{w}:".encode())
    digest.update(np.ascontiguousarray(display, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _loaded(
    pixels: np.ndarray,
    path: Path,
    fmt: str,
    bit_depth: int,
    spacing: tuple[float, float] | None = None,
) -> LoadedImage:
    pixels = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
    display = np.rint(pixels.astype(np.float64) * 255.0).astype(np.uint8)
    pixels.setflags(write=False)
    display.setflags(write=False)
    return LoadedImage(
        pixels=pixels,
        display=display,
        image_id=image_key(display),
        source_path=path,
        source_format=fmt,
        bit_depth=int(bit_depth),
        pixel_spacing_mm=spacing,
    )


# ----------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> LoadedImage:
    """Read one PNG, JPEG, TIFF or DICOM file (format detected by magic bytes).

    Raises:
        ImageReadError: the file is missing, empty, truncated, corrupt, multi-frame, compressed
            with a codec that is not installed, or of another format. The message names the file
            and the cause; ``hint`` says what to do.
    """
    path = Path(path)
    data = _read_bytes(path)
    fmt = _sniff(data, path)
    try:
        if fmt == "dicom":
            return _read_dicom(data, path)
        return _read_raster(data, path, fmt)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise a zoo of types on damaged input
        raise _damaged(path, fmt, exc) from exc


def read_images(
    paths: Iterable[str | Path], *, progress: bool = False
) -> tuple[list[LoadedImage], list[tuple[str, str]]]:
    """Read many files, going on past failures.

    Returns:
        ``(images, failures)``; each failure is ``(path, reason)`` in input order.
    """
    from camlabel.progress import track

    items = list(paths)
    images: list[LoadedImage] = []
    failures: list[tuple[str, str]] = []
    for item in track(items, desc="reading images", total=len(items), enabled=progress):
        try:
            images.append(read_image(item))
        except ImageReadError as exc:
            failures.append((str(item), exc.message))
    return images, failures


def iter_image_paths(inputs: Sequence[str | Path], *, recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    In folders: files with suffix .png .jpg .jpeg .tif .tiff .dcm (any case), plus files without a
    suffix (or with a numeric one, as UID-named DICOM files have) that carry the DICOM magic.
    Hidden files and folders (name starting with ".") are skipped. A file named explicitly is kept
    whatever its suffix (``read_image`` then decides). Duplicates are detected on the resolved path.

    Raises:
        ImageReadError: an input does not exist.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: dict[Path, Path] = {}
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            for candidate in _walk(root, recursive=recursive):
                found.setdefault(safe_resolve(candidate), candidate)
        elif root.is_file():
            found.setdefault(root.resolve(), root)
        else:
            raise ImageReadError(
                f"No such file or folder: '{root}'",
                hint="check the path; give image files or folders that contain them",
            )
    return sorted(found.values(), key=lambda p: str(p))


def safe_resolve(path: Path) -> Path:
    """``path.resolve()``, or the absolute path itself for a symlink loop (Python 3.11 raises
    RuntimeError there): reading such a file then fails for that file alone, with a reason."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def _walk(root: Path, *, recursive: bool) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            candidate = Path(folder) / name
            suffix = candidate.suffix.lower()
            maybe_dicom = suffix == "" or suffix[1:].isdigit()
            if suffix in IMAGE_SUFFIXES or (maybe_dicom and _has_dicom_magic(candidate)):
                yield candidate


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _read_bytes(path: Path) -> bytes:
    if not path.exists() and path.is_symlink():
        raise ImageReadError(
            f"Cannot read image '{path}': a symbolic link that loops or points to nothing "
            f"(-> {os.readlink(path)})",
            hint="fix or remove the link; the other images are processed",
        )
    if not path.exists():
        raise ImageReadError(
            f"Cannot read image '{path}': no such file",
            hint="check the path (relative paths are taken from the current folder)",
        )
    if path.is_dir():
        raise ImageReadError(
            f"Cannot read image '{path}': it is a folder",
            hint="pass the folder to iter_image_paths (or the CLI) to expand it into files",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(
            f"Cannot read image '{path}': {exc.strerror or exc}",
            hint="check the file's permissions",
        ) from exc
    if not data:
        raise ImageReadError(
            f"Cannot read image '{path}': the file is empty (0 bytes)",
            hint="the copy or download was probably interrupted; fetch the file again",
        )
    return data


def _sniff(data: bytes, path: Path) -> str:
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in _TIFF_MAGICS:
        return "tiff"
    if data[128:132] == b"DICM":
        return "dicom"
    if path.suffix.lower() == ".dcm":
        return "dicom"  # maybe a preamble-less DICOM; _read_dicom tries with force=True
    kind = _describe_unknown(data)
    hint = (
        "the file is not an image; check the path or how it was downloaded"
        if kind.startswith("a text file")
        else f"convert it to PNG first (e.g. with ImageMagick: convert '{path.name}' out.png)"
    )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        kind += f", although it is named {path.suffix}"
    raise ImageReadError(
        f"Cannot read image '{path}': unsupported format ({kind}); {_SUPPORTED}", hint=hint
    )


def _describe_unknown(data: bytes) -> str:
    for magic, name in _OTHER_MAGICS:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if _looks_like_text(data[:512]):
        return "a text file"
    return f"unknown magic bytes {data[:8].hex(' ')}"


def _looks_like_text(head: bytes) -> bool:
    for cut in range(4):  # a multi-byte character may be cut at the end of the sample
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return bool(text) and all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
    return False


def _damaged(path: Path, fmt: str, exc: BaseException) -> ImageReadError:
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ImageReadError(
        f"Cannot read image '{path}': the {fmt.upper()} data is corrupt or truncated ({cause})",
        hint="the file is damaged; fetch or export it again",
    )


# ----------------------------------------------------------------------------- PNG/JPEG/TIFF


#: Largest image read, in pixels (100 MP: a 10000 x 10000 image). Chest X-rays are a few MP;
#: decoding larger files costs several GB of memory (float64 copies of every pixel).
MAX_PIXELS = 100_000_000


def _too_large(path: Path, size: str) -> ImageReadError:
    return ImageReadError(
        f"Cannot read image '{path}': too large ({size}); the limit is "
        f"{MAX_PIXELS // 1_000_000} MP (camlabel.imaging.MAX_PIXELS)",
        hint="downscale or crop the image before registering it (chest X-rays are a few MP)",
    )


def _open_raster(data: bytes, path: Path) -> Any:
    """PIL's lazy open (header only) with camlabel's size limit instead of PIL's bomb check."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise _too_large(path, str(exc).split("exceeds")[0].strip() or "size unknown") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise _too_large(path, f"{w}x{h} = {w * h / 1e6:.0f} MP")
    return im


def _read_raster(data: bytes, path: Path, fmt: str) -> LoadedImage:
    import warnings

    from PIL import Image

    with _open_raster(data, path) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        n_frames = int(getattr(im, "n_frames", 1))
        if n_frames > 1:
            raise ImageReadError(
                f"Cannot read image '{path}': it holds {n_frames} frames/pages; "
                "camlabel reads single-frame images only",
                hint="export the frame you want as its own PNG",
            )
        im.load()  # decodes now, so truncation and CRC errors surface here
        orientation = int(im.getexif().get(0x0112, 1) or 1)
        mode = im.mode
        bits = _declared_bits(data, fmt, im)
        if bits == 16 and mode in ("RGB", "RGBA"):
            # PIL keeps only the high byte of 16-bit colour; OpenCV keeps the samples.
            arr: np.ndarray = _decode_cv2_unchanged(data)[..., 2::-1]
        elif mode in ("RGB", "RGBA", "CMYK", "YCbCr", "P", "PA", "HSV", "LAB"):
            arr = np.asarray(im.convert("RGB"))
        elif mode in ("L", "LA", "1") or mode.startswith("L;"):
            arr = np.asarray(im.convert("L"))
        else:  # I;16*, I, F
            arr = np.asarray(im)
    arr = _orient(arr, orientation)
    gray = arr.astype(np.float64) @ _LUMA if arr.ndim == 3 else arr.astype(np.float64)
    if arr.dtype == np.uint8:
        return _loaded(gray / 255.0, path, fmt, bits or 8)
    return _loaded(_minmax(gray), path, fmt, bits or 8 * arr.dtype.itemsize)


def _declared_bits(data: bytes, fmt: str, im: Any) -> int | None:
    """Bits per sample as the file declares them (PIL's mode hides 16-bit colour)."""
    if fmt == "png" and data[12:16] == b"IHDR":
        return int(data[24])
    if fmt == "tiff":
        bps = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
        if isinstance(bps, tuple):
            bps = bps[0] if bps else None
        return int(bps) if bps else None
    if fmt == "jpeg":
        return int(im.bits) if hasattr(im, "bits") else 8
    return None


def _decode_cv2_unchanged(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("OpenCV could not decode the 16-bit colour data")
    return np.asarray(arr)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF Orientation value (1-8), the same way as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1, :]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, k=-1)
    if orientation == 7:
        return np.rot90(arr, k=2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, k=1)
    return arr


def _minmax(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, np.float64)
    arr = np.where(finite, arr, np.nan)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.float64)
    return np.nan_to_num((arr - lo) / (hi - lo), nan=0.0)


# ----------------------------------------------------------------------------- DICOM


def _read_dicom(data: bytes, path: Path) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_magic = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(path, "dicom", exc) from exc
    if "PixelData" not in ds:
        raise ImageReadError(
            f"Cannot read image '{path}': the DICOM file has no pixel data "
            "(it is truncated, or not an image object, e.g. a report)",
            hint="export the image series again, or skip this file",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"Cannot read image '{path}': multi-frame DICOM ({frames} frames) is not supported",
            hint="export the frame you want as a single-frame DICOM or PNG",
        )
    _check_decoder(ds, path)
    try:
        raw = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as exc:
        raise _damaged(path, "dicom", exc) from exc
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    spacing = _spacing(ds)
    if raw.ndim == 3:  # colour secondary capture; pydicom already converted YBR to RGB
        return _loaded(_minmax(raw.astype(np.float64) @ _LUMA), path, "dicom", bits, spacing)
    pixels = _dicom_grayscale(raw, ds)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return _loaded(pixels, path, "dicom", bits, spacing)


def _check_decoder(ds: Any, path: Path) -> None:
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageReadError(
            f"Cannot read image '{path}': DICOM transfer syntax {ts.name} ({ts}) "
            "cannot be decoded by pydicom",
            hint="convert the file to an uncompressed transfer syntax (e.g. dcmdjpeg / gdcmconv --raw)",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageReadError(
            f"Cannot read image '{path}': DICOM transfer syntax {ts.name} ({ts}) needs a "
            f"decoder plugin that is not installed ({missing})",
            hint=_install_hint(decoder.missing_dependencies),
        )


def _install_hint(missing: list[str]) -> str:
    """Turn pydicom's "plugin - requires a>=1 and b>=2" lines into pip commands."""
    commands = []
    for line in missing:
        plugin, _, requires = line.partition(" - requires ")
        if plugin.strip() == "gdcm":
            commands.append("pip install python-gdcm")  # the PyPI name differs from the module
            continue
        packages = [req.strip() for req in requires.split(" and ") if req.strip() != "numpy"]
        if packages:
            commands.append("pip install " + " ".join(f"'{pkg}'" for pkg in packages))
    if not commands:
        return "install a pydicom pixel-data plugin (pylibjpeg or python-gdcm)"
    return "install one of the decoders: " + "  |  ".join(commands)


def _dicom_grayscale(raw: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = apply_modality_lut(raw, ds)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return _minmax(np.asarray(modality, np.float64))
    voi = np.asarray(apply_voi_lut(modality, ds, index=0, prefer_lut=True), np.float64)
    lo, hi = _voi_output_range(ds, has_lut)
    if hi == lo:
        return _minmax(voi)
    return (voi - lo) / (hi - lo)


def _voi_output_range(ds: Any, has_lut: bool) -> tuple[float, float]:
    """The range pydicom's VOI step maps into (PS3.3 C.11.2.1.2; pydicom ``apply_windowing``)."""
    if has_lut:
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return (row, col)
    return None


# ----------------------------------------------------------------------------- PNG writing


def write_png_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write a PNG so that readers never see half a file (temp file in the folder + rename).

    Args:
        path: target file; missing parent folders are created.
        array: uint8 HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA), or bool HxW (written as 0/255).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.bool_ and array.ndim == 2:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    ):
        raise ValueError(
            "write_png_atomic expects uint8 HxW / HxWx3 / HxWx4 or bool HxW. "
            f"Received: dtype={array.dtype}, shape={array.shape}"
        )
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"OpenCV could not encode a PNG. Received: shape={array.shape}")
    atomic_write_bytes(path, encoded.tobytes())


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read a mask PNG as bool HxW: a pixel is True where its stored value is non-zero.

    Colour masks count a pixel when any colour channel is non-zero (alpha is ignored); palette
    masks use the palette index.
    """
    from PIL import Image

    path = Path(path)
    data = _read_bytes(path)
    if not data.startswith(_PNG_MAGIC):
        raise ImageReadError(
            f"Cannot read mask '{path}': not a PNG file ({_describe_unknown(data)})",
            hint="masks are single-channel PNGs (0 = background, non-zero = foreground)",
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        raise ImageReadError(
            f"Cannot read mask '{path}': the PNG data is corrupt or truncated ({exc})",
            hint="the file is damaged; write the mask again",
        ) from exc
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        return np.asarray(arr.any(axis=2))
    return np.asarray(arr != 0)


# ----------------------------------------------------------------------------- letterbox


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a ``size x size`` model input.

    The rule, in continuous ``xy`` (origin at the top-left corner of the top-left pixel):
    ``model = image * scale + (pad_x, pad_y)`` with ``scale = size / max(src_height, src_width)``
    and the padding split equally on both sides (it may be fractional). The long side fills the
    input exactly; the rest is zero.
    """

    scale: float
    pad_x: float
    pad_y: float
    src_height: int
    src_width: int
    size: int

    @classmethod
    def fit(cls, src_height: int, src_width: int, size: int) -> Letterbox:
        if src_height < 1 or src_width < 1 or size < 1:
            raise ValueError(
                "Letterbox needs positive sizes. "
                f"Received: src_height={src_height}, src_width={src_width}, size={size}"
            )
        scale = size / max(src_height, src_width)
        return cls(
            scale=scale,
            pad_x=(size - src_width * scale) / 2.0,
            pad_y=(size - src_height * scale) / 2.0,
            src_height=int(src_height),
            src_width=int(src_width),
            size=int(size),
        )

    def image_to_model_xy(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` continuous image ``xy`` to model-input ``xy`` (float64)."""
        pts = _as_xy(points)
        return pts * self.scale + np.array([self.pad_x, self.pad_y])

    def model_to_image_xy(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` continuous model-input ``xy`` to image ``xy`` (float64)."""
        pts = _as_xy(points)
        return (pts - np.array([self.pad_x, self.pad_y])) / self.scale

    def heatmap_to_image(self, heatmap: np.ndarray) -> np.ndarray:
        """Bring a heatmap covering the whole model input back onto the source image grid.

        The heatmap may have any resolution (a 7x7 CAM, or the full input). The padding is
        cropped exactly (at sub-cell precision) and the rest is resized to ``src_height x
        src_width`` with the sampling rule of ``cv2.resize(..., INTER_LINEAR)``: each output
        pixel centre is mapped into the heatmap and bilinearly interpolated between cell
        centres, clamped at the edges. Returns float32 HxW.
        """
        hm = np.asarray(heatmap, dtype=np.float64)
        if hm.ndim != 2 or hm.shape[0] < 1 or hm.shape[1] < 1:
            raise ValueError(f"heatmap_to_image expects a 2-D heatmap. Received: shape={hm.shape}")
        rows = _bilinear_axis(self.src_height, hm.shape[0], self.scale, self.pad_y, self.size)
        cols = _bilinear_axis(self.src_width, hm.shape[1], self.scale, self.pad_x, self.size)
        (y0, y1, wy), (x0, x1, wx) = rows, cols
        along_y = hm[y0] * (1.0 - wy)[:, None] + hm[y1] * wy[:, None]
        out = along_y[:, x0] * (1.0 - wx) + along_y[:, x1] * wx
        return out.astype(np.float32)


def _bilinear_axis(
    n_out: int, n_cells: int, scale: float, pad: float, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = np.arange(n_out, dtype=np.float64) + 0.5  # image pixel centres
    cell = (centres * scale + pad) * (n_cells / size) - 0.5  # heatmap index coordinates
    cell = np.clip(cell, 0.0, n_cells - 1.0)
    lo = np.floor(cell).astype(np.intp)
    hi = np.minimum(lo + 1, n_cells - 1)
    return lo, hi, cell - lo


def _as_xy(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (2,):
        raise ValueError(
            f"points must have shape (..., 2) in xy order. Received: shape={pts.shape}"
        )
    return pts


def to_model_input(image: LoadedImage | np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Letterbox an image into a ``size x size`` float32 HxWx3 array in [0, 255].

    Gray is replicated to 3 channels; the models' own preprocessing layers do the rest. A
    :class:`LoadedImage` contributes ``pixels * 255`` (full precision of 16-bit sources). An array
    may be uint8 (HxW or HxWx3, used as is) or floating in [0, 1] (scaled by 255).

    The content lands exactly where :class:`Letterbox` says: it is first resized with INTER_AREA
    (shrinking) or INTER_LINEAR (enlarging) to whole pixels, then placed by a sub-pixel affine
    warp, so fractional padding is honoured.
    """
    src = _model_source(image)
    h, w = src.shape[:2]
    box = Letterbox.fit(h, w, size)
    new_w, new_h = max(1, round(w * box.scale)), max(1, round(h * box.scale))
    interp = cv2.INTER_AREA if box.scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(src, (new_w, new_h), interpolation=interp)
    # Continuous coords: model = a * resized + pad; OpenCV indexes pixel centres, hence the 0.5s.
    ax, ay = box.scale * w / new_w, box.scale * h / new_h
    matrix = np.array(
        [[ax, 0.0, box.pad_x + 0.5 * ax - 0.5], [0.0, ay, box.pad_y + 0.5 * ay - 0.5]],
        dtype=np.float64,
    )
    out = cv2.warpAffine(
        resized,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32), box


def _model_source(image: LoadedImage | np.ndarray) -> np.ndarray:
    if isinstance(image, LoadedImage):
        return np.asarray(image.pixels, np.float32) * np.float32(255.0)
    arr = np.asarray(image)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"to_model_input expects HxW or HxWx3. Received: shape={arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0.0 or np.nanmax(arr) > 1.0):
            raise ValueError(
                "to_model_input expects float arrays in [0, 1] (or uint8 in [0, 255]). "
                f"Received: min={np.nanmin(arr):.4g}, max={np.nanmax(arr):.4g}"
            )
        return (arr * 255.0).astype(np.float32)
    raise ValueError(f"to_model_input expects uint8 or float. Received: dtype={arr.dtype}")


# ----------------------------------------------------------------------------- overlays


def _to_bgr(display: np.ndarray) -> np.ndarray:
    arr = np.asarray(display)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image. Received: dtype={arr.dtype}")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr.copy()
    raise ValueError(f"expected HxW gray or HxWx3 BGR. Received: shape={arr.shape}")


def _check_same_size(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape[:2] != shape[:2]:
        raise ValueError(
            f"{name} must match the image size {shape[0]}x{shape[1]}. "
            f"Received: shape={arr.shape} (use Letterbox.heatmap_to_image to map model outputs back)"
        )


def overlay_heatmap(display: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heatmap (JET colormap) over an 8-bit image; returns BGR uint8."""
    base = _to_bgr(display)
    heat = np.asarray(heatmap, dtype=np.float64)
    _check_same_size("heatmap", heat, base.shape)
    heat8 = np.rint(np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    colour = cv2.applyColorMap(heat8, cv2.COLORMAP_JET)
    return cv2.addWeighted(base, 1.0 - alpha, colour, alpha, 0.0)


def overlay_mask(
    display: np.ndarray,
    mask: np.ndarray,
    *,
    color: tuple[int, int, int] = (0, 0, 255),
    alpha: float = 0.35,
    contour: bool = True,
) -> np.ndarray:
    """Tint the pixels of a bool mask (BGR ``color``) and outline it; returns BGR uint8."""
    out = _to_bgr(display)
    m = np.asarray(mask).astype(bool)
    _check_same_size("mask", m, out.shape)
    if m.any():
        tint = np.array(color, dtype=np.float64)
        out[m] = np.rint(out[m] * (1.0 - alpha) + tint * alpha).astype(np.uint8)
        if contour:
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            thickness = max(1, round(max(out.shape[:2]) / 512))
            cv2.drawContours(out, contours, -1, color, thickness, lineType=cv2.LINE_AA)
    return out


_SHIFT = 4  # cv2 sub-pixel bits: 1/16 px


def draw_polygons(
    bgr: np.ndarray,
    polygons_xy: list[np.ndarray],
    color: tuple[int, int, int] = (0, 255, 0),
    thickness: int = 1,
) -> np.ndarray:
    """Draw closed polygons given in continuous ``xy`` (sub-pixel exact); returns a new image."""
    out = _to_bgr(bgr)
    scaled = []
    for poly in polygons_xy:
        pts = _as_xy(poly).reshape(-1, 2)
        if len(pts) < 2:
            continue
        # OpenCV puts integer coordinates on pixel centres: shift by half a pixel.
        fixed = np.rint((pts - 0.5) * (1 << _SHIFT)).astype(np.int32)
        scaled.append(fixed.reshape(-1, 1, 2))
    if scaled:
        cv2.polylines(out, scaled, True, color, thickness, lineType=cv2.LINE_AA, shift=_SHIFT)
    return out


def put_label(bgr: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` on a dark banner across the top of the image; returns a new image."""
    out = _to_bgr(bgr)
    h, w = out.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, w / 900.0)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    if tw > w - 8 and tw > 0:  # shrink long labels to fit the width
        scale *= (w - 8) / tw
        thick = max(1, round(scale * 1.5))
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    band = min(h, th + base + 8)
    out[:band] = (out[:band].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (4, band - base - 4), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
