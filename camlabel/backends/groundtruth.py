"""SageMaker Ground Truth backend: adjustment and polygon jobs seeded from Grad-CAM.

The only module (with its helpers ``_gt_convert`` and ``_botocore_validate``) that talks to
AWS. It returns camlabel records, never SDK objects.

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
region (:data:`BUILTIN_LAMBDA_ACCOUNTS`); ``polygon`` jobs use the two Lambdas of
``camlabel/lambdas`` deployed by the user (``pre_lambda_arn``, ``acs_lambda_arn``).

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

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from camlabel.backends import _gt_convert as conv
from camlabel.backends._botocore_validate import validate_request
from camlabel.backends.base import (
    AnnotationResult,
    Backend,
    OnPushed,
    PullReport,
    PushItem,
    PushReport,
    TaskOutcome,
)
from camlabel.config import DEFAULT_AWS_REGION, DEFAULT_S3_PREFIX, resolve, setting
from camlabel.errors import (
    AnnotationError,
    BackendError,
    BackendUnavailable,
    CamlabelError,
    ConfigError,
    ValidationError,
)
from camlabel.records import Annotation, JobRef, utcnow

if TYPE_CHECKING:
    from camlabel.workspace import Workspace

JOB_TYPES = ("adjustment", "polygon")
HASH_METADATA_KEY = "camlabel-sha256"
JOB_NAME_PREFIX = "camlabel-"

#: AWS account that owns the built-in Ground Truth Lambdas, per region, as listed in the
#: PreHumanTaskLambdaArn / AnnotationConsolidationLambdaArn documentation of botocore's
#: CreateLabelingJob model (a unit test checks this table against it).
BUILTIN_LAMBDA_ACCOUNTS: dict[str, str] = {
    "us-east-1": "432418664414",
    "us-east-2": "266458841044",
    "us-west-2": "081040173940",
    "ca-central-1": "918755190332",
    "eu-west-1": "568282634449",
    "eu-west-2": "487402164563",
    "eu-central-1": "203001061592",
    "ap-northeast-1": "477331159723",
    "ap-northeast-2": "845288260483",
    "ap-south-1": "565803892007",
    "ap-southeast-1": "377565633583",
    "ap-southeast-2": "454466003867",
}
ADJUSTMENT_TASK = "AdjustmentSemanticSegmentation"


def builtin_lambda_arn(kind: str, task: str, region: str) -> str:
    """``arn:aws:lambda:<region>:<account>:function:<kind>-<task>`` of a built-in Lambda."""
    if kind not in ("PRE", "ACS"):
        raise ValueError(f"kind must be 'PRE' or 'ACS'. Received: {kind!r}")
    try:
        account = BUILTIN_LAMBDA_ACCOUNTS[region]
    except KeyError:
        raise ConfigError(
            f"Ground Truth's built-in Lambdas are not offered in region {region!r}; "
            f"supported regions: {sorted(BUILTIN_LAMBDA_ACCOUNTS)}",
            hint="pass --region with one of these (the bucket should be in the same region)",
        ) from None
    return f"arn:aws:lambda:{region}:{account}:function:{kind}-{task}"


def job_name_for(manifest: bytes, job_type: str, label: str) -> str:
    """``camlabel-<12 hex>`` from the manifest content (and job type and label): stable across re-runs."""
    h = hashlib.sha256(f"{job_type}\n{label}\n".encode() + manifest).hexdigest()
    return f"{JOB_NAME_PREFIX}{h[:12]}"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class GroundTruthSettings:
    """Everything push and pull need. No secret: credentials come from the AWS chain.

    Attributes:
        bucket, prefix: where images, manifests, templates and outputs go.
        region: the job's region (also picks the built-in Lambdas).
        job_type: ``adjustment`` (CAM mask, built-in Lambdas) or ``polygon`` (custom Lambdas).
        role_arn: the IAM role Ground Truth assumes; workteam_arn: private or vendor workteam.
        kms_key: KMS key id/ARN for SSE-KMS of uploads and job output (SSE-S3 without it).
        pre_lambda_arn, acs_lambda_arn: the polygon job's Lambdas (camlabel/lambdas).
        endpoint_url: an S3/SageMaker endpoint (tests: moto); AWS_ENDPOINT_URL also works.
        label, lesion_color: the label annotators see and its colour in adjustment masks.
        workers_per_object, task_time_limit, task_availability, max_concurrent_tasks,
        task_title, task_description, keywords: HumanTaskConfig values.
        connect_timeout, read_timeout, max_attempts: every AWS call is bounded.
    """

    bucket: str | None = setting(None, flag="--bucket", help="S3 bucket.")
    prefix: str = setting(DEFAULT_S3_PREFIX, flag="--prefix", help="S3 key prefix.")
    region: str = setting(
        DEFAULT_AWS_REGION,
        flag="--region",
        commands=("push-jobs", "pull-masks"),
        help="AWS region.",
    )
    job_type: str = setting(
        "adjustment",
        flag="--job-type",
        choices=JOB_TYPES,
        help="adjustment (CAM mask) or polygon job.",
    )
    role_arn: str | None = setting(None, flag="--role-arn", help="IAM role Ground Truth assumes.")
    workteam_arn: str | None = setting(
        None, flag="--workteam-arn", help="private or vendor workteam."
    )
    kms_key: str | None = setting(
        None, flag="--kms-key", help="KMS key id for SSE-KMS (default SSE-S3)."
    )
    pre_lambda_arn: str | None = setting(
        None,
        flag="--pre-lambda-arn",
        cli_tag="groundtruth polygon",
        help="pre-annotation Lambda ARN.",
    )
    acs_lambda_arn: str | None = setting(
        None,
        flag="--acs-lambda-arn",
        cli_tag="groundtruth polygon",
        help="consolidation Lambda ARN.",
    )
    endpoint_url: str | None = setting(None)
    label: str = setting("Opacity")
    lesion_color: str = setting(conv.DEFAULT_LESION_HEX)
    workers_per_object: int = setting(1)
    task_time_limit: int = setting(3600)
    task_availability: int = setting(864000)
    max_concurrent_tasks: int | None = setting(None)
    task_title: str = setting("Correct the lesion outline on chest X-rays")
    task_description: str = setting(
        "An automatic lesion outline (from a classifier's attention map) is shown on a chest "
        "X-ray: keep what covers real opacities, remove the rest, add what is missing."
    )
    keywords: tuple[str, ...] = setting(("Image Segmentation", "chest xray", "medical imaging"))
    connect_timeout: float = setting(10.0)
    read_timeout: float = setting(60.0)
    max_attempts: int = setting(3)

    @classmethod
    def resolve(
        cls, workspace: Workspace | None, options: Mapping[str, Any]
    ) -> GroundTruthSettings:
        """flag (``options``) > ``CAMLABEL_GT_<NAME>`` env > workspace config > default.

        ``label`` defaults to the workspace's ``lesion_label``, and ``max_attempts`` to
        ``$AWS_MAX_ATTEMPTS`` when neither a flag, ``CAMLABEL_GT_MAX_ATTEMPTS`` nor the
        file sets it.
        """
        section: dict[str, Any] = {}
        if workspace is not None:
            section = dict(workspace.config.get("groundtruth") or {})
            section.setdefault("label", workspace.config.get("lesion_label"))
        if os.environ.get("AWS_MAX_ATTEMPTS"):
            section.setdefault("max_attempts", os.environ["AWS_MAX_ATTEMPTS"])
        settings = resolve(cls, options, section, "CAMLABEL_GT_", section="groundtruth")
        if settings.job_type not in JOB_TYPES:
            raise ConfigError(
                f"Wrong Ground Truth job type {settings.job_type!r}, supported job types: {list(JOB_TYPES)}",
                hint="pass --job-type adjustment (CAM mask, built-in Lambdas) or --job-type polygon",
            )
        return dataclasses.replace(settings, prefix=settings.prefix.strip("/"))

    def public(self) -> dict[str, Any]:
        """Secret-free summary (no ARNs beyond what identifies the job setup)."""
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "job_type": self.job_type,
        }


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class _Upload:
    key: str
    body: bytes
    content_type: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class JobPlan:
    """What one push would send: uploads, manifest, request; built without any network call."""

    job_name: str
    job_type: str
    label_attribute: str
    manifest: bytes
    categories: bytes
    template: bytes
    request: dict[str, Any]
    uploads: list[_Upload]
    tasks: dict[str, int]
    failures: list[tuple[str, str]] = field(default_factory=list)


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


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
        import boto3
        from botocore.config import Config

        cfg = Config(
            region_name=region,
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            retries={"max_attempts": self.settings.max_attempts, "mode": "standard"},
        )
        client = boto3.session.Session().client(
            service, endpoint_url=self.settings.endpoint_url, config=cfg
        )
        self._clients[(service, region)] = client
        return client

    def _call(self, service: str, operation: str, region: str | None = None, **params: Any) -> Any:
        """Validate ``params`` offline, then call; AWS errors become camlabel errors."""
        from botocore.exceptions import (
            BotoCoreError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        validate_request(service, operation, params)
        client = self._client(service, region)
        method = getattr(client, _snake(operation))
        try:
            return method(**params)
        except NoCredentialsError as exc:
            raise ConfigError(
                f"no AWS credentials for {service}:{operation}",
                hint="configure credentials (AWS_PROFILE, aws sso login, an instance role...)",
            ) from exc
        except (EndpointConnectionError, ConnectionError, ReadTimeoutError) as exc:
            raise BackendUnavailable(
                f"{service}:{operation} failed: {exc}",
                hint="check the network, --region and --endpoint-url / AWS_ENDPOINT_URL",
            ) from exc
        except BotoCoreError as exc:
            raise BackendError(f"{service}:{operation} failed: {exc}") from exc

    def _client_error(self, exc: Any, what: str) -> BackendError:
        err = exc.response.get("Error", {})
        code, msg = err.get("Code", "?"), err.get("Message", "")
        hint = None
        if code in ("AccessDenied", "AccessDeniedException", "403"):
            hint = "the credentials (or the job's role) lack a permission: see docs/groundtruth.md (IAM)"
        return BackendError(f"{what}: {code}: {msg}".rstrip(": "), hint=hint)

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
        for item in sorted(items, key=lambda i: i.image_id):
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
                self._validate_create(plan.request)
            except ValidationError as exc:
                report.failures.append(("CreateLabelingJob", str(exc)))
            report.pushed.update(refs)
            return report

        self._validate_create(plan.request)
        existing = self._describe_job(plan.job_name)
        if existing is not None:
            report.details["job_created"] = False
            report.details["job_status"] = existing.get("LabelingJobStatus")
            report.already_present.update(refs)
        else:
            uploaded, skipped = self._upload_all(plan.uploads, progress=progress)
            report.details.update({"uploaded": uploaded, "unchanged_objects": skipped})
            try:
                self._call("sagemaker", "CreateLabelingJob", **plan.request)
            except Exception as exc:
                if not _is_client_error(exc):
                    raise
                code = exc.response.get("Error", {}).get("Code")  # type: ignore[attr-defined]
                if code != "ResourceInUse":
                    raise self._client_error(exc, f"CreateLabelingJob {plan.job_name}") from exc
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

    def _validate_create(self, request: Mapping[str, Any]) -> None:
        """Offline check of CreateLabelingJob; the hint names the flags behind the bad fields."""
        try:
            validate_request("sagemaker", "CreateLabelingJob", request)
        except ValidationError as exc:
            flags = [flag for field_name, flag in _FIELD_FLAGS.items() if field_name in exc.message]
            hint = (
                f"check {', '.join(flags)} (flag, CAMLABEL_GT_* variable or camlabel.json)"
                if flags
                else exc.hint
            )
            raise ValidationError(exc.message, hint=hint) from None

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
        """Build the uploads, manifest and CreateLabelingJob request for ``items`` (no network)."""
        from camlabel.resources import template_path

        s = self.settings
        if not s.bucket:
            raise ConfigError(
                "Ground Truth needs an S3 bucket",
                hint="pass --bucket, set CAMLABEL_GT_BUCKET, or set groundtruth.bucket in camlabel.json",
            )
        job_type = s.job_type
        label_attr = conv.LABEL_ATTRIBUTE[job_type]
        cmap = conv.color_map_for(s.label, s.lesion_color)
        uploads: dict[str, _Upload] = {}
        lines: list[bytes] = []
        tasks: dict[str, int] = {}
        failures: list[tuple[str, str]] = []
        for item in items:
            try:
                image_up, line = self._manifest_line(item, job_type, cmap, uploads)
            except CamlabelError as exc:
                failures.append((item.image_id[:12], exc.message))
                continue
            except OSError as exc:
                failures.append(
                    (item.image_id[:12], f"cannot read {item.display_png}: {exc.strerror or exc}")
                )
                continue
            encoded = json.dumps(line, sort_keys=True, separators=(",", ":")).encode()
            if len(encoded) > conv.MAX_LINE_CHARS:
                failures.append(
                    (
                        item.image_id[:12],
                        f"its manifest line has {len(encoded)} characters; Ground Truth allows "
                        f"{conv.MAX_LINE_CHARS} (simplify the pre-annotation: fewer vertices)",
                    )
                )
                continue
            uploads.update(image_up)
            tasks[item.image_id] = len(lines)
            lines.append(encoded)
        manifest = b"\n".join(lines) + b"\n" if lines else b""
        job = job_name_for(manifest, job_type, s.label)
        base = f"{s.prefix}/jobs/{job}" if s.prefix else f"jobs/{job}"
        categories = (
            json.dumps({"document-version": "2018-11-28", "labels": [{"label": s.label}]}, indent=2)
            + "\n"
        ).encode()
        template = template_path("groundtruth", f"{job_type}.liquid.html").read_bytes()
        uploads[f"{base}/input.manifest"] = _Upload(
            f"{base}/input.manifest", manifest, "application/x-ndjson"
        )
        uploads[f"{base}/categories.json"] = _Upload(
            f"{base}/categories.json", categories, "application/json"
        )
        uploads[f"{base}/template.liquid.html"] = _Upload(
            f"{base}/template.liquid.html", template, "text/html"
        )
        request = self._request(job, label_attr, base, manifest)
        return JobPlan(
            job_name=job,
            job_type=job_type,
            label_attribute=label_attr,
            manifest=manifest,
            categories=categories,
            template=template,
            request=request,
            uploads=list(uploads.values()),
            tasks=tasks,
            failures=failures,
        )

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.settings.prefix, *parts) if p)

    def _manifest_line(
        self, item: PushItem, job_type: str, cmap: dict[str, Any], uploads: Mapping[str, _Upload]
    ) -> tuple[dict[str, _Upload], dict[str, Any]]:
        s = self.settings
        assert s.bucket is not None
        out: dict[str, _Upload] = {}
        image_key = self._key("images", f"{item.image_id}.png")
        if image_key not in uploads:
            out[image_key] = _Upload(image_key, Path(item.display_png).read_bytes(), "image/png")
        polygons = list(item.preannotation.polygons) if item.preannotation is not None else []
        line: dict[str, Any] = {
            "source-ref": _s3_uri(s.bucket, image_key),
            conv.IMAGE_ID_KEY: item.image_id,
        }
        source = item.preannotation.source if item.preannotation is not None else "none"
        created = (
            item.preannotation.created_at
            if item.preannotation is not None
            else "1970-01-01T00:00:00Z"
        )
        if job_type == "adjustment":
            from camlabel.geometry import PolygonPx, polygons_to_mask

            mask = polygons_to_mask(
                [PolygonPx.from_json(p) for p in polygons], item.height, item.width
            )
            png = conv.class_mask_to_png(np.asarray(mask, dtype=np.uint8), cmap)
            mask_key = self._key(
                "cam-masks", f"{item.image_id}-{hashlib.sha256(png).hexdigest()[:12]}.png"
            )
            out[mask_key] = _Upload(mask_key, png, "image/png")
            attr = conv.PRIOR_MASK_ATTRIBUTE
            line[attr] = _s3_uri(s.bucket, mask_key)
            line[f"{attr}-metadata"] = {
                "internal-color-map": cmap,
                "type": "groundtruth/semantic-segmentation",
                "human-annotated": "no",
                "creation-date": created.rstrip("Z"),
                "job-name": f"labeling-job/camlabel-{source}",
            }
        else:
            attr = conv.PRIOR_POLYGON_ATTRIBUTE
            line[conv.LABELS_KEY] = [s.label]
            line[attr] = {
                "annotatedResult": {
                    "inputImageProperties": {"height": item.height, "width": item.width},
                    "polygons": conv.preannotation_vertices(polygons, s.label),
                }
            }
            line[f"{attr}-metadata"] = {
                "type": "groundtruth/custom",
                "human-annotated": "no",
                "creation-date": created.rstrip("Z"),
                "job-name": f"labeling-job/camlabel-{source}",
            }
        return out, line

    def _request(self, job: str, label_attr: str, base: str, manifest: bytes) -> dict[str, Any]:
        s = self.settings
        assert s.bucket is not None
        if s.job_type == "adjustment":
            pre = builtin_lambda_arn("PRE", ADJUSTMENT_TASK, s.region)
            acs = builtin_lambda_arn("ACS", ADJUSTMENT_TASK, s.region)
        else:
            missing = [n for n in ("pre_lambda_arn", "acs_lambda_arn") if not getattr(s, n)]
            if missing:
                raise ConfigError(
                    f"polygon jobs need camlabel's two Lambdas: {', '.join(missing)} not set",
                    hint="deploy camlabel/lambdas/gt_polygon_pre.py and gt_polygon_consolidate.py "
                    "(docs/groundtruth.md) and pass --pre-lambda-arn/--acs-lambda-arn",
                )
            pre, acs = str(s.pre_lambda_arn), str(s.acs_lambda_arn)
        output: dict[str, Any] = {"S3OutputPath": _s3_uri(s.bucket, self._key("output") + "/")}
        if s.kms_key:
            output["KmsKeyId"] = s.kms_key
        human: dict[str, Any] = {
            "UiConfig": {"UiTemplateS3Uri": _s3_uri(s.bucket, f"{base}/template.liquid.html")},
            "PreHumanTaskLambdaArn": pre,
            "TaskKeywords": list(s.keywords),
            "TaskTitle": s.task_title,
            "TaskDescription": s.task_description,
            "NumberOfHumanWorkersPerDataObject": s.workers_per_object,
            "TaskTimeLimitInSeconds": s.task_time_limit,
            "TaskAvailabilityLifetimeInSeconds": s.task_availability,
            "AnnotationConsolidationConfig": {"AnnotationConsolidationLambdaArn": acs},
        }
        if s.workteam_arn:
            human["WorkteamArn"] = s.workteam_arn
        if s.max_concurrent_tasks:
            human["MaxConcurrentTaskCount"] = s.max_concurrent_tasks
        request: dict[str, Any] = {
            "LabelingJobName": job,
            "LabelAttributeName": conv.LABEL_ATTRIBUTE[s.job_type],
            "InputConfig": {
                "DataSource": {
                    "S3DataSource": {"ManifestS3Uri": _s3_uri(s.bucket, f"{base}/input.manifest")}
                }
            },
            "OutputConfig": output,
            "LabelCategoryConfigS3Uri": _s3_uri(s.bucket, f"{base}/categories.json"),
            "HumanTaskConfig": human,
            "Tags": [
                {"Key": "camlabel:job-type", "Value": s.job_type},
                {"Key": "camlabel:manifest-sha256", "Value": hashlib.sha256(manifest).hexdigest()},
            ],
        }
        if s.role_arn:
            request["RoleArn"] = s.role_arn
        return request

    def _write_dry_run(self, plan: JobPlan) -> list[Path]:
        from camlabel.ledger import atomic_write_bytes, atomic_write_text

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
        try:
            resp = self._call("sagemaker", "DescribeLabelingJob", region, LabelingJobName=job)
        except Exception as exc:
            if _is_client_error(exc):
                code = exc.response.get("Error", {}).get("Code")  # type: ignore[attr-defined]
                if code in ("ResourceNotFound", "ResourceNotFoundException"):
                    return None
                raise self._client_error(exc, f"DescribeLabelingJob {job}") from exc
            raise
        return dict(resp)

    def _upload_all(self, uploads: Sequence[_Upload], *, progress: bool) -> tuple[int, int]:
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

    def _same_object_exists(self, up: _Upload) -> bool:
        try:
            head = self._call("s3", "HeadObject", Bucket=self.settings.bucket, Key=up.key)
        except Exception as exc:
            if _is_client_error(exc):
                code = str(exc.response.get("Error", {}).get("Code"))  # type: ignore[attr-defined]
                if code in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise self._client_error(
                    exc, f"HeadObject s3://{self.settings.bucket}/{up.key}"
                ) from exc
            raise
        return bool(head.get("Metadata", {}).get(HASH_METADATA_KEY) == up.sha256)

    def _put(self, up: _Upload) -> None:
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
        try:
            self._call("s3", "PutObject", **params)
        except Exception as exc:
            if _is_client_error(exc):
                raise self._client_error(
                    exc, f"PutObject s3://{self.settings.bucket}/{up.key}"
                ) from exc
            raise

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
        try:
            resp = self._call("s3", "GetObject", Bucket=bucket, Key=key)
        except Exception as exc:
            if _is_client_error(exc):
                code = str(exc.response.get("Error", {}).get("Code"))  # type: ignore[attr-defined]
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise AnnotationError(
                        f"the S3 object s3://{bucket}/{key} does not exist"
                    ) from exc
                raise self._client_error(exc, f"GetObject s3://{bucket}/{key}") from exc
            raise
        return resp["Body"].read(), str(resp.get("ETag", ""))

    def _list(self, bucket: str, prefix: str) -> Iterator[str]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            try:
                resp = self._call("s3", "ListObjectsV2", **params)
            except Exception as exc:
                if _is_client_error(exc):
                    raise self._client_error(exc, f"ListObjectsV2 s3://{bucket}/{prefix}") from exc
                raise
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


#: CreateLabelingJob fields and the settings behind them (for error hints).
_FIELD_FLAGS = {
    "RoleArn": "--role-arn",
    "WorkteamArn": "--workteam-arn",
    "KmsKeyId": "--kms-key",
    "S3Uri": "--bucket/--prefix",
    "S3OutputPath": "--bucket/--prefix",
    "PreHumanTaskLambdaArn": "--pre-lambda-arn",
    "AnnotationConsolidationLambdaArn": "--acs-lambda-arn",
    "TaskTimeLimitInSeconds": "task_time_limit",
    "TaskAvailabilityLifetimeInSeconds": "task_availability",
    "NumberOfHumanWorkersPerDataObject": "workers_per_object",
    "MaxConcurrentTaskCount": "max_concurrent_tasks",
    "TaskTitle": "task_title",
    "TaskDescription": "task_description",
    "TaskKeywords": "keywords",
}


def _is_client_error(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def _snake(operation: str) -> str:
    from botocore import xform_name

    return str(xform_name(operation))


__all__ = [
    "BUILTIN_LAMBDA_ACCOUNTS",
    "JOB_TYPES",
    "GroundTruthBackend",
    "GroundTruthSettings",
    "JobPlan",
    "builtin_lambda_arn",
    "job_name_for",
]
