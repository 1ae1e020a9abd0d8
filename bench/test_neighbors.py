"""Near-duplicate pair search: the k-d tree (``mriscan.neighbors``) against the O(N²) blocked
matrix product it replaced, at 10k and 100k signatures, in the same run. The 100k case runs only
with ``--scale-100k`` (the quadratic baseline takes minutes there)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record, target

from mriscan.duplicates import duplicate_groups
from mriscan.neighbors import unit_rows

GROUP = "near-duplicate grouping (16×16 signatures)"
CASES = [
    pytest.param(10_000, id="10k"),
    pytest.param(100_000, id="100k", marks=pytest.mark.scale100k),
]


def _signatures(n: int, seed: int) -> np.ndarray:
    """``n`` smooth random 16×16 heads (elliptical mask, Gaussian-filtered texture, σ = 1.5 px),
    10% of them noisy re-encoded copies of others. Their principal-component spectrum is close to
    the real sets' (16 axes hold 70% of the variance here, 64% on brain_mri + figshare_br35h), and
    they are drawn in a second where rendering 100k phantoms would take ~25 minutes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] + 0.5
    cy, cx = rng.uniform(6, 10, (2, n))
    ry, rx = rng.uniform(3.5, 8, (2, n))
    head = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx - cx[:, None, None]) / rx[:, None, None]
    ) ** 2 < 1
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (n, 16, 16)).astype(np.float32), (0, 1.5, 1.5))
    img = head * (rng.uniform(80, 180, (n, 1, 1)) + 200 * tex)
    m = n // 10
    src = rng.integers(0, n - m, m)
    img[n - m :] = img[src] * rng.uniform(0.8, 1.2, (m, 1, 1)) + rng.normal(0, 4, (m, 16, 16))
    return np.clip(img, 0, 255).astype(np.uint8)


def _quadratic_groups(signatures: np.ndarray, threshold: float = 0.95, block: int = 2048):
    """The previous ``duplicate_groups``: every pair through blocked float32 matrix products,
    then union-find (kept here as the baseline)."""
    n = len(signatures)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    flat = unit_rows(signatures)
    for start in range(0, n, block):
        corr = flat[start : start + block] @ flat[start:].T
        rows, cols = np.nonzero(corr > threshold)
        for r, c in zip(rows + start, cols + start, strict=True):
            if c > r:
                ra, rb = find(r), find(c)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    order: dict[int, int] = {}
    return np.array([order.setdefault(g, len(order)) for g in ids], dtype=np.int64)


@pytest.fixture(scope="module")
def sigs():
    cache: dict[int, np.ndarray] = {}

    def get(n: int) -> np.ndarray:
        if n not in cache:
            cache[n] = _signatures(n, seed=n)
        return cache[n]

    return get


@pytest.mark.parametrize("n", CASES)
@pytest.mark.parametrize("method", ["kdtree", "quadratic"])
def test_grouping(benchmark, sigs, method, n):
    s = sigs(n)
    fn = duplicate_groups if method == "kdtree" else _quadratic_groups
    groups = benchmark.pedantic(lambda: fn(s), rounds=1, iterations=1, warmup_rounds=0)
    assert groups.shape == (n,)
    assert len(np.unique(groups)) < n  # the planted copies group (equality: test_same_groups)
    record(GROUP, f"{method} N={n}", n / benchmark.stats.stats.median, "slices/s")
    if method != "kdtree":
        return
    target(
        f"#17 k-d tree grouping ≥ 2× the O(N²) products, N={n}",
        GROUP,
        f"kdtree N={n}",
        [f"quadratic N={n}"],
        2.0,
    )


@pytest.mark.parametrize("n", CASES)
def test_same_groups(sigs, n):
    s = sigs(n)
    np.testing.assert_array_equal(duplicate_groups(s), _quadratic_groups(s))
