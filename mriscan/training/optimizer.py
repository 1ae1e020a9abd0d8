"""The optimisation recipe: AdamW, warm-up + cosine decay, loss, metrics, class weights."""

from __future__ import annotations

import keras
import numpy as np

from mriscan.config import OptimizerConfig
from mriscan.hardware import Hardware

__all__ = ["class_weights", "compile_model"]


def compile_model(
    model: keras.Model,
    cfg: OptimizerConfig,
    hw: Hardware,
    steps_per_epoch: int,
    epochs: int,
    num_classes: int = 2,
) -> None:
    """Compile with AdamW, a linear warm-up then cosine decay to 0, cross-entropy, accuracy
    and AUC (binary cross-entropy for two classes, categorical on one-hot targets for more).

    The peak learning rate is ``cfg.learning_rate × global_batch / 32`` (linear scaling,
    Goyal et al. 2017); the warm-up starts at a tenth of it (Keras ``CosineDecay`` with
    ``warmup_target``). Binary cross-entropy uses ``cfg.label_smoothing``.
    """
    lr = cfg.learning_rate * hw.global_batch / 32
    total = max(epochs * steps_per_epoch, 1)
    warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10 if warm else lr,
        decay_steps=max(total - warm, 1),
        warmup_target=lr if warm else None,
        warmup_steps=warm,
        alpha=0.0,
    )
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=cfg.weight_decay,
            use_ema=cfg.ema > 0,
            ema_momentum=cfg.ema or 0.99,
        ),
        loss=loss,
        metrics=[accuracy, keras.metrics.AUC(name="auc")],
    )


def class_weights(labels: np.ndarray, num_classes: int = 2) -> dict[int, float]:
    """Balanced weights n / (K · count) per class, so a minority class counts as much
    (scikit-learn's ``class_weight="balanced"`` rule)."""
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    return {k: float(labels.size / (num_classes * max(c, 1))) for k, c in enumerate(counts)}
