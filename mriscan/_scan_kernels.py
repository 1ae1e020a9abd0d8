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
