"""Shared Click options and helpers. Light imports only (``camlabel --help`` must be fast)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def workspace_option(f: F) -> F:
    """``--workspace/-w`` (env CAMLABEL_WORKSPACE, default: the current directory)."""
    return click.option(
        "--workspace",
        "-w",
        "workspace",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="CAMLABEL_WORKSPACE",
        default=".",
        show_default="current directory",
        help="Workspace folder (env CAMLABEL_WORKSPACE).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def open_workspace(path: Path) -> Any:
    from camlabel.workspace import Workspace

    return Workspace.open(path)


def show_progress() -> bool:
    """Progress bars unless -q was given (they also go quiet when stderr is not a TTY)."""
    return os.environ.get("CAMLABEL_QUIET") != "1"


def verbose() -> int:
    return int(os.environ.get("CAMLABEL_VERBOSITY", "0"))


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def info(msg: str) -> None:
    """A status line on stderr (kept off stdout so --json output stays clean); quiet with -q."""
    if os.environ.get("CAMLABEL_QUIET") != "1":
        click.echo(msg, err=True)


def print_failures(failures: list[tuple[str, str]], what: str = "item") -> None:
    if not failures:
        return
    click.echo(f"{len(failures)} {what}(s) failed:", err=True)
    for item, reason in failures:
        click.echo(f"  {item}: {reason}", err=True)


def not_implemented(name: str, issue: int) -> None:
    from camlabel.errors import NotImplementedYet

    raise NotImplementedYet(
        f"'camlabel {name}' is not implemented yet (tracked in issue {issue})",
        hint="see README.md for the commands that work today",
    )


def lung_field_options(f: F) -> F:
    """``--lung-masks DIR`` and ``--lung-model SEG``: where a lung field comes from."""
    f = click.option(
        "--lung-model",
        type=click.Path(exists=True, path_type=Path),
        default=None,
        help="A lung segmenter (train-seg model folder) for the images --lung-masks does not cover.",
    )(f)
    return click.option(
        "--lung-masks",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help="Folder of lung masks matched by relative path or file name (lung = 255).",
    )(f)


def refine_option(f: F) -> F:
    """``--refine``: how a CAM becomes a mask (camlabel.cam.refine)."""
    from camlabel.config import CAM_REFINEMENTS

    return click.option(
        "--refine",
        type=click.Choice(CAM_REFINEMENTS),
        default=None,
        help="How each CAM becomes a mask [workspace cam.refine: lung+opacity]; the lung ones "
        "need --lung-masks or --lung-model (else none).",
    )(f)
