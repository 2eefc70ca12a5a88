"""Label Studio backend: the backend (push/pull), its HTTP client, tasks and payloads,
annotation -> mask conversion, the embedded server and the demo's simulated annotators.

Importing the package loads no SDK: ``label_studio_sdk`` and ``httpx`` are imported on first use.
"""

from camlabel.backends.labelstudio.backend import LabelStudioBackend

__all__ = ["LabelStudioBackend"]
