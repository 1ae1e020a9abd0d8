"""float32 vs mixed_float16 training speed on a GPU under KERAS_BACKEND=jax, with and without
the in-model augmentation layers.

Usage (TensorFlow need not be installed): KERAS_BACKEND=jax python bench/gpu_precision.py
Prints one JSON line per (precision, augment): seconds of the first (compiling) epoch, then
images/s of the following epochs, and the device name.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np

from mriscan.config import ModelConfig
from mriscan.model import build_model


def measure(precision: str, augment: bool, *, batch: int = 256, epochs: int = 3) -> dict:
    """Compile time and images/s of `fit` for one dtype policy on synthetic 128² data."""
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(filters=(16, 32, 64, 128), augment=augment, mirror=True)
    model = build_model(128, cfg)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 8, 128, 128, 1)).astype("float32")
    y = (rng.random(batch * 8) > 0.5).astype("float32")
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compiles
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    dt = time.perf_counter() - t0
    return {
        "precision": precision,
        "augment": augment,
        "first_epoch_s": round(first, 2),
        "images_per_s": round(epochs * len(x) / dt, 1),
        "device": str(jax.devices()[0]),
        "batch": batch,
    }


if __name__ == "__main__":
    for p, aug in (("mixed_float16", False), ("float32", False), ("mixed_float16", True),
                   ("float32", True)):  # fmt: skip
        print(json.dumps(measure(p, aug)), flush=True)
