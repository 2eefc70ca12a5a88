"""``train-seg --on sagemaker`` against a loopback moto server (S3 + SageMaker training jobs).

moto creates and describes training jobs (they "complete" at once, without running anything),
so the test checks what camlabel asked for: the image, instance, hyperparameters, input
channels pointing at uploaded objects, and the uploaded source bundle. The container's part
(writing model.tar.gz) is simulated by uploading a small real model where the job says its
artifact is; camlabel then downloads and extracts it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sagemaker.train", reason="the optional [sagemaker] extra is not installed")
pytest.importorskip("moto.server")

import boto3
import requests
from click.testing import CliRunner

from camlabel.cli.main import cli
from camlabel.train import sagemaker as sm
from camlabel.train.segmenter import train_segmenter
from tests.seg_factory import make_masked_workspace

pytestmark = pytest.mark.moto

REGION = "us-east-1"
BUCKET = "camlabel-seg-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:2.21-gpu-py312"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, tmp_path: Path) -> Any:
    """Fake credentials, one attempt per call, every client at moto; returns an S3 client."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "SAGEMAKER_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # moto lacks iam:SimulatePrincipalPolicy
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture
def telemetry_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every telemetry event the SDK would send (none may be sent)."""
    from sagemaker.core.telemetry import telemetry_logging

    calls: list[Any] = []
    monkeypatch.setattr(
        telemetry_logging, "_send_telemetry_request", lambda *a, **k: calls.append(a)
    )
    monkeypatch.setattr(
        telemetry_logging, "_send_telemetry_request_sync", lambda *a, **k: calls.append(a)
    )
    return calls


def _keys(s3: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def _model_tarball(tmp_path: Path) -> bytes:
    """What the training job leaves in SM_MODEL_DIR, tarred as SageMaker does."""
    import keras

    from camlabel.models.tiramisu import Tiramisu

    d = tmp_path / "container-model"
    d.mkdir()
    keras.utils.set_random_seed(0)
    Tiramisu(growth_rate=4, initial_filters=8, down_blocks=(2, 2), bottleneck_layers=2).save(
        d / "model.keras"
    )
    (d / "model_info.json").write_text(json.dumps({"image_size": 32, "threshold": 0.5}))
    (d / "metrics.json").write_text(
        json.dumps(
            {"val_dice": 0.5, "val_iou": 0.4, "n_train": 6, "n_val": 2, "device": "1 GPU(s)"}
        )
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in d.iterdir():
            tar.add(p, arcname=p.name)
    return buf.getvalue()


def test_train_seg_on_sagemaker_creates_the_job_uploads_and_downloads(
    aws: Any, telemetry_calls: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_masked_workspace(tmp_path / "ws")
    settings = sm.SageMakerSettings(
        bucket=BUCKET,
        role_arn=ROLE,
        prefix="team/camlabel",
        region=REGION,
        poll_s=0.1,
        timeout_s=60,
    )
    tarball = _model_tarball(tmp_path)
    seen: dict[str, Any] = {}
    real_follow = sm.follow

    def follow_after_container(
        job: sm.SageMakerJob, s: sm.SageMakerSettings, **kw: Any
    ) -> sm.SageMakerJob:
        # moto "completes" the job without running it: play the container's part.
        d = boto3.client("sagemaker", region_name=REGION).describe_training_job(
            TrainingJobName=job.name
        )
        seen["describe"] = d
        bucket, _, key = d["ModelArtifacts"]["S3ModelArtifacts"][len("s3://") :].partition("/")
        aws.put_object(Bucket=bucket, Key=key, Body=tarball)
        return real_follow(job, s, **kw)

    monkeypatch.setattr(sm, "follow", follow_after_container)
    statuses: list[dict[str, Any]] = []
    res = train_segmenter(
        ws,
        on="sagemaker",
        min_masks=4,
        image_size=64,
        model_overrides={"arch": "tiny"},
        sagemaker=settings,
        progress=False,
        on_event=statuses.append,
    )
    d = seen["describe"]
    assert d["TrainingJobName"].startswith("camlabel-seg-")
    assert d["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert d["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert d["ResourceConfig"]["InstanceCount"] == 1
    assert d["RoleArn"] == ROLE
    assert d["HyperParameters"] == {
        "epochs": "40",
        "batch-size": "30",
        "lr": "0.0001",
        "lr-schedule": "constant",
        "image-size": "64",
        "seed": "1234",
        "patience": "10",
        "arch": "tiny",
    }
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]
    }
    data_uri = f"s3://{BUCKET}/team/camlabel/{res.run_id}/data/"
    assert channels["train"] == data_uri
    # the channel points at the uploaded export: index.csv + one image and one mask per record
    data_keys = _keys(aws, f"team/camlabel/{res.run_id}/data/")
    ids = sorted(r.image_id for r in ws.ledger.all())
    prefix = f"team/camlabel/{res.run_id}/data/"
    assert sorted(data_keys) == sorted(
        [prefix + "index.csv"]
        + [f"{prefix}images/{i}.png" for i in ids]
        + [f"{prefix}masks/{i}.png" for i in ids]
    )
    index = aws.get_object(Bucket=BUCKET, Key=prefix + "index.csv")["Body"].read().decode()
    assert index.splitlines()[0] == "id,patient_id,split,label,mask_version"
    # the source bundle was uploaded as the code channel: entry script + the modules it imports
    code_uri = channels["code"]
    code_prefix = code_uri[len(f"s3://{BUCKET}/") :].rstrip("/") + "/"
    code = {k[len(code_prefix) :] for k in _keys(aws, code_prefix)}
    assert code == {
        "train_seg.py",
        "requirements.txt",
        *(f"camlabel/{m}" for m in sm.bundled_modules()),
    }
    assert {
        "camlabel/__init__.py",
        "camlabel/errors.py",
        "camlabel/train/segmenter_job.py",
        *(f"camlabel/models/{m}.py" for m in ("tiramisu", "seg_metrics", "seg_data", "data")),
    } <= code
    # nothing that imports an SDK the training image lacks
    assert not {k for k in code if k.startswith(("camlabel/cli/", "camlabel/backends/"))}
    uploaded = aws.get_object(Bucket=BUCKET, Key=code_prefix + "train_seg.py")["Body"].read()
    assert (
        uploaded == (Path(__file__).resolve().parents[2] / "training" / "train_seg.py").read_bytes()
    )
    assert (
        d["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/team/camlabel/{res.run_id}/output"
    )
    # followed to the end, downloaded, extracted, recorded
    assert statuses and statuses[-1]["status"] == "Completed"
    assert (res.model_dir / "model.keras").is_file()
    assert res.metrics["val_dice"] == 0.5
    sidecar = json.loads((res.model_dir / "segmenter.json").read_text())
    assert sidecar["on"] == "sagemaker" and sidecar["job"]["name"] == d["TrainingJobName"]
    assert sidecar["trained_on"] == {i: 2 for i in ids}
    (run,) = ws.ledger.runs("train-seg")
    assert run["job"]["image_uri"] == IMAGE and run["mask_versions"] == sidecar["trained_on"]
    assert telemetry_calls == []
    assert "SAGEMAKER_USER_CONFIG_OVERRIDE" not in os.environ  # restored after the launch


def test_failed_job_is_reported_with_its_reason(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from camlabel.errors import ModelError

    settings = sm.SageMakerSettings(bucket=BUCKET, role_arn=ROLE, region=REGION, poll_s=0)

    class FakeClient:
        def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
            return {
                "TrainingJobStatus": "Failed",
                "SecondaryStatus": "Failed",
                "FailureReason": "AlgorithmError: OOM",
            }

    monkeypatch.setattr(sm.aws, "client", lambda service, region=None, **kw: FakeClient())
    job = sm.SageMakerJob("j", None, IMAGE, "ml.g5.xlarge", "s3://b/d/", "s3://b/o", {})
    with pytest.raises(ModelError, match="ended Failed: AlgorithmError: OOM"):
        sm.follow(job, settings)


def test_cli_dry_run_and_missing_role(aws: Any, tmp_path: Path) -> None:
    ws = make_masked_workspace(tmp_path / "ws")
    r = CliRunner().invoke(
        cli,
        [
            "train-seg",
            "-w",
            str(ws.root),
            "--on",
            "sagemaker",
            "--bucket",
            BUCKET,
            "--role-arn",
            ROLE,
            "--dry-run",
            "--min-masks",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["plan"]["image_uri"] == IMAGE and out["plan"]["instance_type"] == "ml.g5.xlarge"
    assert out["plan"]["hyperparameters"]["epochs"] == "40"
    assert _keys(aws) == []  # a dry run uploads nothing
    r = CliRunner().invoke(
        cli, ["train-seg", "-w", str(ws.root), "--on", "sagemaker", "--bucket", BUCKET]
    )
    assert r.exit_code == 1
    assert "execution role" in r.output and "--role-arn" in r.output
