"""Grad-CAM heatmaps of the last convolution, computed with ``keras.ops``.

The arithmetic (channel weights, weighted sum, ReLU, upsampling) is ``keras.ops``; only the
gradient itself comes from the backend's autodiff (TensorFlow ``GradientTape``, ``jax.grad``
or torch autograd), as Keras has no backend-neutral gradient op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.io import display_path
from mriscan.model import last_conv_layer_name

__all__ = ["explain", "grad_cam", "heatmap_names", "save_overlay"]


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


def _gradient(head: keras.Model, feats: Any, select: np.ndarray) -> Any:
    """d(sum of the selected head outputs)/d(feats) with the active backend's autodiff.

    ``select``: (N, K) float32 one-hot of the class explained for each image.
    """
    backend = keras.backend.backend()
    sel = ops.convert_to_tensor(select)
    if backend == "tensorflow":
        import tensorflow as tf

        feats = tf.convert_to_tensor(feats)
        with tf.GradientTape() as tape:
            tape.watch(feats)
            out = ops.sum(head(feats, training=False) * sel)
        return tape.gradient(out, feats)
    if backend == "jax":
        import jax

        return jax.grad(lambda f: ops.sum(head(f, training=False) * sel))(feats)
    feats = feats.detach().requires_grad_(True)
    ops.sum(head(feats, training=False) * sel).backward()
    return feats.grad


def grad_cam(
    model: keras.Model,
    images: np.ndarray,
    *,
    layer_name: str | None = None,
    class_index: int | np.ndarray | None = None,
) -> np.ndarray:
    """Grad-CAM maps (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks
    via Gradient-based Localization") of one class's output.

    Parameters
    ----------
    model : keras.Model
    images : ndarray of shape (N, S, S, 1), float32
        Normalised model inputs.
    class_index : int or ndarray of shape (N,), optional
        The class explained (per image). Default: the positive class of a sigmoid model, the
        most probable class of a softmax model.
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
    k = int(model.output_shape[-1])
    if k == 1:
        select = np.ones((x.shape[0], 1), np.float32)
    else:
        if class_index is None:
            cls = np.asarray(ops.convert_to_numpy(head(feats, training=False))).argmax(axis=1)
        else:
            cls = np.broadcast_to(np.asarray(class_index, np.int64), (x.shape[0],))
        select = np.eye(k, dtype=np.float32)[cls]
    grads = _gradient(head, feats, select)
    weights = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(weights * ops.cast(feats, "float32"), axis=-1, keepdims=True))
    cam = ops.image.resize(cam, (x.shape[1], x.shape[2]), interpolation="bilinear")[..., 0]
    peak = ops.max(cam, axis=(1, 2), keepdims=True)
    cam = ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), ops.zeros_like(cam))
    return np.asarray(ops.convert_to_numpy(cam), np.float32)


def _peak(cam: np.ndarray) -> tuple[int, int]:
    """(row, col) of a map's maximum."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(r), int(c)


def save_overlay(
    image: np.ndarray, cam: np.ndarray, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Write the slice with its heatmap overlaid (jet, 40% opacity) beside the plain slice."""
    from mriscan.plots import save_figure, subplots

    fig, (a, b) = subplots(1, 2, figsize=(7, 3.6))
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


def heatmap_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A distinct PNG file name for each image: its path relative to the deepest folder all
    images share, ``/`` written as ``__``, suffix dropped, ``_gradcam.png`` added.

    ``a/slice_1.jpg`` and ``b/slice_1.jpg`` give ``a__slice_1_gradcam.png`` and
    ``b__slice_1_gradcam.png``; a single image ``x/slice_1.jpg`` gives ``slice_1_gradcam.png``.
    Names that would still clash (``x.jpg`` beside ``x.png``; compared case-insensitively,
    as some file systems do) keep their suffix (``x_jpg_gradcam.png``), and any clash left
    gets ``-2``, ``-3``, ... in input order. The same file given twice gets the same name.
    Bytes of a name that are not valid UTF-8 appear as ``_xNN`` (see
    ``mriscan.io.display_path``).
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if not absolute:
        return []
    base = Path(os.path.commonpath([p.parent for p in absolute]))

    def name(p: Path, keep_suffix: bool) -> str:
        rel = p.relative_to(base)
        last = rel.stem + (f"_{rel.suffix[1:]}" if keep_suffix and rel.suffix else "")
        text = display_path("__".join([*rel.parent.parts, last]))
        return re.sub(r"[\\/\x00-\x1f]", "_", text)

    unique = list(dict.fromkeys(absolute))
    stems = {p: name(p, False) for p in unique}
    clashes = _clashing(stems)
    stems = {p: name(p, p in clashes) for p in unique}
    taken: dict[str, int] = {}
    final: dict[Path, str] = {}
    for p in unique:
        key = stems[p].casefold()
        taken[key] = taken.get(key, 0) + 1
        final[p] = stems[p] + (f"-{taken[key]}" if taken[key] > 1 else "") + "_gradcam.png"
    return [final[p] for p in absolute]


def _clashing(names: dict[Path, str]) -> set[Path]:
    """The keys whose names (case-folded) are shared with another key."""
    count: dict[str, int] = {}
    for n in names.values():
        count[n.casefold()] = count.get(n.casefold(), 0) + 1
    return {p for p, n in names.items() if count[n.casefold()] > 1}


def explain(
    model_path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] = "artifacts/explain",
    explain_class: str | None = None,
    slices: Sequence[int] | None = None,
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """Grad-CAM overlay PNG for each image file and for chosen slices of DICOM series / NIfTI
    volumes.

    ``explain_class``: the class whose evidence is shown (default: the predicted class; for a
    two-class model the map is always that of the positive class's output, which rises with
    the evidence for it). Returns per explained slice ``path``, ``probability`` (of the
    explained class), ``explained_class``, ``label``, ``png``, ``cam_peak`` ((row, col) of the
    map's maximum in the S×S model input) or ``error``.

    Image PNGs are named by ``heatmap_names`` (distinct for distinct files); ``path`` is
    ``mriscan.io.display_path`` of the file. Scanner inputs are read as ingest reads them
    (``mriscan.scan_predict.read_inputs``); the slices of a series / volume are ordered (slice
    position, slice index) and numbered from 0. ``slices`` picks those indices of every series
    / volume; otherwise the ``top_k`` slices most likely to show a tumor (or the explained
    class) are explained. Their rows and PNGs are named by pseudonym
    (``series-<hash>_slice<k>``), never by the file or folder name.

    Raises
    ------
    ConfigError
        If ``explain_class`` is not one of the model's classes, ``top_k < 1`` or a slice
        index is negative.
    MriscanError
        If ``images`` is empty.
    """
    from mriscan.inference import predict_batch
    from mriscan.io import SourceFile, decode_image, file_kind
    from mriscan.model import load_model
    from mriscan.preprocess import normalize, preprocess
    from mriscan.scan_predict import predict_arrays, read_inputs

    if not images:
        raise MriscanError(
            "No image to explain: give .jpg/.jpeg/.png, DICOM or NIfTI files or folders "
            "holding them (hidden files and folders below a folder are skipped)."
        )
    if top_k < 1 or (slices is not None and any(k < 0 for k in slices)):
        raise ConfigError(f"top_k must be >= 1 and slices >= 0. Received: {top_k}, {slices}.")
    model, card = load_model(model_path)
    if explain_class is not None and explain_class not in card.class_names:
        raise ConfigError(
            f"--class {explain_class!r} is not one of the model's classes {card.class_names}."
        )
    cfg = card.preprocess
    out = Path(out)
    results: list[dict[str, Any]] = []

    def overlay(img: np.ndarray, name: str, png_name: str) -> dict[str, Any]:
        x = normalize(img, cfg.normalization, threshold=cfg.threshold)[None, ..., None]
        probs = predict_batch(model, x, 1, tta=card.tta)[0]
        label = card.decide(probs)
        target = label if explain_class is None else explain_class
        k = card.class_names.index(target)
        cam = grad_cam(model, x, class_index=None if card.binary else k)[0]
        prob = float(probs[k])
        png = save_overlay(
            img, cam, out / png_name, title=f"{name}: P({target}) = {prob:.2f} → {label}"
        )
        return {
            "path": name,
            "probability": prob,
            "explained_class": target,
            "label": label,
            "png": str(png),
            "cam_peak": _peak(cam),
            "error": "",
        }

    files = [Path(p) for p in images]
    kinds = [file_kind(p) for p in files]
    plain = [p for p, k in zip(files, kinds, strict=True) if k not in ("dicom", "nifti")]
    scans = [SourceFile(p, k) for p, k in zip(files, kinds, strict=True) if k in ("dicom", "nifti")]
    for path, png_name in zip(plain, heatmap_names(plain), strict=True):
        try:
            img = preprocess(decode_image(path), cfg)
        except ImageDecodeError as exc:
            results.append({"path": display_path(path), "error": exc.reason})
            continue
        results.append(overlay(img, display_path(path.name), png_name))
    units: dict[str, list] = {}
    for r in read_inputs(scans):
        if r.error is not None or r.skipped is not None:
            results.append(
                {"path": display_path(r.path), "error": r.error or f"skipped: {r.skipped}"}
            )
            continue
        for s in r.slices:
            units.setdefault(s.unit, []).append(s)
    for unit, members in units.items():
        members.sort(key=lambda s: s.order)
        if slices is not None:
            chosen = [k for k in slices if k < len(members)]
            for k in (k for k in slices if k >= len(members)):
                results.append(
                    {"path": unit, "error": f"no slice {k}: it has {len(members)} (0..)"}
                )
        else:
            probs = predict_arrays(model, card, [s.image for s in members])
            score = _slice_score(card, probs, explain_class)
            chosen = sorted(np.argsort(-score, kind="stable")[:top_k].tolist())
        for k in chosen:
            img = preprocess(members[k].image, cfg)
            stem = f"{unit.replace(':', '-')}_slice{k}"
            results.append(overlay(img, f"{members[k].source} (slice {k})", f"{stem}_gradcam.png"))
    return results


def _slice_score(card: Any, probs: np.ndarray, explain_class: str | None) -> np.ndarray:
    """How strongly each slice (rows of ``probs``, (n, K)) shows what is explained: the chosen
    class's probability, else the tumor probability (1 − P(healthy)), else the top class's."""
    if explain_class is not None:
        return probs[:, card.class_names.index(explain_class)]
    if card.healthy is not None:
        return 1.0 - probs[:, card.class_names.index(card.healthy)]
    return probs.max(axis=1)
