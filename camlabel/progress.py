"""Progress bars that go quiet when output is not a terminal (or with -q)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

# A training child (camlabel.train.segmenter_job) prints one line per event, this prefix and
# a JSON object, on stdout; camlabel.train.local reads them back.
PROGRESS_PREFIX = "CAMLABEL_PROGRESS "


def _enabled(enabled: bool) -> bool | None:
    if not enabled or os.environ.get("CAMLABEL_QUIET") == "1":
        return True  # tqdm's disable=True
    if os.environ.get("CAMLABEL_PROGRESS") == "1":
        return False  # forced on (the demo shows progress in logs too)
    return None if sys.stderr.isatty() else True


@contextmanager
def progress_bar(
    *, total: int | None, desc: str, enabled: bool = True, unit: str = "it"
) -> Iterator[Any]:
    """A tqdm bar on stderr; a no-op object when disabled or not on a TTY."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=_enabled(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def track(
    items: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    from tqdm.auto import tqdm

    yield from tqdm(
        items,
        desc=desc,
        total=total,
        disable=_enabled(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
    )
