"""labelstudio start|stop|status: the embedded local Label Studio server (issue 4)."""

from __future__ import annotations

from pathlib import Path

import click

from camlabel.cli.common import echo_json, info, json_option, open_workspace, workspace_option


@click.group()
def labelstudio() -> None:
    """The embedded local Label Studio server (127.0.0.1, data inside the workspace).

    \b
    The server runs from its own virtual environment (.venv-ls, `make ls-server`);
    its data is WS/labelstudio/, its admin login WS/secrets/labelstudio.json (0600).
    """


@labelstudio.command()
@workspace_option
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port on 127.0.0.1 [workspace config labelstudio.port, 8089]; a free one is picked if it is busy.",
)
@click.option(
    "--ls-bin",
    envvar="CAMLABEL_LS_BIN",
    type=click.Path(path_type=Path),
    default=None,
    help="The server's label-studio executable or venv (env CAMLABEL_LS_BIN) [.venv-ls, then PATH].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=5),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the server to answer.",
)
@click.option(
    "--database",
    default=None,
    metavar="postgresql://USER@HOST:PORT/DB",
    help="Keep the server's tables in this existing PostgreSQL database (set on first start, "
    "then remembered) instead of SQLite. The password never goes in the URL: env "
    "CAMLABEL_LS_DB_PASSWORD or PGPASSWORD, or WS/secrets/labelstudio-db.json.",
)
@json_option
def start(
    workspace: Path,
    port: int | None,
    ls_bin: Path | None,
    timeout: float,
    database: str | None,
    as_json: bool,
) -> None:
    """Start the workspace's server (set up on first use; ~45 s the very first time)."""
    from camlabel.backends.labelstudio import server as srv

    ws = open_workspace(workspace)
    if not srv.data_dir(ws).joinpath(srv.READY_MARKER).exists():
        info("setting up Label Studio for this workspace (database, admin user, API token)...")
    st, creds, started = srv.start(ws, port=port, ls_bin=ls_bin, timeout=timeout, database=database)
    if as_json:
        echo_json(
            {
                **st.to_json(),
                "started": started,
                "email": creds.email,
                "secrets": str(srv.secrets_path(ws)),
            }
        )
        return
    verb = "started" if started else "already running"
    click.echo(f"Label Studio {verb}: {st.url}  (pid {st.pid}, database {st.database})")
    click.echo(f"  login: {creds.email}; password and API token in {srv.secrets_path(ws)}")
    wanted = port if port is not None else ws.settings.labelstudio.port
    if started and wanted and st.port != int(wanted):
        click.echo(f"  port {wanted} was busy; using {st.port}")
    info(f"  log: {st.log_path}")


@labelstudio.command()
@workspace_option
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL.",
)
def stop(workspace: Path, grace: float) -> None:
    """Stop the workspace's server (by its PID, only if that PID is really it)."""
    from camlabel.backends.labelstudio import server as srv

    ws = open_workspace(workspace)
    if srv.stop(ws, grace=grace):
        click.echo("Label Studio stopped")
    else:
        click.echo("Label Studio was not running")


@labelstudio.command("status")
@workspace_option
@json_option
def status_(workspace: Path, as_json: bool) -> None:
    """Is the workspace's server running? URL, pid, memory."""
    from camlabel.backends.labelstudio import server as srv

    ws = open_workspace(workspace)
    st = srv.status(ws)
    if as_json:
        echo_json(st.to_json())
        return
    if st.running:
        rss = f", {st.rss_bytes / 2**20:.0f} MiB RSS" if st.rss_bytes else ""
        click.echo(f"Label Studio running: {st.url}  (pid {st.pid}{rss}, version {st.version})")
    else:
        click.echo(f"Label Studio not running ({st.message})")
