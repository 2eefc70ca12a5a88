"""camlabel labelstudio start|status|stop on a temporary workspace (real server, cached template)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from camlabel.backends.labelstudio import server as srv
from camlabel.cli.main import cli
from camlabel.workspace import Workspace


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, _remote, state = line.split()[1:4]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                out.append(addr)
    return out


@pytest.mark.server
def test_start_status_stop(ls_template: Path, tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = CliRunner()
    try:
        res = runner.invoke(cli, ["labelstudio", "start", "-w", str(ws.root), "--port", str(port)])
        assert res.exit_code == 0, res.output
        url = f"http://127.0.0.1:{port}"
        assert url in res.output and srv.ADMIN_EMAIL in res.output

        secrets_file = ws.root / "secrets" / "labelstudio.json"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((ws.root / "secrets").stat().st_mode) == 0o700
        creds = json.loads(secrets_file.read_text())
        assert len(creds["token"]) == 40 and creds["token"] not in res.output
        assert creds["password"] not in res.output
        # The data dir is inside the workspace, and this workspace's token works.
        assert (ws.root / "labelstudio" / "label_studio.sqlite3").exists()
        who = httpx.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {creds['token']}"}
        )
        assert who.status_code == 200 and who.json()["email"] == creds["email"]

        # Listening on loopback only (127.0.0.1 is 0100007F in /proc/net/tcp).
        assert _listeners(port) == ["0100007F"]

        res = runner.invoke(cli, ["labelstudio", "status", "-w", str(ws.root), "--json"])
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        assert st["running"] is True and st["url"] == url and st["rss_bytes"] > 50 * 2**20
        pid = st["pid"]
        assert srv.is_server_process(pid, (ws.root / "labelstudio").resolve())

        res = runner.invoke(cli, ["labelstudio", "start", "-w", str(ws.root)])
        assert res.exit_code == 0 and "already running" in res.output

        res = runner.invoke(cli, ["labelstudio", "stop", "-w", str(ws.root)])
        assert res.exit_code == 0 and "stopped" in res.output
        assert not Path(f"/proc/{pid}").exists() or not srv.is_server_process(
            pid, (ws.root / "labelstudio").resolve()
        )
        assert _listeners(port) == []
        res = runner.invoke(cli, ["labelstudio", "status", "-w", str(ws.root)])
        assert res.exit_code == 0 and "not running" in res.output

        # A lost login file is reported, not papered over with a login the database lacks.
        secrets_file.unlink()
        res = runner.invoke(cli, ["labelstudio", "start", "-w", str(ws.root)])
        assert res.exit_code == 1 and "admin login" in res.output and "is lost" in res.output
    finally:
        srv.stop(ws, grace=3)


def test_stop_never_signals_a_process_that_is_not_the_server(tmp_path: Path) -> None:
    """A stale PID file naming some other process (here: this test) leaves that process alone."""
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "labelstudio").mkdir()
    (ws.root / "labelstudio" / "server.json").write_text(
        json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:1"})
    )
    assert srv.status(ws).running is False
    res = CliRunner().invoke(cli, ["labelstudio", "stop", "-w", str(ws.root)])
    assert res.exit_code == 0 and "not running" in res.output


def test_missing_server_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    res = CliRunner().invoke(
        cli, ["labelstudio", "start", "-w", str(ws.root), "--ls-bin", str(tmp_path / "nope")]
    )
    assert res.exit_code == 1
    assert "make ls-server" in res.output and "pip install label-studio==" in res.output
