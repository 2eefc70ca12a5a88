"""An in-memory labeling backend, for tests: no server, no network, no SDK.

Registered as ``fake`` with ``hidden=True``: Python reaches it
(``loop.push_jobs(ws, "fake", options={"server": server})``), ``--backend`` does not offer
it. All state lives in a :class:`FakeServer` the test creates and passes as the ``server``
option, so a push and a later pull (two backend instances) see the same tasks, and the test
plays the annotators: :meth:`FakeServer.annotate`, :meth:`~FakeServer.update`,
:meth:`~FakeServer.delete`, :meth:`~FakeServer.skip`. Like Label Studio, each outcome
lists every annotation its task has now (``lists_all_annotations``), and a pull with a
cursor returns only tasks changed since the previous pull.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from camlabel.backends.base import (
    AnnotationResult,
    Backend,
    OnPushed,
    PullReport,
    PushItem,
    PushReport,
    TaskOutcome,
    TaskStatus,
)
from camlabel.config import setting
from camlabel.errors import BackendError, UsageError
from camlabel.records import Annotation, JobRef

if TYPE_CHECKING:
    from camlabel.workspace import Workspace

_EPOCH = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)


@dataclass(frozen=True)
class FakeSettings:
    """The fake backend's settings (no flag: the CLI does not offer this backend)."""

    chunk_size: int = setting(2, help="tasks per published chunk (one on_pushed call each)")


@dataclass
class FakeAnnotation:
    annotation_id: str
    annotator: str
    status: str  # submitted | skipped
    created_at: str
    updated_at: str
    mask: np.ndarray | None = None
    polygons: tuple[dict[str, Any], ...] = ()


@dataclass
class FakeTask:
    task_id: str
    image_id: str
    width: int
    height: int
    item: PushItem
    annotations: dict[str, FakeAnnotation] = field(default_factory=dict)
    revision: int = 0


class FakeServer:
    """The labeling tool's state: tasks by image id, with their annotations.

    Attributes:
        fail_after_chunks: when set, a push raises BackendError after publishing this many
            chunks (an interrupted push).
        chunks: how many chunks have been published so far.
    """

    project = "fake-project"

    def __init__(self) -> None:
        self.tasks: dict[str, FakeTask] = {}
        self.fail_after_chunks: int | None = None
        self.chunks = 0
        self._clock = 0
        self._next_id = 0

    def _now(self) -> str:
        self._clock += 1
        return (_EPOCH + _dt.timedelta(seconds=self._clock)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _task(self, image_id: str) -> FakeTask:
        try:
            return self.tasks[image_id]
        except KeyError:
            raise UsageError(f"no fake task for image {image_id[:12]}") from None

    def _mask(
        self, task: FakeTask, mask: np.ndarray | None, polygons: Sequence[Mapping[str, Any]] | None
    ) -> tuple[np.ndarray, tuple[dict[str, Any], ...]]:
        if mask is not None:
            return np.asarray(mask, bool), ()
        from camlabel.geometry import PolygonPx, polygons_to_mask

        polys = tuple(dict(p) for p in polygons or ())
        shapes = [PolygonPx.from_json(p) for p in polys]
        return polygons_to_mask(shapes, task.height, task.width), polys

    def annotate(
        self,
        image_id: str,
        mask: np.ndarray | None = None,
        *,
        polygons: Sequence[Mapping[str, Any]] | None = None,
        annotator: str = "annotator-1",
    ) -> str:
        """Submit an annotation (a bool mask, or polygons in pixels); returns its id."""
        task = self._task(image_id)
        self._next_id += 1
        ann_id = str(self._next_id)
        raster, polys = self._mask(task, mask, polygons)
        now = self._now()
        task.annotations[ann_id] = FakeAnnotation(
            ann_id, annotator, "submitted", now, now, raster, polys
        )
        task.revision += 1
        return ann_id

    def update(
        self,
        image_id: str,
        annotation_id: str,
        mask: np.ndarray | None = None,
        *,
        polygons: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Change an annotation's shape (its ``updated_at`` moves on)."""
        task = self._task(image_id)
        ann = task.annotations[annotation_id]
        ann.mask, ann.polygons = self._mask(task, mask, polygons)
        ann.status = "submitted"
        ann.updated_at = self._now()
        task.revision += 1

    def delete(self, image_id: str, annotation_id: str) -> None:
        task = self._task(image_id)
        del task.annotations[annotation_id]
        task.revision += 1

    def skip(self, image_id: str, *, annotator: str = "annotator-1") -> str:
        """An annotator skips the task (an annotation without mask); returns its id."""
        task = self._task(image_id)
        self._next_id += 1
        ann_id = str(self._next_id)
        now = self._now()
        task.annotations[ann_id] = FakeAnnotation(ann_id, annotator, "skipped", now, now)
        task.revision += 1
        return ann_id


class FakeBackend(Backend):
    """Publishes to a :class:`FakeServer` (the ``server`` option)."""

    name: ClassVar[str] = "fake"
    settings_class: ClassVar[type] = FakeSettings
    lists_all_annotations: ClassVar[bool] = True
    settings: FakeSettings

    def __init__(
        self,
        workspace: Workspace,
        settings: FakeSettings | None = None,
        *,
        server: FakeServer | None = None,
        **options: Any,
    ) -> None:
        super().__init__(workspace, settings, **options)
        if server is None:
            raise UsageError("the fake backend needs a FakeServer: pass options={'server': ...}")
        self.server = server

    def _job(self, task: FakeTask) -> JobRef:
        return JobRef(backend=self.name, project=self.server.project, task=task.task_id)

    def push(
        self,
        items: Sequence[PushItem],
        *,
        dry_run: bool = False,
        progress: bool = True,
        on_pushed: OnPushed | None = None,
    ) -> PushReport:
        server = self.server
        report = PushReport(project=server.project)
        todo = []
        for item in items:
            if item.image_id in server.tasks:
                report.already_present[item.image_id] = self._job(server.tasks[item.image_id])
            else:
                todo.append(item)
        size = self.settings.chunk_size
        for start in range(0, len(todo), size):
            chunk: dict[str, JobRef] = {}
            for item in todo[start : start + size]:
                task = FakeTask(
                    task_id=f"t-{item.image_id[:12]}",
                    image_id=item.image_id,
                    width=item.width,
                    height=item.height,
                    item=item,
                )
                if not dry_run:
                    server.tasks[item.image_id] = task
                chunk[item.image_id] = self._job(task)
            report.pushed.update(chunk)
            if dry_run:
                continue
            server.chunks += 1
            if on_pushed is not None:
                on_pushed(chunk)
            if server.fail_after_chunks is not None and server.chunks >= server.fail_after_chunks:
                raise BackendError(f"fake backend: interrupted after {server.chunks} chunk(s)")
        return report

    def pull(
        self,
        jobs: Mapping[str, JobRef],
        *,
        cursor: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> PullReport:
        seen: dict[str, int] = dict((cursor or {}).get("revisions", {}))
        report = PullReport()
        for image_id, job in jobs.items():
            task = self.server.tasks.get(image_id)
            if task is None:
                report.outcomes.append(
                    TaskOutcome(image_id, job, "failed", message="task not found")
                )
                continue
            if seen.get(task.task_id) == task.revision:
                continue
            seen[task.task_id] = task.revision
            results = tuple(self._result(task, a) for a in task.annotations.values())
            submitted = any(a.status == "submitted" for a in task.annotations.values())
            status: TaskStatus = (
                "annotated" if submitted else ("skipped" if results else "unannotated")
            )
            report.outcomes.append(TaskOutcome(image_id, self._job(task), status, results))
        report.cursor = {"revisions": seen}
        return report

    def _result(self, task: FakeTask, ann: FakeAnnotation) -> AnnotationResult:
        record = Annotation(
            backend=self.name,
            annotation_id=ann.annotation_id,
            annotator=ann.annotator,
            status=ann.status,
            created_at=ann.created_at,
            updated_at=ann.updated_at,
            polygons=ann.polygons,
        )
        mask = None if ann.status == "skipped" or ann.mask is None else ann.mask.copy()
        return AnnotationResult(record, mask)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "project": self.server.project}
