"""A real PostgreSQL server for the tests, started once per pytest session.

Debian's PostgreSQL binaries (``initdb``, ``pg_ctl``, ``psql``: on PATH or under
``/usr/lib/postgresql/<version>/bin``; ``make postgresql`` installs them) create a cluster in a
temporary directory. It listens on 127.0.0.1 only (no Unix socket), on a free port, and requires
a password (scram-sha-256). As root, the cluster runs as the ``postgres`` user (initdb refuses
root). It is stopped in the finalizer.

Without the binaries the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from camlabel.backends.labelstudio import server as srv

SUPERUSER = "camlabel"


def pg_binary(name: str) -> str | None:
    """``name`` from PATH, else the newest ``/usr/lib/postgresql/*/bin/name``."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _bins_or_skip() -> dict[str, str]:
    bins = {name: pg_binary(name) for name in ("initdb", "pg_ctl", "psql")}
    missing = [name for name, path in bins.items() if path is None]
    if missing:
        reason = f"PostgreSQL not installed (no {', '.join(missing)}): make postgresql"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return {k: str(v) for k, v in bins.items()}


@dataclass
class PGServer:
    """A running cluster: ``url(db)`` has no password; ``password`` goes by environment."""

    bins: dict[str, str]
    data: Path
    port: int
    password: str
    run_as: str | None

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{srv.HOST}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql``; rows as ``a|b`` lines (unaligned, tuples only)."""
        out = subprocess.run(
            [
                self.bins["psql"],
                "-h",
                srv.HOST,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as_kwargs(user: str | None) -> dict[str, object]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PGServer]:
    bins = _bins_or_skip()
    base = tmp_path_factory.mktemp("postgres")
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if run_as is None:
            pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
    kw = _run_as_kwargs(run_as)
    data = base / "data"
    password = secrets.token_urlsafe(16)
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        for path in (base, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # The tmp parents are 0700 root-owned: let the cluster's user traverse to its folder.
        for parent in base.parents:
            if parent == Path("/tmp") or parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o001)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"

    def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=str(base),
            **kw,  # type: ignore[arg-type]
        )

    init = run(
        [
            bins["initdb"],
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]
    )
    pwfile.unlink()
    assert init.returncode == 0, init.stdout + init.stderr
    port = srv.free_port()
    opts = (
        f"-c listen_addresses={srv.HOST} -p {port} -c unix_socket_directories='' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    log = base / "postgres.log"
    started = run(
        [bins["pg_ctl"], "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "120", "start"]
    )
    assert started.returncode == 0, started.stdout + started.stderr + _tail(log)
    server = PGServer(bins=bins, data=data, port=port, password=password, run_as=run_as)
    try:
        yield server
    finally:
        run([bins["pg_ctl"], "-D", str(data), "-m", "immediate", "-w", "stop"], timeout=120)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text().splitlines()[-20:])
    return ""
