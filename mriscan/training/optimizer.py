"""The optimisation recipe: AdamW, warm-up + cosine decay, loss, metrics, class weights."""

from __future__ import annotations

import keras
import numpy as np

from mriscan.config import OptimizerConfig
from mriscan.hardware import Hardware

__all__ = ["class_weights", "compile_model"]


def compile_model(
    model: keras.Model, cfg: OptimizerConfig, hw: Hardware, steps_per_epoch: int, epochs: int
) -> None:
    """Compile with AdamW, a linear warm-up then cosine decay to 0, BCE, accuracy and AUC.

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
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=cfg.weight_decay,
            use_ema=cfg.ema > 0,
            ema_momentum=cfg.ema or 0.99,
        ),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 · count) per class, so the minority class counts as much."""
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    return {k: float(labels.size / (2 * max(c, 1))) for k, c in enumerate(counts)}
