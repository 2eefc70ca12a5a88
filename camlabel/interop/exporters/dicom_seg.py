"""DICOM SEG (highdicom): one binary Segmentation per image that was registered from DICOM.

Each SEG references its source image (Referenced Series Sequence with the source SOP Instance
UID) and copies the patient and study attributes from it, as DICOM requires; they stay in the
files written locally and never reach a labeling tool. Segment 1 is the lesion (SNOMED CT
"Lesion", manually annotated); ignore regions, when present, are segment 2. Images that did not
come from DICOM are listed under ``skipped`` in the manifest (use another format for them).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.errors import UsageError
from camlabel.interop.exporting import ExportItem

#: Patient and study attributes of type 2 (present, may be empty) that a SEG copies from its source.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _descriptions(with_ignore: bool) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from camlabel import __version__

    algo = hd.AlgorithmIdentificationSequence(
        name="camlabel", version=__version__, family=codes.DCM.ArtificialIntelligence
    )
    out = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="lesion",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algo,
        )
    ]
    if with_ignore:
        out.append(
            hd.seg.SegmentDescription(
                segment_number=2,
                segment_label="ignore",
                segmented_property_category=codes.SCT.PhysicalObject,
                segmented_property_type=codes.SCT.Device,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    return out


def write(items: Sequence[ExportItem], out: Path) -> dict[str, Any]:
    import pydicom

    from camlabel import __version__
    from camlabel.fileio import atomic_write_bytes

    try:
        import highdicom as hd
    except ImportError as exc:
        raise UsageError(
            "DICOM SEG export needs the highdicom package, which is not installed",
            hint="pip install 'camlabel[dicom-seg]'",
        ) from exc
    dicom = [it for it in items if it.rec.source_format == "dicom"]
    if not dicom:
        raise UsageError(
            "no masked image of the workspace was registered from DICOM; DICOM SEG needs the "
            "source DICOM file to reference",
            hint="export with --format nnunet, coco or png instead",
        )
    written = []
    for n, it in enumerate(dicom, 1):
        src_path = Path(it.rec.source_path)
        if not src_path.is_file():
            raise UsageError(
                f"the source DICOM of {it.case} is gone: {src_path}",
                hint="put the file back, or register it again (camlabel add)",
            )
        src = pydicom.dcmread(src_path)
        for keyword in _TYPE2_COPIED:  # type-2 attributes a SEG copies: empty when absent
            if keyword not in src:
                setattr(src, keyword, "")
        mask = it.mask()
        if mask.shape != (int(src.Rows), int(src.Columns)):
            raise UsageError(
                f"mask of {it.case} is {mask.shape[1]}x{mask.shape[0]} but {src_path} is "
                f"{src.Columns}x{src.Rows}"
            )
        ignore = it.ignore()
        with_ignore = ignore is not None and bool(ignore.any())
        pixels = mask.astype(np.uint8)
        if with_ignore:
            assert ignore is not None
            pixels = np.stack([mask, ignore], axis=-1).astype(np.uint8)[None]
        measures = None
        spacing = src.get("PixelSpacing") or src.get("ImagerPixelSpacing")
        if spacing is not None:
            # projection radiographs have no slice thickness, but SEG readers (highdicom's own
            # included) require one in the Pixel Measures Sequence
            measures = hd.PixelMeasuresSequence(
                pixel_spacing=[float(v) for v in spacing],
                slice_thickness=float(src.get("SliceThickness") or 1.0),
            )
        seg = hd.seg.Segmentation(
            source_images=[src],
            pixel_measures=measures,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_descriptions(with_ignore),
            series_instance_uid=hd.UID(),
            series_number=9000,
            sop_instance_uid=hd.UID(),
            instance_number=n,
            manufacturer="camlabel",
            manufacturer_model_name="camlabel",
            software_versions=__version__,
            device_serial_number="camlabel",
            series_description=f"camlabel lesion mask v{it.rec.mask.version if it.rec.mask else 0}",
        )
        buf = io.BytesIO()
        seg.save_as(buf)
        atomic_write_bytes(out / f"{it.case}.dcm", buf.getvalue())
        written.append(
            {
                "case": it.case,
                "file": f"{it.case}.dcm",
                "referenced_sop_instance_uid": str(src.SOPInstanceUID),
            }
        )
    skipped = [it.case for it in items if it.rec.source_format != "dicom"]
    return {"segmentations": written, "skipped_not_dicom": skipped}
