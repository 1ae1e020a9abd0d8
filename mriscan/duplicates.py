"""Perceptual signatures and near-duplicate groups, so splits keep copies of a slice together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mriscan.neighbors import DEFAULT_DIMS, near_pairs
from mriscan.preprocess import preprocess, preprocess_batch

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIGNATURE_SIZE",
    "duplicate_groups",
    "signature",
    "signatures",
]

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


def duplicate_groups(
    signatures: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD, dims: int = DEFAULT_DIMS
) -> np.ndarray:
    """Group slices whose signatures correlate above ``threshold`` (transitively).

    Parameters
    ----------
    signatures : ndarray of shape (N, 16, 16), uint8
    threshold : float
        Pearson correlation in [0, 1) above which two slices are the same slice.
    dims : int
        Principal axes of the k-d tree behind the pair search (speed only, see
        ``mriscan.neighbors.near_pairs``).

    Returns
    -------
    ndarray of shape (N,), int64
        Group ids (connected components of the "correlates above threshold" graph) numbered
        0.. in order of first appearance. Identical constant thumbnails (blank slices) form one
        group. The pair search is a k-d tree, not all N² pairs (``bench/test_neighbors.py``).

    Raises
    ------
    ConfigError
        If ``threshold`` is outside [0, 1).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sigs = np.asarray(signatures)
    n = len(sigs)
    if n == 0:
        return np.empty(0, np.int64)
    i, j, _ = near_pairs(sigs, threshold=threshold, dims=dims)
    raw = sigs.reshape(n, -1)
    # Constant thumbnails (all-black slices) correlate with nothing; compare them by value.
    const = np.flatnonzero(np.all(raw == raw[:, :1], axis=1))
    if len(const):
        first: dict[bytes, int] = {}
        extra = [(first.setdefault(raw[k].tobytes(), k), k) for k in const]
        ci, cj = np.array(extra, np.int64).reshape(-1, 2).T
        i, j = np.concatenate([i, ci]), np.concatenate([j, cj])
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # renumber by first appearance so ids are stable when rows are appended
    _, first_pos = np.unique(comp, return_index=True)
    rank = np.empty(len(first_pos), np.int64)
    rank[np.argsort(first_pos)] = np.arange(len(first_pos))
    return rank[comp]
