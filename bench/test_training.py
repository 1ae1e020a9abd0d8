"""Input-pipeline overhead in model.fit, pipeline-only throughput, and float32 vs bfloat16.

The store holds the real slices replicated to 2,048 (see test_store.replicate).
"""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
from conftest import record, target

from mriscan.model import build_model
from mriscan.pipeline import StoreDataset, make_tf_dataset
from mriscan.preprocess import normalize, preprocess_batch
from mriscan.store import ImageStore

N = 2048
STEPS = 24  # timed training steps per measurement


@pytest.fixture(scope="module")
def train_store(real_images, tmp_path_factory):
    from test_store import replicate

    data = replicate(preprocess_batch(real_images, size=128), N)
    path = tmp_path_factory.mktemp("train") / "t.zarr"
    with ImageStore.create(path, 128) as st:
        st.set_class_names(["no", "yes"])
        st.append(data, np.arange(N) % 2)
        st.commit()
    return path


def _fit_seconds(model, data, steps: int) -> float:
    """Seconds for ``steps`` training steps after a warm-up epoch of 3 steps."""
    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)
    t0 = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - t0


def _compiled(precision: str = "float32"):
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(128, filters=(16, 32, 64, 128))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy")
    keras.mixed_precision.set_dtype_policy("float32")
    return model


@pytest.mark.parametrize("feed", ["in_memory", "pydataset", "tfdata"])
def test_fit_pipeline_overhead(benchmark, train_store, feed):
    if feed == "tfdata" and keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data needs the TensorFlow backend")
    st = ImageStore.open(train_store)
    idx = np.arange(N)
    if feed == "in_memory":
        import tensorflow as tf

        x = normalize(st.read_batch(idx)[0])[..., None]
        y = st.labels.astype(np.float32)
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N).batch(32).repeat()
    elif feed == "pydataset":
        data = StoreDataset(st, idx, batch_size=32, shuffle=True, workers=2)
    else:
        data, _ = make_tf_dataset(st, idx, batch_size=32, shuffle=True, epochs=4)
    model = _compiled()
    seconds = benchmark.pedantic(lambda: _fit_seconds(model, data, STEPS), rounds=2, iterations=1)
    record("model.fit steps/s (128², batch 32)", feed, STEPS / seconds, "steps/s")
    if feed != "in_memory":
        target(
            f"fit fed by {feed} vs in-memory tensors (≤ 5% slower ⇔ ≥ 0.95×)",
            "model.fit steps/s (128², batch 32)",
            feed,
            ["in_memory"],
            0.95,
        )


@pytest.mark.parametrize("feed", ["pydataset", "tfdata"])
def test_pipeline_alone(benchmark, train_store, feed):
    if feed == "tfdata" and keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data needs the TensorFlow backend")
    st = ImageStore.open(train_store)
    idx = np.arange(N)
    if feed == "pydataset":
        ds = StoreDataset(st, idx, batch_size=32, shuffle=True, workers=2)

        def run():
            # what Keras does: a thread pool pulling batches ahead
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                for x, _ in pool.map(ds.__getitem__, range(len(ds))):
                    assert x.shape[1:] == (128, 128, 1)
    else:
        ds, _ = make_tf_dataset(st, idx, batch_size=32, shuffle=True)

        def run():
            for x, _ in ds:
                assert x.shape[1:] == (128, 128, 1)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    record(
        "pipeline alone (read + normalise), batch 32",
        feed,
        N / benchmark.stats.stats.median,
        "img/s",
    )


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_training_throughput(benchmark, train_store, precision):
    import tensorflow as tf

    st = ImageStore.open(train_store)
    x = normalize(st.read_batch(np.arange(N))[0])[..., None]
    data = tf.data.Dataset.from_tensor_slices((x, st.labels.astype(np.float32)))
    data = data.batch(32).repeat()
    model = _compiled(precision)
    seconds = benchmark.pedantic(lambda: _fit_seconds(model, data, 12), rounds=1, iterations=1)
    record("training throughput on CPU (128², batch 32)", precision, 12 * 32 / seconds, "img/s")
