from __future__ import annotations

import numpy as np
import pytest

from camlabel import consensus
from camlabel.errors import UsageError


def masks3() -> list[np.ndarray]:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    c = np.zeros((4, 4), bool)
    a[0, :3] = True
    b[0, 1:] = True
    c[0, 1:3] = True
    c[3, 3] = True
    return [a, b, c]


def test_rules() -> None:
    a, b, c = masks3()
    assert consensus.merge([a, b, c], "union").sum() == 5
    assert np.array_equal(np.argwhere(consensus.merge([a, b, c], "intersection")), [[0, 1], [0, 2]])
    maj = consensus.merge([a, b, c], "majority")
    assert np.array_equal(np.argwhere(maj), [[0, 1], [0, 2]])  # >= 2 of 3 votes
    assert np.array_equal(consensus.merge([a, b, c], "latest", ["t1", "t3", "t2"]), b)
    # two annotators: strict majority == intersection
    assert np.array_equal(consensus.merge([a, b], "majority"), a & b)
    assert np.array_equal(consensus.merge([a], "majority"), a)


def test_agreement() -> None:
    a, b, _ = masks3()
    assert consensus.dice(a, b) == pytest.approx(2 * 2 / 6)
    assert consensus.iou(a, b) == pytest.approx(2 / 4)
    assert consensus.pairwise_dice([a]) is None
    assert consensus.pairwise_dice([a, a]) == 1.0
    z = np.zeros((2, 2), bool)
    assert consensus.dice(z, z) == 1.0 and consensus.iou(z, z) == 1.0


def test_unknown_rule_lists_valid_ones() -> None:
    with pytest.raises(
        UsageError, match=r"supported rules: \['majority', 'union', 'intersection', 'latest'\]"
    ):
        consensus.merge([np.zeros((1, 1), bool)], "vote")
