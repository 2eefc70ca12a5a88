"""The built wheel, installed into a fresh venv outside the repository, runs every step.

The wheel is built as tests/unit/test_packaging.py builds it and installed with ``--no-deps``
into a new venv in a temporary folder. The dependencies come from the test's own environment
through a ``.pth`` line (no download of TensorFlow); a ``.pth`` line only adds a folder, the
``.pth`` files inside it are not read, so an editable install of this repository there does
not reach the new venv (asserted: camlabel is imported from the new venv). From a temporary
directory the INSTALLED ``camlabel`` script then runs ``--version``, ``init``, ``phantoms``,
``train-cls``, ``gradcam`` and ``train-seg`` (a child Python running
``camlabel.train.segmenter_job``), each on the tiniest settings the unit tests use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.unit.test_packaging import build_wheel

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Run by the new venv's python through the installed library: check what gradcam recorded,
# then give every image its phantom's lesion mask as a consensus mask (what pull-masks does).
MASKS_SNIPPET = """
import json, sys
from pathlib import Path

import camlabel
import cv2
from camlabel.imaging import write_png_atomic
from camlabel.records import MaskInfo
from camlabel.workspace import Workspace

ws = Workspace.open(sys.argv[1])
records = ws.ledger.all()
with ws.ledger.transaction() as txn:
    for rec in records:
        src = Path(rec.source_path)
        lesion = cv2.imread(str(src.parents[2] / "lesion_masks" / src.parent.name / src.name), 0)
        path = ws.dir("masks") / f"{rec.image_id}.png"
        write_png_atomic(path, lesion)
        info = MaskInfo(
            path=ws.rel(path), version=1, annotation_ids=("a1",), consensus="single",
            sha256="0" * 64,
        )
        txn.put(rec.evolve(mask=info))
print(json.dumps({
    "camlabel": camlabel.__file__,
    "images": len(records),
    "heatmaps": sum(r.heatmap is not None and ws.abs(r.heatmap.path).is_file() for r in records),
    "preannotations": sum(r.preannotation is not None for r in records),
    "masks": sum(r.mask is not None for r in ws.ledger.all()),
}))
"""


def _clean_env() -> dict[str, str]:
    """This environment without what would point Python at this repository or venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the repository with the wheel installed (the deps borrowed)."""
    whl = build_wheel(tmp_path_factory.mktemp("wheel"))
    root = tmp_path_factory.mktemp("venv") / "venv"
    assert not root.resolve().is_relative_to(REPO)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # before the .pth exists, without PYTHONPATH and --ignore-installed (which uninstalls
    # nothing): a camlabel pip can see elsewhere would otherwise satisfy the requirement
    install = ["install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *install, str(whl)],
        check=True,
        capture_output=True,
        env=_clean_env(),
    )
    assert (Path(purelib) / "camlabel" / "train" / "segmenter_job.py").is_file()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "camlabel-test-deps.pth").write_text("\n".join(ours) + "\n")
    return root


def test_the_installed_wheel_runs_every_command(venv: Path, tmp_path: Path) -> None:
    bin_ = venv / "bin"
    env = _clean_env()
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    camlabel = [str(bin_ / "camlabel")]

    r = _run([*camlabel, "--version"], cwd, env)
    assert "0.1.0" in r.stdout

    _run([*camlabel, "init", "ws"], cwd, env)
    assert (cwd / "ws" / "camlabel.json").is_file()
    ws = ["-w", "ws"]

    _run([*camlabel, "phantoms", "ph", "-n", "9", "--seed", "3", "--size", "64"], cwd, env)
    assert len(list((cwd / "ph" / "images").rglob("*.png"))) == 9

    tiny_cls = "--epochs 1 --batch-size 4 --image-size 32 --backbones efficientnetb0 --eager"
    r = _run(
        [
            *camlabel,
            "train-cls",
            "ph/metadata.csv",
            "--out",
            "models/cls.keras",
            *tiny_cls.split(),
            "--seed",
            "3",
            "--json",
            *ws,
        ],
        cwd,
        env,
    )
    s = json.loads(r.stdout)
    assert s["epochs_run"] == 1 and s["classes"] == ["covid", "pneumonia", "normal"]
    assert (cwd / "models" / "cls.keras").is_file()
    assert (cwd / "models" / "cls.keras.json").is_file()

    r = _run(
        [*camlabel, "gradcam", "models/cls.keras", "ph/metadata.csv", *ws, "--all", "--json"],
        cwd,
        env,
    )
    s = json.loads(r.stdout)
    assert (s["registered"], s["processed"]) == (9, 9)

    r = _run([str(bin_ / "python"), "-c", MASKS_SNIPPET, "ws"], cwd, env)
    state = json.loads(r.stdout)
    assert Path(state["camlabel"]).resolve().is_relative_to(venv.resolve()), state
    assert state == {**state, "images": 9, "heatmaps": 9, "preannotations": 9, "masks": 9}

    tiny_seg = "--epochs 1 --batch-size 4 --image-size 32 --arch tiny --min-masks 4"
    r = _run([*camlabel, "train-seg", *ws, *tiny_seg.split(), "--json"], cwd, env)
    s = json.loads(r.stdout)
    assert s["images"] == 9 and s["metrics"]["epochs_run"] == 1
    model_dir = cwd / s["model_dir"]
    for name in ("model.keras", "model_info.json", "metrics.json", "segmenter.json", "curves.png"):
        assert (model_dir / name).is_file(), name
    log = (model_dir / "train.log").read_text()
    assert f"{bin_ / 'python'} -u -P -m camlabel.train.segmenter_job" in log.splitlines()[0]
    sidecar = json.loads((model_dir / "segmenter.json").read_text())
    assert sidecar["run_id"] == s["run_id"] and len(sidecar["trained_on"]) == 9
    runs = (
        "import json; from camlabel.workspace import Workspace;"
        "print(json.dumps(Workspace.open('ws').ledger.runs('train-seg')))"
    )
    (run,) = json.loads(_run([str(bin_ / "python"), "-c", runs], cwd, env).stdout)
    assert run["run_id"] == s["run_id"] and run["model"] == f"models/{s['run_id']}/model.keras"
