"""The classifier: load it, prepare its inputs, classify images.

Public API: :func:`load_classifier` -> :class:`Classifier`; :func:`classify_images` /
:meth:`Classifier.classify` -> :class:`~camlabel.records.Prediction` per image;
:func:`sidecar_path` (``MODEL.keras`` -> ``MODEL.keras.json``, the training sidecar).
``Classifier.preprocess`` (:class:`~camlabel.models.preprocess.ClassifierInput`) is the one
preprocessing that training and inference share.

Training is in :mod:`camlabel.train.classifier`, evaluation in :mod:`camlabel.evaluate`,
Grad-CAM pre-annotations in :mod:`camlabel.preannotate`, the shortcut audit in
:mod:`camlabel.audit`. Heavy imports (TensorFlow/Keras) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlabel.errors import ModelError
from camlabel.models.preprocess import ClassifierInput
from camlabel.records import Prediction

if TYPE_CHECKING:
    import keras

    from camlabel.imaging import Letterbox, LoadedImage

SIDECAR_SUFFIX = ".json"  # MODEL.keras -> MODEL.keras.json


@dataclass
class Classifier:
    """A loaded classifier and what is needed to feed it and to name its outputs.

    Attributes:
        model: the Keras model (input: RGB float32 ``image_size``² in [0, 255]).
        classes: class names in output order.
        image_size: model input side.
        model_version: recorded with every prediction and heatmap.
        cam_layers: Grad-CAM target layers (one per backbone).
        path: the ``.keras`` file.
        info: the training sidecar (``MODEL.keras.json``), when present.
        preprocess: the model-input preprocessor (from ``image_size``); classifier training
            calls the same :class:`~camlabel.models.preprocess.ClassifierInput`.
    """

    model: keras.Model
    classes: tuple[str, ...]
    image_size: int
    model_version: str
    cam_layers: tuple[str, ...]
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    preprocess: ClassifierInput = field(init=False, repr=False)
    #: the members' pooled features and the head's (kernel, bias); built on first use
    _features: Any = field(default=None, init=False, repr=False)
    _head: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.preprocess = ClassifierInput(self.image_size)

    def model_input(self, image: LoadedImage) -> tuple[np.ndarray, Letterbox]:
        """Letterboxed model input (as in training: rounded to whole grey levels)."""
        return self.preprocess(image)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, K)`` for model inputs ``(B, S, S, 3)``."""
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.asarray(self.model.predict_on_batch(np.asarray(batch, np.float32)), np.float32)

    def member_probabilities(self, batch: np.ndarray) -> list[dict[str, dict[str, float]]] | None:
        """Each ensemble member's class probabilities (``{member: {class: p}}`` per input):
        the softmax of its share of the logits (:func:`camlabel.models.ensemble.member_logits`).
        One extra forward pass to the pooled features. None for a model with fewer than two
        members or without the ensemble's ``<member>_gap`` / ``logits`` layers."""
        from camlabel.models.ensemble import member_logits

        names = tuple(getattr(self.model, "backbones", ()) or ())
        if len(names) < 2 or len(batch) == 0:
            return None
        if self._features is None:
            import keras

            try:
                gaps = [self.model.get_layer(f"{n}_gap").output for n in names]
                head = self.model.get_layer("logits")
            except ValueError:
                return None
            self._features = keras.Model(self.model.inputs, gaps)
            self._head = [np.asarray(w) for w in head.get_weights()]
        feats = self._features.predict_on_batch(np.asarray(batch, np.float32))
        logits = member_logits(self._head[0], self._head[1], [np.asarray(f) for f in feats])
        out: list[dict[str, dict[str, float]]] = [{} for _ in range(len(batch))]
        for name, lg in zip(names, logits, strict=True):
            z = np.exp(lg - lg.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
            for i, p in enumerate(probs):
                out[i][name] = {c: round(float(v), 6) for c, v in zip(self.classes, p, strict=True)}
        return out

    def prediction(self, probabilities: np.ndarray) -> Prediction:
        """A ledger :class:`Prediction` from one probability vector."""
        k = int(np.argmax(probabilities))
        return Prediction(
            predicted_class=self.classes[k],
            probability=round(float(probabilities[k]), 6),
            probabilities={
                c: round(float(p), 6) for c, p in zip(self.classes, probabilities, strict=True)
            },
            model_version=self.model_version,
        )

    def classify(self, images: Sequence[LoadedImage], *, batch_size: int = 16) -> list[Prediction]:
        """Predictions for decoded images, in order."""
        out: list[Prediction] = []
        step = max(1, batch_size)
        for i in range(0, len(images), step):
            x = np.stack([self.model_input(img)[0] for img in images[i : i + step]])
            out.extend(self.prediction(p) for p in self.predict(x))
        return out


def sidecar_path(model_path: str | Path) -> Path:
    """The training sidecar of a model: ``MODEL.keras`` -> ``MODEL.keras.json``."""
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def load_classifier(path: str | Path) -> Classifier:
    """Load a ``.keras`` classifier.

    A camlabel ``EnsembleClassifier`` carries its classes, image size, model version and
    CAM layers in its config. Any other functional Keras model works too when the sidecar
    ``MODEL.keras.json`` names ``classes``, ``model_version`` and ``cam_layers``.

    Raises:
        ModelError: missing/unreadable file, or metadata that cannot be found.
    """
    from camlabel.models.ensemble import EnsembleClassifier, load_keras_model

    path = Path(path)
    model = load_keras_model(path)
    info: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            info = json.loads(side.read_text(encoding="utf-8"))
    if isinstance(model, EnsembleClassifier):
        return Classifier(
            model=model,
            classes=tuple(model.classes),
            image_size=model.image_size,
            model_version=model.model_version,
            cam_layers=model.cam_layers,
            path=path,
            info=info,
        )
    missing = [k for k in ("classes", "model_version", "cam_layers") if not info.get(k)]
    if missing:
        raise ModelError(
            f"{path} is not a camlabel ensemble and its sidecar {side.name} lacks {missing}",
            hint="train with camlabel train-cls, or write the sidecar JSON with classes, "
            "model_version and cam_layers",
        )
    return Classifier(
        model=model,
        classes=tuple(info["classes"]),
        image_size=int(model.inputs[0].shape[1]),
        model_version=str(info["model_version"]),
        cam_layers=tuple(info["cam_layers"]),
        path=path,
        info=info,
    )


def classify_images(
    classifier: Classifier, images: Sequence[LoadedImage], *, batch_size: int = 16
) -> list[Prediction]:
    """Predictions (class, probability, all probabilities, model version) for decoded images."""
    return classifier.classify(images, batch_size=batch_size)
