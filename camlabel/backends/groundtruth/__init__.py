"""SageMaker Ground Truth backend: the backend (push/pull), its settings, job planning,
format conversion and offline request validation.

Importing the package loads no AWS SDK: boto3/botocore are imported on first use.
"""

from camlabel.backends.groundtruth.backend import GroundTruthBackend
from camlabel.backends.groundtruth.settings import GroundTruthSettings

__all__ = ["GroundTruthBackend", "GroundTruthSettings"]
