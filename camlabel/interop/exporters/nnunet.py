"""nnU-Net v2 raw dataset: ``dataset.json``, ``imagesTr/<case>_0000.png``, ``labelsTr/<case>.png``.

Labels are 0 background, 1 lesion and, when any annotator marked ignore regions, 2 ``ignore``
(nnU-Net's ignore label must be the highest). Images whose record has ``split == "test"`` go to
``imagesTs`` without labels. ``splits_final.json`` holds 5 folds grouped by patient; copy it to
``nnUNet_preprocessed/<dataset>/`` after ``nnUNetv2_plan_and_preprocess`` to use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.interop.exporting import ExportItem, patient_folds


def write(items: Sequence[ExportItem], out: Path) -> dict[str, Any]:
    from camlabel.fileio import atomic_write_text
    from camlabel.imaging import write_png_atomic

    train = [it for it in items if it.rec.split != "test"]
    test = [it for it in items if it.rec.split == "test"]
    has_ignore = False
    for it in train:
        label = it.mask().astype(np.uint8)
        ignore = it.ignore()
        if ignore is not None and ignore.any():
            label[ignore] = 2
            has_ignore = True
        write_png_atomic(out / "imagesTr" / f"{it.case}_0000.png", it.image())
        write_png_atomic(out / "labelsTr" / f"{it.case}.png", label)
    for it in test:
        write_png_atomic(out / "imagesTs" / f"{it.case}_0000.png", it.image())
    labels = {"background": 0, "lesion": 1}
    if has_ignore:
        labels["ignore"] = 2
    dataset = {
        "channel_names": {"0": "X-ray"},
        "labels": labels,
        "numTraining": len(train),
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
        "name": out.name,
        "description": "lesion masks exported by camlabel (see camlabel-export.json)",
    }
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    splits = patient_folds(train)
    atomic_write_text(out / "splits_final.json", json.dumps(splits, indent=2) + "\n")
    return {"training": len(train), "test": len(test), "folds": len(splits), "labels": labels}
