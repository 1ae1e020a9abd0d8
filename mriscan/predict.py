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
    "predict",
    "predict_batch",
    "predict_files",
    "predict_store",
    "write_predictions",
]

COLUMNS = ("path", "probability", "label", "error")


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
    """Class-1 probabilities of one batch (N, S, S, 1).

    The batch is zero-padded to ``batch_size`` so that every call has the same shape (a short
    last batch would otherwise retrace the compiled function). ``tta`` averages the
    predictions of the slice and its left-right mirror image.
    """
    n = x.shape[0]
    if n < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
    p = np.asarray(model.predict_on_batch(x), np.float64).reshape(-1)[:n]
    if tta:
        flipped = np.ascontiguousarray(x[:, :, ::-1])
        p = 0.5 * (p + np.asarray(model.predict_on_batch(flipped), np.float64).reshape(-1)[:n])
    return p


def predict_store(
    model: Any,
    store: Any,
    indices: Sequence[int] | np.ndarray,
    batch_size: int = 64,
    *,
    tta: bool = False,
) -> np.ndarray:
    """Class-1 probabilities (float64, shape (n,)) of store samples, in the order given.

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
    return np.concatenate(parts) if parts else np.empty(0, np.float64)


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return decode_image(path), ""
    except ImageDecodeError as exc:
        return None, exc.reason


def predict_files(
    model: Any,
    card: Any,
    paths: Sequence[Path],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """One row per path: ``path``, ``probability`` (of ``class_names[1]``), ``label``, ``error``.

    Bad files get an empty probability and label and the reason in ``error``.
    """
    cfg = card.preprocess
    thr = card.threshold if threshold is None else float(threshold)
    if not 0.0 <= thr <= 1.0:  # also rejects NaN: `p >= nan` is always false
        raise ConfigError(f"threshold must be a number in [0, 1]. Received: {threshold!r}.")
    names = card.class_names
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            decoded = list(pool.map(_decode, chunk))
            good = [i for i, (img, _) in enumerate(decoded) if img is not None]
            probs: dict[int, float] = {}
            if good:
                batch = preprocess_batch([decoded[i][0] for i in good], cfg)
                x = normalize(batch, cfg.normalization, threshold=cfg.threshold)[..., None]
                out = predict_batch(model, x, batch_size, tta=card.tta)
                probs = dict(zip(good, out.tolist(), strict=True))
            for i, path in enumerate(chunk):
                if i in probs:
                    p = probs[i]
                    rows.append(
                        {
                            "path": str(path),
                            "probability": p,
                            "label": names[1] if p >= thr else names[0],
                            "error": "",
                        }
                    )
                else:
                    rows.append(
                        {
                            "path": str(path),
                            "probability": None,
                            "label": "",
                            "error": decoded[i][1],
                        }
                    )
    return rows


def write_predictions(rows: list[dict[str, Any]], output: str | os.PathLike[str]) -> Path:
    """Write rows as CSV or JSON (by the file's suffix)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        output.write_text(json.dumps(rows, indent=1))
    elif output.suffix.lower() == ".csv":
        with open(output, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow(
                    {
                        **r,
                        "probability": ""
                        if r["probability"] is None
                        else f"{r['probability']:.6f}",
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
