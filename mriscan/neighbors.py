"""Near-duplicate pair search over perceptual signatures in sub-quadratic time.

Two signatures are near-duplicates when the Pearson correlation of their thumbnails exceeds a
threshold ``t``. After z-scoring each thumbnail to a zero-mean unit vector ``u``, the correlation
is the dot product ``u·v``, and for unit vectors ``|u - v|² = 2 - 2 u·v``: correlation above ``t``
is the same as Euclidean distance below ``r = sqrt(2 (1 - t))``. An orthonormal projection never
lengthens a distance, so every pair within ``r`` in the full 256-D space is also within ``r`` after
projecting onto the leading principal axes. The search therefore

1. projects the unit vectors onto their ``dims`` leading principal axes (fitted on the data),
2. finds every pair closer than ``r`` there with a k-d tree (``scipy.spatial.cKDTree``,
   ``query_pairs`` / ``sparse_distance_matrix``: Maneewongvatana & Mount's sliding-midpoint tree),
3. keeps the candidates whose exact correlation (float64) exceeds ``t``.

Step 2 yields a superset of the answer (no false negatives; the radius gets a small margin for
float rounding), step 3 removes the false positives, so the result is exact. Thumbnails of real
slices lie near a low-dimensional set, where the tree visits a small part of the data per query;
unstructured noise would make it degrade towards all pairs (the answer itself is then large).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from mriscan.errors import ConfigError

__all__ = [
    "DEFAULT_DIMS",
    "PROJECTION_DIMS",
    "committed_pairs",
    "cross_pairs",
    "dct_projection",
    "near_pairs",
    "unit_rows",
]

DEFAULT_DIMS = 16
# float32 unit rows have norms 1 ± ~1e-6; widen the squared radius so rounding never drops a pair
_RADIUS_SLACK = 1e-4
# principal axes are fitted on at most this many rows (the covariance is 256×256 either way)
_PCA_SAMPLE = 50_000
# candidate pairs checked per step: the gathered float64 rows (2 x 1024 x 256 x 8 bytes) stay in
# cache and reuse freed memory; 2**18 pairs at once (1 GB of fresh pages) took 3x as long on
# 44k candidates. Each pair's product is computed alone, so the step changes no result
_VERIFY_CHUNK = 1 << 10
# larger leaves than the default 16 measured ~1.4x faster on 30k signatures in 16 dims
_LEAFSIZE = 64
# at most this many live rows: candidate pairs come from a float32 Gram matrix in row blocks
# (one BLAS product; no principal axes, no tree): on 1,000 real signatures 8 ms against 0.2 s
# for the basis + tree + exact check of the tree's 32k candidates (bench/RESULTS.md)
_GRAM_MAX = 4096
_GRAM_BLOCK = 512
# a float32 dot product of two unit 256-vectors is within ~256 * 2**-24 = 1.5e-5 of the exact
# one; candidates within this margin below the threshold are checked exactly (in float64)
_GRAM_MARGIN = 1e-3


def unit_rows(signatures: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm float32 rows, so that a dot product is a Pearson correlation.

    Parameters
    ----------
    signatures : ndarray of shape (N, ...), any real dtype
        One thumbnail per row (e.g. (N, 16, 16) uint8 from ``mriscan.duplicates.signatures``).

    Returns
    -------
    ndarray of shape (N, D), float32
        ``D`` is the product of the trailing dimensions. Constant rows (no variance) become zero
        rows: they correlate with nothing.
    """
    arr = np.asarray(signatures)
    x = arr.reshape(len(arr), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _check(threshold: float, dims: int) -> None:
    if not 0.0 <= float(threshold) < 1.0:
        raise ConfigError(
            "threshold must be a correlation in [0, 1) (pairs above it are near-duplicates). "
            f"Received: threshold={threshold!r}."
        )
    if isinstance(dims, bool) or not isinstance(dims, int | np.integer) or dims < 1:
        raise ConfigError(f"dims must be a positive integer. Received: dims={dims!r}.")


def _radius(threshold: float) -> float:
    return float(np.sqrt(2.0 * (1.0 - threshold) + _RADIUS_SLACK))


def _basis(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the ``dims`` leading principal axes (D, dims) of the rows of ``x``."""
    if len(x) > _PCA_SAMPLE:
        x = x[np.random.default_rng(0).choice(len(x), _PCA_SAMPLE, replace=False)]
    xd = x.astype(np.float64)
    mean = xd.mean(axis=0)
    xd -= mean
    # one BLAS thread: a (256, 256) product and eigh take ~20-40 ms on one core, but 0.2-1.8 s
    # with OpenBLAS's threads spinning against a busy machine (measured during an ingest)
    with threadpool_limits(1, user_api="blas"):
        _, vecs = np.linalg.eigh(xd.T @ xd)  # ascending eigenvalues
    return mean, np.ascontiguousarray(vecs[:, ::-1][:, :dims])


def _project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) - mean) @ axes


def _verify(
    a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact float64 correlations of candidate pairs; keep those above ``threshold``."""
    keep_i, keep_j, keep_c = [], [], []
    # rows recur in many candidate pairs: convert an array to float64 once when it has fewer
    # rows than there are pairs (same values, so the same correlations), else per chunk
    a64 = a.astype(np.float64) if len(a) < len(i) else None
    b64 = a64 if b is a else (b.astype(np.float64) if len(b) < len(j) else None)
    for s in range(0, len(i), _VERIFY_CHUNK):
        ii, jj = i[s : s + _VERIFY_CHUNK], j[s : s + _VERIFY_CHUNK]
        ra = a64[ii] if a64 is not None else a[ii].astype(np.float64)
        rb = b64[jj] if b64 is not None else b[jj].astype(np.float64)
        c = np.einsum("ij,ij->i", ra, rb)
        m = c > threshold
        keep_i.append(ii[m])
        keep_j.append(jj[m])
        keep_c.append(c[m])
    if not keep_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    return np.concatenate(keep_i), np.concatenate(keep_j), np.concatenate(keep_c)


def _gram_candidates(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of rows of ``x`` (N, D) float32 unit rows whose float32 dot product
    exceeds ``threshold - _GRAM_MARGIN``: a superset of the pairs above ``threshold``."""
    lo = np.float32(threshold - _GRAM_MARGIN)
    out_i, out_j = [], []
    for s in range(0, len(x), _GRAM_BLOCK):
        g = x[s : s + _GRAM_BLOCK] @ x[s:].T  # rows s.., columns s.. (the upper triangle)
        ii, jj = np.nonzero(g > lo)
        keep = jj > ii  # jj counts from s, as ii does
        out_i.append(ii[keep] + s)
        out_j.append(jj[keep] + s)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def _sorted(i, j, c):
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), c[order]


def near_pairs(
    signatures: np.ndarray, *, threshold: float = 0.95, dims: int = DEFAULT_DIMS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows whose signatures correlate above ``threshold`` (exact, sub-quadratic).

    Parameters
    ----------
    signatures : ndarray of shape (N, 16, 16) (any trailing shape), uint8 or float
    threshold : float
        Pearson correlation in [0, 1); pairs strictly above it are returned.
    dims : int
        Principal axes the k-d tree indexes (a speed knob only; the result does not depend on it).

    Returns
    -------
    i, j : ndarray of shape (P,), int64
        Row indices with ``i < j``, sorted by ``(i, j)``.
    corr : ndarray of shape (P,), float64
        Their correlations.

    Raises
    ------
    ConfigError
        If ``threshold`` is outside [0, 1) or ``dims`` is not a positive integer.

    Notes
    -----
    Constant signatures (blank slices) are zero rows and never pair here; callers that want
    identical blanks together compare them by value (``mriscan.duplicates.duplicate_groups``).
    Uses ``scipy.spatial.cKDTree``; see the module docstring for why the result is exact.
    """
    _check(threshold, dims)
    x = unit_rows(signatures)
    live = np.flatnonzero(np.any(x, axis=1))
    if len(live) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    xl = x[live]
    if len(live) <= _GRAM_MAX:
        # up to a few thousand rows (the new slices of one commit): every pair's correlation in
        # float32 costs less than fitting the principal axes; the exact check is the same
        ci, cj = _gram_candidates(xl, threshold)
        i, j, c = _verify(xl, xl, ci, cj, threshold)
    else:
        from scipy.spatial import cKDTree  # imported here: ~0.3-1 s, not needed above

        mean, axes = _basis(xl, min(dims, xl.shape[1]))
        tree = cKDTree(_project(xl, mean, axes), leafsize=_LEAFSIZE, balanced_tree=False)
        cand = tree.query_pairs(_radius(threshold), output_type="ndarray")
        i, j, c = _verify(xl, xl, cand[:, 0], cand[:, 1], threshold)
    i, j = live[i], live[j]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return _sorted(lo, hi, c)


def cross_pairs(
    a: np.ndarray, b: np.ndarray, *, threshold: float = 0.95, dims: int = DEFAULT_DIMS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (row of ``a``, row of ``b``) whose signatures correlate above ``threshold``.

    Parameters
    ----------
    a : ndarray of shape (N, 16, 16) (any trailing shape), uint8 or float
    b : ndarray of shape (M, ...), same trailing shape as ``a``
    threshold : float
        Pearson correlation in [0, 1).
    dims : int
        Principal axes the k-d trees index (speed only).

    Returns
    -------
    i : ndarray of shape (P,), int64
        Rows of ``a``.
    j : ndarray of shape (P,), int64
        Rows of ``b``.
    corr : ndarray of shape (P,), float64
        Sorted by ``(i, j)``.

    Raises
    ------
    ConfigError
        If ``threshold``/``dims`` are invalid or the trailing shapes of ``a`` and ``b`` differ.
    """
    from scipy.spatial import cKDTree

    _check(threshold, dims)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[1:] != b.shape[1:]:
        raise ConfigError(
            f"Both signature arrays must have the same trailing shape. Received {a.shape} "
            f"and {b.shape}."
        )
    xa, xb = unit_rows(a), unit_rows(b)
    la, lb = np.flatnonzero(np.any(xa, axis=1)), np.flatnonzero(np.any(xb, axis=1))
    if not len(la) or not len(lb):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    xa, xb = xa[la], xb[lb]
    mean, axes = _basis(np.concatenate([xa, xb]), min(dims, xa.shape[1]))
    ta = cKDTree(_project(xa, mean, axes), leafsize=_LEAFSIZE, balanced_tree=False)
    tb = cKDTree(_project(xb, mean, axes), leafsize=_LEAFSIZE, balanced_tree=False)
    cand = ta.sparse_distance_matrix(tb, _radius(threshold), output_type="ndarray")
    i, j, c = _verify(xa, xb, cand["i"].astype(np.int64), cand["j"].astype(np.int64), threshold)
    return _sorted(la[i], lb[j], c)


#: Width of ``dct_projection`` (the store keeps one such row per slice, ``index/proj.f4``).
PROJECTION_DIMS = 32
_SCAN_CHUNK = 1 << 17
_F32_MARGIN = 1e-3


def _dct_basis(side: int, dims: int) -> np.ndarray:
    """``dims`` orthonormal 2-D DCT-II basis images of side ``side``, lowest frequencies first
    (by ``u + v``, then ``u``), the constant one left out: ndarray (side², dims), float64."""
    k = np.arange(side)
    c = np.sqrt(2.0 / side) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * side))
    c[0] /= np.sqrt(2.0)  # row u of c is the 1-D basis vector of frequency u (orthonormal)
    freqs = sorted(((u, v) for u in range(side) for v in range(side)), key=lambda f: (sum(f), f))
    cols = [np.outer(c[u], c[v]).reshape(-1) for u, v in freqs[1 : dims + 1]]
    return np.stack(cols, axis=1)


def dct_projection(signatures: np.ndarray) -> np.ndarray:
    """Coordinates of each signature's unit row (``unit_rows``) on the ``PROJECTION_DIMS`` (32)
    lowest-frequency 2-D DCT-II basis images: ndarray (N, 32), float32.

    A fixed orthonormal basis, so rows projected at different times (commits) stay comparable
    and distances never grow: two signatures that correlate above ``t`` are within
    ``sqrt(2 (1 - t))`` here too (see the module docstring). The DCT is the usual fixed
    stand-in for the principal axes of natural images (Ahmed, Natarajan & Rao 1974, "Discrete
    Cosine Transform"); it only decides how few candidates survive, never the result. Measured
    (``bench/RESULTS.md``): with 32 axes 0.25% of stored signatures are candidates for a query
    on heads with the real sets' spectrum (16 axes: 1.8%, 16 principal axes: 0.2%).

    Parameters
    ----------
    signatures : ndarray of shape (N, S, S), uint8 (S = 16 for ``mriscan.duplicates``)
    """
    arr = np.asarray(signatures)
    side = arr.shape[-1]
    if arr.ndim != 3 or arr.shape[1] != side or side * side <= PROJECTION_DIMS:
        raise ConfigError(
            f"signatures must be square thumbnails (N, S, S) with S*S > {PROJECTION_DIMS}. "
            f"Received shape {arr.shape}."
        )
    return (unit_rows(arr).astype(np.float64) @ _dct_basis(side, PROJECTION_DIMS)).astype(
        np.float32
    )


def _scan(pq: np.ndarray, projections: np.ndarray, limit: np.ndarray):
    """(query, stored) index pairs whose projections lie within the radius ``limit`` encodes."""
    cand_i, cand_j = [], []
    for s in range(0, len(projections), _SCAN_CHUNK):
        block = np.asarray(projections[s : s + _SCAN_CHUNK], dtype=np.float32)
        # |q - b|² < r²  <=>  |b|²/2 - q·b < (r² - |q|²)/2, in place on one (M, B) array
        half = np.einsum("ij,ij->i", block, block)
        half *= 0.5
        d = pq @ block.T
        np.subtract(half[None, :], d, out=d)
        qi, bj = np.nonzero(d < limit)
        cand_i.append(qi)
        cand_j.append(bj + s)
    return np.concatenate(cand_i).astype(np.int64), np.concatenate(cand_j).astype(np.int64)


def committed_pairs(
    query: np.ndarray,
    projections: np.ndarray,
    read_signatures,
    *,
    threshold: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (row of ``query``, committed row) whose signatures correlate above
    ``threshold``: the new slices of a commit against every stored one, exact.

    The stored slices are represented by their ``dct_projection`` rows (``projections``, e.g. a
    memory-mapped column), scanned in blocks of 131,072 rows with one matrix product each
    (float32, the squared radius widened by 1e-4 for rounding); only the candidates' signatures
    are read back (``read_signatures``), their float32 correlations (one matrix product) drop
    those below ``threshold - 1e-3``, and the exact float64 correlations of the rest decide, as
    in ``near_pairs``. Cost: one pass over 128 bytes per stored slice plus the candidates; no pair
    of stored slices is ever looked at again.

    Parameters
    ----------
    query : ndarray of shape (M, S, S), uint8
    projections : ndarray of shape (N, 32), float32
        ``dct_projection`` of the N stored signatures.
    read_signatures : callable(ndarray of int64 positions) -> ndarray (k, S, S) uint8
        The stored signatures at the given positions.
    threshold : float
        Pearson correlation in [0, 1).

    Returns
    -------
    i : ndarray (P,), int64 — rows of ``query``
    j : ndarray (P,), int64 — stored positions
    corr : ndarray (P,), float64 — sorted by ``(i, j)``

    Raises
    ------
    ConfigError
        ``threshold`` outside [0, 1).
    """
    _check(threshold, PROJECTION_DIMS)
    empty = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    q = np.asarray(query)
    xq = unit_rows(q)
    live = np.flatnonzero(np.any(xq, axis=1))
    n = len(projections)
    if not len(live) or not n:
        return empty
    pq = dct_projection(q[live])
    qq = np.einsum("ij,ij->i", pq, pq)
    r2 = np.float32(_radius(threshold) ** 2)
    limit = ((r2 - qq) / 2.0)[:, None]
    with threadpool_limits(1, user_api="blas"):  # (32, 32) x (32, B) products: threads only
        ci, cj = _scan(pq, projections, limit)  # contend (0.27 vs 0.13 s CPU at 1M measured)
    if not len(ci):
        return empty
    uniq, inv = np.unique(cj, return_inverse=True)
    inv = inv.reshape(-1)
    stored = unit_rows(read_signatures(uniq))
    # float32 correlations of all candidates in one small product drop the clear misses (a
    # float32 dot of unit 256-vectors is off by < 1e-5); the rest get the exact float64 check
    c32 = (xq[live] @ stored.T)[ci, inv]
    keep = c32 > threshold - _F32_MARGIN
    i, j, c = _verify(xq[live], stored, ci[keep], inv[keep], threshold)
    return _sorted(live[i], uniq[j], c)
