"""Run the segmenter training job as a SageMaker training job (SageMaker Python SDK 3.x).

The only module that imports the ``sagemaker`` SDK (an optional extra:
``pip install 'camlabel[sagemaker]'``). Steps:

1. **Bundle** the job: a temporary source dir with the entry script ``train_seg.py`` (the text
   of the repository's training/train_seg.py, :data:`ENTRY_SCRIPT`), a copy of every camlabel
   module that camlabel.train.segmenter_job imports, found by reading the package's imports
   at bundle time (:func:`bundled_modules`: keras, numpy and cv2 only), and
   ``requirements.txt`` (opencv-python-headless, in case the image lacks cv2). Python puts the
   script's folder first on ``sys.path``, so the copy is what the container imports; nothing
   else of camlabel (or its dependencies) is needed there. Only what the job imports is
   copied, not the whole package: the other modules import SDKs (boto3, Label Studio, click)
   that the training image lacks.
2. **Upload** the exported pairs (index.csv, images/, masks/) to
   ``s3://BUCKET/PREFIX/<run>/data/``; that prefix is the ``train`` channel.
3. **Launch** ``sagemaker.train.ModelTrainer`` with ``SourceCode`` (the bundle; the SDK uploads
   it), ``Compute`` (ml.g5.xlarge by default), the AWS Deep Learning Container for the pinned
   TensorFlow (``tensorflow-training:2.21-gpu-py312``, from the SDK's image-URI table) and the
   hyperparameters, which the container passes to the script as ``--name value``.
4. **Follow** the job with DescribeTrainingJob (bounded polling, a status line per change).
5. **Download** ``model.tar.gz`` and extract it (no absolute paths, no links) into the model dir.

The SDK's telemetry is switched off with a config file (``SAGEMAKER_USER_CONFIG_OVERRIDE``)
unless the caller set one. Role validation (``iam:SimulatePrincipalPolicy``) stays on except
where ``SAGEMAKER_VALIDATE_ROLE=false`` is set (the moto tests do that; moto lacks the call).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlabel import aws
from camlabel.errors import BackendUnavailable, ConfigError, ModelError
from camlabel.train.local import JOB_MODULE

TF_VERSION = "2.21"
PY_VERSION = "py312"
DEFAULT_INSTANCE = "ml.g5.xlarge"
ENTRY_SCRIPT_NAME = "train_seg.py"
# The bundle's entry script; training/train_seg.py holds the same text (a test checks), but a
# wheel carries no training/ folder.
ENTRY_SCRIPT = '''"""Entry script of the segmenter training job, local and on SageMaker.

    python training/train_seg.py --train DATA --model-dir OUT --epochs 40 --batch-size 30

The training code is camlabel.train.segmenter_job (``python -m camlabel.train.segmenter_job``
is the same command); this file only makes camlabel importable and calls its ``main()``. In
the SageMaker bundle a copy of camlabel/ lies beside this file, and Python puts the script's
folder first on sys.path; in a checkout without camlabel installed, the repository root
holds it.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("camlabel") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camlabel.train.segmenter_job import main

if __name__ == "__main__":
    sys.exit(main())
'''
REQUIREMENTS = "opencv-python-headless>=4.9\n"
_PKG = Path(__file__).resolve().parents[1]
_TERMINAL = {"Completed", "Failed", "Stopped"}
_TELEMETRY_YAML = (
    "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n"
)


@dataclass(frozen=True)
class SageMakerSettings:
    """Where and how to run the job.

    Args:
        bucket: S3 bucket for data, code and the model artifact.
        role_arn: execution role the job assumes (needs S3 access to ``bucket``).
        prefix: key prefix inside the bucket.
        region: AWS region (default: the boto3 session's).
        instance_type: training instance; a GPU one by default.
        instance_count: instances (the job uses all GPUs of one instance).
        max_runtime_s: the job's stopping condition.
        image_uri: override the training image (default: the TF DLC for TF_VERSION).
        poll_s: seconds between status checks while following the job.
        timeout_s: stop following (not the job) after this long; None waits for the end.
    """

    bucket: str
    role_arn: str
    prefix: str = "camlabel"
    region: str | None = None
    instance_type: str = DEFAULT_INSTANCE
    instance_count: int = 1
    max_runtime_s: int = 24 * 3600
    image_uri: str | None = None
    poll_s: float = 30.0
    timeout_s: float | None = None
    volume_size_gb: int = 30
    environment: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if not self.bucket:
            raise ConfigError(
                "--on sagemaker needs an S3 bucket. Received: bucket=None",
                hint="pass --bucket NAME (or set groundtruth.bucket in camlabel.json)",
            )
        if not self.role_arn or not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/", self.role_arn):
            raise ConfigError(
                f"--on sagemaker needs the ARN of a SageMaker execution role. Received: role_arn={self.role_arn!r}",
                hint="pass --role-arn arn:aws:iam::<account>:role/<name> (or set groundtruth.role_arn)",
            )


@dataclass(frozen=True)
class SageMakerJob:
    """A launched (and possibly finished) training job."""

    name: str
    arn: str | None
    image_uri: str
    instance_type: str
    data_uri: str
    output_uri: str
    hyperparameters: dict[str, str]
    status: str | None = None
    model_artifact: str | None = None
    failure_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def training_image_uri(
    region: str, instance_type: str = DEFAULT_INSTANCE, tf_version: str = TF_VERSION
) -> str:
    """The AWS Deep Learning Container for TensorFlow training matching ``tf_version``."""
    from sagemaker.core import image_uris

    uri: str = image_uris.retrieve(
        framework="tensorflow",
        region=region,
        version=tf_version,
        py_version=PY_VERSION,
        instance_type=instance_type,
        image_scope="training",
    )
    return uri


def _module_file(name: str) -> Path | None:
    """camlabel/<...>.py or camlabel/<...>/__init__.py of a dotted camlabel module name."""
    rel = Path(*name.split(".")[1:])
    for candidate in (_PKG / rel / "__init__.py", (_PKG / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module name ``path`` may import, at any depth (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            # ``from camlabel.models import seg_data`` imports a module, not a name
            yield from (f"{base}.{alias.name}" for alias in node.names)


def bundled_modules(module: str = JOB_MODULE) -> list[str]:
    """Files (relative to camlabel/) of ``module`` and every camlabel module it imports,
    transitively, with the ``__init__.py`` of their packages; read from the source with ast,
    so the bundle follows the code and no list is kept by hand."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] != "camlabel":
            continue
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = _module_file(name)
            if name in seen or path is None:
                continue
            seen[name] = path
            todo.extend(_imported_names(path, name))
    return sorted(p.relative_to(_PKG).as_posix() for p in seen.values())


def bundle_source(dest: Path) -> Path:
    """Write the job's source dir: the entry script, the camlabel modules the job imports and
    requirements.txt."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / ENTRY_SCRIPT_NAME).write_text(ENTRY_SCRIPT, encoding="utf-8")
    for name in bundled_modules():
        target = dest / "camlabel" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_PKG / name, target)
    (dest / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    return dest


@contextmanager
def telemetry_off() -> Iterator[None]:
    """Point SAGEMAKER_USER_CONFIG_OVERRIDE at a config that opts out of SDK telemetry."""
    if os.environ.get("SAGEMAKER_USER_CONFIG_OVERRIDE"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="camlabel-sm-") as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(_TELEMETRY_YAML, encoding="utf-8")
        os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(cfg)
        try:
            yield
        finally:
            os.environ.pop("SAGEMAKER_USER_CONFIG_OVERRIDE", None)


def upload_dir(s3: Any, local: Path, bucket: str, key_prefix: str) -> list[str]:
    """Upload every file under ``local`` to ``s3://bucket/key_prefix/...``; returns the keys.

    Idempotent: the keys are derived from the relative paths, so a re-run overwrites.
    """
    keys = []
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        key = f"{key_prefix.rstrip('/')}/{path.relative_to(local).as_posix()}"
        s3.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


BASE_JOB_NAME = "camlabel-seg"  # the SDK appends a timestamp


def plan(
    settings: SageMakerSettings, run_id: str, hyperparameters: Mapping[str, Any]
) -> dict[str, Any]:
    """What launch() would do, without any AWS call (``--dry-run``)."""
    settings.check()
    region = settings.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    image = settings.image_uri or training_image_uri(region, settings.instance_type)
    base = f"{settings.prefix.strip('/')}/{run_id}"
    return {
        "base_job_name": BASE_JOB_NAME,
        "region": region,
        "image_uri": image,
        "instance_type": settings.instance_type,
        "instance_count": settings.instance_count,
        "role_arn": settings.role_arn,
        "data_uri": f"s3://{settings.bucket}/{base}/data/",
        "output_uri": f"s3://{settings.bucket}/{base}/output",
        "hyperparameters": {k: str(v) for k, v in hyperparameters.items()},
        "entry_script": ENTRY_SCRIPT_NAME,
        "bundled": [
            ENTRY_SCRIPT_NAME,
            "requirements.txt",
            *(f"camlabel/{m}" for m in bundled_modules()),
        ],
    }


def launch(
    data_dir: Path,
    settings: SageMakerSettings,
    run_id: str,
    hyperparameters: Mapping[str, Any],
    *,
    wait: bool = True,
    on_status: Callable[[str, str], None] | None = None,
) -> SageMakerJob:
    """Upload ``data_dir``, create the training job and (``wait``) follow it to the end.

    Raises:
        ConfigError: bucket, role or region missing, or the SDK extra not installed.
        ModelError: the job failed or was stopped (with SageMaker's FailureReason).
        BackendUnavailable: AWS could not be reached.
    """
    settings.check()
    try:
        import sagemaker.train  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "--on sagemaker needs the SageMaker Python SDK 3.x, which is not installed",
            hint="pip install 'camlabel[sagemaker]'",
        ) from exc
    from botocore.exceptions import BotoCoreError, ClientError

    p = plan(settings, run_id, hyperparameters)
    session = aws.session(settings.region or p["region"], what="the SageMaker job")
    s3 = aws.client("s3", boto_session=session)
    data_key = p["data_uri"][len(f"s3://{settings.bucket}/") :]
    try:
        upload_dir(s3, Path(data_dir), settings.bucket, data_key)
        with telemetry_off(), tempfile.TemporaryDirectory(prefix="camlabel-src-") as tmp:
            job_name, arn = _create_job(session, settings, p, bundle_source(Path(tmp) / "src"))
    except (BotoCoreError, ClientError) as exc:
        raise BackendUnavailable(
            f"SageMaker training job for run {run_id} could not be created: {exc}",
            hint="check the credentials, region, bucket and role (aws sts get-caller-identity)",
        ) from exc
    job = SageMakerJob(
        name=job_name,
        arn=arn,
        image_uri=p["image_uri"],
        instance_type=settings.instance_type,
        data_uri=p["data_uri"],
        output_uri=p["output_uri"],
        hyperparameters=p["hyperparameters"],
    )
    if not wait:
        return job
    return follow(job, settings, on_status=on_status)


def _create_job(
    session: Any, settings: SageMakerSettings, p: Mapping[str, Any], src: Path
) -> tuple[str, str | None]:
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import (
        Compute,
        InputData,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
    )

    sm_session = Session(
        boto_session=session,
        default_bucket=settings.bucket,
        default_bucket_prefix=settings.prefix.strip("/") or None,
    )
    trainer = ModelTrainer(
        sagemaker_session=sm_session,
        role=settings.role_arn,
        training_image=p["image_uri"],
        source_code=SourceCode(
            source_dir=str(src), entry_script=ENTRY_SCRIPT_NAME, requirements="requirements.txt"
        ),
        compute=Compute(
            instance_type=settings.instance_type,
            instance_count=settings.instance_count,
            volume_size_in_gb=settings.volume_size_gb,
        ),
        hyperparameters=dict(p["hyperparameters"]),
        base_job_name=p["base_job_name"],
        output_data_config=OutputDataConfig(s3_output_path=p["output_uri"]),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=settings.max_runtime_s),
        environment=dict(settings.environment) or None,
    )
    trainer.train(
        input_data_config=[InputData(channel_name="train", data_source=p["data_uri"])],
        wait=False,
        logs=False,
    )
    job = trainer._latest_training_job  # the SDK exposes the created job only here
    return str(job.training_job_name), getattr(job, "training_job_arn", None)


def describe(job_name: str, region: str | None) -> dict[str, Any]:
    sm = aws.client("sagemaker", region)
    out: dict[str, Any] = sm.describe_training_job(TrainingJobName=job_name)
    return out


def follow(
    job: SageMakerJob,
    settings: SageMakerSettings,
    *,
    on_status: Callable[[str, str], None] | None = None,
) -> SageMakerJob:
    """Poll the job until it ends (or ``settings.timeout_s``); report each status change."""
    from botocore.exceptions import BotoCoreError, ClientError

    sm = aws.client("sagemaker", settings.region)
    start = time.monotonic()
    last = ("", "")
    while True:
        try:
            d = sm.describe_training_job(TrainingJobName=job.name)
        except (BotoCoreError, ClientError) as exc:
            raise BackendUnavailable(
                f"cannot read the status of training job {job.name}: {exc}",
                hint="the job may still be running; check it in the SageMaker console",
            ) from exc
        status = str(d.get("TrainingJobStatus", ""))
        secondary = str(d.get("SecondaryStatus", ""))
        if (status, secondary) != last:
            last = (status, secondary)
            if on_status is not None:
                on_status(status, secondary)
        if status in _TERMINAL:
            break
        if settings.timeout_s is not None and time.monotonic() - start > settings.timeout_s:
            raise ModelError(
                f"training job {job.name} still {status} after {settings.timeout_s:.0f} s",
                hint="it keeps running on AWS; follow it in the SageMaker console",
            )
        time.sleep(settings.poll_s)
    done = SageMakerJob(
        **{
            **job.to_json(),
            "status": status,
            "model_artifact": (d.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
            "failure_reason": d.get("FailureReason"),
        }
    )
    if status != "Completed":
        raise ModelError(
            f"training job {job.name} ended {status}: {done.failure_reason or 'no reason given'}",
            hint="see the job's CloudWatch logs (/aws/sagemaker/TrainingJobs)",
        )
    return done


def download_model(job: SageMakerJob, dest: Path, settings: SageMakerSettings) -> Path:
    """Download the job's model.tar.gz and extract it into ``dest``; returns ``dest``."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not job.model_artifact or not job.model_artifact.startswith("s3://"):
        raise ModelError(f"training job {job.name} reports no model artifact")
    bucket, _, key = job.model_artifact[len("s3://") :].partition("/")
    s3 = aws.client("s3", settings.region)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="camlabel-model-") as tmp:
        archive = Path(tmp) / "model.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except (BotoCoreError, ClientError) as exc:
            raise ModelError(
                f"cannot download the model of job {job.name} from {job.model_artifact}: {exc}",
                hint="check s3:GetObject access to the bucket",
            ) from exc
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    return dest
