"""The segmenter training job (camlabel.train.segmenter_job, and training/train_seg.py over it)
end to end (CLI arguments, and the SageMaker environment run from the bundle), its data
conventions, the SageMaker bundle, and camlabel.train.segmenter.train_segmenter on a workspace."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from camlabel.models import seg_data
from camlabel.train import segmenter_job as ts
from tests.seg_factory import make_masked_workspace, make_seg_folder

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "train_seg.py"
TINY_ARGS = [
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--image-size",
    "32",
    "--arch",
    "tiny",
    "--eager",
    "1",
]


def _run(
    args: list[str], env: dict[str, str] | None = None, *, entry: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The job in a child, as ``camlabel train-seg`` runs it (``-m``) unless ``entry`` says."""
    from camlabel.train.local import JOB_MODULE, child_environment

    full_env = child_environment(os.environ, {"TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    return subprocess.run(
        [sys.executable, *(entry or ["-P", "-m", JOB_MODULE]), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def _events(stdout: str) -> list[dict]:
    prefix = "CAMLABEL_PROGRESS "
    return [
        json.loads(line[len(prefix) :]) for line in stdout.splitlines() if line.startswith(prefix)
    ]


def _check_outputs(model_dir: Path, epochs: int, n_train: int, n_val: int) -> dict:
    import keras

    from camlabel.models.tiramisu import Tiramisu

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["n_train"] == n_train and metrics["n_val"] == n_val
    assert metrics["epochs_run"] == epochs
    for key in ("val_dice", "val_iou", "train_dice", "train_iou"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["model_config"]["down_blocks"] == [2, 2]
    assert metrics["train_images_per_second"] > 0
    assert "CPU" in metrics["device"] and metrics["mixed_precision"] is False
    with (model_dir / "history.csv").open() as fh:
        hist = list(csv.DictReader(fh))
    assert len(hist) == epochs
    assert {"dice", "iou", "val_dice", "val_iou", "loss", "val_loss"} <= set(hist[0])
    curves = cv2.imread(str(model_dir / "curves.png"))
    assert curves is not None and curves.shape == (440, 760, 3)
    assert (curves != 255).any(axis=2).mean() > 0.005  # axes, grid, points, legend
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    assert isinstance(model, Tiramisu)
    out = np.asarray(model(np.zeros((1, 37, 29, 1), "float32")))
    assert out.shape == (1, 37, 29, 1)
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["image_size"] == metrics["image_size"]
    with (model_dir / "split.csv").open() as fh:
        split = list(csv.DictReader(fh))
    train_p = {r["patient_id"] for r in split if r["split"] == "train"}
    val_p = {r["patient_id"] for r in split if r["split"] == "val"}
    assert not train_p & val_p
    return metrics


def test_train_seg_with_cli_arguments(tmp_path: Path) -> None:
    data = make_seg_folder(tmp_path / "data")
    out = tmp_path / "model"
    r = _run(["--train", str(data), "--model-dir", str(out), *TINY_ARGS])
    assert r.returncode == 0, r.stderr[-3000:]
    events = _events(r.stdout)
    assert [e["event"] for e in events] == ["device", "data", "epoch", "epoch", "done"]
    assert events[1] == {
        "event": "data",
        "train": 8,
        "val": 2,
        "split": "index.csv",
        "image_size": 32,
    }
    metrics = _check_outputs(out, epochs=2, n_train=8, n_val=2)
    assert metrics["split"] == "index.csv"
    assert (out / "checkpoints" / "best.keras").is_file()


def test_train_seg_with_sagemaker_environment(tmp_path: Path) -> None:
    """As in the container: SM_* paths, hyperparameters in SM_HPS *and* as --name value args."""
    data = make_seg_folder(tmp_path / "opt" / "input" / "data" / "train", with_split=False)
    model_dir, output_dir = tmp_path / "opt" / "model", tmp_path / "opt" / "output" / "data"
    hps = {
        "epochs": 1,
        "batch-size": 4,
        "image-size": 32,
        "arch": "tiny",
        "eager": 1,
        "val-fraction": 0.25,
    }
    env = {
        "SM_CHANNEL_TRAIN": str(data),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir),
        "SM_HPS": json.dumps(hps),
    }
    # the SageMaker bundle (entry script + the camlabel modules it carries) alone provides
    # camlabel: -E drops PYTHONPATH, and the script's folder is first on sys.path (-I would
    # leave it out)
    from camlabel.train.sagemaker import bundle_source

    src = bundle_source(tmp_path / "src")
    entry = ["-E", "-s", str(src / "train_seg.py")]
    r = _run([], env, entry=entry)  # SM_HPS alone is enough
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = _check_outputs(
        model_dir, epochs=1, n_train=metrics_n(r, "train"), n_val=metrics_n(r, "val")
    )
    assert metrics["split"] == "patient-grouped" and metrics["n_val"] >= 2
    for name in ("metrics.json", "curves.png", "history.csv"):
        assert (output_dir / name).is_file(), name
    # SageMaker's own form: the driver passes every hyperparameter as "--name value"; those win.
    model_dir2 = tmp_path / "model2"
    args = [
        "--epochs",
        "2",
        "--batch_size",
        "4",
        "--image-size",
        "32",
        "--arch",
        "tiny",
        "--eager",
        "1",
    ]
    r = _run(args, {**env, "SM_MODEL_DIR": str(model_dir2)}, entry=entry)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((model_dir2 / "metrics.json").read_text())["epochs_run"] == 2


def test_help_of_the_entry_script_and_of_the_module(tmp_path: Path) -> None:
    """Both entry points print their help (a "%" in a help string once broke argparse)."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site-packages, so camlabel is not importable and the script finds the checkout's
    script = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        env=base,
        cwd=tmp_path,
        timeout=120,
    )
    module = _run(["--help"])
    for r in (script, module):
        assert r.returncode == 0, r.stderr[-3000:]
        assert "--epochs" in r.stdout and "1 % of lr" in " ".join(r.stdout.split())


def test_the_training_child_imports_the_camlabel_of_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import site

    import camlabel
    from camlabel.train.local import child_environment

    # a decoy camlabel in the child's working directory: -P keeps it off sys.path
    (tmp_path / "camlabel").mkdir()
    (tmp_path / "camlabel" / "__init__.py").write_text("raise ImportError('the decoy')\n")
    base = {"PYTHONPATH": "/elsewhere", "SM_MODEL_DIR": "/opt/ml/model", "KEEP": "1"}
    env = child_environment({**os.environ, **base}, {"EXTRA": "2"})
    assert not {k for k in env if k.startswith("SM_")} and (env["KEEP"], env["EXTRA"]) == ("1", "2")
    r = subprocess.run(
        [sys.executable, "-P", "-c", "import camlabel; print(camlabel.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == Path(camlabel.__file__).resolve()
    # a source tree (a checkout, a worktree on PYTHONPATH, an editable install) goes first
    root = str(Path(camlabel.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [root, "/elsewhere"] or root in {
        str(Path(d).resolve()) for d in site.getsitepackages()
    }
    # an installed wheel (camlabel in site-packages): PYTHONPATH as it was
    fake = Path(site.getsitepackages()[0]) / "camlabel" / "__init__.py"
    monkeypatch.setattr(camlabel, "__file__", str(fake))
    assert child_environment(base)["PYTHONPATH"] == "/elsewhere"


def test_the_sagemaker_bundle_holds_every_camlabel_module_the_job_imports(
    tmp_path: Path,
) -> None:
    import ast

    from camlabel.train import sagemaker as sm

    src = sm.bundle_source(tmp_path / "src")
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    modules = sm.bundled_modules()
    assert files == {"train_seg.py", "requirements.txt", *(f"camlabel/{m}" for m in modules)}
    assert (src / "train_seg.py").read_text() == SCRIPT.read_text()
    assert {"train/segmenter_job.py", "models/tiramisu.py", "models/seg_data.py"} <= set(modules)
    # the training image has keras, numpy and cv2, not camlabel's other dependencies
    for m in modules:
        tree = ast.parse((src / "camlabel" / m).read_text())
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        third = {t.split(".")[0] for t in top} - set(sys.stdlib_module_names) - {"camlabel"}
        assert third <= {"keras", "numpy", "cv2"}, (m, third)
    # with only the bundle providing camlabel (-I drops PYTHONPATH): every bundled module
    # imports, and each camlabel module loaded comes from the bundle
    names = [
        ".".join(["camlabel", *Path(m).with_suffix("").parts]).removesuffix(".__init__")
        for m in modules
    ]
    code = (
        "import importlib, sys; sys.path.insert(0, sys.argv[1]);"
        "[importlib.import_module(n) for n in sys.argv[2:]];"
        "print(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('camlabel')))"
    )
    r = subprocess.run(
        [sys.executable, "-I", "-c", code, str(src), *names],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = ast.literal_eval(r.stdout.strip())
    assert len(loaded) == len(modules)
    assert all(f.startswith(str(src)) for f in loaded), loaded


def metrics_n(r: subprocess.CompletedProcess[str], part: str) -> int:
    (data_event,) = [e for e in _events(r.stdout) if e["event"] == "data"]
    return int(data_event[part])


def test_batchnorm_is_recalibrated_before_each_validation_and_before_saving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import camlabel.models.tiramisu as tiramisu

    data = make_seg_folder(tmp_path / "data")
    real = tiramisu.recalibrate_batchnorm
    calls: list[int] = []

    def counting(model, batches):  # type: ignore[no-untyped-def]
        calls.append(sum(len(b) for b in batches))
        return real(model, batches)

    monkeypatch.setattr(tiramisu, "recalibrate_batchnorm", counting)
    assert ts.main(["--train", str(data), "--model-dir", str(tmp_path / "m1"), *TINY_ARGS]) == 0
    assert calls == [8, 8, 8]  # 2 validations + before saving, on the 8 training images

    # a smaller seeded subset before each validation; the saved model's statistics use all
    calls.clear()
    m3 = tmp_path / "m3"
    assert (
        ts.main(
            [
                "--train",
                str(data),
                "--model-dir",
                str(m3),
                *TINY_ARGS,
                "--bn-recalibrate-images",
                "3",
            ]
        )
        == 0
    )
    assert calls == [3, 3, 8]

    def failing(model, batches):  # type: ignore[no-untyped-def]
        calls.append(-1)
        raise RuntimeError("no eager pass under this strategy")

    calls.clear()
    capsys.readouterr()
    monkeypatch.setattr(tiramisu, "recalibrate_batchnorm", failing)
    assert ts.main(["--train", str(data), "--model-dir", str(tmp_path / "m2"), *TINY_ARGS]) == 0
    assert calls == [-1]  # tried once, then training goes on with its own statistics
    warnings = [e for e in _events(capsys.readouterr().out) if e["event"] == "warning"]
    assert len(warnings) == 1 and "no eager pass under this strategy" in warnings[0]["message"]
    assert (tmp_path / "m2" / "model.keras").is_file()


def test_argument_precedence_cli_over_sm_hps_over_default() -> None:
    env = {
        "SM_CHANNEL_TRAIN": "/d",
        "SM_MODEL_DIR": "/m",
        "SM_HPS": json.dumps({"epochs": "7", "lr": 0.5}),
    }
    a = ts.parse_args(["--lr", "0.25"], env)
    assert (a.train, a.model_dir, a.epochs, a.lr, a.batch_size) == ("/d", "/m", 7, 0.25, 30)
    with pytest.raises(SystemExit):
        ts.parse_args([], {})  # neither --train nor SM_CHANNEL_TRAIN


def test_a_missing_index_fails_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"index.csv.*needs index.csv, images/ and masks/"):
        ts.main(["--train", str(tmp_path), "--model-dir", str(tmp_path / "m"), *TINY_ARGS])


# -- data conventions ---------------------------------------------------------------------


def test_letterbox_round_trip_and_mask_codes() -> None:
    img = np.zeros((60, 30), np.float32)
    img[10:20, 5:15] = 1.0
    canvas, box = seg_data.letterbox(img, 32)
    assert canvas.shape == (32, 32) and (box.height, box.width) == (32, 16) and box.left == 8
    assert not canvas[:, :8].any() and not canvas[:, 24:].any()
    back = seg_data.unletterbox(canvas, box)
    assert back.shape == (60, 30)
    assert ((back > 0.5) == (img > 0.5)).mean() > 0.97
    codes = seg_data.mask_codes(np.array([[0, 255, 127]], np.uint8))
    np.testing.assert_array_equal(codes, [[0, 1, seg_data.IGNORE]])
    np.testing.assert_array_equal(seg_data.codes_to_target(codes), [[0.0, 1.0, -1.0]])
    np.testing.assert_array_equal(seg_data.mask_codes(np.array([[0, 1]], np.uint8)), [[0, 1]])


def test_augmentation_keeps_labels_and_never_flips_left_right() -> None:
    img = np.zeros((64, 64), np.uint8)
    codes = np.zeros((64, 64), np.uint8)
    img[:, :20] = 200  # bright band on the image-left side, as a heart would be on one side
    codes[20:40, 5:15] = 1
    codes[45:50, 5:15] = seg_data.IGNORE
    aug = seg_data.Augment()
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, c = aug(img, codes, rng)
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(c)) <= {0, 1, seg_data.IGNORE}
        assert x[:, :32].mean() > x[:, 32:].mean()  # still on the left
        _, xs = np.nonzero(c == 1)
        assert xs.mean() < 32


def test_batches_are_deterministic_and_shaped() -> None:
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    codes = np.zeros((5, 32, 32), np.uint8)
    a = seg_data.SegBatches(imgs, codes, 2, augment=seg_data.Augment(), shuffle=True, seed=1)
    b = seg_data.SegBatches(imgs, codes, 2, augment=seg_data.Augment(), shuffle=True, seed=1)
    assert len(a) == 3
    x, y = a[2]
    assert x.shape == (1, 32, 32, 1) and y.shape == (1, 32, 32, 1)
    np.testing.assert_array_equal(a[0][0], b[0][0])


# -- the library entry point on a workspace -------------------------------------------------


def _add_normals(ws: Any, root: Path, n: int) -> list[Any]:
    """Register n lesion-free phantoms labelled normal (no mask, never annotated)."""
    from camlabel.phantoms import render_phantom

    rng = np.random.default_rng(9)
    paths = []
    for i in range(n):
        img, lesion, _ = render_phantom(rng, "normal", 64, 48)
        assert not lesion.any()
        p = root / f"normal{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    recs, failures = ws.register_images(
        paths,
        labels={str(p): "normal" for p in paths},
        patient_ids={str(p): f"npat{i}" for i, p in enumerate(paths)},
    )
    assert not failures
    return recs


def test_negatives_are_unannotated_images_of_a_non_lesion_class(tmp_path: Path) -> None:
    from camlabel.records import Annotation
    from camlabel.train.segmenter import export_pairs, masked_records, negative_records

    ws = make_masked_workspace(tmp_path / "ws", n=4)
    root = tmp_path / "normals"
    root.mkdir()
    normals = _add_normals(ws, root, 4)
    # an annotator skipped one normal: a person's word wins over the label
    skipped = normals[0].evolve(
        annotations=(
            Annotation(
                backend="labelstudio",
                annotation_id="9",
                annotator="a@x",
                status="skipped",
                created_at="2026-01-01T00:00:00Z",
                updated_at="2026-01-01T00:00:00Z",
            ),
        )
    )
    with ws.ledger.transaction() as txn:
        txn.put(skipped)
    pool = {r.image_id for r in normals[1:]}
    assert negative_records(ws, 0, seed=1) == []
    picked = negative_records(ws, 2, seed=1)
    assert len(picked) == 2 and {r.image_id for r in picked} <= pool
    assert [r.image_id for r in negative_records(ws, 2, seed=1)] == [r.image_id for r in picked]
    assert {r.image_id for r in negative_records(ws, 10, seed=1)} == pool
    # another seed draws from the same pool (3 choose 2: some seed picks another pair)
    pairs = {frozenset(r.image_id for r in negative_records(ws, 2, seed=s)) for s in range(8)}
    assert len(pairs) > 1

    out, versions = export_pairs(
        ws, "run1", masked_records(ws), val_fraction=0.0, seed=1, negatives=picked
    )
    assert set(versions) == {r.image_id for r in masked_records(ws)}  # masks only
    rows = {r.id: r for r in seg_data.read_index(out)}
    assert len(rows) == 6
    for rec in picked:
        assert rows[rec.image_id].mask_version == "0" and rows[rec.image_id].label == "normal"
        mask = cv2.imread(str(out / "masks" / f"{rec.image_id}.png"), cv2.IMREAD_UNCHANGED)
        img = cv2.imread(str(out / "images" / f"{rec.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == img.shape[:2] == (64, 48) and not mask.any()


def test_train_segmenter_records_mask_versions_and_refuses_too_few(tmp_path: Path) -> None:
    from camlabel.errors import CamlabelError
    from camlabel.models.segmenter import load_segmenter, segment_probability
    from camlabel.train.segmenter import train_segmenter

    ws = make_masked_workspace(tmp_path / "ws")
    (tmp_path / "normals").mkdir()
    normals = _add_normals(ws, tmp_path / "normals", 2)
    with pytest.raises(CamlabelError, match=r"at least 20 images with a mask; the workspace has 8"):
        train_segmenter(ws)
    events: list[dict] = []
    res = train_segmenter(
        ws,
        epochs=2,
        batch_size=4,
        image_size=32,
        min_masks=4,
        val_fraction=0.25,
        negatives=1,
        model_overrides={"arch": "tiny", "eager": 1},
        progress=False,
        on_event=events.append,
    )
    assert [e["event"] for e in events if e["event"] == "epoch"] == ["epoch", "epoch"]
    ids = {r.image_id for r in ws.ledger.all() if r.mask is not None}
    assert res.mask_versions == {i: 2 for i in ids}
    assert len(res.negatives) == 1 and res.negatives[0] in {r.image_id for r in normals}
    sidecar = json.loads((res.model_dir / "segmenter.json").read_text())
    assert sidecar["trained_on"] == res.mask_versions and sidecar["run_id"] == res.run_id
    assert sidecar["negatives"] == list(res.negatives) and sidecar["n_images"] == 9
    assert sidecar["n_train"] + sidecar["n_val"] == 9 and sidecar["n_val"] >= 2
    (run,) = ws.ledger.runs("train-seg")
    assert run["mask_versions"] == res.mask_versions and run["run_id"] == res.run_id
    assert run["negatives"] == 1 and run["settings"]["negatives"] == 1
    assert run["model"] == f"models/{res.run_id}/model.keras"
    # the export is patient-grouped
    rows = seg_data.read_index(res.export_dir)
    val_p = {r.patient_id for r in rows if r.split == "val"}
    assert val_p and not val_p & {r.patient_id for r in rows if r.split == "train"}
    # the trained model is usable through the inference API at original resolution
    seg = load_segmenter(res.model_dir)
    assert seg.image_size == 32 and seg.version == res.run_id
    img = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    (prob,) = segment_probability(seg, [img])
    assert (
        prob.shape == (50, 70) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    )


def test_backups_every_n_epochs_and_an_interrupted_run_resumes_from_the_last(
    tmp_path: Path,
) -> None:
    import keras

    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")

    class KilledAfter(keras.callbacks.Callback):
        def __init__(self, epoch: int) -> None:
            super().__init__()
            self.epoch = epoch

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == self.epoch:
                raise KeyboardInterrupt

    class Begun(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[int] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epochs.append(epoch)

    def model() -> Any:
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):  # killed after the 5th epoch; backup after the 3rd
        model().fit(
            x,
            y,
            epochs=7,
            verbose=0,
            callbacks=[ts._backup_callback(keras, backup, every=3), KilledAfter(4)],
        )
    assert backup.is_dir()
    begun = Begun()
    model().fit(
        x, y, epochs=7, verbose=0, callbacks=[ts._backup_callback(keras, backup, every=3), begun]
    )
    assert begun.epochs == [3, 4, 5, 6]  # epochs 4-5 redone, 1-3 not
    assert not backup.exists()  # a finished run removes its backup


def test_init_weights_start_training_from_a_previous_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--init-weights`` (the demo's round 2 fine-tunes round 1's U-Net): with a zero
    learning rate the trained weights are exactly the initial ones, so the run started from
    the previous model's weights, not from the seeded random initialisation."""
    from camlabel.models.segmenter import load_segmenter

    data = make_seg_folder(tmp_path / "data")
    first = tmp_path / "first"
    assert ts.main(["--train", str(data), "--model-dir", str(first), *TINY_ARGS]) == 0
    frozen = [*TINY_ARGS, "--lr", "0"]
    init = str(first / "model.keras")
    capsys.readouterr()
    assert (
        ts.main(
            [
                "--train",
                str(data),
                "--model-dir",
                str(tmp_path / "i"),
                *frozen,
                "--init-weights",
                init,
            ]
        )
        == 0
    )
    events = [e for e in _events(capsys.readouterr().out) if e["event"] == "init"]
    assert events == [{"event": "init", "weights": init}]
    assert ts.main(["--train", str(data), "--model-dir", str(tmp_path / "r"), *frozen]) == 0

    def weights(name: str) -> list[np.ndarray]:
        return [np.asarray(w) for w in load_segmenter(tmp_path / name).model.trainable_weights]

    ref, fine, fresh = weights("first"), weights("i"), weights("r")
    assert all(np.array_equal(a, b) for a, b in zip(ref, fine, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(ref, fresh, strict=True))


def test_the_training_child_gets_thread_pools_sized_to_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import camlabel.train.local as local
    from camlabel.train.local import child_environment

    monkeypatch.setattr(local, "usable_cores", lambda: 2)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TF_NUM_", "OMP_"))}
    clean = {k: v for k, v in clean.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    clean.pop("CAMLABEL_THREADS", None)
    clean.pop("CAMLABEL_CV2_THREADS", None)
    env = child_environment(clean)
    assert (env["TF_NUM_INTRAOP_THREADS"], env["TF_NUM_INTEROP_THREADS"]) == ("2", "1")
    assert env["OMP_NUM_THREADS"] == env["CAMLABEL_CV2_THREADS"] == "1"
    # the user's own settings win; CAMLABEL_THREADS=0 leaves every pool as it was
    assert (
        child_environment({**clean, "TF_NUM_INTRAOP_THREADS": "8"})["TF_NUM_INTRAOP_THREADS"] == "8"
    )
    off = child_environment({**clean, "CAMLABEL_THREADS": "0"})
    assert not {k for k in off if k.startswith("TF_NUM_") or k == "CAMLABEL_CV2_THREADS"}


def test_usable_cores_honours_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    from camlabel.train.local import usable_cores

    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: 2 threads
    assert usable_cores(quota) == min(affinity, 2)
    quota.write_text("max 100000\n")
    assert usable_cores(quota) == affinity
    assert usable_cores(tmp_path / "missing") == affinity
