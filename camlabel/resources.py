"""Locate the files of templates/ and manifests/ in a source tree or an installed wheel.

They live at the repository's top level; ``setup.py`` copies them into the wheel as
``camlabel/_data/``. The installed copy wins when present, so a ``pip install .`` used
from any directory works the same as an editable install.
"""

from __future__ import annotations

from pathlib import Path

from camlabel.errors import CamlabelError

_PKG = Path(__file__).resolve().parent


def _base(kind: str) -> Path:
    for candidate in (_PKG / "_data" / kind, _PKG.parent / kind):
        if candidate.is_dir():
            return candidate
    raise CamlabelError(
        f"camlabel's {kind}/ folder was not found (looked in {_PKG / '_data' / kind} and {_PKG.parent / kind})",
        hint="reinstall camlabel (pip install .) so that the package data is copied",
    )


def _find(kind: str, parts: tuple[str, ...]) -> Path:
    path = _base(kind).joinpath(*parts)
    if not path.exists():
        raise CamlabelError(
            f"{kind} file {'/'.join(parts)!r} not found in {_base(kind)}",
            hint="reinstall camlabel; the file list is in the repository's " + kind + "/ folder",
        )
    return path


def template_path(*parts: str) -> Path:
    """Path of a file under templates/, e.g. ``template_path("labelstudio", "lesion.xml")``."""
    return _find("templates", parts)


def manifest_path(*parts: str) -> Path:
    """Path of a file under manifests/, e.g. ``manifest_path("ledger.schema.json")``."""
    return _find("manifests", parts)
