"""The push payload's percent points: the same floats as geometry.px_to_pct, without numpy."""

from __future__ import annotations

import numpy as np
import pytest

from camlabel.backends.labelstudio.tasks import _points_pct
from camlabel.errors import CamlabelError
from camlabel.geometry import px_to_pct


def test_points_pct_equals_px_to_pct_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = int(rng.integers(1, 6000)), int(rng.integers(1, 6000))
        pts = np.round(rng.uniform(-0.1, 1.1, (int(rng.integers(3, 80)), 2)) * [w, h], 3)
        want = px_to_pct(pts, w, h).tolist()
        assert _points_pct(pts.tolist(), w, h) == want
        ints = np.round(pts).astype(int)
        assert _points_pct(ints.tolist(), w, h) == px_to_pct(ints.astype(float), w, h).tolist()


@pytest.mark.parametrize("bad", [[[1.0, float("nan")], [2, 3], [4, 5]], [[1, 2, 3]]])
def test_unusual_points_take_the_validating_path(bad: list) -> None:
    with pytest.raises(CamlabelError):
        _points_pct(bad, 100, 100)
