"""Exclusive per-workspace locks: one ``push-jobs`` (or ``pull-masks``) per workspace and backend.

Publishing is idempotent only against itself: a push lists the project's tasks, then imports
the images missing from that listing. Two pushes running side by side both see the same
listing and both import, so every task is made twice. :func:`exclusive` serializes them with
``fcntl.flock`` on ``WS/.locks/<name>.lock``: the second process waits (it is told who holds
the lock) and then finds everything already present. The kernel drops a flock when its holder
exits, even on SIGKILL, so a crashed push never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from camlabel.errors import WorkspaceError

#: How long a second push-jobs waits for the first one before giving up (seconds).
DEFAULT_WAIT_S = 900.0
_POLL_S = 0.2


def lock_path(root: Path, name: str) -> Path:
    return Path(root) / ".locks" / f"{name}.lock"


@contextlib.contextmanager
def exclusive(
    root: Path,
    name: str,
    *,
    what: str,
    wait_s: float = DEFAULT_WAIT_S,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold ``WS/.locks/<name>.lock`` exclusively for the body of the ``with``.

    Args:
        root: the workspace folder.
        name: the lock's name (``push-labelstudio``).
        what: the operation, for messages (``push-jobs --backend labelstudio``).
        wait_s: how long to wait for another holder before raising WorkspaceError.
        on_wait: called once with a message when the lock is busy (the CLI prints it).
    """
    import fcntl

    path = lock_path(root, name)
    try:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WorkspaceError(
            f"cannot create the lock file {path} for {what}: {exc.strerror}",
            hint=f"make the workspace {root} writable for this user",
        ) from None
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if time.monotonic() >= deadline:
                    raise WorkspaceError(
                        f"another {what} is still running on {root} ({holder}, lock {path}); "
                        f"gave up after waiting {wait_s:g} s",
                        hint="let it finish and run the command again (a re-run publishes "
                        "nothing twice)",
                    ) from None
                if not told and on_wait is not None:
                    on_wait(
                        f"waiting for another {what} on this workspace ({holder}) to finish "
                        f"(at most {wait_s:g} s)..."
                    )
                    told = True
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"
