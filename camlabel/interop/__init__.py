"""Bring your own images and annotations, take the masks anywhere.

- :mod:`camlabel.interop.add`: register images without a classifier (``camlabel add``).
- :mod:`camlabel.interop.importing` + ``importers/<format>.py``: foreign annotations -> ledger
  annotations -> consensus masks (``camlabel import-annotations``).
- :mod:`camlabel.interop.exporting` + ``exporters/<format>.py``: masks -> nnU-Net, COCO, PNG
  pairs, DICOM SEG (``camlabel export``).
"""
