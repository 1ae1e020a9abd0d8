"""Perceptual signatures and near-duplicate groups, so splits keep copies of a slice together."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mriscan.errors import ConfigError
from mriscan.neighbors import DEFAULT_DIMS, committed_pairs, cross_pairs, near_pairs
from mriscan.preprocess import PreprocessConfig, preprocess, preprocess_batch

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIGNATURE_CONFIG",
    "SIGNATURE_SIZE",
    "duplicate_groups",
    "key_links",
    "near_duplicates_of",
    "near_links",
    "new_links",
    "same_label_links",
    "signature",
    "signatures",
]

SIGNATURE_SIZE = 16
DEFAULT_THRESHOLD = 0.95
# aligned thumbnails of different heads look alike: the midline search merged a "no" with a
# "yes" slice of the real set into one group
# the signature's own fixed geometry: no crop, alignment or low-pass, whatever the store's
# preprocessing (the 0.95 threshold was calibrated on these thumbnails)
#: the signature's geometry, a config of its own (``preprocess_serial`` takes configs)
SIGNATURE_CONFIG = PreprocessConfig(
    size=SIGNATURE_SIZE, crop=False, aspect="stretch", align=False, smooth=0.0
)


def signature(image: np.ndarray) -> np.ndarray:
    """Area-averaged 16×16 thumbnail of a whole decoded slice (no crop, no alignment, no
    low-pass), the perceptual signature.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8

    Returns
    -------
    ndarray of shape (16, 16), uint8
    """
    return preprocess(image, SIGNATURE_CONFIG)


def signatures(images: Sequence[np.ndarray]) -> np.ndarray:
    """``signature`` of each decoded slice, computed in parallel: ndarray (N, 16, 16), uint8."""
    return preprocess_batch(images, SIGNATURE_CONFIG)


def constant_rows(flat: np.ndarray) -> np.ndarray:
    """Which rows of ``flat`` (n, d) thumbnails hold one value (blank slices), bool (n,):
    they correlate with nothing, so every near-duplicate rule compares them by value."""
    return np.all(flat == flat[:, :1], axis=1)


def duplicate_groups(
    signatures: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    dims: int = DEFAULT_DIMS,
) -> np.ndarray:
    """Group slices whose signatures correlate above ``threshold`` (transitively).

    Parameters
    ----------
    signatures : ndarray of shape (N, 16, 16), uint8
    labels : ndarray of shape (N,), int, optional
        Class labels: when given, slices of different labels are not linked
        (``same_label_links``), as ingest groups a store.
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
        If ``threshold`` is outside [0, 1), or ``labels`` is not of length N.
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
    const = np.flatnonzero(constant_rows(raw))
    if len(const):
        first: dict[bytes, int] = {}
        extra = [(first.setdefault(raw[k].tobytes(), k), k) for k in const]
        ci, cj = np.array(extra, np.int64).reshape(-1, 2).T
        i, j = np.concatenate([i, ci]), np.concatenate([j, cj])
    if labels is not None:
        if len(labels) != n:
            raise ConfigError(f"duplicate_groups: {len(labels)} labels for {n} signatures.")
        i, j = same_label_links(np.stack([i, j], axis=1), labels).T
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # renumber by first appearance so ids are stable when rows are appended
    _, first_pos = np.unique(comp, return_index=True)
    rank = np.empty(len(first_pos), np.int64)
    rank[np.argsort(first_pos)] = np.arange(len(first_pos))
    return rank[comp]


def new_links(
    signatures: np.ndarray,
    keys: Sequence[str],
    *,
    offset: int,
    projections: np.ndarray,
    read_signatures: Callable[[np.ndarray], np.ndarray],
    constants: Mapping[int, int],
    key_positions: Mapping[str, int],
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """The links that put ``M`` new slices into the split groups of ``offset`` stored ones:
    the incremental form of ``mriscan.splits.union_groups(duplicate_groups(all), all_keys)``.

    Joining these links (``ImageStore.commit(links=...)``) to the stored groups gives the same
    partition as recomputing every group from all signatures and keys, provided no stored key
    changed; only the new slices are searched: among themselves (``near_pairs``) and against
    the stored ones (``mriscan.neighbors.committed_pairs``, one scan of their projections).

    Parameters
    ----------
    signatures : ndarray of shape (M, 16, 16), uint8
        The new slices' signatures; they take positions ``offset .. offset + M - 1``.
    keys : sequence of M str
        Their group keys (``""``: none; several in one string: ``mriscan.splits.join_keys``).
    offset : int
        Number of stored slices.
    projections : ndarray of shape (offset, 16), float32
        ``mriscan.neighbors.dct_projection`` of the stored signatures.
    read_signatures : callable(positions) -> ndarray (k, 16, 16) uint8
        Stored signatures by position.
    constants : mapping int -> int
        First stored position of each constant signature value (blank slices group by value).
    key_positions : mapping str -> int
        First stored position carrying each single key of ``keys`` (``split_keys``), for the
        keys a stored slice carries.
    threshold : float
        Correlation above which two slices are near-duplicates.

    Returns
    -------
    ndarray of shape (E, 2), int64
        Pairs of positions that share a group.

    Raises
    ------
    ConfigError
        ``threshold`` outside [0, 1), or ``keys`` of another length than ``signatures``.
    """
    m = len(np.asarray(signatures))
    if len(keys) != m:
        raise ConfigError(f"signatures ({m}) and keys ({len(keys)}) must have one entry each.")
    near = near_links(
        signatures,
        offset=offset,
        projections=projections,
        read_signatures=read_signatures,
        constants=constants,
        threshold=threshold,
    )
    return np.concatenate([near, key_links(keys, offset=offset, key_positions=key_positions)])


def near_links(
    signatures: np.ndarray,
    *,
    offset: int,
    projections: np.ndarray,
    read_signatures: Callable[[np.ndarray], np.ndarray],
    constants: Mapping[int, int],
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """The near-duplicate part of ``new_links`` (no group keys): pairs of the ``M`` new slices
    among themselves and with the stored ones that correlate above ``threshold``, and links of
    constant (blank) signatures to the first slice of the same value. Parameters as for
    ``new_links``; ``new_links`` is ``near_links`` followed by ``key_links``, so a caller that
    needs both the near-duplicate links alone and the split-group links searches once.

    Returns
    -------
    ndarray of shape (E, 2), int64
        Pairs of positions (no pair of a position with itself).

    Raises
    ------
    ConfigError
        ``threshold`` outside [0, 1).
    """
    sigs = np.asarray(signatures)
    m = len(sigs)
    if m == 0:
        return np.empty((0, 2), np.int64)
    edges: list[np.ndarray] = []
    i, j, _ = near_pairs(sigs, threshold=threshold)
    edges.append(np.stack([i + offset, j + offset], axis=1))
    if offset:
        qi, sj, _ = committed_pairs(sigs, projections, read_signatures, threshold=threshold)
        edges.append(np.stack([qi + offset, sj], axis=1))
    flat = sigs.reshape(m, -1)
    const = np.flatnonzero(constant_rows(flat))
    first: dict[int, int] = {}
    extra = []
    for k in const.tolist():
        v = int(flat[k, 0])
        extra.append((k + offset, constants.get(v, first.setdefault(v, k + offset))))
    if extra:
        edges.append(np.array(extra, np.int64))
    out = np.concatenate(edges).astype(np.int64).reshape(-1, 2)
    return out[out[:, 0] != out[:, 1]]


def same_label_links(links: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The near-duplicate links between slices of the same label: the ones that join split
    groups.

    A near-identical pair of two classes is not the same slice stored twice: either the
    thumbnails of two different heads look alike at 16×16 (on ``figshare_br35h``, 1,671 pairs
    at 0.95 between a figshare tumor type and a Br35H healthy slice or between two tumor types,
    which never share a patient there), or one copy is mislabelled, which ingest and ``audit``
    report as a conflict. Splitting such a pair cannot flatter a score (the test copy's label
    disagrees with the training copy's); joining it chained ``figshare_br35h`` into one group
    of 895 slices of all four classes (a fifth of the set), which no stratified fold can hold.
    Patients, volumes and manifest groups still join slices of any labels (``key_links``).

    Parameters
    ----------
    links : ndarray of shape (E, 2), int
        Pairs of positions (``near_links``).
    labels : ndarray of shape (N,), int
        Label per position; every position in ``links`` must be below N.

    Returns
    -------
    ndarray of shape (E', 2), int64
        The pairs whose two labels are equal, in their order.

    Raises
    ------
    ConfigError
        If a link names a position outside ``labels``.
    """
    links = np.asarray(links, np.int64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if links.size and int(links.max()) >= len(labels):
        raise ConfigError(
            f"same_label_links: a link names position {int(links.max())}, but there are "
            f"{len(labels)} labels; pass one label per stored and new slice."
        )
    return links[labels[links[:, 0]] == labels[links[:, 1]]]


def key_links(keys: Sequence[str], *, offset: int, key_positions: Mapping[str, int]) -> np.ndarray:
    """The group-key part of ``new_links``: each new slice ``offset + k`` linked, for every key
    its ``group_key`` carries (``mriscan.splits.split_keys``; ``""`` carries none), to the first
    stored slice of that key (``key_positions``), else to the first new slice of it.

    Returns
    -------
    ndarray of shape (E, 2), int64
        Pairs of positions (no pair of a position with itself).
    """
    from mriscan.splits import split_keys

    first: dict[str, int] = {}
    # a key may carry several (a manifest group and a patient): linked through each of them
    extra = [
        (k + offset, key_positions.get(part, first.setdefault(part, k + offset)))
        for k, key in enumerate(keys)
        for part in split_keys(key)
    ]
    out = np.array(extra, np.int64).reshape(-1, 2)
    return out[out[:, 0] != out[:, 1]]


def near_duplicates_of(
    signatures: np.ndarray, reference: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Boolean mask (n,): which of ``signatures`` correlate above ``threshold`` with any of
    ``reference`` (both uint8 (n, 16, 16) thumbnails, ``mriscan.duplicates.signatures``).

    The pairs come from ``mriscan.neighbors.cross_pairs`` (the audit's exact, sub-quadratic
    search over Pearson correlations). A constant thumbnail (a blank slice) correlates with
    nothing: it matches a reference thumbnail of the same constant value, as
    ``duplicate_groups`` joins identical blanks.
    """
    out = np.zeros(len(signatures), bool)
    if len(signatures) and len(reference):
        rows, _, _ = cross_pairs(signatures, reference, threshold=threshold)
        out[rows] = True
        sig = np.asarray(signatures).reshape(len(signatures), -1)
        ref = np.asarray(reference).reshape(len(reference), -1)
        blank_ref = {int(r[0]) for r in ref[constant_rows(ref)]}
        if blank_ref:
            out |= constant_rows(sig) & np.isin(sig[:, 0], list(blank_ref))
    return out
