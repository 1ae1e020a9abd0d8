"""Import direction: the layers below the model and pipeline never import Keras or TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_store_ingest_splits_metrics_leave_keras_and_tensorflow_unimported():
    code = (
        "import mriscan.store, mriscan.ingest, mriscan.splits, mriscan.metrics, sys; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow'}); "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
