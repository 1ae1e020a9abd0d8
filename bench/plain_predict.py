"""The baseline of issue 20's prediction rows: a plain script doing the same work as
``mriscan predict`` on JPEG/PNG files, written the way a user would.

Pillow decode (grayscale) -> ``BOX`` resize to the model's S×S -> per-image z-score -> the same
Keras model with the same left-right flip test-time augmentation (two ``predict_on_batch``
calls per batch of 32, averaged) -> a CSV of probabilities. No cropping or midline alignment
(``mriscan`` does both, so it does more work than this script).

Usage: ``python bench/plain_predict.py MODEL.keras FOLDER_OR_FILES... --output p.csv``
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def prepare(path: Path, size: int) -> np.ndarray:
    """One file as float32 (S, S): grayscale, BOX-resized, z-scored."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L").resize((size, size), Image.BOX), np.float32)
    return (arr - arr.mean()) / (arr.std() + 1e-6)


def run(model, paths: list[Path], batch_size: int = 32) -> np.ndarray:
    """P(class 1) of each file, float64 (N,)."""
    size = int(model.input_shape[1])
    out = []
    for start in range(0, len(paths), batch_size):
        x = np.stack([prepare(p, size) for p in paths[start : start + batch_size]])[..., None]
        p = model.predict_on_batch(x) + model.predict_on_batch(x[:, :, ::-1])
        out.append(0.5 * np.asarray(p, np.float64)[:, -1])
    return np.concatenate(out) if out else np.empty(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--output", default="plain.csv")
    args = parser.parse_args(argv)
    import keras

    @keras.saving.register_keras_serializable(package="mriscan")
    class MirrorDifference(keras.layers.Layer):  # the model's one custom layer (mriscan.model)
        def call(self, x):
            flipped = keras.ops.flip(x, axis=2)
            return keras.ops.concatenate([x, keras.ops.abs(x - flipped)], axis=-1)

    paths: list[Path] = []
    for item in map(Path, args.inputs):
        paths += sorted(item.glob("*.jp*g")) if item.is_dir() else [item]
    model = keras.saving.load_model(args.model, compile=False)
    probs = run(model, paths)
    with open(args.output, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "probability"])
        w.writerows((str(p), f"{v:.6f}") for p, v in zip(paths, probs, strict=True))
    print(f"{len(paths)} files -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
