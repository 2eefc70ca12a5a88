"""Helpers for the Label Studio tests: phantom workspaces and an independent rasterizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely

from camlabel.geometry import mask_to_polygons
from camlabel.imaging import read_mask_png
from camlabel.records import ImageRecord, Preannotation
from camlabel.workspace import Workspace


def phantom_workspace(
    root: Path, count: int, *, size: int = 96, seed: int = 7
) -> tuple[Workspace, list[ImageRecord]]:
    """A workspace with ``count`` registered lesion phantoms whose pre-annotations are their truth masks."""
    from camlabel.phantoms import generate_phantoms

    ws = Workspace.init(root / "ws")
    ph = root / "phantoms"
    rows = generate_phantoms(ph, count=count, seed=seed, size=size, classes=("covid", "pneumonia"))
    paths = [ph / r.file for r in rows]
    records, failures = ws.register_images(paths, labels={str(ph / r.file): r.label for r in rows})
    assert not failures, failures
    by_source = {Path(r.source_path): r for r in records}
    out = []
    with ws.ledger.transaction() as txn:
        for row in rows:
            rec = by_source[(ph / row.file).resolve()]
            polys = mask_to_polygons(
                read_mask_png(ph / row.lesion_mask), epsilon_px=1.0, max_vertices=24, min_area_px=8
            )
            assert polys, f"phantom {row.file} has no lesion"
            # Traced outlines run through pixel corners; after simplification a diagonal edge
            # can pass exactly through a pixel centre, where rasterizers legitimately differ
            # (tie rules). A small off-lattice shift keeps the comparisons free of ties.
            shifted = [
                {
                    "exterior": [[x + 0.0137, y + 0.0071] for x, y in p.to_json()["exterior"]],
                    "holes": [],
                }
                for p in polys
            ]
            rec = rec.evolve(
                preannotation=Preannotation(
                    polygons=tuple(shifted),
                    source="truth",
                    model_version="phantom-truth",
                    score=0.75,
                )
            )
            txn.put(rec)
            out.append(rec)
    return ws, out


def rasterize_centres(
    polygons_px: Sequence[Sequence[Sequence[float]]], height: int, width: int
) -> np.ndarray:
    """Pixels whose centre lies strictly inside any polygon (shapely; independent of camlabel.geometry)."""
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = xs.ravel() + 0.5, ys.ravel() + 0.5
    mask = np.zeros(height * width, dtype=bool)
    for pts in polygons_px:
        poly = shapely.Polygon(np.asarray(pts, dtype=np.float64))
        mask |= shapely.contains_xy(poly, cx, cy)
    return mask.reshape(height, width)


def pct(points_px: Sequence[Sequence[float]], width: int, height: int) -> list[list[float]]:
    return [[x / width * 100.0, y / height * 100.0] for x, y in points_px]


def px(points_pct: Sequence[Sequence[float]], width: int, height: int) -> list[list[float]]:
    return [[x * width / 100.0, y * height / 100.0] for x, y in points_pct]


def polygon_result(
    points_px: Sequence[Sequence[float]],
    width: int,
    height: int,
    *,
    origin: str = "manual",
    rid: str = "r0",
    label: str = "Opacity",
) -> dict:
    return {
        "id": rid,
        "from_name": "lesion",
        "to_name": "image",
        "type": "polygonlabels",
        "origin": origin,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "points": pct(points_px, width, height),
            "closed": True,
            "polygonlabels": [label],
        },
    }
