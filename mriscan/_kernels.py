"""Numba kernels over validated, C-contiguous arrays; the public wrappers live in preprocess.py."""

from __future__ import annotations

import math

import numba
import numpy as np

_EPS = 1e-6


@numba.njit(cache=True, nogil=True)
def foreground_threshold(img: np.ndarray, rel_threshold: float) -> float:
    """Intensity above which a pixel counts as foreground (relative to the 99th percentile)."""
    hist = np.zeros(256, np.int64)
    n = 0
    # A 1-in-8 sample of pixels is plenty for a percentile.
    for y in range(0, img.shape[0], 2):
        r = img[y]
        for x in range(0, img.shape[1], 4):
            hist[r[x]] += 1
            n += 1
    target = 0.99 * n
    acc = 0
    hi = 255
    for v in range(256):
        acc += hist[v]
        if acc >= target:
            hi = v
            break
    return max(rel_threshold * hi, 1.0)


@numba.njit(cache=True, nogil=True)
def _count_above(row, ithr):
    """Number of pixels in ``row`` above ``ithr``."""
    c = 0
    for x in range(row.shape[0]):
        c += 1 if row[x] > ithr else 0
    return c


@numba.njit(cache=True, nogil=True, fastmath=True)
def foreground_bbox(img: np.ndarray, rel_threshold: float, min_frac: float, margin: float):
    """Bounding box (y0, y1, x0, x1) of rows/columns with enough bright pixels, else the image."""
    h, w = img.shape
    thr = foreground_threshold(img, rel_threshold)
    ithr = np.uint8(min(int(thr), 255))
    # Every other row is scanned: the box is exact in x and within one pixel in y, for half
    # the cost of a full pass (this kernel runs on every source pixel of every slice).
    rows = np.zeros(h, np.int64)
    cols32 = np.zeros(w, np.int32)
    for y in range(0, h, 2):
        r = img[y]
        c = 0
        for x in range(w):
            b = np.int32(r[x] > ithr)
            c += b
            cols32[x] += b
        rows[y] = c
    cols = cols32.astype(np.int64)
    min_row = max(1, int(min_frac * w))
    min_col = max(1, int(min_frac * ((h + 1) // 2)))
    y0, y1, x0, x1 = -1, -1, -1, -1
    for y in range(0, h, 2):
        if rows[y] >= min_row:
            if y0 < 0:
                y0 = y
            y1 = y + 1
    # Refine the y edges with the unscanned odd neighbours so the box is exact.
    if y0 > 0 and _count_above(img[y0 - 1], ithr) >= min_row:
        y0 -= 1
    if 0 <= y1 < h and _count_above(img[y1], ithr) >= min_row:
        y1 += 1
    for x in range(w):
        if cols[x] >= min_col:
            if x0 < 0:
                x0 = x
            x1 = x + 1
    if y0 < 0 or x0 < 0:
        return 0, h, 0, w
    my = round(margin * (y1 - y0))
    mx = round(margin * (x1 - x0))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


@numba.njit(cache=True, nogil=True)
def axis_weights(n_in: int, n_out: int):
    """Per-output start index and weights: area averaging to shrink, bilinear to enlarge."""
    scale = n_in / n_out
    if scale >= 1.0:
        k = math.ceil(scale) + 1
        starts = np.zeros(n_out, np.int64)
        weights = np.zeros((n_out, k), np.float32)
        for i in range(n_out):
            lo = i * scale
            hi = min((i + 1) * scale, float(n_in))
            j0 = math.floor(lo)
            starts[i] = j0
            for t in range(k):
                j = j0 + t
                if j >= n_in or j >= hi:
                    break
                overlap = min(j + 1.0, hi) - max(float(j), lo)
                if overlap > 0:
                    weights[i, t] = overlap / scale
        return starts, weights
    starts = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, 2), np.float32)
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        if src < 0.0:
            src = 0.0
        j0 = math.floor(src)
        if j0 >= n_in - 1:
            starts[i] = n_in - 1
            weights[i, 0] = 1.0
            continue
        frac = src - j0
        starts[i] = j0
        weights[i, 0] = 1.0 - frac
        weights[i, 1] = frac
    return starts, weights


@numba.njit(cache=True, nogil=True, fastmath=True)
def resize_into(src, y0, y1, x0, x1, out, oy, ox, oh, ow):
    """Resize ``src[y0:y1, x0:x1]`` into ``out[oy:oy+oh, ox:ox+ow]`` (separable, rounded)."""
    h = y1 - y0
    w = x1 - x0
    sx, wx = axis_weights(w, ow)
    sy, wy = axis_weights(h, oh)
    kx = wx.shape[1]
    ky = wy.shape[1]
    buf = np.empty(w, np.float32)
    # Vertical pass first: its inner loop runs along contiguous source rows and vectorises.
    for i in range(oh):
        buf[:] = 0.0
        for t in range(ky):
            wt = wy[i, t]
            if wt == 0.0:
                continue
            r = src[y0 + sy[i] + t, x0:x1]
            for x in range(w):
                buf[x] += wt * np.float32(r[x])
        for j in range(ow):
            acc = np.float32(0.0)
            base = sx[j]
            for t in range(kx):
                acc += wx[j, t] * buf[min(base + t, w - 1)]
            v = math.floor(acc + 0.5)
            out[oy + i, ox + j] = 0 if v < 0 else (255 if v > 255 else np.uint8(v))


@numba.njit(cache=True, nogil=True)
def crop_resize_one(
    img, out, crop, rel_threshold, min_frac, margin, pad, align, max_angle, max_shift
):
    """Crop ``img`` to its foreground (optional), resize it into the square ``out`` and align
    its midline (optional)."""
    size = out.shape[0]
    h, w = img.shape
    if crop:
        y0, y1, x0, x1 = foreground_bbox(img, rel_threshold, min_frac, margin)
    else:
        y0, y1, x0, x1 = 0, h, 0, w
    ch = y1 - y0
    cw = x1 - x0
    if pad:
        longest = max(ch, cw)
        oh = max(1, round(ch * size / longest))
        ow = max(1, round(cw * size / longest))
        out[:, :] = 0
    else:
        oh = size
        ow = size
    oy = (size - oh) // 2
    ox = (size - ow) // 2
    resize_into(img, y0, y1, x0, x1, out, oy, ox, oh, ow)
    if align:
        align_midline(out, max_angle, max_shift)


@numba.njit(cache=True, parallel=True)
def crop_resize_batch(
    images, out, crop, rel_threshold, min_frac, margin, pad, align, max_angle, max_shift
):
    """Apply ``crop_resize_one`` to each image of a typed list, in parallel over images."""
    for n in numba.prange(len(images)):
        i = np.int64(n)
        crop_resize_one(
            images[i], out[i], crop, rel_threshold, min_frac, margin, pad, align, max_angle,
            max_shift,
        )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def normalize_minmax(images, out):
    """Scale each image of ``images`` (N, H, W) to [0, 1] by its own min and max."""
    for n in range(images.shape[0]):
        lo = 255.0
        hi = 0.0
        for y in range(images.shape[1]):
            for x in range(images.shape[2]):
                v = float(images[n, y, x])
                lo = min(lo, v)
                hi = max(hi, v)
        rng = hi - lo
        inv = 1.0 / rng if rng > 0 else 0.0
        for y in range(images.shape[1]):
            for x in range(images.shape[2]):
                out[n, y, x] = (images[n, y, x] - lo) * inv


@numba.njit(cache=True, nogil=True)
def normalize_zscore(images, out, rel_threshold):
    """Z-score each image by the mean and std of its foreground pixels (all pixels if none)."""
    for n in range(images.shape[0]):
        img = images[n]
        thr = foreground_threshold(img, rel_threshold)
        s = 0.0
        ss = 0.0
        cnt = 0
        for y in range(img.shape[0]):
            for x in range(img.shape[1]):
                v = float(img[y, x])
                if v > thr:
                    s += v
                    ss += v * v
                    cnt += 1
        if cnt < 2:
            s = 0.0
            ss = 0.0
            cnt = img.size
            for y in range(img.shape[0]):
                for x in range(img.shape[1]):
                    v = float(img[y, x])
                    s += v
                    ss += v * v
        mean = s / cnt
        var = max(ss / cnt - mean * mean, 0.0)
        std = math.sqrt(var)
        inv = 1.0 / std if std > _EPS else 0.0
        for y in range(img.shape[0]):
            for x in range(img.shape[1]):
                out[n, y, x] = (img[y, x] - mean) * inv


@numba.njit(cache=True, nogil=True, fastmath=True)
def rotate_shift(img, angle, shift, out):
    """``out`` = square ``img`` rotated by ``angle`` (radians) about its centre, then moved
    ``shift`` pixels left (bilinear; 0 outside)."""
    s = img.shape[0]
    c = (s - 1) / 2.0
    ca = math.cos(angle)
    sa = math.sin(angle)
    for y in range(s):
        dy = y - c
        for x in range(s):
            dx = x + shift - c
            sy = c + dy * ca - dx * sa
            sx = c + dy * sa + dx * ca
            y0 = math.floor(sy)
            x0 = math.floor(sx)
            fy = sy - y0
            fx = sx - x0
            acc = 0.0
            for t in range(2):
                yy = y0 + t
                if yy < 0 or yy >= s:
                    continue
                wy = fy if t else 1.0 - fy
                for u in range(2):
                    xx = x0 + u
                    if xx < 0 or xx >= s:
                        continue
                    acc += wy * (fx if u else 1.0 - fx) * img[yy, xx]
            out[y, x] = acc


@numba.njit(cache=True, nogil=True, fastmath=True)
def mirror_correlation(buf, shift):
    """Correlation of ``buf`` moved ``shift`` pixels left (0 filled) with its left-right mirror."""
    s = buf.shape[0]
    sm = 0.0
    smm = 0.0
    sp = 0.0
    for y in range(s):
        r = buf[y]
        for x in range(s):
            u = x + shift
            if u < 0 or u >= s:
                continue
            v = r[u]
            sm += v
            smm += v * v
            u2 = s - 1 - x + shift
            if 0 <= u2 < s:
                sp += v * r[u2]
    n = s * s
    mean = sm / n
    var = smm / n - mean * mean
    if var <= _EPS:
        return -1.0
    return (sp / n - mean * mean) / var


@numba.njit(cache=True, nogil=True)
def midline_pose(img, max_angle, max_shift):
    """(angle, shift) for ``rotate_shift`` that makes ``img`` most left-right symmetric.

    Angles are searched in 3° steps up to ``max_angle`` (radians), then ±1.5° around the best;
    shifts in whole pixels up to ``max_shift``. The identity wins ties and is kept for flat
    images, which have no axis.
    """
    s = img.shape[0]
    buf = np.empty((s, s), np.float32)
    best_a = 0.0
    best_d = 0
    rotate_shift(img, 0.0, 0, buf)
    best = mirror_correlation(buf, 0)
    if best == -1.0:
        return best_a, best_d
    step = math.radians(3.0)
    n = int(max_angle / step + 1e-9)
    for stage in range(2):
        centre = best_a
        if stage == 0:
            candidates = np.arange(-n, n + 1) * step
        else:
            candidates = np.array([centre - step / 2, centre + step / 2])
        for a in candidates:
            if abs(a) > max_angle + 1e-9:
                continue
            rotate_shift(img, a, 0, buf)
            for d in range(-max_shift, max_shift + 1):
                r = mirror_correlation(buf, d)
                if r > best + 1e-6:
                    best = r
                    best_a = a
                    best_d = d
    return best_a, best_d


@numba.njit(cache=True, nogil=True)
def align_midline(img, max_angle, max_shift):
    """Rotate and move the square uint8 ``img`` in place: its symmetry axis to the centre column."""
    a, d = midline_pose(img, max_angle, max_shift)
    if a == 0.0 and d == 0:
        return
    s = img.shape[0]
    buf = np.empty((s, s), np.float32)
    rotate_shift(img, a, d, buf)
    for y in range(s):
        for x in range(s):
            v = math.floor(buf[y, x] + 0.5)
            img[y, x] = 0 if v < 0 else (255 if v > 255 else np.uint8(v))
