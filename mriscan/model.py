"""The tumor classifier: a 4-block CNN in Keras 3 (only ``keras`` and ``keras.ops``: any backend).

A model file ``X.keras`` is saved with a model card ``X.json`` (``mriscan.artifacts.ModelCard``)
holding the ``PreprocessConfig``, class names and decision threshold, so prediction feeds the
model exactly what training did.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import keras

from mriscan.artifacts import ModelCard, ModelCardError
from mriscan.config import ModelConfig
from mriscan.errors import ConfigError, MriscanError

__all__ = [
    "MirrorDifference",
    "RandomGamma",
    "RandomHeadInversion",
    "build_model",
    "last_conv_layer_name",
    "load_model",
]

# z-scored slices rarely leave ±10; RandomContrast clips to value_range, so it must be wide
# (the Keras default of (0, 255) would destroy z-scored inputs; see DESIGN.md pitfalls).
_Z_RANGE = (-20.0, 20.0)


@keras.saving.register_keras_serializable(package="mriscan")
class MirrorDifference(keras.layers.Layer):
    """Appends |x − mirror(x)| (left-right) to the channels: where the slice is asymmetric."""

    def call(self, x):
        return keras.ops.concatenate([x, keras.ops.abs(x - keras.ops.flip(x, axis=2))], axis=-1)

    def compute_output_shape(self, input_shape):
        *lead, c = input_shape
        return (*lead, None if c is None else 2 * c)


class _IntensityAugmentation(keras.layers.Layer):
    """Shared mechanics of mriscan's intensity augmentations: one setting ``strength`` (0: off),
    a seed generator, the identity at inference or when off, and the per-image statistics the
    subclasses' ``_augment`` works with. Input and output (batch, S, S, C) float32."""

    _AXES = (1, 2, 3)

    def __init__(self, strength: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.strength = float(strength)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.strength == 0.0:
            return x
        ops = keras.ops
        lo = ops.min(x, axis=self._AXES, keepdims=True)
        hi = ops.max(x, axis=self._AXES, keepdims=True)
        y = self._augment(x, lo, hi)
        # rescaled to the slice's own mean and standard deviation: the augmentation changes the
        # slice's contrast, not its z-score statistics
        mean, std = (
            ops.mean(x, axis=self._AXES, keepdims=True),
            ops.std(x, axis=self._AXES, keepdims=True),
        )
        y_mean = ops.mean(y, axis=self._AXES, keepdims=True)
        y_std = ops.std(y, axis=self._AXES, keepdims=True)
        return (y - y_mean) / ops.maximum(y_std, 1e-6) * std + mean

    def _augment(self, x, lo, hi):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _head(self, x, lo, hi):
        """The head's mask (pixels brighter than the slice's minimum + 5% of its range) and its
        own extremes per image, shaped (batch, 1, 1, 1)."""
        ops = keras.ops
        head = x > lo + 0.05 * (hi - lo)
        big, small = ops.full_like(x, 3.0e38), ops.full_like(x, -3.0e38)
        h_lo = ops.min(ops.where(head, x, big), axis=self._AXES, keepdims=True)
        h_hi = ops.max(ops.where(head, x, small), axis=self._AXES, keepdims=True)
        return head, h_lo, h_hi

    def _per_image_uniform(self, x, low: float = 0.0, high: float = 1.0):
        """One uniform draw per image, shaped (batch, 1, 1, 1)."""
        shape = (keras.ops.shape(x)[0], 1, 1, 1)
        return keras.random.uniform(shape, minval=low, maxval=high, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="mriscan")
class RandomGamma(_IntensityAugmentation):
    """Training-time gamma change of a z-scored slice; the identity at inference.

    Each image (batch, S, S, C) float32 is mapped to [0, 1] by its own minimum and maximum,
    raised to a power γ drawn log-uniformly from [e^−``max_log_gamma``, e^``max_log_gamma``]
    (one γ per image), mapped back, and re-standardised to the image's own mean and standard
    deviation — a monotone, non-linear remapping of intensities such as another scanner,
    sequence or window gives, which a linear contrast change cannot imitate. Keras has no such
    layer; the method is the "random gamma" of medical-image augmentation libraries (e.g.
    TorchIO ``RandomGamma``, Pérez-García et al. 2021), where γ is also drawn log-uniformly.
    """

    def __init__(self, max_log_gamma: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(max_log_gamma, seed, **kwargs)

    @property
    def max_log_gamma(self) -> float:
        return self.strength

    def _augment(self, x, lo, hi):
        ops = keras.ops
        log_g = self._per_image_uniform(x, -self.strength, self.strength)
        return ops.power(ops.clip((x - lo) / ops.maximum(hi - lo, 1e-6), 0.0, 1.0), ops.exp(log_g))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_log_gamma": self.strength, "seed": self.seed}


class _HeadAugmentation(_IntensityAugmentation):
    """An intensity augmentation of the head applied to each image with probability ``rate``."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(rate, seed, **kwargs)

    @property
    def rate(self) -> float:
        return self.strength

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.strength, "seed": self.seed}


@keras.saving.register_keras_serializable(package="mriscan")
class RandomHeadInversion(_HeadAugmentation):
    """Training-time reversal of the head's intensities with probability ``rate``.

    Input (batch, S, S, C) float32, z-scored per slice. Pixels brighter than the slice's
    background (its minimum + 5% of its range) are the head; with probability ``rate`` per
    image they become ``lo + hi − x`` (``lo``, ``hi``: the head's own extremes), the background
    stays, and the result is re-standardised to the slice's mean and standard deviation. CSF,
    dark on T1-weighted and bright on T2-weighted slices, swaps brightness, so a collection whose
    classes come from different sequences (e.g. figshare's T1-contrast tumors against Br35H's
    T2/FLAIR healthy slices) can no longer be separated by contrast alone. The idea of
    randomising contrast so that a network cannot use it is that of SynthSeg (Billot et al.,
    Medical Image Analysis 2023); Keras's ``RandomInvert`` would also invert the background.
    The identity at inference.
    """

    def _augment(self, x, lo, hi):
        ops = keras.ops
        head, h_lo, h_hi = self._head(x, lo, hi)
        flip = ops.logical_and(self._per_image_uniform(x) < self.strength, head)
        return ops.where(flip, h_lo + h_hi - x, x)


@keras.saving.register_keras_serializable(package="mriscan")
class RandomIntensityCurve(_HeadAugmentation):
    """Training-time random, generally non-monotone, remapping of the head's intensities with
    probability ``rate`` per image; the identity at inference.

    Input (batch, S, S, C) float32, z-scored per slice. The head (pixels brighter than the
    slice's minimum + 5% of its range, as in ``RandomHeadInversion``) is scaled to t in [0, 1]
    by its own extremes and mapped through the piecewise-linear curve through ``KNOTS`` + 1
    evenly spaced knots whose heights are drawn uniformly from [0, 1] (one curve per image),
    then back to the head's range; the background stays and the slice is re-standardised to
    its own mean and standard deviation. Tissues keep their boundaries but get random
    brightness orders (CSF brighter or darker than white matter, a lesion brighter or darker
    than cortex), so that no sequence's contrast can identify a class: the contrast
    randomisation of SynthSeg (Billot et al., Medical Image Analysis 2023), here as a random
    curve of the observed intensities rather than of label maps, since the slices have none.
    ``RandomHeadInversion`` is the one curve t -> 1 - t of this family.
    """

    KNOTS = 4

    def _augment(self, x, lo, hi):
        ops = keras.ops
        head, h_lo, h_hi = self._head(x, lo, hi)
        span = ops.maximum(h_hi - h_lo, 1e-6)
        t = ops.clip((x - h_lo) / span, 0.0, 1.0)
        k = self.KNOTS
        heights = keras.random.uniform(
            (ops.shape(x)[0], 1, 1, 1, k + 1), seed=self.seed_generator, dtype=x.dtype
        )
        # hat functions of the knots: weights of linear interpolation between them
        hats = ops.relu(1.0 - ops.abs(t[..., None] * k - ops.arange(k + 1, dtype=x.dtype)))
        curved = h_lo + ops.sum(hats * heights, axis=-1) * span
        apply = ops.logical_and(self._per_image_uniform(x) < self.strength, head)
        return ops.where(apply, curved, x)


def build_model(
    image_size: int = 128,
    config: ModelConfig | None = None,
    *,
    num_classes: int = 2,
    seed: int | None = None,
    **overrides: Any,
) -> keras.Model:
    """Build the 4-conv-block classifier that ``mriscan.train`` trains by default.

    Parameters
    ----------
    image_size : int
        Input side S; inputs are (batch, S, S, channels) float32, normalised per image.
    config : ModelConfig, optional
        The architecture and augmentation (default ``ModelConfig()``, the training default).
    num_classes : int
        K >= 2. Two classes: one sigmoid output (probability of class 1); more: K softmax
        outputs.
    seed : int, optional
        Seed of the augmentation layers.
    **overrides
        ``ModelConfig`` fields replacing those of ``config`` (e.g. ``filters=(8, 8, 16, 16)``).

    Returns
    -------
    keras.Model
        Output (batch, 1) sigmoid for two classes, (batch, K) softmax otherwise; float32.

    Raises
    ------
    ConfigError
        If ``image_size`` < 16 or a setting is invalid.
    """
    cfg = config if config is not None else ModelConfig()
    if overrides:
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except TypeError as exc:
            raise ConfigError(f"build_model: {exc}") from exc
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2. Received: {num_classes!r}.")
    if image_size < 16:
        raise ConfigError(f"image_size must be >= 16. Received: image_size={image_size}.")
    channels, filters, convs_per_block = cfg.channels, cfg.filters, cfg.convs_per_block
    dropout, block_dropout, dense_units = cfg.dropout, cfg.block_dropout, cfg.dense_units
    augment, rotation, zoom, translation = cfg.augment, cfg.rotation, cfg.zoom, cfg.translation
    batch_norm, bn_momentum, mirror = cfg.batch_norm, cfg.bn_momentum, cfg.mirror
    inputs = keras.Input((image_size, image_size, channels), name="slice")
    x = inputs
    if augment and cfg.invert:
        x = RandomHeadInversion(cfg.invert, seed=seed, name="aug_invert")(x)
    if augment and cfg.curve:
        x = RandomIntensityCurve(cfg.curve, seed=seed, name="aug_curve")(x)
    if augment and cfg.gamma:
        x = RandomGamma(cfg.gamma, seed=seed, name="aug_gamma")(x)
    if augment and cfg.noise:
        # inputs are z-scored per slice, so a standard deviation of 1 is the slice's own
        x = keras.layers.GaussianNoise(cfg.noise, seed=seed, name="aug_noise")(x)
    if augment and cfg.blur:
        x = keras.layers.RandomGaussianBlur(
            factor=1.0,
            kernel_size=7,
            sigma=(0.0, cfg.blur),
            value_range=_Z_RANGE,
            seed=seed,
            name="aug_blur",
        )(x)
    x = MirrorDifference(name="mirror_diff")(x) if mirror else x
    if augment:
        x = keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip")(x)
        # "nearest" repeats the border, which is background: a constant fill would paint
        # regions of a value that normalised inputs never hold at inference time
        if rotation:
            x = keras.layers.RandomRotation(
                rotation, fill_mode="nearest", seed=seed, name="aug_rotate"
            )(x)
        if zoom:
            x = keras.layers.RandomZoom(
                (-zoom, zoom), fill_mode="nearest", seed=seed, name="aug_zoom"
            )(x)
        if translation:
            x = keras.layers.RandomTranslation(
                translation, translation, fill_mode="nearest", seed=seed, name="aug_translate"
            )(x)
        if cfg.contrast:
            x = keras.layers.RandomContrast(
                cfg.contrast, value_range=_Z_RANGE, seed=seed, name="aug_contrast"
            )(x)
    for b, f in enumerate(filters, start=1):
        for c in range(1, convs_per_block + 1):
            x = keras.layers.Conv2D(
                f, 3, padding="same", use_bias=not batch_norm, name=f"block{b}_conv{c}"
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"block{b}_bn{c}")(x)
            x = keras.layers.Activation("relu", name=f"block{b}_relu{c}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        if block_dropout:
            x = keras.layers.SpatialDropout2D(block_dropout, name=f"block{b}_drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_drop")(x)
    # float32 output keeps the sigmoid and the loss numerically safe under mixed precision
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tumor_prob")(x)
    else:
        outputs = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="class_prob"
        )(x)
    return keras.Model(inputs, outputs, name="mriscan_cnn")


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last convolution (the Grad-CAM target)."""
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise MriscanError(f"Model {model.name} has no Conv2D layer.")
    return convs[-1]


def load_model(path: str | os.PathLike[str]) -> tuple[keras.Model, ModelCard]:
    """Load a ``.keras`` model in safe mode, with its model card (``X.json`` beside it).

    Returns
    -------
    model : keras.Model
    card : ModelCard
        ``card.preprocess`` (PreprocessConfig), ``card.class_names``, ``card.threshold``.

    Raises
    ------
    MriscanError
        If the model file is missing.
    ModelCardError
        If the card is missing or invalid, or its slice size is not the model's input size.
    """
    path = Path(path)
    if not path.is_file():
        raise MriscanError(
            f"No model file at {path}. Train one with `mriscan train` or pass --model PATH."
        )
    card = ModelCard.load(path)  # validated before the (slower) model load
    card.check_model_file(path)
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    outputs = int(model.output_shape[-1])
    expected = 1 if len(card.class_names) == 2 else len(card.class_names)
    if outputs != expected:
        raise ModelCardError(
            f"{path}: the model has {outputs} output(s) but its card names "
            f"{len(card.class_names)} classes {list(card.class_names)}; the card does not belong "
            "to this model. Retrain, or restore the card."
        )
    shape = tuple(model.input_shape)
    size = card.preprocess.size
    if shape[1:3] != (size, size):
        raise ModelCardError(
            f"{path}: the model takes {shape[1:3]} inputs but its card says {size}×{size} "
            "slices; the card does not belong to this model. Retrain, or restore the card."
        )
    return model, card
