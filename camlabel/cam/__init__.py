"""Class activation maps for camlabel classifiers.

A new method is one file with a :class:`~camlabel.cam.base.BaseCAM` subclass overriding
``get_cam_weights``, plus one line in :data:`CAM_METHODS`.
"""

from __future__ import annotations

from camlabel.cam.base import FUSIONS, BaseCAM, CamResult, fuse_maps, minmax
from camlabel.cam.gradcam import GradCAM
from camlabel.cam.gradcampp import GradCAMPlusPlus
from camlabel.cam.layercam import LayerCAM
from camlabel.errors import ModelError

CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "layercam": LayerCAM,
}


def get_cam_method(name: str) -> type[BaseCAM]:
    """The CAM class registered as ``name``; an unknown name lists the valid ones."""
    try:
        return CAM_METHODS[name]
    except KeyError:
        raise ModelError(
            f"Wrong CAM method {name!r}, supported methods: {sorted(CAM_METHODS)}",
            hint="pass --method " + " or --method ".join(sorted(CAM_METHODS)),
        ) from None


__all__ = [
    "CAM_METHODS",
    "FUSIONS",
    "BaseCAM",
    "CamResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "fuse_maps",
    "get_cam_method",
    "minmax",
]
