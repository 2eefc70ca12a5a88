"""Entry script of the segmenter training job, local and on SageMaker.

    python training/train_seg.py --train DATA --model-dir OUT --epochs 40 --batch-size 30

The training code is camlabel.train.segmenter_job (``python -m camlabel.train.segmenter_job``
is the same command); this file only makes camlabel importable and calls its ``main()``. In
the SageMaker bundle a copy of camlabel/ lies beside this file, and Python puts the script's
folder first on sys.path; in a checkout without camlabel installed, the repository root
holds it.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("camlabel") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camlabel.train.segmenter_job import main

if __name__ == "__main__":
    sys.exit(main())
