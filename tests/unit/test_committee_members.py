"""Committee members: each backbone's own class probabilities, from the ensemble's one linear
head split by the members' pooled features, recorded with gradcam's predictions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from camlabel.active import committee_disagreement, select_images  # noqa: E402
from camlabel.classify import Classifier  # noqa: E402
from camlabel.models.ensemble import build_ensemble, member_logits  # noqa: E402
from camlabel.records import ImageRecord  # noqa: E402

SIZE = 32
MEMBERS = ("densenet-s", "efficientnet-s", "vgg-s")
CLASSES = ("normal", "covid", "pneumonia")


@pytest.fixture(scope="module")
def clf() -> Classifier:
    keras.utils.set_random_seed(3)
    model = build_ensemble(image_size=SIZE, backbones=MEMBERS, classes=CLASSES)
    # a head that tells the members apart (a fresh one is near zero for every member)
    head = model.get_layer("logits")
    kernel, bias = head.get_weights()
    rng = np.random.default_rng(0)
    head.set_weights([rng.normal(0, 2.0, kernel.shape).astype(np.float32), bias])
    return Classifier(model, CLASSES, SIZE, "m-test", ())


def _inputs(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_member_logits_add_up_to_the_ensembles_logits(clf: Classifier) -> None:
    x = _inputs(4)
    model = clf.model
    gaps = keras.Model(model.inputs, [model.get_layer(f"{n}_gap").output for n in MEMBERS])
    feats = [np.asarray(f) for f in gaps.predict_on_batch(x)]
    kernel, bias = model.get_layer("logits").get_weights()
    parts = member_logits(kernel, bias, feats)
    logits = np.asarray(keras.Model(model.inputs, model.get_layer("logits").output)(x))
    # sum_m (f_m W_m + b) = logits + (M - 1) b
    np.testing.assert_allclose(sum(parts) - (len(MEMBERS) - 1) * bias, logits, atol=1e-3)
    with pytest.raises(Exception, match="do not match the head's kernel rows"):
        member_logits(kernel, bias, feats[:2])


def test_member_probabilities_are_each_backbones_vote(clf: Classifier) -> None:
    x = _inputs(3)
    members = clf.member_probabilities(x)
    assert members is not None and len(members) == 3
    for m in members:
        assert tuple(m) == MEMBERS
        for probs in m.values():
            assert tuple(probs) == CLASSES and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    # the members disagree (a random head), so the committee has something to rank by
    scores = [committee_disagreement(list(m.values())) for m in members]
    assert all(s > 1e-4 for s in scores)
    # a single-backbone model has no committee
    single = Classifier(
        build_ensemble(image_size=SIZE, backbones=("vgg-s",)), CLASSES, SIZE, "v", ()
    )
    assert single.member_probabilities(x) is None


def test_committee_selection_ranks_by_member_disagreement(clf: Classifier) -> None:
    x = _inputs(4)
    members = clf.member_probabilities(x)
    assert members is not None
    recs = []
    for i, m in enumerate(members):
        pred = clf.prediction(np.asarray(clf.predict(x[i : i + 1])[0]))
        recs.append(
            ImageRecord(
                image_id=f"{i:064d}",
                source_path=f"/x/{i}.png",
                source_format="png",
                width=SIZE,
                height=SIZE,
                display_path=f"images/{i}.png",
                prediction=dataclasses.replace(pred, members=m),
            )
        )
    chosen = select_images(recs, 2, "committee")
    scores = sorted((committee_disagreement(list(m.values())) for m in members), reverse=True)
    assert [c.score for c in chosen] == pytest.approx(scores[:2])


def test_gradcam_records_the_members_and_committee_selection_uses_them(
    clf: Classifier, tmp_path: Path
) -> None:
    from camlabel.active import select_images
    from camlabel.phantoms import generate_phantoms
    from camlabel.preannotate import run_gradcam
    from camlabel.workspace import Workspace

    path = tmp_path / "cls.keras"
    clf.model.save(path)
    generate_phantoms(tmp_path / "ph", count=4, seed=2, size=64, progress=False)
    ws = Workspace.init(tmp_path / "ws", image_size=SIZE)
    run_gradcam(ws, path, [tmp_path / "ph" / "metadata.csv"], all_images=True, progress=False)
    recs = ws.ledger.all()
    assert len(recs) == 4
    for rec in recs:
        assert rec.prediction is not None and rec.prediction.members is not None
        assert tuple(rec.prediction.members) == MEMBERS
    chosen = select_images(recs, 4, "committee")
    expected = sorted(
        (committee_disagreement(list(r.prediction.members.values())) for r in recs),  # type: ignore[union-attr]
        reverse=True,
    )
    assert [c.score for c in chosen] == pytest.approx(expected)
