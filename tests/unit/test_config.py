"""camlabel.config: the one resolver (flag > CAMLABEL_* env > camlabel.json > default),
type coercion and the errors it raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from camlabel import config
from camlabel.config import (
    DEFAULT_SEED,
    CamSettings,
    ConsensusSettings,
    LabelStudioSettings,
    SageMakerSection,
    resolve,
)
from camlabel.errors import ConfigError
from camlabel.preannotate import cam_settings
from camlabel.workspace import Workspace


def test_precedence_flag_env_file_default(monkeypatch: pytest.MonkeyPatch) -> None:
    section = {"threshold": 0.3, "epsilon_px": 2, "method": "gradcampp"}
    monkeypatch.setenv("CAMLABEL_CAM_THRESHOLD", "0.4")
    monkeypatch.setenv("CAMLABEL_CAM_MAX_VERTICES", "none")
    s = resolve(CamSettings, {"method": "gradcam"}, section, "CAMLABEL_CAM_", section="cam")
    assert s.method == "gradcam"  # flag
    assert s.threshold == 0.4  # env over the file
    assert s.epsilon_px == 2.0 and isinstance(s.epsilon_px, float)  # file
    assert s.max_vertices is None  # env "none"
    assert s.min_area_fraction == 0.002  # default
    monkeypatch.setenv("CAMLABEL_CAM_THRESHOLD", "otsu")
    assert resolve(CamSettings, None, None, "CAMLABEL_CAM_").threshold == "otsu"


def test_null_in_the_file_is_none_only_where_none_is_allowed() -> None:
    s = resolve(CamSettings, None, {"max_vertices": None, "method": None}, None)
    assert s.max_vertices is None and s.method == "gradcam"


def test_errors_name_source_key_value_and_type(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(CamSettings, None, {"threshold": "high"}, None, section="cam")
    msg = exc.value.message
    assert "camlabel.json" in msg and "cam.threshold" in msg and "'high'" in msg
    assert "a number or 'otsu'" in msg
    monkeypatch.setenv("CAMLABEL_CONSENSUS_MIN_ANNOTATIONS", "two")
    with pytest.raises(ConfigError, match=r"CAMLABEL_CONSENSUS_MIN_ANNOTATIONS.*an integer"):
        resolve(ConsensusSettings, None, None, "CAMLABEL_CONSENSUS_", section="consensus")
    with pytest.raises(ConfigError, match=r"supported options: \['min_annotations', 'rule'\]"):
        resolve(ConsensusSettings, {"rules": "union"}, None, None)


def test_secrets_are_never_shown_nor_read_from_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    s = resolve(LabelStudioSettings, None, {"token": "from-file", "url": "http://x"}, "X_")
    assert s.token is None and s.url == "http://x"
    monkeypatch.setenv("CAMLABEL_LS_TOKEN", "s3cr3t-token")
    s = resolve(LabelStudioSettings, None, None, "CAMLABEL_LS_")
    assert s.token == "s3cr3t-token"
    assert "s3cr3t" not in repr(s) and "token" not in config.describe(s)
    with pytest.raises(ConfigError) as exc:
        resolve(LabelStudioSettings, {"token": 12345}, None, None)
    assert "12345" not in exc.value.message and "***" in exc.value.message


def test_env_strings_are_coerced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMLABEL_LS_UPLOAD", "false")
    monkeypatch.setenv("CAMLABEL_LS_PORT", "9000")
    monkeypatch.setenv("CAMLABEL_LS_PROJECT", "7")
    s = resolve(LabelStudioSettings, None, None, "CAMLABEL_LS_")
    assert (s.upload, s.port, s.project) == (False, 9000, "7")


def test_cam_settings_reads_workspace_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.config["cam"]["threshold"] = 0.25
    assert cam_settings(ws)["threshold"] == 0.25
    monkeypatch.setenv("CAMLABEL_CAM_EPSILON_PX", "3")
    got = cam_settings(ws, method="gradcampp", fusion=None)
    assert got == {
        "method": "gradcampp",
        "fusion": "normalize-mean",
        "threshold": 0.25,
        "min_area_fraction": 0.002,
        "epsilon_px": 3.0,
        "max_vertices": 64,
        "refine": "lung+opacity",
    }
    assert ws.settings.cam.threshold == 0.25


def test_one_default_seed(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    assert ws.config["seed"] == DEFAULT_SEED == ws.settings.workspace.seed


def test_sagemaker_falls_back_to_the_groundtruth_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.config["groundtruth"].update(bucket="gt-bucket", role_arn="arn:gt", prefix="gt/p")
    s = ws.settings.sagemaker()
    assert (s.bucket, s.role_arn, s.prefix, s.region) == (
        "gt-bucket",
        "arn:gt",
        "gt/p",
        "us-east-1",
    )
    ws.config["sagemaker"] = {"bucket": "sm-bucket", "region": "eu-west-1"}
    monkeypatch.setenv("CAMLABEL_SEG_PREFIX", "env/p")
    s = ws.settings.sagemaker({"role_arn": "arn:flag"})
    assert (s.bucket, s.role_arn, s.prefix, s.region) == (
        "sm-bucket",
        "arn:flag",
        "env/p",
        "eu-west-1",
    )
    assert isinstance(s, SageMakerSection)
