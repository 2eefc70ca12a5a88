"""report, demo (issue 7)."""

from __future__ import annotations

from pathlib import Path

import click

from camlabel.cli.common import open_workspace, show_progress, workspace_option


@click.command()
@workspace_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output file [WS/reports/index.html].",
)
def report(workspace: Path, out: Path | None) -> None:
    """Write the self-contained HTML report (no internet needed to open it)."""
    from camlabel.report import build_report

    ws = open_workspace(workspace)
    path = build_report(ws, out)
    click.echo(f"wrote {path}")


@click.command()
@workspace_option
@click.option(
    "--interactive",
    is_flag=True,
    help="Wait for a person to annotate in the browser instead of simulated annotators.",
)
@click.option(
    "--keep-server",
    is_flag=True,
    help="Leave the embedded Label Studio running afterwards (stop: camlabel labelstudio stop).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the phantoms, splits and simulated annotators.",
)
@click.option(
    "--quick", is_flag=True, help="A much smaller run (for smoke tests): fewer images and epochs."
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="(--interactive) how often to check Label Studio for finished tasks.",
)
def demo(
    workspace: Path,
    interactive: bool,
    keep_server: bool,
    seed: int,
    quick: bool,
    poll_seconds: float,
) -> None:
    """Run the whole loop on phantoms with the embedded Label Studio.

    phantoms -> ensemble -> Grad-CAM pre-annotations -> audit -> Label Studio -> simulated
    annotators (or you, with --interactive) -> pull-masks -> FC-DenseNet103 -> predict -> report.
    """
    from camlabel.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=seed)
    if quick:
        settings = DemoSettings(
            seed=seed,
            n_train=24,
            n_heldout=9,
            phantom_size=128,
            cls_image_size=64,
            cls_epochs=1,
            seg_image_size=64,
            seg_epochs=2,
            seg_blocks=(2, 2),
            seg_bottleneck=2,
            seg_growth=6,
            seg_first_filters=8,
            seg_stem_stride=1,
            seg_negatives=4,
            cam_all_images=True,
            round1_images=14,
            round2_images=10,
            seg_round2_epochs=1,
        )
    run_demo(
        workspace,
        settings=settings,
        interactive=interactive,
        keep_server=keep_server or interactive,
        progress=show_progress(),
        poll_s=poll_seconds,
        log=lambda m: click.echo(m, err=True),
    )


COMMANDS = [report, demo]
