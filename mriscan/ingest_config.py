"""The settings of an ingest run (``IngestConfig``), apart from ``mriscan.ingest`` so that the
command line can offer them as options without importing the store (zarr) and the ingest
machinery at start-up; ``mriscan.ingest`` exports it under its usual name. Keras-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mriscan.errors import ConfigError
from mriscan.io import DEFAULT_MAX_PIXELS
from mriscan.preprocess import PreprocessConfig

__all__ = ["IngestConfig"]


@dataclass(frozen=True)
class IngestConfig:
    """Options of one ingest run.

    Parameters
    ----------
    preprocess : PreprocessConfig
        How slices are cropped and resized (``preprocess.size`` is the stored side S).
    workers : int, optional
        Cores to use (default: CPU cores): reading threads, beside the main thread that
        preprocesses each batch (and one thread that appends it to the store). A run of DICOM
        files only reads on ``workers - 1`` threads (at least one), since their headers are
        parsed holding the GIL; NIfTI volumes and JPEG/PNG images on ``workers``.
    batch_size : int
        Slices preprocessed and appended per batch.
    strict : bool
        Fail (commit nothing) on any bad or unused file, label conflict, image of another
        modality, or warning (uniform or thin slice, near-identical slices under two classes)
        instead of skipping or flagging it; the error names every one of them.
    max_pixels : int
        Decompression-bomb cap per image.
    merge : bool
        Allow adding a raw folder other than the one(s) the store was built from (otherwise
        refused, so that two datasets are never mixed by accident).
    n_classes : int, optional
        Refuse (before anything is written) data with another number of classes; ``train`` and
        ``cv`` ask for 2.
    dicom : mriscan.dicom.DicomConfig, optional
    nifti : mriscan.nifti.NiftiConfig, optional
        How DICOM files and NIfTI volumes become slices. None: the settings the store records
        (``ImageStore.reader_settings``), or the defaults for a new store or one that records
        none. A new store records the settings used; a setting other than the store's for a
        kind of file the store holds is refused (``ConfigError``, nothing written).
    used_classes : tuple of str, optional
        The class folders the caller uses (a class map's sources); None: all. An empty class
        folder outside them is listed in ``IngestReport.ignored`` instead of refused
        (``mriscan.io.scan_class_folders``' ``used``); non-empty ones are stored as usual.
    min_classes : int
        The fewest classes the data may have (class folders, or manifest labels): 2 (a store
        to train on); ``mriscan evaluate`` ingests the data it scores with 1 (e.g. a
        tumor-only collection), into its temporary store only.
    compress : bool, optional
        How a store this run creates keeps its slices: True, Blosc-LZ4 compressed shards (~79%
        of the raw bytes for real 128² slices, random batch reads about half as fast); False,
        raw (100%). None (default): raw for a new store; an existing store keeps its codec
        either way, and True/False for a store of the other kind is refused
        (``ImageStore.create(compress=...)``, ``bench/RESULTS.md``).
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    workers: int | None = None
    batch_size: int = 32
    strict: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    merge: bool = False
    n_classes: int | None = None
    dicom: object | None = None
    nifti: object | None = None
    used_classes: tuple[str, ...] | None = None
    min_classes: int = 2
    compress: bool | None = field(
        default=None,
        metadata={
            "help": "Store the slices of a new store Blosc-LZ4 compressed: ~79% of the raw "
            "bytes on disk, random batch reads about half as fast (--no-compress: raw, 100%). "
            "[default: raw for a new store; an existing one keeps its codec]"
        },
    )

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1. Received: workers={self.workers}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1. Received: batch_size={self.batch_size}.")
        if self.min_classes < 1:
            raise ConfigError(
                f"min_classes must be >= 1. Received: min_classes={self.min_classes}."
            )
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1. Received: max_pixels={self.max_pixels}.")

    @property
    def n_workers(self) -> int:
        """Resolved number of decoding threads."""
        return self.workers or os.cpu_count() or 1
