"""The backend registry: every backend describes its settings, the CLI offers them as flags,
and a new backend (the fake one) needed its module plus one registry line, nothing else."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from camlabel.backends.base import BACKENDS, Backend, backend_class, backend_names, get_backend
from camlabel.cli.labeling import pull_masks, push_jobs
from camlabel.cli.main import cli
from camlabel.config import fields_of
from camlabel.errors import UsageError
from camlabel.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]


def _options(command: click.Command) -> dict[str, click.Option]:
    ctx = click.Context(command)
    return {p.name: p for p in command.get_params(ctx) if isinstance(p, click.Option) and p.name}


def test_registry_lists_backends_and_hides_the_fake_one() -> None:
    assert backend_names() == ["labelstudio", "groundtruth"]
    assert backend_names(include_hidden=True) == ["labelstudio", "groundtruth", "fake"]
    for name in BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
    with pytest.raises(UsageError, match=r"supported backends: \['groundtruth', 'labelstudio'\]"):
        backend_class("cvat")


@pytest.mark.parametrize("name", backend_names())
def test_every_setting_with_a_flag_is_a_cli_option_with_help(name: str) -> None:
    cls = backend_class(name)
    declared = [f for f in fields_of(cls.settings_class, cls.env_prefix) if f.flag]
    assert declared, f"{name} declares no flag"
    for command in (push_jobs, pull_masks):
        opts = _options(command)
        for f in declared:
            if command.name not in f.commands:
                assert f.name not in opts or any(
                    f.name in {g.name for g in fields_of(backend_class(o).settings_class)}
                    for o in backend_names()
                    if o != name
                )
                continue
            opt = opts[f.name]
            assert f.flag.split("/")[0] in opt.opts, (command.name, f.name)
            assert opt.help and opt.help.startswith(f"[{f.cli_tag or name}]") and f.help in opt.help
            if f.choices:
                assert isinstance(opt.type, click.Choice) and list(opt.type.choices) == list(
                    f.choices
                )


def test_cli_help_lists_the_backend_flags() -> None:
    out = CliRunner().invoke(cli, ["push-jobs", "--help"]).output
    for flag in (
        "--url",
        "--token",
        "--project",
        "--upload / --local-files",
        "--bucket",
        "--job-type",
        "--kms-key",
        "--acs-lambda-arn",
    ):
        assert flag in out, flag
    out = CliRunner().invoke(cli, ["pull-masks", "--help"]).output
    assert "--url" in out and "--region" in out and "--bucket" not in out
    r = CliRunner().invoke(cli, ["push-jobs", "--backend", "fake", "--dry-run"])
    assert r.exit_code == 2 and "'fake' is not one of" in r.output  # not offered


def test_a_flag_of_another_backend_is_a_usage_error(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    with pytest.raises(
        UsageError, match=r"--bucket is a groundtruth option.*--backend labelstudio"
    ):
        get_backend("labelstudio", ws, {"bucket": "b"})
    with pytest.raises(
        UsageError, match=r"--token is a labelstudio option.*Received: --token \*\*\*"
    ):
        get_backend("groundtruth", ws, {"token": "secret"})


def test_the_fake_backend_lives_in_its_module_and_one_registry_line() -> None:
    pkg = ROOT / "camlabel"
    others = [
        *sorted((pkg / "cli").rglob("*.py")),
        pkg / "workspace.py",
        pkg / "loop.py",
        *(
            p
            for p in sorted((pkg / "backends").rglob("*.py"))
            if p.name not in ("fake.py", "base.py")
        ),
    ]
    for path in others:
        assert "fake" not in path.read_text(encoding="utf-8").lower(), path
    base = (pkg / "backends" / "base.py").read_text(encoding="utf-8")
    assert [line for line in base.splitlines() if "backends.fake" in line] == [
        '    "fake": BackendEntry("camlabel.backends.fake:FakeBackend", hidden=True),'
    ]
