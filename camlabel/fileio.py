"""Atomic file writes: the one way camlabel replaces a file.

Every write goes to a temporary file in the target's folder, is flushed and fsync'ed, gets
its permissions, and is renamed over the target (``os.replace``, atomic on POSIX); then the
folder itself is fsync'ed so that the rename survives a power loss. A crash at any point
leaves either the old file or the new one, never half of either, and no temporary file.

Standard library only: the SageMaker training bundle carries this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Permissions of a new file (an existing file keeps its own).
DEFAULT_MODE = 0o644


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` by ``data`` atomically (folders are created).

    Args:
        path: the target file.
        data: its new content.
        mode: permission bits; default: the existing file's, else ``0o644``. Secrets pass
            ``0o600``, which is set before the file appears under its name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else DEFAULT_MODE
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(
    path: str | Path, obj: Any, *, indent: int | None = 2, mode: int | None = None
) -> None:
    """:func:`atomic_write_text` of ``obj`` as JSON (sorted keys, a final newline)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", mode=mode)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` over ``dst`` atomically (the copy is complete or absent)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(src, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder (makes a rename in it durable); a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every filesystem; the rename itself is already atomic
    finally:
        os.close(fd)
