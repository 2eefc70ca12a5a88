"""ruff and mypy are part of the suite, so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_ruff_clean() -> None:
    r = subprocess.run(
        [_tool("ruff"), "check", "camlabel", "tests", "benchmarks", "training"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-4000:]


def test_mypy_clean() -> None:
    r = subprocess.run([_tool("mypy"), "camlabel"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:]
