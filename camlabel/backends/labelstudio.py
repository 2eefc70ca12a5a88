"""Label Studio backend: publish pre-annotated images as tasks, read annotations back as masks.

The only module that imports ``label_studio_sdk`` (2.x). It talks to any reachable Label
Studio (URL + token): the workspace's embedded server (``camlabel labelstudio start``) or a
remote one.

Push
    A project is reused (``--project``, the project the ledger's jobs point to, or the
    configured title carrying the camlabel marker in its description) or created with the
    labeling config ``templates/labelstudio/lesion.xml``. Images are served from the
    workspace through a local-files storage connection (embedded server) or uploaded
    (``--upload``, remote server). Tasks are imported in bulk, ``chunk_size`` per request;
    before importing, the project's tasks are listed and images whose content hash
    (``data.camlabel_image_id``) is already there are skipped, so a re-run, even after a
    crash in the middle of an import, never creates a duplicate. The pre-annotation polygons
    become a prediction (percent of the original width/height).

Pull
    The first pull of a project reads every task with the JSON export
    (``ls.projects.exports.download_sync``, one request, a third faster than the task list).
    Later pulls read only what changed: the Data Manager task list (``ls.tasks.list``)
    filtered on ``tasks:updated_at`` greater than the cursor. Label Studio bumps a task's
    ``updated_at`` whenever one of its annotations is created, updated or skipped, and a
    changed task comes back with all its annotations (consensus needs them all). The new
    cursor is the server's clock at the start of the pull minus a safety margin (from the
    HTTP ``Date`` header), never the newest ``updated_at`` seen: an annotation saved while
    the pages are read is then picked up by the next pull instead of being skipped forever.

Every HTTP call has a timeout and bounded retries with exponential backoff on connection
errors and 5xx answers, then raises :class:`BackendUnavailable`. The token is never put
into a message, a log line, a JobRef or the ledger.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from camlabel.backends.base import (
    AnnotationResult,
    Backend,
    OnPushed,
    PullReport,
    PushItem,
    PushReport,
    TaskOutcome,
)
from camlabel.config import LabelStudioSettings
from camlabel.errors import (
    AnnotationError,
    BackendError,
    BackendUnavailable,
    CamlabelError,
    ConfigError,
)
from camlabel.records import Annotation, JobRef, Preannotation

if TYPE_CHECKING:
    import httpx
    from label_studio_sdk import LabelStudio

    from camlabel.workspace import Workspace

T = TypeVar("T")

#: Put into the description of every project camlabel creates; reuse by title requires it.
MARKER = "[camlabel]"
#: Control names in templates/labelstudio/lesion.xml (camlabel's contract with the template).
POLYGON_FROM = "lesion"
BRUSH_FROM = "lesion_brush"
CLASS_FROM = "image_class"
TO_NAME = "image"
#: Files per upload request (PNGs of a few hundred kB each).
UPLOAD_CHUNK = 50
HINT_DOWN = (
    "is the server running? Start the embedded one with: camlabel labelstudio start -w WS; "
    "for another server pass --url and --token (env CAMLABEL_LS_URL / CAMLABEL_LS_TOKEN)"
)
#: Fields read when pulling (task fields, then the annotation fields, see _changed_tasks).
_ANN_KEYS = frozenset(
    {"id", "result", "was_cancelled", "completed_by", "lead_time", "created_at", "updated_at"}
)
PULL_INCLUDE = ",".join(
    [
        "id",
        "data",
        "updated_at",
        "annotations",
        "predictions",
        *sorted(_ANN_KEYS - {"id", "updated_at"}),
    ]
)
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what the Data Manager's Datetime filter parses


def label_config(lesion_label: str, classes: Sequence[str], header: str | None = None) -> str:
    """The labeling config: the template with the lesion label and the class choices filled in."""
    from camlabel.resources import template_path

    text = template_path("labelstudio", "lesion.xml").read_text(encoding="utf-8")
    # The leading comment documents the placeholders; Label Studio does not need it.
    if text.lstrip().startswith("<!--"):
        text = text[text.index("-->") + 3 :].lstrip()
    choices = "\n".join(f'    <Choice value="{escape(c, quote=True)}"/>' for c in classes)
    header = header or f"Outline every {lesion_label.lower()} (lung lesion) in this chest X-ray"
    return (
        text.replace("{{LESION_LABEL}}", escape(lesion_label, quote=True))
        .replace("{{CLASS_CHOICES}}", choices)
        .replace("{{HEADER}}", escape(header, quote=True))
    )


def expert_instruction(lesion_label: str, classes: Sequence[str]) -> str:
    """Annotator instructions shown by Label Studio's "Instructions" button (HTML)."""
    lab = escape(lesion_label)
    return (
        f"<h3>Lesion masks for chest X-rays</h3>"
        f"<p>Each image comes with a machine pre-annotation (Grad-CAM): red polygons labelled "
        f"<b>{lab}</b>. It is a starting point, often too coarse.</p>"
        f"<ul><li>Adjust the polygons to the visible opacities: drag vertices, delete wrong "
        f"regions (select, Backspace), add missing ones (key 1, click vertices, click the first "
        f"vertex again to close).</li>"
        f"<li>The brush (key 2) is an alternative for shapes a polygon cannot follow.</li>"
        f"<li>If the image shows no lesion, delete every region and submit the empty image.</li>"
        f"<li>Confirm or correct the image class ({escape(', '.join(classes))}).</li>"
        f"<li>Skip an image you cannot judge (poor quality, wrong body part).</li></ul>"
    )


class LabelStudioBackend(Backend):
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

    # ------------------------------------------------------------------ connection
    def _resolve(self) -> None:
        """Find URL and token (flag > env > workspace config > embedded server); no request yet."""
        if self.url is not None:
            return
        from camlabel import labelstudio_server as srv

        url = self.settings.url
        embedded_url = srv.running_url(self.workspace)
        if not url:
            if embedded_url is None:
                raise BackendUnavailable(
                    f"no Label Studio server to talk to: the embedded server of {self.workspace.root} "
                    "is not running and no URL is set",
                    hint=HINT_DOWN,
                )
            url = embedded_url
        url = str(url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"Label Studio URL must start with http:// or https://. Received: url={url!r}",
                hint="e.g. --url http://127.0.0.1:8089",
            )
        self._embedded = embedded_url is not None and _same_server(url, embedded_url)
        token = self.settings.token
        if not token:
            creds = srv.load_credentials(self.workspace)
            if creds is not None and (self._embedded or _is_loopback(url)):
                token = creds.token
        if not token:
            raise ConfigError(
                f"no API token for the Label Studio server at {url}",
                hint="pass --token or set CAMLABEL_LS_TOKEN (Label Studio: Account & Settings > "
                "Personal Access Token, or a legacy token if the organisation enables them)",
            )
        self.url = url
        self._token = token

    @property
    def ls(self) -> LabelStudio:
        if self._ls is None:
            import httpx
            from label_studio_sdk import LabelStudio

            self._resolve()
            assert self.url is not None and self._token is not None
            self._http = httpx.Client(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                follow_redirects=True,
            )
            self._ls = LabelStudio(
                base_url=self.url,
                api_key=self._token,
                httpx_client=self._http,
                timeout=self.timeout,
            )
        return self._ls

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None
        self._ls = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name}
        if self.url:
            out["url"] = self.url
        if self._project_id is not None:
            out["project"] = str(self._project_id)
        elif self.project_opt is not None:
            out["project"] = str(self.project_opt)
        return out

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text

    def _opts(self) -> dict[str, Any]:
        # The SDK's own retries are off: POST /import is not idempotent, so retrying is
        # this module's job (it re-lists the project before re-sending a chunk).
        return {"max_retries": 0, "timeout": self.timeout}

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one SDK request with bounded retries; map failures to camlabel errors.

        Only for idempotent requests: a request whose answer was lost is sent again.
        """
        self.ls  # noqa: B018  (connect lazily, resolving URL and token)
        return self._retrying(what, lambda: fn(*args, request_options=self._opts(), **kwargs))

    def _retrying(self, what: str, send: Callable[[], T], retries: int | None = None) -> T:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        retries = self.retries if retries is None else retries
        last = ""
        for attempt in range(retries + 1):
            try:
                return send()
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            except ApiError as exc:
                code = exc.status_code
                if code is not None and code < 500 and code not in (408, 429):
                    raise self._refused(what, code, exc.body) from None
                last = f"HTTP {code}"
            if attempt < retries:
                time.sleep(self._delay(attempt))
        raise BackendUnavailable(
            self._scrub(
                f"Label Studio at {self.url} did not answer: {what} failed after "
                f"{retries + 1} attempt(s) ({last})"
            ),
            hint=HINT_DOWN,
        )

    def _delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2**attempt, 8.0))

    def _refused(self, what: str, code: int, body: Any) -> BackendError:
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
        text = self._scrub(f"{detail!s}"[:400])
        if code in (401, 403):
            return BackendError(
                f"Label Studio at {self.url} refused {what}: HTTP {code} ({text})",
                hint="check the token (--token / CAMLABEL_LS_TOKEN); a legacy token needs "
                "'legacy API tokens' enabled in the organisation settings",
            )
        return BackendError(f"Label Studio at {self.url} refused {what}: HTTP {code} ({text})")

    def _raw(
        self, what: str, method: str, path: str, *, retries: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A request outside the SDK's typed methods, with the SDK's auth and the same retries.

        Used for the multipart upload, the server clock, and the bulk import (the SDK's
        per-field serialization of a 500-task request costs a third of the push time).
        """
        from label_studio_sdk.core.api_error import ApiError

        ls = self.ls
        assert self._http is not None
        http = self._http
        # The SDK's client wrapper knows the auth scheme (legacy "Token" or PAT "Bearer").
        headers = dict(ls._client_wrapper.get_headers())

        def send() -> httpx.Response:
            resp = http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
            if resp.status_code >= 400:
                try:
                    body: Any = resp.json()
                except ValueError:
                    body = resp.text
                raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=body)
            return resp

        return self._retrying(what, send, retries)

    # ------------------------------------------------------------------ project
    @property
    def lesion_label(self) -> str:
        return str(self.workspace.config.get("lesion_label", "Opacity"))

    @property
    def project_title(self) -> str:
        return str(
            self.workspace.config.get("labelstudio", {}).get("project_title") or "camlabel lesions"
        )

    def label_config(self) -> str:
        return label_config(self.lesion_label, self.workspace.classes)

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
            and _same_server(str(it.existing.extra.get("url", "")), self.url or "")
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
            maximum_annotations=max(
                1, int(self.workspace.config.get("consensus", {}).get("min_annotations", 1))
            ),
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

    # ------------------------------------------------------------------ listing
    def _task_pages(
        self,
        pid: int,
        *,
        include: str | None = None,
        fields: str | None = None,
        filters: list[dict[str, Any]] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """The project's tasks, one page (list of plain dicts) at a time; each page is retried alone."""
        query = (
            json.dumps({"filters": {"conjunction": "and", "items": filters}}) if filters else None
        )
        page = 1
        while True:
            kwargs: dict[str, Any] = {
                "project": pid,
                "page": page,
                "page_size": self.page_size,
                "resolve_uri": False,
            }
            if include:
                kwargs["include"] = include
            if fields:
                kwargs["fields"] = fields
            if query:
                kwargs["query"] = query
            try:
                pager: Any = self._call(
                    f"list the tasks of project {pid} (page {page})", self.ls.tasks.list, **kwargs
                )
            except BackendError as exc:
                if page > 1 and "HTTP 404" in exc.message:  # past the last page
                    return
                raise
            items = [
                t.model_dump() if hasattr(t, "model_dump") else dict(t) for t in (pager.items or [])
            ]
            if items:
                yield items
            total = getattr(pager.response, "total", None) if pager.response is not None else None
            if len(items) < self.page_size or (
                total is not None and page * self.page_size >= total
            ):
                return
            page += 1

    def existing_tasks(self, pid: int) -> dict[str, int]:
        """``{camlabel_image_id: task id}`` of the project's tasks (the idempotence check)."""
        out: dict[str, int] = {}
        for page in self._task_pages(pid, include="id,data"):
            for t in page:
                key = (t.get("data") or {}).get("camlabel_image_id")
                if key and (key not in out or t["id"] < out[key]):
                    out[str(key)] = int(t["id"])
        return out

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
        present = self.existing_tasks(pid)
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
        with progress_bar(
            total=len(todo), desc="push labelstudio", unit="task", enabled=progress
        ) as bar:
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
                by_id = {it.image_id: it for it, _ in tasks}
                jobs = {
                    iid: self._job(pid, tid, by_id[iid])
                    for iid, tid in self._import_chunk(pid, tasks).items()
                }
                report.pushed.update(jobs)
                chunks += 1
                if on_pushed is not None and jobs:
                    on_pushed(jobs)
        report.details["chunks"] = chunks
        return report

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

    def task_payload(self, item: PushItem, image_url: str) -> dict[str, Any]:
        """One task: the image, its content hash and the pre-annotation as a prediction.

        Deliberately nothing else: no source path, file name or patient data.
        """
        task: dict[str, Any] = {"data": {"image": image_url, "camlabel_image_id": item.image_id}}
        pred = self.prediction(item)
        if pred is not None:
            task["predictions"] = [pred]
        return task

    def prediction(self, item: PushItem) -> dict[str, Any] | None:
        """The pre-annotation as a Label Studio prediction (points in percent of the original size)."""
        from camlabel.geometry import px_to_pct

        pre: Preannotation | None = item.preannotation
        result: list[dict[str, Any]] = []
        if pre is not None:
            for i, poly in enumerate(pre.polygons):
                # Label Studio polygons have no holes; only the exterior is offered.
                pts = px_to_pct(
                    np.asarray(poly["exterior"], dtype=np.float64), item.width, item.height
                )
                result.append(
                    {
                        "id": f"cam{i}",
                        "from_name": POLYGON_FROM,
                        "to_name": TO_NAME,
                        "type": "polygonlabels",
                        "original_width": item.width,
                        "original_height": item.height,
                        "image_rotation": 0,
                        "value": {
                            "points": pts.tolist(),
                            "closed": True,
                            "polygonlabels": [self.lesion_label],
                        },
                    }
                )
        if item.predicted_class is not None and item.predicted_class in self.workspace.classes:
            result.append(
                {
                    "id": "class",
                    "from_name": CLASS_FROM,
                    "to_name": TO_NAME,
                    "type": "choices",
                    "value": {"choices": [item.predicted_class]},
                }
            )
        if not result:
            return None
        pred: dict[str, Any] = {
            "result": result,
            "model_version": pre.model_version if pre else "classifier",
        }
        score = pre.score if pre is not None and pre.score is not None else item.probability
        if score is not None:
            pred["score"] = float(score)
        return pred

    # ------------------------------------------------------------------ images
    def _root(self) -> Path:
        return self.document_root or self.workspace.root

    def _local_url(self, item: PushItem) -> str:
        root = self._root()
        path = Path(item.display_png).resolve()
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
        from camlabel.ledger import atomic_write_text

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
        if cursor and _same_server(str(cursor.get("server", "")), self.url or ""):
            since_all = {str(k): str(v) for k, v in dict(cursor.get("updated_since") or {}).items()}
        sizes = {r.image_id: (r.width, r.height) for r in self.workspace.ledger.all()}
        by_project: dict[str, dict[str, JobRef]] = {}
        for image_id, job in jobs.items():
            by_project.setdefault(str(job.project), {})[image_id] = job
        users = _LazyUsers(self)
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
                tasks = (
                    self._changed_tasks(pid, filters)
                    if since
                    else self._export_all(pid, len(pjobs))
                )
                predictions = _Predictions(self, pid)
                for task in tasks:
                    iid = str((task.get("data") or {}).get("camlabel_image_id") or "")
                    pjob = pjobs.get(iid)
                    if pjob is None or iid in seen:
                        continue  # not this workspace's image (or a duplicate task)
                    seen.add(iid)
                    size = sizes.get(iid) or (pjob.extra.get("width"), pjob.extra.get("height"))
                    report.outcomes.append(self._outcome(iid, pjob, task, size, users, predictions))
                    bar.update(1)
                if since is None:
                    missing = [iid for iid in pjobs if iid not in seen]
                    report.failures.extend(
                        (
                            iid[:12],
                            f"task {pjobs[iid].task} is no longer in project {pid} on {self.url}",
                        )
                        for iid in missing
                    )
                else:
                    # Unchanged tasks without any annotation are still worth reporting.
                    self._report_unannotated(pid, pjobs, seen, report)
                new_since[project] = max(filter(None, [server_now, since]))
        report.cursor = {"server": self.url, "updated_since": new_since}
        return report

    def _export_all(self, pid: int, expected: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations: the JSON export (one request).

        A third faster than the Data Manager list for a full read; predictions come as ids
        (resolved by :class:`_Predictions` only when needed).
        """
        timeout = self.timeout + 0.05 * expected  # ~10 s more per 200 tasks on a slow server

        def send() -> bytes:
            chunks = self.ls.projects.exports.download_sync(
                pid,
                export_type="JSON",
                download_all_tasks=True,
                request_options={"max_retries": 0, "timeout": timeout},
            )
            return b"".join(chunks)

        self.ls  # noqa: B018
        data = self._retrying(f"export the tasks of project {pid}", send)
        try:
            tasks = json.loads(data)
        except ValueError as exc:
            raise BackendError(
                f"Label Studio at {self.url}: the JSON export of project {pid} is not JSON ({exc})"
            ) from None
        if not isinstance(tasks, list):
            raise BackendError(
                f"Label Studio at {self.url}: the JSON export of project {pid} is not a list of tasks"
            )
        return [t for t in tasks if isinstance(t, dict)]

    def _changed_tasks(
        self, pid: int, filters: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        """Tasks (with annotations and predictions) matching ``filters``, all pages.

        ``include`` halves the server's work, but Label Studio applies that field list to the
        nested annotations too, so it names the annotation fields read here. Should a server
        version strip them anyway, the listing is redone without ``include``.
        """
        if self._pull_include is not None:
            tasks = [
                t
                for page in self._task_pages(
                    pid, include=self._pull_include, fields="all", filters=filters
                )
                for t in page
            ]
            anns = [a for t in tasks for a in t.get("annotations") or []]
            if all(isinstance(a, Mapping) and a.keys() >= _ANN_KEYS for a in anns):
                return tasks
            self._pull_include = None
        return [t for page in self._task_pages(pid, fields="all", filters=filters) for t in page]

    def _report_unannotated(
        self, pid: int, pjobs: Mapping[str, JobRef], seen: set[str], report: PullReport
    ) -> None:
        filters = [
            {
                "filter": "filter:tasks:total_annotations",
                "operator": "equal",
                "type": "Number",
                "value": 0,
            },
            {
                "filter": "filter:tasks:cancelled_annotations",
                "operator": "equal",
                "type": "Number",
                "value": 0,
            },
        ]
        for page in self._task_pages(pid, include="id,data", filters=filters):
            for task in page:
                iid = str((task.get("data") or {}).get("camlabel_image_id") or "")
                if iid in pjobs and iid not in seen:
                    seen.add(iid)
                    report.outcomes.append(
                        TaskOutcome(image_id=iid, job=pjobs[iid], status="unannotated")
                    )

    def _server_clock(self) -> str:
        """The server's clock minus the margin, in the Data Manager filter's format."""
        try:
            resp = self._raw("read the server clock", "GET", "/health")
            when = email.utils.parsedate_to_datetime(resp.headers["date"])
        except (KeyError, TypeError, ValueError):
            when = _dt.datetime.now(_dt.UTC)
        when = when.astimezone(_dt.UTC) - _dt.timedelta(seconds=self.cursor_margin_s)
        return when.strftime(_TS_FORMAT)

    def _outcome(
        self,
        image_id: str,
        job: JobRef,
        task: Mapping[str, Any],
        size: tuple[Any, Any],
        users: _LazyUsers,
        predictions: _Predictions | None = None,
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
            for a in sorted(anns, key=lambda a: int(a.get("id") or 0)):
                prediction = _prediction_for(a, task, predictions)
                results.append(
                    self.convert_annotation(a, task_id, width, height, prediction, users)
                )
        except AnnotationError as exc:
            return TaskOutcome(image_id=image_id, job=job_now, status="failed", message=exc.message)
        submitted = any(r.annotation.status == "submitted" for r in results)
        return TaskOutcome(
            image_id=image_id,
            job=job_now,
            status="annotated" if submitted else "skipped",
            annotations=tuple(results),
        )

    def convert_annotation(
        self,
        ann: Mapping[str, Any],
        task_id: str,
        width: int,
        height: int,
        prediction: Mapping[str, Any] | None = None,
        users: _LazyUsers | None = None,
    ) -> AnnotationResult:
        """One Label Studio annotation -> an :class:`Annotation` record and its mask (original size)."""
        from camlabel.geometry import PolygonPx, brush_rle_to_mask, pct_to_px, polygons_to_mask

        ann_id = str(ann.get("id"))
        who = ann.get("completed_by")
        annotator = users.name(who) if users is not None else str(who)
        created = _ts(ann.get("created_at"))
        updated = _ts(ann.get("updated_at")) or created
        lead = ann.get("lead_time")
        common: dict[str, Any] = {
            "backend": self.name,
            "annotation_id": ann_id,
            "annotator": annotator,
            "created_at": created,
            "updated_at": updated,
            "lead_time_s": float(lead) if isinstance(lead, int | float) else None,
        }
        if ann.get("was_cancelled"):
            return AnnotationResult(Annotation(status="skipped", **common), None)
        polys: list[PolygonPx] = []
        brush = np.zeros((height, width), dtype=bool)
        has_brush = False
        class_choice: str | None = None
        regions: list[Mapping[str, Any]] = []
        for r in ann.get("result") or []:
            if not isinstance(r, Mapping):
                continue
            kind = r.get("type")
            value = r.get("value") or {}
            if kind == "choices" and r.get("from_name") == CLASS_FROM:
                choices = value.get("choices") or []
                class_choice = str(choices[0]) if choices else None
                continue
            if kind not in ("polygonlabels", "brushlabels", "polygon"):
                continue
            ow, oh = r.get("original_width"), r.get("original_height")
            if ow is not None and oh is not None and (int(ow), int(oh)) != (width, height):
                raise AnnotationError(
                    f"task {task_id}, annotation {ann_id}: drawn on a {ow}x{oh} image but the image is "
                    f"{width}x{height} px (original_width x original_height must equal the image size)",
                    hint="the task shows a different picture than the one registered; re-push the image "
                    "(camlabel push-jobs) and annotate the new task",
                )
            regions.append(r)
            if kind == "brushlabels":
                rle = value.get("rle")
                if rle:
                    try:
                        brush |= brush_rle_to_mask(rle, height, width)
                    except CamlabelError as exc:
                        raise AnnotationError(
                            f"task {task_id}, annotation {ann_id}: brush stroke cannot be decoded ({exc.message})"
                        ) from None
                    has_brush = True
                continue
            pts = value.get("points") or []
            if len(pts) < 3:
                continue  # an unfinished polygon covers nothing
            try:
                polys.append(PolygonPx(pct_to_px(pts, width, height)))
            except CamlabelError as exc:
                raise AnnotationError(
                    f"task {task_id}, annotation {ann_id}: invalid polygon points ({exc.message})"
                ) from None
        mask = polygons_to_mask(polys, height, width) | brush
        record = Annotation(
            status="submitted",
            polygons=tuple(p.to_json() for p in polys),
            has_brush=has_brush,
            accepted_unchanged=_accepted_unchanged(regions, prediction),
            class_choice=class_choice,
            **common,
        )
        return AnnotationResult(record, mask)


class _LazyUsers:
    """Annotator names (e-mail as Label Studio gives it, else the user id), fetched once if needed."""

    def __init__(self, backend: LabelStudioBackend) -> None:
        self._backend = backend
        self._names: dict[int, str] | None = None

    def name(self, user: Any) -> str:
        if isinstance(user, Mapping):
            return str(user.get("email") or user.get("id"))
        if user is None:
            return "unknown"
        if self._names is None:
            self._names = {}
            try:
                for u in self._backend._call("list users", self._backend.ls.users.list):
                    if u.id is not None:
                        self._names[int(u.id)] = str(u.email or u.username or u.id)
            except BackendError as exc:
                if isinstance(exc, BackendUnavailable):
                    raise
        try:
            return self._names.get(int(user), str(user))
        except (TypeError, ValueError):
            return str(user)


class _Predictions:
    """A project's predictions by task id, fetched once and only if an annotation needs them.

    The JSON export lists a task's predictions as ids; their regions are needed only to
    decide ``accepted_unchanged`` for an annotation whose regions all claim to come from a
    prediction and that does not embed the prediction it started from.
    """

    def __init__(self, backend: LabelStudioBackend, pid: int) -> None:
        self._backend = backend
        self._pid = pid
        self._by_task: dict[int, list[dict[str, Any]]] | None = None

    def of(self, task_id: int) -> list[dict[str, Any]]:
        if self._by_task is None:
            be = self._backend
            self._by_task = {}
            listed = be._call(
                f"list the predictions of project {self._pid}",
                be.ls.predictions.list,
                project=self._pid,
            )
            for p in listed:
                d = p.model_dump() if hasattr(p, "model_dump") else dict(p)
                task = d.get("task")
                if task is not None:
                    self._by_task.setdefault(int(task), []).append(d)
        return self._by_task.get(int(task_id), [])


def _prediction_for(
    ann: Mapping[str, Any], task: Mapping[str, Any], predictions: _Predictions | None
) -> dict[str, Any] | None:
    """The prediction an annotation is compared with for ``accepted_unchanged`` (None: there is none)."""
    embedded = ann.get("prediction")
    if isinstance(embedded, Mapping) and embedded.get("result"):
        return dict(embedded)  # the prediction this annotation started from
    preds = list(task.get("predictions") or [])
    if not preds:
        return None
    if all(isinstance(p, Mapping) for p in preds):
        return _camlabel_prediction(preds)
    regions = [
        r
        for r in ann.get("result") or []
        if isinstance(r, Mapping) and r.get("from_name") in (POLYGON_FROM, BRUSH_FROM)
    ]
    if any(r.get("origin") != "prediction" for r in regions) or predictions is None:
        return {"result": []}  # some region is the annotator's own: not accepted unchanged
    return _camlabel_prediction(predictions.of(int(task.get("id") or 0)))


def _camlabel_prediction(predictions: Sequence[Any]) -> dict[str, Any] | None:
    """The (latest) prediction that carries camlabel polygons, else the latest one, else None."""
    preds = [p for p in predictions if isinstance(p, Mapping)]
    preds.sort(key=lambda p: int(p.get("id") or 0))
    for p in reversed(preds):
        if any(
            isinstance(r, Mapping) and r.get("from_name") == POLYGON_FROM
            for r in p.get("result") or []
        ):
            return dict(p)
    return dict(preds[-1]) if preds else None


def _accepted_unchanged(
    regions: Sequence[Mapping[str, Any]], prediction: Mapping[str, Any] | None
) -> bool | None:
    """True when every lesion region came from the prediction unchanged (origin and points).

    None when there was no prediction to accept.
    """
    if prediction is None:
        return None
    predicted = [
        r.get("value", {}).get("points") or []
        for r in prediction.get("result") or []
        if isinstance(r, Mapping) and r.get("from_name") == POLYGON_FROM
    ]
    if len(regions) != len(predicted):
        return False
    if any(r.get("origin") != "prediction" or r.get("type") != "polygonlabels" for r in regions):
        return False
    drawn = [r.get("value", {}).get("points") or [] for r in regions]
    remaining = [np.asarray(p, dtype=np.float64) for p in predicted]
    for pts in drawn:
        a = np.asarray(pts, dtype=np.float64)
        hit = next(
            (
                i
                for i, b in enumerate(remaining)
                if a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6)
            ),
            None,
        )
        if hit is None:
            return False
        remaining.pop(hit)
    return True


def _ts(value: Any) -> str:
    """Label Studio timestamps as ISO-8601 UTC with ``Z`` (microseconds kept: they order edits)."""
    if value is None:
        return ""
    if isinstance(value, _dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
        return when.astimezone(_dt.UTC).strftime(_TS_FORMAT)
    text = str(value).strip()
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return _ts(when)


def _split(url: str) -> tuple[str, str, int]:
    p = urllib.parse.urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme, (p.hostname or "").lower(), port


def _same_server(a: str, b: str) -> bool:
    if not a or not b:
        return False
    sa, sb = _split(a), _split(b)
    loop = {"127.0.0.1", "localhost", "::1"}
    ha = "loopback" if sa[1] in loop else sa[1]
    hb = "loopback" if sb[1] in loop else sb[1]
    return (sa[0], ha, sa[2]) == (sb[0], hb, sb[2])


def _is_loopback(url: str) -> bool:
    return _split(url)[1] in ("127.0.0.1", "localhost", "::1")
