"""Helpers shared by add, import and export: format registries and small CSV tables."""

from __future__ import annotations

import csv
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from camlabel.errors import UsageError


def load_format(kind: str, registry: Mapping[str, str], package: str, fmt: str, attr: str) -> Any:
    """``package.<registry[fmt]>.<attr>``; an unknown ``fmt`` lists the valid ones."""
    if fmt not in registry:
        raise UsageError(
            f"Wrong {kind} format {fmt!r}, supported formats: {sorted(registry)}",
            hint="pass --format " + "|".join(sorted(registry)),
        )
    return getattr(importlib.import_module(f"{package}.{registry[fmt]}"), attr)


def read_table(path: Path, what: str, required: Sequence[str], hint: str) -> list[dict[str, str]]:
    """Rows of a CSV (values stripped) that has the ``required`` columns, else a UsageError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {what} CSV '{path}': {exc.strerror}") from exc
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in cols]
    if missing:
        raise UsageError(
            f"{what} CSV '{path}' has no column(s) {missing}. Received columns: {cols}", hint=hint
        )
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def resolve_beside(path: Path, value: str) -> str:
    """``value`` as a resolved path, relative paths taken from the folder of ``path``."""
    p = Path(value)
    return str((p if p.is_absolute() else path.parent / p).resolve())
