"""The labeling-backend interface and registry.

A backend publishes images with pre-annotations as labeling tasks (``push``) and reads
back what annotators did (``pull``). Backends return camlabel records, never SDK objects;
the SDK of each external system is imported only in that backend's module. Everything
outside ``camlabel/backends/`` talks to this interface alone (see camlabel.loop).

Adding a backend: one module with a :class:`Backend` subclass, plus one line in
:data:`BACKENDS`. The subclass names its settings dataclass (``settings_class``, fields made
with :func:`camlabel.config.setting`); the CLI builds the backend's flags from it and
:func:`get_backend` resolves it (flag > environment > workspace section > default).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from camlabel import config
from camlabel.errors import UsageError
from camlabel.records import Annotation, JobRef, Preannotation

if TYPE_CHECKING:
    import numpy as np

    from camlabel.workspace import Workspace

TaskStatus = Literal["annotated", "skipped", "unannotated", "failed"]


@dataclass(frozen=True)
class PushItem:
    """One image to publish.

    Attributes:
        image_id: content hash; backends put it into the task so that re-runs
            find what is already published (idempotence does not rely on the ledger).
        display_png: the 8-bit PNG named ``<image_id>.png`` (no DICOM tag, no source path).
        preannotation: polygons in original-image pixels, or None for an empty task.
        existing: the JobRef the ledger already holds for this backend, if any.
        priority: the selection score, see below.
    """

    image_id: str
    width: int
    height: int
    display_png: Path
    preannotation: Preannotation | None = None
    predicted_class: str | None = None
    probability: float | None = None
    existing: JobRef | None = None
    #: the active-learning score (camlabel.active; higher = label sooner): Label Studio's
    #: prediction ``score``, Ground Truth's manifest order; None without a selection
    priority: float | None = None


@dataclass
class PushReport:
    project: str = ""
    pushed: dict[str, JobRef] = field(default_factory=dict)
    already_present: dict[str, JobRef] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    dry_run_files: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotationResult:
    """One annotator's answer: the record plus its mask at the original resolution.

    ``mask`` is None for skipped/cancelled annotations.
    """

    annotation: Annotation
    mask: np.ndarray | None


@dataclass(frozen=True)
class TaskOutcome:
    image_id: str
    job: JobRef
    status: TaskStatus
    annotations: tuple[AnnotationResult, ...] = ()
    message: str = ""


@dataclass
class PullReport:
    outcomes: list[TaskOutcome] = field(default_factory=list)
    cursor: dict[str, Any] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)


#: Called by ``push`` after each chunk is safely published, so the caller can commit
#: the ids to the ledger before the next chunk (an interrupt loses nothing).
OnPushed = Callable[[Mapping[str, JobRef]], None]


class Backend(ABC):
    """Base class of labeling backends.

    Args:
        workspace: the workspace whose images are published.
        settings: this backend's resolved ``settings_class``; None resolves it from
            ``options`` (see :meth:`resolve_settings`).
        options: the backend's settings given as flags (``url``/``token`` for Label Studio,
            ``bucket``/``role_arn`` for Ground Truth); kept as ``self.options``.
    """

    name: ClassVar[str]
    #: a frozen dataclass whose fields (made with :func:`camlabel.config.setting`) describe
    #: the backend's settings: help, CLI flag, choices, secrets, environment variable.
    settings_class: ClassVar[type]
    #: the workspace-file section holding these settings (``camlabel.json``), if any.
    config_section: ClassVar[str | None] = None
    #: environment variables ``<env_prefix><NAME>`` override the file (None: none do).
    env_prefix: ClassVar[str | None] = None
    #: True when each outcome lists *every* annotation its task has now, so an annotation
    #: the ledger holds but the outcome lacks was deleted in the labeling tool (Label
    #: Studio). Ground Truth's output manifests are append-only: nothing is ever deleted.
    lists_all_annotations: ClassVar[bool] = False

    def __init__(self, workspace: Workspace, settings: Any = None, **options: Any) -> None:
        self.workspace = workspace
        self.options = options
        self.settings = (
            settings if settings is not None else self.resolve_settings(workspace, options)
        )

    @classmethod
    def resolve_settings(cls, workspace: Workspace | None, flags: Mapping[str, Any]) -> Any:
        """flag > ``<env_prefix><NAME>`` env > workspace section > default (one resolver)."""
        section = None
        if workspace is not None and cls.config_section:
            section = workspace.config.get(cls.config_section)
        return config.resolve(
            cls.settings_class,
            flags,
            section,
            cls.env_prefix,
            section=cls.config_section or cls.name,
        )

    @abstractmethod
    def push(
        self,
        items: Sequence[PushItem],
        *,
        dry_run: bool = False,
        progress: bool = True,
        on_pushed: OnPushed | None = None,
    ) -> PushReport:
        """Publish ``items``; idempotent by image_id (nothing is published twice)."""

    @abstractmethod
    def pull(
        self,
        jobs: Mapping[str, JobRef],
        *,
        cursor: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> PullReport:
        """Read annotations for the published images ``{image_id: JobRef}``.

        ``cursor`` is what the previous pull returned; a backend uses it to export only
        what is new or updated since then. Masks come back at the original resolution.
        """

    def describe(self) -> dict[str, Any]:
        """A short, secret-free description (URL, project, bucket...) for status output."""
        return {"backend": self.name}


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: ``module:Class``, and whether the CLI offers it."""

    target: str
    #: hidden backends are reachable from Python (:func:`get_backend`) but not offered by
    #: ``--backend`` (the in-memory fake is for tests).
    hidden: bool = False


BACKENDS: dict[str, BackendEntry] = {
    "labelstudio": BackendEntry("camlabel.backends.labelstudio:LabelStudioBackend"),
    "groundtruth": BackendEntry("camlabel.backends.groundtruth:GroundTruthBackend"),
    "fake": BackendEntry("camlabel.backends.fake:FakeBackend", hidden=True),
}


def backend_names(*, include_hidden: bool = False) -> list[str]:
    """Registered backend names (the ones users can pick unless ``include_hidden``)."""
    return [n for n, e in BACKENDS.items() if include_hidden or not e.hidden]


def backend_class(name: str) -> type[Backend]:
    """The class of a registered backend (imports its module); an unknown name lists the valid ones."""
    try:
        target = BACKENDS[name].target
    except KeyError:
        raise UsageError(
            f"Wrong backend name {name!r}, supported backends: {sorted(backend_names())}",
            hint="pass " + " or ".join(f"--backend {n}" for n in backend_names()),
        ) from None
    module, _, attr = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), attr)
    return cls


def get_backend(name: str, workspace: Workspace, flags: Mapping[str, Any] | None = None) -> Backend:
    """Instantiate a registered backend with its settings resolved from ``flags``.

    A key of ``flags`` that is another backend's setting (``bucket`` with Label Studio) is a
    UsageError naming the flag and the backend it belongs to; keys that are no backend's
    setting (injected clients such as ``sagemaker_client``) go to the constructor as they are.
    """
    cls = backend_class(name)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    own = {f.name for f in config.fields_of(cls.settings_class)}
    for other in backend_names(include_hidden=True):
        if other == name:
            continue
        for f in config.fields_of(backend_class(other).settings_class):
            if f.name in flags and f.name not in own:
                flag = (f.flag or f"--{f.name.replace('_', '-')}").split("/")[0]
                raise UsageError(
                    f"{flag} is a {other} option; it does not apply to --backend {name}. "
                    f"Received: {flag} {'***' if f.secret else flags[f.name]}",
                    hint=f"drop {flag}, or pass --backend {other}",
                )
    return cls(workspace, **flags)
