"""Tumor boxes as a training signal: do they make the classifier's heatmaps point at the tumor?

Issue #16 target 5 asks the pointing game (Zhang et al. 2018, "Top-down Neural Attention by
Excitation Backprop", IJCV 126: the map's peak must fall inside the object's box) on the
correctly classified tumor slices of ``figshare_br35h`` to reach 0.80. The classifiers score
~0.2: they classify without localising. This experiment trains the product's classifier
(``mriscan.model.build_model``, unchanged) with an extra loss that exists during training only,
in one of two modes:

- ``--mode feature`` (multi-task localisation): every conv block output a heatmap reads
  (``mriscan.explain.block_outputs``: blocks 2 and 3 for LayerCAM's default fusion, block 4 for
  Grad-CAM) gets a 1×1 convolution, the logit of "this cell lies in the tumor's box", trained
  with a class-balanced binary cross-entropy (inside and outside the box weighted equally per
  slice) against the box mask average-pooled to the block's grid. The heads learn the boxes,
  the heatmaps do not move (0.26 → 0.26-0.27).
- ``--mode cam`` (the heatmap itself supervised, as the attention loss of GAIN, Li et al. 2018,
  "Tell Me Where to Look: Guided Attention Inference Network", CVPR): the LayerCAM (Jiang et
  al. 2021) and Grad-CAM (Selvaraju et al. 2017) maps of the true class are computed inside the
  training step (nested ``GradientTape``: double back-propagation, TensorFlow backend) and
  penalised by ``cam_in_box_loss`` (−log of the map's mass share inside the box, per layer) or,
  with ``--beta``, by ``peak_in_box_loss``: the fused LayerCAM map of blocks 2-3 and block 4's
  Grad-CAM map, upsampled and scaled as ``mriscan.explain`` draws them, and −log of the
  softmax(β · map) probability inside the box, a differentiable pointing game.
  ``--cam-inference`` computes those maps on an inference-mode pass (no dropout or
  augmentation, batch norm's moving statistics), as they are scored.

Common to both: the loss is the classifier's own (categorical cross-entropy with label
smoothing, balanced class weights, AdamW with warm-up and cosine decay:
``mriscan.training.optimizer``) plus ``w`` × the box loss. The box is drawn in the preprocessed
S×S frame: ``source_point`` (``mriscan.preprocess``) is affine in (row, column) for one slice
(crop, resize, midline rotation), so three of its points give the map of the whole frame; each
pixel is sampled 4×4 and the fraction of samples inside the box is the soft mask. The geometric
augmentation of ``build_model`` (flip, rotation, zoom) is applied to the slice and its mask
stacked as channels through the same random layers, so the mask follows it and every arm keeps
the product's default augmentation; at inference those layers are the identity, so the saved
model is exactly ``build_model``'s.

After training only the base classifier is saved, the way ``mriscan train`` saves it
(``publish_model`` with ``card_for``'s model card), so the product command
``python -m mriscan explain MODEL FOLDER --boxes FOLDER/boxes.csv`` scores it unchanged. Test
accuracy and macro-F1 come from ``mriscan.training.fit.score`` on ``predict_store`` (TTA as the
card says), the pointing game from ``mriscan.pointing.pointing_game`` on a folder of links to the
test split (``experiments/split_folder.py``). ``--occlude`` measures whether the decisions rest
on the box's content (``occlusion``): a heatmap can be trained to point without the decision
following it.

Usage (from the repository root; the best setting measured, 3 seeds in the session-14 report)::

    python experiments/box_supervision.py DATA STORE OUT --mode cam --beta 10 \
        --cam-inference --weights 0 1 [--epochs 15] [--seed S]

``DATA`` holds the class folders and ``boxes.csv``; each weight is one arm, trained on the same
split from the same initial weights, written to ``OUT/<mode>-w<weight>[-b<beta>...]/``; one JSON
line per arm goes to ``OUT/results.jsonl``. ``--check-png F`` writes a picture of the box masks
of a few slices (source with box | preprocessed slice with mask | the 6×6 targets) and exits;
``--occlude ARM [ARM ...]`` prints how much each arm's decisions rest on the box's content.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, run from anywhere
import split_folder

from mriscan.artifacts import RunLayout, publish_model
from mriscan.config import FitConfig, PretrainConfig, TrainConfig
from mriscan.errors import MriscanError
from mriscan.explain import block_outputs
from mriscan.inference import predict_store
from mriscan.io import decode_image
from mriscan.model import build_model
from mriscan.pipeline import load_batch
from mriscan.pointing import pointing_game
from mriscan.preprocess import source_point
from mriscan.training.fit import card_for, score
from mriscan.training.optimizer import class_weights, compile_model
from mriscan.training.workflow import _write_split, holdout_split, open_for_task, setup_for

log = logging.getLogger("box_supervision")

#: build_model's geometric augmentation layers: the mask must follow them
GEOMETRIC = ("aug_flip", "aug_rotate", "aug_zoom", "aug_translate")
#: samples per pixel side when the box is drawn into the preprocessed frame
SUPERSAMPLE = 4


def frame_to_source(image: np.ndarray, config: Any) -> np.ndarray:
    """The affine map of the preprocessed frame into ``image``: (2, 3) float64 ``A`` with
    (row, col)_source = A @ (y, x, 1) for a preprocessed pixel (y, x).

    ``source_point`` is affine in (y, x) for one slice (crop offset, resize scale, midline
    rotation about the frame's centre); three points give ``A`` and a fourth checks it.

    Raises
    ------
    MriscanError
        If the fourth point is off by more than 1e-6 source pixels (``source_point`` is no
        longer affine: this shortcut would draw the boxes wrong).
    """
    p0 = np.asarray(source_point(image, 0.0, 0.0, config))
    py = np.asarray(source_point(image, 1.0, 0.0, config)) - p0
    px = np.asarray(source_point(image, 0.0, 1.0, config)) - p0
    a = np.stack([py, px, p0], axis=1)
    check = np.asarray(source_point(image, 17.0, 29.0, config))
    if np.abs(a @ np.array([17.0, 29.0, 1.0]) - check).max() > 1e-6:
        raise MriscanError("source_point is not affine: the box masks cannot be drawn this way.")
    return a


def box_mask(image: np.ndarray, box: tuple[float, ...], config: Any) -> np.ndarray:
    """The fraction of each preprocessed pixel that lies in ``box`` (x_center, y_center, width,
    height: fractions of the source side, YOLO), (S, S) float32 in [0, 1]."""
    a = frame_to_source(image, config)
    s, k = config.size, SUPERSAMPLE
    sub = (np.arange(s * k) + 0.5) / k - 0.5  # sample centres, pixel centres at integers
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel(), np.ones(yy.size)])
    sy, sx = a @ pts
    h, w = image.shape
    xc, yc, bw, bh = box
    inside = (np.abs((sx + 0.5) / w - xc) <= bw / 2) & (np.abs((sy + 0.5) / h - yc) <= bh / 2)
    return inside.reshape(s, k, s, k).mean(axis=(1, 3)).astype(np.float32)


def store_masks(store: Any, data: Path, cache: Path) -> np.ndarray:
    """Box masks (N, S, S) float32 of every store sample, in store order, cached in ``cache``.

    Raises
    ------
    MriscanError
        If a sample's source file has no row in ``data/boxes.csv``.
    """
    if cache.is_file():
        return np.load(cache)
    with (data / "boxes.csv").open(newline="") as fh:
        boxes = {
            r["file"]: tuple(float(r[k]) for k in ("x_center", "y_center", "width", "height"))
            for r in csv.DictReader(fh)
        }
    recs = store.index.records
    out = np.zeros((len(recs), store.image_size, store.image_size), np.float32)
    for i, rec in enumerate(recs):
        if rec.source not in boxes:
            raise MriscanError(f"{rec.source} has no box in {data / 'boxes.csv'}.")
        out[i] = box_mask(decode_image(data / rec.source), boxes[rec.source], store.config)
    np.save(cache, out)
    return out


def check_png(store: Any, data: Path, path: Path, positions: list[int]) -> None:
    """Picture of the masks of ``positions``: source + box | stored slice + mask | 6×6 target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    with (data / "boxes.csv").open(newline="") as fh:
        boxes = {r["file"]: r for r in csv.DictReader(fh)}
    images, _ = store.read_batch(np.asarray(positions))
    fig, axes = plt.subplots(len(positions), 3, figsize=(9, 3 * len(positions)))
    s = store.image_size
    for row, pos, img in zip(axes, positions, images, strict=True):
        rec = store.index.records[pos]
        src = decode_image(data / rec.source)
        b = boxes[rec.source]
        xc, yc, bw, bh = (float(b[k]) for k in ("x_center", "y_center", "width", "height"))
        h, w = src.shape
        m = box_mask(src, (xc, yc, bw, bh), store.config)
        row[0].imshow(src, cmap="gray")
        row[0].add_patch(
            Rectangle(((xc - bw / 2) * w, (yc - bh / 2) * h), bw * w, bh * h, fill=False, ec="r")
        )
        row[0].set_title(rec.source, fontsize=8)
        row[1].imshow(img, cmap="gray")
        row[1].contour(m, levels=[0.5], colors="r")
        row[1].set_title("stored slice + mask", fontsize=8)
        row[2].imshow(m.reshape(6, s // 6, 6, s // 6).mean(axis=(1, 3)), vmin=0, vmax=1)
        row[2].set_title("6x6 target", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


class BalancedBoxLoss(keras.layers.Layer):
    """Per-slice class-balanced binary cross-entropy of box logits against a soft box mask.

    Inputs ``(logits, target)``: (batch, h, w, 1) float32 each, target in [0, 1]. Cells are
    weighted target / Σ target + (1 − target) / Σ (1 − target), halved, so the inside and the
    outside of the box count equally whatever the box's size. Output (batch,) float32.
    """

    def call(self, logits, target):
        ops = keras.ops
        z = ops.cast(logits, "float32")
        t = ops.cast(target, "float32")
        # numerically stable BCE with logits: max(z, 0) − z t + log(1 + e^−|z|)
        bce = ops.relu(z) - z * t + ops.log1p(ops.exp(-ops.abs(z)))
        pos = ops.sum(t, axis=(1, 2, 3), keepdims=True)
        neg = ops.sum(1.0 - t, axis=(1, 2, 3), keepdims=True)
        wgt = 0.5 * t / ops.maximum(pos, 1e-6) + 0.5 * (1.0 - t) / ops.maximum(neg, 1e-6)
        return ops.sum(wgt * bce, axis=(1, 2, 3))


def augmented_graph(base: keras.Model) -> tuple[dict[str, Any], dict[str, Any]]:
    """``base``'s layers (shared: training on this graph trains ``base``) called on a slice
    input, with the geometric augmentation applied to the slice and a box-mask input stacked as
    channels, so the mask follows every flip, rotation and zoom.

    Returns ``(inputs, tensors)``: inputs ``slice`` and ``mask`` (batch, S, S, 1); tensors
    ``class_prob`` (base's output), ``penultimate`` (the input of base's output layer),
    ``mask`` (the augmented mask) and every layer's output by the layer's name.
    """
    s = int(base.input_shape[1])
    slice_in = keras.Input((s, s, 1), name="slice")
    mask_in = keras.Input((s, s, 1), name="mask")
    x, m = slice_in, mask_in
    tensors: dict[str, Any] = {}
    for layer in base.layers[1:]:
        if layer is base.layers[-1]:
            tensors["penultimate"] = x
        if layer.name in GEOMETRIC:
            joint = type(layer).from_config({**layer.get_config(), "name": f"joint_{layer.name}"})
            xm = joint(keras.ops.concatenate([x, m], axis=-1))
            x, m = xm[..., :-1], xm[..., -1:]
        else:
            x = layer(x)
        tensors[layer.name] = x
    tensors["class_prob"], tensors["mask"] = x, m
    return {"slice": slice_in, "mask": mask_in}, tensors


def training_model(base: keras.Model, heads: list[str]) -> keras.Model:
    """The ``augmented_graph`` of ``base`` with a 1×1 box head on each layer of ``heads``.
    Inputs ``slice`` and ``mask`` (batch, S, S, 1); outputs ``class_prob`` (base's) and
    ``box`` (batch,): the heads' mean ``BalancedBoxLoss`` against the augmented mask."""
    s = int(base.input_shape[1])
    inputs, t = augmented_graph(base)
    losses = []
    for name in heads:
        f = t[name]
        logit = keras.layers.Conv2D(1, 1, name=f"box_{name}", dtype="float32")(f)
        target = keras.layers.AveragePooling2D(s // int(f.shape[1]), name=f"target_{name}")(
            t["mask"]
        )
        losses.append(BalancedBoxLoss(name=f"loss_{name}")(logit, target))
    box = losses[0] if len(losses) == 1 else keras.layers.Average(name="box")(losses)
    if len(losses) == 1:
        box = keras.layers.Identity(name="box")(box)
    return keras.Model(inputs, {"class_prob": t["class_prob"], "box": box})


def cam_map(feats: Any, grads: Any, gradcam: bool) -> Any:
    """One layer's heatmap, (batch, h, w) float32, before any scaling.

    ``feats``, ``grads``: (batch, h, w, C) activations of one layer and the gradient of the
    explained logit with respect to them. LayerCAM's map, ReLU(Σ_c ReLU(g_c) ⊙ A_c) (Jiang et
    al. 2021), or with ``gradcam`` Grad-CAM's, ReLU(Σ_c mean(g_c) A_c) (Selvaraju et al.
    2017), as ``mriscan.explain`` draws them; differentiable in both factors (double
    back-propagation, as GAIN's attention loss, Li et al. 2018).
    """
    ops = keras.ops
    g = ops.cast(grads, "float32")
    a = ops.cast(feats, "float32")
    w = ops.mean(g, axis=(1, 2), keepdims=True) if gradcam else ops.relu(g)
    return ops.relu(ops.sum(w * a, axis=-1))


def cam_in_box_loss(feats: Any, grads: Any, target: Any, gradcam: bool) -> Any:
    """−log of the share of a heatmap's mass inside the box, per slice: (batch,) float32.

    ``feats``, ``grads`` as in ``cam_map``; ``target``: (batch, h, w, 1) soft box mask on the
    layer's grid. A map that is zero everywhere gives no gradient.
    """
    ops = keras.ops
    cam = cam_map(feats, grads, gradcam)
    share = ops.sum(cam * target[..., 0], axis=(1, 2)) / (ops.sum(cam, axis=(1, 2)) + 1e-6)
    return -ops.log(share + 1e-3)


def unit_map(cam: Any, size: int) -> Any:
    """(batch, h, w) map → (batch, S, S), bilinear, each scaled to a maximum of 1, as
    ``mriscan.explain`` upsamples and scales its maps."""
    ops = keras.ops
    c = ops.image.resize(cam[..., None], (size, size), interpolation="bilinear")[..., 0]
    return c / (ops.max(c, axis=(1, 2), keepdims=True) + 1e-6)


def peak_in_box_loss(unit: Any, mask: Any, beta: float) -> Any:
    """−log of the soft-argmax probability that a map's peak lies in the box, per slice:
    (batch,) float32. ``unit``: (batch, S, S) maps scaled to a maximum of 1 (``unit_map``);
    ``mask``: (batch, S, S) soft box mask in the same frame. softmax(β · map) over the S×S
    pixels is a differentiable stand-in for the pointing game's argmax (β → ∞)."""
    ops = keras.ops
    flat = ops.reshape(beta * unit, (ops.shape(unit)[0], -1))
    p = ops.softmax(flat, axis=-1)
    inside = ops.sum(p * ops.reshape(mask, (ops.shape(mask)[0], -1)), axis=-1)
    return -ops.log(inside + 1e-6)


def fit_cam(
    base: keras.Model,
    cfg: TrainConfig,
    hw: Any,
    steps: int,
    k: int,
    train: tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray],
    val: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    weight: float,
    heads: list[str],
    beta: float | None = None,
    gradcam_share: float = 0.5,
    cam_inference: bool = False,
) -> dict[str, list[float]]:
    """Train ``base`` on class-weighted cross-entropy (label smoothing) + ``weight`` × the mean
    ``cam_in_box_loss`` of the true class on the layers the product's heatmaps read: LayerCAM
    on the rectified outputs of blocks 2 and 3, Grad-CAM on block 4's (``heads`` is not used).
    ``beta`` None: the loss of each layer is ``cam_in_box_loss`` on its own grid; a number:
    ``peak_in_box_loss`` (soft pointing game) of the fused LayerCAM map of blocks 2-3 and of
    block 4's Grad-CAM map, each upsampled and scaled as the product draws it, weighted
    1 − ``gradcam_share`` and ``gradcam_share``. ``cam_inference``: the maps of the loss come
    from a second, inference-mode pass (no dropout or augmentation, batch norm's moving
    statistics), as the product computes them; the cross-entropy keeps the training pass.
    AdamW with warm-up and cosine decay as ``compile_model`` sets it; batches of the global
    batch size in a seeded order per epoch; TensorFlow only (nested ``GradientTape``).
    Returns the per-epoch history (loss, cam_loss, val_loss, val_accuracy)."""
    import tensorflow as tf

    del heads
    names = block_outputs(base)
    layer_cams, grad_cam_layer = names[-3:-1], names[-1]
    explained = [*layer_cams, grad_cam_layer]
    s = int(base.input_shape[1])
    inputs, t = augmented_graph(base)
    probe = keras.Model(
        inputs,
        {"penultimate": t["penultimate"], "mask": t["mask"], **{n: t[n] for n in explained}},
    )
    compile_model(base, cfg.optimizer, hw, steps, cfg.fit.epochs, num_classes=k)
    opt = base.optimizer
    opt.build(base.trainable_variables)
    out = base.layers[-1]
    ce = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.optimizer.label_smoothing)

    @tf.function
    def step(x, m, y, w):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                o = probe({"slice": x, "mask": m}, training=True)
                logits = tf.matmul(o["penultimate"], out.kernel) + out.bias
                if cam_inference:  # the maps of the model as it is scored: no dropout or
                    # augmentation, batch norm on its moving statistics
                    o = probe({"slice": x, "mask": m}, training=False)
                    cam_logits = tf.matmul(o["penultimate"], out.kernel) + out.bias
                else:
                    cam_logits = logits
                feats = [o[n] for n in explained]
                inner.watch(feats)
                chosen = tf.reduce_sum(cam_logits * y)
            grads = inner.gradient(chosen, feats)
            cls = ce(y, tf.nn.softmax(logits), sample_weight=w)
            if beta is None:  # in-box share of each layer's map on its own grid
                cams = []
                for n, f, g in zip(explained, feats, grads, strict=True):
                    r = s // int(f.shape[1])
                    target = tf.nn.avg_pool2d(o["mask"], r, r, "VALID")
                    cams.append(tf.reduce_mean(cam_in_box_loss(f, g, target, n == grad_cam_layer)))
                cam = tf.add_n(cams) / len(cams)
            else:  # soft pointing game of the two maps the product draws, at S×S
                maps = [
                    unit_map(cam_map(f, g, n == grad_cam_layer), s)
                    for n, f, g in zip(explained, feats, grads, strict=True)
                ]
                fused = tf.add_n(maps[:-1]) / (len(maps) - 1)
                fused = fused / (tf.reduce_max(fused, axis=(1, 2), keepdims=True) + 1e-6)
                box = o["mask"][..., 0]
                cam = (1.0 - gradcam_share) * tf.reduce_mean(
                    peak_in_box_loss(fused, box, beta)
                ) + gradcam_share * tf.reduce_mean(peak_in_box_loss(maps[-1], box, beta))
            total = cls + weight * cam
        variables = base.trainable_variables
        opt.apply_gradients(zip(outer.gradient(total, variables), variables, strict=True))
        return cls, cam

    x_tr, y_tr, sw = train
    n, gb = len(sw), hw.global_batch
    history: dict[str, list[float]] = {
        "loss": [],
        "cam_loss": [],
        "val_loss": [],
        "val_accuracy": [],
    }
    for epoch in range(cfg.fit.epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        sums = np.zeros(2)
        batches = 0
        for b in range(0, n, gb):
            idx = order[b : b + gb]
            if len(idx) < 2:  # a batch of one makes batch-norm statistics meaningless
                continue
            c, a = step(x_tr["slice"][idx], x_tr["mask"][idx], y_tr["class_prob"][idx], sw[idx])
            sums += [float(c), float(a)]
            batches += 1
        prob = np.asarray(base.predict(val[0]["slice"], batch_size=64, verbose=0))
        yv = val[1]["class_prob"]
        history["loss"].append(sums[0] / batches)
        history["cam_loss"].append(sums[1] / batches)
        history["val_loss"].append(float(ce(yv, prob)))
        history["val_accuracy"].append(float((prob.argmax(1) == yv.argmax(1)).mean()))
        log.info(
            "epoch %d/%d: loss %.4f, cam_loss %.4f, val_loss %.4f, val_accuracy %.4f (%.0f s)",
            epoch + 1,
            cfg.fit.epochs,
            *(history[h][-1] for h in ("loss", "cam_loss", "val_loss", "val_accuracy")),
            time.perf_counter() - t0,
        )
    return history


def _identity_loss(y_true, y_pred):
    """The ``box`` output already is the per-slice loss."""
    return y_pred


def run_arm(
    weight: float,
    mode: str,
    store: Any,
    task: Any,
    split: dict[str, np.ndarray],
    masks: np.ndarray,
    cfg: TrainConfig,
    data: Path,
    out: Path,
    head_blocks: tuple[int, ...],
    beta: float | None = None,
    gradcam_share: float = 0.5,
    cam_inference: bool = False,
) -> dict[str, Any]:
    """Train one arm (``mode`` "feature": box heads on ``head_blocks``; "cam": the heatmaps'
    in-box share on the layers LayerCAM and Grad-CAM read; box-loss weight ``weight``), save
    its base model like ``mriscan train``, score test accuracy, macro-F1 and the pointing
    game (LayerCAM and Grad-CAM)."""
    t0 = time.perf_counter()
    layout = RunLayout(out)
    layout.root.mkdir(parents=True, exist_ok=True)
    k = task.num_classes
    hw = setup_for(cfg)
    keras.utils.set_random_seed(cfg.seed)
    base = build_model(store.image_size, cfg.model, num_classes=k, seed=cfg.seed)
    names = block_outputs(base)
    heads = [names[b - 1] for b in head_blocks]
    steps = int(np.ceil(len(split["train"]) / hw.global_batch))
    epochs = cfg.fit.epochs

    def arrays(idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        idx = np.sort(idx)  # store order; fit shuffles
        x, y = load_batch(
            store, idx, store.config.normalization, store.config.threshold, task.label_map, k
        )
        return (
            {"slice": x, "mask": masks[idx][..., None]},
            {"class_prob": y, "box": np.zeros(len(idx), np.float32)},
        )

    x_tr, y_tr = arrays(split["train"])
    x_va, y_va = arrays(split["val"])
    labels_tr = y_tr["class_prob"].argmax(axis=1)
    cw = class_weights(labels_tr, k) if cfg.optimizer.class_weight else None
    sw = np.array([cw[c] for c in labels_tr], np.float32) if cw else np.ones(len(labels_tr))
    if mode == "cam":
        history = fit_cam(
            base,
            cfg,
            hw,
            steps,
            k,
            (x_tr, y_tr, sw),
            (x_va, y_va),
            weight,
            heads,
            beta,
            gradcam_share,
            cam_inference,
        )
    else:
        tm = training_model(base, heads)
        compile_model(tm, cfg.optimizer, hw, steps, epochs, num_classes=k)
        tm.compile(
            optimizer=tm.optimizer,
            loss={
                "class_prob": keras.losses.CategoricalCrossentropy(
                    label_smoothing=cfg.optimizer.label_smoothing
                ),
                "box": _identity_loss,
            },
            loss_weights={"class_prob": 1.0, "box": float(weight)},
            metrics={"class_prob": [keras.metrics.CategoricalAccuracy(name="accuracy")]},
        )
        hist = tm.fit(
            x_tr,
            y_tr,
            sample_weight={"class_prob": sw, "box": np.ones_like(sw)},
            validation_data=(x_va, y_va),
            batch_size=hw.global_batch,
            epochs=epochs,
            shuffle=True,
            verbose=2,
        )
        history = {k2: [float(v) for v in vals] for k2, vals in hist.history.items()}
    t_train = time.perf_counter() - t0
    seen = np.sort(np.concatenate([split["train"], split["val"]]))
    card = publish_model(
        base.save,
        card_for(store, cfg, None, None, seen=seen),
        layout.model,
        signatures=store.signatures()[seen],
    )
    _write_split(layout, store, split, cfg, card.model_sha256)
    labels = task.labels(store.labels)
    prob = predict_store(base, store, split["test"], tta=cfg.fit.tta)
    test = score(task, labels[split["test"]], prob, None)
    folder = out / "test_split"
    if not folder.exists():
        folder.mkdir()
        split_folder.main(layout.root, data, folder)
    pointing = {
        m: pointing_game(layout.model, folder, folder / "boxes.csv", method=m)
        for m in ("layercam", "gradcam")
    }
    rec = {
        "weight": weight,
        "mode": mode,
        "beta": beta,
        "gradcam_share": gradcam_share,
        "cam_inference": cam_inference,
        "heads": heads if mode == "feature" else None,
        "epochs": epochs,
        "seed": cfg.seed,
        "model": str(layout.model),
        "n": {p: len(v) for p, v in split.items()},
        "test": test,
        "pointing": {
            m: {
                "overall": p["overall"],
                "per_class": p["per_class"],
            }
            for m, p in pointing.items()
        },
        "history": history,
        "minutes_train": t_train / 60,
        "minutes": (time.perf_counter() - t0) / 60,
    }
    (out / "experiment.json").write_text(json.dumps(rec, indent=2, default=str))
    return rec


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("data", type=Path, help="class folders + boxes.csv")
    p.add_argument("store", type=Path, help="store to ingest DATA into (or reuse)")
    p.add_argument("out", type=Path)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("feature", "cam"), default="feature")
    p.add_argument(
        "--beta",
        type=float,
        default=None,
        help="cam mode: soft pointing-game loss with this sharpness (default: in-box share)",
    )
    p.add_argument(
        "--gradcam-share",
        type=float,
        default=0.5,
        help="with --beta: weight of the Grad-CAM map's loss (the fused LayerCAM map's: 1 - it)",
    )
    p.add_argument(
        "--cam-inference",
        action="store_true",
        help="cam mode: the loss's maps from an inference-mode pass (as the product draws them)",
    )
    p.add_argument("--heads", type=int, nargs="+", default=[2, 3, 4], help="conv blocks (1-4)")
    p.add_argument("--check-png", type=Path, default=None)
    p.add_argument(
        "--occlude", type=Path, nargs="+", default=None, help="arm folders: occlusion check only"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(
        image_size=args.image_size,
        seed=args.seed,
        fit=FitConfig(epochs=args.epochs),
        pretrain=PretrainConfig(phantoms=0),
    )
    try:
        store, task, kept = open_for_task(args.data, cfg, args.store, None)
        if args.check_png is not None:
            rng = np.random.default_rng(0)
            check_png(store, args.data, args.check_png, sorted(rng.choice(kept, 6, replace=False)))
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        if args.occlude:
            masks = np.load(args.out / f"masks-{store.image_size}.npy")
            with (args.out / "occlusion.jsonl").open("a") as fh:
                for arm in args.occlude:
                    rec = occlusion(arm, store, task, masks, args.seed)
                    fh.write(json.dumps(rec) + "\n")
                    print(json.dumps(rec), flush=True)
            return 0
        t0 = time.perf_counter()
        masks = store_masks(store, args.data, args.out / f"masks-{store.image_size}.npy")
        log.info("box masks of %d slices in %.0f s", len(masks), time.perf_counter() - t0)
        split = holdout_split(store, task, kept, cfg)
        for w in args.weights:
            rec = run_arm(
                w,
                args.mode,
                store,
                task,
                split,
                masks,
                cfg,
                args.data,
                args.out
                / (
                    f"{args.mode}-w{w:g}"
                    + ("" if args.beta is None else f"-b{args.beta:g}")
                    + ("" if args.gradcam_share == 0.5 else f"-g{args.gradcam_share:g}")
                    + ("-inf" if args.cam_inference else "")
                ),
                tuple(args.heads),
                args.beta,
                args.gradcam_share,
                args.cam_inference,
            )
            with (args.out / "results.jsonl").open("a") as fh:
                fh.write(json.dumps(rec, default=str) + "\n")
            print(summary(rec), flush=True)
    except MriscanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def occlusion(arm: Path, store: Any, task: Any, masks: np.ndarray, seed: int = 0) -> dict:
    """Does the model's decision rest on the box's content? The mean drop of the true class's
    probability (test split of ``arm``'s ``split.json``, TTA as the card says) when the pixels
    of the slice's own box (mask ≥ 0.5) are set to 0 (the slice's mean after z-scoring),
    against the drop when another test slice's box, of the same class, is occluded instead
    (drawn with a seeded permutation; a proxy for "a box-sized region where the tumor is
    not"). Occlusion sensitivity after Zeiler & Fergus 2014."""
    from mriscan.inference import predict_batch
    from mriscan.model import load_model

    model, card = load_model(RunLayout(arm).model)
    split = json.loads((arm / "split.json").read_text())
    idx = np.sort(np.asarray(split["test"]["indices"], np.int64))
    x, _ = load_batch(store, idx, store.config.normalization, store.config.threshold)
    y = task.labels(store.labels)[idx]
    own = masks[idx][..., None] >= 0.5
    rng = np.random.default_rng(seed)
    other = np.empty_like(own)
    for c in np.unique(y):
        pos = np.nonzero(y == c)[0]
        other[pos] = own[rng.permutation(pos)]
    other &= ~own  # only where the slice's own box is not
    rows = np.arange(len(idx))

    def p_true(images: np.ndarray) -> np.ndarray:
        return predict_batch(model, images, 64, tta=card.tta)[rows, y]

    base = p_true(x)
    drop_own = base - p_true(np.where(own, 0.0, x))
    drop_other = base - p_true(np.where(other, 0.0, x))
    names = task.class_names
    return {
        "arm": arm.name,
        "own_box": {names[c]: float(drop_own[y == c].mean()) for c in np.unique(y)},
        "other_box": {names[c]: float(drop_other[y == c].mean()) for c in np.unique(y)},
        "own_box_all": float(drop_own.mean()),
        "other_box_all": float(drop_other.mean()),
    }


def summary(rec: dict[str, Any]) -> str:
    """One line per arm: test accuracy, macro-F1, pointing per class and overall."""
    parts = [f"{rec['mode']} w={rec['weight']:g}"]
    t = rec["test"]
    parts.append(f"acc {t.get('accuracy', float('nan')):.3f} macroF1 {t.get('macro_f1', 'n/a')}")
    for m, p in rec["pointing"].items():
        per = ", ".join(f"{c} {v['pointing']:.3f}" for c, v in sorted(p["per_class"].items()))
        parts.append(f"{m}: {per}; all {p['overall']['pointing']:.3f}")
    parts.append(f"{rec['minutes']:.1f} min")
    return " | ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
