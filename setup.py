"""Copies the top-level templates/ and manifests/ into the wheel as camlabel/_data.

They live at the repository's top level (where people look for them) but must also work
after a plain ``pip install .`` used from another directory; camlabel.resources finds
either copy. training/ is not copied: its script is a thin entry over the package's
camlabel.train.segmenter_job, which the wheel carries as code.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "camlabel" / "_data"
        for name in ("templates", "manifests"):
            src = ROOT / name
            if src.is_dir():
                dst = target / name
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)


setup(cmdclass={"build_py": BuildPyWithData})
