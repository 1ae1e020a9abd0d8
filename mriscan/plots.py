"""Matplotlib plots (Agg backend): training history, confusion matrix, ROC, Grad-CAM overlays,
the pointing game by tolerance.

Each ``plot_*`` function draws on the axes it is given; ``save_*`` helpers make a figure, draw
and write a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mriscan.errors import ConfigError

__all__ = [
    "overlay_rgb",
    "plot_confusion_matrix",
    "plot_history",
    "plot_pointing_curve",
    "plot_roc",
    "pointing_by_tolerance",
    "save_confusion_matrix",
    "save_figure",
    "save_history",
    "save_pointing_curve",
    "save_roc",
    "subplots",
]


def plot_history(history: Mapping[str, Sequence[float]], ax_loss, ax_acc) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "accuracy", "Accuracy")):
        if key in history:
            ax.plot(epochs, history[key], "o-", label="train", ms=3)
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label="validation", ms=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], ax, title: str = "") -> None:
    """Confusion matrix with counts and row percentages (rows: true class)."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{pct[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if pct[i, j] > 0.5 else "black",
                fontsize=12,
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix")


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, ax, label: str = "model") -> None:
    """ROC curve with its AUC in the legend and the chance diagonal."""
    ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curve")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def pointing_by_tolerance(distances: Sequence[float], tolerances: np.ndarray) -> np.ndarray:
    """The pointing game's share of hits at each tolerance: for each ``tolerances[t]`` (source
    pixels, float (T,)), the fraction of ``distances`` (each scored slice's peak-to-box
    distance, ``mriscan.pointing.peak_box_distance``) at most that far; float64 (T,). At 0 it
    is the strict rule's share (inside the box). NaN everywhere when ``distances`` is empty
    (no correctly classified slice: undefined)."""
    d = np.sort(np.asarray(distances, np.float64))
    if not d.size:
        return np.full(np.shape(tolerances), np.nan)
    return np.searchsorted(d, np.asarray(tolerances, np.float64), side="right") / d.size


def plot_pointing_curve(
    distances: Mapping[str, Sequence[float]], tolerance: float, ax, *, max_px: float = 100.0
) -> None:
    """Per class, the share of correctly classified slices whose map peak lies within x source
    pixels of their box, for x from 0 (inside the box: the strict rule) to ``max_px``; a
    dotted line marks ``tolerance`` (the game's authors' 15 px). Classes without a scored
    slice are left out of the legend's curves."""
    grid = np.linspace(0.0, max_px, 201)
    for name, d in distances.items():
        if len(d):
            ax.step(grid, pointing_by_tolerance(d, grid), where="post", lw=2,
                    label=f"{name} (n={len(d)})")  # fmt: skip
    ax.axvline(tolerance, ls=":", color="grey", lw=1, label=f"{tolerance:g} px")
    ax.set_xlabel("peak's distance to the tumor box (source pixels)")
    ax.set_ylabel("share of correctly classified slices")
    ax.set_title("Pointing game by tolerance")
    ax.set_xlim(0, max_px)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")


def overlay_rgb(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """A heatmap blended over a grey slice, as one RGB image: the Grad-CAM panel of
    ``mriscan.explain.save_overlay`` and the pixels of ``mriscan.dicom_sc`` Secondary Captures.

    Parameters
    ----------
    image : ndarray of shape (H, W), any real dtype
        The slice; shown from its minimum (black) to its maximum (white), as Matplotlib's
        ``imshow`` scales it (all black when uniform).
    cam : ndarray of shape (H, W), float
        The map in [0, 1] (values outside are clipped), coloured with Matplotlib's "jet".
    alpha : float in [0, 1]
        Opacity of the heatmap.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        ``round(255 * ((1 - alpha) * grey + alpha * jet(cam)))`` per channel.

    Raises
    ------
    mriscan.errors.ConfigError
        If the shapes differ or ``alpha`` is outside [0, 1].
    """
    img = np.asarray(image, np.float64)
    heat = np.clip(np.asarray(cam, np.float64), 0.0, 1.0)
    if img.ndim != 2 or img.shape != heat.shape:
        raise ConfigError(
            f"image and cam must be (H, W) of one shape; got {img.shape}, {heat.shape}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; got {alpha}.")
    lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    jet = matplotlib.colormaps["jet"](heat)[..., :3]
    rgb = (1.0 - alpha) * grey[..., None] + alpha * jet
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the Agg backend this module selects (use it rather
    than importing pyplot elsewhere, which could pick another backend first)."""
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a hidden temp file beside it, then
    ``os.replace``), and close it: a run stopped mid-write (Ctrl-C) leaves the old file or
    none, never a truncated PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def save_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike[str]) -> Path:
    """Write training_history.png."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    plot_history(history, a, b)
    return save_figure(fig, path)


def save_confusion_matrix(
    cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Write confusion_matrix.png."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    plot_confusion_matrix(cm, class_names, ax, title)
    return save_figure(fig, path)


def save_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | os.PathLike[str]) -> Path:
    """Write roc.png."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    plot_roc(fpr, tpr, auc, ax)
    return save_figure(fig, path)


def save_pointing_curve(
    distances: Mapping[str, Sequence[float]], tolerance: float, path: str | os.PathLike[str]
) -> Path:
    """Write the pointing game's share of hits by tolerance (``plot_pointing_curve``)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    plot_pointing_curve(distances, tolerance, ax)
    return save_figure(fig, path)
