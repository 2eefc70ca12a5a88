"""push-jobs, pull-masks: the backend-independent labeling commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from camlabel.cli.common import (
    echo_json,
    info,
    json_option,
    open_workspace,
    show_progress,
    workspace_option,
)
from camlabel.errors import BatchError

# listed here (not imported) so that --help stays light; tests check they match
# camlabel.active.STRATEGIES
SELECTION_STRATEGIES = ("random", "uncertainty", "committee")


class BackendOptionsCommand(click.Command):
    """A command whose backend flags are generated from the backend registry.

    Each registered backend's settings class declares its flags (``camlabel.config.setting``:
    flag, help, choices, the commands offering it); they are added the first time Click asks
    for the parameters (a run or ``--help``), so ``camlabel --help`` imports no backend
    module. A flag declared by several backends appears once.
    """

    _backend_flags_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._backend_flags_added:
            self._backend_flags_added = True
            at = len(self.params) - 1  # before --json
            self.params[at:at] = backend_options(self.name or "")
        return super().get_params(ctx)


def backend_options(command: str) -> list[click.Option]:
    """The Click options of every visible backend's settings offered by ``command``."""
    from camlabel.backends.base import backend_class, backend_names
    from camlabel.config import fields_of

    out: dict[str, click.Option] = {}
    for name in backend_names():
        cls = backend_class(name)
        for f in fields_of(cls.settings_class, cls.env_prefix):
            if f.flag is None or command not in f.commands or f.name in out:
                continue
            out[f.name] = click.Option(
                [f.flag, f.name],
                type=click.Choice(f.choices) if f.choices else None,
                default=None,
                help=f"[{f.cli_tag or name}] {f.help}",
            )
    return list(out.values())


def _backend_choice() -> click.Choice:
    from camlabel.backends.base import backend_names

    return click.Choice(backend_names())


def _options(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@click.command("push-jobs", cls=BackendOptionsCommand)
@workspace_option
@click.option(
    "--backend",
    type=_backend_choice(),
    default="labelstudio",
    show_default=True,
    help="Where annotators work.",
)
@click.option(
    "--all",
    "include_all",
    is_flag=True,
    help="Also push images without a pre-annotation (empty tasks).",
)
@click.option(
    "--dry-run", is_flag=True, help="Write what would be sent under WS/exports/ and call nothing."
)
@click.option(
    "--select",
    type=click.IntRange(min=1),
    default=None,
    help="Publish only the N not-yet-published images the --strategy ranks first (active learning).",
)
@click.option(
    "--strategy",
    type=click.Choice(SELECTION_STRATEGIES),
    default="uncertainty",
    show_default=True,
    help="How --select ranks images; the score becomes the task's priority.",
)
@click.option(
    "--round",
    "round_no",
    type=click.IntRange(min=1),
    default=None,
    help="The labeling round recorded for newly published images [default: the last round, or "
    "the next one when the pre-annotations come from a new source (e.g. a trained segmenter)]; "
    "with --select, re-running a round tops it up to N.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --strategy random.")
@json_option
def push_jobs(
    workspace: Path,
    backend: str,
    include_all: bool,
    dry_run: bool,
    select: int | None,
    strategy: str,
    round_no: int | None,
    seed: int,
    as_json: bool,
    **opts: Any,
) -> None:
    """Publish pre-annotated images as labeling tasks (idempotent: re-runs add nothing twice)."""
    from camlabel.loop import push_jobs as run

    ws = open_workspace(workspace)
    report = run(
        ws,
        backend,
        options=_options(**opts),
        include_all=include_all,
        dry_run=dry_run,
        progress=show_progress(),
        select=select,
        strategy=strategy,
        round=round_no,
        seed=seed,
        on_wait=info,
    )
    out = {
        "backend": backend,
        "project": report.project,
        "pushed": len(report.pushed),
        "already_present": len(report.already_present),
        "failures": [{"item": i, "reason": r} for i, r in report.failures],
        "dry_run": dry_run,
        "dry_run_files": [str(p) for p in report.dry_run_files],
        **report.details,
    }
    if as_json:
        echo_json(out)
    else:
        verb = "would push" if dry_run else "pushed"
        click.echo(
            f"{backend}: {verb} {len(report.pushed)} task(s), {len(report.already_present)} already present (project {report.project})"
        )
        for p in report.dry_run_files:
            info(f"  wrote {p}")
    if report.failures:
        raise BatchError(
            f"{backend}: {len(report.failures)} item(s) not published; the others were "
            "(listed below)",
            report.failures,
            hint="fix what each line names and run push-jobs again (nothing is published twice)",
        )


@click.command("pull-masks", cls=BackendOptionsCommand)
@workspace_option
@click.option("--backend", type=_backend_choice(), default="labelstudio", show_default=True)
@click.option(
    "--consensus",
    "consensus_rule",
    type=click.Choice(["majority", "union", "intersection", "latest"]),
    default=None,
    help="How several annotators' masks merge [workspace config: majority].",
)
@click.option(
    "--min-annotations",
    type=click.IntRange(min=1),
    default=None,
    help="Masks only for tasks with at least K submitted annotations [1].",
)
@click.option("--full", is_flag=True, help="Ignore the cursor and re-read every task.")
@json_option
def pull_masks(
    workspace: Path,
    backend: str,
    consensus_rule: str | None,
    min_annotations: int | None,
    full: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Turn annotators' polygons and brush strokes into binary masks (new/updated tasks only)."""
    from camlabel.loop import pull_masks as run

    ws = open_workspace(workspace)
    s = run(
        ws,
        backend,
        options=_options(**opts),
        consensus_rule=consensus_rule,
        min_annotations=min_annotations,
        full=full,
        progress=show_progress(),
    )
    if as_json:
        echo_json(s.to_json())
    else:
        click.echo(
            f"{backend}: {s.tasks} task(s) read, {s.new_annotations} new/updated annotation(s), "
            f"{s.masks_written} mask(s) written, {s.masks_unchanged} unchanged"
        )
        if s.deleted_annotations:
            click.echo(
                f"  {s.deleted_annotations} annotation(s) deleted in the labeling tool; "
                f"{len(s.masks_withdrawn)} mask(s) withdrawn (too few annotations left)"
            )
        if s.skipped:
            click.echo(f"  {len(s.skipped)} task(s) skipped by annotators (no mask)")
        if s.unannotated:
            click.echo(f"  {len(s.unannotated)} task(s) not annotated yet")
        if s.waiting_for_annotations:
            click.echo(
                f"  {len(s.waiting_for_annotations)} task(s) below --min-annotations (no mask yet)"
            )
    if s.failed:
        raise BatchError(
            f"{backend}: {len(s.failed)} task(s) could not be read; the others were pulled "
            "(listed below)",
            s.failed,
            hint="fix or delete what each line names in the labeling tool, then run "
            "pull-masks again",
        )


COMMANDS = [push_jobs, pull_masks]
