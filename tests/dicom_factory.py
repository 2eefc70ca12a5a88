"""Build small, valid DICOM files for tests (import as ``from tests.dicom_factory import ...``).

Every file carries fake patient tags (:data:`FAKE_TAGS`) so tests can assert that nothing derived
from an image (arrays, PNGs, records, manifests) ever contains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

# Tag keyword -> value; each value is distinctive enough to grep for in bytes.
FAKE_TAGS: dict[str, str] = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-12345",
    "PatientBirthDate": "19610704",
    "StudyDate": "20200314",
    "InstitutionName": "Fakecity General Hospital",
    "AccessionNumber": "ACC-98765",
}


def fake_tag_needles() -> list[bytes]:
    """The byte strings that must never appear in anything camlabel writes from a DICOM."""
    needles = []
    for value in FAKE_TAGS.values():
        needles.append(value.encode())
        needles.extend(part.encode() for part in value.split("^") if len(part) >= 3)
    return needles


def make_dicom(
    path: str | Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    window_center: float | None = None,
    window_width: float | None = None,
    voi_lut_function: str | None = None,
    pixel_spacing: Sequence[float] | None = (0.143, 0.139),
    imager_pixel_spacing: Sequence[float] | None = None,
    frames: int = 1,
    transfer_syntax: UID | str = ExplicitVRLittleEndian,
    preamble: bool = True,
) -> Path:
    """Write a single-sample DX DICOM file and return its path.

    Args:
        pixels: stored values, HxW (or FxHxW when ``frames > 1``); defaults to a 20x16 ramp
            spanning ``0 .. 2**bits_stored - 1``.
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        bits_stored: 8 (stored in 8 bits) or 9..16 (stored in 16 bits).
        transfer_syntax: a compressed UID writes a fake encapsulated frame (tests the
            "no decoder installed" path; the data is not decodable).
        preamble: False writes a file without the 128-byte preamble and "DICM" magic.
    """
    path = Path(path)
    allocated = 8 if bits_stored <= 8 else 16
    if pixels is None:
        top = 2**bits_stored - 1
        pixels = np.linspace(0, top, 20 * 16).round().reshape(20, 16)
        if frames > 1:
            pixels = np.stack([pixels] * frames)
    dtype = {
        (8, False): np.uint8,
        (8, True): np.int8,
        (16, False): np.uint16,
        (16, True): np.int16,
    }[(allocated, signed)]
    arr = np.ascontiguousarray(np.asarray(pixels), dtype=dtype)
    rows, cols = arr.shape[-2:]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(str(transfer_syntax))

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    for keyword, value in FAKE_TAGS.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale_slope is not None or rescale_intercept is not None:
        ds.RescaleSlope = rescale_slope if rescale_slope is not None else 1.0
        ds.RescaleIntercept = rescale_intercept if rescale_intercept is not None else 0.0
        ds.RescaleType = "US"
    if window_center is not None and window_width is not None:
        ds.WindowCenter = window_center
        ds.WindowWidth = window_width
    if voi_lut_function is not None:
        ds.VOILUTFunction = voi_lut_function
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if imager_pixel_spacing is not None:
        ds.ImagerPixelSpacing = [float(v) for v in imager_pixel_spacing]

    if meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not-really-compressed\xff\xd9"] * frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OB" if allocated == 8 else "OW"

    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
        raw = path.read_bytes()
        path.write_bytes(raw[132:])  # drop preamble + "DICM"; file meta group stays
    return path
