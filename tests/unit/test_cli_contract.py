"""The CLI contract: every command exists with help, --version, exit codes, init/status."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from camlabel.cli.main import cli

COMMANDS = [
    "init",
    "phantoms",
    "train-cls",
    "evaluate",
    "gradcam",
    "audit",
    "push-jobs",
    "pull-masks",
    "status",
    "train-seg",
    "predict",
    "report",
    "demo",
    "labelstudio",
    "add",
    "import-annotations",
    "export",
    "merge-shards",
    "ledger",
]


def test_every_command_is_listed_and_has_help() -> None:
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in r.output, name
        h = CliRunner().invoke(cli, [name, "--help"])
        assert h.exit_code == 0, (name, h.output)
        assert "Usage:" in h.output
    for sub in ("start", "stop", "status"):
        h = CliRunner().invoke(cli, ["labelstudio", sub, "--help"])
        assert h.exit_code == 0 and "Usage:" in h.output


def test_every_command_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for name in COMMANDS:
        assert f"camlabel {name}" in text, f"docs/cli.md does not document {name}"


def test_version() -> None:
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0
    assert r.output.startswith("camlabel, version ")


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = "import sys, time; t=time.time(); from camlabel.cli.main import cli; print(sorted(m for m in ('tensorflow','keras','label_studio_sdk','boto3','cv2','numpy') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "camlabel", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t < 5  # generous: ~0.2 s here; guards against importing TF


def test_usage_error_exits_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["phantoms", str(tmp_path), "--count", "0"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["no-such-command"])
    assert r.exit_code == 2


def test_init_status_and_missing_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    r = CliRunner().invoke(
        cli, ["init", str(ws), "--classes", "covid,pneumonia,normal", "--seed", "7"]
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((ws / "camlabel.json").read_text())
    assert cfg["classes"] == ["covid", "pneumonia", "normal"] and cfg["seed"] == 7
    for d in ("images", "heatmaps", "masks", "models", "reports", "annotations"):
        assert (ws / d).is_dir()
    assert stat.S_IMODE(os.stat(ws / "secrets").st_mode) == 0o700
    # init again keeps the config
    cfg["seed"] = 99
    (ws / "camlabel.json").write_text(json.dumps(cfg))
    assert CliRunner().invoke(cli, ["init", str(ws)]).exit_code == 0
    assert json.loads((ws / "camlabel.json").read_text())["seed"] == 99

    r = CliRunner().invoke(cli, ["status", "-w", str(ws), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["images"] == 0 and st["states"]["registered"] == 0

    r = CliRunner().invoke(cli, ["status", "-w", str(tmp_path / "nope")])
    assert r.exit_code == 1
    assert "not a camlabel workspace" in r.output and "camlabel init" in r.output


def test_workspace_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws2"
    assert CliRunner().invoke(cli, ["init", str(ws)]).exit_code == 0
    monkeypatch.setenv("CAMLABEL_WORKSPACE", str(ws))
    r = CliRunner().invoke(cli, ["status", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["workspace"] == str(ws.resolve())


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws3"
    assert CliRunner().invoke(cli, ["init", str(ws)]).exit_code == 0
    (ws / "camlabel.json").write_text('{"classes": ["covid"]}')
    r = CliRunner().invoke(cli, ["status", "-w", str(ws)])
    assert r.exit_code == 1
    assert "'classes' must be a list of at least 2 distinct names" in r.output


def test_push_without_preannotations_is_a_usage_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws4"
    assert CliRunner().invoke(cli, ["init", str(ws)]).exit_code == 0
    r = CliRunner().invoke(cli, ["push-jobs", "-w", str(ws), "--backend", "labelstudio"])
    assert r.exit_code == 2
    assert "nothing to push" in r.output and "camlabel gradcam" in r.output
