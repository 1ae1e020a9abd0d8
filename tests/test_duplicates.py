"""Perceptual signatures and near-duplicate groups on small synthetic slices."""

from __future__ import annotations

import numpy as np
import pytest

from mriscan.duplicates import SIGNATURE_SIZE, duplicate_groups, same_label_links, signature
from mriscan.errors import ConfigError
from mriscan.preprocess import preprocess


def _tilted_head(angle: float, seed: int, radii: tuple[float, float] = (40, 30)) -> np.ndarray:
    """A 96×96 elliptical head with a random texture, rotated by ``angle`` degrees."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    head = (((yy - 47.5) / radii[0]) ** 2 + ((xx - 47.5) / radii[1]) ** 2 < 1) * 100.0
    head += ndimage.gaussian_filter(rng.normal(0, 40, (96, 96)), 3) * (head > 0)
    return np.clip(ndimage.rotate(head, angle, reshape=False, order=1), 0, 255).astype(np.uint8)


def test_signature_is_the_unaligned_whole_slice_thumbnail():
    img = _tilted_head(10.0, 0)
    sig = signature(img)
    assert sig.shape == (SIGNATURE_SIZE, SIGNATURE_SIZE) and sig.dtype == np.uint8
    thumb = dict(size=SIGNATURE_SIZE, crop=False, aspect="stretch", align=False)
    np.testing.assert_array_equal(sig, preprocess(img, **thumb, smooth=0.0))
    # whatever the store's low-pass: the signature's threshold was calibrated without one
    assert not np.array_equal(sig, preprocess(img, **thumb, smooth=1.0))


def test_copies_group_together_and_different_heads_do_not():
    a, b = _tilted_head(10.0, 0), _tilted_head(-30.0, 1, radii=(25, 44))
    a_copy = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)  # re-encoded copy
    groups = duplicate_groups(np.stack([signature(x) for x in (a, a_copy, b)]))
    assert groups[0] == groups[1] != groups[2]


def test_copies_under_two_labels_are_not_one_split_group():
    """A chain a (label 0) ~ a' (label 1) ~ a'' (label 1): only the same-label link joins."""
    a = _tilted_head(10.0, 0)
    copies = [np.clip(a.astype(int) + d, 0, 255).astype(np.uint8) for d in (0, 3, 6)]
    sigs = np.stack([signature(x) for x in copies])
    assert len(set(duplicate_groups(sigs).tolist())) == 1  # without labels: one group
    groups = duplicate_groups(sigs, labels=np.array([0, 1, 1]))
    assert groups[0] != groups[1] == groups[2]
    # blank slices of two labels are not joined either
    blanks = np.zeros((3, SIGNATURE_SIZE, SIGNATURE_SIZE), np.uint8)
    np.testing.assert_array_equal(duplicate_groups(blanks, labels=np.array([0, 1, 0])), [0, 1, 0])


def test_same_label_links_keeps_pairs_of_one_label_in_order():
    links = np.array([[0, 1], [1, 2], [3, 0], [2, 4]])
    got = same_label_links(links, np.array([0, 0, 1, 0, 1]))
    np.testing.assert_array_equal(got, [[0, 1], [3, 0], [2, 4]])
    assert same_label_links(np.empty((0, 2), np.int64), np.array([0])).shape == (0, 2)


def test_labels_of_another_length_are_an_error():
    sigs = np.zeros((2, SIGNATURE_SIZE, SIGNATURE_SIZE), np.uint8)
    with pytest.raises(ConfigError, match="3 labels for 2 signatures"):
        duplicate_groups(sigs, labels=np.array([0, 1, 1]))
    with pytest.raises(ConfigError, match="position 5"):
        same_label_links(np.array([[0, 5]]), np.array([0, 1]))


def test_a_blank_slice_is_a_near_duplicate_of_a_blank_training_slice_of_its_grey_level():
    """Constant thumbnails correlate with nothing: a blank copy of a blank training slice was
    scored as unseen (tester28 MED); it now matches a reference blank of the same value, as
    duplicate_groups joins identical blanks, and no other blank or head."""
    from mriscan.duplicates import near_duplicates_of

    head = _tilted_head(10.0, 0)
    blank40, blank90 = np.full((50, 70), 40, np.uint8), np.full((30, 30), 90, np.uint8)
    reference = np.stack([signature(x) for x in (head, blank40)])
    query = np.stack([signature(x) for x in (np.full((80, 80), 40, np.uint8), blank90, head)])
    assert near_duplicates_of(query, reference).tolist() == [True, False, True]
    assert near_duplicates_of(query, reference[:1]).tolist() == [False, False, True]
    groups = duplicate_groups(np.concatenate([reference, query]))
    assert (groups[1] == groups[2]) and groups[1] != groups[3]  # the same rule as the groups
