"""Browser fixtures: Debian's Chromium through Playwright (never `playwright install`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CAMLABEL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium context with a fresh profile; every non-loopback request is aborted.

    ``context.blocked`` lists the URLs that were aborted (a test can assert it stays empty).
    """
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        reason = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if _ci():
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        if _ci():
            raise
        pytest.skip(f"playwright is not installed ({exc})")
    blocked: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1400},
        )
        ctx.route("**/*", guard)
        ctx.blocked = blocked
        try:
            yield ctx
        finally:
            ctx.close()
