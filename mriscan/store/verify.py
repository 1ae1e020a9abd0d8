"""``verify_store``: check every committed sample of a store against its index."""

from __future__ import annotations

import os

import numpy as np

from mriscan.errors import StoreError, StoreNotFoundError
from mriscan.store.image_store import ImageStore
from mriscan.store.index import pixel_checksum

__all__ = ["verify_store"]


def verify_store(path: str | os.PathLike[str]) -> list[str]:
    """Check every committed sample of a store; return a list of problems (empty if sound).

    Opens every chunk, checks shapes and dtype, that the arrays cover the index, that labels
    agree, and that each slice's pixel checksum matches the index. A chunk that does not exist
    reads as the fill value (zarr v3 does not write all-fill-value chunks), so a missing chunk is
    a problem exactly when the record's checksum is not the checksum of a blank slice; it is then
    reported as missing.

    Damage that keeps the store from opening (an unreadable ``index.json``, a record of the wrong
    kind, missing zarr metadata) is returned as a single problem, not raised.

    Raises
    ------
    StoreNotFoundError
        No store (no ``index.json``) at ``path``.
    """
    try:
        store = ImageStore.open(path)
    except StoreNotFoundError:
        raise
    except StoreError as exc:  # damaged index or zarr metadata: a finding, not a crash
        return [str(exc)]
    with store:
        return _check(store)


def _read_array(store: ImageStore, name: str, n: int, problems: list[str]) -> np.ndarray | None:
    """The first ``n`` rows of a small array, or None (with a problem noted) if unreadable."""
    try:
        return np.asarray(store._group[name][:n])
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        problems.append(
            f"{name} array cannot be read ({type(exc).__name__}: {exc}); re-ingest into a new "
            "--store"
        )
        return None


def _check(store: ImageStore) -> list[str]:
    problems: list[str] = []
    n = len(store)
    images = store.engine.array
    s = store.image_size
    if images.dtype != np.uint8 or images.shape[1:] != (s, s):
        problems.append(
            f"images array is {images.dtype} {images.shape}, expected uint8 (N, {s}, {s})"
        )
    short = {
        name: store._group[name].shape[0]
        for name in ("images", "labels", "signatures")
        if store._group[name].shape[0] < n
    }
    if short:
        # a writer stopped between its commit point (index.json) and growing the arrays: the
        # committed rows are all there (mriscan reads them), zarr-python / TensorStore see fewer
        problems.append(
            "the zarr metadata lags the index: "
            + ", ".join(f"{k} array has {v} rows" for k, v in short.items())
            + f" but the index commits {n} (a writer stopped after its commit). mriscan reads "
            "every committed sample; to let zarr-python and TensorStore see them too, run "
            f"`mriscan migrate --store {store.location}` (or ingest into the store again)"
        )
    if any(p.startswith("images array is") for p in problems):
        return problems
    try:  # format 3: every column file must cover the committed rows
        records = list(store.index.records)
        len(store.index.duplicates)
        if store.table.columns is not None:
            store.signature_projections()
    except (StoreError, ValueError, KeyError, TypeError) as exc:
        return [f"the record columns cannot be read ({type(exc).__name__}: {exc})"]
    stored_labels = _read_array(store, "labels", n, problems)
    sigs = _read_array(store, "signatures", n, problems)
    if sigs is not None and store.table.columns is not None and len(sigs):
        # the grouping reads index/sig.u1; it must hold the same thumbnails as the array
        rows = store.signature_rows(np.arange(len(sigs))).reshape(sigs.shape)
        bad = np.flatnonzero(np.any(rows != sigs, axis=(1, 2)))
        if bad.size:
            problems.append(
                f"index/sig.u1 differs from the signatures array at {bad.size} sample(s) "
                f"(first: {int(bad[0])}); re-ingest into a new --store"
            )
    for rec in records:
        i = rec.position
        try:
            img = store[i]
        except StoreError as exc:
            problems.append(f"sample {i} ({rec.source}): {exc}")
            continue
        if pixel_checksum(img) != rec.pixel_sha256:
            if not store.engine.has_chunk(i):
                problems.append(
                    f"sample {i} ({rec.source}): chunk of sample {i} is missing (it reads "
                    "as blank, but the index records other pixels)"
                )
            else:
                problems.append(
                    f"sample {i} ({rec.source}): pixel checksum mismatch "
                    f"(stored data differs from what was ingested)"
                )
        if stored_labels is not None and i < len(stored_labels) and stored_labels[i] != rec.label:
            problems.append(
                f"sample {i} ({rec.source}): label array says "
                f"{int(stored_labels[i])}, index says {rec.label}"
            )
        if not 0 <= rec.label < max(len(store.class_names), 1):
            problems.append(f"sample {i} ({rec.source}): label {rec.label} has no class name")
    return problems
