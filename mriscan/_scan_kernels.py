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
def _pair_sums(x: np.ndarray, lim: int, di: int, dj: int, step: int, out: np.ndarray) -> None:
    """Add ``n, Σa, Σb, Σa², Σb², Σab`` of the pairs ``a = x[i, j]``, ``b = x[i + di, j + dj]``
    (rows ``i`` in steps of ``step``) whose two values exceed ``lim`` to ``out`` (int64 (6,)).
    Each pair counts by multiplying with its 0/1 mask (no branch), which LLVM vectorises."""
    h, w = x.shape
    n = np.int64(0)
    sa = np.int64(0)
    sb = np.int64(0)
    saa = np.int64(0)
    sbb = np.int64(0)
    sab = np.int64(0)
    for i in range(0, h - di, step):
        row_a = x[i]
        row_b = x[i + di]
        for j in range(w - dj):
            a = np.int64(row_a[j])
            b = np.int64(row_b[j + dj])
            m = np.int64(a > lim) * np.int64(b > lim)
            am = a * m
            bm = b * m
            n += m
            sa += am
            sb += bm
            saa += am * a
            sbb += bm * b
            sab += am * b
    out[0] += n
    out[1] += sa
    out[2] += sb
    out[3] += saa
    out[4] += sbb
    out[5] += sab


@numba.njit(cache=True, nogil=True)
def neighbour_sums(x: np.ndarray, above: float, max_lag: int, step: int, sums: np.ndarray) -> None:
    """Add to ``sums`` (int64 (5, 6)) the sums that give Pearson correlations of the uint8
    image ``x`` (2-D, any strides) between each pixel and its neighbour to the right (row 0)
    and below (row 1), and, when ``max_lag`` is 2, two pixels to the right (row 2) and below
    (row 3), over the pairs whose two pixels are both brighter than ``above`` (-1: every
    pair): per row ``n, Σa, Σb, Σa², Σb², Σab`` (a the first pixel, b its neighbour); row 4
    holds the pixel count and sum (``n, Σx``). Only the rows ``0, step, 2·step, ...`` are
    read as the first pixels of the pairs (and for the pixel sum): a sample of the slice's
    rows. The sums are exact: int64 holds 2·H·W·255² for any image the readers accept."""
    h, w = x.shape
    lim = np.int64(np.floor(above))  # integers: a value > above iff it is > floor(above)
    total = np.int64(0)
    count = np.int64(0)
    for i in range(0, h, step):
        row = x[i]
        for j in range(w):
            total += np.int64(row[j])
        count += w
    sums[4, 0] += count
    sums[4, 1] += total
    _pair_sums(x, lim, 0, 1, step, sums[0])
    _pair_sums(x, lim, 1, 0, step, sums[1])
    if max_lag >= 2:
        _pair_sums(x, lim, 0, 2, step, sums[2])
        _pair_sums(x, lim, 2, 0, step, sums[3])


@numba.njit(cache=True, nogil=True)
def neighbour_correlations(
    x: np.ndarray, above: float, max_lag: int, step: int, min_pairs: int, out: np.ndarray
) -> float:
    """Pearson r of the pairs ``neighbour_sums`` sums, into ``out`` (float64 (2·max_lag,)):
    right and below at one pixel, then at two; NaN where fewer than ``min_pairs`` pairs
    count or they do not vary. Returns the sampled rows' mean. ``x`` may be any 2-D uint8
    view (strided, reversed): a slice is judged as the readers give it, without a copy."""
    sums = np.zeros((5, 6), np.int64)
    neighbour_sums(x, above, max_lag, step, sums)
    for k in range(2 * max_lag):
        n = np.float64(sums[k, 0])
        out[k] = np.nan
        if n < max(min_pairs, 1):
            continue
        ma = sums[k, 1] / n
        mb = sums[k, 2] / n
        va = sums[k, 3] / n - ma * ma
        vb = sums[k, 4] / n - mb * mb
        # centred in float64 from exact integer sums: rounding ~1e-16 of 255², far below
        # the variance of any image with two grey levels
        if va > 0 and vb > 0:
            out[k] = (sums[k, 5] / n - ma * mb) / np.sqrt(va * vb)
    return sums[4, 1] / np.float64(max(sums[4, 0], 1))
