"""Ground Truth job planning: the manifest, uploads and CreateLabelingJob request of one push.

Pure planning: reads the display PNGs and the template, makes no AWS call. The job name
is derived from the manifest (:func:`job_name_for`), so the same images give the same job
on a re-run; :func:`validate_create` checks the request offline against botocore's model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import camlabel.backends.groundtruth.convert as conv
from camlabel.backends.base import PushItem
from camlabel.backends.groundtruth.settings import GroundTruthSettings
from camlabel.backends.groundtruth.validate import validate_request
from camlabel.errors import CamlabelError, ConfigError, ValidationError

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


@dataclass(frozen=True)
class Upload:
    """One S3 object to put (its SHA-256 goes into the object's metadata)."""

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
    uploads: list[Upload]
    tasks: dict[str, int]
    failures: list[tuple[str, str]] = field(default_factory=list)


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


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


def validate_create(request: Mapping[str, Any]) -> None:
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


def build_plan(settings: GroundTruthSettings, items: Sequence[PushItem]) -> JobPlan:
    """Build the uploads, manifest and CreateLabelingJob request for ``items`` (no network)."""
    from camlabel.resources import template_path

    s = settings
    if not s.bucket:
        raise ConfigError(
            "Ground Truth needs an S3 bucket",
            hint="pass --bucket, set CAMLABEL_GT_BUCKET, or set groundtruth.bucket in camlabel.json",
        )
    job_type = s.job_type
    label_attr = conv.LABEL_ATTRIBUTE[job_type]
    cmap = conv.color_map_for(s.label, s.lesion_color)
    uploads: dict[str, Upload] = {}
    lines: list[bytes] = []
    tasks: dict[str, int] = {}
    failures: list[tuple[str, str]] = []
    for item in items:
        try:
            image_up, line = _manifest_line(s, item, job_type, cmap, uploads)
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
    uploads[f"{base}/input.manifest"] = Upload(
        f"{base}/input.manifest", manifest, "application/x-ndjson"
    )
    uploads[f"{base}/categories.json"] = Upload(
        f"{base}/categories.json", categories, "application/json"
    )
    uploads[f"{base}/template.liquid.html"] = Upload(
        f"{base}/template.liquid.html", template, "text/html"
    )
    request = _request(s, job, label_attr, base, manifest)
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


def _key(s: GroundTruthSettings, *parts: str) -> str:
    return "/".join(p for p in (s.prefix, *parts) if p)


def _manifest_line(
    s: GroundTruthSettings,
    item: PushItem,
    job_type: str,
    cmap: dict[str, Any],
    uploads: Mapping[str, Upload],
) -> tuple[dict[str, Upload], dict[str, Any]]:
    assert s.bucket is not None
    out: dict[str, Upload] = {}
    image_key = _key(s, "images", f"{item.image_id}.png")
    if image_key not in uploads:
        out[image_key] = Upload(image_key, Path(item.display_png).read_bytes(), "image/png")
    polygons = list(item.preannotation.polygons) if item.preannotation is not None else []
    line: dict[str, Any] = {
        "source-ref": s3_uri(s.bucket, image_key),
        conv.IMAGE_ID_KEY: item.image_id,
    }
    source = item.preannotation.source if item.preannotation is not None else "none"
    created = (
        item.preannotation.created_at if item.preannotation is not None else "1970-01-01T00:00:00Z"
    )
    if job_type == "adjustment":
        from camlabel.geometry import PolygonPx, polygons_to_mask

        mask = polygons_to_mask([PolygonPx.from_json(p) for p in polygons], item.height, item.width)
        png = conv.class_mask_to_png(np.asarray(mask, dtype=np.uint8), cmap)
        mask_key = _key(
            s, "cam-masks", f"{item.image_id}-{hashlib.sha256(png).hexdigest()[:12]}.png"
        )
        out[mask_key] = Upload(mask_key, png, "image/png")
        attr = conv.PRIOR_MASK_ATTRIBUTE
        line[attr] = s3_uri(s.bucket, mask_key)
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


def _request(
    s: GroundTruthSettings, job: str, label_attr: str, base: str, manifest: bytes
) -> dict[str, Any]:
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
    output: dict[str, Any] = {"S3OutputPath": s3_uri(s.bucket, _key(s, "output") + "/")}
    if s.kms_key:
        output["KmsKeyId"] = s.kms_key
    human: dict[str, Any] = {
        "UiConfig": {"UiTemplateS3Uri": s3_uri(s.bucket, f"{base}/template.liquid.html")},
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
                "S3DataSource": {"ManifestS3Uri": s3_uri(s.bucket, f"{base}/input.manifest")}
            }
        },
        "OutputConfig": output,
        "LabelCategoryConfigS3Uri": s3_uri(s.bucket, f"{base}/categories.json"),
        "HumanTaskConfig": human,
        "Tags": [
            {"Key": "camlabel:job-type", "Value": s.job_type},
            {"Key": "camlabel:manifest-sha256", "Value": hashlib.sha256(manifest).hexdigest()},
        ],
    }
    if s.role_arn:
        request["RoleArn"] = s.role_arn
    return request
