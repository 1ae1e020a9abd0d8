"""The CNN: shapes, float32 output under mixed precision, save/load with the sidecar."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from mriscan.artifacts import ModelCard
from mriscan.errors import ConfigError, MriscanError
from mriscan.model import (
    MirrorDifference,
    RandomGamma,
    RandomHeadInversion,
    RandomIntensityCurve,
    build_model,
    last_conv_layer_name,
    load_model,
)
from mriscan.preprocess import PreprocessConfig

pytestmark = pytest.mark.backend


def test_shapes_and_structure():
    model = build_model(64, filters=(8, 8, 16, 16))
    out = model(np.zeros((3, 64, 64, 1), np.float32), training=False)
    assert tuple(out.shape) == (3, 1)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    pools = [la for la in model.layers if isinstance(la, keras.layers.MaxPooling2D)]
    assert len(convs) == 4 and len(pools) == 4
    assert last_conv_layer_name(model) == "block4_conv1"
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_augmentation_strengths_choose_the_layers():
    names = {la.name for la in build_model(32, filters=(4, 4, 4, 4), rotation=0.0).layers}
    assert "aug_rotate" not in names and {"aug_flip", "aug_zoom"} <= names
    assert "aug_translate" not in names
    model = build_model(32, filters=(4, 4, 4, 4), translation=0.1)
    assert model.get_layer("aug_translate").height_factor == 0.1
    # the fill repeats the (background) border instead of painting a constant
    assert model.get_layer("aug_zoom").fill_mode == "nearest"
    with pytest.raises(ConfigError, match="zoom must be in"):
        build_model(32, zoom=1.5)


def test_intensity_augmentations_come_before_the_mirror_channel_only_when_set():
    names = [la.name for la in build_model(32, filters=(4, 4, 4, 4)).layers]
    assert not {"aug_gamma", "aug_noise", "aug_blur"} & set(names)
    assert "aug_contrast" in names  # the default, as before these settings existed
    assert "aug_contrast" not in {la.name for la in build_model(32, contrast=0.0).layers}
    names = [
        la.name
        for la in build_model(32, filters=(4, 4, 4, 4), gamma=0.4, noise=0.1, blur=1.0).layers
    ]
    assert names.index("aug_gamma") < names.index("aug_noise") < names.index("aug_blur")
    assert names.index("aug_blur") < names.index("mirror_diff")
    with pytest.raises(ConfigError, match="blur must be in"):
        build_model(32, blur=5.0)
    with pytest.raises(ConfigError, match="gamma must be in"):
        build_model(32, gamma=-0.1)


def test_random_gamma_is_monotone_keeps_mean_and_std_and_is_off_at_inference():
    rng = np.random.default_rng(0)
    # a skewed, MRI-like intensity distribution: background near the minimum, a bright tail
    x = rng.gamma(1.5, 1.0, size=(6, 16, 16, 1)).astype(np.float32)
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    layer = RandomGamma(0.5, seed=3)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    assert np.abs(y - x).mean() > 0.02  # it changed the slices
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), rtol=1e-3)
    for i in range(len(x)):  # a monotone remapping keeps the order of the pixels
        order = np.argsort(x[i].ravel(), kind="stable")
        assert np.all(np.diff(y[i].ravel()[order]) >= -1e-5)


def _ramp_heads(n: int) -> np.ndarray:
    """``n`` z-scored 16x16 slices whose head (rows and columns 4-11) is a ramp 1 → 2."""
    x = np.zeros((n, 16, 16, 1), np.float32)
    x[:, 4:12, 4:12, 0] = np.linspace(1.0, 2.0, 64).reshape(8, 8)
    return (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)


def test_head_inversion_swaps_head_intensities_keeps_background_and_is_off_at_inference():
    x = _ramp_heads(8)
    always = RandomHeadInversion(1.0, seed=0)
    np.testing.assert_array_equal(np.asarray(always(x, training=False)), x)
    y = np.asarray(always(x, training=True))
    head, back = x[0, 4:12, 4:12, 0], x[0, 0, 0, 0]
    # the ramp reversed: the brightest head pixel became the darkest and vice versa
    assert np.argmax(y[0, 4:12, 4:12, 0]) == np.argmin(head)
    assert np.argmin(y[0, 4:12, 4:12, 0]) == np.argmax(head)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), rtol=1e-3)
    assert np.all(y[:, 0, 0, 0] < y[:, 4:12, 4:12, 0].min(axis=(1, 2)))  # background stays below
    assert np.allclose(y[0, 0, 0, 0], y[0, 0, 15, 0]) and back < head.min()
    never = RandomHeadInversion(0.0, seed=0)
    np.testing.assert_array_equal(np.asarray(never(x, training=True)), x)
    half = np.asarray(RandomHeadInversion(0.5, seed=1)(np.repeat(x[:1], 64, 0), training=True))
    flipped = (np.abs(half - x[:1]).max(axis=(1, 2, 3)) > 1e-3).sum()
    assert 16 < flipped < 48  # about half of the images


def test_intensity_curve_reorders_head_tissues_keeps_background_and_is_off_at_inference():
    x = _ramp_heads(64)
    always = RandomIntensityCurve(1.0, seed=0)
    np.testing.assert_array_equal(np.asarray(always(x, training=False)), x)
    y = np.asarray(always(x, training=True))
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), rtol=1e-3)
    back = y[:, :4, :, 0].reshape(64, -1)
    assert np.ptp(back, axis=1).max() < 1e-5  # the background stays one value per slice
    steps = np.diff(y[:, 4:12, 4:12, 0].reshape(64, -1), axis=1)
    rising, falling = (steps > 1e-6).any(axis=1), (steps < -1e-6).any(axis=1)
    assert (rising & falling).sum() > 32  # most curves are non-monotone
    assert len({np.round(y[i, 8, 8, 0], 4) for i in range(64)}) > 32  # one curve per image
    never = RandomIntensityCurve(0.0, seed=0)
    np.testing.assert_array_equal(np.asarray(never(x, training=True)), x)
    half = np.asarray(RandomIntensityCurve(0.5, seed=1)(np.repeat(x[:1], 64, 0), training=True))
    changed = (np.abs(half - x[:1]).max(axis=(1, 2, 3)) > 1e-3).sum()
    assert 16 < changed < 48  # about half of the images
    assert "aug_curve" in [la.name for la in build_model(32, filters=(4,) * 4, curve=0.5).layers]
    assert "aug_curve" not in [la.name for la in build_model(32, filters=(4,) * 4).layers]
    with pytest.raises(ConfigError, match=r"curve must be in \[0, 1\]"):
        build_model(32, curve=1.5)


def test_batch_norm_momentum_is_short_enough_for_few_steps():
    bn = build_model(32, filters=(4, 4, 4, 4)).get_layer("block1_bn1")
    x = np.random.default_rng(0).normal(0.0, 3.0, (64, 8, 8, 4)).astype(np.float32)
    bn(x, training=True)
    var = keras.ops.convert_to_numpy(bn.moving_variance)
    # one batch moves the moving variance 10% of the way from 1 to ~9 (momentum 0.9, not 0.99)
    np.testing.assert_allclose(var, 0.9 * 1.0 + 0.1 * x.reshape(-1, 4).var(0), rtol=1e-3)


def test_output_is_float32_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(32, filters=(8, 8, 8, 8))
        assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
        out = model(np.zeros((1, 32, 32, 1), np.float32))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_augmentation_only_in_training():
    model = build_model(32, filters=(8, 8, 8, 8), dropout=0.0)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    a = np.asarray(model(x, training=False))
    b = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(a, b)


def test_validation():
    with pytest.raises(ConfigError, match="image_size must be >= 16"):
        build_model(8)
    with pytest.raises(ConfigError, match="filters must be 4 positive integers"):
        build_model(32, filters=(8, 8))


def test_model_module_imports_only_keras():
    src = Path(__import__("mriscan.model").model.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+(tensorflow|jax|torch)", src, re.M)


def test_save_and_load_roundtrip(tmp_path):
    model = build_model(32, filters=(8, 8, 8, 8))
    path = tmp_path / "m.keras"
    model.save(path)
    with pytest.raises(MriscanError, match=r"m\.json is missing"):
        load_model(path)
    cfg = PreprocessConfig(size=32)
    ModelCard(preprocess=cfg, class_names=("no", "yes"), threshold=0.42).save(path)
    loaded, info = load_model(path)
    assert info.preprocess == cfg and info.class_names == ("no", "yes")
    assert info.threshold == pytest.approx(0.42)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)),
        np.asarray(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(MriscanError, match="No model file"):
        load_model(tmp_path / "nope.keras")


def test_mirror_channel_is_zero_where_the_slice_is_symmetric(tmp_path):
    x = np.zeros((1, 8, 8, 1), np.float32)
    x[0, 2, 1, 0] = x[0, 2, 6, 0] = 1.0  # a symmetric pair
    x[0, 5, 2, 0] = 3.0  # one-sided
    out = np.asarray(MirrorDifference()(x))
    assert out.shape == (1, 8, 8, 2)
    np.testing.assert_array_equal(out[..., 0], x[..., 0])
    expected = np.zeros((8, 8), np.float32)
    expected[5, 2] = expected[5, 5] = 3.0
    np.testing.assert_array_equal(out[0, ..., 1], expected)
    model = build_model(32, filters=(4, 4, 4, 4), mirror=True)
    assert model.get_layer("block1_conv1").kernel.shape[2] == 2
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    xs = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded(xs, training=False)), np.asarray(model(xs, training=False)), atol=1e-6
    )
