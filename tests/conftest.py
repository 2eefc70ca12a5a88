"""Shared fixtures (the real Label Studio server comes from tests/lsserver.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CAMLABEL_QUIET", "1")


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or $CAMLABEL_SHARED_DATA); None when absent."""
    env = os.environ.get("CAMLABEL_SHARED_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    p = shared_data_dir()
    if p is None:
        pytest.skip("../shared/data is absent (real sample data is never committed)")
    return p


@pytest.fixture
def artifacts_dir() -> Path:
    p = REPO / "test-artifacts"
    p.mkdir(exist_ok=True)
    return p


# The real Label Studio server (session-scoped): one instance shared by tests/integration and
# tests/e2e, started from a prepared data-dir copy and stopped by PID.
from tests.lsserver import LSServer, ls_server, ls_template  # noqa: E402,F401
