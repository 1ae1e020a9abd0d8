"""Where mriscan reads and writes by default (paths relative to the working folder), apart from
the modules that use them so that the command line can show them without importing those.
``mriscan.sources`` and ``mriscan.store`` export them under their usual names.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_RAW", "DEFAULT_STORE", "PHANTOM_STORE"]

#: class folders that ``mriscan train`` with no arguments ingests
DEFAULT_RAW = Path("data/raw")
#: the store ``ingest`` writes and ``train`` / ``cv`` read by default
DEFAULT_STORE = Path("data/processed/images.zarr")
#: where the generated phantom slices are stored when DEFAULT_RAW is empty
PHANTOM_STORE = Path("data/processed/synthetic.zarr")
