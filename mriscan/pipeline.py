"""Input pipelines from an ImageStore: a Keras ``PyDataset`` (any backend) and ``tf.data``.

Both read batches with threads (never forked processes: TensorFlow, Numba, Blosc and zarr all
misbehave after ``fork``), shuffle per epoch from a seed, and normalise with the kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from mriscan.config import PIPELINES
from mriscan.errors import ConfigError
from mriscan.preprocess import normalize
from mriscan.store import ImageStore

__all__ = ["StoreDataset", "load_batch", "make_tf_dataset", "resolve_pipeline"]


def _epoch_order(indices: np.ndarray, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Sample order of one epoch (a fresh seeded permutation per epoch when shuffling)."""
    if not shuffle:
        return indices
    return np.random.default_rng([seed, epoch]).permutation(indices)


def load_batch(store: ImageStore, idx: np.ndarray, normalization: str, threshold: float):
    """Read and normalise one batch: (n, S, S, 1) float32 and (n,) float32 labels."""
    images, labels = store.read_batch(idx)
    x = normalize(images, normalization, threshold=threshold)[..., None]
    return x, labels.astype(np.float32)


class StoreDataset(keras.utils.PyDataset):
    """Batches of (images, labels) from a store, shuffled each epoch, read by worker threads.

    Parameters
    ----------
    store : ImageStore
    indices : sequence of int
        The samples of this split.
    batch_size : int
        Global batch size.
    shuffle : bool
    seed : int
    workers : int
        Reader threads (Keras prefetches up to ``max_queue_size`` batches ahead).
    drop_remainder : bool
        Drop a last partial batch smaller than ``min_batch`` (a batch of one sample makes batch
        normalisation statistics meaningless).
    min_batch : int
    """

    def __init__(
        self,
        store: ImageStore,
        indices: Sequence[int],
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 2,
        max_queue_size: int = 8,
        drop_remainder: bool = False,
        min_batch: int = 2,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1. Received: batch_size={batch_size}.")
        self.store = store
        self.indices = np.asarray(indices, np.int64)
        if self.indices.size == 0:
            raise ConfigError("A pipeline needs at least one sample; the split is empty.")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        rem = self.indices.size % batch_size
        self.drop_remainder = (
            drop_remainder and self.indices.size >= batch_size and 0 < rem < min_batch
        )
        self.epoch = 0
        self._order = _epoch_order(self.indices, 0, seed, shuffle)
        self._norm = store.config.normalization
        self._thr = store.config.threshold

    def __len__(self) -> int:
        n = self.indices.size / self.batch_size
        return math.floor(n) if self.drop_remainder else math.ceil(n)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range [0, {len(self)})")
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        return load_batch(self.store, idx, self._norm, self._thr)

    def on_epoch_end(self) -> None:
        """Reshuffle for the next epoch."""
        self.epoch += 1
        self._order = _epoch_order(self.indices, self.epoch, self.seed, self.shuffle)


def make_tf_dataset(
    store: ImageStore,
    indices: Sequence[int],
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    epochs: int = 1,
    first_epoch: int = 0,
    drop_remainder: bool = False,
):
    """A ``tf.data.Dataset`` over epochs ``first_epoch``..``epochs - 1``, read in parallel
    (AUTOTUNE) and prefetched.

    Each element is one batch; epoch ``e`` uses the same seeded permutation as ``StoreDataset``
    (so a run resumed at ``first_epoch`` sees the batches an uninterrupted run would).
    Returns the dataset and the number of batches per epoch.
    """
    import tensorflow as tf

    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        raise ConfigError("A pipeline needs at least one sample; the split is empty.")
    drop = drop_remainder and idx.size >= batch_size and 0 < idx.size % batch_size < 2
    per_epoch = idx.size // batch_size if drop else math.ceil(idx.size / batch_size)
    s = store.image_size
    norm, thr = store.config.normalization, store.config.threshold

    def read(k):
        k = int(k)
        order = _epoch_order(idx, k // per_epoch, seed, shuffle)
        b = k % per_epoch
        return load_batch(store, order[b * batch_size : (b + 1) * batch_size], norm, thr)

    def tf_read(k):
        x, y = tf.numpy_function(read, [k], (tf.float32, tf.float32), stateful=False)
        x.set_shape((None, s, s, 1))
        y.set_shape((None,))
        return x, y

    if not 0 <= first_epoch < epochs:
        raise ConfigError(f"first_epoch must be in [0, {epochs}). Received: {first_epoch}.")
    ds = tf.data.Dataset.range(first_epoch * per_epoch, per_epoch * epochs)
    ds = ds.map(tf_read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE), per_epoch


def resolve_pipeline(requested: str) -> str:
    """``auto`` → ``tfdata`` on TensorFlow (one iterator for all epochs; on short epochs it
    measured 0.6–1.1× ``pydataset``'s speed, bench/RESULTS.md), else ``pydataset``."""
    if requested not in PIPELINES:
        raise ConfigError(f"pipeline must be one of {PIPELINES}. Received: {requested!r}.")
    if requested == "tfdata" and keras.backend.backend() != "tensorflow":
        raise ConfigError(
            "pipeline 'tfdata' needs the TensorFlow backend "
            f"(KERAS_BACKEND is {keras.backend.backend()!r}); use 'pydataset'."
        )
    if requested == "auto":
        return "tfdata" if keras.backend.backend() == "tensorflow" else "pydataset"
    return requested
