"""Grad-CAM heatmaps of the last convolution, computed with ``keras.ops``.

The arithmetic (channel weights, weighted sum, ReLU, upsampling) is ``keras.ops``; only the
gradient itself comes from the backend's autodiff (TensorFlow ``GradientTape``, ``jax.grad``
or torch autograd), as Keras has no backend-neutral gradient op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from mriscan.errors import ImageDecodeError
from mriscan.model import last_conv_layer_name

__all__ = ["explain", "grad_cam", "save_overlay"]


def _target_layer(model: keras.Model) -> str:
    """The last conv block's rectified output (its conv, BN and ReLU), the usual Grad-CAM target."""
    layers = list(model.layers)
    conv = last_conv_layer_name(model)
    i = next(k for k, la in enumerate(layers) if la.name == conv)
    while i + 1 < len(layers) and isinstance(
        layers[i + 1], keras.layers.BatchNormalization | keras.layers.Activation
    ):
        i += 1
    return layers[i].name


def _split_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """The model cut at ``layer_name``: inputs → features, features → output."""
    layer = model.get_layer(layer_name)
    features = keras.Model(model.inputs[0], layer.output)
    head = keras.Model(layer.output, model.output)
    return features, head


def _gradient(head: keras.Model, feats: Any) -> Any:
    """d(sum of head outputs)/d(feats) with the active backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        feats = tf.convert_to_tensor(feats)
        with tf.GradientTape() as tape:
            tape.watch(feats)
            out = head(feats, training=False)
        return tape.gradient(out, feats)
    if backend == "jax":
        import jax

        return jax.grad(lambda f: ops.sum(head(f, training=False)))(feats)

    feats = feats.detach().requires_grad_(True)
    head(feats, training=False).sum().backward()
    return feats.grad


def grad_cam(
    model: keras.Model, images: np.ndarray, *, layer_name: str | None = None
) -> np.ndarray:
    """Grad-CAM maps for the positive-class output.

    Parameters
    ----------
    model : keras.Model
    images : ndarray of shape (N, S, S, 1), float32
        Normalised model inputs.
    layer_name : str, optional
        Layer to explain (default: the last conv block's ReLU output; rectified feature maps
        localised the evidence better than the raw convolution in tests/test_explain.py).

    Returns
    -------
    ndarray of shape (N, S, S), float32
        Each map scaled to [0, 1] (all zero when the class evidence is nowhere positive).
    """
    x = np.asarray(images, np.float32)
    features, head = _split_model(model, layer_name or _target_layer(model))
    feats = features(x, training=False)
    grads = _gradient(head, feats)
    weights = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(weights * ops.cast(feats, "float32"), axis=-1, keepdims=True))
    cam = ops.image.resize(cam, (x.shape[1], x.shape[2]), interpolation="bilinear")[..., 0]
    peak = ops.max(cam, axis=(1, 2), keepdims=True)
    cam = ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), ops.zeros_like(cam))
    return np.asarray(ops.convert_to_numpy(cam), np.float32)


def save_overlay(
    image: np.ndarray, cam: np.ndarray, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Write the slice with its heatmap overlaid (jet, 40% opacity) beside the plain slice."""
    from mriscan.plots import plt, save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3.6))
    a.imshow(image, cmap="gray")
    a.set_title("slice")
    b.imshow(image, cmap="gray")
    im = b.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    b.set_title("Grad-CAM")
    for ax in (a, b):
        ax.axis("off")
    fig.colorbar(im, ax=b, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def explain(
    model_path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] = "artifacts/explain",
) -> list[dict[str, Any]]:
    """Grad-CAM overlay PNG for each image file; returns path, probability, png (or error)."""
    from mriscan.model import load_model
    from mriscan.predict import predict_batch
    from mriscan.preprocess import normalize, preprocess

    model, card = load_model(model_path)
    cfg = card.preprocess
    out = Path(out)
    results: list[dict[str, Any]] = []
    from mriscan.io import decode_image

    for path in images:
        path = Path(path)
        try:
            img = preprocess(decode_image(path), cfg)
        except ImageDecodeError as exc:
            results.append({"path": str(path), "error": exc.reason})
            continue
        x = normalize(img, cfg.normalization, threshold=cfg.threshold)[None, ..., None]
        prob = float(predict_batch(model, x, 1, tta=card.tta)[0])
        cam = grad_cam(model, x)[0]
        label = card.label_of(prob)
        png = save_overlay(
            img,
            cam,
            out / f"{path.stem}_gradcam.png",
            title=f"{path.name}: P({card.class_names[1]}) = {prob:.2f} → {label}",
        )
        results.append(
            {"path": str(path), "probability": prob, "label": label, "png": str(png), "error": ""}
        )
    return results
