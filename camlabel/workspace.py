"""A camlabel workspace: config, ledger and the folders every step writes into.

Layout (``camlabel init WS``)::

    WS/camlabel.json     settings (classes, image size, CAM and backend settings; see camlabel.config)
    WS/ledger.db         one SQLite row per image (see camlabel.ledger)
    WS/runs.jsonl        one record per run: command, settings, seeds, versions
    WS/images/           8-bit display PNGs named <sha256>.png (what labeling tools see)
    WS/heatmaps/         CAM heatmaps (<sha256>.npy float16) and overlays
    WS/annotations/      one raster per annotation (<sha256>/<backend>-<id>.png)
    WS/masks/            consensus masks <sha256>.png (0/255)
    WS/models/ WS/reports/ WS/secrets/ (0700; tokens, never printed)
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from camlabel.config import (
    CONFIG_NAME,
    DEFAULT_AWS_REGION,
    DEFAULT_LESION_CLASSES,
    DEFAULT_S3_PREFIX,
    CamSettings,
    ConsensusSettings,
    LabelStudioSettings,
    Settings,
    WorkspaceSettings,
    check_config,
    describe,
)
from camlabel.errors import ConfigError, WorkspaceError
from camlabel.fileio import atomic_write_text
from camlabel.ledger import LEDGER_DB, Ledger
from camlabel.records import ImageRecord

FOLDERS = ("images", "heatmaps", "annotations", "masks", "models", "reports", "secrets", "exports")
#: The Label Studio keys a new camlabel.json lists (the others keep their defaults).
_NEW_FILE_LS_KEYS = ("url", "project_title", "port")


def default_config() -> dict[str, Any]:
    """The settings a new workspace starts with: the defaults of camlabel.config's sections
    (documented in docs/formats.md)."""

    def pick(settings: Any, keys: Sequence[str]) -> dict[str, Any]:
        return {k: v for k, v in describe(settings).items() if k in keys}

    return {
        **describe(WorkspaceSettings()),
        "cam": describe(CamSettings()),
        "labelstudio": pick(LabelStudioSettings(), _NEW_FILE_LS_KEYS),
        # the Ground Truth backend's own settings class holds the rest (camlabel.backends)
        "groundtruth": {
            "bucket": None,
            "prefix": DEFAULT_S3_PREFIX,
            "region": DEFAULT_AWS_REGION,
            "job_type": "adjustment",
            "role_arn": None,
            "workteam_arn": None,
        },
        "consensus": describe(ConsensusSettings()),
    }


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def tool_versions() -> dict[str, str]:
    """Versions of camlabel, Python and the heavy packages that are already imported.

    Importing TensorFlow only to record its version would cost seconds, so packages that
    the run never imported are not listed.
    """
    out = {
        "camlabel": _version("camlabel"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for mod, dist in (
        ("numpy", "numpy"),
        ("cv2", "opencv-python-headless"),
        ("tensorflow", "tensorflow"),
        ("keras", "keras"),
        ("jax", "jax"),
        ("label_studio_sdk", "label-studio-sdk"),
        ("boto3", "boto3"),
        ("sagemaker", "sagemaker"),
        ("pydicom", "pydicom"),
        ("shapely", "shapely"),
    ):
        if mod in sys.modules:
            out[dist] = _version(dist)
    if "keras" in sys.modules:
        import keras

        out["keras_backend"] = keras.backend.backend()
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Workspace:
    """An initialised workspace folder. Open with :meth:`open`, create with :meth:`init`."""

    root: Path
    config: dict[str, Any] = field(default_factory=default_config)

    # -- lifecycle ---------------------------------------------------------------
    @classmethod
    def init(
        cls,
        root: str | Path,
        *,
        classes: Sequence[str] | None = None,
        lesion_classes: Sequence[str] | None = None,
        image_size: int | None = None,
        seed: int | None = None,
    ) -> Workspace:
        """Create (or complete) a workspace; an existing config is kept, never overwritten."""
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        cfg_path = root / CONFIG_NAME
        if cfg_path.exists():
            ws = cls.open(root)
        else:
            cfg = default_config()
            if classes is not None:
                cfg["classes"] = list(classes)
            if lesion_classes is not None:
                cfg["lesion_classes"] = list(lesion_classes)
            elif classes is not None:
                cfg["lesion_classes"] = [c for c in classes if c in DEFAULT_LESION_CLASSES]
            if image_size is not None:
                cfg["image_size"] = int(image_size)
            if seed is not None:
                cfg["seed"] = int(seed)
            _check_config(cfg, cfg_path)
            atomic_write_text(cfg_path, json.dumps(cfg, indent=2) + "\n")
            ws = cls(root=root, config=cfg)
        for name in FOLDERS:
            (root / name).mkdir(exist_ok=True)
        os.chmod(root / "secrets", 0o700)
        len(ws.ledger)  # creates the database (and migrates an old ledger.jsonl)
        return ws

    @classmethod
    def open(cls, root: str | Path) -> Workspace:
        root = Path(root).resolve()
        cfg_path = root / CONFIG_NAME
        if not cfg_path.exists():
            raise WorkspaceError(
                f"{root} is not a camlabel workspace (no {CONFIG_NAME})",
                hint=f"create one with: camlabel init {root}  (or pass -w / set CAMLABEL_WORKSPACE)",
            )
        try:
            user = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{cfg_path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                hint="fix the file, or move it away and run camlabel init again",
            ) from exc
        check_config(user, cfg_path)
        cfg = _merge(default_config(), user)
        _check_config(cfg, cfg_path)
        return cls(root=root, config=cfg)

    def save_config(self) -> None:
        atomic_write_text(self.root / CONFIG_NAME, json.dumps(self.config, indent=2) + "\n")

    # -- paths -------------------------------------------------------------------
    @functools.cached_property
    def ledger(self) -> Ledger:
        """The workspace's SQLite ledger (one per Workspace; an old ledger.jsonl is migrated)."""
        return Ledger(self.root / LEDGER_DB)

    def dir(self, name: str) -> Path:
        if name not in FOLDERS:
            raise WorkspaceError(f"unknown workspace folder {name!r}; known: {list(FOLDERS)}")
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def rel(self, path: str | Path) -> str:
        """Workspace-relative POSIX path (what the ledger stores)."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def abs(self, rel: str | Path) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def display_png(self, image_id: str) -> Path:
        return self.dir("images") / f"{image_id}.png"

    @property
    def settings(self) -> Settings:
        """Typed, validated views of :attr:`config` (``ws.settings.cam``...), read on access."""
        return Settings(self.config, self.root / CONFIG_NAME)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config["classes"])

    @property
    def lesion_classes(self) -> tuple[str, ...]:
        return tuple(self.config["lesion_classes"])

    # -- registering images ---------------------------------------------------------
    def register_images(
        self,
        paths: Sequence[str | Path],
        *,
        labels: Mapping[str, str] | None = None,
        patient_ids: Mapping[str, str] | None = None,
        progress: bool = False,
    ) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
        """Read images, write their 8-bit display PNG (named by content hash), add ledger records.

        ``labels``/``patient_ids`` map a source path (as given, or resolved) to its value.
        A re-run never duplicates a record: the key is the pixel hash; an existing record
        keeps everything already known and only fills in missing label/patient id.
        Returns (records, failures) — failures are (path, reason) and do not stop the batch.
        """
        from camlabel.imaging import read_image, safe_resolve, write_png_atomic

        labels = dict(labels or {})
        patient_ids = dict(patient_ids or {})
        records: list[ImageRecord] = []
        failures: list[tuple[str, str]] = []
        from camlabel.errors import CamlabelError
        from camlabel.progress import progress_bar

        pending: list[ImageRecord] = []
        with progress_bar(total=len(paths), desc="register", enabled=progress) as bar:
            for p in paths:
                bar.update(1)
                try:
                    img = read_image(p)
                except CamlabelError as exc:
                    failures.append((str(p), exc.message))
                    continue
                key = str(p)
                alt = str(safe_resolve(Path(p)))
                png = self.display_png(img.image_id)
                if not png.exists():
                    write_png_atomic(png, img.display)
                pending.append(
                    ImageRecord(
                        image_id=img.image_id,
                        source_path=alt,
                        source_format=img.source_format,
                        width=img.width,
                        height=img.height,
                        display_path=self.rel(png),
                        pixel_spacing_mm=img.pixel_spacing_mm,
                        label=labels.get(key, labels.get(alt)),
                        patient_id=patient_ids.get(key, patient_ids.get(alt)),
                    )
                )
        with self.ledger.transaction() as txn:
            for new in pending:
                old = txn.get(new.image_id)
                if old is None:
                    txn.put(new)
                    records.append(new)
                    continue
                fill: dict[str, Any] = {}
                if old.label is None and new.label is not None:
                    fill["label"] = new.label
                if old.patient_id is None and new.patient_id is not None:
                    fill["patient_id"] = new.patient_id
                if fill:
                    old = old.evolve(**fill)
                    txn.put(old)
                records.append(old)
        return records, failures

    # -- run log -----------------------------------------------------------------
    def record_run(self, kind: str, settings: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """Record a run (kind, settings, seeds, versions) in runs.jsonl; returns the record."""
        return self.ledger.append_run(
            {"kind": kind, "settings": dict(settings), "versions": tool_versions(), **extra}
        )


def _check_config(cfg: Mapping[str, Any], path: Path) -> None:
    classes = cfg.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(
            f"{path}: 'classes' must be a list of at least 2 distinct names. Received: classes={classes!r}"
        )
    bad = [c for c in cfg.get("lesion_classes", []) if c not in classes]
    if bad:
        raise ConfigError(
            f"{path}: lesion_classes {bad} are not among classes {classes}",
            hint="lesion_classes names the classes whose images get masks (e.g. covid, pneumonia)",
        )
    size = cfg.get("image_size")
    if not isinstance(size, int) or size < 32:
        raise ConfigError(
            f"{path}: image_size must be an integer >= 32. Received: image_size={size!r}"
        )
