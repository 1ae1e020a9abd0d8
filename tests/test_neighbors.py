"""The k-d-tree near-duplicate pair search against brute force, and duplicate_groups against the
O(N²) grouping it replaced (kept here as the reference)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mriscan.duplicates import duplicate_groups, signatures
from mriscan.errors import ConfigError
from mriscan.neighbors import cross_pairs, near_pairs, unit_rows


def reference_groups(signatures: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """The O(N²) ``duplicate_groups`` as it was before the k-d tree (union-find over all pairs)."""
    n = len(signatures)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    flat = unit_rows(np.asarray(signatures))
    flat_const = ~np.any(flat, axis=1)
    corr = flat @ flat.T
    rows, cols = np.nonzero(corr > threshold)
    for r, c in zip(rows, cols, strict=True):
        if c > r:
            ra, rb = find(r), find(c)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    raw = np.asarray(signatures).reshape(n, -1)
    first: dict[bytes, int] = {}
    for i in np.flatnonzero(flat_const):
        j = first.setdefault(raw[i].tobytes(), i)
        if j != i:
            ra, rb = find(i), find(j)
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    _, ids = np.unique(roots, return_inverse=True)
    order: dict[int, int] = {}
    return np.array([order.setdefault(g, len(order)) for g in ids], dtype=np.int64)


def synthetic_signatures(n: int, seed: int, copies: float = 0.3) -> np.ndarray:
    """Smooth random 16×16 heads, a share of them re-encoded copies (noise, contrast) of others,
    plus a few blank thumbnails: (n, 16, 16) uint8."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] + 0.5
    cy, cx = rng.uniform(6, 10, (2, n))
    ry, rx = rng.uniform(3.5, 8, (2, n))
    head = ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx - cx[:, None, None]) / rx[:, None, None]
    ) ** 2 < 1
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (n, 16, 16)), (0, 1.5, 1.5))
    img = head * (rng.uniform(80, 180, (n, 1, 1)) + 200 * tex)
    m = int(n * copies)
    src = rng.integers(0, n - m, m)
    noise = rng.uniform(1, 25)  # some draws put pairs right around the threshold
    img[n - m :] = img[src] * rng.uniform(0.8, 1.2, (m, 1, 1)) + rng.normal(0, noise, (m, 16, 16))
    img[rng.integers(0, n, 3)] = 0  # blank slices: grouped by value
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(params=["gram", "tree"])
def search(request, monkeypatch):
    """Both candidate searches of ``near_pairs``: the Gram matrix (up to ``_GRAM_MAX`` rows)
    and the k-d tree on principal axes (above it; forced here by lowering the limit)."""
    import mriscan.neighbors as nb

    if request.param == "tree":
        monkeypatch.setattr(nb, "_GRAM_MAX", 0)
    return request.param


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.9, 0.95, 0.98])
def test_near_pairs_equal_brute_force(seed, threshold, search):
    sigs = synthetic_signatures(300, seed)
    x = unit_rows(sigs).astype(np.float64)
    corr = x @ x.T
    ri, rj = np.nonzero(np.triu(corr > threshold, 1))
    i, j, c = near_pairs(sigs, threshold=threshold)
    assert len(ri) > 0
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(j, rj)
    np.testing.assert_allclose(c, corr[ri, rj], rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_gram_and_tree_searches_give_identical_pairs_and_correlations(seed, monkeypatch):
    """The candidate search changes with the size of the input; the answer, down to the bits
    of the float64 correlations, does not (both end in the same exact check)."""
    import mriscan.neighbors as nb

    sigs = synthetic_signatures(500, seed)
    gram = near_pairs(sigs)
    monkeypatch.setattr(nb, "_GRAM_MAX", 0)
    tree = near_pairs(sigs)
    assert len(gram[0]) > 0
    for a, b in zip(gram, tree, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dims", [1, 4, 16, 300])
def test_result_does_not_depend_on_dims(dims, monkeypatch):
    import mriscan.neighbors as nb

    monkeypatch.setattr(nb, "_GRAM_MAX", 0)  # dims shape the tree path only
    sigs = synthetic_signatures(200, 7)
    ref = near_pairs(sigs, dims=16)
    got = near_pairs(sigs, dims=dims)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(3))
def test_cross_pairs_equal_brute_force(seed):
    a, b = synthetic_signatures(150, seed), synthetic_signatures(180, seed + 100)
    b[:20] = a[40:60]  # planted exact copies across the two sets
    xa, xb = unit_rows(a).astype(np.float64), unit_rows(b).astype(np.float64)
    corr = xa @ xb.T
    ri, rj = np.nonzero(corr > 0.95)
    i, j, c = cross_pairs(a, b, threshold=0.95)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(j, rj)
    np.testing.assert_allclose(c, corr[ri, rj], rtol=0, atol=1e-9)
    planted = {(40 + k, k) for k in range(20) if a[40 + k].std() > 0}  # blanks never pair
    assert planted and planted <= set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_duplicate_groups_equal_the_quadratic_reference(seed):
    sigs = synthetic_signatures(400, seed)
    np.testing.assert_array_equal(duplicate_groups(sigs), reference_groups(sigs))


def test_blank_and_single_inputs():
    assert duplicate_groups(np.zeros((0, 16, 16), np.uint8)).shape == (0,)
    np.testing.assert_array_equal(duplicate_groups(np.zeros((1, 16, 16), np.uint8)), [0])
    blanks = np.zeros((3, 16, 16), np.uint8)
    blanks[1] = 7
    np.testing.assert_array_equal(duplicate_groups(blanks), [0, 1, 0])
    assert near_pairs(blanks)[0].size == 0


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 2.0])
def test_threshold_outside_range_is_refused(threshold):
    with pytest.raises(ConfigError, match=r"threshold must be a correlation in \[0, 1\)"):
        near_pairs(np.zeros((2, 16, 16), np.uint8), threshold=threshold)


def test_mismatched_trailing_shapes_are_refused():
    with pytest.raises(ConfigError, match="same trailing shape"):
        cross_pairs(np.zeros((2, 16, 16)), np.zeros((2, 8, 8)))


@pytest.mark.slow
def test_real_set_gives_the_known_groups(real_data):
    """brain_mri: 228 unique files (by SHA-256) in 201 groups, as before the k-d tree."""
    from mriscan.io import decode_image, list_class_folders

    seen, images = set(), []
    for files in list_class_folders(real_data).values():
        for p in files:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                images.append(decode_image(p))
    sigs = signatures(images)
    groups = duplicate_groups(sigs)
    assert len(sigs) == 228
    assert len(np.unique(groups)) == 201
    np.testing.assert_array_equal(groups, reference_groups(sigs))
