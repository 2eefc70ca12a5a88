"""A real Label Studio server for tests/integration and tests/e2e, started once per pytest session.

The server comes from its own venv (``.venv-ls``, or ``CAMLABEL_LS_BIN``), listens on
127.0.0.1 on a free port, and runs from a copy of a migrated data-dir template (prepared once
with ``label-studio init`` and cached, see camlabel.backends.labelstudio.server). Its
local-files document root is pytest's base temp folder, so every ``tmp_path`` workspace can be served.
It is stopped by PID in the finalizer.

Without the server venv the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from camlabel.backends.labelstudio import server as srv
from camlabel.errors import ConfigError


def _ls_bin_or_skip() -> Path:
    try:
        return srv.find_ls_bin()
    except ConfigError as exc:
        reason = f"Label Studio server not installed: {exc.message} ({exc.hint})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class LSServer:
    """A running test server; ``stop()``/``start()`` let a test interrupt it."""

    ls_bin: Path
    data_dir: Path
    document_root: Path
    creds: srv.Credentials
    port: int = 0
    pid: int = 0
    history: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{srv.HOST}:{self.port}"

    @property
    def token(self) -> str:
        return self.creds.token

    def start(self) -> None:
        proc = srv.start_server(
            self.data_dir,
            document_root=self.document_root,
            port=self.port or None,
            ls_bin=self.ls_bin,
            timeout=180,
            log_path=self.data_dir / "server.log",
        )
        self.port, self.pid = proc.port, proc.pid
        self.history.append(proc.pid)

    def stop(self) -> None:
        if self.pid:
            srv.kill_process(self.pid, self.data_dir, grace=5.0)
        self.pid = 0

    def options(self, **extra: Any) -> dict[str, Any]:
        """Backend options for this server (local files served from the pytest temp root)."""
        return {
            "url": self.url,
            "token": self.token,
            "upload": False,
            "document_root": str(self.document_root),
            **extra,
        }

    def sdk(self) -> Any:
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token, timeout=60)


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LSServer]:
    ls_bin = _ls_bin_or_skip()
    base = tmp_path_factory.mktemp("labelstudio")
    server = LSServer(
        ls_bin=ls_bin,
        data_dir=base / "data",
        document_root=tmp_path_factory.getbasetemp().resolve(),
        creds=srv.Credentials.generate(),
    )
    srv.provision_data_dir(server.data_dir, server.creds, ls_bin=ls_bin)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_template() -> Path:
    """The cached, migrated data-dir template (prepared on first use)."""
    return srv.prepare_template(_ls_bin_or_skip())
