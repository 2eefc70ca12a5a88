"""Datasets on disk, the patient-grouped stratified split, and the tf.data input pipeline.

A dataset is either

- a folder of class subfolders (``DATA/<class>/*.png``; each image is its own patient), or
- a ``metadata.csv`` (or a folder holding one, which then wins over subfolders) with columns ``file`` (relative to the CSV's folder), ``label`` and an
  optional ``patient_id`` (the phantoms' and cxr-sample's format; extra columns ignored).

:func:`grouped_stratified_split` is generic (any labels, any groups) and is also used by the
segmentation training.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camlabel.errors import UsageError


@dataclass(frozen=True)
class Dataset:
    """Image files with labels and patient ids.

    Attributes:
        root: the folder relative paths are taken from (the class-folder root or the CSV's folder).
        paths: absolute image paths.
        labels: one class name per image.
        patient_ids: one per image (``None`` where unknown).
        classes: the class names, in model output order.
    """

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    patient_ids: tuple[str | None, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def label_indices(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def counts(self) -> list[int]:
        c = Counter(self.labels)
        return [c.get(name, 0) for name in self.classes]

    def relpath(self, i: int) -> str:
        """Path of image ``i`` relative to :attr:`root` (POSIX), e.g. ``covid/x.png``."""
        try:
            return self.paths[i].relative_to(self.root).as_posix()
        except ValueError:
            return self.paths[i].name

    def subset(self, idx: Sequence[int] | np.ndarray) -> Dataset:
        idx = [int(i) for i in idx]
        return Dataset(
            root=self.root,
            paths=tuple(self.paths[i] for i in idx),
            labels=tuple(self.labels[i] for i in idx),
            patient_ids=tuple(self.patient_ids[i] for i in idx),
            classes=self.classes,
        )


def read_dataset(data: str | Path, classes: Sequence[str] | None = None) -> Dataset:
    """Read a class-folder tree or a ``metadata.csv`` (see the module docstring).

    Args:
        classes: the class order; default: the default classes if the data uses exactly those,
            else the sorted label names found.

    Raises:
        UsageError: missing path, bad CSV columns, labels outside ``classes``, no images.
    """
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        root, paths, labels, pids = _read_csv(data)
    elif data.is_dir() and (data / "metadata.csv").is_file():
        root, paths, labels, pids = _read_csv(data / "metadata.csv")
    elif data.is_dir():
        root, paths, labels, pids = _read_folders(data)
    else:
        raise UsageError(
            f"DATA must be a folder of class subfolders or a metadata.csv. Received: {data} "
            "(no such file or folder)"
        )
    if not paths:
        raise UsageError(
            f"no images found in {data}", hint="expected DATA/<class>/*.png or a metadata.csv"
        )
    found = sorted(set(labels))
    if classes is None:
        from camlabel.models.ensemble import DEFAULT_CLASSES

        classes = DEFAULT_CLASSES if set(found) <= set(DEFAULT_CLASSES) else tuple(found)
    classes = tuple(classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UsageError(
            f"{data}: labels {unknown} are not among the classes {list(classes)}",
            hint="pass --classes with every label used in the data",
        )
    return Dataset(
        root=root,
        paths=tuple(paths),
        labels=tuple(labels),
        patient_ids=tuple(pids),
        classes=classes,
    )


def _class_dirs(folder: Path) -> list[Path]:
    from camlabel.imaging import iter_image_paths

    return [
        d
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".") and iter_image_paths([d])
    ]


def _read_folders(folder: Path) -> tuple[Path, list[Path], list[str], list[str | None]]:
    from camlabel.imaging import iter_image_paths

    paths: list[Path] = []
    labels: list[str] = []
    for sub in _class_dirs(folder):
        for p in iter_image_paths([sub]):
            paths.append(p.resolve())
            labels.append(sub.name)
    return folder.resolve(), paths, labels, [None] * len(paths)


def _read_csv(csv_path: Path) -> tuple[Path, list[Path], list[str], list[str | None]]:
    root = csv_path.parent.resolve()
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "file" not in cols or "label" not in cols:
            raise UsageError(
                f"{csv_path}: needs columns 'file' and 'label' (optional 'patient_id'). Received: {cols}"
            )
        paths, labels, pids = [], [], []
        for row in reader:
            if not (row.get("file") or "").strip():
                continue
            p = Path(row["file"].strip())
            paths.append(p if p.is_absolute() else root / p)
            labels.append(row["label"].strip())
            pid = (row.get("patient_id") or "").strip()
            pids.append(pid or None)
    return root, paths, labels, pids


def grouped_stratified_split(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable | None],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train/validation, stratified by label and grouped by ``groups``.

    All items of a group land on the same side (``None`` = an item's own group). Groups are
    visited largest first (ties in a seeded random order); each goes to validation when
    that brings the per-label validation counts closer to ``val_fraction`` of each label's
    total (L1 distance), else to training.

    Returns:
        ``(train_idx, val_idx)``, sorted int64 arrays.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1). Received: val_fraction={val_fraction!r}")
    if len(labels) != len(groups):
        raise UsageError(f"labels and groups differ in length: {len(labels)} vs {len(groups)}")
    members: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[("item", i) if g is None else ("group", g)].append(i)
    label_names = sorted(set(labels), key=str)
    li = {name: k for k, name in enumerate(label_names)}
    totals = np.zeros(len(label_names))
    for lab in labels:
        totals[li[lab]] += 1
    target = totals * val_fraction
    keys = list(members)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    keys.sort(key=lambda k: -len(members[k]))  # stable: random among equal sizes
    val_counts = np.zeros(len(label_names))
    val: list[int] = []
    train: list[int] = []
    for k in keys:
        add = np.zeros(len(label_names))
        for i in members[k]:
            add[li[labels[i]]] += 1
        if np.abs(val_counts + add - target).sum() < np.abs(val_counts - target).sum():
            val_counts += add
            val.extend(members[k])
        else:
            train.extend(members[k])
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


# ------------------------------------------------------------------------ input pipeline
def make_tf_dataset(
    paths: Sequence[Path],
    labels: np.ndarray,
    n_classes: int,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augment: bool = True,
    failures: list[tuple[str, str]] | None = None,
) -> Any:
    """A ``tf.data`` pipeline: parallel decode + letterbox (cached as uint8), then for
    training a seeded shuffle and light augmentation, batching and prefetch.

    Unreadable images are dropped and appended to ``failures`` as ``(path, reason)`` when
    the pipeline first reads them.

    Augmentation: rotation up to ±5°, shift up to ±4 % and brightness/contrast ±10 %.
    No horizontal flip: laterality is meaningful on a chest radiograph (heart on the
    patient's left, side markers, unilateral lobar pneumonia), and a flipped film is not a
    radiograph the model will see.
    """
    import tensorflow as tf

    from camlabel.errors import CamlabelError
    from camlabel.models.preprocess import ClassifierInput

    preprocess = ClassifierInput(image_size)
    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.asarray(labels, np.int64)))
    blank = np.zeros((image_size, image_size, 3), np.uint8)

    def _load(path: Any) -> tuple[np.ndarray, np.bool_]:
        name = path.decode() if isinstance(path, bytes) else str(path)
        try:
            return preprocess.load(name), np.bool_(True)
        except CamlabelError as exc:
            if failures is not None:
                failures.append((name, exc.message))
            return blank, np.bool_(False)

    def load(path: Any, label: Any) -> tuple[Any, Any, Any]:
        img, ok = tf.numpy_function(_load, [path], (tf.uint8, tf.bool), stateful=False)
        img.set_shape((image_size, image_size, 3))
        ok.set_shape(())
        return img, tf.one_hot(label, n_classes), ok

    def readable(x: Any, y: Any, ok: Any) -> Any:
        return ok

    def drop_flag(x: Any, y: Any, ok: Any) -> tuple[Any, Any]:
        return x, y

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).filter(readable).map(drop_flag).cache()
    # One pass reads every image (filling the cache) and counts the readable ones, so Keras
    # knows the epoch length even though unreadable files were dropped.
    n_ok = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_ok))
    if training:
        ds = ds.shuffle(max(len(paths), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = augmenter(seed) if training and augment else None

    def to_float(x: Any, y: Any) -> tuple[Any, Any]:
        x = tf.cast(x, tf.float32)
        return (x if aug is None else aug(x, training=True)), y

    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def augmenter(seed: int = 0) -> Any:
    """The light, laterality-preserving augmentation (see :func:`make_tf_dataset`)."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomRotation(5 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.04, 0.04, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 2),
            keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3),
        ],
        name="augment",
    )
