"""Label Studio tasks: the labeling config, task payloads and predictions, paging, the pull cursor.

:class:`LabelStudioTasks` (between :class:`~camlabel.backends.labelstudio.client.LabelStudioClient`
and the backend) builds what a push sends (one task per image: its URL, its content hash
``data.camlabel_image_id`` and the pre-annotation as a prediction in percent of the original
size) and lists a project's tasks page by page, each page retried alone. The pull cursor is
the server's clock (HTTP ``Date``) minus a margin, in the Data Manager filter's format.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from camlabel.backends.base import PullReport, PushItem, TaskOutcome
from camlabel.backends.labelstudio.client import LabelStudioClient
from camlabel.errors import BackendError, BackendUnavailable
from camlabel.records import JobRef, Preannotation

#: Control names in templates/labelstudio/lesion.xml (camlabel's contract with the template).
POLYGON_FROM = "lesion"
BRUSH_FROM = "lesion_brush"
CLASS_FROM = "image_class"
TO_NAME = "image"
#: Tasks per page when listing.
PAGE_SIZE = 1000
#: Seconds subtracted from the server's clock for the pull cursor (see the module docstring).
CURSOR_MARGIN_S = 30
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


class LabelStudioTasks(LabelStudioClient):
    """Payloads and task listing of the Label Studio backend (see the module docstring)."""

    page_size: int
    cursor_margin_s: float
    _pull_include: str | None

    # ------------------------------------------------------------------ payloads
    @property
    def lesion_label(self) -> str:
        return self.workspace.settings.workspace.lesion_label

    def label_config(self) -> str:
        return label_config(self.lesion_label, self.workspace.classes)

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
        pre: Preannotation | None = item.preannotation
        result: list[dict[str, Any]] = []
        if pre is not None and any(poly.get("holes") for poly in pre.polygons):
            result.append(self.brush_prediction(pre, item.width, item.height))
        elif pre is not None:
            for i, poly in enumerate(pre.polygons):
                # Label Studio polygons have no holes; only the exterior is offered.
                pts = _points_pct(poly["exterior"], item.width, item.height)
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
                            "points": pts,
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
        if item.priority is not None:  # the Data Manager sorts by it: the selection order
            score = item.priority
        if score is not None:
            pred["score"] = float(score)
        return pred

    def brush_prediction(self, pre: Preannotation, width: int, height: int) -> dict[str, Any]:
        """A pre-annotation with holes as ONE brush region (Label Studio polygons cannot carry
        holes); the backend implements it with the brush codec of ``convert``."""
        raise NotImplementedError

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
        return {key: min(ids) for key, ids in self.tasks_by_image(pid).items()}

    def tasks_by_image(self, pid: int) -> dict[str, list[int]]:
        """``{camlabel_image_id: [task ids, ascending]}``: more than one id is a duplicate."""
        out: dict[str, list[int]] = {}
        for page in self._task_pages(pid, include="id,data"):
            for t in page:
                key = (t.get("data") or {}).get("camlabel_image_id")
                if key:
                    out.setdefault(str(key), []).append(int(t["id"]))
        return {key: sorted(ids) for key, ids in out.items()}

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

    # ------------------------------------------------------------------ pull cursor
    def _server_clock(self) -> str:
        """The server's clock minus the margin, in the Data Manager filter's format."""
        try:
            resp = self._raw("read the server clock", "GET", "/health")
            when = email.utils.parsedate_to_datetime(resp.headers["date"])
        except (KeyError, TypeError, ValueError):
            when = _dt.datetime.now(_dt.UTC)
        when = when.astimezone(_dt.UTC) - _dt.timedelta(seconds=self.cursor_margin_s)
        return when.strftime(_TS_FORMAT)


def _points_pct(exterior: Any, width: int, height: int) -> list[list[float]]:
    """``geometry.px_to_pct`` of a ledger polygon as lists, the same floats without numpy.

    A push builds one per polygon: plain Python is ~5x cheaper than an array round trip for
    a few dozen vertices. Anything unusual takes the validating numpy path (and its errors).
    """
    try:
        out = [[float(x) * 100.0 / width, float(y) * 100.0 / height] for x, y in exterior]
    except (TypeError, ValueError):
        out = []
    if not out or not all(math.isfinite(x) and math.isfinite(y) for x, y in out):
        from camlabel.geometry import px_to_pct

        return list(px_to_pct(np.asarray(exterior, dtype=np.float64), width, height).tolist())
    return out


class LazyUsers:
    """Annotator names (e-mail as Label Studio gives it, else the user id), fetched once if needed."""

    def __init__(self, backend: LabelStudioClient) -> None:
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
                # Plain JSON: the SDK's typed user models cost ~1 s to import and build.
                listed = self._backend._raw("list users", "GET", "/api/users/").json()
            except BackendError as exc:
                if isinstance(exc, BackendUnavailable):
                    raise
                listed = []
            except ValueError:
                listed = []
            if isinstance(listed, Mapping):  # a paginated answer
                listed = listed.get("results") or []
            for u in listed if isinstance(listed, list) else []:
                if isinstance(u, Mapping) and u.get("id") is not None:
                    self._names[int(u["id"])] = str(u.get("email") or u.get("username") or u["id"])
        try:
            return self._names.get(int(user), str(user))
        except (TypeError, ValueError):
            return str(user)


class LazyPredictions:
    """A project's predictions by task id, fetched once and only if an annotation needs them.

    The JSON export lists a task's predictions as ids; their regions are needed only to
    decide ``accepted_unchanged`` for an annotation whose regions all claim to come from a
    prediction and that does not embed the prediction it started from.
    """

    def __init__(self, backend: LabelStudioClient, pid: int) -> None:
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


def utc_timestamp(value: Any) -> str:
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
    return utc_timestamp(when)
