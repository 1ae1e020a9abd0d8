"""mriscan: train and serve brain-MRI tumor classifiers.

The public API is listed in ``__all__``. Light parts (decoding, kernels, store) are imported at
once; parts that need Keras/TensorFlow are imported on first use, so ``import mriscan`` is fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from mriscan.config import (
    CVConfig,
    FitConfig,
    HardwareConfig,
    ModelConfig,
    OptimizerConfig,
    PretrainConfig,
    RuntimeConfig,
    SplitConfig,
    TrainConfig,
    override,
)
from mriscan.errors import (
    BadFilesError,
    ConfigError,
    CorruptImageError,
    EmptyDatasetError,
    ImageDecodeError,
    ImageTooLargeError,
    MriscanError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from mriscan.io import decode_image, list_class_folders
from mriscan.preprocess import PreprocessConfig, normalize, preprocess, preprocess_batch

__version__ = "0.1.0"

# name -> module that defines it; imported lazily (these pull in Keras and a backend).
_LAZY = {
    "ImageStore": "mriscan.store",
    "IngestConfig": "mriscan.ingest",
    "IngestReport": "mriscan.ingest",
    "ingest": "mriscan.ingest",
    "verify_store": "mriscan.store",
    "duplicate_groups": "mriscan.duplicates",
    "split_indices": "mriscan.splits",
    "kfold_indices": "mriscan.splits",
    "open_or_ingest": "mriscan.sources",
    "ModelCard": "mriscan.artifacts",
    "resolve_task": "mriscan.tasks",
    "audit": "mriscan.audit",
    "RunLayout": "mriscan.artifacts",
    "build_model": "mriscan.model",
    "load_model": "mriscan.model",
    "StoreDataset": "mriscan.pipeline",
    "train": "mriscan.training.workflow",
    "pretrain_on_phantoms": "mriscan.training.pretrain",
    "cross_validate": "mriscan.training.crossval",
    "evaluate": "mriscan.evaluate",
    "binary_metrics": "mriscan.metrics",
    "predict": "mriscan.predict",
    "export_onnx": "mriscan.onnx_engine",
    "grad_cam": "mriscan.explain",
    "explain": "mriscan.explain",
    "synthesize": "mriscan.synth",
}

__all__ = [
    "BadFilesError",
    "CVConfig",
    "ConfigError",
    "CorruptImageError",
    "EmptyDatasetError",
    "FitConfig",
    "HardwareConfig",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ModelConfig",
    "MriscanError",
    "OptimizerConfig",
    "PreprocessConfig",
    "PretrainConfig",
    "RuntimeConfig",
    "SplitConfig",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreNotFoundError",
    "TrainConfig",
    "UnreadableFileError",
    "UnsupportedFormatError",
    "__version__",
    "decode_image",
    "list_class_folders",
    "normalize",
    "override",
    "preprocess",
    "preprocess_batch",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import heavy public names on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mriscan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public API."""
    return sorted(__all__)
