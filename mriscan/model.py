"""The tumor classifier: a 4-block CNN in Keras 3 (only ``keras`` and ``keras.ops``: any backend).

A model file ``X.keras`` is saved with a sidecar ``X.json`` holding the ``PreprocessConfig``,
class names and decision threshold, so prediction feeds the model exactly what training did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import keras

from mriscan.errors import ConfigError, MriscanError
from mriscan.preprocess import PreprocessConfig

__all__ = ["MirrorDifference", "ModelInfo", "build_model", "load_model", "save_model_info"]

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


def build_model(
    image_size: int = 128,
    *,
    channels: int = 1,
    filters: tuple[int, int, int, int] = (32, 64, 128, 256),
    convs_per_block: int = 1,
    dropout: float = 0.3,
    block_dropout: float = 0.0,
    dense_units: int = 128,
    augment: bool = True,
    rotation: float = 0.05,
    zoom: float = 0.1,
    translation: float = 0.0,
    batch_norm: bool = True,
    bn_momentum: float = 0.9,
    mirror: bool = False,
    seed: int | None = None,
) -> keras.Model:
    """Build the 4-conv-block classifier.

    Parameters
    ----------
    image_size : int
        Input side S; inputs are (batch, S, S, channels) float, normalised per image.
    channels : int
    filters : tuple of 4 int
        Width of each conv block (3×3 convolutions, then 2×2 max pooling).
    convs_per_block : int
        Convolutions in each block.
    dropout : float
        Dropout in the dense head.
    block_dropout : float
        Spatial dropout after each conv block (0 by default: on ~200 slices it stalled
        training entirely, see bench/ACCURACY.md).
    dense_units : int
        Width of the dense layer of the head.
    augment : bool
        Random flips, rotation, zoom, translation and contrast, active only in training.
    rotation, zoom, translation : float
        Strength of each random transform: rotation as a fraction of a full turn (±),
        zoom and translation as a fraction of the side (±); 0 leaves it out.
    batch_norm : bool
        Batch normalisation after every convolution.
    bn_momentum : float
        Momentum of the batch-norm moving statistics. Keras's 0.99 averages over ~100 steps;
        a 45-epoch run on ~150 slices has only ~225 steps, so the inference statistics lagged
        the weights and predictions collapsed to one class (bench/ACCURACY.md).
    mirror : bool
        Add |x − mirror(x)| as extra channels before augmentation: slices are cropped to the
        head and centred, a healthy brain is nearly symmetric and most tumors are not.
    seed : int, optional
        Seed of the augmentation layers.

    Returns
    -------
    keras.Model
        One sigmoid output (probability of class 1), computed in float32.
    """
    if image_size < 16:
        raise ConfigError(f"image_size must be >= 16. Received: image_size={image_size}.")
    if len(filters) != 4 or any(f < 1 for f in filters):
        raise ConfigError(f"filters must be 4 positive integers. Received: filters={filters}.")
    for name, value in (
        ("dropout", dropout),
        ("block_dropout", block_dropout),
        ("rotation", rotation),
        ("zoom", zoom),
        ("translation", translation),
    ):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1). Received: {name}={value}.")
    inputs = keras.Input((image_size, image_size, channels), name="slice")
    x = MirrorDifference(name="mirror_diff")(inputs) if mirror else inputs
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
        x = keras.layers.RandomContrast(0.2, value_range=_Z_RANGE, seed=seed, name="aug_contrast")(
            x
        )
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
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tumor_prob")(x)
    return keras.Model(inputs, outputs, name="mriscan_cnn")


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last convolution (the Grad-CAM target)."""
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise MriscanError(f"Model {model.name} has no Conv2D layer.")
    return convs[-1]


class ModelInfo(dict):
    """The sidecar of a saved model: ``preprocess``, ``class_names``, ``threshold``, ..."""

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing the model was trained with."""
        return PreprocessConfig.from_dict(self["preprocess"])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names; the model outputs the probability of ``class_names[1]``."""
        return tuple(self["class_names"])

    @property
    def tta(self) -> bool:
        """Whether predictions average the slice and its mirror image (as in validation)."""
        return bool(self.get("tta", False))

    @property
    def threshold(self) -> float:
        """Decision threshold chosen on validation data."""
        return float(self.get("threshold", 0.5))


def info_path(model_path: str | os.PathLike[str]) -> Path:
    """Path of the sidecar of ``model_path`` (``X.keras`` → ``X.json``)."""
    return Path(model_path).with_suffix(".json")


def save_model_info(model_path: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write the sidecar JSON of a model atomically."""
    path = info_path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike[str]) -> tuple[keras.Model, ModelInfo]:
    """Load a ``.keras`` model in safe mode, with its preprocessing sidecar.

    Returns
    -------
    model : keras.Model
    info : ModelInfo
        ``info.preprocess`` (PreprocessConfig), ``info.class_names``, ``info.threshold``.
    """
    path = Path(path)
    if not path.is_file():
        raise MriscanError(
            f"No model file at {path}. Train one with `mriscan train` or pass --model PATH."
        )
    sidecar = info_path(path)
    if not sidecar.is_file():
        raise MriscanError(
            f"{sidecar} is missing: it holds the preprocessing the model was "
            "trained with. Keep it next to the .keras file."
        )
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    return model, ModelInfo(json.loads(sidecar.read_text()))
