"""experiments/box_supervision.py: the box masks, the augmented graph and the heatmap loss.

No training: these check that a box drawn into the preprocessed frame is where
``source_point`` says, that the mask follows the geometric augmentation, and that the loss
prefers a heatmap inside the box.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _experiments import load_experiment

from mriscan.model import build_model
from mriscan.preprocess import PreprocessConfig, source_point

bs = load_experiment("box_supervision")


def _tilted_head(h: int = 200, w: int = 260, degrees: float = 12.0) -> np.ndarray:
    """uint8 (h, w): a bright tilted ellipse off-centre on black, with an asymmetric blob."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.radians(degrees)
    cy, cx = 95.0, 140.0
    dy, dx = yy - cy, xx - cx
    u, v = dy * np.cos(a) - dx * np.sin(a), dy * np.sin(a) + dx * np.cos(a)
    img = np.where((u / 80) ** 2 + (v / 60) ** 2 <= 1, 120, 0)
    img[(yy - 70) ** 2 + (xx - 160) ** 2 < 150] = 250
    return img.astype(np.uint8)


def test_box_mask_is_where_source_point_puts_the_box():
    img = _tilted_head()
    cfg = PreprocessConfig(size=32)
    box = (0.55, 0.4, 0.2, 0.15)  # x_center, y_center, width, height (fractions)
    mask = bs.box_mask(img, box, cfg)
    assert mask.shape == (32, 32) and 0 < mask.mean() < 0.5
    h, w = img.shape
    for r, c in zip(*np.nonzero((mask == 0) | (mask == 1)), strict=True):
        sy, sx = source_point(img, float(r), float(c), cfg)
        inside = abs((sx + 0.5) / w - box[0]) <= box[2] / 2 and abs((sy + 0.5) / h - box[1]) <= (
            box[3] / 2
        )
        assert inside == (mask[r, c] == 1), (r, c)


def test_the_mask_follows_the_flip_and_inference_is_the_base_model():
    keras.utils.set_random_seed(0)
    base = build_model(32, num_classes=3, seed=0, rotation=0.0, zoom=0.0, contrast=0.0)
    inputs, t = bs.augmented_graph(base)
    probe = keras.Model(inputs, {"x": t["aug_flip"], "m": t["mask"], "p": t["class_prob"]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 1)).astype(np.float32)
    m = np.zeros((16, 32, 32, 1), np.float32)
    m[:, 4:10, 2:8] = 1.0  # on the left: a flip moves it right
    out = probe({"slice": x, "mask": m}, training=True)
    xa, ma = np.asarray(out["x"])[..., :1], np.asarray(out["m"])
    flipped = ma[:, 4:10, -8:-2].mean(axis=(1, 2, 3)) == 1.0
    assert 0 < flipped.sum() < 16  # both cases occur
    np.testing.assert_allclose(xa[flipped], x[flipped][:, :, ::-1], atol=1e-6)
    np.testing.assert_allclose(xa[~flipped], x[~flipped], atol=1e-6)
    p = np.asarray(probe({"slice": x, "mask": m}, training=False)["p"])
    np.testing.assert_allclose(p, np.asarray(base(x, training=False)), atol=1e-6)


@pytest.mark.parametrize("gradcam", [False, True])
def test_the_heatmap_loss_prefers_a_map_inside_the_box(gradcam):
    target = np.zeros((2, 6, 6, 1), np.float32)
    target[:, 1:3, 1:3] = 1.0
    feats = np.zeros((2, 6, 6, 4), np.float32)
    feats[0, 1:3, 1:3] = 1.0  # active in the box
    feats[1, 4:6, 4:6] = 1.0  # active elsewhere
    grads = np.ones_like(feats)
    loss = np.asarray(bs.cam_in_box_loss(feats, grads, target, gradcam))
    assert loss.shape == (2,)
    assert loss[0] < 0.01 < 5.0 < loss[1]


def test_the_soft_pointing_loss_follows_the_peak_not_the_mass():
    mask = np.zeros((2, 16, 16), np.float32)
    mask[:, 2:6, 2:6] = 1.0
    unit = np.full((2, 16, 16), 0.2, np.float32)
    unit[0, 3, 3] = 1.0  # the peak inside the box
    unit[1, 12, 12] = 1.0  # the peak outside, the box as warm as the rest
    loss = np.asarray(bs.peak_in_box_loss(unit, mask, 20.0))
    assert loss.shape == (2,)
    assert loss[0] < 0.1 < 2.0 < loss[1]
    scaled = np.asarray(bs.unit_map(np.ones((1, 4, 4), np.float32) * 3.0, 16))
    np.testing.assert_allclose(scaled, 1.0, atol=1e-5)
