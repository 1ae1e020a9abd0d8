"""Stratified, duplicate-group-aware splits: every copy of a slice lands on the same side."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mriscan.errors import ConfigError

__all__ = [
    "class_shares",
    "cv_splits",
    "fold_class_mix",
    "join_keys",
    "kfold_indices",
    "oversized_groups",
    "patient_keys",
    "split_indices",
    "split_keys",
    "union_groups",
]

#: separates the keys of one ``SampleRecord.group_key`` (keys are ``kind:<hex>``, never blank)
KEY_SEPARATOR = " "


def join_keys(*keys: str) -> str:
    """One ``SampleRecord.group_key`` that carries every key given: a slice of a patient that a
    CSV manifest also puts in a group belongs to both (``"manifest:<h> patient:<h>"``).

    Empty keys are dropped, the rest de-duplicated and sorted (so equal sets give equal strings);
    a single key is returned unchanged, so stores without manifests keep their keys as they were.
    """
    parts = sorted({p for k in keys for p in split_keys(k)})
    return KEY_SEPARATOR.join(parts)


def split_keys(key: str) -> list[str]:
    """The keys one ``SampleRecord.group_key`` carries (``join_keys``); ``""`` gives ``[]``."""
    return [p for p in key.split(KEY_SEPARATOR) if p] if key else []


def patient_keys(key: str) -> list[str]:
    """The patient keys (``patient:<h>``, keyed hashes of DICOM Patient IDs) among the keys of
    one ``SampleRecord.group_key``; studies, series, volumes and manifest groups are left out
    (they name no patient)."""
    return [k for k in split_keys(key) if k.startswith("patient:")]


def union_groups(duplicate_ids: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """Split groups that join two relations: near-duplicate slices and slices with one key.

    Two samples share a group when they are linked by a chain of "same near-duplicate group" or
    "same key" steps (connected components of the union of both relations; union-find with path
    halving). Keys are ``SampleRecord.group_key`` strings (patient, volume, manifest group); one
    string may carry several keys (``join_keys``: a DICOM slice's patient and its manifest
    group), and the slice is then linked through each of them; ``""`` links nothing.

    Parameters
    ----------
    duplicate_ids : ndarray of shape (N,), int
        Near-duplicate group per sample (``mriscan.duplicates.duplicate_groups``).
    keys : sequence of N str

    Returns
    -------
    ndarray of shape (N,), int64
        Group ids 0.. numbered in order of first appearance.

    Raises
    ------
    ConfigError
        The two inputs differ in length.
    """
    dup = np.asarray(duplicate_ids, np.int64).reshape(-1)
    n = dup.shape[0]
    if len(keys) != n:
        raise ConfigError(f"duplicate_ids ({n}) and keys ({len(keys)}) must have one entry each.")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[object, int] = {}
    for i in range(n):
        for token in (("d", int(dup[i])), *(("k", k) for k in split_keys(keys[i]))):
            j = first.setdefault(token, i)
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    order: dict[int, int] = {}
    return np.array([order.setdefault(find(i), len(order)) for i in range(n)], dtype=np.int64)


def _group_table(labels: np.ndarray, groups: np.ndarray, seed: int):
    """Unique groups in a seeded random order, largest first, with per-class counts."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    groups = np.asarray(groups, np.int64).reshape(-1)
    if labels.shape != groups.shape:
        raise ConfigError(
            f"labels and groups must have the same length. Received "
            f"{labels.shape[0]} and {groups.shape[0]}."
        )
    uniq, inverse = np.unique(groups, return_inverse=True)
    n_classes = int(labels.max()) + 1 if labels.size else 1
    counts = np.zeros((len(uniq), n_classes), np.int64)
    np.add.at(counts, (inverse, labels), 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    # stable sort by size (desc) after shuffling: big groups placed first, ties random
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    return inverse, counts, order


def _assign(counts: np.ndarray, order: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Greedily give each group to the bin whose class counts are furthest below target."""
    filled = np.zeros_like(targets, dtype=np.float64)
    where = np.empty(len(counts), np.int64)
    for g in order:
        c = counts[g]
        # deficit after adding this group, weighted by the classes it holds
        deficit = ((targets - filled) * c).sum(axis=1) / max(c.sum(), 1)
        scale = np.maximum(targets.sum(axis=1), 1e-9)
        b = int(np.argmax(deficit / scale))
        filled[b] += c
        where[g] = b
    return where


def kfold_indices(
    labels: np.ndarray, groups: np.ndarray, *, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Fold number of every sample for stratified group k-fold.

    Parameters
    ----------
    labels : ndarray of shape (N,), int
    groups : ndarray of shape (N,), int
        Duplicate-group ids; a group never spans two folds.
    n_folds : int
    seed : int

    Returns
    -------
    ndarray of shape (N,), int64
        Values in ``0..n_folds-1``.
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2. Received: n_folds={n_folds}.")
    inverse, counts, order = _group_table(labels, groups, seed)
    if len(counts) < n_folds:
        raise ConfigError(f"Only {len(counts)} duplicate groups; cannot make {n_folds} folds.")
    targets = np.tile(counts.sum(axis=0) / n_folds, (n_folds, 1))
    return _assign(counts, order, targets)[inverse]


def oversized_groups(
    labels: np.ndarray,
    groups: np.ndarray,
    smallest_part: float,
    class_names: Sequence[str],
    keys: Sequence[str] | None = None,
) -> list[str]:
    """Describe the groups too large for a stratified split, one line each (empty: none);
    groups joined alike and of one size share a line, with their count and class mixes.

    A group larger than half of the smallest part it could land in (``smallest_part``: e.g.
    0.15 for a 15% validation split, 1/k for k folds) cannot be placed without skewing that
    part's size and class mix. Groups are kept whole anyway — splitting one would put copies
    (or one patient's neighbouring slices) on both sides — so this only explains a skewed
    split. Such groups arise from one patient's (or volume's, or manifest group's) slices, or
    when single-linkage near-duplicate chains (thumbnail correlation > 0.95) join look-alike
    slices of many patients, as on ``figshare_br35h``; with ``keys`` the line says which
    (tester 18: one patient's two series were called chains of look-alike slices).

    Parameters
    ----------
    labels, groups : ndarray of shape (N,), int
        Class index and group id of each sample.
    smallest_part : float in (0, 1]
        Share of the samples the smallest part of the split should hold.
    class_names : sequence of str
        Names of the class indices, for the message.
    keys : sequence of N str, optional
        ``SampleRecord.group_key`` of each sample: the group is then described as one
        patient's (or one key's) slices when its keys alone join it, else as joined by
        near-duplicate links too; without them the wording is neutral.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    limit = 0.5 * smallest_part * labels.size
    # groups alike in what joined them and in size are said once, with a count: six volumes
    # of 9 slices gave six identical lines that told the reader nothing more than one
    alike: dict[tuple[str, int, str], list[str]] = {}
    for g in np.flatnonzero(sizes > limit)[np.argsort(-sizes[sizes > limit], kind="stable")]:
        members = np.flatnonzero(inverse == g)
        mix = np.bincount(labels[members], minlength=len(class_names))
        classes = ", ".join(f"{n} {c}" for n, c in zip(class_names, mix, strict=False) if c)
        what = _what_joined([keys[i] for i in members]) if keys is not None else None
        joined = (
            what or "near-duplicates, or slices sharing a patient, series, volume or manifest key"
        )
        audit = (
            ". `mriscan audit` lists its near-duplicate pairs"
            if what is None or "near-duplicate" in what
            else ""
        )
        alike.setdefault((joined, int(sizes[g]), audit), []).append(classes)
    out = []
    for (joined, size, audit), mixes in alike.items():
        share = f"{size / labels.size:.0%}"
        part = f"more than half of a {smallest_part:.0%} part"
        if len(mixes) == 1:
            out.append(
                f"one split group ({joined}) holds {size} of {labels.size} slices ({share}: "
                f"{mixes[0]}), {part}; it stays whole, so that part's size and class mix are "
                f"skewed{audit}"
            )
            continue
        counted = ", ".join(f"{m} ×{mixes.count(m)}" for m in dict.fromkeys(mixes))
        out.append(
            f"{len(mixes)} split groups ({joined}) hold {size} of {labels.size} slices each "
            f"({share} each; {counted}), each {part}; they stay whole, so those parts' sizes "
            f"and class mixes are skewed{audit}"
        )
    return out


def _what_joined(member_keys: Sequence[str]) -> str:
    """What joined one group's samples (their ``group_key`` strings): "one patient's
    slices", "slices sharing one volume" (the kinds of key) when the keys alone join them all,
    else "near-duplicate links joining P patient(s), S slice(s) without a key"."""
    keyed = [k for k in member_keys if k]
    unkeyed = len(member_keys) - len(keyed)
    n_parts = int(np.unique(union_groups(np.arange(len(keyed)), keyed)).size) if keyed else 0
    patients = {k for key in keyed for k in patient_keys(key)}
    if unkeyed == 0 and n_parts == 1:
        if len(patients) == 1:
            return "one patient's slices"
        kinds = sorted({k.split(":", 1)[0] for key in keyed for k in split_keys(key)})
        return f"slices sharing one {' / '.join(kinds)} key"
    bits = []
    if patients:
        bits.append(f"{len(patients)} patient(s)")
    elif n_parts:
        bits.append(f"{n_parts} volume(s) / manifest group(s)")
    if unkeyed:
        bits.append(f"{unkeyed} slice(s) without a patient, volume or manifest key")
    return "near-duplicate links joining " + ", ".join(bits)


def split_indices(
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Stratified train/val/test split that keeps each duplicate group on one side.

    Returns
    -------
    dict with keys ``train``, ``val``, ``test``: sorted sample indices (int64).
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"{name} must be in [0, 1). Received: {name}={f}.")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be < 1. Received: {val_fraction} + {test_fraction}."
        )
    inverse, counts, order = _group_table(labels, groups, seed)
    fracs = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    targets = np.outer(fracs, counts.sum(axis=0))
    where = _assign(counts, order, targets)[inverse]
    return {name: np.flatnonzero(where == k) for k, name in enumerate(("train", "val", "test"))}


def cv_splits(
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int,
    repeats: int = 1,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(repeat, fold, train, val, test) indices of each fold of a repeated group-aware k-fold,
    with a group-aware validation split (seed ``seed + 100·repeat + fold``) inside each
    training part."""
    for rep in range(repeats):
        assign = kfold_indices(labels, groups, n_folds=folds, seed=seed + rep)
        for k in range(folds):
            test_idx, rest = np.flatnonzero(assign == k), np.flatnonzero(assign != k)
            inner = split_indices(
                labels[rest],
                groups[rest],
                val_fraction=val_fraction,
                test_fraction=0.0,
                seed=seed + 100 * rep + k,
            )
            yield rep, k, rest[inner["train"]], rest[inner["val"]], test_idx


#: a fold's test share of a class this many points (of 100) from the whole set's is flagged
MIX_SKEW_POINTS = 10.0


def class_shares(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Each class's share (0-1) of ``labels``, an int array (N,) of class indices into
    ``class_names``; all 0 when ``labels`` is empty. ``fold_class_mix`` measures a fold's
    skew against it."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    counts = np.bincount(labels, minlength=len(class_names)) / max(labels.size, 1)
    return {n: float(c) for n, c in zip(class_names, counts, strict=True)}


def fold_class_mix(
    labels: np.ndarray,
    groups: np.ndarray,
    splits: Sequence[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
) -> list[dict]:
    """How many slices of each class every part of every fold holds, and whether the fold's
    test part is skewed.

    A group-aware split keeps each group whole, so one large group (a patient's many slices,
    or a chain of look-alike slices joined as near-duplicates) can tilt a fold's class mix;
    the fold's numbers then answer another question than the others' (ACCURACY row 70:
    figshare's fold 1 held a 448-slice glioma group). This makes that visible beside the
    metrics.

    Parameters
    ----------
    labels : ndarray of shape (N,), int
        Class index of each sample.
    groups : ndarray of shape (N,), int
        Split group of each sample: how many independent groups a class's test slices rest
        on is counted beside them (31 slices that are copies of one image are one group).
    splits : sequence of (repeat, fold, train, val, test)
        ``cv_splits``' folds: positions into ``labels``.
    class_names : sequence of str
        Names of the class indices.

    Returns
    -------
    list of dict, one per fold in order
        ``repeat``, ``fold`` (0-based), ``train`` / ``val`` / ``test``: {class: slices};
        ``test_groups``: {class: split groups among its test slices}; ``test_share``: {class:
        share of the test part, 0-1}; ``skewed``: the classes whose test share lies more than
        ``MIX_SKEW_POINTS`` percentage points from their share of all ``labels``, or that
        the set holds and the test part lacks (empty: none).
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    k = len(class_names)
    whole = np.array(list(class_shares(labels, class_names).values()))
    out = []
    for rep, fold, *parts in splits:
        entry: dict = {"repeat": int(rep), "fold": int(fold)}
        for part, idx in zip(("train", "val", "test"), parts, strict=True):
            counts = np.bincount(labels[idx], minlength=k)
            entry[part] = {n: int(c) for n, c in zip(class_names, counts, strict=True)}
        t = np.asarray(parts[2])
        entry["test_groups"] = {
            n: int(np.unique(groups[t][labels[t] == c]).size) for c, n in enumerate(class_names)
        }
        test = np.bincount(labels[t], minlength=k) / max(len(t), 1)
        entry["test_share"] = {n: float(s) for n, s in zip(class_names, test, strict=True)}
        off = (np.abs(test - whole) * 100 > MIX_SKEW_POINTS) | ((whole > 0) & (test == 0))
        entry["skewed"] = [class_names[c] for c in np.flatnonzero(off)]
        out.append(entry)
    return out
