"""The labeling-backend interface and registry.

A backend publishes images with pre-annotations as labeling tasks (``push``) and reads
back what annotators did (``pull``). Backends return camlabel records, never SDK objects;
the SDK of each external system is imported only in that backend's module. Everything
outside ``camlabel/backends/`` talks to this interface alone (see camlabel.loop).

Adding a backend: one module with a :class:`Backend` subclass, plus one line in
:data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from camlabel.errors import UsageError
from camlabel.records import Annotation, JobRef, Preannotation

if TYPE_CHECKING:
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
    """

    image_id: str
    width: int
    height: int
    display_png: Path
    preannotation: Preannotation | None = None
    predicted_class: str | None = None
    probability: float | None = None
    existing: JobRef | None = None


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
        options: backend settings (flags > CAMLABEL_* env > workspace config), e.g.
            ``url``/``token`` for Label Studio, ``bucket``/``role_arn`` for Ground Truth.
    """

    name: ClassVar[str]
    #: True when each outcome lists *every* annotation its task has now, so an annotation
    #: the ledger holds but the outcome lacks was deleted in the labeling tool (Label
    #: Studio). Ground Truth's output manifests are append-only: nothing is ever deleted.
    lists_all_annotations: ClassVar[bool] = False

    def __init__(self, workspace: Workspace, **options: Any) -> None:
        self.workspace = workspace
        self.options = options

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


BACKENDS: dict[str, str] = {
    "labelstudio": "camlabel.backends.labelstudio:LabelStudioBackend",
    "groundtruth": "camlabel.backends.groundtruth:GroundTruthBackend",
}


def get_backend(name: str, workspace: Workspace, **options: Any) -> Backend:
    """Instantiate a registered backend; an unknown name lists the valid ones."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UsageError(
            f"Wrong backend name {name!r}, supported backends: {sorted(BACKENDS)}",
            hint="pass --backend labelstudio (the local default) or --backend groundtruth",
        ) from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    backend: Backend = cls(workspace, **options)
    return backend
