"""Ground Truth backend against a loopback moto S3 server and botocore's Stubber.

moto implements S3 but not labeling jobs, so the SageMaker client is a real botocore client
wrapped in a Stubber: every request is still validated against the real API model before the
stub answers. Expected masks are computed independently (array slicing of rectangles,
per-colour pixel counts), never with camlabel's own converters.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
import requests
from botocore.stub import ANY, Stubber

from camlabel.backends.base import PushItem
from camlabel.backends.groundtruth import GroundTruthBackend
from camlabel.errors import ValidationError
from camlabel.records import JobRef, Preannotation
from camlabel.workspace import Workspace

pytestmark = pytest.mark.moto

REGION = "us-east-1"
BUCKET = "camlabel-gt-test"
ROLE = "arn:aws:iam::123456789012:role/service-role/camlabel-gt"
TEAM = "arn:aws:sagemaker:us-east-1:123456789012:workteam/private-crowd/radiologists"
PRE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:camlabel-gt-polygon-pre"
ACS_ARN = "arn:aws:lambda:us-east-1:123456789012:function:camlabel-gt-polygon-consolidate"
LESION_HEX = "#2ca02c"
LESION_RGB = (0x2C, 0xA0, 0x2C)
CMAP = {
    "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff", "confidence": 0.0},
    "1": {"class-name": "Opacity", "hex-color": LESION_HEX, "confidence": 0.0},
}


# ----------------------------------------------------------------------------- fixtures
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
def aws_env(monkeypatch, moto_endpoint, tmp_path) -> str:
    """Fake credentials, one attempt per call, no user AWS config; fresh moto state."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    return moto_endpoint


@pytest.fixture
def s3(aws_env) -> Any:
    client = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def sm() -> Iterator[tuple[Any, Stubber]]:
    """A real SageMaker client (pointing at a closed port) whose calls the Stubber answers."""
    client = boto3.client(
        "sagemaker",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- helpers
def rect(x0: int, y0: int, x1: int, y1: int) -> dict[str, Any]:
    return {"exterior": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "holes": []}


def rect_mask(h: int, w: int, *boxes: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def gt_square(x0, y0, x1, y1, label="Opacity"):
    return {
        "label": label,
        "vertices": [
            {"x": x0, "y": y0},
            {"x": x1, "y": y0},
            {"x": x1, "y": y1},
            {"x": x0, "y": y1},
        ],
    }


def color_png(h: int, w: int, box: tuple[int, int, int, int] | None, rgb=LESION_RGB) -> bytes:
    img = np.full((h, w, 3), 255, np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = rgb
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    assert ok
    return bytes(buf)


IMAGES = [  # (seed, width, height, CAM rectangle)
    (1, 64, 48, (8, 6, 30, 20)),
    (2, 80, 60, (40, 10, 70, 50)),
]


def make_items(ws: Workspace, images=IMAGES) -> list[PushItem]:
    items = []
    for seed, w, h, box in images:
        pixels = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
        image_id = hashlib.sha256(f"{h}x{w}:".encode() + pixels.tobytes()).hexdigest()
        png = ws.display_png(image_id)
        cv2.imwrite(str(png), pixels)
        pre = Preannotation(
            polygons=(rect(*box),),
            source="gradcam",
            model_version="t",
            created_at="2026-01-02T03:04:05Z",
        )
        items.append(
            PushItem(image_id=image_id, width=w, height=h, display_png=png, preannotation=pre)
        )
    return sorted(items, key=lambda i: i.image_id)  # the order the backend writes the manifest in


def box_of(item: PushItem) -> tuple[int, int, int, int]:
    (x0, y0), _, (x1, y1), _ = item.preannotation.polygons[0]["exterior"]
    return x0, y0, x1, y1


def backend(ws, endpoint, sm_client=None, **over) -> GroundTruthBackend:
    opts = {
        "bucket": BUCKET,
        "prefix": "camlabel",
        "region": REGION,
        "role_arn": ROLE,
        "workteam_arn": TEAM,
        "endpoint_url": endpoint,
        **over,
    }
    return GroundTruthBackend(ws, sagemaker_client=sm_client, **opts)


def all_objects(s3) -> dict[str, dict[str, Any]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj
    return out


def split(uri: str) -> tuple[str, str]:
    assert uri.startswith("s3://")
    b, _, k = uri[5:].partition("/")
    return b, k


def get(s3, uri: str) -> bytes:
    b, k = split(uri)
    return s3.get_object(Bucket=b, Key=k)["Body"].read()


def not_found(stub: Stubber, job: Any = ANY) -> None:
    stub.add_client_error(
        "describe_labeling_job",
        service_error_code="ResourceNotFound",
        service_message="Requested resource not found.",
        http_status_code=400,
        expected_params={"LabelingJobName": job},
    )


def describe_response(
    job: str,
    status: str,
    *,
    output_uri: str | None = None,
    label_attr: str = "camlabel-lesion-ref",
    failure: str | None = None,
    counters: dict[str, int] | None = None,
) -> dict[str, Any]:
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    resp: dict[str, Any] = {
        "LabelingJobStatus": status,
        "LabelCounters": counters
        or {
            "TotalLabeled": 0,
            "HumanLabeled": 0,
            "MachineLabeled": 0,
            "FailedNonRetryableError": 0,
            "Unlabeled": 2,
        },
        "CreationTime": now,
        "LastModifiedTime": now,
        "JobReferenceCode": "ref",
        "LabelingJobName": job,
        "LabelingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:labeling-job/{job}",
        "LabelAttributeName": label_attr,
        "InputConfig": {"DataSource": {"S3DataSource": {"ManifestS3Uri": f"s3://{BUCKET}/m"}}},
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/camlabel/output/"},
        "RoleArn": ROLE,
        "HumanTaskConfig": {
            "WorkteamArn": TEAM,
            "UiConfig": {"UiTemplateS3Uri": f"s3://{BUCKET}/t"},
            "TaskTitle": "t",
            "TaskDescription": "d",
            "NumberOfHumanWorkersPerDataObject": 1,
            "TaskTimeLimitInSeconds": 300,
        },
    }
    if output_uri:
        resp["LabelingJobOutput"] = {"OutputDatasetS3Uri": output_uri}
    if failure:
        resp["FailureReason"] = failure
    return resp


def capture_requests(client) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.sagemaker.CreateLabelingJob",
        lambda params, **kw: seen.append(dict(params)),
    )
    return seen


# ----------------------------------------------------------------------------- push
def test_push_adjustment_uploads_exactly_the_expected_encrypted_objects(ws, s3, sm, aws_env):
    client, stub = sm
    created = capture_requests(client)
    items = make_items(ws)
    not_found(stub)
    stub.add_response(
        "create_labeling_job",
        {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x"},
    )
    pushed: list[dict] = []
    report = backend(ws, aws_env, client).push(
        items, progress=False, on_pushed=lambda j: pushed.append(dict(j))
    )

    job = report.project
    assert report.failures == []
    assert set(report.pushed) == {i.image_id for i in items}
    assert pushed == [report.pushed]
    assert report.details["job_created"] is True
    ref = report.pushed[items[0].image_id]
    assert ref.backend == "groundtruth" and ref.project == job
    assert {
        k: ref.extra[k] for k in ("bucket", "prefix", "job_type", "label_attribute", "region")
    } == {
        "bucket": BUCKET,
        "prefix": "camlabel",
        "job_type": "adjustment",
        "label_attribute": "camlabel-lesion-ref",
        "region": REGION,
    }

    objects = all_objects(s3)
    images = {f"camlabel/images/{i.image_id}.png" for i in items}
    masks = {k for k in objects if k.startswith("camlabel/cam-masks/")}
    job_files = {
        f"camlabel/jobs/{job}/{n}"
        for n in ("input.manifest", "categories.json", "template.liquid.html")
    }
    assert set(objects) == images | masks | job_files
    assert len(masks) == len(items)
    for key in objects:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert head["Metadata"]["camlabel-sha256"] == hashlib.sha256(body).hexdigest()
    for item in items:  # the display PNG goes up byte for byte
        assert s3.get_object(Bucket=BUCKET, Key=f"camlabel/images/{item.image_id}.png")[
            "Body"
        ].read() == (item.display_png.read_bytes())

    # Manifest lines: valid JSON, referencing existing objects, CAM mask = the pre-annotation.
    manifest = (
        s3.get_object(Bucket=BUCKET, Key=f"camlabel/jobs/{job}/input.manifest")["Body"]
        .read()
        .decode()
    )
    lines = [json.loads(x) for x in manifest.splitlines()]
    assert [ln["camlabel-image-id"] for ln in lines] == [i.image_id for i in items]
    for ln, item in zip(lines, items, strict=True):
        w, h, box = item.width, item.height, box_of(item)
        assert split(ln["source-ref"])[1] in objects
        assert split(ln["camlabel-cam-ref"])[1] in objects
        md = ln["camlabel-cam-ref-metadata"]
        assert md["internal-color-map"]["0"]["class-name"] == "BACKGROUND"
        assert md["internal-color-map"]["1"] == {
            "class-name": "Opacity",
            "hex-color": LESION_HEX,
            "confidence": 0.0,
        }
        assert md["type"] == "groundtruth/semantic-segmentation"
        png = cv2.imdecode(
            np.frombuffer(get(s3, ln["camlabel-cam-ref"]), np.uint8), cv2.IMREAD_COLOR
        )[..., ::-1]
        assert png.shape == (h, w, 3)
        lesion = np.all(png == LESION_RGB, axis=2)
        white = np.all(png == 255, axis=2)
        np.testing.assert_array_equal(lesion, rect_mask(h, w, box))
        assert (lesion | white).all()
        assert ref.task is not None

    assert json.loads(get(s3, f"s3://{BUCKET}/camlabel/jobs/{job}/categories.json")) == {
        "document-version": "2018-11-28",
        "labels": [{"label": "Opacity"}],
    }
    (req,) = created
    assert req["LabelingJobName"] == job
    assert req["LabelAttributeName"].endswith("-ref")
    assert req["LabelAttributeName"] != "camlabel-cam-ref"
    assert req["RoleArn"] == ROLE
    htc = req["HumanTaskConfig"]
    assert (
        htc["PreHumanTaskLambdaArn"]
        == "arn:aws:lambda:us-east-1:432418664414:function:PRE-AdjustmentSemanticSegmentation"
    )
    assert htc["AnnotationConsolidationConfig"]["AnnotationConsolidationLambdaArn"] == (
        "arn:aws:lambda:us-east-1:432418664414:function:ACS-AdjustmentSemanticSegmentation"
    )
    for uri in (
        htc["UiConfig"]["UiTemplateS3Uri"],
        req["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"],
        req["LabelCategoryConfigS3Uri"],
    ):
        assert split(uri)[1] in objects
    assert b"crowd-semantic-segmentation" in get(s3, htc["UiConfig"]["UiTemplateS3Uri"])


def test_rerun_uploads_nothing_new_and_creates_no_second_job(ws, s3, sm, aws_env):
    client, stub = sm
    items = make_items(ws)
    not_found(stub)
    stub.add_response(
        "create_labeling_job",
        {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x"},
    )
    first = backend(ws, aws_env, client).push(items, progress=False)
    before = {k: (v["ETag"], v["LastModified"]) for k, v in all_objects(s3).items()}

    # The ledger lost the job ids (e.g. a crash after CreateLabelingJob): the job is found by name.
    stub.add_response(
        "describe_labeling_job",
        describe_response(first.project, "InProgress"),
        expected_params={"LabelingJobName": first.project},
    )
    again = backend(ws, aws_env, client).push(items, progress=False)
    assert again.project == first.project
    assert again.pushed == {}
    assert set(again.already_present) == set(first.pushed)
    assert again.details["job_created"] is False
    assert {k: (v["ETag"], v["LastModified"]) for k, v in all_objects(s3).items()} == before

    # With the ledger's job ids the items are not even planned: no call at all (the stub has none queued).
    known = [PushItem(**{**i.__dict__, "existing": first.pushed[i.image_id]}) for i in items]
    third = backend(ws, aws_env, client).push(known, progress=False)
    assert third.pushed == {} and set(third.already_present) == set(first.pushed)


def test_a_retry_after_a_refused_create_skips_identical_uploads(ws, s3, sm, aws_env):
    client, stub = sm
    items = make_items(ws)
    not_found(stub)
    stub.add_client_error(
        "create_labeling_job",
        service_error_code="ResourceLimitExceeded",
        service_message="too many jobs",
    )
    with pytest.raises(Exception, match="ResourceLimitExceeded"):
        backend(ws, aws_env, client).push(items, progress=False)
    n_objects = len(all_objects(s3))
    not_found(stub)
    stub.add_response(
        "create_labeling_job",
        {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x"},
    )
    report = backend(ws, aws_env, client).push(items, progress=False)
    assert report.details["uploaded"] == 0
    assert report.details["unchanged_objects"] == n_objects
    assert set(report.pushed) == {i.image_id for i in items}


def test_push_with_kms_key_uses_sse_kms(ws, s3, sm, aws_env):
    client, stub = sm
    kms = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    created = capture_requests(client)
    not_found(stub)
    stub.add_response(
        "create_labeling_job",
        {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x"},
    )
    backend(ws, aws_env, client, kms_key=kms).push(make_items(ws)[:1], progress=False)
    for key in all_objects(s3):
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == kms
    assert created[0]["OutputConfig"]["KmsKeyId"] == kms


def test_push_polygon_job(ws, s3, sm, aws_env):
    from camlabel.lambdas.gt_polygon_pre import lambda_handler

    client, stub = sm
    created = capture_requests(client)
    items = make_items(ws)
    not_found(stub)
    stub.add_response(
        "create_labeling_job",
        {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x"},
    )
    report = backend(
        ws, aws_env, client, job_type="polygon", pre_lambda_arn=PRE_ARN, acs_lambda_arn=ACS_ARN
    ).push(items, progress=False)
    objects = all_objects(s3)
    assert not any(k.startswith("camlabel/cam-masks/") for k in objects)
    (req,) = created
    assert req["LabelAttributeName"] == "camlabel-lesion-polygons"
    assert not req["LabelAttributeName"].endswith("-ref")
    assert req["HumanTaskConfig"]["PreHumanTaskLambdaArn"] == PRE_ARN
    assert (
        req["HumanTaskConfig"]["AnnotationConsolidationConfig"]["AnnotationConsolidationLambdaArn"]
        == ACS_ARN
    )
    assert b"crowd-polygon" in get(s3, req["HumanTaskConfig"]["UiConfig"]["UiTemplateS3Uri"])
    manifest = get(s3, req["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"]).decode()
    for raw, item in zip(manifest.splitlines(), items, strict=True):
        w, h, (x0, y0, x1, y1) = item.width, item.height, box_of(item)
        line = json.loads(raw)
        assert split(line["source-ref"])[1] in objects
        # What Ground Truth would hand the worker template, via camlabel's own pre Lambda.
        out = lambda_handler(
            {"version": "2018-10-16", "labelingJobArn": "arn:x", "dataObject": line}
        )
        assert out["isHumanAnnotationRequired"] is True
        assert out["taskInput"]["initialValue"] == [gt_square(x0, y0, x1, y1)]
        assert out["taskInput"]["inputImageProperties"] == {"height": h, "width": w}
        assert out["taskInput"]["labels"] == ["Opacity"]
    assert set(report.pushed) == {i.image_id for i in items}


def test_polygon_job_without_lambdas_is_refused_with_a_hint(ws, aws_env):
    from camlabel.errors import ConfigError

    with pytest.raises(ConfigError, match="pre_lambda_arn"):
        backend(ws, aws_env, job_type="polygon").push(make_items(ws), progress=False)


def test_dry_run_writes_everything_and_calls_nothing(ws, monkeypatch, aws_env):
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    items = make_items(ws)
    report = backend(ws, dead).push(
        items, dry_run=True, progress=False
    )  # no injected client either
    folder = ws.root / "exports" / f"groundtruth-{report.project}"
    names = {p.name for p in report.dry_run_files}
    assert names == {
        "input.manifest",
        "categories.json",
        "template.liquid.html",
        "create-labeling-job.json",
        "uploads.json",
    }
    assert all(p.parent == folder and p.exists() for p in report.dry_run_files)
    req = json.loads((folder / "create-labeling-job.json").read_text())
    assert req["LabelingJobName"] == report.project
    assert req["RoleArn"] == ROLE
    lines = (folder / "input.manifest").read_text().splitlines()
    assert [json.loads(x)["camlabel-image-id"] for x in lines] == [i.image_id for i in items]
    uploads = json.loads((folder / "uploads.json").read_text())
    assert len(uploads["objects"]) == 2 * len(items) + 3
    assert report.failures == []
    assert set(report.pushed) == {i.image_id for i in items}


def test_dry_run_reports_the_request_problems(ws, aws_env):
    report = backend(ws, aws_env, role_arn=None).push(make_items(ws), dry_run=True, progress=False)
    ((what, why),) = report.failures
    assert what == "CreateLabelingJob" and "RoleArn" in why
    assert any(p.name == "create-labeling-job.json" for p in report.dry_run_files)


def test_missing_role_is_refused_before_anything_is_sent(ws, s3, sm, aws_env):
    client, _ = sm  # nothing queued: any SageMaker call would raise
    with pytest.raises(ValidationError, match="RoleArn") as info:
        backend(ws, aws_env, client, role_arn=None).push(make_items(ws), progress=False)
    assert "--role-arn" in info.value.hint
    assert all_objects(s3) == {}


def test_out_of_range_setting_is_refused_naming_the_field(ws, s3, sm, aws_env):
    client, _ = sm
    with pytest.raises(ValidationError) as info:
        backend(ws, aws_env, client, task_time_limit=5).push(make_items(ws), progress=False)
    msg = str(info.value)
    assert "HumanTaskConfig.TaskTimeLimitInSeconds" in msg and ">= 30" in msg
    assert "task_time_limit" in info.value.hint
    assert all_objects(s3) == {}


def test_illegal_job_name_is_refused_before_sending(ws, sm, aws_env):
    client, _ = sm
    be = backend(ws, aws_env, client)
    plan = be.plan(make_items(ws))
    bad = {**plan.request, "LabelingJobName": "camlabel_0123 bad"}
    with pytest.raises(ValidationError) as info:
        be._call("sagemaker", "CreateLabelingJob", **bad)
    assert "LabelingJobName" in str(info.value) and "'camlabel_0123 bad'" in str(info.value)


# ----------------------------------------------------------------------------- pull
OUT = f"s3://{BUCKET}/camlabel/output"


def put(s3, uri: str, body: bytes | str) -> None:
    b, k = split(uri)
    s3.put_object(Bucket=b, Key=k, Body=body.encode() if isinstance(body, str) else body)


def job_refs(
    job: str, specs: list[tuple[str, int, int]], job_type="adjustment"
) -> dict[str, JobRef]:
    attr = "camlabel-lesion-ref" if job_type == "adjustment" else "camlabel-lesion-polygons"
    return {
        image_id: JobRef(
            backend="groundtruth",
            project=job,
            task=str(i),
            extra={
                "bucket": BUCKET,
                "prefix": "camlabel",
                "job_type": job_type,
                "label_attribute": attr,
                "region": REGION,
                "height": h,
                "width": w,
            },
        )
        for i, (image_id, h, w) in enumerate(specs)
    }


def iid(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def worker_file(answers: list[dict[str, Any]]) -> str:
    return json.dumps({"answers": answers})


def test_pull_adjustment_job_with_hostile_objects(ws, s3, sm, aws_env):
    client, stub = sm
    job = "camlabel-aaaaaaaaaaaa"
    root = f"{OUT}/{job}"
    h, w = 40, 50
    ids = [iid(i) for i in range(7)]
    refs = job_refs(job, [(i, h, w) for i in ids])
    ok_box = (5, 6, 20, 30)

    def semseg(i, uri, **md):
        return {
            "source-ref": f"s3://{BUCKET}/camlabel/images/{ids[i]}.png",
            "camlabel-image-id": ids[i],
            "camlabel-lesion-ref": uri,
            "camlabel-lesion-ref-metadata": {
                "internal-color-map": CMAP,
                "type": "groundtruth/semantic-segmentation",
                "human-annotated": "yes",
                "creation-date": "2026-01-05T10:11:12.123456",
                "job-name": f"labeling-job/{job}",
                **md,
            },
        }

    lines = [
        json.dumps(semseg(0, f"{root}/annotations/consolidated-annotation/output/0.png")),
        json.dumps(
            {
                "source-ref": f"s3://{BUCKET}/camlabel/images/{ids[1]}.png",
                "camlabel-image-id": ids[1],
                "camlabel-lesion-ref-metadata": {
                    "retry-count": 1,
                    "failure-reason": "ClientError: The worker response is invalid",
                    "human-annotated": "true",
                },
            }
        ),
        json.dumps(
            semseg(2, f"{root}/annotations/consolidated-annotation/output/2.png")
        ),  # unknown colour
        json.dumps(
            semseg(3, f"{root}/annotations/consolidated-annotation/output/3.png")
        ),  # object missing
        '{"source-ref": "s3://b/x.png", "camlabel-image-id": ',  # malformed line (object 4)
        json.dumps(
            semseg(5, f"{root}/annotations/consolidated-annotation/output/5.png")
        ),  # wrong size
        json.dumps(
            {
                "source-ref": f"s3://{BUCKET}/camlabel/images/{ids[6]}.png",
                "camlabel-image-id": ids[6],
                "camlabel-lesion-ref": {
                    "image_size": [{"width": w, "height": h, "depth": 3}],
                    "annotations": [{"class_id": 0, "left": 1, "top": 2, "width": 3, "height": 4}],
                },
                "camlabel-lesion-ref-metadata": {
                    "type": "groundtruth/object-detection",
                    "class-map": {"0": "x"},
                },
            }
        ),
    ]
    put(s3, f"{root}/manifests/output/output.manifest", "\n".join(lines) + "\n")
    put(s3, f"{root}/annotations/consolidated-annotation/output/0.png", color_png(h, w, ok_box))
    put(
        s3,
        f"{root}/annotations/consolidated-annotation/output/2.png",
        color_png(h, w, ok_box, rgb=(255, 0, 0)),
    )
    put(s3, f"{root}/annotations/consolidated-annotation/output/5.png", color_png(h + 1, w, ok_box))
    answer = {
        "answerContent": {
            "crowd-semantic-segmentation": {
                "labeledImage": {
                    "pngImageData": base64.b64encode(color_png(h, w, ok_box)).decode()
                },
                "labelMappings": {"Opacity": {"color": LESION_HEX}},
                "initialValueModified": True,
                "inputImageProperties": {"height": h, "width": w},
            }
        },
        "submissionTime": "2026-01-05T10:11:00.000Z",
        "acceptanceTime": "2026-01-05T10:10:17.500Z",
        "timeSpentInSeconds": 42.5,
        "workerId": "private.us-east-1.w1",
    }
    put(
        s3,
        f"{root}/annotations/worker-response/iteration-1/0/2026-01-05_10:11:00.json",
        worker_file([answer]),
    )
    stub.add_response(
        "describe_labeling_job",
        describe_response(job, "Completed", output_uri=f"{root}/manifests/output/output.manifest"),
        expected_params={"LabelingJobName": job},
    )

    report = backend(ws, aws_env, client).pull(refs, progress=False)

    by_id = {o.image_id: o for o in report.outcomes}
    assert set(by_id) == {ids[0], ids[1]}
    ok = by_id[ids[0]]
    assert ok.status == "annotated"
    (res,) = ok.annotations
    np.testing.assert_array_equal(res.mask, rect_mask(h, w, ok_box))
    ann = res.annotation
    assert ann.backend == "groundtruth" and ann.status == "submitted"
    assert ann.annotator == "private.us-east-1.w1"
    assert ann.lead_time_s == 42.5
    assert ann.accepted_unchanged is False
    assert ann.updated_at == "2026-01-05T10:11:12Z"
    assert by_id[ids[1]].status == "failed"
    assert "The worker response is invalid" in by_id[ids[1]].message

    failures = dict(report.failures)
    text = "\n".join(f"{k}: {v}" for k, v in report.failures)
    assert len(report.failures) == 5, text
    assert "#ff0000" in failures[f"{ids[2][:12]} (job {job} line 3)"]
    assert "does not exist" in failures[f"{ids[3][:12]} (job {job} line 4)"]
    assert "not valid JSON" in failures[f"{ids[4][:12]} (job {job} line 5)"]
    assert (
        "41 px" in failures[f"{ids[5][:12]} (job {job} line 6)"]
        or "x41" in failures[f"{ids[5][:12]} (job {job} line 6)"]
    )
    assert "bounding box" in failures[f"{ids[6][:12]} (job {job} line 7)"]


def test_pull_polygon_job_with_two_workers(ws, s3, sm, aws_env):
    client, stub = sm
    job = "camlabel-bbbbbbbbbbbb"
    root = f"{OUT}/{job}"
    h, w = 60, 80
    ids = [iid(10 + i) for i in range(4)]
    refs = job_refs(job, [(i, h, w) for i in ids], job_type="polygon")
    cam = gt_square(10, 10, 40, 40)
    box_a, box_b = (10, 10, 40, 40), (20, 5, 60, 35)

    def line(i, value=None):
        d = {
            "source-ref": f"s3://{BUCKET}/camlabel/images/{ids[i]}.png",
            "camlabel-image-id": ids[i],
            "camlabel-cam-polygons": {
                "annotatedResult": {
                    "inputImageProperties": {"height": h, "width": w},
                    "polygons": [cam],
                }
            },
        }
        if value is not None:
            d["camlabel-lesion-polygons"] = value
            d["camlabel-lesion-polygons-metadata"] = {
                "type": "groundtruth/custom",
                "human-annotated": "yes",
                "creation_date": "2026-01-06T00:00:00.000000",
                "job_name": job,
            }
        return json.dumps(d)

    def result(*boxes, hh=h, ww=w):
        return {
            "inputImageProperties": {"height": hh, "width": ww},
            "polygons": [gt_square(*b) for b in boxes],
        }

    # Object 0: two workers' raw responses (worker A accepted the CAM polygon unchanged).
    # Object 1: no raw responses, only camlabel's consolidation output with both workers.
    # Object 2: a vertex outside the image. Object 3: not annotated yet.
    consolidated = {
        "annotatedResult": result(box_a),
        "workers": [
            {"workerId": "w-a", "annotatedResult": result(box_a)},
            {"workerId": "w-b", "annotatedResult": result(box_b)},
        ],
    }
    lines = [
        line(0, consolidated),
        line(1, consolidated),
        line(2, {"annotatedResult": result((70, 10, 81, 30))}),
        line(3),
    ]
    put(s3, f"{root}/manifests/output/output.manifest", "\n".join(lines) + "\n")
    for wid, box, spent, sub in (
        ("w-a", box_a, 12.0, "2026-01-06T00:00:01.000Z"),
        ("w-b", box_b, 30.25, "2026-01-06T00:00:09.000Z"),
    ):
        body = worker_file(
            [
                {
                    "answerContent": {"annotatedResult": result(box)},
                    "submissionTime": sub,
                    "acceptanceTime": "2026-01-05T23:59:00.000Z",
                    "timeSpentInSeconds": spent,
                    "workerId": wid,
                }
            ]
        )
        put(s3, f"{root}/annotations/worker-response/iteration-1/0/{sub}-{wid}.json", body)
    stub.add_response(
        "describe_labeling_job",
        describe_response(
            job,
            "Completed",
            output_uri=f"{root}/manifests/output/output.manifest",
            label_attr="camlabel-lesion-polygons",
        ),
    )

    report = backend(ws, aws_env, client, job_type="polygon").pull(refs, progress=False)
    by_id = {o.image_id: o for o in report.outcomes}

    for i in (0, 1):
        out = by_id[ids[i]]
        assert out.status == "annotated"
        got = {r.annotation.annotator: r for r in out.annotations}
        assert set(got) == {"w-a", "w-b"}
        np.testing.assert_array_equal(got["w-a"].mask, rect_mask(h, w, box_a))
        np.testing.assert_array_equal(got["w-b"].mask, rect_mask(h, w, box_b))
        assert got["w-a"].annotation.accepted_unchanged is True
        assert got["w-b"].annotation.accepted_unchanged is False
        assert got["w-a"].annotation.polygons[0]["exterior"] == [
            [10, 10],
            [40, 10],
            [40, 40],
            [10, 40],
        ]
        assert len({r.annotation.annotation_id for r in out.annotations}) == 2
    raw = {r.annotation.annotator: r.annotation for r in by_id[ids[0]].annotations}
    assert raw["w-a"].lead_time_s == 12.0 and raw["w-b"].lead_time_s == 30.25
    assert raw["w-b"].updated_at == "2026-01-06T00:00:09Z"
    assert raw["w-b"].created_at == "2026-01-05T23:59:00Z"
    assert by_id[ids[3]].status == "unannotated"
    (fail,) = report.failures
    assert fail[0] == f"{ids[2][:12]} (job {job} line 3)"
    assert "outside the 80x60 px image" in fail[1]


@pytest.mark.parametrize(
    ("status", "extra", "expect_status", "expect_text"),
    [
        (
            "InProgress",
            {
                "counters": {
                    "TotalLabeled": 3,
                    "HumanLabeled": 3,
                    "MachineLabeled": 0,
                    "FailedNonRetryableError": 0,
                    "Unlabeled": 7,
                }
            },
            "unannotated",
            "InProgress: 3 labeled",
        ),
        ("Stopped", {}, "unannotated", "stopped before any output"),
        (
            "Failed",
            {"failure": "ClientError: the role cannot read s3://x"},
            "failed",
            "the role cannot read",
        ),
    ],
)
def test_pull_reports_job_status(ws, s3, sm, aws_env, status, extra, expect_status, expect_text):
    client, stub = sm
    job = "camlabel-cccccccccccc"
    refs = job_refs(job, [(iid(20), 10, 10), (iid(21), 10, 10)])
    stub.add_response("describe_labeling_job", describe_response(job, status, **extra))
    report = backend(ws, aws_env, client).pull(refs, progress=False)
    assert {o.status for o in report.outcomes} == {expect_status}
    assert all(expect_text in o.message for o in report.outcomes)
    if status == "Failed":
        assert "the role cannot read" in report.failures[0][1]


def test_pull_unknown_job(ws, s3, sm, aws_env):
    client, stub = sm
    refs = job_refs("camlabel-dddddddddddd", [(iid(30), 10, 10)])
    not_found(stub)
    report = backend(ws, aws_env, client).pull(refs, progress=False)
    assert report.outcomes[0].status == "failed"
    assert "does not exist in region us-east-1" in report.failures[0][1]


def test_pull_cursor_skips_an_unchanged_completed_job(ws, s3, sm, aws_env):
    client, stub = sm
    job = "camlabel-eeeeeeeeeeee"
    root = f"{OUT}/{job}"
    refs = job_refs(job, [(iid(40), 10, 12)])
    line = {
        "source-ref": "s3://b/i.png",
        "camlabel-image-id": iid(40),
        "camlabel-lesion-ref": f"{root}/m.png",
        "camlabel-lesion-ref-metadata": {
            "internal-color-map": CMAP,
            "type": "groundtruth/semantic-segmentation",
            "creation-date": "2026-01-01T00:00:00",
        },
    }
    put(s3, f"{root}/manifests/output/output.manifest", json.dumps(line) + "\n")
    put(s3, f"{root}/m.png", color_png(10, 12, (1, 1, 5, 5)))
    resp = describe_response(
        job, "Completed", output_uri=f"{root}/manifests/output/output.manifest"
    )
    stub.add_response("describe_labeling_job", resp)
    first = backend(ws, aws_env, client).pull(refs, progress=False)
    assert len(first.outcomes) == 1 and first.cursor["jobs"][job]["complete"] is True
    stub.add_response("describe_labeling_job", resp)
    second = backend(ws, aws_env, client).pull(refs, cursor=first.cursor, progress=False)
    assert second.outcomes == [] and second.cursor == first.cursor


def test_real_ground_truth_sample_converts(ws, s3, sm, aws_env, shared_data):
    """The real output.manifest + mask.png (4 classes, a foreign job): lesion = class 'IC'."""
    from PIL import Image

    sample = shared_data / "annotations-real" / "sagemaker-ground-truth"
    client, stub = sm
    text = (sample / "output.manifest").read_text()
    line = json.loads(text.splitlines()[0])
    label_attr = next(k for k in line if k.endswith("-ref") and f"{k}-metadata" in line)
    mask_bucket, mask_key = split(line[label_attr])
    s3.create_bucket(Bucket=mask_bucket)
    s3.put_object(Bucket=mask_bucket, Key=mask_key, Body=(sample / "mask.png").read_bytes())
    out_uri = f"{OUT}/s10-label3/manifests/output/output.manifest"
    put(s3, out_uri, text)

    rgb = np.asarray(Image.open(sample / "mask.png").convert("RGB"))
    h, w = rgb.shape[:2]
    cmap = line[f"{label_attr}-metadata"]["internal-color-map"]
    independent = {}
    for k, v in cmap.items():
        hx = v["hex-color"].lstrip("#")
        color = tuple(int(hx[i : i + 2], 16) for i in (0, 2, 4))
        independent[int(k)] = int(np.all(rgb == color, axis=2).sum())
    assert sum(independent.values()) == h * w  # every pixel has a mapped colour

    from camlabel.backends.groundtruth.convert import decode_label_png

    classes = decode_label_png((sample / "mask.png").read_bytes(), cmap)
    assert {int(c): int((classes == c).sum()) for c in cmap_keys(cmap)} == independent

    image_id = iid(50)
    refs = {
        image_id: JobRef(
            backend="groundtruth",
            project="s10-label3",
            task="0",
            extra={"region": REGION, "height": h, "width": w},
        )
    }
    stub.add_response(
        "describe_labeling_job",
        describe_response("s10-label3", "Completed", output_uri=out_uri, label_attr=label_attr),
    )
    report = backend(ws, aws_env, client, label="IC").pull(refs, progress=False)
    assert report.failures == []
    (outcome,) = report.outcomes
    ic = next(int(k) for k, v in cmap.items() if v["class-name"] == "IC")
    (res,) = outcome.annotations
    assert res.mask.shape == (h, w)
    assert int(res.mask.sum()) == independent[ic]
    assert res.annotation.updated_at == "2022-09-09T17:25:32Z"

    # With the workspace's lesion label the foreign classes are a clear per-object error.
    stub.add_response(
        "describe_labeling_job",
        describe_response("s10-label3", "Completed", output_uri=out_uri, label_attr=label_attr),
    )
    report = backend(ws, aws_env, client).pull(refs, progress=False)
    assert report.outcomes == []
    assert "'Opacity'" in report.failures[0][1] and "IC" in report.failures[0][1]


def cmap_keys(cmap):
    return sorted(int(k) for k in cmap)


def test_consolidation_lambda_reads_payload_from_s3(s3, aws_env, monkeypatch):
    from camlabel.lambdas.gt_polygon_consolidate import lambda_handler

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)
    content = {
        "annotatedResult": {
            "inputImageProperties": {"height": 20, "width": 20},
            "polygons": [gt_square(1, 1, 9, 9)],
        }
    }
    payload = [
        {
            "datasetObjectId": "0",
            "dataObject": {"s3Uri": f"s3://{BUCKET}/camlabel/images/a.png"},
            "annotations": [
                {"workerId": "w1", "annotationData": {"content": json.dumps(content)}},
                {"workerId": "w2", "annotationData": {"content": json.dumps(content)}},
            ],
        }
    ]
    uri = f"s3://{BUCKET}/camlabel/output/job/annotations/consolidated-annotation/consolidation-request/iteration-1/x.json"
    put(s3, uri, json.dumps(payload))
    event = {
        "version": "2018-10-16",
        "labelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/job",
        "labelCategories": ["Opacity"],
        "labelAttributeName": "camlabel-lesion-polygons",
        "roleArn": ROLE,
        "payload": {"s3Uri": uri},
    }
    (out,) = lambda_handler(event, None)
    assert out["datasetObjectId"] == "0"
    label = out["consolidatedAnnotation"]["content"]["camlabel-lesion-polygons"]
    assert label["annotatedResult"] == content["annotatedResult"]
    assert label["consensus"]["meanIoU"] == 1.0
    assert [w["workerId"] for w in label["workers"]] == ["w1", "w2"]


# ----------------------------------------------------------------------------- through the loop
def test_loop_push_and_pull_through_the_interface(ws, s3, sm, aws_env):
    """camlabel.loop drives the backend; masks and telemetry land in the workspace."""
    from camlabel import loop
    from camlabel.records import ImageRecord

    client, stub = sm
    items = make_items(ws)
    for item in items:
        ws.ledger.put(
            ImageRecord(
                image_id=item.image_id,
                source_path=str(item.display_png),
                source_format="png",
                width=item.width,
                height=item.height,
                display_path=ws.rel(item.display_png),
                preannotation=item.preannotation,
            )
        )
    opts = {
        "bucket": BUCKET,
        "role_arn": ROLE,
        "workteam_arn": TEAM,
        "endpoint_url": aws_env,
        "sagemaker_client": client,
    }
    not_found(stub)
    stub.add_response(
        "create_labeling_job",
        {"LabelingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/x"},
    )
    report = loop.push_jobs(ws, "groundtruth", options=opts, progress=False)
    job = report.project
    assert {r.image_id: r.jobs["groundtruth"].project for r in ws.ledger.all()} == {
        i.image_id: job for i in items
    }

    root = f"{OUT}/{job}"
    lines = []
    boxes = [(2, 3, 20, 25), (30, 5, 60, 40)]
    for item, box in zip(items, boxes, strict=True):
        idx = int(ws.ledger.get(item.image_id).jobs["groundtruth"].task)
        uri = f"{root}/annotations/consolidated-annotation/output/{idx}.png"
        put(s3, uri, color_png(item.height, item.width, box))
        lines.append(
            json.dumps(
                {
                    "source-ref": f"s3://{BUCKET}/camlabel/images/{item.image_id}.png",
                    "camlabel-image-id": item.image_id,
                    "camlabel-lesion-ref": uri,
                    "camlabel-lesion-ref-metadata": {
                        "internal-color-map": CMAP,
                        "type": "groundtruth/semantic-segmentation",
                        "human-annotated": "yes",
                        "creation-date": "2026-01-07T00:00:00.000000",
                        "adjustment-status": "adjusted",
                    },
                }
            )
        )
    put(s3, f"{root}/manifests/output/output.manifest", "\n".join(lines) + "\n")
    stub.add_response(
        "describe_labeling_job",
        describe_response(job, "Completed", output_uri=f"{root}/manifests/output/output.manifest"),
    )
    summary = loop.pull_masks(
        ws,
        "groundtruth",
        options={"endpoint_url": aws_env, "sagemaker_client": client},
        progress=False,
    )
    assert summary.failed == []
    assert summary.masks_written == 2
    from camlabel.imaging import read_mask_png

    for item, box in zip(items, boxes, strict=True):
        rec = ws.ledger.get(item.image_id)
        assert rec.mask is not None
        np.testing.assert_array_equal(
            read_mask_png(ws.abs(rec.mask.path)), rect_mask(item.height, item.width, box)
        )
        (ann,) = rec.annotations
        assert ann.accepted_unchanged is False


def test_pull_stopped_job_reads_the_partial_output(ws, s3, sm, aws_env):
    client, stub = sm
    job = "camlabel-ffffffffffff"
    root = f"{OUT}/{job}"
    ids = [iid(60), iid(61)]
    refs = job_refs(job, [(i, 10, 12) for i in ids])
    labeled = {
        "source-ref": "s3://b/a.png",
        "camlabel-image-id": ids[0],
        "camlabel-lesion-ref": f"{root}/a.png",
        "camlabel-lesion-ref-metadata": {
            "internal-color-map": CMAP,
            "type": "groundtruth/semantic-segmentation",
            "creation-date": "2026-01-01T00:00:00",
        },
    }
    unlabeled = {"source-ref": "s3://b/b.png", "camlabel-image-id": ids[1]}
    put(
        s3,
        f"{root}/manifests/output/output.manifest",
        f"{json.dumps(labeled)}\n{json.dumps(unlabeled)}\n",
    )
    put(s3, f"{root}/a.png", color_png(10, 12, (0, 0, 4, 4)))
    # A raw response for the unlabeled object (submitted, not consolidated yet) changes nothing.
    put(
        s3,
        f"{root}/annotations/worker-response/iteration-1/1/x.json",
        worker_file([{"workerId": "w", "answerContent": {"crowd-semantic-segmentation": {}}}]),
    )
    stub.add_response(
        "describe_labeling_job",
        describe_response(job, "Stopped", output_uri=f"{root}/manifests/output/output.manifest"),
    )
    report = backend(ws, aws_env, client).pull(refs, progress=False)
    by_id = {o.image_id: o for o in report.outcomes}
    assert report.failures == []
    assert by_id[ids[0]].status == "annotated"
    np.testing.assert_array_equal(
        by_id[ids[0]].annotations[0].mask, rect_mask(10, 12, (0, 0, 4, 4))
    )
    assert by_id[ids[1]].status == "unannotated"
    assert report.cursor["jobs"][job]["complete"] is False  # a stopped job is read again next time
