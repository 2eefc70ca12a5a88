"""camlabel: human-in-the-loop lesion masks for chest X-rays.

Grad-CAM heatmaps of a DenseNet121 + EfficientNetB0 + VGG19 ensemble become
pre-annotations in Label Studio or SageMaker Ground Truth; annotators correct them;
the masks train an FC-DenseNet103 segmenter. Heavy modules (TensorFlow, SDKs) are
imported lazily, so ``import camlabel`` is cheap.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("camlabel")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
