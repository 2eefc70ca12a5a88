"""Ground Truth settings: where jobs go (bucket, prefix, region), what they ask of workers,
and how each AWS call is bounded. No secret: credentials come from the AWS chain.

Resolved ``flag > CAMLABEL_GT_<NAME> env > workspace "groundtruth" section > default``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from camlabel.backends.groundtruth.convert import DEFAULT_LESION_HEX
from camlabel.errors import ConfigError

if TYPE_CHECKING:
    from camlabel.workspace import Workspace

JOB_TYPES = ("adjustment", "polygon")
#: Options that are not settings: injected clients, and the Label Studio flags the CLI may
#: fill from CAMLABEL_LS_* variables whatever the backend (ignored here).
_FOREIGN_OPTIONS = ("sagemaker_client", "s3_client", "url", "token", "project", "upload")


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

    bucket: str | None = None
    prefix: str = "camlabel"
    region: str = "us-east-1"
    job_type: str = "adjustment"
    role_arn: str | None = None
    workteam_arn: str | None = None
    kms_key: str | None = None
    pre_lambda_arn: str | None = None
    acs_lambda_arn: str | None = None
    endpoint_url: str | None = None
    label: str = "Opacity"
    lesion_color: str = DEFAULT_LESION_HEX
    workers_per_object: int = 1
    task_time_limit: int = 3600
    task_availability: int = 864000
    max_concurrent_tasks: int | None = None
    task_title: str = "Correct the lesion outline on chest X-rays"
    task_description: str = (
        "An automatic lesion outline (from a classifier's attention map) is shown on a chest "
        "X-ray: keep what covers real opacities, remove the rest, add what is missing."
    )
    keywords: tuple[str, ...] = ("Image Segmentation", "chest xray", "medical imaging")
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 3

    _INT_FIELDS: ClassVar[tuple[str, ...]] = (
        "workers_per_object",
        "task_time_limit",
        "task_availability",
        "max_concurrent_tasks",
        "max_attempts",
    )

    @classmethod
    def resolve(
        cls, workspace: Workspace | None, options: Mapping[str, Any]
    ) -> GroundTruthSettings:
        """flag (``options``) > ``CAMLABEL_GT_<NAME>`` env > workspace config > default."""
        from camlabel.workspace import env_setting

        cfg: dict[str, Any] = {}
        if workspace is not None:
            cfg = dict(workspace.config.get("groundtruth") or {})
            cfg.setdefault("label", workspace.config.get("lesion_label"))
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(k for k in options if k not in known and k not in _FOREIGN_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown Ground Truth option(s) {unknown}; supported options: {sorted(known)}"
            )
        kw: dict[str, Any] = {}
        for name in known:
            value = env_setting(f"gt_{name}", options.get(name), cfg.get(name))
            if value is None:
                continue
            if name in cls._INT_FIELDS:
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"{name} must be an integer. Received: {name}={value!r}"
                    ) from None
            elif name in ("connect_timeout", "read_timeout"):
                value = float(value)
            elif name == "keywords":
                value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
            kw[name] = value
        if "max_attempts" not in kw and os.environ.get("AWS_MAX_ATTEMPTS"):
            kw["max_attempts"] = int(os.environ["AWS_MAX_ATTEMPTS"])
        settings = cls(**kw)
        if settings.job_type not in JOB_TYPES:
            raise ConfigError(
                f"Wrong Ground Truth job type {settings.job_type!r}, supported job types: {list(JOB_TYPES)}",
                hint="pass --job-type adjustment (CAM mask, built-in Lambdas) or --job-type polygon",
            )
        settings = cls(**{**kw, "prefix": settings.prefix.strip("/")})
        return settings

    def public(self) -> dict[str, Any]:
        """Secret-free summary (no ARNs beyond what identifies the job setup)."""
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "job_type": self.job_type,
        }
