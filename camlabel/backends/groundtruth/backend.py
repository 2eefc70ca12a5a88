"""SageMaker Ground Truth backend: adjustment and polygon jobs seeded from Grad-CAM.

The only module that calls AWS for Ground Truth (through :mod:`camlabel.aws`); its siblings
are pure: ``settings`` (:class:`GroundTruthSettings`), ``plan`` (manifest, uploads and the
CreateLabelingJob request), ``convert`` (Ground Truth formats <-> masks and records) and
``validate`` (requests checked offline against botocore's model). It returns camlabel
records, never SDK objects.

**push** builds, per call, one labeling job over the images that have no Ground Truth job yet:

* uploads each display PNG to ``s3://BUCKET/PREFIX/images/<image_id>.png`` and, for
  ``adjustment`` jobs, the CAM mask as a Ground-Truth colour PNG
  (``PREFIX/cam-masks/<image_id>-<sha12>.png``, BACKGROUND ``#ffffff`` + the lesion colour);
  every PutObject carries server-side encryption (SSE-S3, or SSE-KMS with ``kms_key``) and a
  ``camlabel-sha256`` metadata key: an object already there with the same hash is not sent again;
* writes the input manifest (JSON Lines), the label categories and the worker template under
  ``PREFIX/jobs/<job>/``;
* names the job ``camlabel-<12 hex of the manifest hash>``: DescribeLabelingJob first, and only
  a ResourceNotFound leads to CreateLabelingJob, so a re-run creates no second job;
* validates every request offline against botocore's model (including pattern/min/max/enum)
  before anything is sent; ``dry_run`` writes the files and the request under
  ``WS/exports/groundtruth-<job>/`` and makes no network call at all.

``adjustment`` jobs use the built-in PRE-/ACS-AdjustmentSemanticSegmentation Lambdas of the
region (:data:`~camlabel.backends.groundtruth.plan.BUILTIN_LAMBDA_ACCOUNTS`); ``polygon`` jobs
use the two Lambdas of ``camlabel/lambdas`` deployed by the user (``pre_lambda_arn``,
``acs_lambda_arn``).

**pull** describes each job (InProgress/Stopped/Failed are reported, not raised), reads the
output manifest and turns each object into masks at the original resolution: semantic
segmentation colour PNGs through their ``internal-color-map``; crowd-polygon answers (pixel
vertices checked against ``inputImageProperties`` and the image bounds), one per worker from
``annotations/worker-response`` so that camlabel's consensus rule applies as for Label Studio.
A problem with one object (malformed line, unknown colour, vertex outside the image, missing
S3 object, unsupported task type) is one entry in ``PullReport.failures``; the others go on.

Settings (``flag > CAMLABEL_GT_<NAME> env > workspace "groundtruth" section > default``):
see :class:`GroundTruthSettings`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

import camlabel.backends.groundtruth.convert as conv
from camlabel import aws
from camlabel.backends.base import (
    AnnotationResult,
    Backend,
    OnPushed,
    PullReport,
    PushItem,
    PushReport,
    TaskOutcome,
)
from camlabel.backends.groundtruth.plan import JobPlan, Upload, build_plan, validate_create
from camlabel.backends.groundtruth.settings import GroundTruthSettings
from camlabel.backends.groundtruth.validate import validate_request
from camlabel.errors import (
    AnnotationError,
    BackendError,
    ValidationError,
)
from camlabel.records import Annotation, JobRef, utcnow

if TYPE_CHECKING:
    from camlabel.workspace import Workspace

HASH_METADATA_KEY = "camlabel-sha256"


def _split_s3_uri(uri: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:]:
        raise AnnotationError(f"not an s3:// object URI. Received: {uri!r:.120}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# ----------------------------------------------------------------------------- backend
class GroundTruthBackend(Backend):
    """Ground Truth labeling jobs over S3. ``sagemaker_client``/``s3_client`` may be injected
    (tests use botocore's Stubber for the labeling API, which moto does not implement)."""

    name = "groundtruth"
    settings_class: ClassVar[type] = GroundTruthSettings
    config_section: ClassVar[str | None] = "groundtruth"
    env_prefix: ClassVar[str | None] = "CAMLABEL_GT_"
    settings: GroundTruthSettings

    def __init__(
        self,
        workspace: Workspace,
        settings: GroundTruthSettings | None = None,
        *,
        sagemaker_client: Any = None,
        s3_client: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(workspace, settings, **options)
        self._clients: dict[tuple[str, str], Any] = {}
        if sagemaker_client is not None:
            self._clients[("sagemaker", "*")] = sagemaker_client
        if s3_client is not None:
            self._clients[("s3", "*")] = s3_client

    @classmethod
    def resolve_settings(
        cls, workspace: Workspace | None, flags: Mapping[str, Any]
    ) -> GroundTruthSettings:
        return GroundTruthSettings.resolve(workspace, flags)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.settings.public()}

    # -- AWS plumbing -----------------------------------------------------------------
    def _client(self, service: str, region: str | None = None) -> Any:
        region = region or self.settings.region
        for key in ((service, "*"), (service, region)):
            if key in self._clients:
                return self._clients[key]
        client = aws.client(
            service,
            region,
            endpoint_url=self.settings.endpoint_url,
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            max_attempts=self.settings.max_attempts,
        )
        self._clients[(service, region)] = client
        return client

    def _call(
        self,
        service: str,
        operation: str,
        region: str | None = None,
        *,
        what: str | None = None,
        missing: Collection[str] = (),
        **params: Any,
    ) -> Any:
        """Validate ``params`` offline, then call; AWS errors become camlabel errors.

        ``what`` names the call in errors (default ``service:operation``); a refusal whose
        code is in ``missing`` returns None (see :func:`camlabel.aws.call`).
        """
        validate_request(service, operation, params)
        method = getattr(self._client(service, region), _snake(operation))
        return aws.call(lambda: method(**params), what or f"{service}:{operation}", missing=missing)

    # -- push -----------------------------------------------------------------------------
    def push(
        self,
        items: Sequence[PushItem],
        *,
        dry_run: bool = False,
        progress: bool = True,
        on_pushed: OnPushed | None = None,
    ) -> PushReport:
        """Publish ``items`` (those without a Ground Truth job yet) as one labeling job."""
        report = PushReport()
        new: list[PushItem] = []
        # the manifest order is the labeling order: the selection's best first (if any)
        order = sorted(items, key=lambda i: (i.priority is None, -(i.priority or 0.0), i.image_id))
        for item in order:
            if item.existing is not None and item.existing.backend == self.name:
                report.already_present[item.image_id] = item.existing
            else:
                new.append(item)
        if not new:
            report.project = (
                next(iter(report.already_present.values())).project
                if report.already_present
                else ""
            )
            return report
        plan = self.plan(new)
        report.failures.extend(plan.failures)
        report.project = plan.job_name
        refs = {
            image_id: self._job_ref(plan, idx, image_id, new)
            for image_id, idx in plan.tasks.items()
        }
        report.details.update(
            {
                "job_name": plan.job_name,
                "job_type": plan.job_type,
                "label_attribute": plan.label_attribute,
                "manifest_uri": plan.request["InputConfig"]["DataSource"]["S3DataSource"][
                    "ManifestS3Uri"
                ],
                "output_uri": plan.request["OutputConfig"]["S3OutputPath"],
            }
        )
        if not refs:
            return report
        if dry_run:
            report.dry_run_files = self._write_dry_run(plan)
            try:
                validate_create(plan.request)
            except ValidationError as exc:
                report.failures.append(("CreateLabelingJob", str(exc)))
            report.pushed.update(refs)
            return report

        validate_create(plan.request)
        existing = self._describe_job(plan.job_name)
        if existing is not None:
            report.details["job_created"] = False
            report.details["job_status"] = existing.get("LabelingJobStatus")
            report.already_present.update(refs)
        else:
            uploaded, skipped = self._upload_all(plan.uploads, progress=progress)
            report.details.update({"uploaded": uploaded, "unchanged_objects": skipped})
            created = self._call(
                "sagemaker",
                "CreateLabelingJob",
                what=f"CreateLabelingJob {plan.job_name}",
                missing=("ResourceInUse",),
                **plan.request,
            )
            if created is None:
                # Another run created the same job between Describe and Create.
                report.details["job_created"] = False
                report.already_present.update(refs)
            else:
                report.details["job_created"] = True
                report.pushed.update(refs)
        if on_pushed is not None:
            on_pushed(
                {**report.pushed, **{k: v for k, v in report.already_present.items() if k in refs}}
            )
        return report

    def _job_ref(self, plan: JobPlan, idx: int, image_id: str, items: Sequence[PushItem]) -> JobRef:
        item = next(i for i in items if i.image_id == image_id)
        return JobRef(
            backend=self.name,
            project=plan.job_name,
            task=str(idx),
            extra={
                "bucket": self.settings.bucket,
                "prefix": self.settings.prefix,
                "job_type": plan.job_type,
                "label_attribute": plan.label_attribute,
                "region": self.settings.region,
                "width": item.width,
                "height": item.height,
            },
        )

    def plan(self, items: Sequence[PushItem]) -> JobPlan:
        """The uploads, manifest and CreateLabelingJob request for ``items`` (no network)."""
        return build_plan(self.settings, items)

    def _write_dry_run(self, plan: JobPlan) -> list[Path]:
        from camlabel.fileio import atomic_write_bytes, atomic_write_text

        folder = self.workspace.dir("exports") / f"groundtruth-{plan.job_name}"
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "input.manifest": plan.manifest,
            "categories.json": plan.categories,
            "template.liquid.html": plan.template,
        }
        written = []
        for name, body in files.items():
            atomic_write_bytes(folder / name, body)
            written.append(folder / name)
        req = folder / "create-labeling-job.json"
        atomic_write_text(req, json.dumps(plan.request, indent=2, sort_keys=True) + "\n")
        ups = folder / "uploads.json"
        listing = [
            {"key": u.key, "bytes": len(u.body), "sha256": u.sha256, "content_type": u.content_type}
            for u in plan.uploads
        ]
        atomic_write_text(
            ups, json.dumps({"bucket": self.settings.bucket, "objects": listing}, indent=2) + "\n"
        )
        return [*written, req, ups]

    def _describe_job(self, job: str, region: str | None = None) -> dict[str, Any] | None:
        """DescribeLabelingJob; None when the job does not exist."""
        resp = self._call(
            "sagemaker",
            "DescribeLabelingJob",
            region,
            what=f"DescribeLabelingJob {job}",
            missing=("ResourceNotFound", "ResourceNotFoundException"),
            LabelingJobName=job,
        )
        return None if resp is None else dict(resp)

    def _upload_all(self, uploads: Sequence[Upload], *, progress: bool) -> tuple[int, int]:
        from camlabel.progress import progress_bar

        uploaded = skipped = 0
        with progress_bar(total=len(uploads), desc="upload to S3", enabled=progress) as bar:
            for up in uploads:
                if self._same_object_exists(up):
                    skipped += 1
                else:
                    self._put(up)
                    uploaded += 1
                bar.update(1)
        return uploaded, skipped

    def _same_object_exists(self, up: Upload) -> bool:
        head = self._call(
            "s3",
            "HeadObject",
            what=f"HeadObject s3://{self.settings.bucket}/{up.key}",
            missing=_NO_SUCH_KEY,
            Bucket=self.settings.bucket,
            Key=up.key,
        )
        if head is None:
            return False
        return bool(head.get("Metadata", {}).get(HASH_METADATA_KEY) == up.sha256)

    def _put(self, up: Upload) -> None:
        params: dict[str, Any] = {
            "Bucket": self.settings.bucket,
            "Key": up.key,
            "Body": up.body,
            "ContentType": up.content_type,
            "Metadata": {HASH_METADATA_KEY: up.sha256},
        }
        if self.settings.kms_key:
            params["ServerSideEncryption"] = "aws:kms"
            params["SSEKMSKeyId"] = self.settings.kms_key
        else:
            params["ServerSideEncryption"] = "AES256"
        self._call(
            "s3", "PutObject", what=f"PutObject s3://{self.settings.bucket}/{up.key}", **params
        )

    # -- pull -----------------------------------------------------------------------------
    def pull(
        self,
        jobs: Mapping[str, JobRef],
        *,
        cursor: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> PullReport:
        """Read every job's output manifest (a job whose manifest is unchanged since the last
        complete pull is skipped) and return one outcome per object found."""
        report = PullReport()
        seen = dict((cursor or {}).get("jobs") or {})
        by_job: dict[str, dict[str, JobRef]] = {}
        for image_id, ref in jobs.items():
            by_job.setdefault(ref.project, {})[image_id] = ref
        new_cursor: dict[str, Any] = {}
        for job, refs in sorted(by_job.items()):
            state = self._pull_job(job, refs, seen.get(job), report, progress=progress)
            if state is not None:
                new_cursor[job] = state
        report.cursor = {"jobs": new_cursor}
        return report

    def _pull_job(
        self,
        job: str,
        refs: Mapping[str, JobRef],
        previous: Mapping[str, Any] | None,
        report: PullReport,
        *,
        progress: bool,
    ) -> dict[str, Any] | None:
        any_ref = next(iter(refs.values()))
        # An explicit --region wins over the region recorded at push time.
        region = str(
            self.options.get("region") or any_ref.extra.get("region") or self.settings.region
        )
        desc = self._describe_job(job, region)
        if desc is None:
            msg = f"labeling job {job} does not exist in region {region}"
            report.failures.append((job, msg + " (wrong --region or account?)"))
            for image_id, ref in refs.items():
                report.outcomes.append(TaskOutcome(image_id, ref, "failed", message=msg))
            return None
        status = str(desc.get("LabelingJobStatus"))
        counters = desc.get("LabelCounters") or {}
        progress_text = (
            f"{counters.get('TotalLabeled', 0)} labeled (human {counters.get('HumanLabeled', 0)}, "
            f"machine {counters.get('MachineLabeled', 0)}), {counters.get('Unlabeled', 0)} unlabeled, "
            f"{counters.get('FailedNonRetryableError', 0)} failed"
        )
        if status == "Failed":
            reason = str(desc.get("FailureReason") or "no reason given")
            report.failures.append((job, f"labeling job {job} failed: {reason}"))
            for image_id, ref in refs.items():
                report.outcomes.append(
                    TaskOutcome(image_id, ref, "failed", message=f"job failed: {reason}")
                )
            return None
        output_uri = (desc.get("LabelingJobOutput") or {}).get("OutputDatasetS3Uri")
        if status != "Completed" and not (status in ("Stopped", "Stopping") and output_uri):
            msg = f"labeling job {job} is {status}: {progress_text}"
            if status in ("Stopped", "Stopping"):
                msg += "; it was stopped before any output was written"
            for image_id, ref in refs.items():
                report.outcomes.append(TaskOutcome(image_id, ref, "unannotated", message=msg))
            return None
        if not output_uri:
            report.failures.append(
                (job, f"labeling job {job} is {status} but has no OutputDatasetS3Uri")
            )
            return None
        label_attr = str(desc.get("LabelAttributeName") or any_ref.extra.get("label_attribute"))
        try:
            bucket, key = _split_s3_uri(output_uri)
            body, etag = self._get(bucket, key)
        except (AnnotationError, BackendError) as exc:
            report.failures.append(
                (job, f"cannot read the output manifest {output_uri}: {exc.message}")
            )
            return None
        state = {"etag": etag, "status": status, "complete": False}
        if (
            previous
            and previous.get("etag") == etag
            and previous.get("complete")
            and status == "Completed"
        ):
            return dict(previous)
        root = (
            output_uri.rsplit("/manifests/output/", 1)[0]
            if "/manifests/output/" in output_uri
            else None
        )
        n_fail = len(report.failures)
        self._convert_manifest(
            job,
            refs,
            body.decode("utf-8", errors="replace"),
            label_attr,
            root,
            status,
            report,
            progress=progress,
        )
        state["complete"] = len(report.failures) == n_fail and status == "Completed"
        return state

    def _get(self, bucket: str, key: str) -> tuple[bytes, str]:
        resp = self._call(
            "s3",
            "GetObject",
            what=f"GetObject s3://{bucket}/{key}",
            missing=_NO_SUCH_KEY,
            Bucket=bucket,
            Key=key,
        )
        if resp is None:
            raise AnnotationError(f"the S3 object s3://{bucket}/{key} does not exist")
        return resp["Body"].read(), str(resp.get("ETag", ""))

    def _list(self, bucket: str, prefix: str) -> Iterator[str]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            resp = self._call(
                "s3", "ListObjectsV2", what=f"ListObjectsV2 s3://{bucket}/{prefix}", **params
            )
            for obj in resp.get("Contents", []):
                yield obj["Key"]
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def _worker_files(self, root: str | None) -> dict[int, list[str]]:
        """``{dataset object index: [worker-response keys]}`` under the job's output root."""
        if root is None:
            return {}
        bucket, prefix = _split_s3_uri(root.rstrip("/") + "/annotations/worker-response/")
        out: dict[int, list[str]] = {}
        for key in self._list(bucket, prefix):
            parts = key[len(prefix) :].split("/")
            if len(parts) >= 3 and parts[0].startswith("iteration-") and parts[1].isdigit():
                out.setdefault(int(parts[1]), []).append(f"s3://{bucket}/{key}")
        return out

    def _worker_answers(self, uris: Sequence[str]) -> list[conv.WorkerAnswer]:
        answers: list[conv.WorkerAnswer] = []
        for uri in sorted(uris):
            bucket, key = _split_s3_uri(uri)
            body, _ = self._get(bucket, key)
            try:
                answers.extend(conv.parse_worker_response(body.decode("utf-8")))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise AnnotationError(
                    f"the worker response {uri} is not valid JSON: {exc}"
                ) from exc
        return conv.latest_per_worker(answers)

    def _convert_manifest(
        self,
        job: str,
        refs: Mapping[str, JobRef],
        text: str,
        label_attr: str,
        root: str | None,
        status: str,
        report: PullReport,
        *,
        progress: bool,
    ) -> None:
        from camlabel.progress import progress_bar

        lines, problems = conv.parse_output_manifest(text, label_attr)
        by_task = {str(ref.task): image_id for image_id, ref in refs.items()}
        for idx, problem in problems:
            who = by_task.get(str(idx))
            report.failures.append(
                (f"{who[:12] if who else job} (job {job} line {idx + 1})", problem)
            )
        try:
            workers = self._worker_files(root)
        except BackendError as exc:
            report.failures.append((job, f"cannot list the worker responses: {exc.message}"))
            workers = {}
        found: set[str] = set()
        with progress_bar(total=len(lines), desc=f"read {job}", enabled=progress) as bar:
            for line in lines:
                bar.update(1)
                image_id = line.image_id or by_task.get(str(line.index))
                if image_id is None or image_id not in refs:
                    continue
                found.add(image_id)
                ref = refs[image_id]
                task_idx = (
                    int(ref.task)
                    if ref.task is not None and str(ref.task).isdigit()
                    else line.index
                )
                where = f"{image_id[:12]} (job {job} line {line.index + 1})"
                try:
                    outcome = self._convert_line(
                        job, ref, image_id, line, workers.get(task_idx, [])
                    )
                except (AnnotationError, BackendError) as exc:
                    report.failures.append((where, exc.message))
                    continue
                report.outcomes.append(outcome)
        missing = sorted(set(refs) - found - {by_task.get(str(i)) for i, _ in problems})
        for image_id in missing:
            report.failures.append(
                (
                    f"{image_id[:12]} (job {job})",
                    f"not in the output manifest of {job} (status {status})",
                )
            )

    def _size(self, image_id: str, ref: JobRef) -> tuple[int, int] | None:
        h, w = ref.extra.get("height"), ref.extra.get("width")
        if isinstance(h, int) and isinstance(w, int):
            return h, w
        rec = self.workspace.ledger.get(image_id)
        return (rec.height, rec.width) if rec is not None else None

    def _convert_line(
        self,
        job: str,
        ref: JobRef,
        image_id: str,
        line: conv.OutputLine,
        worker_uris: Sequence[str],
    ) -> TaskOutcome:
        reason = line.failure_reason
        if reason:
            return TaskOutcome(
                image_id, ref, "failed", message=f"Ground Truth could not label it: {reason}"
            )
        unsupported = conv.unsupported_reason(line)
        if unsupported:
            raise AnnotationError(unsupported)
        value = line.value
        size = self._size(image_id, ref)
        # Semantic segmentation is the only supported task type whose attribute ends in -ref.
        if line.task_type in conv.SEMSEG_TYPES or line.label_attribute.endswith("-ref"):
            if value is None:
                return TaskOutcome(image_id, ref, "unannotated", message="no label yet")
            return self._semseg(job, ref, image_id, line, size, worker_uris)
        return self._polygons(job, ref, image_id, line, size, worker_uris)

    def _semseg(
        self,
        job: str,
        ref: JobRef,
        image_id: str,
        line: conv.OutputLine,
        size: tuple[int, int] | None,
        worker_uris: Sequence[str],
    ) -> TaskOutcome:
        md = line.metadata
        cmap = md.get("internal-color-map")
        bucket, key = _split_s3_uri(str(line.value))
        data, _ = self._get(bucket, key)
        mask = conv.lesion_mask_from_png(data, cmap, self.settings.label, size)
        try:
            answers = self._worker_answers(worker_uris) if worker_uris else []
        except (AnnotationError, BackendError):
            answers = []  # raw responses only feed telemetry; the consolidated mask stands
        when = conv.iso_utc(md.get("creation-date"), utcnow())
        spent = [a.time_spent_s for a in answers if a.time_spent_s is not None]
        modified = [a.find("initialValueModified") for a in answers]
        modified = [m for m in modified if isinstance(m, bool)]
        if modified:
            accepted: bool | None = not any(modified)
        elif md.get("adjustment-status") in ("adjusted", "unadjusted"):
            accepted = md["adjustment-status"] == "unadjusted"
        else:
            accepted = None
        annotator = answers[0].worker_id if len(answers) == 1 else "consolidated"
        ann = Annotation(
            backend=self.name,
            annotation_id=f"{job}/{line.index}",
            annotator=annotator,
            status="submitted",
            created_at=when,
            updated_at=when,
            has_brush=True,
            lead_time_s=float(np.mean(spent)) if spent else None,
            accepted_unchanged=accepted,
        )
        return TaskOutcome(image_id, ref, "annotated", (AnnotationResult(ann, mask),))

    def _polygons(
        self,
        job: str,
        ref: JobRef,
        image_id: str,
        line: conv.OutputLine,
        size: tuple[int, int] | None,
        worker_uris: Sequence[str],
    ) -> TaskOutcome:
        prior = line.data.get(conv.PRIOR_POLYGON_ATTRIBUTE)
        prior_polys = None
        if isinstance(prior, Mapping):
            prior_polys = (prior.get("annotatedResult") or prior).get("polygons")
        where = f"job {job} object {line.index}"
        results: list[AnnotationResult] = []
        answers = self._worker_answers(worker_uris) if worker_uris else []
        if answers:
            for a in answers:
                result = a.content.get("annotatedResult", a.content)
                results.append(
                    self._polygon_result(
                        job, line, a.worker_id, result, a, prior_polys, size, where
                    )
                )
        elif isinstance(line.value, Mapping) and isinstance(line.value.get("workers"), list):
            for w in line.value["workers"]:
                if not isinstance(w, Mapping):
                    raise AnnotationError(f"{where}: a 'workers' entry is not an object: {w!r:.80}")
                wid = str(w.get("workerId") or "unknown")
                results.append(
                    self._polygon_result(
                        job, line, wid, w.get("annotatedResult"), None, prior_polys, size, where
                    )
                )
        elif isinstance(line.value, Mapping) and (
            "annotatedResult" in line.value or "polygons" in line.value
        ):
            result = line.value.get("annotatedResult", line.value)
            results.append(
                self._polygon_result(
                    job, line, "consolidated", result, None, prior_polys, size, where
                )
            )
        if not results:
            return TaskOutcome(image_id, ref, "unannotated", message="no worker answer yet")
        return TaskOutcome(image_id, ref, "annotated", tuple(results))

    def _polygon_result(
        self,
        job: str,
        line: conv.OutputLine,
        worker_id: str,
        result: Any,
        answer: conv.WorkerAnswer | None,
        prior_polys: Any,
        size: tuple[int, int] | None,
        where: str,
    ) -> AnnotationResult:
        polygons, mask = conv.answer_polygons(
            result, self.settings.label, size, f"{where} worker {worker_id}"
        )
        default = conv.iso_utc(
            line.metadata.get("creation-date") or line.metadata.get("creation_date"), utcnow()
        )
        updated = conv.iso_utc(answer.submission_time, default) if answer else default
        created = conv.iso_utc(answer.acceptance_time, updated) if answer else updated
        accepted: bool | None = None
        modified = answer.find("initialValueModified") if answer else None
        if isinstance(modified, bool):
            accepted = not modified
        elif isinstance(prior_polys, list) and isinstance(result, Mapping):
            accepted = conv.same_polygons(prior_polys, result.get("polygons") or [])
        ann = Annotation(
            backend=self.name,
            annotation_id=f"{job}/{line.index}/{worker_id}",
            annotator=worker_id,
            status="submitted",
            created_at=created,
            updated_at=updated,
            polygons=tuple(polygons),
            lead_time_s=answer.time_spent_s if answer else None,
            accepted_unchanged=accepted,
        )
        return AnnotationResult(ann, mask)


#: The codes of S3's answer for an absent object (HeadObject has no body, so only "404").
_NO_SUCH_KEY = ("404", "NoSuchKey", "NotFound")


def _snake(operation: str) -> str:
    from botocore import xform_name

    return str(xform_name(operation))


__all__ = ["GroundTruthBackend"]
