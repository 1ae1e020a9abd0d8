"""Numba kernels for the scanner readers, over validated 1-D contiguous arrays (see scan.py)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def affine_to_uint8(x: np.ndarray, a: float, b: float, invert: bool, out: np.ndarray) -> None:
    """``out[i] = floor(clip(x[i] * a + b, 0, 255.5))`` (b includes the +0.5 of rounding),
    then ``255 - out[i]`` if ``invert``; one pass, float32 arithmetic like the NumPy path."""
    fa = np.float32(a)
    fb = np.float32(b)
    for i in range(x.shape[0]):
        v = np.float32(x[i]) * fa + fb
        if v < 0:
            v = np.float32(0)
        elif v > 255.5:
            v = np.float32(255.5)
        u = np.uint8(v)
        out[i] = 255 - u if invert else u


@numba.njit(cache=True, nogil=True)
def integer_percentiles(x: np.ndarray, ranks: np.ndarray, out: np.ndarray) -> None:
    """``out[k]`` = the smallest value of the integer array ``x`` (1-D, non-empty) whose count
    of values <= it reaches ``ranks[k]`` (1 <= rank <= x.size): NumPy's ``inverted_cdf``
    percentile from an exact histogram over ``x.min()..x.max()`` (as ``np.bincount`` +
    ``np.searchsorted`` give it, without their int64 copy of ``x``)."""
    lo = x[0]
    hi = x[0]
    for i in range(x.shape[0]):  # min/max without branches: vectorised
        lo = min(lo, x[i])
        hi = max(hi, x[i])
    lo = np.int64(lo)
    hi = np.int64(hi)
    # four partial histograms, summed: runs of one value (a black background) would otherwise
    # increment one counter back to back, each add waiting for the one before (~4x slower)
    span = hi - lo + 1
    parts = np.zeros((4, span), np.int64)
    n4 = x.shape[0] - x.shape[0] % 4
    for i in range(0, n4, 4):
        parts[0, np.int64(x[i]) - lo] += 1
        parts[1, np.int64(x[i + 1]) - lo] += 1
        parts[2, np.int64(x[i + 2]) - lo] += 1
        parts[3, np.int64(x[i + 3]) - lo] += 1
    for i in range(n4, x.shape[0]):
        parts[0, np.int64(x[i]) - lo] += 1
    counts = parts[0] + parts[1] + parts[2] + parts[3]
    for k in range(ranks.shape[0]):
        cum = 0
        for j in range(counts.shape[0]):
            cum += counts[j]
            if cum >= ranks[k]:
                out[k] = lo + j
                break


@numba.njit(cache=True, nogil=True)
def _count_into(x: np.ndarray, start: int, stop: int, parts: np.ndarray) -> None:
    """Add ``x[start:stop]`` (uint8) to the partial histograms ``parts`` (4, 256): four
    counters, as ``integer_percentiles`` (runs of one value would otherwise wait on one)."""
    n4 = stop - (stop - start) % 4
    for i in range(start, n4, 4):
        parts[0, x[i]] += 1
        parts[1, x[i + 1]] += 1
        parts[2, x[i + 2]] += 1
        parts[3, x[i + 3]] += 1
    for i in range(n4, stop):
        parts[0, x[i]] += 1


@numba.njit(cache=True, nogil=True)
def _best_band(parts: np.ndarray, width: int) -> int:
    """The largest count of any ``width`` consecutive values in ``parts`` (4, 256)."""
    counts = parts[0] + parts[1] + parts[2] + parts[3]
    best = 0
    band = 0
    for v in range(256):
        band += counts[v]
        if v >= width:
            band -= counts[v - width]
        best = max(best, band)
    return best


@numba.njit(cache=True, nogil=True)
def band_share(x: np.ndarray, width: int, at_least: float) -> float:
    """The largest share (0-1) of the uint8 array ``x`` (1-D, non-empty) that lies in one band
    of ``width`` consecutive grey levels, or -1.0 as soon as the pixels read so far prove it
    is below ``at_least``.

    One pass over partial histograms, in steps of 4,096 pixels from the middle of the slice
    (where the anatomy of a centred scan lies) to its end, then from its start. After each
    step the bound is checked: no band can end with more than its count so far plus the
    pixels left, so a slice with anatomy is rejected after a step or two instead of a full
    pass."""
    n = x.shape[0]
    parts = np.zeros((4, 256), np.int64)
    need = at_least * n
    step = 4096
    first = (n // 2 // step) * step
    done = 0
    for lo, hi in ((first, n), (0, first)):
        for start in range(lo, hi, step):
            stop = min(start + step, hi)
            _count_into(x, start, stop, parts)
            done += stop - start
            if done < n and _best_band(parts, width) + (n - done) < need:
                return -1.0
    return _best_band(parts, width) / n


@numba.njit(cache=True, nogil=True)
def neighbour_correlation(x: np.ndarray, above: float, min_pairs: int) -> float:
    """Pearson correlation of each pixel of the uint8 image ``x`` (2-D) with its right and
    its lower neighbour, the two sets of pairs pooled, over the pairs whose two pixels are
    both brighter than ``above`` (-1: every pair); NaN when fewer than ``min_pairs`` pairs
    count or either member of the pairs does not vary.

    One pass over integer sums, finished in float64."""
    h, w = x.shape
    lim = np.int64(np.floor(above))  # integers: a value > above iff it is > floor(above)
    n = 0
    sa = 0
    sb = 0
    saa = 0
    sbb = 0
    sab = 0
    # branch-free loops (a pair counts by multiplying with its 0/1 mask), which LLVM
    # vectorises: ~4x faster than testing each pair
    for i in range(h):
        for j in range(w - 1):  # right neighbours
            a = np.int64(x[i, j])
            b = np.int64(x[i, j + 1])
            m = np.int64(a > lim) * np.int64(b > lim)
            am = a * m
            bm = b * m
            n += m
            sa += am
            sb += bm
            saa += am * a
            sbb += bm * b
            sab += am * b
    for i in range(h - 1):
        for j in range(w):  # lower neighbours
            a = np.int64(x[i, j])
            b = np.int64(x[i + 1, j])
            m = np.int64(a > lim) * np.int64(b > lim)
            am = a * m
            bm = b * m
            n += m
            sa += am
            sb += bm
            saa += am * a
            sbb += bm * b
            sab += am * b
    if n < max(min_pairs, 1):
        return np.nan
    # the sums are exact (int64: 2·H·W·255² stays far inside it for any image the readers
    # accept); centred in float64, whose rounding (~1e-16 of 255²) is far below the variance
    # of any image with two grey levels
    fn = np.float64(n)
    ma = sa / fn
    mb = sb / fn
    cov = sab / fn - ma * mb
    va = saa / fn - ma * ma
    vb = sbb / fn - mb * mb
    if va <= 0 or vb <= 0:
        return np.nan
    return cov / np.sqrt(va * vb)
