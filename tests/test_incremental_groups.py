"""Incremental split groups (issue 20): new slices linked to the stored ones give exactly the
groups of a full recomputation over every slice, on synthetic sets and on the real set."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from mriscan.duplicates import duplicate_groups, new_links, signatures
from mriscan.errors import ConfigError
from mriscan.ingest import IngestConfig, ingest
from mriscan.neighbors import committed_pairs, cross_pairs, dct_projection, unit_rows
from mriscan.preprocess import PreprocessConfig
from mriscan.splits import union_groups
from mriscan.store import ImageStore, verify_store


def _smooth_signatures(n: int, seed: int, copies: int = 0) -> np.ndarray:
    """``n`` thumbnail-like signatures (smooth blobs) with ``copies`` noisy near-copies."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    base = []
    for _ in range(n - copies):
        cx, cy, w = rng.uniform(0.2, 0.8, 3)
        img = 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + w * 0.2))
        img += rng.normal(0, 25, (16, 16))
        base.append(img)
    for _ in range(copies):
        base.append(base[rng.integers(0, len(base))] + rng.normal(0, 6, (16, 16)))
    sigs = np.clip(np.stack(base), 0, 255).astype(np.uint8)
    return sigs[rng.permutation(n)]


def test_dct_projection_is_orthonormal_and_never_lengthens_distances():
    sigs = _smooth_signatures(200, seed=0)
    p, u = dct_projection(sigs).astype(np.float64), unit_rows(sigs).astype(np.float64)
    d_full = np.linalg.norm(u[:100] - u[100:], axis=1)
    d_proj = np.linalg.norm(p[:100] - p[100:], axis=1)
    assert np.all(d_proj <= d_full + 1e-5)
    assert np.linalg.norm(p, axis=1).max() <= 1 + 1e-5
    with pytest.raises(ConfigError, match="square thumbnails"):
        dct_projection(np.zeros((2, 4, 2), np.uint8))


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.95])
def test_committed_pairs_equal_the_k_d_tree_cross_pairs(threshold):
    stored = _smooth_signatures(3000, seed=1, copies=600)
    new = np.concatenate([_smooth_signatures(40, seed=2, copies=0), stored[:10] + 1])
    got = committed_pairs(new, dct_projection(stored), lambda p: stored[p], threshold=threshold)
    want = cross_pairs(new, stored, threshold=threshold)
    assert len(want[0]) > 10  # the planted copies are found
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def _store_in_batches(path, sigs, keys, sizes) -> np.ndarray:
    """Commit ``sigs`` (as 16² images) in batches of ``sizes`` with incremental links."""
    with ImageStore.create(path, 16, overwrite=True) as st:
        st.set_class_names(["a"])
        start = 0
        for size in sizes:
            part = slice(start, min(start + size, len(sigs)))
            k = keys[part]
            st.append(sigs[part], np.zeros(len(sigs[part]), int),
                      [{"group_key": key} for key in k], signatures=sigs[part])  # fmt: skip
            links = new_links(
                st.pending_signatures(), k, offset=len(st),
                projections=st.signature_projections(), read_signatures=st.signature_rows,
                constants=st.constant_signatures(), key_positions=st.positions_with_keys(k),
            )  # fmt: skip
            st.commit(links=links)
            start = part.stop
    with ImageStore.open(path) as st:
        return st.groups.copy()


def test_batched_commits_give_the_full_recomputations_groups(tmp_path):
    rng = np.random.default_rng(3)
    sigs = _smooth_signatures(1500, seed=4, copies=500)
    sigs[rng.choice(1500, 30, replace=False)] = rng.choice([0, 255], (30, 1, 1))  # blanks
    keys = [f"patient:{rng.integers(0, 60)}" if rng.random() < 0.2 else "" for _ in range(1500)]
    sizes = rng.integers(1, 200, 40).tolist()
    got = _store_in_batches(tmp_path / "s.zarr", sigs, keys, sizes)
    want = union_groups(duplicate_groups(sigs), keys)
    np.testing.assert_array_equal(got, want)
    assert 200 < len(np.unique(want)) < 1500  # copies, keys and blanks all joined groups
    assert verify_store(tmp_path / "s.zarr") == []


def test_a_caller_that_splits_a_group_rewrites_the_group_column(tmp_path):
    with ImageStore.create(tmp_path / "s.zarr", 16) as st:
        st.set_class_names(["a"])
        st.append(
            np.zeros((4, 16, 16), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None], [0] * 4
        )
        st.commit(groups=[0, 0, 1, 1])
        st.append(np.full((2, 16, 16), 9, np.uint8), [0, 0])
        st.commit(links=np.array([[4, 2], [5, 0]]))  # joins 4 to {2,3} and 5 to {0,1}
        assert st.groups.tolist() == [0, 0, 1, 1, 1, 0]
        st.commit(links=np.array([[3, 5]]))  # a merge of two old groups
        assert st.groups.tolist() == [0] * 6
        st.commit(groups=[0, 1, 2, 3, 4, 5])  # a split: a new generation of the group column
        assert st.groups.tolist() == [0, 1, 2, 3, 4, 5]
        with pytest.raises(ValueError, match="either groups or links"):
            st.commit(groups=[0] * 6, links=np.array([[0, 1]]))
        with pytest.raises(ValueError, match="links must name positions"):
            st.commit(links=np.array([[0, 6]]))
    assert (tmp_path / "s.zarr" / "index" / "group.1.i8").exists()
    with ImageStore.open(tmp_path / "s.zarr", mode="a") as st:  # stale generations removed
        assert st.groups.tolist() == [0, 1, 2, 3, 4, 5]
    assert not (tmp_path / "s.zarr" / "index" / "group.0.i8").exists()


def _unique_real_slices(real_data):
    from mriscan.io import decode_image, list_class_folders

    seen, images = set(), []
    for files in list_class_folders(real_data).values():
        for p in files:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                images.append(decode_image(p))
    return images


@pytest.mark.slow
def test_real_set_in_batches_gives_the_known_groups(real_data, tmp_path):
    """brain_mri: 228 unique slices in 201 groups, committed 1, 7, 20, ... at a time."""
    sigs = signatures(_unique_real_slices(real_data))
    assert len(sigs) == 228
    for seed, sizes in ((0, [1, 7, 20, 50, 150]), (1, [228]), (2, [3] * 76)):
        order = np.random.default_rng(seed).permutation(228)
        got = _store_in_batches(tmp_path / f"s{seed}.zarr", sigs[order], [""] * 228, sizes)
        np.testing.assert_array_equal(got, duplicate_groups(sigs[order]))
        assert len(np.unique(got)) == 201


@pytest.mark.slow
def test_real_set_ingested_in_two_runs_gives_the_known_groups(real_data, tmp_path):
    raw = tmp_path / "raw"
    for c in ("yes", "no"):
        (raw / c).mkdir(parents=True)
        for k, p in enumerate(sorted((real_data / c).iterdir())):
            if k % 2 == 0:
                shutil.copy(p, raw / c / p.name)
    cfg = IngestConfig(preprocess=PreprocessConfig(size=32))
    ingest(raw, tmp_path / "s.zarr", cfg)
    for c in ("yes", "no"):
        for p in sorted((real_data / c).iterdir()):
            if not (raw / c / p.name).exists():
                shutil.copy(p, raw / c / p.name)
    report = ingest(raw, tmp_path / "s.zarr", cfg)
    assert report.n_added > 100 and report.duplicate_groups == 201
    with ImageStore.open(tmp_path / "s.zarr") as st:
        assert len(st) == 228
        np.testing.assert_array_equal(st.groups, duplicate_groups(st.signatures()))


def _python_components(old_label: dict[int, int], old_n: int, n: int, pairs: np.ndarray):
    """The dict-based union-find the store used before its Numba kernel (the reference)."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.get(a, a) != a:
            parent[a] = parent.get(parent[a], parent[a])
            a = parent[a]
        return a

    for a, b in pairs.tolist():
        ra = find(old_label[a] if a < old_n else a)
        rb = find(old_label[b] if b < old_n else b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    labels = [find(p) for p in range(old_n, n)]
    merges = [(a, find(a)) for a in sorted(set(old_label.values())) if find(a) != a]
    return labels, merges


@pytest.mark.parametrize("seed", range(6))
def test_link_components_equal_a_plain_union_find(tmp_path, seed):
    """The store's group labels and merges from links (its Numba union-find) are those of the
    plain union-find: every new row labelled by its component's smallest label, every old group
    that joins a smaller one recorded as a merge."""
    from mriscan.store.image_store import _labels_from_links

    rng = np.random.default_rng(seed)
    store = ImageStore.create(tmp_path / "s.zarr", 16, PreprocessConfig(size=16))
    old_n = int(rng.integers(0, 40))
    if old_n:
        store.append(rng.integers(0, 256, (old_n, 16, 16), dtype=np.uint8), [0] * old_n)
        # some committed rows already share groups
        store.commit(links=rng.integers(0, old_n, (old_n // 3, 2)))
    n = old_n + int(rng.integers(1, 60))
    pairs = rng.integers(0, n, (int(rng.integers(0, 3 * n)), 2)).astype(np.int64)
    table = store.table
    # as the store resolves them: the committed label (after merges) of every old row a link names
    named = sorted(p for p in set(pairs.reshape(-1).tolist()) if p < old_n)
    raw = table.columns.groups_at(table.group_file, np.array(named, np.int64)).tolist()
    roots = table.roots()
    old_label = {p: roots.get(g, g) for p, g in zip(named, raw, strict=True)}
    labels, merges = _labels_from_links(table, old_n, n, pairs)
    want_labels, want_merges = _python_components(old_label, old_n, n, pairs)
    assert labels.tolist() == want_labels
    assert merges.tolist() == [list(m) for m in want_merges]
    store.close()
