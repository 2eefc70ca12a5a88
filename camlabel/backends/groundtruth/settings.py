"""Ground Truth settings: where jobs go (bucket, prefix, region), what they ask of workers,
and how each AWS call is bounded. No secret: credentials come from the AWS chain.

Resolved by the one resolver, :func:`camlabel.config.resolve`: ``flag > CAMLABEL_GT_<NAME> env >
workspace "groundtruth" section > default``. The fields carry their CLI flags and help, from
which push-jobs and pull-masks generate their ``[groundtruth]`` options.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from camlabel.backends.groundtruth.convert import DEFAULT_LESION_HEX
from camlabel.config import DEFAULT_AWS_REGION, DEFAULT_S3_PREFIX, resolve, setting
from camlabel.errors import ConfigError

if TYPE_CHECKING:
    from camlabel.workspace import Workspace

JOB_TYPES = ("adjustment", "polygon")


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
    lesion_color: str = setting(DEFAULT_LESION_HEX)
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
        check_names(settings)
        return dataclasses.replace(settings, prefix=settings.prefix.strip("/"))

    def public(self) -> dict[str, Any]:
        """Secret-free summary (no ARNs beyond what identifies the job setup)."""
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "job_type": self.job_type,
        }


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def check_names(s: GroundTruthSettings) -> None:
    """What AWS would refuse, caught offline (also by ``--dry-run``): the bucket name's rules
    and ARNs from another region than ``--region`` (a job cannot use a workteam, Lambda or
    KMS key of another region)."""
    b = s.bucket
    if b is not None and (not _BUCKET.match(b) or ".." in b or _IPV4.match(b)):
        raise ConfigError(
            f"invalid S3 bucket name. Received: bucket={b!r}",
            hint="bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', "
            "start and end with a letter or digit, and are not IP addresses",
        )
    for name in ("workteam_arn", "pre_lambda_arn", "acs_lambda_arn", "kms_key"):
        value = getattr(s, name)
        if not value or not str(value).startswith("arn:"):
            continue
        parts = str(value).split(":")
        if len(parts) < 6:
            raise ConfigError(f"{name} is not a valid ARN. Received: {value!r}")
        region = parts[3]
        if region and region != s.region:
            flag = "--kms-key" if name == "kms_key" else "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} is in region {region} but the job runs in --region {s.region}. "
                f"Received: {value}",
                hint=f"pass --region {region}, or a {name.split('_')[0]} of {s.region}",
            )
