"""Prediction on inputs of every kind (JPEG/PNG, DICOM, NIfTI): read with ``mriscan.readers``
(the ingest path), predict each slice, add one aggregated row per series / volume
(``mriscan.aggregate``).

Scanner slices are named by pseudonyms (``dicom/<series>/<instance>#<frame>``,
``nifti/<volume>#<slice>``) hashed with a salt made fresh for each run, so an output file holds
no file or folder name of a scan (often the patient's name) unless ``show_paths`` asks for them.
Files that fail still get an error row naming the file: the user must be able to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mriscan.aggregate import TOP_K, aggregate_rows
from mriscan.errors import ConfigError
from mriscan.inference import predict_batch, prediction_row
from mriscan.io import SourceFile
from mriscan.preprocess import normalize, preprocess_batch
from mriscan.readers import InputRead, ReadOptions, check_series_sizes, read_input
from mriscan.scan import new_salt

__all__ = ["SCAN_COLUMNS", "predict_arrays", "predict_inputs", "read_inputs"]

# the columns scanner rows add to ``mriscan.inference.columns_for``
SCAN_COLUMNS = ("level", "unit", "slices", "aggregate")


def read_inputs(
    files: Sequence[SourceFile],
    *,
    salt: bytes | None = None,
    workers: int | None = None,
    options: ReadOptions | None = None,
) -> list[InputRead]:
    """Read every file with ``mriscan.readers.read_input`` (threads; ``options``: how DICOM
    and NIfTI are read), DICOM series whose files disagree in size refused whole; one
    ``InputRead`` per file, in order."""
    salt = salt if salt is not None else new_salt()
    mixed = check_series_sizes([f.path for f in files if f.kind == "dicom"])

    def load(f: SourceFile) -> InputRead:
        if f.path in mixed:
            return InputRead(f.path, f.kind, error=mixed[f.path])
        return read_input(f.path, f.kind, salt=salt, root=f.path.parent, options=options)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(load, files))


def predict_arrays(
    model: Any, card: Any, images: Sequence[np.ndarray], *, batch_size: int = 32
) -> np.ndarray:
    """Class probabilities (float64, shape (n, K)) of decoded uint8 slices (H, W), with the
    model card's preprocessing, normalisation and test-time flip."""
    cfg = card.preprocess
    parts = []
    for start in range(0, len(images), batch_size):
        batch = preprocess_batch(list(images[start : start + batch_size]), cfg)
        x = normalize(batch, cfg.normalization, threshold=cfg.threshold)[..., None]
        parts.append(predict_batch(model, x, batch_size, tta=card.tta))
    k = max(len(card.class_names), 2)
    return np.concatenate(parts) if parts else np.empty((0, k), np.float64)


def predict_inputs(
    model: Any,
    card: Any,
    files: Sequence[SourceFile],
    *,
    threshold: float | None,
    batch_size: int = 32,
    workers: int | None = None,
    show_paths: bool = False,
    top_k: int = TOP_K,
    read_options: ReadOptions | None = None,
) -> list[dict[str, Any]]:
    """Rows for DICOM / NIfTI files: one per slice (``level`` "slice", in series/volume order)
    and one per series / volume (``mriscan.aggregate.aggregate_rows``; its ``warning`` says
    "<m> of <n> instances unreadable" when files of the series failed, e.g. a truncated
    instance); a failed file gives one row with the reason in ``error``; a DICOM file without
    an image, or an image of a modality not read (``DicomConfig.modalities``: MR only by
    default), one row with ``error`` starting "skipped:".

    Columns: ``path`` (pseudonym, or ``<file>#<frame or slice>`` with ``show_paths``), those
    of ``mriscan.inference.columns_for(card)``, then ``SCAN_COLUMNS``. ``threshold``: that of a
    two-class model (None for more classes). ``read_options``: how DICOM and NIfTI are read
    (``mriscan.readers.ReadOptions``; default: the readers' defaults).
    """
    if card.binary and (threshold is None or not 0.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold must be a number in [0, 1]. Received: {threshold!r}.")
    salt = new_salt()
    reads = read_inputs(files, workers=workers, salt=salt, options=read_options)
    rows: list[dict[str, Any]] = []
    slices = []
    unreadable: dict[str, int] = {}  # series unit -> its files that could not be read
    for r in reads:
        if r.error is not None or r.skipped is not None or r.excluded is not None:
            err = r.error if r.error is not None else f"skipped: {r.skipped or r.excluded}"
            rows.append(_scan_row(card, str(r.path), None, threshold, err, "file", ""))
            if r.error is not None and r.kind == "dicom":
                from mriscan.dicom import series_id

                if (series := series_id(r.path, salt)) is not None:
                    unit = f"series:{series}"
                    unreadable[unit] = unreadable.get(unit, 0) + 1
            continue
        for s in r.slices:
            slices.append((r, s))
    slices.sort(key=lambda rs: (rs[1].unit, rs[1].order))
    probs = predict_arrays(model, card, [s.image for _, s in slices], batch_size=batch_size)
    for (r, s), p in zip(slices, probs, strict=True):
        where = f"{r.path}#{s.source.rsplit('#', 1)[-1]}" if show_paths else s.source
        row = _scan_row(card, where, p, threshold, "", "slice", s.unit)
        if show_paths:
            row["unit_path"] = str(r.path.parent if r.kind == "dicom" else r.path)
        rows.append(row)
    agg = aggregate_rows(rows, card=card, threshold=threshold, k=top_k)
    for row in rows:
        row.pop("unit_path", None)
    files_of: dict[str, set] = {}
    for r, s in slices:
        files_of.setdefault(s.unit, set()).add(r.path)
    for row in agg:
        if missing := unreadable.get(row["unit"], 0):
            total = missing + len(files_of.get(row["unit"], ()))
            row["warning"] = (
                f"{missing} of {total} instances unreadable (see their rows): scored from the "
                "others only"
            )
    return rows + agg


def _scan_row(
    card: Any,
    path: str,
    p: np.ndarray | None,
    threshold: float | None,
    error: str,
    level: str,
    unit: str,
) -> dict:
    """A ``mriscan.inference.prediction_row`` (class probabilities, label) plus the scanner
    columns."""
    row = prediction_row(path, p, card, threshold, error)
    row["path"] = path  # pseudonyms and paths are already text
    row.update(level=level, unit=unit, slices=1 if level == "slice" else "", aggregate="")
    return row
