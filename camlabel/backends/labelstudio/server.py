"""The embedded Label Studio server: one per workspace, on 127.0.0.1, data inside the workspace.

Label Studio runs from its own virtual environment (the server is ~1 GB with Django; camlabel
itself depends only on the SDK). This module never imports it: it runs its ``label-studio``
executable as a child process.

Layout inside a workspace ``WS``:

- ``WS/labelstudio/``: the server's data dir (SQLite database, uploads), plus ``server.log``
  and ``server.json`` (pid, port, URL of the running server).
- ``WS/secrets/labelstudio.json`` (0600): the admin e-mail, password and API token.
- With ``--database postgresql://USER@HOST:PORT/DB`` the tables live in that PostgreSQL
  database instead of ``label_studio.sqlite3``; ``WS/labelstudio/database.json`` records the
  (password-free) URL so later starts reuse it. The password comes from
  ``$CAMLABEL_LS_DB_PASSWORD``, ``$PGPASSWORD`` or ``WS/secrets/labelstudio-db.json`` and
  reaches the server only through its environment (never its command line, a log or status).

A new data dir is a copy of a migrated, user-less template (``label-studio init`` takes ~40 s
of migrations; copying takes well under a second), cached in ``$CAMLABEL_LS_TEMPLATE`` or
``~/.cache/camlabel/ls-template-<version>/``. The admin user and a fresh token (and Django's
secret key) are then created per workspace, so no two workspaces share credentials.

Pitfalls handled here (measured, see docs/labelstudio.md): the listen address is
``--internal-host`` (default 0.0.0.0); a busy port makes the server silently take the next one;
settings fall back to unprefixed ``USERNAME``/``PASSWORD``/``PORT``/``HOST`` env variables;
without ``LABEL_STUDIO_BASE_DATA_DIR`` it writes to ``~/.local/share``; ``label-studio
--version`` starts a server on 0.0.0.0:8080 (never called).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlabel.errors import BackendError, BackendUnavailable, ConfigError, UsageError
from camlabel.fileio import atomic_write_json

if TYPE_CHECKING:
    from camlabel.workspace import Workspace

LS_VERSION_PINNED = "1.23.2"
HOST = "127.0.0.1"
DATA_DIR_NAME = "labelstudio"
SECRETS_NAME = "labelstudio.json"
STATE_NAME = "server.json"
LOG_NAME = "server.log"
ADMIN_EMAIL = "admin@camlabel.local"
READY_MARKER = ".camlabel-ready"
TEMPLATE_MARKER = ".camlabel-template-ok"
INSTALL_HINT = (
    "install the server in its own venv: make ls-server  "
    f"(or: python -m venv .venv-ls && .venv-ls/bin/pip install label-studio=={LS_VERSION_PINNED}); "
    "or point --ls-bin / CAMLABEL_LS_BIN at a label-studio executable"
)
_STARTED_RE = re.compile(r"Starting development server at https?://[^:/\s]+:(\d+)/")
# Unprefixed names Label Studio falls back to; inherited values would silently change its
# admin user, listen port or URL prefix.
_UNSAFE_ENV = ("USERNAME", "PASSWORD", "PORT", "HOST", "USER_TOKEN")
# Database settings a shell may carry for another Label Studio: only start() chooses the database.
_DB_ENV_PREFIXES = ("DJANGO_DB", "DATABASE_NAME", "POSTGRE_", "MYSQL_")
DB_STATE_NAME = "database.json"
DB_SECRETS_NAME = "labelstudio-db.json"
DB_PASSWORD_ENV = ("CAMLABEL_LS_DB_PASSWORD", "PGPASSWORD")
# Children we started in this process, so stop() can reap them (no zombie lingers).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Credentials:
    """The admin login of an embedded server. ``repr`` hides the password and token."""

    email: str
    password: str
    token: str

    def __repr__(self) -> str:
        return f"Credentials(email={self.email!r}, password=***, token=***)"

    def to_json(self) -> dict[str, str]:
        return {"email": self.email, "password": self.password, "token": self.token}

    @classmethod
    def generate(cls, email: str = ADMIN_EMAIL) -> Credentials:
        return cls(email=email, password=secrets.token_urlsafe(18), token=secrets.token_hex(20))


@dataclass(frozen=True)
class Database:
    """A PostgreSQL database for the embedded server. Holds no password (see ``db_password``)."""

    user: str
    host: str
    port: int
    name: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"

    @classmethod
    def parse(cls, url: str) -> Database:
        """``postgresql://USER@HOST[:PORT]/DB`` (port 5432 by default); a password is refused."""
        example = "postgresql://labelstudio@db.example.org:5432/labelstudio"
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port = parts.port or 5432
        except ValueError as exc:
            raise UsageError(
                f"--database is not a PostgreSQL URL ({exc}). Received: {_redact(url)}",
                hint=f"for example {example}",
            ) from exc
        if parts.password is not None:
            raise UsageError(
                f"--database must not contain the password (a command line is readable by every "
                f"local user). Received: {_redact(url)}",
                hint="drop it from the URL and give it by environment, CAMLABEL_LS_DB_PASSWORD "
                f"(or PGPASSWORD), or in WS/secrets/{DB_SECRETS_NAME} as "
                '{"password": "..."} (mode 0600)',
            )
        name = parts.path.lstrip("/")
        if parts.scheme not in ("postgresql", "postgres") or not (
            parts.username and parts.hostname and name and "/" not in name
        ):
            raise UsageError(
                f"--database must be postgresql://USER@HOST:PORT/DB. Received: {url}",
                hint=f"for example {example}",
            )
        return cls(
            user=urllib.parse.unquote(parts.username),
            host=parts.hostname,
            port=port,
            name=urllib.parse.unquote(name),
        )

    def env(self, password: str | None) -> dict[str, str]:
        """Label Studio's own settings for this database (DJANGO_DB=default is PostgreSQL)."""
        env = {
            "DJANGO_DB": "default",
            "POSTGRE_NAME": self.name,
            "POSTGRE_USER": self.user,
            "POSTGRE_HOST": self.host,
            "POSTGRE_PORT": str(self.port),
        }
        if password:
            env["POSTGRE_PASSWORD"] = password
        return env


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable URL>"


@dataclass(frozen=True)
class ServerStatus:
    """What ``status`` reports (secret-free)."""

    running: bool
    url: str | None = None
    port: int | None = None
    pid: int | None = None
    rss_bytes: int | None = None
    data_dir: Path | None = None
    log_path: Path | None = None
    version: str | None = None
    started_at: str | None = None
    message: str = ""
    database: str = "sqlite"

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
            "rss_bytes": self.rss_bytes,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "log_path": str(self.log_path) if self.log_path else None,
            "version": self.version,
            "started_at": self.started_at,
            "message": self.message,
            "database": self.database,
        }


# --------------------------------------------------------------------------- locating the server
def find_ls_bin(explicit: str | Path | None = None) -> Path:
    """The ``label-studio`` executable: ``explicit`` > ``$CAMLABEL_LS_BIN`` > ``<repo>/.venv-ls`` > PATH.

    ``<repo>`` is the source tree camlabel runs from (editable install or checkout).
    """
    for origin, value in (
        ("--ls-bin", explicit),
        ("CAMLABEL_LS_BIN", os.environ.get("CAMLABEL_LS_BIN")),
    ):
        if value:
            path = Path(value).expanduser()
            if path.is_dir():
                path = path / "bin" / "label-studio"
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise ConfigError(
                    f"{origin} does not name an executable label-studio. Received: {value}",
                    hint=INSTALL_HINT,
                )
            return path.resolve()
    repo = Path(__file__).resolve().parents[3]  # camlabel/backends/labelstudio/server.py
    local = repo / ".venv-ls" / "bin" / "label-studio"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("label-studio")
    if found:
        return Path(found).resolve()
    raise ConfigError(
        f"the Label Studio server is not installed (no {local}, no label-studio on PATH)",
        hint=INSTALL_HINT,
    )


def ls_version(ls_bin: Path) -> str:
    """Version of the server package next to ``ls_bin``, read from its dist-info (nothing is run)."""
    venv = ls_bin.parent.parent
    for info in sorted(venv.glob("lib/python*/site-packages/label_studio-*.dist-info")):
        return info.name[len("label_studio-") : -len(".dist-info")]
    return "unknown"


def _ls_python(ls_bin: Path) -> Path | None:
    """The interpreter of the server's venv (from the script's shebang)."""
    try:
        first = ls_bin.read_bytes()[:256].split(b"\n", 1)[0].decode()
    except OSError:
        return None
    if first.startswith("#!"):
        cand = Path(first[2:].strip().split()[0])
        if cand.is_file():
            return cand
    return None


# --------------------------------------------------------------------------- environment
def server_env(
    data_dir: Path, document_root: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's environment: data inside ``data_dir``, no telemetry, local files under ``document_root``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _UNSAFE_ENV
        and not k.startswith(("LABEL_STUDIO_", "HEARTEX_", "CAMLABEL_LS_", *_DB_ENV_PREFIXES))
        and k not in ("DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "LOG_LEVEL": os.environ.get("CAMLABEL_LS_LOG_LEVEL", "WARNING"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def _run(
    cmd: list[str], env: Mapping[str, str], what: str, timeout: float, log: Path | None = None
) -> None:
    try:
        proc = subprocess.run(cmd, env=dict(env), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BackendError(
            f"{what} did not finish within {timeout:.0f} s ({' '.join(cmd[:2])} ...)"
        ) from exc
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if log is not None:
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {what} ({_now()})\n{out}\n")
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise BackendError(
            f"{what} failed with exit code {proc.returncode}:\n{tail}", hint=INSTALL_HINT
        )


# --------------------------------------------------------------------------- data dirs
def template_dir(version: str) -> Path:
    env = os.environ.get("CAMLABEL_LS_TEMPLATE")
    if env:
        return Path(env).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "camlabel" / f"ls-template-{version}"


def prepare_template(ls_bin: Path | None = None, *, timeout: float = 600.0) -> Path:
    """A migrated, user-less data dir to copy for new servers (built once, ~40 s; cached).

    Safe against concurrent callers (file lock) and interruptions (built in a temp dir, then
    renamed).
    """
    ls_bin = ls_bin or find_ls_bin()
    target = template_dir(ls_version(ls_bin))
    if (target / TEMPLATE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / TEMPLATE_MARKER).exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            env = server_env(tmp, tmp)
            # No --username: with --quiet the database is migrated and no user is created.
            _run(
                [str(ls_bin), "init", "--quiet", "--data-dir", str(tmp)],
                env,
                "label-studio init (template)",
                timeout,
            )
            # Django's SECRET_KEY is generated into .env; every copy must get its own.
            (tmp / ".env").unlink(missing_ok=True)
            (tmp / TEMPLATE_MARKER).write_text(ls_version(ls_bin) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def provision_data_dir(
    data_dir: Path,
    credentials: Credentials,
    *,
    ls_bin: Path | None = None,
    template: Path | None = None,
    timeout: float = 180.0,
    database: Database | None = None,
    db_password: str | None = None,
) -> None:
    """Make ``data_dir`` a ready server data dir with this admin user and token (idempotent).

    Copies the template, then creates the admin with ``label-studio init`` (a few seconds,
    migrations are already applied). The organisation is created with legacy API tokens
    enabled, so the token works as ``Authorization: Token ...`` (the SDK's default).
    With a PostgreSQL ``database`` there is no template (it is SQLite): ``init`` migrates that
    database (about a minute) and ``data_dir`` keeps only media, logs and Django's secret key.
    """
    if (data_dir / READY_MARKER).exists():
        return
    ls_bin = ls_bin or find_ls_bin()
    if database is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        _write_atomic(data_dir / DB_STATE_NAME, {"url": database.url})
        timeout = max(timeout, 900.0)
    elif not (data_dir / "label_studio.sqlite3").exists():
        template = template or prepare_template(ls_bin)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", dir=data_dir.parent))
        try:
            shutil.copytree(template, tmp, dirs_exist_ok=True, symlinks=True)
            (tmp / TEMPLATE_MARKER).unlink(missing_ok=True)
            (tmp / ".env").unlink(missing_ok=True)
            if data_dir.exists():
                # Only files we write before the database exists (a log, a stale state file).
                for child in data_dir.iterdir():
                    if child.is_file():
                        shutil.copy2(child, tmp / child.name)
                shutil.rmtree(data_dir)
            os.replace(tmp, data_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        os.chmod(data_dir, 0o700)
    env = server_env(
        data_dir,
        data_dir,
        {
            # Passed by environment, not argv: a command line is readable by every local user.
            "LABEL_STUDIO_USERNAME": credentials.email,
            "LABEL_STUDIO_PASSWORD": credentials.password,
            "LABEL_STUDIO_USER_TOKEN": credentials.token,
            **(database.env(db_password) if database is not None else {}),
        },
    )
    _run(
        [str(ls_bin), "init", "--quiet", "--data-dir", str(data_dir), "--enable-legacy-api-token"],
        env,
        "label-studio init (admin user)",
        timeout,
        log=data_dir / LOG_NAME,
    )
    (data_dir / READY_MARKER).write_text(_now() + "\n")


# --------------------------------------------------------------------------- secrets
def secrets_path(ws: Workspace) -> Path:
    return ws.dir("secrets") / SECRETS_NAME


def load_credentials(ws: Workspace) -> Credentials | None:
    """The embedded server's admin login, or None when it was never set up."""
    path = secrets_path(ws)
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(email=d["email"], password=d["password"], token=d["token"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is unreadable or incomplete ({type(exc).__name__})",
            hint="stop the server, move WS/labelstudio and that file away, and start again "
            "(a new admin login is created)",
        ) from exc


def _write_secret(path: Path, data: Mapping[str, Any]) -> None:
    """Write a 0600 file atomically (its temporary file is 0600 from the start: never readable
    by others, even briefly), in a 0700 folder."""
    os.chmod(path.parent, 0o700)
    atomic_write_json(path, dict(data), mode=0o600)


# --------------------------------------------------------------------------- processes
def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server binds (Django's runserver sets SO_REUSEADDR): a port whose last
        # connections linger in TIME_WAIT after a stop is free for it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def health(url: str, timeout: float = 2.0) -> bool:
    """True when ``url``/health answers ``{"status": "UP"}``."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200 and b"UP" in resp.read(200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def token_works(url: str, token: str, timeout: float = 10.0) -> bool:
    """True when the server accepts ``token`` (legacy ``Token`` scheme, as created here)."""
    req = urllib.request.Request(
        url.rstrip("/") + "/api/current-user/whoami", headers={"Authorization": f"Token {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        if Path("/proc").is_dir():
            return []
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, check=False
        )
        return out.stdout.decode(errors="replace").split()
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def is_server_process(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is alive and is a ``label-studio start`` serving ``data_dir``.

    A stale PID file may name a recycled PID; this check keeps stop() from signalling an
    unrelated process.
    """
    if pid <= 0 or _is_zombie(pid):
        return False
    argv = _cmdline(pid)
    if not argv:
        return False
    has_bin = any(Path(a).name == "label-studio" for a in argv[:3])
    return has_bin and "start" in argv and str(data_dir) in argv


def _is_zombie(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (Linux /proc), None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class ServerProcess:
    """A started server (library-level; the workspace commands wrap it)."""

    pid: int
    port: int
    url: str
    data_dir: Path
    log_path: Path
    version: str
    started_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "port": self.port,
            "url": self.url,
            "data_dir": str(self.data_dir),
            "log_path": str(self.log_path),
            "version": self.version,
            "started_at": self.started_at,
        }


def start_server(
    data_dir: Path,
    *,
    document_root: Path,
    port: int | None = None,
    ls_bin: Path | None = None,
    timeout: float = 120.0,
    log_path: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start ``label-studio start`` on 127.0.0.1 for a provisioned ``data_dir``; wait for /health.

    Runs in its own session (``setsid``), so it outlives the calling process and is stopped
    by PID. The port is verified from the server's own log line (it moves to the next port
    when the requested one is taken between our check and its bind).
    """
    ls_bin = ls_bin or find_ls_bin()
    data_dir = data_dir.resolve()
    if port is None or not port_is_free(port):
        port = free_port()
    log_path = log_path or data_dir / LOG_NAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    cmd = [
        str(ls_bin),
        "start",
        "--internal-host",
        HOST,
        "--port",
        str(port),
        "--no-browser",
        "--data-dir",
        str(data_dir),
    ]
    with log_path.open("ab") as log:
        log.write(f"--- camlabel: starting Label Studio on {HOST}:{port} ({_now()})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            env=server_env(data_dir, document_root.resolve(), extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(data_dir),
        )
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    actual = port
    while True:
        text = _read_from(log_path, offset)
        m = _STARTED_RE.search(text)
        if m:
            actual = int(m.group(1))
        url = f"http://{HOST}:{actual}"
        if m and health(url, timeout=1.0):
            return ServerProcess(
                pid=proc.pid,
                port=actual,
                url=url,
                data_dir=data_dir,
                log_path=log_path,
                version=ls_version(ls_bin),
                started_at=_now(),
            )
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            tail = "\n".join(text.strip().splitlines()[-20:])
            raise BackendError(
                f"Label Studio exited with code {proc.returncode} while starting (log: {log_path}):\n{tail}",
                hint="see the log; a damaged data dir can be moved away and recreated",
            )
        if time.monotonic() > deadline:
            kill_process(proc.pid, data_dir, grace=5.0)
            raise BackendUnavailable(
                f"Label Studio did not answer {url}/health within {timeout:.0f} s (log: {log_path})",
                hint="a slow machine may need more time: camlabel labelstudio start --timeout 300",
            )
        time.sleep(0.25)


def kill_process(pid: int, data_dir: Path, *, grace: float = 10.0) -> bool:
    """SIGTERM the server's process group, SIGKILL after ``grace`` s. Only if it is that server.

    Returns True when a process was stopped.
    """
    if not is_server_process(pid, data_dir.resolve()):
        _reap(pid)
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    own_group = pgid == pid  # started with setsid: the group is the server and its children only

    def _signal(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if own_group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    _signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if _is_zombie(pid) or not Path(f"/proc/{pid}").exists():
            _reap(pid)
            return True
        time.sleep(0.1)
    _signal(signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if _is_zombie(pid) or not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.05)
            _CHILDREN.pop(pid, None)


# --------------------------------------------------------------------------- workspace commands
def data_dir(ws: Workspace) -> Path:
    return ws.root / DATA_DIR_NAME


def _state_path(ws: Workspace) -> Path:
    return data_dir(ws) / STATE_NAME


def _read_state(ws: Workspace) -> dict[str, Any] | None:
    try:
        state = json.loads(_state_path(ws).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def recorded_database(ws: Workspace) -> Database | None:
    """The PostgreSQL database the workspace's server was set up on; None for SQLite."""
    url = _json_field(
        data_dir(ws) / DB_STATE_NAME,
        "url",
        hint='restore it as {"url": "postgresql://USER@HOST:PORT/DB"} (the database this '
        "server was set up on)",
    )
    return Database.parse(url) if url is not None else None


def db_password(ws: Workspace) -> str | None:
    """The database password: ``$CAMLABEL_LS_DB_PASSWORD`` > ``$PGPASSWORD`` > the secrets file."""
    for name in DB_PASSWORD_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return _json_field(
        ws.dir("secrets") / DB_SECRETS_NAME,
        "password",
        hint='write it as {"password": "..."} with mode 0600, or set CAMLABEL_LS_DB_PASSWORD',
    )


def _json_field(path: Path, key: str, *, hint: str) -> str | None:
    """``key`` of the small JSON object in ``path``; None when the file does not exist."""
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))[key])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is unreadable or has no {key!r} ({type(exc).__name__})", hint=hint
        ) from exc


def _resolve_database(ws: Workspace, requested: str | None) -> Database | None:
    """The database to start on: the recorded one; ``requested`` must agree with it."""
    recorded = recorded_database(ws)
    if requested is None:
        return recorded
    db = Database.parse(requested)
    dd = data_dir(ws)
    if (dd / READY_MARKER).exists() and db != recorded:
        now = recorded.url if recorded else f"SQLite ({dd / 'label_studio.sqlite3'})"
        raise ConfigError(
            f"this workspace's Label Studio was set up on {now}, not {db.url}",
            hint=f"start it without --database (its tasks are there); to move to another "
            f"database, stop the server, move {dd} and {secrets_path(ws)} away, start with "
            "--database and re-run push-jobs",
        )
    return db


def running_url(ws: Workspace) -> str | None:
    """URL of the workspace's embedded server when it is running (PID alive and really it)."""
    st = status(ws)
    return st.url if st.running else None


def status(ws: Workspace) -> ServerStatus:
    """Is the workspace's server running? (PID checked against /proc, then /health.)"""
    dd = data_dir(ws)
    state = _read_state(ws)
    if state is None:
        msg = "never started in this workspace" if not (dd / READY_MARKER).exists() else "stopped"
        return ServerStatus(running=False, data_dir=dd, message=msg)
    pid = int(state.get("pid", 0))
    url = state.get("url")
    common: dict[str, Any] = {
        "database": str(state.get("database") or "sqlite"),
        "data_dir": dd,
        "log_path": dd / LOG_NAME,
        "version": state.get("version"),
        "started_at": state.get("started_at"),
    }
    if not is_server_process(pid, dd.resolve()):
        return ServerStatus(running=False, message=f"stopped (stale pid file: pid {pid})", **common)
    up = bool(url) and health(str(url))
    return ServerStatus(
        running=up,
        url=url,
        port=state.get("port"),
        pid=pid,
        rss_bytes=rss_bytes(pid),
        message="running" if up else "process alive but /health does not answer",
        **common,
    )


def start(
    ws: Workspace,
    *,
    port: int | None = None,
    ls_bin: str | Path | None = None,
    timeout: float = 120.0,
    database: str | None = None,
) -> tuple[ServerStatus, Credentials, bool]:
    """Start the workspace's embedded server (set it up on first use). Idempotent.

    ``database`` (``postgresql://USER@HOST:PORT/DB``) puts its tables in an existing
    PostgreSQL database on first use; later starts reuse the recorded one.
    Returns (status, credentials, started): ``started`` is False when it was already running.
    """
    db = _resolve_database(ws, database)
    current = status(ws)
    creds_now = load_credentials(ws)
    dd = data_dir(ws)
    if creds_now is None and (dd / READY_MARKER).exists():
        raise ConfigError(
            f"{secrets_path(ws)} is missing: the admin login of the server in {dd} is lost",
            hint=f"stop the server, move {dd} away and start again (a new, empty server; "
            "re-run push-jobs), or restore the file from a backup",
        )
    if current.running and creds_now is not None:
        return current, creds_now, False
    if current.pid is not None:
        raise BackendError(
            f"a Label Studio process (pid {current.pid}) serves {data_dir(ws)} but does not answer /health",
            hint=f"stop it first: camlabel labelstudio stop -w {ws.root}",
        )
    binary = find_ls_bin(ls_bin)
    password = db_password(ws) if db is not None else None
    db_env = db.env(password) if db is not None else {}
    creds = creds_now
    if creds is None or not (dd / READY_MARKER).exists():
        if creds is None:
            creds = Credentials.generate()
            # Written before the user is created: a crash in between is redone with the same login.
            _write_secret(secrets_path(ws), {**creds.to_json(), "created_at": _now()})
        try:
            provision_data_dir(dd, creds, ls_bin=binary, database=db, db_password=password)
        except BackendError as exc:
            raise _database_hint(exc, db) from exc
    want = port if port is not None else ws.settings.labelstudio.port
    if want <= 0 or want > 65535:
        raise UsageError(f"--port must be in 1..65535. Received: port={want}")
    try:
        proc = start_server(
            dd, document_root=ws.root, port=want, ls_bin=binary, timeout=timeout, extra_env=db_env
        )
    except BackendError as exc:
        raise _database_hint(exc, db) from exc
    if not token_works(proc.url, creds.token):
        kill_process(proc.pid, dd, grace=5.0)
        raise BackendError(
            f"the server in {dd} started but refuses the API token stored in {secrets_path(ws)}",
            hint=f"the database and the login file do not belong together: move {dd} and that "
            "file away and start again (a new, empty server), or restore both from a backup",
        )
    state = {
        **proc.to_json(),
        "ls_bin": str(binary),
        "requested_port": want,
        "database": db.url if db is not None else "sqlite",
    }
    _write_atomic(_state_path(ws), state)
    return status(ws), creds, True


def _database_hint(exc: BackendError, db: Database | None) -> BackendError:
    """``exc`` with a hint about the PostgreSQL connection when one is used."""
    if db is None:
        return exc
    return type(exc)(
        exc.message,
        hint=f"check that {db.url} is reachable and the password is right "
        f"(CAMLABEL_LS_DB_PASSWORD, PGPASSWORD or WS/secrets/{DB_SECRETS_NAME}); "
        "the user must be allowed to create tables in that database",
    )


def stop(ws: Workspace, *, grace: float = 10.0) -> bool:
    """Stop the workspace's server by its PID (only if that PID is really it). True if stopped."""
    state = _read_state(ws)
    if state is None:
        return False
    stopped = kill_process(int(state.get("pid", 0)), data_dir(ws), grace=grace)
    _state_path(ws).unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------- helpers
def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(data))


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def _file_lock(path: Path) -> Any:
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
