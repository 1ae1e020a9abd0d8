"""Perceptual signatures and near-duplicate groups, so splits keep copies of a slice together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mriscan.preprocess import preprocess, preprocess_batch

__all__ = ["SIGNATURE_SIZE", "duplicate_groups", "signature", "signatures"]

SIGNATURE_SIZE = 16
DEFAULT_THRESHOLD = 0.95
# aligned thumbnails of different heads look alike: the midline search merged a "no" with a
# "yes" slice of the real set into one group
_THUMBNAIL = {"size": SIGNATURE_SIZE, "crop": False, "aspect": "stretch", "align": False}


def signature(image: np.ndarray) -> np.ndarray:
    """Area-averaged 16×16 thumbnail of a whole decoded slice (no crop, no alignment), the
    perceptual signature.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8

    Returns
    -------
    ndarray of shape (16, 16), uint8
    """
    return preprocess(image, **_THUMBNAIL)


def signatures(images: Sequence[np.ndarray]) -> np.ndarray:
    """``signature`` of each decoded slice, computed in parallel: ndarray (N, 16, 16), uint8."""
    return preprocess_batch(images, **_THUMBNAIL)


def _unit_rows(signatures: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm float32 rows (so a dot product is a Pearson correlation)."""
    x = signatures.reshape(len(signatures), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def duplicate_groups(
    signatures: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD, block: int = 2048
) -> np.ndarray:
    """Group slices whose signatures correlate above ``threshold`` (transitively).

    Parameters
    ----------
    signatures : ndarray of shape (N, 16, 16), uint8
    threshold : float
        Pearson correlation above which two slices are the same slice.
    block : int
        Rows compared at once (memory is ``block × N`` floats).

    Returns
    -------
    ndarray of shape (N,), int64
        Group ids numbered 0.. in order of first appearance. Cost is O(N²) dot products.
    """
    n = len(signatures)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x = _unit_rows(np.asarray(signatures))
    flat = x.reshape(n, -1)
    # Constant thumbnails (all-black slices) correlate with nothing; compare them by value.
    flat_const = ~np.any(flat, axis=1)
    for start in range(0, n, block):
        stop = min(n, start + block)
        corr = flat[start:stop] @ flat[start:].T
        rows, cols = np.nonzero(corr > threshold)
        for r, c in zip(rows + start, cols + start, strict=True):
            if c > r:
                ra, rb = find(r), find(c)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    if flat_const.any():
        raw = np.asarray(signatures).reshape(n, -1)
        first: dict[bytes, int] = {}
        for i in np.flatnonzero(flat_const):
            key = raw[i].tobytes()
            j = first.setdefault(key, i)
            if j != i:
                ra, rb = find(i), find(j)
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    _, ids = np.unique(roots, return_inverse=True)
    # renumber by first appearance so ids are stable when rows are appended
    order = {}
    return np.array([order.setdefault(g, len(order)) for g in ids], dtype=np.int64)
