"""The paper's classifier: DenseNet121 + EfficientNetB0 + VGG19 on one shared input.

Every backbone is a ``keras.applications`` model built with ``input_tensor=`` on the
shared (per-backbone preprocessed) input, so the ensemble is one flat functional graph:
each backbone's last convolutional layer is a node of the ensemble itself, which is what
Grad-CAM needs, and the graph survives ``.keras`` save/load. Global-average-pooled
features of the backbones are concatenated, then dropout, then ``Dense(k, name="logits")``
and a softmax (``name="predictions"``).

A new backbone is one :class:`BackboneSpec` plus one line in :data:`BACKBONES`.

Weights (``build_ensemble(weights=...)``):

- ``"none"``: random initialization.
- ``"imagenet"``: Keras's ImageNet "notop" files, through Keras's download cache
  (``~/.keras/models``). Offline, this raises :class:`~camlabel.errors.ModelError`.
- a folder: the same per-backbone files, read locally (file names in
  :data:`BACKBONES`, e.g. ``densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5``,
  ``efficientnetb0_notop.h5``, ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``).
  Copying these files into ``~/.keras/models`` makes ``"imagenet"`` work offline too.
- ``*.keras``: a saved camlabel ensemble whose weights (and architecture settings:
  classes, backbones, preprocessing) initialize the new one.
- ``*.weights.h5``: weights saved by ``EnsembleClassifier.save_weights`` of an ensemble
  with the same classes, backbones and ``pretrained`` layout.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from camlabel.errors import ModelError
from camlabel.models.layers import BackbonePreprocess

DEFAULT_CLASSES = ("covid", "pneumonia", "normal")
DEFAULT_BACKBONES = ("densenet121", "efficientnetb0", "vgg19")
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its Grad-CAM layer and ImageNet weights are.

    Attributes:
        application: the ``keras.applications`` constructor.
        cam_layer: name of the last convolutional layer (the Grad-CAM target).
        preprocess: ``BackbonePreprocess`` mode with random initialization.
        preprocess_imagenet: the mode with ImageNet weights.
        imagenet_file: Keras's "notop" weights file name (cache key in ``~/.keras/models``).
        imagenet_url: where Keras downloads it from.
        imagenet_md5: its hash, checked by ``keras.utils.get_file``.
    """

    application: Callable[..., keras.Model]
    cam_layer: str
    preprocess: str
    preprocess_imagenet: str
    imagenet_file: str
    imagenet_url: str
    imagenet_md5: str


_GCS = "https://storage.googleapis.com/tensorflow/keras-applications"
BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec(
        application=keras.applications.DenseNet121,
        cam_layer="relu",
        preprocess="torch",
        preprocess_imagenet="torch",
        imagenet_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        imagenet_url=f"{_GCS}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        imagenet_md5="30ee3e1110167f948a6b9946edeeb738",
    ),
    "efficientnetb0": BackboneSpec(
        application=keras.applications.EfficientNetB0,
        cam_layer="top_activation",
        preprocess="none",
        preprocess_imagenet="efficientnet-imagenet",
        imagenet_file="efficientnetb0_notop.h5",
        imagenet_url="https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        imagenet_md5="50bc09e76180e00e4465e1a485ddc09d",
    ),
    "vgg19": BackboneSpec(
        application=keras.applications.VGG19,
        cam_layer="block5_conv4",
        preprocess="caffe",
        preprocess_imagenet="caffe",
        imagenet_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        imagenet_url=f"{_GCS}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        imagenet_md5="253f8cb515780f3b799900260a226db6",
    ),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; an unknown name lists the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(
            f"Wrong backbone name {name!r}, supported backbones: {sorted(BACKBONES)}",
            hint="pass a comma-separated subset of the supported names",
        ) from None


def new_model_version() -> str:
    """A fresh, sortable model version: UTC time plus 8 random hex digits."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


@keras.saving.register_keras_serializable(package="camlabel")
class EnsembleClassifier(keras.Model):
    """DenseNet121 + EfficientNetB0 + VGG19 ensemble on one shared RGB input.

    Input: float32 ``(batch, image_size, image_size, 3)`` RGB in ``[0, 255]`` (grayscale
    radiographs replicated to three channels; see ``camlabel.imaging.to_model_input``).
    Output: class probabilities ``(batch, len(classes))``.

    Args:
        classes: class names, in output order.
        image_size: square input side in pixels (>= 32).
        backbones: names from :data:`BACKBONES`.
        dropout: dropout rate on the concatenated pooled features.
        freeze_fraction: the initial fraction (0-1) of each backbone's layers made
            non-trainable (frozen BatchNorm layers also run in inference mode).
        pretrained: ``"imagenet"`` to use the input preprocessing that ImageNet weights
            expect, ``None`` otherwise. Weights themselves are loaded by
            :func:`build_ensemble`; this only fixes the graph.
        model_version: an identifier recorded with every prediction; a new one is
            generated when ``None``.
        bn_momentum: momentum of every BatchNorm layer of the backbones (Keras's default
            0.99 when ``None``). Training from scratch on a few hundred images gives too few
            steps for 0.99: the inference statistics stay far from the data and validation
            predictions collapse to one class; 0.9 fixes that.
        **kwargs: ``name``, ``trainable`` (passed to ``keras.Model``).
    """

    def __init__(
        self,
        classes: Sequence[str] = DEFAULT_CLASSES,
        image_size: int = 224,
        backbones: Sequence[str] = DEFAULT_BACKBONES,
        dropout: float = 0.5,
        freeze_fraction: float = 0.0,
        pretrained: str | None = None,
        model_version: str | None = None,
        bn_momentum: float | None = None,
        **kwargs: Any,
    ) -> None:
        classes = tuple(str(c) for c in classes)
        backbones = tuple(backbones)
        _check_args(classes, image_size, backbones, dropout, freeze_fraction, pretrained)
        if bn_momentum is not None and not 0.0 < bn_momentum < 1.0:
            raise ModelError(
                f"`bn_momentum` must be in (0, 1). Received: bn_momentum={bn_momentum!r}"
            )

        # === Functional model ===
        inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
        pooled = []
        backbone_layers: dict[str, tuple[str, ...]] = {}
        for name in backbones:
            spec = BACKBONES[name]
            mode = spec.preprocess_imagenet if pretrained == "imagenet" else spec.preprocess
            x = BackbonePreprocess(mode=mode, name=f"{name}_preprocess")(inputs)
            app = spec.application(include_top=False, weights=None, input_tensor=x)
            own = [
                layer
                for layer in app.layers
                if not isinstance(layer, keras.layers.InputLayer | BackbonePreprocess)
            ]
            for layer in own[: int(freeze_fraction * len(own))]:
                layer.trainable = False
            if bn_momentum is not None:
                for layer in own:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.momentum = float(bn_momentum)
            backbone_layers[name] = tuple(layer.name for layer in own)
            pooled.append(layers.GlobalAveragePooling2D(name=f"{name}_gap")(app.output))
        features = layers.Concatenate(name="features")(pooled) if len(pooled) > 1 else pooled[0]
        features = layers.Dropout(dropout, name="dropout")(features)
        logits = layers.Dense(len(classes), name="logits")(features)
        outputs = layers.Activation("softmax", dtype="float32", name="predictions")(logits)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.classes = classes
        self.image_size = int(image_size)
        self.backbones = backbones
        self.dropout = float(dropout)
        self.freeze_fraction = float(freeze_fraction)
        self.pretrained = pretrained
        self.model_version = model_version or new_model_version()
        self.bn_momentum = None if bn_momentum is None else float(bn_momentum)
        self._backbone_layer_names = backbone_layers

    @property
    def cam_layers(self) -> tuple[str, ...]:
        """The Grad-CAM target layer of each backbone, in backbone order."""
        return tuple(BACKBONES[name].cam_layer for name in self.backbones)

    @property
    def score_layer(self) -> str:
        """The layer whose output is the pre-softmax class score."""
        return "logits"

    def backbone_layer_names(self, name: str) -> tuple[str, ...]:
        """Names of the layers that belong to backbone ``name`` (in build order)."""
        return self._backbone_layer_names[name]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "classes": list(self.classes),
            "image_size": self.image_size,
            "backbones": list(self.backbones),
            "dropout": self.dropout,
            "freeze_fraction": self.freeze_fraction,
            "pretrained": self.pretrained,
            "model_version": self.model_version,
            "bn_momentum": self.bn_momentum,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> EnsembleClassifier:
        return cls(**config)


def _check_args(
    classes: tuple[str, ...],
    image_size: int,
    backbones: tuple[str, ...],
    dropout: float,
    freeze_fraction: float,
    pretrained: str | None,
) -> None:
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ModelError(
            f"`classes` must be at least 2 distinct names. Received: classes={list(classes)}"
        )
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ModelError(
            f"`image_size` must be an integer >= {MIN_IMAGE_SIZE} (the smallest input all three "
            f"backbones accept). Received: image_size={image_size!r}"
        )
    if not backbones:
        raise ModelError(
            f"`backbones` must name at least one of {sorted(BACKBONES)}. Received: backbones=()"
        )
    for name in backbones:
        get_backbone_spec(name)
    if len(set(backbones)) != len(backbones):
        raise ModelError(f"`backbones` must be distinct. Received: backbones={list(backbones)}")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    if not 0.0 <= freeze_fraction <= 1.0:
        raise ModelError(
            f"`freeze_fraction` must be in [0, 1]. Received: freeze_fraction={freeze_fraction!r}"
        )
    if pretrained not in (None, "imagenet"):
        raise ModelError(
            f"`pretrained` must be None or 'imagenet'. Received: pretrained={pretrained!r}"
        )


def member_logits(
    kernel: np.ndarray, bias: np.ndarray, features: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Each member's share of the ensemble's logits: ``features[m] @ kernel_m + bias``.

    The ensemble has one linear head over the concatenated pooled features, so its logits
    are exactly ``sum_m features[m] @ kernel_m + bias``; ``kernel_m`` is the block of kernel
    rows that reads member ``m``'s features. Each member's own logits (with the shared bias)
    are what that member alone says about the classes - the committee's votes
    (``camlabel.active``'s ``committee`` strategy); the same per-member split as the CAMs'
    ``contribution`` fusion. ``features``: ``(B, d_m)`` per member, in concatenation order.
    """
    widths = [int(f.shape[-1]) for f in features]
    if sum(widths) != kernel.shape[0]:
        raise ModelError(
            f"the members' pooled features ({widths}, {sum(widths)} in all) do not match the "
            f"head's kernel rows ({kernel.shape[0]})"
        )
    out, row = [], 0
    for f, w in zip(features, widths, strict=True):
        out.append(np.asarray(f, np.float64) @ np.asarray(kernel[row : row + w], np.float64) + bias)
        row += w
    return out


def build_ensemble(
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    image_size: int = 224,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    weights: str | Path | None = "none",
    dropout: float = 0.5,
    freeze_fraction: float = 0.0,
    bn_momentum: float | None = None,
) -> EnsembleClassifier:
    """Build the ensemble and initialize its weights (see the module docstring for ``weights``).

    Raises:
        ModelError: unknown backbone, bad argument, unreadable weights, or ImageNet weights
            that cannot be downloaded (offline) — the message says how to pass a local file.
    """
    w = "none" if weights is None else str(weights)
    if w == "none":
        return EnsembleClassifier(
            classes,
            image_size,
            backbones,
            dropout=dropout,
            freeze_fraction=freeze_fraction,
            bn_momentum=bn_momentum,
        )
    if w == "imagenet" or Path(w).is_dir():
        missing = [b for b in backbones if not get_backbone_spec(b).imagenet_file]
        if missing:
            raise ModelError(
                f"no ImageNet weights exist for the backbones {missing}. Received: weights={w!r}",
                hint="use --weights none with them, or the full backbones "
                "densenet121, efficientnetb0, vgg19",
            )
        model = EnsembleClassifier(
            classes,
            image_size,
            backbones,
            dropout=dropout,
            freeze_fraction=freeze_fraction,
            pretrained="imagenet",
            bn_momentum=bn_momentum,
        )
        folder = None if w == "imagenet" else Path(w)
        for name in model.backbones:
            _load_imagenet_backbone(model, name, folder)
        return model
    path = Path(w)
    if not path.is_file():
        raise ModelError(
            f"weights must be 'none', 'imagenet', or a path to a weights file or folder. "
            f"Received: weights={w!r} (no such file or folder)",
            hint="pass --weights none, --weights imagenet (needs internet once), or an existing path",
        )
    if path.name.endswith(".keras"):
        src = load_ensemble(path)
        if src.classes != tuple(classes):
            raise ModelError(
                f"{path} was trained for classes {list(src.classes)}, not {list(classes)}",
                hint="pass the same classes, or start from --weights imagenet/none",
            )
        model = EnsembleClassifier(
            src.classes,
            image_size,
            src.backbones,
            dropout=dropout,
            freeze_fraction=freeze_fraction,
            pretrained=src.pretrained,
            bn_momentum=bn_momentum,
        )
        model.set_weights(src.get_weights())
        return model
    if path.name.endswith(".weights.h5"):
        model = EnsembleClassifier(
            classes,
            image_size,
            backbones,
            dropout=dropout,
            freeze_fraction=freeze_fraction,
            bn_momentum=bn_momentum,
        )
        try:
            model.load_weights(path)
        except Exception as exc:  # Keras raises ValueError/KeyError/OSError variants
            raise ModelError(
                f"cannot load {path} into an ensemble of {list(backbones)} for classes "
                f"{list(classes)}: {exc}",
                hint="a .weights.h5 file must come from an ensemble with the same classes and "
                "backbones; use the .keras file instead",
            ) from exc
        return model
    raise ModelError(
        f"unsupported weights file {path.name!r}",
        hint="pass a .keras ensemble, a .weights.h5 file, or a folder of Keras ImageNet "
        f"'notop' files ({', '.join(BACKBONES[b].imagenet_file for b in backbones)})",
    )


def _load_imagenet_backbone(model: EnsembleClassifier, name: str, folder: Path | None) -> None:
    spec = BACKBONES[name]
    if folder is not None:
        path = folder / spec.imagenet_file
        if not path.is_file():
            raise ModelError(
                f"no ImageNet weights for {name} in {folder}: expected {spec.imagenet_file}",
                hint=f"download it from {spec.imagenet_url} on a machine with internet",
            )
    else:
        try:
            path = Path(
                keras.utils.get_file(
                    spec.imagenet_file,
                    spec.imagenet_url,
                    cache_subdir="models",
                    file_hash=spec.imagenet_md5,
                )
            )
        except Exception as exc:  # get_file raises a bare Exception("URL fetch failure ...")
            raise ModelError(
                f"could not download the ImageNet weights of {name} ({spec.imagenet_url}): {exc}",
                hint="run once with internet access (Keras caches the files in ~/.keras/models), "
                "or pass --weights PATH: a folder holding the Keras 'notop' files "
                f"({', '.join(BACKBONES[b].imagenet_file for b in model.backbones)}), a saved "
                ".keras ensemble, or --weights none",
            ) from exc
    # A sub-model over exactly this backbone's layers, so the legacy h5 loader sees the
    # same weighted layers, in the same order, as keras.applications does.
    own = [model.get_layer(n) for n in model.backbone_layer_names(name)]
    sub_inputs = model.get_layer(f"{name}_preprocess").output
    sub = keras.Model(sub_inputs, own[-1].output)
    try:
        sub.load_weights(path)
    except Exception as exc:
        raise ModelError(
            f"cannot load ImageNet weights {path} into {name}: {exc}",
            hint=f"the file must be Keras's {spec.imagenet_file} (delete it to download again)",
        ) from exc


def load_ensemble(path: str | Path) -> EnsembleClassifier:
    """Load a saved ``.keras`` ensemble (no optimizer state needed for inference)."""
    model = load_keras_model(path)
    if not isinstance(model, EnsembleClassifier):
        raise ModelError(
            f"{path} is a {type(model).__name__}, not a camlabel EnsembleClassifier",
            hint="train one with: camlabel train-cls DATA --out MODEL.keras",
        )
    return model


def check_keras_archive(path: Path) -> None:
    """A ``.keras`` file is a zip archive; Keras reports any other file as "File not found"."""
    import zipfile

    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise ModelError(
            f"cannot load {path}: the file exists ({path.stat().st_size} bytes) but is not a "
            ".keras archive (a .keras model is a zip file): it is corrupt or truncated",
            hint="copy or download the model again, or train a new one",
        )


def load_keras_model(path: str | Path) -> keras.Model:
    """``keras.saving.load_model`` with camlabel's typed errors (compile=False)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path}",
            hint="train one with: camlabel train-cls DATA --out MODEL.keras",
        )
    if path.suffix != ".keras":
        raise ModelError(f"expected a .keras model file. Received: {path.name!r}")
    check_keras_archive(path)
    # Importing registers camlabel's serializable layers before deserialization.
    import camlabel.models.layers  # noqa: F401

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise ModelError(
            f"cannot load {path}: {exc}", hint="is it a complete .keras file?"
        ) from exc


def class_weights_from_counts(counts: Sequence[int]) -> dict[int, float]:
    """Balanced class weights ``n / (k * count_c)`` (scikit-learn's "balanced" rule).

    A class with no examples gets weight 0 (it cannot contribute to the loss anyway).
    """
    n = float(sum(counts))
    k = len(counts)
    return {i: (n / (k * c) if c > 0 else 0.0) for i, c in enumerate(counts)}


def parse_class_weights(
    spec: str | Mapping[str, float] | None, classes: Sequence[str], counts: Sequence[int]
) -> dict[int, float] | None:
    """``"auto"`` (from counts), ``"none"``, or explicit ``"covid=2.0,pneumonia=1.2,normal=1"``.

    Explicit weights (e.g. the paper's Table II) must name every class.
    """
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return class_weights_from_counts(counts)
    if isinstance(spec, str):
        pairs: dict[str, float] = {}
        for part in spec.split(","):
            if "=" not in part:
                raise ModelError(
                    f"class weights must be 'auto', 'none' or 'class=weight,...'. Received: {spec!r}",
                    hint="e.g. --class-weights " + ",".join(f"{c}=1.0" for c in classes),
                )
            key, value = part.split("=", 1)
            try:
                pairs[key.strip()] = float(value)
            except ValueError:
                raise ModelError(
                    f"class weight for {key.strip()!r} is not a number. Received: {value!r}"
                ) from None
        spec = pairs
    unknown = sorted(set(spec) - set(classes))
    missing = [c for c in classes if c not in spec]
    if unknown or missing:
        raise ModelError(
            f"explicit class weights must name exactly the classes {list(classes)}. "
            f"Received: unknown={unknown}, missing={missing}",
            hint="e.g. --class-weights " + ",".join(f"{c}=1.0" for c in classes),
        )
    bad = {k: v for k, v in spec.items() if not v >= 0}
    if bad:
        raise ModelError(f"class weights must be >= 0. Received: {bad}")
    return {i: float(spec[c]) for i, c in enumerate(classes)}


def _register_small_backbones() -> None:
    """The ``-s`` variants of camlabel.models.small_backbones (one registry line each)."""
    from camlabel.models import small_backbones as sb

    for name, app, cam in (
        ("densenet-s", sb.densenet_small, "pool4_relu"),
        ("efficientnet-s", sb.efficientnet_small, "top_activation"),
        ("vgg-s", sb.vgg_small, "vggs_block3_conv2"),
    ):
        base = BACKBONES[{"d": "densenet121", "e": "efficientnetb0", "v": "vgg19"}[name[0]]]
        BACKBONES[name] = BackboneSpec(
            application=app,
            cam_layer=cam,
            preprocess=base.preprocess,
            preprocess_imagenet=base.preprocess_imagenet,
            imagenet_file="",
            imagenet_url="",
            imagenet_md5="",
        )


_register_small_backbones()
