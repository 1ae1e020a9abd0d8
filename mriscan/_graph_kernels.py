"""Numba kernels over graphs given as edge lists (validated int64 arrays; see their callers)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def component_minima(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """``out[i]`` = the smallest node connected to node ``i`` (0 <= i < n) by the edges
    ``(a[k], b[k])``: union-find with path halving, the smaller root always the parent (so a
    root is its component's minimum and every parent index is <= its child's)."""
    parent = np.arange(n)
    for k in range(a.shape[0]):
        x = a[k]
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        y = b[k]
        while parent[y] != y:
            parent[y] = parent[parent[y]]
            y = parent[y]
        if x < y:
            parent[y] = x
        elif y < x:
            parent[x] = y
    for i in range(n):  # in increasing order: parent[i] <= i is resolved already
        parent[i] = parent[parent[i]]
    return parent
