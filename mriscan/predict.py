"""Prediction: image files (parallel decode, the model's own preprocessing) or store samples,
batched inference with the model card's threshold and test-time flip."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.io import IMAGE_SUFFIXES, decode_image
from mriscan.preprocess import normalize, preprocess_batch

__all__ = [
    "collect_images",
    "columns_for",
    "predict",
    "predict_batch",
    "predict_files",
    "predict_store",
    "write_predictions",
]


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; files are kept as given."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and q.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in q.parts)
            )
        else:
            paths.append(p)  # a missing or bad file is reported in its row
    return paths


def predict_batch(model: Any, x: np.ndarray, batch_size: int, *, tta: bool = False) -> np.ndarray:
    """Class probabilities of one batch (N, S, S, 1): float64 of shape (N, K).

    A two-class (sigmoid) model gives columns ``[1 - p, p]``, p the probability of class 1.
    The batch is zero-padded to ``batch_size`` so that every call has the same shape (a short
    last batch would otherwise retrace the compiled function). ``tta`` averages the
    predictions of the slice and its left-right mirror image.
    """
    n = x.shape[0]
    if n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
    out = np.asarray(model.predict_on_batch(x), np.float64)[:n]
    if tta:
        flipped = np.ascontiguousarray(x[:, :, ::-1])
        out = 0.5 * (out + np.asarray(model.predict_on_batch(flipped), np.float64)[:n])
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


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return decode_image(path), ""
    except ImageDecodeError as exc:
        return None, exc.reason


def columns_for(card: Any) -> tuple[str, ...]:
    """Output columns of a model: ``path, label, p_<class>... [, probability | tumor_probability],
    error``. Two classes: ``probability`` is that of the positive class (``class_names[1]``);
    K classes with a healthy class: ``tumor_probability`` = 1 − P(healthy)."""
    probs = tuple(f"p_{name}" for name in card.class_names)
    extra = ("probability",) if len(card.class_names) == 2 else ()
    if len(card.class_names) > 2 and card.healthy is not None:
        extra = ("tumor_probability",)
    return ("path", "label", *probs, *extra, "error")


def _row(path: Path, p: np.ndarray | None, card: Any, thr: float | None, error: str) -> dict:
    """One output row (probabilities None and label empty for an unreadable file)."""
    row: dict[str, Any] = {"path": str(path), "label": ""}
    names = card.class_names
    for k, name in enumerate(names):
        row[f"p_{name}"] = None if p is None else float(p[k])
    if len(names) == 2:
        row["probability"] = None if p is None else float(p[1])
    elif card.healthy is not None:
        row["tumor_probability"] = None if p is None else float(1.0 - p[names.index(card.healthy)])
    if p is not None:
        row["label"] = card.decide(p, thr)
    row["error"] = error
    return row


def predict_files(
    model: Any,
    card: Any,
    paths: Sequence[Path],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """One row per path with the columns ``columns_for(card)``.

    Bad files get empty probabilities and label and the reason in ``error``.

    Raises
    ------
    ConfigError
        If ``threshold`` is given for a model of more than two classes, or is not in [0, 1].
    """
    cfg = card.preprocess
    thr = card.threshold if threshold is None else float(threshold)
    if len(card.class_names) == 2:
        if thr is None or not 0.0 <= thr <= 1.0:  # also rejects NaN: `p >= nan` is false
            raise ConfigError(f"threshold must be a number in [0, 1]. Received: {threshold!r}.")
    elif threshold is not None:
        raise ConfigError(
            f"--threshold applies to two-class models; this one has {len(card.class_names)} "
            "classes and predicts the most probable one."
        )
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            decoded = list(pool.map(_decode, chunk))
            good = [i for i, (img, _) in enumerate(decoded) if img is not None]
            probs: dict[int, np.ndarray] = {}
            if good:
                batch = preprocess_batch([decoded[i][0] for i in good], cfg)
                x = normalize(batch, cfg.normalization, threshold=cfg.threshold)[..., None]
                out = predict_batch(model, x, batch_size, tta=card.tta)
                probs = dict(zip(good, out, strict=True))
            for i, path in enumerate(chunk):
                rows.append(
                    _row(path, probs.get(i), card, thr, "" if i in probs else decoded[i][1])
                )
    return rows


def write_predictions(rows: list[dict[str, Any]], output: str | os.PathLike[str]) -> Path:
    """Write rows as CSV or JSON (by the file's suffix); CSV probabilities with 6 decimals."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        output.write_text(json.dumps(rows, indent=1))
    elif output.suffix.lower() == ".csv":
        with open(output, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path", "error"])
            w.writeheader()
            for r in rows:
                w.writerow(
                    {
                        k: ("" if v is None else f"{v:.6f}") if isinstance(v, float | None) else v
                        for k, v in r.items()
                    }
                )
    else:
        raise MriscanError(f"Output must end in .csv or .json. Received: {output}.")
    return output


def predict(
    model_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Predict files and folders with a saved model (threshold: the model's, unless given)."""
    from mriscan.model import load_model

    model, card = load_model(model_path)
    paths = collect_images(inputs)
    if not paths:
        raise MriscanError(f"No .jpg/.jpeg/.png images found in {list(map(str, inputs))}.")
    rows = predict_files(
        model, card, paths, threshold=threshold, batch_size=batch_size, workers=workers
    )
    if output is not None:
        write_predictions(rows, output)
    return rows
