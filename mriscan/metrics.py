"""Binary classification metrics in plain NumPy (no scikit-learn), and threshold choice."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "THRESHOLD_RULE",
    "binary_metrics",
    "bootstrap_ci",
    "choose_threshold",
    "confusion_matrix",
    "roc_auc",
    "roc_curve",
    "youden_threshold",
]


def _check(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a label/probability pair."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(prob, np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(
            f"y_true and prob must have the same length. Received {y.size} and {p.size}."
        )
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1.")
    return y, p


def roc_curve(y_true: np.ndarray, prob: np.ndarray):
    """False- and true-positive rates at every distinct threshold (descending).

    Returns
    -------
    fpr, tpr, thresholds : ndarray
        Starting at (0, 0) with threshold +inf.
    """
    y, p = _check(y_true, prob)
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.flatnonzero(np.diff(p)) if p.size else np.array([], np.int64)
    ends = np.r_[distinct, p.size - 1] if p.size else np.array([], np.int64)
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    pos, neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    return fpr, tpr, np.r_[np.inf, p[ends]]


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outranks a negative; ties count half)."""
    y, p = _check(y_true, prob)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size, np.float64)
    sp = p[order]
    i = 0
    while i < sp.size:
        j = i
        while j + 1 < sp.size and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """Counts ``cm[true, predicted]``, ndarray of shape (n_classes, n_classes), int64."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity − 1 (use on validation data only)."""
    fpr, tpr, thr = roc_curve(y_true, prob)
    if len(thr) < 2:
        return 0.5
    k = int(np.argmax(tpr - fpr)) if len(thr) > 1 else 0
    k = max(k, 1)  # never +inf
    # midway to the next lower score keeps the cut robust to tiny shifts
    lower = thr[k + 1] if k + 1 < len(thr) else 0.0
    return float(np.clip(0.5 * (thr[k] + lower), 1e-6, 1 - 1e-6))


THRESHOLD_RULE = "Youden's J on the validation split"


def choose_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The decision threshold every mriscan model ships with (``THRESHOLD_RULE``).

    The one place to change the rule: ``train`` and ``cross_validate`` both call it on the
    validation part only. Today: ``youden_threshold`` (Youden 1950, "Index for rating
    diagnostic tests"); five alternatives compared on 35 fold models did no better
    (experiments/ACCURACY.md).
    """
    return youden_threshold(y_true, prob)


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def binary_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    *,
    threshold: float = 0.5,
    class_names: tuple[str, ...] = ("no", "yes"),
) -> dict[str, Any]:
    """Accuracy, ROC AUC, sensitivity, specificity, per-class precision/recall/F1, confusion.

    Class 1 is the positive (tumor) class; a sample is predicted positive when
    ``prob >= threshold``.
    """
    y, p = _check(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    cm = confusion_matrix(y, pred)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    per_class = {}
    for k, name in enumerate(class_names[:2]):
        tp_k = int(cm[k, k])
        prec = _safe_div(tp_k, cm[:, k].sum())
        rec = _safe_div(tp_k, cm[k, :].sum())
        per_class[name] = {
            "precision": prec,
            "recall": rec,
            "f1": _safe_div(2 * prec * rec, prec + rec),
            "support": int(cm[k, :].sum()),
        }
    return {
        "n": int(y.size),
        "threshold": float(threshold),
        "accuracy": _safe_div(tp + tn, y.size),
        "roc_auc": roc_auc(y, p),
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names[:2]),
    }


def bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    metric,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric(y_true, prob)``."""
    y, p = _check(y_true, prob)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        if y[idx].min() == y[idx].max():
            continue
        vals.append(metric(y[idx], p[idx]))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
