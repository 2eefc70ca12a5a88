"""Writers of ``camlabel export``: one module per format, registered in
:data:`camlabel.interop.exporting.EXPORTERS`; each defines ``write(items, out) -> dict``."""
