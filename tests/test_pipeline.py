"""Input pipelines: batches, normalisation, per-epoch seeded shuffling, tf.data equivalence."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mriscan.errors import ConfigError
from mriscan.pipeline import StoreDataset, make_tf_dataset, resolve_pipeline
from mriscan.preprocess import normalize
from mriscan.store import ImageStore

pytestmark = pytest.mark.backend


def test_pydataset_batches_cover_the_split(small_store):
    with ImageStore.open(small_store) as st:
        idx = np.arange(5, 75)
        ds = StoreDataset(st, idx, batch_size=16, shuffle=True, seed=3)
        assert len(ds) == 5
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        x, y = np.concatenate(xs), np.concatenate(ys)
        assert x.shape == (70, 32, 32, 1) and x.dtype == np.float32
        imgs, labels = st.read_batch(idx)
        # every sample exactly once, normalised like the kernel does
        ref = {bytes(normalize(im)): lab for im, lab in zip(imgs, labels, strict=True)}
        got = {bytes(xi[..., 0]): yi for xi, yi in zip(x, y, strict=True)}
        assert got.keys() == ref.keys()
        assert all(got[k] == ref[k] for k in ref)
        first = ds[0][1].copy()
        ds.on_epoch_end()
        order1 = ds._order.copy()
        ds2 = StoreDataset(st, idx, batch_size=16, shuffle=True, seed=3)
        ds2.on_epoch_end()
        np.testing.assert_array_equal(order1, ds2._order)  # seeded per epoch
        assert not np.array_equal(
            ds._order, StoreDataset(st, idx, batch_size=16, shuffle=True, seed=3)._order
        )
        assert first.shape == (16,)


def test_drop_remainder_and_errors(small_store):
    with ImageStore.open(small_store) as st:
        assert len(StoreDataset(st, range(70), batch_size=16, drop_remainder=True)) == 5
        assert len(StoreDataset(st, range(65), batch_size=16, drop_remainder=True)) == 4
        assert len(StoreDataset(st, range(65), batch_size=16, drop_remainder=False)) == 5
        with pytest.raises(ConfigError, match="split is empty"):
            StoreDataset(st, [], batch_size=4)
        with pytest.raises(IndexError):
            StoreDataset(st, range(10), batch_size=4)[3]


def test_tfdata_matches_pydataset(small_store):
    if keras.backend.backend() != "tensorflow":
        with pytest.raises(ConfigError, match="needs the TensorFlow backend"):
            resolve_pipeline("tfdata")
        return
    with ImageStore.open(small_store) as st:
        idx = np.arange(60)
        py = StoreDataset(st, idx, batch_size=16, shuffle=True, seed=1)
        tfds, per_epoch = make_tf_dataset(st, idx, batch_size=16, shuffle=True, seed=1, epochs=2)
        batches = list(tfds.as_numpy_iterator())
        assert per_epoch == 4 and len(batches) == 8
        for i in range(4):
            np.testing.assert_array_equal(batches[i][0], py[i][0])
        py.on_epoch_end()
        np.testing.assert_array_equal(batches[4][1], py[0][1])
        # a run resumed at epoch 1 sees epoch 1's batches, not epoch 0's again
        resumed, _ = make_tf_dataset(
            st, idx, batch_size=16, shuffle=True, seed=1, epochs=2, first_epoch=1
        )
        rest = list(resumed.as_numpy_iterator())
        assert len(rest) == 4
        for a, b in zip(rest, batches[4:], strict=True):
            np.testing.assert_array_equal(a[0], b[0])
        with pytest.raises(ConfigError, match="first_epoch must be in"):
            make_tf_dataset(st, idx, epochs=2, first_epoch=2)


def test_resolve_pipeline():
    expected = "tfdata" if keras.backend.backend() == "tensorflow" else "pydataset"
    assert resolve_pipeline("auto") == expected
    with pytest.raises(ConfigError, match="pipeline must be one of"):
        resolve_pipeline("dali")
