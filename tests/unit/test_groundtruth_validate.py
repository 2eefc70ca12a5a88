"""Offline request validation against botocore's model, and the built-in Lambda table."""

from __future__ import annotations

import re

import pytest

from camlabel.backends.groundtruth.plan import (
    ADJUSTMENT_TASK,
    BUILTIN_LAMBDA_ACCOUNTS,
    builtin_lambda_arn,
    job_name_for,
)
from camlabel.backends.groundtruth.validate import (
    constraint_violations,
    request_problems,
    service_model,
    validate_request,
)
from camlabel.errors import ConfigError, ValidationError

ROLE = "arn:aws:iam::123456789012:role/service-role/camlabel-gt"
TEAM = "arn:aws:sagemaker:us-east-1:123456789012:workteam/private-crowd/radiologists"


def good_request(**over):
    req = {
        "LabelingJobName": "camlabel-0123456789ab",
        "LabelAttributeName": "camlabel-lesion-ref",
        "InputConfig": {
            "DataSource": {"S3DataSource": {"ManifestS3Uri": "s3://b/p/input.manifest"}}
        },
        "OutputConfig": {"S3OutputPath": "s3://b/p/output/"},
        "RoleArn": ROLE,
        "LabelCategoryConfigS3Uri": "s3://b/p/categories.json",
        "HumanTaskConfig": {
            "WorkteamArn": TEAM,
            "UiConfig": {"UiTemplateS3Uri": "s3://b/p/template.liquid.html"},
            "PreHumanTaskLambdaArn": builtin_lambda_arn("PRE", ADJUSTMENT_TASK, "us-east-1"),
            "TaskKeywords": ["Image Segmentation"],
            "TaskTitle": "t",
            "TaskDescription": "d",
            "NumberOfHumanWorkersPerDataObject": 1,
            "TaskTimeLimitInSeconds": 300,
            "AnnotationConsolidationConfig": {
                "AnnotationConsolidationLambdaArn": builtin_lambda_arn(
                    "ACS", ADJUSTMENT_TASK, "us-east-1"
                )
            },
        },
    }
    req.update(over)
    return req


def test_a_good_request_passes():
    assert request_problems("sagemaker", "CreateLabelingJob", good_request()) == []
    validate_request("sagemaker", "CreateLabelingJob", good_request())


def test_illegal_job_name_is_refused_naming_field_value_and_rule():
    with pytest.raises(ValidationError) as info:
        validate_request(
            "sagemaker", "CreateLabelingJob", good_request(LabelingJobName="camlabel_bad name")
        )
    msg = str(info.value)
    assert "LabelingJobName" in msg
    assert "'camlabel_bad name'" in msg
    assert "pattern" in msg


def test_missing_role_is_refused_naming_the_field():
    req = good_request()
    del req["RoleArn"]
    with pytest.raises(ValidationError, match="RoleArn"):
        validate_request("sagemaker", "CreateLabelingJob", req)


def test_botocore_alone_skips_pattern_and_max_constraints():
    """Why the walker exists: botocore's own validator accepts these."""
    from botocore.validate import ParamValidator

    shape = service_model("sagemaker").operation_model("CreateLabelingJob").input_shape
    bad = good_request(LabelingJobName="x" * 64 + "_")
    assert not ParamValidator().validate(bad, shape).has_errors()
    problems = [str(v) for v in constraint_violations(bad, shape)]
    assert any("LabelingJobName" in p and "length must be <= 63" in p for p in problems)
    assert any("LabelingJobName" in p and "pattern" in p for p in problems)


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        (("HumanTaskConfig", "NumberOfHumanWorkersPerDataObject"), 10, "must be <= 9"),
        (("HumanTaskConfig", "TaskTimeLimitInSeconds"), 10, "must be >= 30"),
        (("HumanTaskConfig", "TaskKeywords"), ["bad_kw"], "TaskKeywords[0]"),
        (
            ("HumanTaskConfig", "TaskKeywords"),
            ["a", "b", "c", "d", "e", "f"],
            "item count must be <= 5",
        ),
        (("HumanTaskConfig", "WorkteamArn"), "arn:aws:iam::123456789012:role/x", "pattern"),
        (("RoleArn",), "arn:aws:iam::123:role/x", "pattern"),
        (("OutputConfig", "KmsKeyId"), "key with spaces", "pattern"),
    ],
)
def test_constraint_walker_names_the_field_path(path, value, rule):
    req = good_request()
    holder = req
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    problems = request_problems("sagemaker", "CreateLabelingJob", req)
    dotted = ".".join(path)
    assert any(p.startswith(dotted) and rule in p for p in problems), problems


def test_enum_constraint():
    req = good_request(
        InputConfig={
            "DataSource": {"S3DataSource": {"ManifestS3Uri": "s3://b/m"}},
            "DataAttributes": {"ContentClassifiers": ["FreeOfAdultContent", "Nope"]},
        }
    )
    problems = request_problems("sagemaker", "CreateLabelingJob", req)
    assert any(
        "InputConfig.DataAttributes.ContentClassifiers[1]" in p and "one of" in p for p in problems
    )


def test_java_unicode_classes_do_not_refuse_valid_tags():
    req = good_request(Tags=[{"Key": "camlabel:job-type", "Value": "Überprüfung 2 @x"}])
    assert request_problems("sagemaker", "CreateLabelingJob", req) == []


def test_s3_requests_validate_too():
    assert request_problems("s3", "PutObject", {"Bucket": "b", "Key": "k", "Body": b"x"}) == []
    assert any(
        "Key" in p for p in request_problems("s3", "PutObject", {"Bucket": "b", "Body": b""})
    )


# ----------------------------------------------------------------------------- job names
def test_job_name_is_stable_and_legal():
    a = job_name_for(b'{"source-ref":"s3://b/x.png"}\n', "adjustment", "Opacity")
    assert a == job_name_for(b'{"source-ref":"s3://b/x.png"}\n', "adjustment", "Opacity")
    assert a != job_name_for(b'{"source-ref":"s3://b/y.png"}\n', "adjustment", "Opacity")
    assert a != job_name_for(b'{"source-ref":"s3://b/x.png"}\n', "polygon", "Opacity")
    assert re.fullmatch(r"camlabel-[0-9a-f]{12}", a)
    pattern = service_model("sagemaker").shape_for("LabelingJobName").metadata["pattern"]
    assert re.fullmatch(pattern, a)


# ----------------------------------------------------------------------------- lambda table
def _documented_arns() -> set[tuple[str, str, str]]:
    h = (
        service_model("sagemaker")
        .operation_model("CreateLabelingJob")
        .input_shape.members["HumanTaskConfig"]
    )
    docs = (
        h.members["PreHumanTaskLambdaArn"].documentation
        + h.members["AnnotationConsolidationConfig"]
        .members["AnnotationConsolidationLambdaArn"]
        .documentation
    )
    return set(
        re.findall(
            r"arn:aws:lambda:([a-z0-9-]+):(\d{12}):function:((?:PRE|ACS)-[A-Za-z0-9]+)", docs
        )
    )


def test_builtin_lambda_table_matches_botocore_docs():
    documented = _documented_arns()
    adjustment = {(r, a) for r, a, f in documented if f.endswith("-" + ADJUSTMENT_TASK)}
    assert adjustment, "botocore's docs no longer list the adjustment Lambdas"
    assert adjustment == set(BUILTIN_LAMBDA_ACCOUNTS.items())
    for region in BUILTIN_LAMBDA_ACCOUNTS:
        for kind in ("PRE", "ACS"):
            arn = builtin_lambda_arn(kind, ADJUSTMENT_TASK, region)
            r, a, f = re.fullmatch(
                r"arn:aws:lambda:([a-z0-9-]+):(\d{12}):function:(.+)", arn
            ).groups()
            assert (r, a, f) in documented


def test_unknown_region_lists_the_supported_ones():
    with pytest.raises(ConfigError) as info:
        builtin_lambda_arn("PRE", ADJUSTMENT_TASK, "sa-east-1")
    assert "sa-east-1" in str(info.value) and "us-east-1" in str(info.value)
