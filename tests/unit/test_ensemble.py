"""The ensemble model, its layers, class weights, the grouped split, datasets and metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from camlabel.errors import ModelError, UsageError  # noqa: E402
from camlabel.models.data import grouped_stratified_split, read_dataset  # noqa: E402
from camlabel.models.ensemble import (  # noqa: E402
    BACKBONES,
    EnsembleClassifier,
    build_ensemble,
    class_weights_from_counts,
    load_ensemble,
    parse_class_weights,
)
from camlabel.models.layers import BackbonePreprocess  # noqa: E402
from camlabel.models.metrics import classification_metrics, roc_auc  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def model() -> EnsembleClassifier:
    keras.utils.set_random_seed(1)
    return build_ensemble(image_size=SIZE, freeze_fraction=0.5, bn_momentum=0.9)


@pytest.fixture(scope="module")
def saved(model: EnsembleClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ens") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, size=(4, SIZE, SIZE, 3)).astype(np.float32)


def test_flat_graph_on_one_input(model: EnsembleClassifier) -> None:
    assert model.cam_layers == ("relu", "top_activation", "block5_conv4")
    assert len(model.inputs) == 1 and model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, 3)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    for name in (*model.cam_layers, "logits", "predictions", "features", "dropout"):
        assert name in names  # the CAM layers are nodes of the ensemble itself
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    pre = {
        layer.name: layer.mode for layer in model.layers if isinstance(layer, BackbonePreprocess)
    }
    assert pre == {
        "densenet121_preprocess": "torch",
        "efficientnetb0_preprocess": "none",
        "vgg19_preprocess": "caffe",
    }
    assert model.count_params() == pytest.approx(31.1e6, rel=0.01)


def test_freeze_fraction_freezes_the_first_layers_of_each_backbone(
    model: EnsembleClassifier,
) -> None:
    for name in model.backbones:
        own = model.backbone_layer_names(name)
        frozen = [not model.get_layer(n).trainable for n in own]
        k = int(0.5 * len(own))
        assert all(frozen[:k]) and not any(frozen[k:]), name
    assert model.get_layer("logits").trainable


def test_save_load_round_trip_gives_identical_outputs(
    model: EnsembleClassifier, saved: Path, batch: np.ndarray
) -> None:
    loaded = load_ensemble(saved)  # safe_mode stays on: no Lambda layers
    assert isinstance(loaded, EnsembleClassifier)
    assert (loaded.classes, loaded.image_size, loaded.model_version) == (
        model.classes,
        model.image_size,
        model.model_version,
    )
    assert [layer.trainable for layer in loaded.layers] == [
        layer.trainable for layer in model.layers
    ]
    bns = [layer for layer in loaded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 100 and {layer.momentum for layer in bns} == {0.9}
    np.testing.assert_array_equal(
        np.asarray(loaded(batch, training=False)), np.asarray(model(batch, training=False))
    )


def test_weights_from_a_saved_ensemble_initialize_a_new_version(
    model: EnsembleClassifier, saved: Path, batch: np.ndarray
) -> None:
    again = build_ensemble(image_size=SIZE, weights=saved)
    assert again.model_version != model.model_version
    np.testing.assert_allclose(
        np.asarray(again(batch, training=False)),
        np.asarray(model(batch, training=False)),
        atol=1e-6,
    )


def test_one_eager_fit_step_with_class_weights(batch: np.ndarray) -> None:
    keras.utils.set_random_seed(2)
    m = build_ensemble(image_size=SIZE, dropout=0.2)
    m.compile(
        keras.optimizers.Adam(1e-3),
        "categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=True,
    )
    before = m.get_layer("logits").get_weights()[0].copy()
    y = keras.utils.to_categorical([0, 1, 2, 0], 3)
    hist = m.fit(batch, y, epochs=1, batch_size=4, class_weight={0: 0.5, 1: 2.0, 2: 1.0}, verbose=0)
    assert math.isfinite(hist.history["loss"][0])
    assert not np.allclose(before, m.get_layer("logits").get_weights()[0])


def test_imagenet_weights_offline_fail_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ModelError) as err:
        build_ensemble(image_size=SIZE, weights="imagenet", backbones=("vgg19",))
    msg = str(err.value)
    assert "could not download the ImageNet weights of vgg19" in msg
    assert "--weights PATH" in msg and "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg


def test_weights_folder_without_the_files_names_them(tmp_path: Path) -> None:
    with pytest.raises(
        ModelError, match=r"expected vgg19_weights_tf_dim_ordering_tf_kernels_notop\.h5"
    ):
        build_ensemble(image_size=SIZE, weights=tmp_path, backbones=("vgg19",))
    with pytest.raises(ModelError, match="no such file or folder"):
        build_ensemble(image_size=SIZE, weights=tmp_path / "missing.keras", backbones=("vgg19",))


def test_bad_arguments_state_the_rule() -> None:
    with pytest.raises(
        ModelError,
        match=r"supported backbones: \['densenet-s', 'densenet121', 'efficientnet-s', 'efficientnetb0', 'vgg-s', 'vgg19'\]",
    ):
        build_ensemble(backbones=("resnet50",))
    with pytest.raises(ModelError, match="image_size=16"):
        EnsembleClassifier(image_size=16)
    with pytest.raises(ModelError, match=r"freeze_fraction=1\.5"):
        EnsembleClassifier(image_size=SIZE, freeze_fraction=1.5)


@pytest.mark.parametrize("mode", ["torch", "caffe"])
def test_preprocess_layer_matches_keras_applications(mode: str, batch: np.ndarray) -> None:
    from keras.src.applications.imagenet_utils import preprocess_input

    ours = np.asarray(BackbonePreprocess(mode)(batch))
    ref = preprocess_input(batch.copy(), mode=mode)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    restored = BackbonePreprocess.from_config(BackbonePreprocess(mode).get_config())
    assert restored.mode == mode


def test_efficientnet_imagenet_mode_reproduces_keras_extra_rescaling(batch: np.ndarray) -> None:
    """Normalization (x/255 - mean)/std of our output == Keras's imagenet graph: that, / sqrt(std)."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    ours = np.asarray(BackbonePreprocess("efficientnet-imagenet")(batch), np.float64)
    keras_graph = (batch / 255.0 - mean) / std / np.sqrt(std)
    np.testing.assert_allclose((ours / 255.0 - mean) / std, keras_graph, rtol=1e-4, atol=1e-4)
    assert {"densenet121", "efficientnetb0", "vgg19"} <= set(BACKBONES)


# ----------------------------------------------------------------------------- class weights
def test_class_weights_balanced_from_counts() -> None:
    w = class_weights_from_counts([10, 30, 60])
    assert w == pytest.approx({0: 100 / 30, 1: 100 / 90, 2: 100 / 180})
    assert sum(w[i] * c for i, c in enumerate([10, 30, 60])) == pytest.approx(
        100
    )  # total weight kept
    assert class_weights_from_counts([5, 0])[1] == 0.0


def test_class_weights_parsing() -> None:
    classes = ("covid", "pneumonia", "normal")
    assert parse_class_weights("none", classes, [1, 1, 1]) is None
    assert parse_class_weights("auto", classes, [1, 2, 1]) == pytest.approx(
        {0: 4 / 3, 1: 2 / 3, 2: 4 / 3}
    )
    assert parse_class_weights("normal=1,covid=3.5,pneumonia=1.2", classes, [1, 1, 1]) == {
        0: 3.5,
        1: 1.2,
        2: 1.0,
    }
    with pytest.raises(ModelError, match=r"missing=\['normal'\]"):
        parse_class_weights("covid=1,pneumonia=2", classes, [1, 1, 1])
    with pytest.raises(ModelError, match="not a number"):
        parse_class_weights("covid=x,pneumonia=2,normal=1", classes, [1, 1, 1])


# ------------------------------------------------------------------------------ the split
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 25) | st.none()), min_size=1, max_size=120
    ),
    st.integers(0, 10_000),
)
def test_grouped_split_never_puts_a_patient_on_both_sides(items: list, seed: int) -> None:  # type: ignore[type-arg]
    labels = [lab for lab, _ in items]
    groups = [None if g is None else f"p{g}" for _, g in items]
    train, val = grouped_stratified_split(labels, groups, 0.2, seed)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(items)))
    assert not {groups[i] for i in train if groups[i]} & {groups[i] for i in val if groups[i]}


def test_grouped_split_is_stratified_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for p in range(300):  # 300 patients, 1-3 images each, one class per patient
        lab = ["covid", "pneumonia", "normal"][p % 3] if p % 10 else "covid"
        for _ in range(int(rng.integers(1, 4))):
            labels.append(lab)
            groups.append(f"p{p}")
    _train, val = grouped_stratified_split(labels, groups, 0.2, seed=5)
    assert len(val) / len(labels) == pytest.approx(0.2, abs=0.01)
    for lab in ("covid", "pneumonia", "normal"):
        total = sum(1 for x in labels if x == lab)
        in_val = sum(1 for i in val if labels[i] == lab)
        assert in_val / total == pytest.approx(0.2, abs=0.02), lab
    again = grouped_stratified_split(labels, groups, 0.2, seed=5)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, grouped_stratified_split(labels, groups, 0.2, seed=6)[1])


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(UsageError, match="val_fraction"):
        grouped_stratified_split(["a"], [None], 1.0, 0)


# ------------------------------------------------------------------------------- datasets
def _png(path: Path) -> None:
    from camlabel.imaging import write_png_atomic

    write_png_atomic(path, np.full((8, 8), 100, np.uint8))


def test_read_dataset_from_class_folders_and_csv(tmp_path: Path) -> None:
    for cls, n in (("normal", 2), ("covid", 1)):
        for i in range(n):
            _png(tmp_path / "folders" / cls / f"{cls}{i}.png")
    ds = read_dataset(tmp_path / "folders")
    assert ds.classes == ("covid", "pneumonia", "normal")  # default order when the names fit
    assert ds.counts() == [1, 0, 2] and ds.patient_ids == (None, None, None)
    assert ds.relpath(0) == "covid/covid0.png"

    _png(tmp_path / "csv" / "img" / "a.png")
    _png(tmp_path / "csv" / "img" / "b.png")
    (tmp_path / "csv" / "metadata.csv").write_text(
        "file,label,patient_id,extra\nimg/a.png,cat,p1,x\nimg/b.png,dog,,y\n"
    )
    ds = read_dataset(tmp_path / "csv")  # a folder holding metadata.csv
    assert ds.classes == ("cat", "dog") and ds.patient_ids == ("p1", None)
    assert ds.paths[0] == (tmp_path / "csv" / "img" / "a.png").resolve()
    with pytest.raises(UsageError, match=r"labels \['dog'\] are not among the classes"):
        read_dataset(tmp_path / "csv" / "metadata.csv", classes=("cat", "bird"))
    (tmp_path / "bad.csv").write_text("path,label\nx.png,a\n")
    with pytest.raises(UsageError, match="needs columns 'file' and 'label'"):
        read_dataset(tmp_path / "bad.csv")


# -------------------------------------------------------------------------------- metrics
def test_roc_auc_with_ties_and_degenerate_cases() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_classification_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.4, 0.5, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
            [0.6, 0.2, 0.2],
        ]
    )
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == {
        "labels": ["a", "b", "c"],
        "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]],
    }
    a = m["per_class"]["a"]
    assert (a["precision"], a["recall"], a["support"]) == (0.5, 0.5, 2)
    b = m["per_class"]["b"]
    assert (
        b["precision"] == pytest.approx(2 / 3)
        and b["recall"] == 1.0
        and b["f1"] == pytest.approx(0.8)
    )
    c = m["per_class"]["c"]
    assert c["precision"] == 1.0 and c["recall"] == 0.5 and c["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["per_class"]["c"]["auc"] == pytest.approx(1.0)  # scores 0.8, 0.2 vs 0.1 x4
    assert m["macro_auc"] == pytest.approx(np.mean([v["auc"] for v in m["per_class"].values()]))
    none_predicted = classification_metrics(
        np.array([0, 0]), np.array([[0.2, 0.8], [0.3, 0.7]]), ["x", "y"]
    )
    assert (
        none_predicted["per_class"]["x"]["precision"] is None
        and none_predicted["per_class"]["x"]["f1"] == 0.0
    )
    assert none_predicted["per_class"]["y"]["auc"] is None and none_predicted["macro_auc"] is None
