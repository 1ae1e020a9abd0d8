"""Splits keep duplicate groups together and stay stratified (property-style over many seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from mriscan.errors import ConfigError
from mriscan.splits import (
    cv_splits,
    join_keys,
    kfold_indices,
    oversized_groups,
    split_indices,
    split_keys,
    union_groups,
)


def _dataset(seed: int, n_groups: int = 120):
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 1, 1, 2, 2, 3, 6], n_groups)
    group_label = (rng.random(n_groups) < 0.6).astype(int)
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = np.repeat(group_label, sizes)
    perm = rng.permutation(len(groups))
    return labels[perm], groups[perm]


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("k", [3, 5])
def test_kfold_keeps_groups_and_is_stratified(seed, k):
    labels, groups = _dataset(seed)
    folds = kfold_indices(labels, groups, n_folds=k, seed=seed)
    assert set(folds.tolist()) == set(range(k))
    for g in np.unique(groups):
        assert len(set(folds[groups == g].tolist())) == 1
    overall = labels.mean()
    for f in range(k):
        in_fold = folds == f
        assert abs(in_fold.sum() - len(labels) / k) <= 0.2 * len(labels) / k + 6
        assert abs(labels[in_fold].mean() - overall) < 0.1


@pytest.mark.parametrize("seed", range(15))
def test_split_keeps_groups_and_fractions(seed):
    labels, groups = _dataset(seed)
    split = split_indices(labels, groups, val_fraction=0.15, test_fraction=0.2, seed=seed)
    all_idx = np.concatenate(list(split.values()))
    assert sorted(all_idx.tolist()) == list(range(len(labels)))
    sides = {name: set(groups[idx].tolist()) for name, idx in split.items()}
    assert not (
        sides["train"] & sides["val"]
        or sides["train"] & sides["test"]
        or sides["val"] & sides["test"]
    )
    n = len(labels)
    assert abs(len(split["test"]) - 0.2 * n) <= 0.05 * n + 6
    assert abs(len(split["val"]) - 0.15 * n) <= 0.05 * n + 6
    for idx in split.values():
        assert abs(labels[idx].mean() - labels.mean()) < 0.12


def test_splits_are_seeded():
    labels, groups = _dataset(0)
    a = kfold_indices(labels, groups, seed=1)
    np.testing.assert_array_equal(a, kfold_indices(labels, groups, seed=1))
    assert not np.array_equal(a, kfold_indices(labels, groups, seed=2))


def test_split_errors():
    labels, groups = _dataset(0)
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be < 1"):
        split_indices(labels, groups, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="n_folds must be >= 2"):
        kfold_indices(labels, groups, n_folds=1)
    with pytest.raises(ConfigError, match="cannot make 5 folds"):
        kfold_indices(np.array([0, 1, 1]), np.array([0, 1, 1]), n_folds=5)


def _patients(seed: int):
    """Slices of random patients (1-4 series of 1-8 slices each), with near-duplicate links
    that cross patients now and then, and patient ids that may be missing (volume key)."""
    rng = np.random.default_rng([seed, 7])
    keys, labels, patient = [], [], []
    for p in range(int(rng.integers(25, 60))):
        lab = int(rng.random() < 0.5)
        has_id = rng.random() < 0.8
        for s in range(int(rng.integers(1, 5))):
            for _ in range(int(rng.integers(1, 9))):
                keys.append(f"patient:{p}" if has_id else f"volume:{p}-{s}")
                labels.append(lab)
                patient.append(p if has_id else 10_000 * (p + 1) + s)
    n = len(keys)
    dup = np.arange(n)
    for _ in range(n // 10):  # a few near-duplicate pairs anywhere
        a, b = rng.integers(0, n, 2)
        dup[dup == dup[b]] = dup[a]
    return np.array(labels), keys, np.array(patient), dup


@pytest.mark.parametrize("seed", range(25))
def test_no_patient_or_duplicate_on_both_sides_of_any_split_or_fold(seed):
    labels, keys, patient, dup = _patients(seed)
    groups = union_groups(dup, keys)
    split = split_indices(labels, groups, val_fraction=0.2, test_fraction=0.2, seed=seed)
    side = np.empty(len(labels), int)
    for k, name in enumerate(("train", "val", "test")):
        side[split[name]] = k
    folds = list(cv_splits(labels, groups, folds=4, val_fraction=0.2, seed=seed))
    for ids in (patient, dup):  # patients (or volumes) and near-duplicates alike
        for g in np.unique(ids):
            members = ids == g
            assert len(set(side[members].tolist())) == 1
            for _, _, train, val, _test in folds:
                where = {0 if i in set(train) else 1 if i in set(val) else 2
                         for i in np.flatnonzero(members)}  # fmt: skip
                assert len(where) == 1


def test_union_groups_joins_both_relations():
    dup = np.array([0, 0, 1, 2, 3, 4])
    keys = ["", "patient:a", "patient:a", "", "volume:v", "volume:v"]
    np.testing.assert_array_equal(union_groups(dup, keys), [0, 0, 0, 1, 2, 2])
    with pytest.raises(ConfigError):
        union_groups(dup, keys[:2])


def test_oversized_groups_are_described_and_small_ones_are_not():
    labels = np.array([0] * 60 + [1] * 40)
    groups = np.arange(100)
    groups[:30] = 0  # one group of 30 slices: 30% of the data, more than half of a 20% fold
    groups[30:38] = 1  # 8 slices: less than half of a 20% fold (10)
    lines = oversized_groups(labels, groups, 0.2, ("no", "yes"))
    assert len(lines) == 1 and "holds 30 of 100 slices" in lines[0] and "no 30" in lines[0]
    mix = lines[0].split("slices (")[1].split(")")[0]
    assert mix == "30%: no 30"  # only the classes it holds
    assert "near-duplicates, or slices sharing a patient" in lines[0]  # no keys: neutral
    assert oversized_groups(labels, np.arange(100), 0.2, ("no", "yes")) == []
    # the largest first
    groups[38:70] = 2
    lines = oversized_groups(labels, groups, 0.2, ("no", "yes"))
    assert [line.split(" slices (")[0][-9:] for line in lines] == ["32 of 100", "30 of 100"]


def test_oversized_groups_alike_share_one_line():
    """Six volumes of 9 slices printed six identical warnings."""
    labels = np.array([0] * 36 + [1] * 36)
    keys = [f"volume:v{i // 9}" for i in range(72)]  # 8 volumes of 9 slices
    groups = union_groups(np.arange(72), keys)
    lines = oversized_groups(labels, groups, 0.15, ("no", "yes"), keys)
    assert lines == [
        "8 split groups (slices sharing one volume key) hold 9 of 72 slices each (12% each; "
        "no 9 ×4, yes 9 ×4), each more than half of a 15% part; they stay whole, so those "
        "parts' sizes and class mixes are skewed"
    ]


def test_oversized_groups_say_what_joined_them():
    """Tester 18: one patient's two series were described as "chains of look-alike slices of
    different patients". With the group keys: one patient's slices are said so (no audit
    pointer); a group the keys alone leave in parts is said to be joined by near-duplicates."""
    labels = np.array([0] * 60 + [1] * 40)
    keys = [f"patient:p{i // 4}" for i in range(100)]  # 25 patients of 4 slices
    keys[:30] = ["patient:big"] * 30  # one patient of 30 slices
    keys[30:60] = [""] * 30  # JPEGs: no key
    dup = np.arange(100)
    dup[30:60] = 1000  # 30 look-alike JPEGs
    dup[60] = 1000  # ... linked to one slice of patient p15
    groups = union_groups(dup, keys)
    lines = oversized_groups(labels, groups, 0.2, ("no", "yes"), keys)
    assert len(lines) == 2
    patient = next(x for x in lines if "holds 30 of 100" in x)
    assert patient.startswith("one split group (one patient's slices) holds 30")
    assert "audit" not in patient and "near-duplicate" not in patient
    chain = next(x for x in lines if "holds 34 of 100" in x)  # 30 JPEGs + patient p15's 4
    assert "near-duplicate links joining 1 patient(s), 30 slice(s) without a" in chain
    assert "audit" in chain


@pytest.mark.parametrize("seed", range(15))
def test_manifest_groups_across_patients_join_never_split(seed):
    """A manifest group column that cuts across patients/series (one group per file, or groups
    spanning two patients) joins their groups; it never separates a patient."""
    labels, keys, patient, dup = _patients(seed)
    rng = np.random.default_rng(seed + 100)
    n = len(keys)
    manifest = np.arange(n)  # one group per file (cuts every series apart if it replaced them)
    for _ in range(n // 20):  # and a few groups across two patients
        a, b = rng.integers(0, n, 2)
        manifest[b] = manifest[a]
    joined = [join_keys(k, f"manifest:{m}") for k, m in zip(keys, manifest, strict=True)]
    groups = union_groups(dup, joined)
    folds = kfold_indices(labels, groups, n_folds=3, seed=seed)
    for ids in (patient, manifest, dup):
        for g in np.unique(ids):
            assert len(set(folds[ids == g].tolist())) == 1


def test_join_keys_round_trip():
    assert join_keys("patient:a", "") == "patient:a"
    assert join_keys("patient:a", "manifest:b") == join_keys("manifest:b", "patient:a")
    assert split_keys(join_keys("patient:a", "manifest:b")) == ["manifest:b", "patient:a"]
    assert split_keys("") == [] and join_keys("", "") == ""
    dup = np.arange(4)
    keys = ["patient:a manifest:m", "manifest:m", "patient:a", "manifest:z"]
    np.testing.assert_array_equal(union_groups(dup, keys), [0, 0, 0, 1])


def test_class_shares_are_each_class_share_of_the_labels_and_zero_when_empty():
    """The whole set's shares that ``fold_class_mix`` and cv's summary both measure skew
    against: a class with no slice has share 0, and no labels give all 0 (not a NaN)."""
    from mriscan.splits import class_shares

    shares = class_shares(np.array([0, 0, 0, 2]), ("no", "yes", "x"))
    assert shares == {"no": 0.75, "yes": 0.0, "x": 0.25}
    assert class_shares(np.array([], np.int64), ("no", "yes")) == {"no": 0.0, "yes": 0.0}


def test_fold_class_mix_counts_each_part_and_flags_a_fold_tilted_by_one_group():
    """One 30-slice 'yes' group must land whole in one test fold of 100 slices (50 yes): that
    fold's yes share strays from the whole set's 50% and is flagged, and its yes slices rest
    on few groups (tester28: 31 copies of one image read as 31 slices); the counts of every
    part are those of the fold's indices. A class the set holds and a test part lacks is
    flagged too, however rare."""
    from mriscan.splits import MIX_SKEW_POINTS, fold_class_mix

    labels = np.array([0] * 50 + [1] * 50)
    groups = np.concatenate([np.arange(50), np.full(30, 50), np.arange(51, 71)])
    splits = list(cv_splits(labels, groups, folds=4, seed=0))
    mix = fold_class_mix(labels, groups, splits, ("no", "yes"))
    assert [(m["repeat"], m["fold"]) for m in mix] == [(0, k) for k in range(4)]
    for m, (_, _, train, val, test) in zip(mix, splits, strict=True):
        for part, idx in (("train", train), ("val", val), ("test", test)):
            assert m[part] == {
                "no": int((labels[idx] == 0).sum()),
                "yes": int((labels[idx] == 1).sum()),
            }
        for c, name in enumerate(("no", "yes")):
            assert m["test_groups"][name] == len(set(groups[test][labels[test] == c].tolist()))
        share = m["test"]["yes"] / len(test)
        assert m["test_share"]["yes"] == pytest.approx(share)
        assert ("yes" in m["skewed"]) == (abs(share - 0.5) * 100 > MIX_SKEW_POINTS)
    big = next(m for m, s in zip(mix, splits, strict=True) if 50 in groups[s[4]])
    assert big["skewed"] == ["no", "yes"]  # 30 of its ≥ 30 test slices are yes: far from 50%
    assert big["test_groups"]["yes"] < big["test"]["yes"] - 25  # the 30 copies: one group
    lab = np.array([0, 1] * 20)
    balanced = fold_class_mix(
        lab, np.arange(40), list(cv_splits(lab, np.arange(40), folds=4)), ("no", "yes")
    )
    assert all(m["skewed"] == [] for m in balanced)
    # a rare class (2 of 42 slices) that a fold's test part lacks: flagged in that fold
    rare = np.concatenate([lab, [2, 2]])
    folds = list(cv_splits(rare, np.arange(42), folds=4, seed=0))
    lacking = [
        m
        for m in fold_class_mix(rare, np.arange(42), folds, ("no", "yes", "x"))
        if m["test"]["x"] == 0
    ]
    assert lacking and all("x" in m["skewed"] for m in lacking)
