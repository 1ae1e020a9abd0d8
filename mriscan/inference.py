"""Inference: a model's class probabilities for batches of slices, and the rows reporting them.

Shared by ``mriscan.predict`` (image files), ``mriscan.scan_predict`` (DICOM/NIfTI), training
(``mriscan.training.fit``), ``mriscan.evaluate`` and ``mriscan.explain``; it imports none of
them. ``columns_for`` and ``prediction_row`` define what a prediction row holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mriscan.errors import ConfigError
from mriscan.io import display_path
from mriscan.preprocess import normalize

__all__ = [
    "CALL_ROWS",
    "check_threshold",
    "columns_for",
    "predict_batch",
    "predict_store",
    "prediction_row",
    "tumor_call",
]


# Rows per model call. Measured on the project's 2-core x86 machine with the default model at
# 128² (``predict_on_batch``, img/s per pass, medians of 7): 4 rows 172, 8 rows 176, 16 rows 153,
# 32 rows 152, 48 rows 134, 64 rows ~103 -- small calls keep the activations in cache, so a big
# batch is cut into calls of this many rows (bench/test_predict.py).
CALL_ROWS = 8


def predict_batch(model: Any, x: np.ndarray, batch_size: int, *, tta: bool = False) -> np.ndarray:
    """Class probabilities of a batch (N, S, S, C) float32: float64 of shape (N, K).

    A two-class (sigmoid) model gives columns ``[1 - p, p]``, p the probability of class 1.
    The model is called through ``model.predict_on_batch`` (Keras compiles its predict
    function on the first call and reuses it while the input shape stays the same) on calls of
    ``min(CALL_ROWS, batch_size)`` rows (``min(CALL_ROWS, 2 * batch_size)`` with ``tta``;
    a model object with a ``call_rows`` attribute sets its own instead of ``CALL_ROWS``), the
    last one zero-padded, so that every call of a run has the same shape (another shape would
    retrace the compiled function). ``tta`` averages the predictions of the slice and its
    left-right mirror image: each call holds k slices followed by their k mirror images, and
    the two halves of its output are averaged; the result equals separate calls up to float
    rounding.
    """
    n = x.shape[0]
    rows = min(getattr(model, "call_rows", CALL_ROWS), 2 * batch_size if tta else batch_size)
    step = max(1, rows // 2) if tta else max(1, rows)
    rows = 2 * step if tta else step
    parts = []
    for start in range(0, max(n, 1), step):  # an empty batch still gives (0, K)
        xs = x[start : start + step]
        k = xs.shape[0]
        if tta:
            xs = np.concatenate([xs, xs[:, :, ::-1]])
        if xs.shape[0] < rows:
            xs = np.concatenate([xs, np.zeros((rows - xs.shape[0], *xs.shape[1:]), xs.dtype)])
        out = np.asarray(model.predict_on_batch(xs), np.float64)
        parts.append(0.5 * (out[:k] + out[k : 2 * k]) if tta else out[:k])
    out = np.concatenate(parts)
    if out.ndim == 1 or out.shape[1] == 1:
        p = out.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return out


def predict_store(
    model: Any,
    store: Any,
    indices: Sequence[int] | np.ndarray,
    batch_size: int = 64,
    *,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities (float64, shape (n, K)) of store samples, in the order given.

    Reads ``batch_size`` samples at a time from ``store`` (an ``ImageStore``) and normalises
    them as the training pipeline does (``store.config.normalization``).
    """
    idx = np.asarray(indices, np.int64)
    cfg = store.config
    parts = []
    for start in range(0, idx.size, batch_size):
        images, _ = store.read_batch(idx[start : start + batch_size])
        x = normalize(images, cfg.normalization, threshold=cfg.threshold)[..., None]
        parts.append(predict_batch(model, x, batch_size, tta=tta))
    k = int(model.output_shape[-1])
    return np.concatenate(parts) if parts else np.empty((0, max(k, 2)), np.float64)


def check_threshold(card: Any, threshold: float | None) -> float | None:
    """The decision threshold to use (the card's unless given), validated; None for a K-class
    model, which predicts the most probable class."""
    if len(card.class_names) > 2:
        if threshold is not None:
            raise ConfigError(
                f"--threshold applies to two-class models; this one has "
                f"{len(card.class_names)} classes and predicts the most probable one."
            )
        return None
    thr = card.threshold if threshold is None else float(threshold)
    if thr is None or not 0.0 <= thr <= 1.0:  # also rejects NaN: `p >= nan` is always false
        raise ConfigError(f"threshold must be a number in [0, 1]. Received: {threshold!r}.")
    return thr


def columns_for(card: Any) -> tuple[str, ...]:
    """Output columns of a model: ``path, label, p_<class>... [, probability |
    tumor_probability, is_tumor], error, warning``.

    ``label`` is the model card's decision (``ModelCard.decide``): two classes, the positive
    class (``class_names[1]``) when ``probability`` (its probability) >= the threshold; K
    classes, the most probable class. K classes with a healthy class add
    ``tumor_probability`` = 1 − P(healthy), a score (for ranking and ROC curves), and
    ``is_tumor`` = ``yes`` when ``label`` is not the healthy class, else ``no``: the tumor vs
    no tumor call of the label (the one ``mriscan evaluate`` scores for such a model). The
    two can seem to disagree when no class has a majority: P = notumor 0.40, glioma 0.30,
    meningioma 0.30 gives label notumor and is_tumor no, with tumor_probability 0.60. (The
    other way round cannot happen: a tumor label means P(healthy) <= 0.5.)
    """
    probs = tuple(f"p_{name}" for name in card.class_names)
    extra: tuple[str, ...] = ("probability",) if len(card.class_names) == 2 else ()
    if len(card.class_names) > 2 and card.healthy is not None:
        extra = ("tumor_probability", "is_tumor")
    return ("path", "label", *probs, *extra, "error", "warning")


def tumor_call(card: Any, label: str) -> str:
    """``is_tumor`` of a row of a K-class model with a healthy class: ``"yes"`` when ``label``
    is a tumor class, ``"no"`` for the healthy class, ``""`` for no label (an unreadable file)."""
    if not label:
        return ""
    return "no" if label == card.healthy else "yes"


def prediction_row(
    path: Path, p: np.ndarray | None, card: Any, thr: float | None, error: str
) -> dict:
    """One output row (probabilities None and label empty for an unreadable file)."""
    row: dict[str, Any] = {"path": display_path(path), "label": ""}
    names = card.class_names
    for k, name in enumerate(names):
        row[f"p_{name}"] = None if p is None else float(p[k])
    if len(names) == 2:
        row["probability"] = None if p is None else float(p[1])
    elif card.healthy is not None:
        row["tumor_probability"] = None if p is None else float(1.0 - p[names.index(card.healthy)])
    if p is not None:
        row["label"] = card.decide(p, thr)
    if len(names) > 2 and card.healthy is not None:
        row["is_tumor"] = tumor_call(card, row["label"])
    row["error"] = error
    row["warning"] = ""  # e.g. a uniform or 1×N image: predicted, but nothing to see
    return row
