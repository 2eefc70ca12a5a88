"""The ``camlabel`` command: a thin Click layer over the library.

Each command group lives in its own module; they import only Click at module level, and
every heavy import (TensorFlow, SDKs) happens inside a command body, so ``camlabel --help``
answers in well under a second.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from camlabel import __version__


class CamlabelGroup(click.Group):
    """Turns camlabel's typed errors into clean messages and exit codes (1 failure, 2 usage)."""

    def invoke(self, ctx: click.Context) -> Any:
        from camlabel.errors import CamlabelError

        try:
            return super().invoke(ctx)
        except CamlabelError as exc:
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            failures = getattr(exc, "failures", None)
            if failures:
                for item, reason in failures:
                    click.echo(f"  {item}: {reason}", err=True)
            if _verbosity() >= 2:  # docs/cli.md: tracebacks only at -vv
                import traceback

                traceback.print_exc()
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if _verbosity() >= 2:
                raise
            click.secho(f"error: {os_error_message(exc)}", fg="red", err=True)
            click.echo(f"  hint: {os_error_hint(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "interrupted: what was finished is saved; re-run the command to resume", err=True
            )
            ctx.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # keep the loop's order, not alphabetical


@click.group(
    cls=CamlabelGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="camlabel")
@click.option("-v", "--verbose", count=True, help="More output (-vv: debug, tracebacks on errors).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and results; no progress bars.")
def cli(verbose: int, quiet: bool) -> None:
    """Human-in-the-loop lesion masks for chest X-rays.

    \b
    The loop:  phantoms / your images
      -> train-cls (DenseNet121 + EfficientNetB0 + VGG19 ensemble)
      -> gradcam (heatmaps -> pre-annotation polygons)  -> audit (shortcut check)
      -> push-jobs (Label Studio or SageMaker Ground Truth) -> annotators correct in the browser
      -> pull-masks (polygons/brush -> binary masks, consensus) -> train-seg (FC-DenseNet103)
      -> predict -> report
    """
    os.environ["CAMLABEL_VERBOSITY"] = str(verbose)
    if quiet:
        os.environ["CAMLABEL_QUIET"] = "1"
    if verbose >= 2:
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _verbosity() -> int:
    value = os.environ.get("CAMLABEL_VERBOSITY", "0")
    return int(value) if value.isdigit() else 0


def os_error_message(exc: OSError) -> str:
    """An OSError the library did not anticipate (read-only or full disk, symlink loop...)."""
    what = exc.strerror or str(exc)
    files = [f for f in (exc.filename, getattr(exc, "filename2", None)) if f]
    return f"{what}: {' -> '.join(str(f) for f in files)}" if files else what


def os_error_hint(exc: OSError) -> str:
    import errno

    return {
        errno.EROFS: "the file system is read-only: use a writable workspace (-w)",
        errno.EACCES: "no permission: make the file or folder writable/readable for this user",
        errno.EPERM: "no permission: make the file or folder writable/readable for this user",
        errno.ENOSPC: "the disk is full: free some space and run the command again "
        "(what was finished is saved)",
        errno.ELOOP: "a symbolic link points to itself (a loop): remove or fix it",
        errno.ENOENT: "check the path",
    }.get(exc.errno or 0, "run again with -vv for the full traceback")


def _register() -> None:
    from camlabel.cli import (
        classify,
        interop,
        labeling,
        labelstudio,
        ledger,
        report,
        segment,
        workspace,
    )

    for mod in (workspace, classify, labeling, segment, report, interop, ledger):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)
    cli.add_command(labelstudio.labelstudio)


_register()


def main() -> None:
    cli(prog_name="camlabel")


if __name__ == "__main__":
    main()
