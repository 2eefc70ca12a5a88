"""camlabel.aws: the one boto3 client factory and the one botocore -> camlabel error mapping."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
)

from camlabel import aws
from camlabel.errors import BackendError, BackendUnavailable, ConfigError


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def _refusal(code: str, message: str = "no") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")


def test_client_has_timeouts_region_endpoint_and_bounded_standard_retries(no_aws_env) -> None:
    s3 = aws.client(
        "s3",
        "eu-west-1",
        endpoint_url="http://127.0.0.1:9",
        connect_timeout=3.0,
        read_timeout=7.0,
        max_attempts=2,
    )
    cfg = s3.meta.config
    assert s3.meta.region_name == "eu-west-1"
    assert s3.meta.endpoint_url == "http://127.0.0.1:9"
    assert (cfg.connect_timeout, cfg.read_timeout) == (3.0, 7.0)
    # botocore counts the first try in total_max_attempts: max_attempts=2 -> 3 tries.
    assert cfg.retries == {"total_max_attempts": 3, "mode": "standard"}


def test_max_attempts_honours_aws_max_attempts(no_aws_env, monkeypatch) -> None:
    def tries() -> int:
        return int(aws.client("sagemaker", "us-east-1").meta.config.retries["total_max_attempts"])

    assert tries() == aws.DEFAULT_MAX_ATTEMPTS + 1
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert tries() == 2
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="AWS_MAX_ATTEMPTS must be an integer"):
        aws.client("sagemaker", "us-east-1")


def test_no_region_is_a_config_error(no_aws_env) -> None:
    with pytest.raises(ConfigError, match="no AWS region for the SageMaker job") as info:
        aws.session(None, what="the SageMaker job")
    assert "--region" in (info.value.hint or "")


def test_error_mapping() -> None:
    denied = aws.error(_refusal("AccessDenied", "not allowed"), "PutObject s3://b/k")
    assert type(denied) is BackendError
    assert denied.message == "PutObject s3://b/k: AccessDenied: not allowed"
    assert "IAM" in (denied.hint or "")
    other = aws.error(_refusal("ResourceLimitExceeded", ""), "CreateLabelingJob j")
    assert other.message == "CreateLabelingJob j: ResourceLimitExceeded" and other.hint is None
    creds = aws.error(NoCredentialsError(), "s3:PutObject")
    assert type(creds) is ConfigError and creds.message == "no AWS credentials for s3:PutObject"
    down = aws.error(EndpointConnectionError(endpoint_url="http://x"), "s3:GetObject")
    assert type(down) is BackendUnavailable and down.message.startswith("s3:GetObject failed: ")
    bad = aws.error(ParamValidationError(report="Bucket"), "s3:GetObject")
    assert type(bad) is BackendError and "Bucket" in bad.message


def _raising(exc: Exception):
    def send() -> None:
        raise exc

    return send


def test_call_returns_none_only_for_the_missing_codes() -> None:
    assert aws.call(lambda: {"ok": 1}, "x") == {"ok": 1}
    missing = ("NoSuchKey", "404")
    assert aws.call(_raising(_refusal("NoSuchKey")), "GetObject s3://b/k", missing=missing) is None
    with pytest.raises(BackendError, match="GetObject s3://b/k: AccessDenied") as info:
        aws.call(_raising(_refusal("AccessDenied")), "GetObject s3://b/k", missing=missing)
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(BackendUnavailable, match="GetObject s3://b/k failed"):
        aws.call(_raising(EndpointConnectionError(endpoint_url="http://x")), "GetObject s3://b/k")
