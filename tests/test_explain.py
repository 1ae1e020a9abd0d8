"""Grad-CAM sanity: when the label is a bright blob at a known place, the heatmap peaks there."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mriscan.explain import grad_cam, save_overlay
from mriscan.model import build_model

pytestmark = pytest.mark.backend


def _blob_task(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 32, 32, 1)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    x[y == 1, 4:12, 4:12, 0] += 3.0  # the evidence: top-left
    return x, y


def test_heatmap_peaks_on_the_blob(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _blob_task(256)
    model = build_model(32, filters=(8, 16, 16, 16), dropout=0.0, augment=False, dense_units=16)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    xt, yt = _blob_task(40, seed=1)
    acc = float(np.mean((np.asarray(model.predict(xt, verbose=0)).ravel() > 0.5) == yt))
    assert acc > 0.9  # the model learned the task, so its evidence is the blob
    cams = grad_cam(model, xt[yt == 1])
    assert cams.shape == (20, 32, 32) and cams.max() <= 1.0 and cams.min() >= 0.0
    peaks = [np.unravel_index(np.argmax(c), c.shape) for c in cams]
    on_blob = [py < 16 and px < 16 for py, px in peaks]
    assert np.mean(on_blob) >= 0.8, peaks
    png = save_overlay(xt[yt == 1][0, ..., 0], cams[0], tmp_path / "cam.png", title="blob")
    assert png.stat().st_size > 1000
