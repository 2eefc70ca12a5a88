"""What templates/ and manifests/ provide must work from an installed wheel, not only in-tree;
the wheel carries the training job as a module (tests/integration/test_wheel.py runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def build_wheel(out: Path) -> Path:
    """Build this checkout's wheel into ``out`` (no isolation: the build uses this venv)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("camlabel-*.whl")
    return whl


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_carries_templates_and_manifests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "camlabel/py.typed" in names
    for sub in ("templates", "manifests"):
        tracked = [p for p in (REPO / sub).rglob("*") if p.is_file()]
        assert tracked, sub
        for p in tracked:
            assert f"camlabel/_data/{p.relative_to(REPO).as_posix()}" in names, p


def test_wheel_carries_the_training_job_as_a_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "camlabel/train/segmenter_job.py" in names
    assert not {n for n in names if n.startswith("camlabel/_data/training/")}


def test_installed_wheel_works_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import camlabel, json; from camlabel.resources import manifest_path, template_path;"
        "assert 'site' in camlabel.__file__, camlabel.__file__;"
        "print(template_path('labelstudio', 'lesion.xml').is_file(),"
        " json.loads(manifest_path('ledger.schema.json').read_text())['title'][:8])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "camlabel"]
    r = subprocess.run(
        [sys.executable, "-m", "camlabel", "init", "ws"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "ws" / "camlabel.json").is_file()
