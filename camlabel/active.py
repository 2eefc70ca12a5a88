"""Active learning: which images annotators should see next, and each one's score.

A strategy scores every candidate record (higher = label it sooner); :func:`select_images`
keeps the ``n`` best in score order. The score goes into the Label Studio prediction's
``score`` (its Data Manager sorts by it) and the order of Ground Truth's manifest.

- ``random``: a seeded draw (the baseline every other strategy must beat);
- ``uncertainty``: the ensemble's predictive entropy, from the stored ``Prediction``
  probabilities, divided by ``log K`` (1.0 = all classes equally likely); for an image whose
  pre-annotation came from a segmenter, the segmenter's own uncertainty when present
  (:func:`segmenter_uncertainty`, stored as the pre-annotation's ``uncertainty``): the mean
  binary entropy of its probability map plus the chance that it misses a lesion the classifier
  sees. Pixel entropy alone never picks a *confident* miss: on the demo, the U-Net of round 1
  left every whole-upper-lobe consolidation empty at near-zero entropy, so none was ever
  published and the held-out one stayed at Dice 0 (docs/loop.md);
- ``committee``: disagreement between the ensemble's members (the mean KL divergence of each
  member's class distribution from their mean; 0 = they agree). The ledger keeps the
  ensemble's probabilities only, so this needs ``members`` probabilities in the prediction and
  says so when they are missing.

A new strategy is one function ``(record, rng) -> float | None`` plus one line in
:data:`STRATEGIES`; an unknown name lists the valid ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from camlabel.errors import UsageError
from camlabel.records import ImageRecord, Prediction

Scorer = Callable[[ImageRecord, np.random.Generator], "float | None"]


def normalized_entropy(probabilities: Mapping[str, float] | Sequence[float]) -> float:
    """Shannon entropy of a class distribution divided by ``log K``: 0 (certain) .. 1 (uniform)."""
    values = probabilities.values() if isinstance(probabilities, Mapping) else probabilities
    p = np.clip(np.asarray(list(values), np.float64), 0.0, None)
    if p.size < 2 or p.sum() <= 0:
        return 0.0
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))


def binary_entropy_mean(probability_map: np.ndarray) -> float:
    """Mean binary entropy (bits) of a per-pixel probability map: a segmenter's uncertainty."""
    p = np.clip(np.asarray(probability_map, np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))


def segmenter_uncertainty(
    probability_map: np.ndarray, peak: float, lesion_probability: float | None
) -> float:
    """A segmenter's uncertainty on one image: the mean binary entropy (bits) of its map, plus
    ``lesion_probability * (1 - peak)``: the classifier's probability of a lesion class times the
    chance that the segmenter found none (``peak`` = its highest pixel probability where a
    lesion may lie, the lung field when there is one). An image the classifier calls pneumonia
    at 0.98 on which the segmenter's map peaks at 0.1 scores ~0.88 and comes first; where the
    two agree the term is ~0 and the entropy ranks. ``lesion_probability`` None (no
    classifier prediction) leaves the entropy alone.
    """
    u = binary_entropy_mean(probability_map)
    if lesion_probability is not None:
        u += float(np.clip(lesion_probability, 0.0, 1.0)) * (1.0 - float(np.clip(peak, 0.0, 1.0)))
    return u


def lesion_probability(
    prediction: Prediction | None, lesion_classes: Iterable[str]
) -> float | None:
    """The classifier's probability that an image shows a lesion: the sum over the lesion
    classes (None without a prediction), the weight of :func:`segmenter_uncertainty`'s miss term."""
    if prediction is None:
        return None
    return float(sum(prediction.probabilities.get(c, 0.0) for c in set(lesion_classes)))


def committee_disagreement(members: Sequence[Mapping[str, float]]) -> float:
    """Mean KL divergence of each member's class distribution from the members' mean."""
    if len(members) < 2:
        raise UsageError(
            f"a committee needs at least two members' probabilities. Received: {len(members)}"
        )
    classes = sorted(set().union(*members))
    m = np.asarray([[float(mem.get(c, 0.0)) for c in classes] for mem in members], np.float64)
    m = np.clip(m, 1e-12, None)
    m = m / m.sum(axis=1, keepdims=True)
    mean = m.mean(axis=0)
    return float(np.mean((m * np.log(m / mean)).sum(axis=1)))


def _random(rec: ImageRecord, rng: np.random.Generator) -> float | None:
    return float(rng.random())


def _uncertainty(rec: ImageRecord, rng: np.random.Generator) -> float | None:
    pre = rec.preannotation
    if pre is not None and pre.uncertainty is not None:  # a segmenter's (or its CAM fallback's)
        return float(pre.uncertainty)
    if rec.prediction is None:
        return None
    return normalized_entropy(rec.prediction.probabilities)


def _committee(rec: ImageRecord, rng: np.random.Generator) -> float | None:
    members = rec.prediction.members if rec.prediction is not None else None
    if not members:
        return None
    return committee_disagreement(list(members.values()))


STRATEGIES: dict[str, Scorer] = {
    "random": _random,
    "uncertainty": _uncertainty,
    "committee": _committee,
}


@dataclass(frozen=True)
class Selected:
    """One chosen image and its score (higher = label sooner)."""

    record: ImageRecord
    score: float


def get_strategy(name: str) -> Scorer:
    """The scorer registered as ``name``; an unknown name lists the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UsageError(
            f"Wrong selection strategy {name!r}, supported strategies: {list(STRATEGIES)}",
            hint="pass --strategy " + " or --strategy ".join(STRATEGIES),
        ) from None


def select_images(
    records: Iterable[ImageRecord], n: int, strategy: str = "uncertainty", *, seed: int = 0
) -> list[Selected]:
    """The ``n`` highest-scoring records under ``strategy``, best first (ties: image id).

    Records the strategy cannot score (no prediction) are left out; if none can be scored,
    UsageError says what is missing.
    """
    if n < 1:
        raise UsageError(f"--select must be at least 1. Received: {n}")
    scorer = get_strategy(strategy)
    ordered = sorted(records, key=lambda r: r.image_id)  # the draw must not depend on order
    rng = np.random.default_rng(seed)
    scored = [(rec, scorer(rec, rng)) for rec in ordered]
    usable = [Selected(rec, round(float(s), 6)) for rec, s in scored if s is not None]
    if ordered and not usable:
        need = {
            "uncertainty": "a classifier prediction (run camlabel gradcam)",
            "committee": (
                "each ensemble member's probabilities, which this ledger's predictions do not "
                "hold (they keep the ensemble's only)"
            ),
        }.get(strategy, "a score")
        raise UsageError(
            f"strategy {strategy!r} cannot score any of the {len(ordered)} candidate image(s): "
            f"it needs {need}",
            hint="use --strategy uncertainty or --strategy random",
        )
    usable.sort(key=lambda s: (-s.score, s.record.image_id))
    return usable[:n]
