"""Small segmentation data for tests: an export folder and a workspace with masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from camlabel.models import seg_data


def make_seg_folder(root: Path, n: int = 10, *, with_split: bool = True, size: int = 64) -> Path:
    """Phantom images + lesion masks in the export layout (2 images per patient)."""
    from camlabel.phantoms import render_phantom

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        label = ("covid", "pneumonia")[i % 2]
        img, lesion, _ = render_phantom(rng, label, size, size - 8)
        rid = f"img{i:02d}"
        cv2.imwrite(str(root / "images" / f"{rid}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{rid}.png"), lesion.astype(np.uint8) * 255)
        split = ("val" if i >= n - 2 else "train") if with_split else ""
        rows.append(seg_data.IndexRow(rid, f"p{i // 2}", split, label, "1"))
    seg_data.write_index(root, rows)
    return root


def make_masked_workspace(root: Path, n: int = 8, size: int = 64) -> Any:
    """A workspace whose ledger has n phantom images with consensus masks (version 2)."""
    from camlabel.imaging import write_png_atomic
    from camlabel.phantoms import render_phantom
    from camlabel.records import MaskInfo
    from camlabel.workspace import Workspace

    ws = Workspace.init(root)
    src = root.parent / "src"
    src.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    paths, labels, patients, masks = [], {}, {}, {}
    for i in range(n):
        label = ("covid", "pneumonia")[i % 2]
        img, lesion, _ = render_phantom(rng, label, size, size)
        p = src / f"ph{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
        labels[str(p)] = label
        patients[str(p)] = f"pat{i // 2}"
        masks[str(p)] = lesion
    records, failures = ws.register_images(paths, labels=labels, patient_ids=patients)
    assert not failures
    with ws.ledger.transaction() as txn:
        for rec, p in zip(records, paths, strict=True):
            mpath = ws.dir("masks") / f"{rec.image_id}.png"
            write_png_atomic(mpath, masks[str(p)].astype(np.uint8) * 255)
            info = MaskInfo(
                path=ws.rel(mpath),
                version=2,
                annotation_ids=("a1",),
                consensus="single",
                sha256="0" * 64,
            )
            txn.put(rec.evolve(mask=info))
    return ws


def make_constant_segmenter(model_dir: Path, *, image_size: int = 32, logit: float = 6.0) -> Path:
    """A tiny Tiramisu that says the same everywhere (``logit`` 6: "structure", p = 0.9975;
    -6: "nothing", p = 0.0025), saved as a model folder (model.keras + model_info.json):
    predictions with a known answer."""
    import json

    from camlabel.models.tiramisu import Tiramisu

    seg = Tiramisu(growth_rate=4, initial_filters=8, down_blocks=(2, 2), bottleneck_layers=2)
    conv = seg.get_layer("head_conv")
    k, _ = conv.get_weights()
    conv.set_weights([np.zeros_like(k), np.full((1,), logit, np.float32)])
    model_dir.mkdir(parents=True)
    seg.save(model_dir / "model.keras")
    (model_dir / "model_info.json").write_text(
        json.dumps({"image_size": image_size, "threshold": 0.5})
    )
    return model_dir
