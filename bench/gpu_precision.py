"""float32 vs mixed_float16 training throughput on a GPU under KERAS_BACKEND=jax.

Usage (TensorFlow need not be installed): KERAS_BACKEND=jax python bench/gpu_precision.py
Prints one JSON line per precision with images/s, and the device name.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np

from mriscan.model import build_model


def measure(precision: str, *, batch: int = 256, steps: int = 50, size: int = 128) -> dict:
    """Images/s of train steps for one dtype policy on synthetic data."""
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(size, filters=(16, 32, 64, 128))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 4, size, size, 1)).astype("float32")
    y = (rng.random(batch * 4) > 0.5).astype("float32")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compile + warm-up
    # one long fit: separate fit calls cost seconds each on JAX and hid the GPU (RESULTS.md)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=steps // 4, verbose=0)
    dt = time.perf_counter() - t0
    return {
        "precision": precision,
        "images_per_s": (steps // 4) * 4 * batch / dt,
        "device": str(jax.devices()[0]),
        "batch": batch,
    }


if __name__ == "__main__":
    for p in ("float32", "mixed_float16"):
        print(json.dumps(measure(p)), flush=True)
