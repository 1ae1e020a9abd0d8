"""Subprocess helper for test_hardware: trains a few steps under a TF strategy, prints JSON.

Usage: python _distributed_worker.py mirrored PRECISION
       python _distributed_worker.py multiworker PRECISION   (with TF_CONFIG set)
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import tensorflow as tf

mode, precision = sys.argv[1], sys.argv[2]
if mode == "mirrored":
    # Must happen before TensorFlow initialises its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from mriscan.hardware import setup_hardware  # noqa: E402
from mriscan.model import build_model  # noqa: E402

hw = setup_hardware(precision=precision, per_replica_batch=32)
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
n, s = 256, 32
y = (np.arange(n) % 2).astype("float32")
x = rng.normal(0, 1, (n, s, s, 1)).astype("float32")
x[y == 1, 8:16, 8:16, 0] += 3.0  # learnable: positives carry a bright square
with hw.scope():
    model = build_model(
        s, filters=(8, 8, 16, 16), dropout=0.0, augment=False, dense_units=16, mirror=False
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(hw.global_batch)
before = float(model.evaluate(ds, verbose=0)[0])
hist = model.fit(ds, epochs=4, verbose=0)
after = float(model.evaluate(ds, verbose=0)[0])

replicas_equal = True
for v in model.trainable_variables:
    values = hw.strategy.experimental_local_results(v.value)
    first = np.asarray(values[0])
    replicas_equal &= all(np.array_equal(first, np.asarray(o)) for o in values[1:])
# BatchNorm moving statistics are per-replica by design; the trained weights must agree.
digest = hashlib.sha256(b"".join(np.asarray(v.value).tobytes() for v in model.trainable_variables))
print(
    json.dumps(
        {
            "replicas": hw.replicas,
            "global_batch": hw.global_batch,
            "precision": hw.precision,
            "strategy": hw.strategy_name,
            "local_values": len(values),
            "before": before,
            "after": after,
            "losses": [float(v) for v in hist.history["loss"]],
            "replicas_equal": bool(replicas_equal),
            "weights_sha": digest.hexdigest(),
            "optimizer": type(model.optimizer).__name__,
        }
    )
)
