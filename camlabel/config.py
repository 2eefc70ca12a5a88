"""Typed settings: one frozen dataclass per ``camlabel.json`` section, and ONE resolver.

Every setting is resolved the same way (:func:`resolve`)::

    flag  >  CAMLABEL_<PREFIX>_<NAME> environment variable  >  workspace file  >  default

Flags are what a caller passes (Click options, keyword arguments); environment strings are
coerced to the field's type (``"3"`` -> 3, ``"true"`` -> True, ``"a,b"`` -> ("a", "b"));
file values are checked against it. A value of the wrong type, or a flag the class does not
declare, raises :class:`~camlabel.errors.ConfigError` naming where it came from (the file
``camlabel.json``, the variable, or the flag), the key path (``cam.threshold``), the value
received and the type expected. Nothing is read at import time.

The fields of a settings class carry their own description in ``dataclasses.field``
metadata (see :func:`setting`): help text, the CLI flag (if any) and the commands offering it,
choices, whether the value is a secret (never printed, never written to the workspace file),
and the environment variable. Backends declare their settings this way
(``Backend.settings_class``) and ``camlabel/cli/labeling.py`` builds their flags from it.

Sections (key in the file: class, environment variables):

- top level: :class:`WorkspaceSettings`, none
- ``cam``: :class:`CamSettings`, ``CAMLABEL_CAM_<KEY>``
- ``consensus``: :class:`ConsensusSettings`, ``CAMLABEL_CONSENSUS_<KEY>``
- ``labelstudio``: :class:`LabelStudioSettings`, ``CAMLABEL_LS_<KEY>`` (``CAMLABEL_LS_URL``...)
- ``groundtruth``: ``GroundTruthSettings`` in the Ground Truth backend, ``CAMLABEL_GT_<KEY>``
- ``sagemaker``: :class:`SageMakerSection`, ``CAMLABEL_SEG_<KEY>``

The ``sagemaker`` section (``train-seg --on sagemaker``) is optional: a key it does not set
falls back to the ``groundtruth`` section's ``bucket``, ``prefix``, ``region`` and
``role_arn``, which is where workspaces made before it existed keep them.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from camlabel.errors import ConfigError

CONFIG_NAME = "camlabel.json"
#: The one default seed (workspace ``seed``; splits, initialisation, augmentation).
DEFAULT_SEED = 1234
DEFAULT_CLASSES = ("covid", "pneumonia", "normal")
#: camlabel.cam.refine.REFINEMENTS (kept here so that reading settings imports no numpy)
CAM_REFINEMENTS = ("none", "lung", "grabcut", "lung+grabcut", "lung+opacity")
DEFAULT_LESION_CLASSES = ("covid", "pneumonia")
#: S3 key prefix and AWS region of Ground Truth jobs and SageMaker training.
DEFAULT_S3_PREFIX = "camlabel"
DEFAULT_AWS_REGION = "us-east-1"

T = TypeVar("T")


def setting(
    default: Any = None,
    *,
    help: str = "",
    flag: str | None = None,
    commands: Sequence[str] = ("push-jobs",),
    choices: Sequence[str] | None = None,
    secret: bool = False,
    env: str | bool = True,
    in_file: bool = True,
    cli_tag: str | None = None,
) -> Any:
    """A settings field with its description.

    Args:
        default: the default value (immutable: settings classes are frozen).
        help: one line for ``--help`` and the docs.
        flag: the CLI option declaration (``"--url"``, ``"--upload/--local-files"``), or None
            when the setting has no flag (file / environment / Python callers only).
        commands: the commands that offer the flag (``push-jobs``, ``pull-masks``).
        choices: allowed values, shown as a ``click.Choice``.
        secret: never printed, never part of ``describe()``/``repr``, never read from the file.
        env: the environment variable; True for ``<prefix><NAME>``, False for none.
        in_file: whether the workspace file may set it.
        cli_tag: the ``[tag]`` that starts the flag's help (default: the backend's name).
    """
    meta = {
        "help": help,
        "flag": flag,
        "commands": tuple(commands),
        "choices": tuple(choices) if choices is not None else None,
        "secret": secret,
        "env": env,
        "in_file": in_file and not secret,
        "cli_tag": cli_tag,
    }
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class SettingField:
    """The description of one settings field (see :func:`setting`)."""

    name: str
    type: Any
    default: Any
    help: str
    flag: str | None
    commands: tuple[str, ...]
    choices: tuple[str, ...] | None
    secret: bool
    env: str | None
    in_file: bool
    cli_tag: str | None

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def fields_of(cls: type, env_prefix: str | None = None) -> list[SettingField]:
    """The described fields of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        env = meta.get("env", True)
        env_name = (
            env
            if isinstance(env, str)
            else (f"{env_prefix}{f.name.upper()}" if env and env_prefix else None)
        )
        out.append(
            SettingField(
                name=f.name,
                type=hints[f.name],
                default=f.default,
                help=meta.get("help", ""),
                flag=meta.get("flag"),
                commands=meta.get("commands", ()),
                choices=meta.get("choices"),
                secret=meta.get("secret", False),
                env=env_name,
                in_file=meta.get("in_file", True),
                cli_tag=meta.get("cli_tag"),
            )
        )
    return out


def resolve(
    cls: type[T],
    flags: Mapping[str, Any] | None = None,
    ws_section: Mapping[str, Any] | None = None,
    env_prefix: str | None = None,
    *,
    section: str = "",
    file: str | Path = CONFIG_NAME,
) -> T:
    """Build ``cls`` from flag > environment > workspace-file section > default.

    Args:
        cls: a frozen settings dataclass whose fields were made with :func:`setting`.
        flags: values given by the caller; None means "not given". A key the class does
            not declare raises ConfigError listing the supported ones.
        ws_section: this class's section of the workspace file (``ws.config["cam"]``).
        env_prefix: ``CAMLABEL_CAM_`` etc.; None reads no environment variable.
        section: the section's key in the file, for error messages (``cam``).
        file: the file named in error messages.
    """
    flags = dict(flags or {})
    described = fields_of(cls, env_prefix)
    known = {f.name for f in described}
    unknown = sorted(k for k in flags if k not in known)
    if unknown:
        where = f"{section} " if section else ""
        raise ConfigError(
            f"unknown {where}option(s) {unknown}; supported options: {sorted(known)}",
        )
    kw: dict[str, Any] = {}
    for f in described:
        path = f"{section}.{f.name}" if section else f.name
        value = flags.get(f.name)
        if value is not None:
            kw[f.name] = _coerce(value, f.type, path, f"option {f.name}", f.secret)
            continue
        env_value = os.environ.get(f.env) if f.env else None
        if env_value not in (None, ""):
            kw[f.name] = _coerce(env_value, f.type, path, f"environment variable {f.env}", f.secret)
            continue
        if f.in_file and ws_section is not None and f.name in ws_section:
            raw = ws_section[f.name]
            if raw is None and not _allows_none(f.type):
                continue  # null in the file means "the default"
            kw[f.name] = _coerce(raw, f.type, path, str(file), f.secret)
    return cls(**kw)


def check_section(
    cls: type, ws_section: Any, *, section: str, file: str | Path = CONFIG_NAME
) -> None:
    """Check the file values of one section (types only; unknown keys are allowed)."""
    if ws_section is None:
        return
    if section:
        _check_is_object(ws_section, section, file)
    for f in fields_of(cls):
        if f.in_file and f.name in ws_section:
            raw = ws_section[f.name]
            if raw is None and not _allows_none(f.type):
                continue
            _coerce(raw, f.type, f"{section}.{f.name}" if section else f.name, str(file), False)


def _check_is_object(value: Any, section: str, file: str | Path) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(
            f"{file}: '{section}' must be an object (a JSON {{...}} of settings). "
            f"Received: {section}={value!r} ({_json_type(value)})",
            hint=f"see docs/formats.md for the keys of '{section}'",
        )


# ----------------------------------------------------------------------------- coercion
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, path: str, source: str, secret: bool) -> Any:
    try:
        return _convert(value, tp)
    except _Mismatch:
        shown = "'***'" if secret else repr(value)
        raise ConfigError(
            f"{source}: {path} must be {_type_name(tp)}. "
            f"Received: {path}={shown} ({_json_type(value)})",
            hint=f"fix {path} in {source}" if source.endswith(".json") else None,
        ) from None


def _allows_none(tp: Any) -> bool:
    return tp is type(None) or (_is_union(tp) and type(None) in typing.get_args(tp))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _convert(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        raise _Mismatch
    if _is_union(tp):
        # exact types first ("5" stays a str for ``int | str``), then conversions
        for arg in typing.get_args(tp):
            if _exact(value, arg):
                return value
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise _Mismatch
        return tuple(_convert(v, item) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if tp in (int, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and (tp is float or isinstance(value, int)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, str):
            return tp(value)
    raise _Mismatch


def _exact(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, float)
    if tp in (int, str, bool):
        return type(value) is tp
    return False


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _json_type(value: Any) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class WorkspaceSettings:
    """The top level of ``camlabel.json`` (no environment variable sets these)."""

    config_version: int = setting(1, env=False)
    classes: tuple[str, ...] = setting(DEFAULT_CLASSES, env=False, help="model output order")
    lesion_classes: tuple[str, ...] = setting(
        DEFAULT_LESION_CLASSES, env=False, help="classes whose images get masks"
    )
    lesion_label: str = setting("Opacity", env=False, help="the label annotators see")
    image_size: int = setting(224, env=False, help="classifier input size")
    seg_image_size: int = setting(256, env=False, help="segmenter input size")
    seed: int = setting(DEFAULT_SEED, env=False, help="splits, initialisation, augmentation")


@dataclass(frozen=True)
class CamSettings:
    """``cam``: how heatmaps become pre-annotation polygons (env ``CAMLABEL_CAM_<KEY>``)."""

    method: str = setting("gradcam", help="CAM method")
    fusion: str = setting("normalize-mean", help="how the ensemble's maps are fused")
    threshold: float | Literal["otsu"] = setting(
        0.5, help="a fraction in (0, 1] of the map's maximum, or 'otsu'"
    )
    min_area_fraction: float = setting(0.002, help="smallest region kept, of the image area")
    epsilon_px: float = setting(1.5, help="polygon simplification tolerance (pixels)")
    max_vertices: int | None = setting(64, help="vertices per polygon at most (null: no limit)")
    refine: str = setting(
        "lung+opacity",
        choices=CAM_REFINEMENTS,
        help=(
            "how a CAM becomes a mask (camlabel.cam.refine; the lung ones need a lung field "
            "and are 'none'/'grabcut' without one)"
        ),
    )


@dataclass(frozen=True)
class ConsensusSettings:
    """``consensus``: how several annotators' masks merge (env ``CAMLABEL_CONSENSUS_<KEY>``)."""

    rule: str = setting("majority", help="majority, union, intersection or latest")
    min_annotations: int = setting(1, help="masks only for tasks with at least this many")


@dataclass(frozen=True)
class LabelStudioSettings:
    """``labelstudio``: the Label Studio backend (env ``CAMLABEL_LS_<KEY>``).

    The token is a secret: it is never read from the workspace file, printed or described.
    """

    url: str | None = setting(
        None,
        flag="--url",
        commands=("push-jobs", "pull-masks"),
        help="server URL (env CAMLABEL_LS_URL; default: the embedded server).",
    )
    token: str | None = setting(
        None,
        flag="--token",
        commands=("push-jobs", "pull-masks"),
        secret=True,
        help="API token (env CAMLABEL_LS_TOKEN). Never printed.",
    )
    project: int | str | None = setting(None, flag="--project", help="existing project id to use.")
    upload: bool | None = setting(
        None,
        flag="--upload/--local-files",
        help="upload images (remote server) or serve them as local files (embedded server).",
    )
    project_title: str = setting("camlabel lesions", help="title of the project camlabel creates")
    port: int = setting(8089, help="port of the embedded server")
    document_root: str | None = setting(
        None, help="the server's local-files document root (default: the workspace)"
    )
    timeout: float = setting(60.0, help="seconds per HTTP request")
    retries: int = setting(4, help="extra attempts after a connection error or 5xx answer")
    backoff: float = setting(0.25, help="first retry delay in seconds (doubled, at most 8 s)")
    # Label Studio accepts up to 250k tasks / 200 MB per import request; 500 tasks with
    # 64-vertex polygons are ~1 MB, and a chunk is also the unit of progress committed to
    # the ledger.
    chunk_size: int = setting(500, help="tasks per import request")
    page_size: int = setting(1000, help="tasks per page when listing")
    cursor_margin_s: float = setting(
        30.0,
        help="seconds subtracted from the server's clock for the pull cursor (tasks saved "
        "while a pull runs are read again, never missed)",
    )
    repair_duplicates: bool | None = setting(
        None,
        flag="--repair-duplicates/--no-repair-duplicates",
        in_file=False,
        help="delete the extra tasks of an image published twice (the one with annotations, "
        "else the oldest, is kept; a task with annotations is never deleted).",
    )


@dataclass(frozen=True)
class SageMakerSection:
    """``sagemaker``: where ``train-seg --on sagemaker`` runs (env ``CAMLABEL_SEG_<KEY>``).

    A key missing here falls back to the ``groundtruth`` section (see the module docstring).
    """

    bucket: str | None = setting(None, help="S3 bucket")
    prefix: str = setting(DEFAULT_S3_PREFIX, help="S3 key prefix")
    region: str | None = setting(None, help="AWS region")
    role_arn: str | None = setting(None, help="execution role ARN")


SAGEMAKER_FALLBACK_KEYS = ("bucket", "prefix", "region", "role_arn")

#: section key -> (class, environment prefix), checked by :func:`check_config`.
SECTIONS: dict[str, tuple[type, str | None]] = {
    "cam": (CamSettings, "CAMLABEL_CAM_"),
    "consensus": (ConsensusSettings, "CAMLABEL_CONSENSUS_"),
    "labelstudio": (LabelStudioSettings, "CAMLABEL_LS_"),
    "sagemaker": (SageMakerSection, "CAMLABEL_SEG_"),
}


def check_config(cfg: Any, path: str | Path = CONFIG_NAME) -> None:
    """Check the types of ``camlabel.json``'s top level and of the sections above (the
    ``groundtruth`` section is checked by that backend's settings class when it is used)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"{path}: the file must hold one JSON object. Received: {_json_type(cfg)}",
            hint="fix the file, or move it away and run camlabel init again",
        )
    check_section(WorkspaceSettings, cfg, section="", file=path)
    for key, (cls, _prefix) in SECTIONS.items():
        check_section(cls, cfg.get(key), section=key, file=path)
    _check_is_object(cfg.get("groundtruth"), "groundtruth", path)


class Settings:
    """Typed views of a workspace's config dict (``ws.settings``), resolved on each access
    (flag-free: environment > file > default)."""

    def __init__(self, config: Mapping[str, Any], file: str | Path = CONFIG_NAME) -> None:
        self._config = config
        self._file = file

    def section(self, key: str) -> Any:
        cls, prefix = SECTIONS[key]
        return resolve(cls, None, self._config.get(key), prefix, section=key, file=self._file)

    @property
    def workspace(self) -> WorkspaceSettings:
        return resolve(WorkspaceSettings, None, self._config, None, file=self._file)

    @property
    def cam(self) -> CamSettings:
        return self.cam_with()

    def cam_with(self, flags: Mapping[str, Any] | None = None) -> CamSettings:
        return resolve(
            CamSettings,
            flags,
            self._config.get("cam"),
            "CAMLABEL_CAM_",
            section="cam",
            file=self._file,
        )

    @property
    def consensus(self) -> ConsensusSettings:
        return typing.cast(ConsensusSettings, self.section("consensus"))

    @property
    def labelstudio(self) -> LabelStudioSettings:
        return typing.cast(LabelStudioSettings, self.section("labelstudio"))

    def sagemaker(self, flags: Mapping[str, Any] | None = None) -> SageMakerSection:
        """The ``sagemaker`` section over the ``groundtruth`` one (older workspaces)."""
        gt = self._config.get("groundtruth") or {}
        merged = {k: gt[k] for k in SAGEMAKER_FALLBACK_KEYS if gt.get(k) is not None}
        merged.update({k: v for k, v in (self._config.get("sagemaker") or {}).items()})
        return resolve(
            SageMakerSection, flags, merged, "CAMLABEL_SEG_", section="sagemaker", file=self._file
        )


def describe(settings: Any) -> dict[str, Any]:
    """The settings as a JSON-ready dict without secrets."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        if f.metadata.get("secret"):
            continue
        value = getattr(settings, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
