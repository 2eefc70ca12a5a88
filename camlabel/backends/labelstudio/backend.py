"""Label Studio backend: publish pre-annotated images as tasks, read annotations back as masks.

It talks to any reachable Label Studio (URL + token): the workspace's embedded server
(``camlabel labelstudio start``) or a remote one. This module orchestrates push and pull;
its siblings do the rest: ``client`` (URL and token, timeouts, retries; the only module
importing ``label_studio_sdk`` 2.x), ``tasks`` (labeling config, task payloads, listing,
the pull cursor), ``convert`` (annotations -> masks, the brush RLE codec), ``server`` (the
embedded server) and ``simulate`` (the demo's annotators).

Push
    A project is reused (``--project``, the project the ledger's jobs point to, or the
    configured title carrying the camlabel marker in its description) or created with the
    labeling config ``templates/labelstudio/lesion.xml``. Images are served from the
    workspace through a local-files storage connection (embedded server) or uploaded
    (``--upload``, remote server). Tasks are imported in bulk, ``chunk_size`` per request;
    before importing, the project's tasks are listed and images whose content hash
    (``data.camlabel_image_id``) is already there are skipped, so a re-run, even after a
    crash in the middle of an import, never creates a duplicate. The pre-annotation polygons
    become a prediction (percent of the original width/height). The next chunk's payloads
    are built while the server imports the current one (one import in flight at a time, so
    the order and the retry rules are those of a sequential push).

Pull
    The first pull of a project reads the workspace's tasks with the JSON export
    (``GET /api/projects/{id}/export?ids[]=...``, a third faster than the task list), in pages
    of ``EXPORT_PAGE`` task ids: the next page is exported while this one is converted and
    rasterized, so the client's work hides behind the server's. A task no longer under the
    id the ledger knows is found by its content hash (one listing) and exported too.
    Later pulls read only what changed: the Data Manager task list (``ls.tasks.list``)
    filtered on ``tasks:updated_at`` greater than the cursor. Label Studio bumps a task's
    ``updated_at`` whenever one of its annotations is created, updated or skipped, and a
    changed task comes back with all its annotations (consensus needs them all). The new
    cursor is the server's clock at the start of the pull minus a safety margin (from the
    HTTP ``Date`` header), never the newest ``updated_at`` seen: an annotation saved while
    the pages are read is then picked up by the next pull instead of being skipped forever.

Every HTTP call has a timeout and bounded retries with exponential backoff on connection
errors and 5xx answers, then raises :class:`BackendUnavailable` (see ``client``). The token
is never put into a message, a log line, a JobRef or the ledger.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from camlabel.backends.base import (
    AnnotationResult,
    Backend,
    OnPushed,
    PullReport,
    PushItem,
    PushReport,
    TaskOutcome,
)
from camlabel.backends.labelstudio.client import same_server
from camlabel.backends.labelstudio.convert import brush_result, convert_annotation, prediction_for
from camlabel.backends.labelstudio.tasks import (
    POLYGON_FROM,
    PULL_INCLUDE,
    TO_NAME,
    LabelStudioTasks,
    LazyPredictions,
    LazyUsers,
    expert_instruction,
)
from camlabel.config import LabelStudioSettings
from camlabel.errors import (
    AnnotationError,
    BackendError,
    BackendUnavailable,
    CamlabelError,
    ConfigError,
)
from camlabel.records import JobRef, Preannotation

if TYPE_CHECKING:
    import httpx
    from label_studio_sdk import LabelStudio

    from camlabel.workspace import Workspace

#: Put into the description of every project camlabel creates; reuse by title requires it.
MARKER = "[camlabel]"
#: Tasks per import request. Label Studio accepts up to 250k tasks / 200 MB per request;
#: 500 tasks with 64-vertex polygons are ~1 MB, and a chunk is also the unit of progress
#: committed to the ledger.
DEFAULT_CHUNK = 500
#: Files per upload request (PNGs of a few hundred kB each).
UPLOAD_CHUNK = 50
#: Task ids per export request (Django refuses more than 1,000 query fields by default).
EXPORT_PAGE = 500


class LabelStudioBackend(LabelStudioTasks, Backend):
    """Label Studio through ``label_studio_sdk`` 2.x.

    Args:
        workspace: the workspace whose images are published.
        settings: resolved :class:`~camlabel.config.LabelStudioSettings`; None resolves them
            from the keyword options below (flag > ``CAMLABEL_LS_<NAME>`` env > workspace
            ``labelstudio`` section > default).
        url: server URL. Default: ``$CAMLABEL_LS_URL``, then the workspace config's
            ``labelstudio.url``, then the workspace's running embedded server.
        token: API token (legacy token or personal access token). Default:
            ``$CAMLABEL_LS_TOKEN``, then the embedded server's ``WS/secrets/labelstudio.json``.
        project: id of an existing project to use (otherwise reused or created, see the
            module docstring).
        upload: True to upload the images (remote server), False to serve them through a
            local-files storage (a server on this machine whose document root contains the
            workspace). Default: local files for the embedded server, upload otherwise.
        document_root: the server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (default: the
            workspace, as the embedded server is started).
        timeout: seconds per HTTP request.
        retries: extra attempts after a connection error or 5xx answer.
        backoff: first retry delay in seconds (doubled each attempt, at most 8 s).
        chunk_size: tasks per import request.
        page_size: tasks per page when listing.
        cursor_margin_s: how far before the server's clock at the start of a pull the next
            pull starts reading (tasks saved while a pull runs are read again, never missed).
    """

    name: ClassVar[str] = "labelstudio"
    settings_class: ClassVar[type] = LabelStudioSettings
    config_section: ClassVar[str | None] = "labelstudio"
    env_prefix: ClassVar[str | None] = "CAMLABEL_LS_"
    lists_all_annotations: ClassVar[bool] = True

    def __init__(
        self, workspace: Workspace, settings: LabelStudioSettings | None = None, **options: Any
    ) -> None:
        super().__init__(workspace, settings, **options)
        s: LabelStudioSettings = self.settings
        if s.retries < 0 or s.timeout <= 0 or s.chunk_size < 1 or s.page_size < 1:
            raise ConfigError(
                "Label Studio backend: retries must be >= 0, timeout > 0, chunk_size and "
                f"page_size >= 1. Received: retries={s.retries}, timeout={s.timeout}, "
                f"chunk_size={s.chunk_size}, page_size={s.page_size}"
            )
        self.project_opt = None if s.project in (None, "") else s.project
        self.upload_opt = s.upload
        self.document_root = Path(s.document_root).resolve() if s.document_root else None
        self.timeout = s.timeout
        self.retries = s.retries
        self.backoff = s.backoff
        self.chunk_size = s.chunk_size
        self.page_size = s.page_size
        self.cursor_margin_s = s.cursor_margin_s
        self.url: str | None = None
        self._token: str | None = None
        self._embedded = False
        self._ls: LabelStudio | None = None
        self._http: httpx.Client | None = None
        self._project_id: int | None = None
        self._pull_include: str | None = PULL_INCLUDE
        self._resolved_dirs: dict[Path, Path] = {}

    def brush_prediction(self, pre: Preannotation, width: int, height: int) -> dict[str, Any]:
        return brush_result(pre.polygons, width, height, self.lesion_label)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name}
        if self.url:
            out["url"] = self.url
        if self._project_id is not None:
            out["project"] = str(self._project_id)
        elif self.project_opt is not None:
            out["project"] = str(self.project_opt)
        return out

    # ------------------------------------------------------------------ project
    @property
    def project_title(self) -> str:
        return self.settings.project_title

    def ensure_project(self, items: Sequence[PushItem] = ()) -> int:
        """The project to publish into: --project, the ledger's, the titled one, or a new one."""
        if self._project_id is not None:
            return self._project_id
        if self.project_opt is not None:
            try:
                pid = int(str(self.project_opt))
            except ValueError:
                raise ConfigError(
                    f"--project must be a Label Studio project id (an integer). Received: {self.project_opt!r}"
                ) from None
            proj = self._get_project(pid)
            if proj is None:
                raise BackendError(
                    f"project {pid} does not exist on {self.url}",
                    hint="omit --project to let camlabel create one, or pick an id from the projects page",
                )
            self._check_config(pid, proj.get("label_config") or "")
            self._project_id = pid
            return pid
        # The project the ledger already points to (on this server), most common first.
        known = Counter(
            it.existing.project
            for it in items
            if it.existing is not None
            and same_server(str(it.existing.extra.get("url", "")), self.url or "")
        )
        for project, _n in known.most_common():
            try:
                pid = int(project)
            except ValueError:
                continue
            proj = self._get_project(pid)
            if proj is not None:
                self._check_config(pid, proj.get("label_config") or "")
                self._project_id = pid
                return pid
        title = self.project_title
        found = [
            p
            for p in self._call(
                "list projects", lambda **kw: list(self.ls.projects.list(title=title, **kw))
            )
            if p.title == title and MARKER in (p.description or "")
        ]
        if found:
            pid = int(min(p.id for p in found if p.id is not None))
            self._check_config(pid, next(p for p in found if p.id == pid).label_config or "")
            self._project_id = pid
            return pid
        created = self._call(
            "create the project",
            self.ls.projects.create,
            title=title,
            description=f"{MARKER} Grad-CAM lesion pre-annotations for chest X-rays, published by camlabel. "
            "Tasks carry data.camlabel_image_id (the image's content hash).",
            label_config=self.label_config(),
            expert_instruction=expert_instruction(self.lesion_label, self.workspace.classes),
            show_instruction=False,
            show_skip_button=True,
            enable_empty_annotation=True,
            maximum_annotations=max(1, self.workspace.settings.consensus.min_annotations),
        )
        assert created.id is not None
        self._project_id = int(created.id)
        return self._project_id

    def _get_project(self, pid: int) -> dict[str, Any] | None:
        try:
            proj = self._call(f"read project {pid}", self.ls.projects.get, pid)
        except BackendError as exc:
            if "HTTP 404" in exc.message:
                return None
            raise
        return proj.model_dump()

    def _check_config(self, pid: int, config: str) -> None:
        """A project camlabel publishes into needs its polygon control and label."""
        try:
            root = ET.fromstring(config)
        except ET.ParseError as exc:
            raise BackendError(
                f"project {pid}: its labeling config is not valid XML ({exc})"
            ) from exc
        poly = next(
            (
                el
                for el in root.iter()
                if el.tag == "PolygonLabels"
                and el.get("name") == POLYGON_FROM
                and el.get("toName") == TO_NAME
            ),
            None,
        )
        labels = [lab.get("value") for lab in poly.iter("Label")] if poly is not None else []
        if poly is None or self.lesion_label not in labels:
            raise BackendError(
                f"project {pid} cannot hold camlabel's pre-annotations: its labeling config needs "
                f'<PolygonLabels name="{POLYGON_FROM}" toName="{TO_NAME}"> with a Label '
                f'"{self.lesion_label}". Received labels: {labels}',
                hint="omit --project to let camlabel create a project from templates/labelstudio/lesion.xml",
            )

    # ------------------------------------------------------------------ push
    def push(
        self,
        items: Sequence[PushItem],
        *,
        dry_run: bool = False,
        progress: bool = True,
        on_pushed: OnPushed | None = None,
    ) -> PushReport:
        if dry_run:
            return self._dry_run(items)
        from camlabel.progress import progress_bar

        pid = self.ensure_project(items)
        report = PushReport(project=str(pid))
        upload = self.upload_opt if self.upload_opt is not None else not self._embedded
        report.details = {"url": self.url, "images": "upload" if upload else "local-files"}
        if not upload:
            self._ensure_local_storage(pid)
        present = self._check_duplicates(pid, self.tasks_by_image(pid), report)
        already = {
            it.image_id: self._job(pid, present[it.image_id], it)
            for it in items
            if it.image_id in present
        }
        report.already_present.update(already)
        if already and on_pushed is not None:
            on_pushed(already)
        # One task per image, even if an image is listed twice.
        todo = list({it.image_id: it for it in items if it.image_id not in present}.values())
        chunks = 0
        inflight: tuple[Future[dict[str, int]], dict[str, PushItem]] | None = None

        def settle() -> None:
            """Wait for the import in flight; report and commit its jobs."""
            nonlocal chunks, inflight
            if inflight is None:
                return
            future, by_id = inflight
            inflight = None
            jobs = {iid: self._job(pid, tid, by_id[iid]) for iid, tid in future.result().items()}
            report.pushed.update(jobs)
            chunks += 1
            if on_pushed is not None and jobs:
                on_pushed(jobs)

        with (
            progress_bar(
                total=len(todo), desc="push labelstudio", unit="task", enabled=progress
            ) as bar,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-import") as importer,
        ):
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                if upload:
                    for it in chunk:
                        if not Path(it.display_png).is_file():
                            report.failures.append(
                                (it.image_id[:12], f"display PNG {it.display_png} is missing")
                            )
                    chunk = [it for it in chunk if Path(it.display_png).is_file()]
                urls = self._upload(pid, chunk) if upload and chunk else {}
                tasks: list[tuple[PushItem, dict[str, Any]]] = []
                for it in chunk:
                    try:
                        url = urls[it.image_id] if upload else self._local_url(it)
                        tasks.append((it, self.task_payload(it, url)))
                    except CamlabelError as exc:
                        report.failures.append((it.image_id[:12], exc.message))
                bar.update(len(chunk))
                if not tasks:
                    continue
                settle()
                by_id = {it.image_id: it for it, _ in tasks}
                inflight = (importer.submit(self._import_chunk, pid, tasks), by_id)
            settle()
        report.details["chunks"] = chunks
        return report

    def _check_duplicates(
        self, pid: int, by_image: Mapping[str, list[int]], report: PushReport
    ) -> dict[str, int]:
        """``{image_id: task id}`` with one task per image; duplicates reported or repaired.

        An image with several tasks (a push that raced another one before the push lock,
        or tasks imported by hand) would have its annotations read from one task only. The
        task to keep is the one with annotations (or drafts), else the oldest. Without
        ``--repair-duplicates`` each duplicate is a failure naming the tasks and the fix;
        with it the other tasks are deleted, never one that holds an annotation or a draft.
        """
        present = {iid: ids[0] for iid, ids in by_image.items()}
        deleted = 0
        for iid, ids in sorted(by_image.items()):
            if len(ids) < 2:
                continue
            work = {tid: self._task_work(tid) for tid in ids}
            busy = [tid for tid in ids if work[tid]]
            if len(busy) > 1:
                report.failures.append(
                    (
                        iid[:12],
                        f"published {len(ids)} times in project {pid} on {self.url} (tasks "
                        f"{', '.join(map(str, ids))}) and tasks {', '.join(map(str, busy))} all "
                        "hold annotations: copy the work into one task in Label Studio, delete "
                        "the others, then run push-jobs again",
                    )
                )
                present[iid] = busy[0]
                continue
            keep = busy[0] if busy else ids[0]
            present[iid] = keep
            extra = [tid for tid in ids if tid != keep]
            if not self.settings.repair_duplicates:
                report.failures.append(
                    (
                        iid[:12],
                        f"published {len(ids)} times in project {pid} on {self.url} (tasks "
                        f"{', '.join(map(str, ids))}): work on task(s) "
                        f"{', '.join(map(str, extra))} would not be read. Run camlabel push-jobs "
                        f"--repair-duplicates to delete them (task {keep} is kept)",
                    )
                )
                continue
            for tid in extra:
                self._delete_task(tid)
                deleted += 1
        if deleted:
            report.details["duplicates_deleted"] = deleted
        return present

    def _task_work(self, task_id: int) -> int:
        """Annotations (cancelled ones included) and drafts of one task."""
        resp = self._raw(f"read task {task_id}", "GET", f"/api/tasks/{task_id}/")
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not isinstance(body, Mapping):
            return 1  # unreadable: treat as holding work, so it is never deleted
        counted = [body.get(k) for k in ("total_annotations", "cancelled_annotations")]
        listed = [body.get(k) for k in ("annotations", "drafts")]
        return sum(int(c) for c in counted if isinstance(c, int)) + sum(
            len(v) for v in listed if isinstance(v, list)
        )

    def _delete_task(self, task_id: int) -> None:
        try:
            self._raw(f"delete duplicate task {task_id}", "DELETE", f"/api/tasks/{task_id}/")
        except BackendError as exc:
            if "HTTP 404" not in exc.message:  # already gone: what a retry may find
                raise

    def _job(self, pid: int, task_id: int, item: PushItem) -> JobRef:
        ex = item.existing
        if (
            ex is not None
            and ex.backend == self.name
            and ex.project == str(pid)
            and ex.task == str(task_id)
        ):
            return ex  # unchanged: no ledger churn on re-runs
        return JobRef(
            backend=self.name,
            project=str(pid),
            task=str(task_id),
            extra={"url": self.url, "width": item.width, "height": item.height},
        )

    def _import_chunk(
        self, pid: int, tasks: list[tuple[PushItem, dict[str, Any]]]
    ) -> dict[str, int]:
        """Import one chunk, ``{image_id: task id}``.

        POST /import is not idempotent: when an attempt fails (connection lost, timeout, 5xx)
        the server may still have committed it, so before sending again the project is
        listed and only the images still missing are re-sent.
        """
        done: dict[str, int] = {}
        pending = list(tasks)
        failure: BackendUnavailable | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1))
                present = self.existing_tasks(pid)
                done.update(
                    {
                        it.image_id: present[it.image_id]
                        for it, _ in pending
                        if it.image_id in present
                    }
                )
                pending = [(it, t) for it, t in pending if it.image_id not in present]
                if not pending:
                    return done
            try:
                resp = self._raw(
                    f"import {len(pending)} task(s) into project {pid}",
                    "POST",
                    f"/api/projects/{pid}/import",
                    params={"return_task_ids": "true"},
                    json=[t for _, t in pending],
                    retries=0,
                )
            except BackendUnavailable as exc:
                failure = exc
                continue
            ids = list(resp.json().get("task_ids") or [])
            if len(ids) == len(pending):  # Label Studio returns them in request order
                done.update(
                    {it.image_id: int(tid) for (it, _), tid in zip(pending, ids, strict=True)}
                )
            else:
                present = self.existing_tasks(pid)
                done.update(
                    {
                        it.image_id: present[it.image_id]
                        for it, _ in pending
                        if it.image_id in present
                    }
                )
            return done
        assert failure is not None
        raise BackendUnavailable(
            failure.message.replace("after 1 attempt(s)", f"after {self.retries + 1} attempt(s)"),
            hint=failure.hint,
        )

    # ------------------------------------------------------------------ images
    def _root(self) -> Path:
        return self.document_root or self.workspace.root

    def _local_url(self, item: PushItem) -> str:
        root = self._root()
        png = Path(item.display_png)
        # Resolving every path costs a few lstat calls per image; the images share a folder.
        folder = self._resolved_dirs.get(png.parent)
        if folder is None:
            folder = self._resolved_dirs[png.parent] = png.parent.resolve()
        path = folder / png.name  # camlabel writes display PNGs as files, never links
        try:
            rel = path.relative_to(root)
        except ValueError:
            raise ConfigError(
                f"{path} is outside the Label Studio local-files document root {root}",
                hint="use --upload for a server that cannot read the workspace, or pass the "
                "server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT as document_root",
            ) from None
        return "/data/local-files/?d=" + urllib.parse.quote(rel.as_posix(), safe="/")

    def _ensure_local_storage(self, pid: int) -> None:
        """A local-files storage connection on the images folder (never synced: tasks come from import)."""
        folder = str(self.workspace.dir("images").resolve())
        existing = self._call("list local storages", self.ls.import_storage.local.list, project=pid)
        if any(getattr(s, "path", None) == folder for s in existing):
            return
        try:
            self._call(
                "create the local-files storage",
                self.ls.import_storage.local.create,
                project=pid,
                path=folder,
                title="camlabel images",
                use_blob_urls=False,
            )
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendError(
                f"{exc.message}. The server cannot serve {folder} as local files",
                hint="start the server with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a parent of the workspace (the embedded "
                "server does), or publish with --upload",
            ) from None

    def _upload(self, pid: int, chunk: Sequence[PushItem]) -> dict[str, str]:
        """Upload the display PNGs (named ``<image_id>.png``) without creating tasks; their URLs."""
        urls: dict[str, str] = {}
        for start in range(0, len(chunk), UPLOAD_CHUNK):
            part = chunk[start : start + UPLOAD_CHUNK]
            files = {
                f"file{i}": (f"{it.image_id}.png", Path(it.display_png).read_bytes(), "image/png")
                for i, it in enumerate(part)
            }
            resp = self._raw(
                f"upload {len(part)} image(s) to project {pid}",
                "POST",
                f"/api/projects/{pid}/import",
                params={"commit_to_project": "false"},
                files=files,
            )
            ids = resp.json().get("file_upload_ids") or []
            listed = self._call("list uploaded files", self.ls.files.list, pid, ids=json.dumps(ids))
            for f in listed:
                name = str(f.file or "")
                for it in part:
                    if name.endswith(f"{it.image_id}.png"):
                        urls[it.image_id] = "/data/" + name
        missing = [it.image_id[:12] for it in chunk if it.image_id not in urls]
        if missing:
            raise BackendError(
                f"Label Studio at {self.url} did not confirm the upload of {len(missing)} image(s): {missing[:5]}"
            )
        return urls

    def _dry_run(self, items: Sequence[PushItem]) -> PushReport:
        from camlabel.fileio import atomic_write_text

        report = PushReport(project="(dry run)")
        upload = bool(self.upload_opt)
        tasks = []
        for it in items:
            if it.existing is not None and it.existing.backend == self.name:
                report.already_present[it.image_id] = it.existing
                continue
            url = f"(uploaded) {it.image_id}.png" if upload else self._local_url(it)
            tasks.append(self.task_payload(it, url))
            report.pushed[it.image_id] = JobRef(backend=self.name, project="(dry run)")
        out = self.workspace.dir("exports") / "labelstudio-dry-run.json"
        payload = {
            "project_title": self.project_title,
            "label_config": self.label_config(),
            "chunk_size": self.chunk_size,
            "tasks": tasks,
        }
        atomic_write_text(out, json.dumps(payload, indent=1) + "\n")
        report.dry_run_files.append(out)
        return report

    # ------------------------------------------------------------------ pull
    def pull(
        self,
        jobs: Mapping[str, JobRef],
        *,
        cursor: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> PullReport:
        from camlabel.progress import progress_bar

        self._resolve()
        report = PullReport()
        server_now = self._server_clock()
        since_all: dict[str, str] = {}
        retry: set[str] = set()
        if cursor and same_server(str(cursor.get("server", "")), self.url or ""):
            since_all = {str(k): str(v) for k, v in dict(cursor.get("updated_since") or {}).items()}
            retry = {str(i) for i in cursor.get("retry") or []}
        sizes = {r.image_id: (r.width, r.height) for r in self.workspace.ledger.all()}
        by_project: dict[str, dict[str, JobRef]] = {}
        for image_id, job in jobs.items():
            by_project.setdefault(str(job.project), {})[image_id] = job
        users = LazyUsers(self)
        new_since = dict(since_all)
        with progress_bar(
            total=None, desc="pull labelstudio", unit="task", enabled=progress
        ) as bar:
            for project, pjobs in by_project.items():
                try:
                    pid = int(project)
                except ValueError:
                    report.failures.extend(
                        (iid[:12], f"invalid project id {project!r}") for iid in pjobs
                    )
                    continue
                since = since_all.get(project)
                filters = (
                    [
                        {
                            "filter": "filter:tasks:updated_at",
                            "operator": "greater",
                            "type": "Datetime",
                            "value": since,
                        }
                    ]
                    if since
                    else None
                )
                seen: set[str] = set()
                tasks: Iterable[Mapping[str, Any]]
                if since:
                    changed = self._changed_tasks(pid, filters)
                    # tasks refused by an earlier pull are read again until they are fixed
                    got = {str(t.get("id")) for t in changed}
                    again = sorted(
                        {
                            int(str(pjobs[iid].task))
                            for iid in retry
                            if iid in pjobs and str(pjobs[iid].task or "").isdigit()
                        }
                        - {int(i) for i in got if i.isdigit()}
                    )
                    tasks = itertools.chain(changed, self._export_pages(pid, again))
                else:
                    tasks = self._export_tasks(pid, pjobs)
                predictions = LazyPredictions(self, pid)
                for task in self._one_task_per_image(pid, tasks, pjobs, report, seen):
                    iid = str((task.get("data") or {}).get("camlabel_image_id") or "")
                    pjob = pjobs[iid]
                    size = sizes.get(iid) or (pjob.extra.get("width"), pjob.extra.get("height"))
                    report.outcomes.append(self._outcome(iid, pjob, task, size, users, predictions))
                    bar.update(1)
                listed = seen
                if since is not None:
                    # Unchanged tasks without any annotation are still worth reporting.
                    self._report_unannotated(pid, pjobs, seen, report)
                    # A deleted task is not among the changed ones: the ids listing tells.
                    listed = seen | set(self.tasks_by_image(pid))
                missing = [iid for iid in pjobs if iid not in listed]
                report.failures.extend(
                    (
                        iid[:12],
                        f"task {pjobs[iid].task} is no longer in project {pid} on {self.url} "
                        "(deleted in Label Studio?): its mask, if any, is kept; run camlabel "
                        "push-jobs to publish the image again",
                    )
                    for iid in missing
                )
                new_since[project] = max(filter(None, [server_now, since]))
        report.cursor = {"server": self.url, "updated_since": new_since}
        return report

    def _one_task_per_image(
        self,
        pid: int,
        tasks: Iterable[Mapping[str, Any]],
        pjobs: Mapping[str, JobRef],
        report: PullReport,
        seen: set[str],
    ) -> list[Mapping[str, Any]]:
        """This workspace's tasks, one per image: of duplicates, the one holding annotations.

        A duplicate is a failure telling how to repair it; when more than one of an image's
        tasks holds annotations none is read (which one is right is the user's call).
        """
        grouped: dict[str, list[Mapping[str, Any]]] = {}
        for task in tasks:
            iid = str((task.get("data") or {}).get("camlabel_image_id") or "")
            if iid in pjobs:  # else not this workspace's image
                grouped.setdefault(iid, []).append(task)
        seen.update(grouped)
        out: list[Mapping[str, Any]] = []
        for iid, group in grouped.items():
            if len(group) > 1:
                annotated = [t for t in group if t.get("annotations")]
                ids = ", ".join(str(t.get("id")) for t in group)
                fix = (
                    "copy the work into one task in Label Studio and delete the others"
                    if len(annotated) > 1
                    else "run camlabel push-jobs --repair-duplicates"
                )
                report.failures.append(
                    (iid[:12], f"published several times in project {pid} (tasks {ids}): {fix}")
                )
                if len(annotated) > 1:
                    continue
                group = annotated or group[:1]
            out.append(group[0])
        return out

    def _export_tasks(self, pid: int, pjobs: Mapping[str, JobRef]) -> Iterator[dict[str, Any]]:
        """The tasks of ``pjobs``' images with their annotations, from the JSON export, page by page.

        Which tasks: every task of those images in the project, from one id-only listing by
        content hash, so that an image published twice (an older version's race, or by hand)
        is exported twice and reported by :meth:`_one_task_per_image`, and an image whose task
        is not under the id the ledger knows (deleted and re-imported, a ledger restored from a
        backup) is found. Predictions come as ids (resolved by :class:`LazyPredictions` only
        when needed).
        """
        listed = self.tasks_by_image(pid)
        ids = sorted({task_id for iid in pjobs for task_id in listed.get(iid, ())})
        yield from self._export_pages(pid, ids)

    def _export_pages(self, pid: int, ids: Sequence[int]) -> Iterator[dict[str, Any]]:
        """The export of ``ids``, ``EXPORT_PAGE`` per request, the next page fetched in the background."""
        pages = [ids[i : i + EXPORT_PAGE] for i in range(0, len(ids), EXPORT_PAGE)]
        if not pages:
            return  # an export without ids[] would return the whole project
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-export") as exporter:
            future = exporter.submit(self._export_page, pid, pages[0])
            for following in [*pages[1:], None]:
                page = future.result()
                if following is not None:
                    future = exporter.submit(self._export_page, pid, following)
                yield from page

    def _export_page(self, pid: int, ids: Sequence[int]) -> list[dict[str, Any]]:
        """One JSON export request for these task ids (idempotent: retried like a read)."""
        resp = self._raw(
            f"export {len(ids)} task(s) of project {pid}",
            "GET",
            f"/api/projects/{pid}/export",
            params=[
                ("exportType", "JSON"),
                ("download_all_tasks", "true"),
                *(("ids[]", str(i)) for i in ids),
            ],
            timeout=self.timeout + 0.05 * len(ids),  # ~10 s more per 200 tasks on a slow server
        )
        try:
            tasks = json.loads(resp.content)
        except ValueError as exc:
            raise BackendError(
                f"Label Studio at {self.url}: the JSON export of project {pid} is not JSON ({exc})"
            ) from None
        if not isinstance(tasks, list):
            raise BackendError(
                f"Label Studio at {self.url}: the JSON export of project {pid} is not a list of tasks"
            )
        return [t for t in tasks if isinstance(t, dict)]

    def _outcome(
        self,
        image_id: str,
        job: JobRef,
        task: Mapping[str, Any],
        size: tuple[Any, Any],
        users: LazyUsers,
        predictions: LazyPredictions | None = None,
    ) -> TaskOutcome:
        task_id = str(task.get("id"))
        job_now = (
            job
            if job.task == task_id
            else JobRef(
                backend=job.backend,
                project=job.project,
                task=task_id,
                pushed_at=job.pushed_at,
                extra=job.extra,
            )
        )
        anns = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
        if not anns:
            return TaskOutcome(image_id=image_id, job=job_now, status="unannotated")
        try:
            width, height = int(size[0]), int(size[1])
        except (TypeError, ValueError):
            return TaskOutcome(
                image_id=image_id,
                job=job_now,
                status="failed",
                message=f"task {task_id}: the image size is unknown (not in the ledger)",
            )
        results: list[AnnotationResult] = []
        try:
            for a in sorted(anns, key=lambda a: str(a.get("id") or "").zfill(20)):
                prediction = prediction_for(a, task, predictions)
                results.append(
                    self.convert_annotation(
                        a,
                        task_id,
                        width,
                        height,
                        prediction,
                        users,
                        lesion_label=self.lesion_label,
                        classes=self.workspace.classes,
                    )
                )
        except AnnotationError as exc:
            return TaskOutcome(image_id=image_id, job=job_now, status="failed", message=exc.message)
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
            # Hostile task data outside the annotations (ids, predictions): this task only.
            return TaskOutcome(
                image_id=image_id,
                job=job_now,
                status="failed",
                message=f"task {task_id}: unreadable task data ({type(exc).__name__}: {exc!s:.120})",
            )
        submitted = any(r.annotation.status == "submitted" for r in results)
        return TaskOutcome(
            image_id=image_id,
            job=job_now,
            status="annotated" if submitted else "skipped",
            annotations=tuple(results),
        )

    #: One annotation -> its record and mask (a method for callers holding the backend).
    convert_annotation = staticmethod(convert_annotation)
