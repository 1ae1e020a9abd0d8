"""Class-activation heatmaps (Grad-CAM of the last convolution, LayerCAM of several), computed
with ``keras.ops``.

The arithmetic (channel weights, weighted sum, ReLU, upsampling) is ``keras.ops``; only the
gradient itself comes from the backend's autodiff (TensorFlow ``GradientTape``, ``jax.grad``
or torch autograd), as Keras has no backend-neutral gradient op.
"""

from __future__ import annotations

import logging
import math
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import keras
import numpy as np
from keras import ops

from mriscan._heatmap_record import HeatmapLedger
from mriscan.config import CAM_METHODS, DEFAULT_CAM
from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.io import display_path
from mriscan.readers import describe_flags, slice_warnings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mriscan.readers import ReadOptions

__all__ = [
    "BOX_COLUMNS",
    "CAM_METHODS",
    "POINTING_TOLERANCE_PX",
    "SliceBoxes",
    "block_outputs",
    "class_activation_map",
    "explain",
    "grad_cam",
    "heatmap_names",
    "layer_cam",
    "peak_box_distance",
    "peak_fraction",
    "peak_in_any_box",
    "peak_in_box",
    "pointing_game",
    "pointing_rule",
    "pointing_target",
    "read_boxes",
    "save_overlay",
    "slices_without_box",
]


def _target_layer(model: keras.Model) -> str:
    """The last conv block's rectified output (its conv, BN and ReLU), the usual Grad-CAM target."""
    return block_outputs(model)[-1]


def block_outputs(model: keras.Model) -> list[str]:
    """Names of each convolution's rectified output (the conv followed by its BN and activation
    layers), shallowest first: the layers ``grad_cam`` and ``layer_cam`` can explain.

    Raises
    ------
    MriscanError
        If the model has no Conv2D layer.
    """
    layers = list(model.layers)
    names = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        while i + 1 < len(layers) and isinstance(
            layers[i + 1], keras.layers.BatchNormalization | keras.layers.Activation
        ):
            i += 1
        names.append(layers[i].name)
    if not names:
        raise MriscanError(f"Model {model.name} has no Conv2D layer.")
    return names


def _split_model(model: keras.Model, layer_name: str) -> tuple[keras.Model, Any]:
    """The model cut at ``layer_name``: inputs → features, features → class scores.

    The scores are the output of a sigmoid model (a positive factor p(1 − p) per image away
    from its logit, which the per-image normalisation of the map removes) and the logits
    (pre-softmax scores) of a softmax model, as Grad-CAM prescribes: the gradient of a softmax
    probability mixes in every other class and vanishes once the prediction is confident.
    """
    layer = model.get_layer(layer_name)
    features = keras.Model(model.inputs[0], layer.output)
    out = model.layers[-1]
    if int(model.output_shape[-1]) == 1:
        return features, keras.Model(layer.output, model.output)
    penultimate = keras.Model(layer.output, out.input)

    def logits(f: Any, training: bool = False) -> Any:
        return ops.matmul(penultimate(f, training=training), out.kernel) + out.bias

    return features, logits


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


#: each method's name as shown on plots and in DICOM descriptions, and its source
CAM_NAMES = {"gradcam": "Grad-CAM", "layercam": "LayerCAM"}
CAM_SOURCES = {"gradcam": "Selvaraju et al. 2017", "layercam": "Jiang et al. 2021"}


def _selection(
    model: keras.Model, head: Any, feats: Any, class_index: int | np.ndarray | None
) -> np.ndarray:
    """(N, K) float32 one-hot of the class explained per image (K = 1: the sigmoid output)."""
    n, k = int(feats.shape[0]), int(model.output_shape[-1])
    if k == 1:
        return np.ones((n, 1), np.float32)
    if class_index is None:
        cls = np.asarray(ops.convert_to_numpy(head(feats, training=False))).argmax(axis=1)
    else:
        cls = np.broadcast_to(np.asarray(class_index, np.int64), (n,))
    return np.eye(k, dtype=np.float32)[cls]


def _upsample_unit(cam: Any, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w, 1) maps → (N, S, S) float32, bilinear, each scaled to [0, 1] (zero stays zero)."""
    cam = ops.image.resize(cam, size, interpolation="bilinear")[..., 0]
    peak = ops.max(cam, axis=(1, 2), keepdims=True)
    cam = ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), ops.zeros_like(cam))
    return np.asarray(ops.convert_to_numpy(cam), np.float32)


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
    grads = _gradient(head, feats, _selection(model, head, feats, class_index))
    weights = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(weights * ops.cast(feats, "float32"), axis=-1, keepdims=True))
    return _upsample_unit(cam, (x.shape[1], x.shape[2]))


def layer_cam(
    model: keras.Model,
    images: np.ndarray,
    *,
    layer_names: Sequence[str] | None = None,
    class_index: int | np.ndarray | None = None,
) -> np.ndarray:
    """LayerCAM maps (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization", IEEE TIP 30) of one class's output, fused over several layers.

    Per layer, every activation is weighted by its own positive gradient,
    ReLU(Σ_c ReLU(∂y/∂A_c) ⊙ A_c), instead of Grad-CAM's one spatially averaged weight per
    channel; that keeps the fine maps of shallow layers usable. Each layer's map is upsampled
    to S×S and scaled to [0, 1], and the fused map is their mean, scaled to [0, 1] again
    (mriscan's own fusion rule, the simplest one measured; the paper scales shallow layers'
    maps by tanh(2·M) before combining them, as e.g. TorchCAM does). On the
    tumor boxes of ``figshare_br35h`` the fused map of all but the last conv block put its peak
    inside the tumor box more often than Grad-CAM of the last block: 0.286 vs 0.133 for the
    4-class figshare model, 0.167 vs 0.136 for a ``brain_mri`` model (experiments/ACCURACY.md,
    row 49).

    Parameters
    ----------
    model : keras.Model
    images : ndarray of shape (N, S, S, 1), float32
        Normalised model inputs.
    layer_names : sequence of str, optional
        Layers fused (default: the rectified outputs of the two conv blocks before the last,
        or the last one for a one-block model; of the fusions measured on two models, blocks
        2-3 of 4 localised best, 0.286 and 0.167, vs 0.286 and 0.155 for blocks 1-3).
    class_index : int or ndarray of shape (N,), optional
        As in ``grad_cam``.

    Returns
    -------
    ndarray of shape (N, S, S), float32
        Each map scaled to [0, 1] (all zero when the class evidence is nowhere positive).
    """
    x = np.asarray(images, np.float32)
    if layer_names is None:
        blocks = block_outputs(model)
        layer_names = blocks[-3:-1] or blocks
    if not layer_names:
        raise ConfigError("layer_names must name at least one layer.")
    select = None
    total = np.zeros(x.shape[:3], np.float32)
    for name in layer_names:
        features, head = _split_model(model, name)
        feats = features(x, training=False)
        if select is None:  # the class is chosen once, from the model's own output
            select = _selection(model, head, feats, class_index)
        grads = ops.cast(_gradient(head, feats, select), "float32")
        cam = ops.relu(ops.sum(ops.relu(grads) * ops.cast(feats, "float32"), -1, keepdims=True))
        total += _upsample_unit(cam, (x.shape[1], x.shape[2]))
    peak = total.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, total / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def class_activation_map(
    model: keras.Model,
    images: np.ndarray,
    *,
    method: str = DEFAULT_CAM,
    class_index: int | np.ndarray | None = None,
) -> np.ndarray:
    """The map of ``method`` (one of ``CAM_METHODS``) with its default layers; shapes as in
    ``grad_cam``.

    Raises
    ------
    ConfigError
        On an unknown ``method``.
    """
    _check_method(method)
    if method == "gradcam":
        return grad_cam(model, images, class_index=class_index)
    return layer_cam(model, images, class_index=class_index)


def _check_method(method: str) -> None:
    """Raise ``ConfigError`` unless ``method`` is one of ``CAM_METHODS``."""
    if method not in CAM_METHODS:
        raise ConfigError(f"method must be one of {CAM_METHODS}. Received: {method!r}.")


def _peak(cam: np.ndarray) -> tuple[int, int]:
    """(row, col) of a map's maximum."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(r), int(c)


def save_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    method: str = DEFAULT_CAM,
) -> Path:
    """Write the slice with its heatmap overlaid (``mriscan.plots.overlay_rgb``: jet, 40%
    opacity) beside the plain slice, as a PNG at ``path``; returns ``path``. ``method`` (one of
    ``CAM_METHODS``) names the map's panel."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from mriscan.plots import overlay_rgb, save_figure, subplots

    fig, (a, b) = subplots(1, 2, figsize=(7, 3.6))
    a.imshow(image, cmap="gray")
    a.set_title("slice")
    b.imshow(overlay_rgb(image, cam))
    b.set_title(CAM_NAMES.get(method, method))
    for ax in (a, b):
        ax.axis("off")
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
    fig.colorbar(scale, ax=b, fraction=0.046, pad=0.04)
    if title:  # wrapped to the figure's width: a long path must not run off both edges
        fig.suptitle(_wrap_title(title, fig.get_figwidth(), TITLE_SIZE), fontsize=TITLE_SIZE)
    return save_figure(fig, path)


#: font size (points) of an overlay's title
TITLE_SIZE = 10.0


def _wrap_title(title: str, width_in: float, fontsize: float) -> str:
    """``title`` in lines that fit ``width_in`` inches at ``fontsize`` points: at most
    ``width_in * 72 / (0.62 * fontsize)`` characters per line (0.62 em: wider than the mean
    character of DejaVu Sans, matplotlib's default font, so a line of capitals and digits
    fits too), broken at spaces, and inside a word (a path) that is longer."""
    chars = max(20, int(width_in * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.wrap(title, chars, break_long_words=True, break_on_hyphens=False))


def heatmap_names(paths: Sequence[str | os.PathLike[str]], method: str = DEFAULT_CAM) -> list[str]:
    """A distinct PNG file name for each image: its path relative to the deepest folder all
    images share, ``/`` written as ``__``, suffix dropped, ``_<method>.png`` added (below for
    ``method="gradcam"``; the default gives ``_layercam.png``).

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
    final = dict(zip(unique, numbered([stems[p] for p in unique]), strict=True))
    return [final[p] + f"_{method}.png" for p in absolute]


def numbered(stems: Sequence[str]) -> list[str]:
    """``stems`` with ``-2``, ``-3``, ... added, in order, to each one whose name (compared
    case-insensitively, as some file systems do) an earlier one took; a numbered name that is
    itself taken counts on (``a``, ``a``, ``a-2`` give ``a``, ``a-3``, ``a-2``)."""
    taken = {s.casefold() for s in stems}
    used: set[str] = set()
    out = []
    for s in stems:
        name, k = s, 1
        while name.casefold() in used or (k > 1 and name.casefold() in taken):
            k += 1
            name = f"{s}-{k}"
        used.add(name.casefold())
        out.append(name)
    return out


def _clashing(names: dict[Path, str]) -> set[Path]:
    """The keys whose names (case-folded) are shared with another key."""
    count: dict[str, int] = {}
    for n in names.values():
        count[n.casefold()] = count.get(n.casefold(), 0) + 1
    return {p for p, n in names.items() if count[n.casefold()] > 1}


def _flag(row: dict[str, Any], image: np.ndarray) -> None:
    """Give ``row`` the ``warning`` predict gives the same slice (uniform, thin: the rule of
    ``mriscan.readers.slice_warnings``), or ""."""
    flags = slice_warnings(image)
    row["warning"] = describe_flags(flags, image) if flags else ""


def explain(
    model_path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] = "artifacts/explain",
    explain_class: str | None = None,
    slices: Sequence[int] | None = None,
    top_k: int | None = None,
    method: str = DEFAULT_CAM,
    read_options: ReadOptions | None = None,
    show_paths: bool = False,
    dicom_out: str | os.PathLike[str] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Class-activation overlay PNG (``method``: ``layercam``, the default, or ``gradcam``; see
    ``class_activation_map``) for each image file and for chosen slices of DICOM series / NIfTI
    volumes.

    ``explain_class``: the class whose evidence is shown (default: the predicted class; for a
    two-class model the map is always that of the positive class's output, which rises with
    the evidence for it). Returns per explained slice ``path``, ``probability`` (of the
    explained class), ``explained_class``, ``label``, ``warning`` (the slice is uniform or
    thin, as ``predict`` flags it, else ""), ``decision`` (why that label:
    ``ModelCard.decision_text``, e.g. the threshold it was compared with), ``png``, ``cam_peak``
    ((row, col) of the map's maximum in the S×S model input) or ``error``.

    Image PNGs are named by ``heatmap_names`` (distinct for distinct files; a name a scanner
    slice's PNG also has is numbered ``-2``, in the order written); ``path`` is
    ``mriscan.io.display_path`` of the file's path, as ``mriscan predict`` names images. Scanner
    inputs are read as ingest and predict read them, one series or volume at a time
    (``mriscan.scan_predict.SeriesReads``: memory holds about one series' slices; the names
    come from the headers, read first), with ``read_options``, the
    ``mriscan.readers.ReadOptions`` of ``mriscan predict``'s --dicom-*/--nifti-*/--modality;
    what they leave open is read as the model card records, ``ModelCard.reader``, as in
    ``predict``). A slice's number is, for a NIfTI volume, its index
    along the slicing axis of the volume (``mriscan.nifti.NiftiSliceMeta.slice_index``, the
    same number as in its source ``nifti/<hash>#<index>``; only the slices read, e.g.
    those showing enough brain, can be explained), and for a DICOM series its place in the
    series ordered by slice position, from 0. ``slices`` picks those numbers of every series /
    volume; otherwise the ``top_k`` (default 3) slices most likely to show a tumor (or the
    explained class) are explained; giving both is an error. Their rows and PNGs are named by
    pseudonym (``series-<hash>_slice<k>``, ``volume-<hash>_slice<index>``; the hash is salted afresh
    each run), never by the file or folder name; ``show_paths`` names them by path instead,
    as ``mriscan predict --show-paths`` does: the row by ``<file>#<frame or slice>``, the PNG
    by the series folder or volume file (as ``heatmap_names`` names files), then, when one
    folder holds several series, ``_series<N>`` (their Series Numbers; see
    ``mriscan.scan_predict.series_labels``: the row of the series reads ``<folder> [series
    <N>]``), numbered ``-2``, ``-3`` where another series or volume took that name
    (``numbered``), and ``_slice<k>``. ``slices`` given twice are explained once; a number a
    series / volume does not have gives that unit a row with ``error`` (which slices it has) and
    ``missing_slice`` (the number asked for). A scanner file that
    gives no slice (unreadable, or no image) gets a row with ``error`` and ``level`` "file",
    named as ``mriscan predict`` names it (``mriscan.scan_predict.failed_file_name``: by
    pseudonym, or by path with ``show_paths``).

    ``dicom_out``: a folder where each explained slice read from DICOM also gets its overlay
    (``mriscan.plots.overlay_rgb`` of the S×S model input, the PNG's right panel) as a DICOM
    Secondary Capture in the source's study (``mriscan.dicom_sc.write_secondary_capture``: it
    carries the source's patient module, unlike the PNGs), one series per source series,
    model file, method and class, in ``<dicom_out>/<SOP Instance UID>.dcm``, both UIDs derived
    from those (a rerun replaces its objects, so a PACS gets no second series); its row then
    has ``dicom`` (the file), and ``dicom_note`` when elements of the source's header were
    mended or emptied in it (a birth date written YYYY-MM-DD, Patient's Sex "U"; the note names
    the elements, never their values). Slices that are no DICOM (JPEG/PNG, NIfTI), or
    whose source cannot take one, get ``dicom_skipped`` (the reason) instead.

    ``on_row``: called with each row as soon as it is made (its PNG written), so a caller can
    show progress; the rows are returned all the same.

    A rerun into the same ``out`` replaces the heat maps of the earlier run instead of adding
    a second set beside them (scanner slices' PNG names change with each run's salt): ``out``
    holds ``explain_files.json``, the PNGs each run wrote per ``method`` and ``explain_class``
    with their SHA-256 and their input file's (``mriscan._heatmap_record``), and once a run has
    written its own PNGs it deletes those an earlier run of the same method and class listed
    for input files this run was given, that it did not write again, unless changed since
    (logged: "replaced N heat map(s) an earlier run made of these inputs"). Maps of other
    inputs, files explain did not write, and the maps of another method or class, are kept; a
    run that fails, or writes no PNG, deletes nothing. Secondary Captures need no such record: their
    names derive from the source, so a rerun writes the same files.

    Raises
    ------
    ConfigError
        If ``explain_class`` is not one of the model's classes, ``top_k < 1``, a slice
        index is negative, or both ``slices`` and ``top_k`` are given.
    MriscanError
        If ``images`` is empty.
    """
    from mriscan.inference import predict_batch
    from mriscan.io import SourceFile, decode_image, file_kind
    from mriscan.model import load_model
    from mriscan.preprocess import normalize, preprocess
    from mriscan.readers import settings_for_model, warn_unseen_kinds
    from mriscan.scan import new_salt
    from mriscan.scan_predict import (
        SeriesReads,
        failed_file_name,
        label_stem,
        predict_arrays,
        series_labels,
    )

    if not images:
        raise MriscanError(
            "No image to explain: give .jpg/.jpeg/.png, DICOM or NIfTI files or folders "
            "holding them (hidden files and folders below a folder are skipped)."
        )
    _check_method(method)
    if slices is not None and top_k is not None:
        raise ConfigError(
            "slices (--slices) and top_k (--top-k) exclude each other: give the slices to "
            "explain, or how many of the most likely ones."
        )
    top_k = 3 if top_k is None else top_k
    if top_k < 1:
        raise ConfigError(f"top_k (--top-k) must be >= 1. Received: {top_k}.")
    if slices is not None:
        if any(k < 0 for k in slices):
            raise ConfigError(f"slices (--slices) must be >= 0. Received: {list(slices)}.")
        slices = list(dict.fromkeys(slices))  # the same slice twice: one PNG, one row
    model, card = load_model(model_path)
    if explain_class is not None and explain_class not in card.class_names:
        raise ConfigError(
            f"--class {explain_class!r} is not one of the model's classes {card.class_names}."
        )
    cfg = card.preprocess
    out = Path(out)
    results: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        results.append(row)
        if on_row is not None:  # the CLI prints each row as its map is written
            on_row(row)

    ledger = HeatmapLedger(out, method, explain_class)

    # every PNG name of this run (case-folded) -> the input it shows: an image's name and a
    # scanner slice's are made apart (flat_slice0.jpg and flat/ slice 0 both give
    # flat_slice0_layercam.png), so a name another input took is numbered here, as is one
    # of a file in `out` that explain did not write or that changed since
    taken: dict[str, Path] = {}

    def distinct(png_name: str, source: Path) -> str:
        base, name, k = png_name[: -len(f"_{method}.png")], png_name, 1
        while taken.get(name.casefold(), source) != source or (
            name.casefold() not in taken and not ledger.replaceable(name)
        ):
            k += 1
            name = f"{base}-{k}_{method}.png"
        taken[name.casefold()] = source
        return name

    def overlay(
        img: np.ndarray, name: str, png_name: str, source: Path
    ) -> tuple[dict[str, Any], np.ndarray]:
        if explain_class is not None:  # runs for different classes must not overwrite
            png_name = png_name.replace(f"_{method}.png", f"_{explain_class}_{method}.png")
        png_name = distinct(png_name, source)
        x = normalize(img, cfg.normalization, threshold=cfg.threshold)[None, ..., None]
        probs = predict_batch(model, x, 1, tta=card.tta)[0]
        label = card.decide(probs)
        target = label if explain_class is None else explain_class
        k = card.class_names.index(target)
        cam = class_activation_map(model, x, method=method, class_index=None if card.binary else k)[
            0
        ]
        prob = float(probs[k])
        why = card.decision_text(probs)
        png = save_overlay(
            img,
            cam,
            out / png_name,
            title=f"{name}: P({target}) = {prob:.2f}; predicted {label} ({why})",
            method=method,
        )
        ledger.add(png, source)
        row = {
            "path": name,
            "probability": prob,
            "explained_class": target,
            "label": label,
            "decision": why,
            "png": str(png),
            "cam_peak": _peak(cam),
            "error": "",
        }
        return row, cam

    with ledger:  # a rerun into `out` replaces the earlier run's heat maps
        not_dicom = "not a DICOM input: there is no study to file a Secondary Capture into"
        files = [Path(p) for p in images]
        kinds = [file_kind(p) for p in files]
        warn_unseen_kinds((k for k in kinds if k is not None), card.train_kinds)
        ledger.inputs(files)
        plain = [p for p, k in zip(files, kinds, strict=True) if k not in ("dicom", "nifti")]
        scans = [
            SourceFile(p, k) for p, k in zip(files, kinds, strict=True) if k in ("dicom", "nifti")
        ]
        for path, png_name in zip(plain, heatmap_names(plain, method), strict=True):
            try:
                raw = decode_image(path)
            except ImageDecodeError as exc:
                emit({"path": display_path(path), "error": exc.reason})
                continue
            shown = display_path(path)  # as predict names images: JPEG/PNG paths are shown
            row, _ = overlay(preprocess(raw, cfg), shown, png_name, path)
            _flag(row, raw)
            if dicom_out is not None:
                row["dicom_skipped"] = not_dicom
            emit(row)
        sc_series: dict[str, Any] = {}

        def explain_unit(unit: str, members: list, unit_name: str, path_stem: str) -> None:
            """The rows and PNGs of one series / volume's chosen slices."""
            members.sort(key=lambda rs: rs[1].order)
            numbers = _slice_numbers(unit, [s for _, s in members])
            if slices is not None:
                place = {n: k for k, n in enumerate(numbers)}
                chosen = [place[n] for n in slices if n in place]
                for n in (n for n in slices if n not in place):
                    emit(
                        {
                            "path": unit_name,
                            "error": _no_such_slice(unit, n, numbers),
                            "missing_slice": n,
                        }
                    )
            else:
                probs = predict_arrays(model, card, [s.image for _, s in members])
                score = _slice_score(card, probs, explain_class)
                chosen = sorted(np.argsort(-score, kind="stable")[:top_k].tolist())
            for k in chosen:
                r, s = members[k]
                img = preprocess(s.image, cfg)
                n = numbers[k]
                index = s.source.rsplit("#", 1)[-1]
                name = f"{display_path(r.path)}#{index}" if show_paths else s.source
                stem = path_stem if show_paths else unit.replace(":", "-")
                row, cam = overlay(
                    img, f"{name} (slice {n})", f"{stem}_slice{n}_{method}.png", r.path
                )
                _flag(row, s.image)
                if dicom_out is not None:
                    if r.kind != "dicom":
                        row["dicom_skipped"] = not_dicom
                    else:
                        if unit not in sc_series:
                            sc_series[unit] = _new_series(r.path, explain_class, method, model_path)
                        _secondary_capture(
                            row, r.path, int(index), img, cam, n, Path(dicom_out), sc_series[unit],
                            model_path, method,
                        )  # fmt: skip
                emit(row)

        if scans:  # read as the training data were, unless chosen otherwise
            read_options = settings_for_model(card.reader, read_options, kinds=card.train_kinds)
        salt = new_salt()  # this run's pseudonyms
        noted: list[str] = []
        # one series / volume in memory at a time: the headers first, then each group read,
        # explained and dropped (its names are known from the headers before any is drawn)
        with SeriesReads(scans, salt=salt, options=read_options) as series:
            places = dict(enumerate(series.places))
            named = {g: place for g, place in places.items() if place is not None}
            # the series folder or volume file of each group, and (show_paths) its PNG stem
            names = heatmap_names([place[0] for place in named.values()], method)
            stems = dict(zip(named, (n[: -len(f"_{method}.png")] for n in names), strict=True))
            # several series in one folder: "series <N>" tells them (and their files) apart
            labels = series_labels(named)
            # folder "a" series 2 and a folder "a_series2" would share a PNG name: numbered
            wanted = [stems[g] + (f"_{label_stem(labels[g])}" if labels[g] else "") for g in named]
            stems = dict(zip(named, numbered(wanted), strict=True))
            for g, reads in enumerate(series):
                noted += [r.note for r in reads if r.note]
                units: dict[str, list] = {}
                for r in reads:
                    if r.error is not None or r.skipped is not None or r.excluded is not None:
                        failed = failed_file_name(r, salt=salt, show_paths=show_paths)
                        emit({"path": failed.name, "error": failed.reason, "level": "file"})
                        continue
                    for s in r.slices:
                        units.setdefault(s.unit, []).append((r, s))
                for unit, members in units.items():  # one: a group is a series or volume
                    label = labels[g]
                    stem = stems[g]
                    shown = display_path(places[g][0]) + (f" [{label}]" if label else "")
                    explain_unit(unit, members, shown if show_paths else unit, stem)
        if noted:  # by count: paths may name the patient
            log.warning(
                "%d file(s) read with a note: %s", len(noted), "; ".join(sorted(set(noted))[:3])
            )
        return results


def _new_series(
    source: Path, explain_class: str | None, method: str, model_path: str | os.PathLike[str]
) -> Any:
    """The ``mriscan.dicom_sc.SCSeries`` of the Secondary Captures of ``source``'s series:
    series number 9000 + the source's last three digits (so it sorts after it in a viewer),
    described by the class explained (each image's Derivation Description names its own). Its
    UID is derived from the source's Series Instance UID, the model file's SHA-256, the map
    method and the class explained, so a rerun files into the same series (and, with the
    instance UIDs ``write_secondary_capture`` derives, replaces its objects) instead of adding
    one series per run."""
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import generate_uid

    from mriscan.dicom import read_header
    from mriscan.dicom_sc import SCSeries
    from mriscan.readers import file_sha256

    try:
        head = read_header(source)
        number = int(head.get("SeriesNumber") or 0)
        series_uid = str(head.get("SeriesInstanceUID") or source)
    except (OSError, InvalidDicomError, ValueError, TypeError):
        # the header is read again when the file is written, and its error reported
        number, series_uid = 0, str(source)
    what = explain_class if explain_class is not None else "predicted class"
    uid = generate_uid(
        entropy_srcs=["mriscan SC series", series_uid, file_sha256(model_path), method, what]
    )
    return SCSeries(uid, 9000 + number % 1000, f"mriscan {CAM_NAMES[method]} ({what})")


def _secondary_capture(
    row: dict[str, Any],
    source: Path,
    frame: int,
    img: np.ndarray,
    cam: np.ndarray,
    number: int,
    path: Path,
    series: Any,
    model_path: str | os.PathLike[str],
    method: str,
) -> None:
    """Write the row's overlay as a Secondary Capture (``row["dicom"]``, with
    ``row["dicom_note"]`` naming the source header's elements mended or emptied in it), or
    say why not (``row["dicom_skipped"]``)."""
    from mriscan.dicom_sc import SecondaryCaptureError, write_secondary_capture
    from mriscan.plots import overlay_rgb

    what = (
        f"{CAM_NAMES[method]} ({CAM_SOURCES[method]}) of class {row['explained_class']} "
        f"(P = {row['probability']:.3f}, predicted {row['label']}) by mriscan model "
        f"{Path(model_path).name}, over the slice as the model sees it (cropped, aligned, "
        f"resized to {img.shape[1]}x{img.shape[0]})"
    )
    try:
        path.mkdir(parents=True, exist_ok=True)  # the file is <path>/<SOP Instance UID>.dcm
    except OSError as exc:
        row["dicom_skipped"] = f"cannot make the folder {path} ({exc.strerror or exc})"
        return
    notes: list[str] = []
    try:
        written = write_secondary_capture(
            source,
            overlay_rgb(img, cam),
            path,
            series=series,
            instance_number=number + 1,
            frame=frame,
            derivation=what,
            notes=notes,
        )
    except SecondaryCaptureError as exc:
        row["dicom_skipped"] = str(exc)
        return
    row["dicom"] = str(written)
    if notes:
        row["dicom_note"] = "; ".join(notes)


def _slice_numbers(unit: str, members: Sequence[Any]) -> list[int]:
    """The number each slice of a unit (sorted by ``order``) is shown and chosen by: a NIfTI
    volume's own slice index (``InputSlice.order`` holds it for volumes), a DICOM series'
    place in slice-position order (0, 1, ...)."""
    if unit.startswith("volume:"):
        return [int(s.order) for s in members]
    return list(range(len(members)))


def _no_such_slice(unit: str, n: int, numbers: list[int]) -> str:
    """Why slice ``n`` of a unit cannot be explained."""
    if unit.startswith("volume:"):
        kept = _ranges(numbers)
        return (
            f"no slice {n} among the volume's slices that are read (indices {kept}; slices "
            "with too little brain are left out, as ingest leaves them out)"
        )
    return f"no slice {n}: it has {len(numbers)} (0..{len(numbers) - 1})"


def _ranges(numbers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9' (sorted input)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b != a else f"{a}" for a, b in runs) or "none"


def _slice_score(card: Any, probs: np.ndarray, explain_class: str | None) -> np.ndarray:
    """How strongly each slice (rows of ``probs``, (n, K)) shows what is explained: the chosen
    class's probability, else the tumor probability (1 − P(healthy)), else the top class's."""
    if explain_class is not None:
        return probs[:, card.class_names.index(explain_class)]
    if card.healthy is not None:
        return 1.0 - probs[:, card.class_names.index(card.healthy)]
    return probs.max(axis=1)


class SliceBoxes(NamedTuple):
    """The tumor boxes of one slice: its ``cls`` (class name) and ``boxes``, each
    (x_center, y_center, width, height) in fractions of the image side (YOLO)."""

    cls: str
    boxes: tuple[tuple[float, float, float, float], ...]


BOX_COLUMNS = ("file", "class", "x_center", "y_center", "width", "height")


def read_boxes(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> dict[str, SliceBoxes]:
    """Tumor boxes from a CSV ``file,class,x_center,y_center,width,height`` (fractions of the
    image side, the YOLO convention; ``file`` relative to the data folder; spaces after the
    commas are ignored; with ``root``, "\\" separates folders as "/" does). A file on several
    lines has several boxes (a slice with several lesions: a map's peak inside any of them
    counts as a hit), which must name one class. A byte-order mark (spreadsheets' "CSV
    UTF-8") is read as such, not as part of the first column's name.

    Keys are the ``file`` values with "." and ".." folded (``os.path.normpath``), so one
    file spelled two ways ("./a/x.jpg", "a/x.jpg") is one slice; with ``root`` (the data
    folder) an absolute path inside it is keyed by its path relative to it, as the others.

    Raises
    ------
    MriscanError
        Naming the line: on a missing column (named), a value that is not a fraction in
        [0, 1], a box of zero width or height, a file whose lines name different classes, or
        (with ``root``) a path outside the data folder; or, naming the file, when it is not
        UTF-8 text.
    """
    try:
        return _read_box_rows(path, root)
    except UnicodeDecodeError as exc:
        raise MriscanError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}): save it as UTF-8 "
            '(a spreadsheet\'s "CSV UTF-8"), then run the command again.'
        ) from None


def _read_box_rows(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> dict[str, SliceBoxes]:
    """``read_boxes``' reading (UTF-8, with or without a byte-order mark)."""
    import csv

    out: dict[str, SliceBoxes] = {}
    first_line: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        # spaces around the commas ("file , class, ...", as people type CSV) and capitals in
        # the header ("File,Class") are not part of a name
        reader = csv.DictReader(fh, skipinitialspace=True)
        found = [f.strip().lower() for f in (reader.fieldnames or ())]
        reader.fieldnames = found
        if missing := [c for c in BOX_COLUMNS if c not in found]:
            raise MriscanError(
                f"{path} lacks the column(s) {missing}: a boxes file has the columns "
                f"{list(BOX_COLUMNS)} (fractions of the image side), comma-separated; its "
                f"header reads {found}."
            )
        for line, row in enumerate(reader, start=2):
            if None in row:  # more values than header columns
                raise MriscanError(
                    f"{path}, line {line}: {len(found) + len(row[None])} values under a header "
                    f"of {len(found)} columns: quote a value that holds a comma."
                )
            row = {k: (v or "").strip() for k, v in row.items()}
            if not row["file"]:
                raise MriscanError(f"{path}, line {line}: the file column is empty.")
            try:
                vals = tuple(float(row[k]) for k in BOX_COLUMNS[2:])
            except (TypeError, ValueError):
                raise MriscanError(f"{path}, line {line}: box values must be numbers.") from None
            if not all(0.0 <= v <= 1.0 for v in vals):
                raise MriscanError(f"{path}, line {line}: box values must be fractions in [0, 1].")
            if vals[2] == 0.0 or vals[3] == 0.0:
                raise MriscanError(
                    f"{path}, line {line}: the box of {row['file']} has zero width or height: "
                    "no peak can fall inside it; give the tumor's extent."
                )
            try:
                key = _box_key(row["file"], root)
            except ValueError as exc:
                raise MriscanError(f"{path}, line {line}: {exc}") from None
            old = out.get(key)
            if old is not None and old.cls != row["class"]:
                raise MriscanError(
                    f"{path}, line {line}: {row['file']} is boxed as {row['class']!r} here and "
                    f"as {old.cls!r} on line {first_line[key]}: a slice has one class."
                )
            first_line.setdefault(key, line)
            earlier = old.boxes if old is not None else ()
            out[key] = SliceBoxes(row["class"], (*earlier, vals))
    return out


def _box_key(file: str, root: str | os.PathLike[str] | None) -> str:
    """A boxes file's ``file`` value with "." and ".." folded; with ``root``, the path
    relative to it of a path inside it (an absolute one, or one through "..": lexically, or
    else with links resolved, as when the data folder is given through a link). With
    ``root``, a backslash is read as a folder separator (a boxes file written on Windows)
    unless a file of that very name exists (on POSIX a name may hold one).

    Raises
    ------
    ValueError
        If, with ``root``, the path lies outside it (the boxes file's paths are the data
        folder's files).
    """
    if root is not None and "\\" in file and not os.path.lexists(os.path.join(root, file)):
        # a boxes file written on Windows ("glioma\\1.jpg"): the backslash is its separator
        file = file.replace("\\", "/")
    key = os.path.normpath(file) if file else file
    if root is None or not key:
        return key

    def inside(p: str, base: str) -> bool:
        return p != base and os.path.commonpath([base, p]) == base

    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, key))
    if inside(full, base):
        return os.path.relpath(full, base)
    real, real_base = os.path.realpath(full), os.path.realpath(base)
    if inside(real, real_base):
        return os.path.relpath(real, real_base)
    raise ValueError(
        f"{file} lies outside the data folder {root}: the file column names the data "
        "folder's files, relative to it (give the folder that holds them all as IMAGES)"
    )


def pointing_rule(card: Any, box_class: str) -> str | None:
    """Why the pointing game does not score boxed slices of ``box_class`` with this model, or
    None when it scores them (then ``pointing_target`` says how). ``card``: the ``ModelCard``.

    The rule, one per kind of model:

    - a box of the model's healthy class is not scored (a box marks a tumor);
    - a two-class model with a healthy class (yes/no, tumor vs no tumor): every other boxed
      slice is a tumor slice, whatever tumor type its box names (figshare's glioma, meningioma,
      pituitary on a ``brain_mri`` model): scored;
    - any other model (K > 2 classes, or two tumor types without a healthy class): a boxed
      slice is scored only when its class is a model class, as the map drawn is that class's;
      for two tumor types only the positive class (``class_names[1]``), as the map of a
      two-class model is that of its one output, the positive class's (as ``explain`` draws
      it). A tumor type the model does not have is not scored: it has no map of its own, and
      "correct" has no meaning for it.
    """
    if card.healthy is not None and box_class == card.healthy:
        return "the model's healthy class (a box marks a tumor)"
    if card.binary and card.healthy is not None:
        return None
    if box_class not in card.class_names:
        return "not a class of the model"
    if card.binary and box_class != card.class_names[1]:
        return (
            f"the negative class of a two-class model without a healthy class (its map is "
            f"that of the one output, {card.class_names[1]!r})"
        )
    return None


def pointing_target(card: Any, box_class: str, probs: np.ndarray) -> tuple[int, bool]:
    """The pointing game's rule for one boxed slice: (output whose map is drawn, whether the
    slice counts as correctly classified).

    A two-class model with a healthy class: its positive output, correct when called the tumor
    (positive) class. Otherwise the box class's own output (for a two-class model its one
    output, the positive class's), correct when exactly that class is predicted. ``card``: the
    ``ModelCard``; ``probs``: its (K,) class probabilities.

    Raises
    ------
    MriscanError
        If ``pointing_rule`` says slices of ``box_class`` are not scored with this model
        (e.g. a pituitary box for a glioma/meningioma/notumor model).
    """
    if (why := pointing_rule(card, box_class)) is not None:
        raise MriscanError(
            f"The pointing game does not score {box_class!r} slices with a model of the classes "
            f"{list(card.class_names)}: {why}. Leave them out (pointing_rule)."
        )
    pred = card.decide(probs)
    if card.binary:
        return 1, pred == card.class_names[1]
    return card.class_names.index(box_class), pred == box_class


def peak_in_any_box(
    image: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]], config: Any
) -> bool:
    """Whether ``peak_in_box`` holds for one of ``boxes`` (a slice with several lesions)."""
    return any(peak_in_box(image, cam, box, config) for box in boxes)


def peak_fraction(image: np.ndarray, cam: np.ndarray, config: Any) -> tuple[float, float]:
    """The map's maximum mapped back to the source ``image`` (H, W) through the preprocessing
    geometry of ``config`` (``mriscan.preprocess.source_point``), as (x, y) fractions of the
    image's width and height from its top-left edge (the boxes' convention)."""
    from mriscan.preprocess import source_point

    r, c = _peak(cam)
    sy, sx = source_point(image, r, c, config)
    h, w = image.shape
    # source_point puts pixel centres at integers; box fractions run from the image's edge
    return (sx + 0.5) / w, (sy + 0.5) / h


#: The pointing game's tolerance as its authors defined it: a peak within 15 pixels of an
#: annotated object is a hit (Zhang et al., "Top-down Neural Attention by Excitation
#: Backprop", ECCV 2016 / IJCV 2018, section on the pointing game; their images, PASCAL VOC
#: and COCO, are about 500 pixels a side, as figshare's 512² slices). In source-image pixels.
POINTING_TOLERANCE_PX = 15.0
#: longer sides (source pixels) outside which ``pointing_game`` warns that 15 pixels are another
#: share of the side than on the authors' ~500-pixel images (half to twice that size)
TOLERANCE_SIDES = (256, 1024)


def peak_box_distance(
    image: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]], config: Any
) -> float:
    """Distance in source-image pixels (float) from the map's peak (``peak_fraction``: the
    peak pixel's centre mapped back to ``image`` (H, W) through the preprocessing geometry of
    ``config``) to the nearest of ``boxes`` ((x_center, y_center, width, height) fractions of
    the image side, YOLO): 0.0 when the peak lies inside one (``peak_in_box``), else the
    Euclidean distance to that box's nearest edge or corner. ``boxes`` must not be empty.

    Raises
    ------
    ValueError
        If ``boxes`` is empty (no distance is defined).
    """
    if not boxes:
        raise ValueError("peak_box_distance needs at least one box.")
    x, y = peak_fraction(image, cam, config)
    h, w = image.shape
    best = math.inf
    for xc, yc, bw, bh in boxes:
        # how far outside the box's half-widths the peak lies, per axis, in pixels
        dx = max(abs(x - xc) - bw / 2, 0.0) * w
        dy = max(abs(y - yc) - bh / 2, 0.0) * h
        best = min(best, math.hypot(dx, dy))
    return best


def peak_in_box(image: np.ndarray, cam: np.ndarray, box: Sequence[float], config: Any) -> bool:
    """Whether the map's maximum, mapped back to the source ``image`` (H, W) through the
    preprocessing geometry of ``config`` (``peak_fraction``), lies inside ``box`` =
    (x_center, y_center, width, height), fractions of the image side (YOLO)."""
    x, y = peak_fraction(image, cam, config)
    xc, yc, bw, bh = box
    return abs(x - xc) <= bw / 2 and abs(y - yc) <= bh / 2


def pointing_game(
    model_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    boxes_csv: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    limit: int | None = None,
    progress: Any = None,
    method: str = DEFAULT_CAM,
) -> dict[str, Any]:
    """How often the class-activation map's peak (``method`` as in ``explain``) falls inside the
    tumor's box ("pointing game", Zhang et al. 2018, "Top-down Neural Attention by Excitation
    Backprop"), on the tumor slices the model classifies correctly, per class.

    Which slices are scored, which map and what "correct" means: ``pointing_rule`` and
    ``pointing_target`` (a yes/no model: every boxed tumor type, the map of the tumor output,
    correct when called a tumor; otherwise the box's class must be a model class, its map,
    correct when exactly that class is predicted). Boxed slices of other classes are not scored
    and are listed in ``not_scored``. The peak is mapped back to the source image through the
    preprocessing geometry (``mriscan.preprocess.source_point``) and must lie inside the box:
    this strict rule gives ``pointing``. The game's authors also count a peak within 15
    pixels of the box as a hit (``POINTING_TOLERANCE_PX``, source-image pixels): that rule
    gives ``pointing_within_tolerance``, reported beside it.

    Returns
    -------
    dict
        ``method``, ``rule`` (the rule above for this model, in words), ``per_class``: {class:
        {"n": boxed slices read, "correct": correctly classified,
        "hits": peaks inside the box, "pointing": hits / correct, "hits_within_tolerance":
        peaks within ``tolerance_px`` of the box, "pointing_within_tolerance": those /
        correct}} (a ratio is NaN, undefined, when no slice of the class is correct),
        ``overall`` (the same over all scored classes), ``tolerance_px``,
        ``same_file_merged`` (boxed paths holding the bytes of an earlier one of their class,
        scored as that one: ``_one_per_file``), ``blank`` (boxed slices without contrast,
        ``is_blank``: listed in ``slices``, not scored, warned of), ``tolerance_off_scale``
        (correctly classified slices whose longer side lies outside ``TOLERANCE_SIDES``,
        warned of), ``training_near_duplicates`` (scored slices that
        near-duplicate the model's training or validation slices, warned of; None when the
        model has no training thumbnails), ``slices`` (per
        scored slice, in file order: ``file``, ``class`` (its box's), ``predicted``,
        ``correct``, ``peak_x``/``peak_y`` (the map's peak as fractions of the source image's
        width / height, ``peak_fraction``), ``distance_px`` (``peak_box_distance``: source
        pixels from the peak to its nearest box, 0 inside; for every scored slice),
        ``hit`` (inside one of its boxes; None when not correctly classified), ``side_px``
        (the source image's longer side: ``distance_px`` is read against it; outside
        ``TOLERANCE_SIDES`` the tolerance is another share of the slice), ``blank``
        (``is_blank``: not scored, its prediction, peak, distance and hit None) and
        ``near_training``
        (it near-duplicates a training or validation slice; None when not checkable)),
        ``not_scored`` ({class: {"n": boxed slices listed, "reason":
        ``pointing_rule``'s}} for the box classes the model's rule does not score; their files
        are not read), ``unreadable`` (file, reason), ``without_box`` (``slices_without_box``:
        image files beside the boxed ones that the boxes file does not list, not scored).

    Raises
    ------
    MriscanError
        If no boxed slice could be scored (every path missing or undecodable, no box, or no box
        of a class the model's rule scores): naming how many paths did not resolve, an
        example, and that paths are relative to ``root``, or which classes were not scored and
        why.
    """
    from mriscan.duplicates import signature
    from mriscan.inference import predict_batch
    from mriscan.io import decode_image
    from mriscan.model import load_model
    from mriscan.preprocess import normalize, preprocess

    _check_method(method)
    model, card = load_model(model_path)
    cfg = card.preprocess
    boxes = read_boxes(boxes_csv, root)
    items = sorted(boxes.items())[:limit] if limit else sorted(boxes.items())
    not_scored: dict[str, dict[str, Any]] = {}
    for _, box in items:
        if (why := pointing_rule(card, box.cls)) is not None:
            not_scored.setdefault(box.cls, {"n": 0, "reason": why})["n"] += 1
    listed = len(items)
    items = [(rel, box) for rel, box in items if box.cls not in not_scored]
    items, merged = _one_per_file(Path(root), items)
    _warn_folder_classes(items, card)
    stats: dict[str, dict[str, int]] = {}
    per_slice: list[dict[str, Any]] = []
    unreadable: list[tuple[str, str]] = []
    sides: list[int] = []  # longer side of each correctly classified slice, source pixels
    thumbs: list[np.ndarray] = []  # each row's slice signature, against the training ones
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        imgs, xs, keep, blanks = [], [], [], []
        for rel, box in chunk:
            try:
                img = decode_image(Path(root) / rel)
            except ImageDecodeError as exc:
                unreadable.append((rel, exc.reason))
                continue
            if is_blank(img):  # no anatomy: its map's peak is a fixed point, not scored
                blanks.append((_blank_row(rel, box, img), signature(img)))
                continue
            imgs.append(img)
            xs.append(preprocess(img, cfg))
            keep.append((rel, box))
            thumbs.append(signature(img))
        if not xs:
            per_slice += [row for row, _ in blanks]
            thumbs += [t for _, t in blanks]
            continue
        x = normalize(np.stack(xs), cfg.normalization, threshold=cfg.threshold)[..., None]
        probs = predict_batch(model, x, batch_size, tta=card.tta)
        classes, correct, rows = [], [], []
        for (rel, box), p in zip(keep, probs, strict=True):
            cls = box.cls
            k, ok = pointing_target(card, cls, p)
            classes.append(k)
            correct.append(ok)
            s = stats.setdefault(cls, {"n": 0, "correct": 0, "hits": 0, "hits_within_tolerance": 0})
            s["n"] += 1
            s["correct"] += int(ok)
            rows.append({"file": rel, "class": cls, "predicted": card.decide(p), "correct": ok})
        cams = class_activation_map(
            model, x, method=method, class_index=None if card.binary else np.array(classes)
        )
        for (_, box), img, cam, ok, row in zip(keep, imgs, cams, correct, rows, strict=True):
            row["peak_x"], row["peak_y"] = peak_fraction(img, cam, cfg)
            row["distance_px"] = peak_box_distance(img, cam, box.boxes, cfg)
            # a miss-classified slice is no trial of the game: its hit is undefined
            row["hit"] = peak_in_any_box(img, cam, box.boxes, cfg) if ok else None
            row["side_px"] = max(img.shape)
            row["blank"] = False
            stats[box.cls]["hits"] += int(bool(row["hit"]))
            near = ok and row["distance_px"] <= POINTING_TOLERANCE_PX
            stats[box.cls]["hits_within_tolerance"] += int(near)
            if ok:
                sides.append(max(img.shape))
        per_slice += rows + [row for row, _ in blanks]
        thumbs += [t for _, t in blanks]
        if progress is not None:
            progress(min(start + batch_size, len(items)), len(items))
    blank = _warn_blank(per_slice)
    if not stats:
        raise MriscanError(
            _nothing_scored(Path(root), boxes_csv, items, unreadable, not_scored, listed, card)
            + (f" {blank} of them are blank ({BLANK_RULE}): not scored." if blank else "")
        )
    near = _training_look_alikes(model_path, card, thumbs)
    for row, flag in zip(
        per_slice, near if near is not None else [None] * len(per_slice), strict=True
    ):
        row["near_training"] = None if flag is None else bool(flag)
    counts = ("n", "correct", "hits", "hits_within_tolerance")
    total = {k: sum(s[k] for s in stats.values()) for k in counts}
    for s in (*stats.values(), total):
        for ratio, hits in (
            ("pointing", "hits"),
            ("pointing_within_tolerance", "hits_within_tolerance"),
        ):
            s[ratio] = s[hits] / s["correct"] if s["correct"] else float("nan")
    if card.binary and card.healthy is not None:
        rule = (
            f"a boxed slice of any tumor class is correct when called {card.class_names[1]!r}; "
            f"the map is that of {card.class_names[1]!r}; boxes of {card.healthy!r} are not scored"
        )
    else:
        rule = (
            "a boxed slice is correct when its own class is predicted; the map is that class's; "
            "boxed slices of other classes are not scored"
        )
    return {
        "method": method,
        "rule": rule,
        "per_class": stats,
        "overall": total,
        "tolerance_px": POINTING_TOLERANCE_PX,
        "same_file_merged": merged,
        "blank": blank,
        "tolerance_off_scale": _off_scale(sides),
        "training_near_duplicates": None if near is None else int(near.sum()),
        "not_scored": not_scored,
        "slices": per_slice,
        "unreadable": unreadable,
        # boxed slices of the healthy class are not scored: their folder holds no tumor
        "without_box": slices_without_box(
            root,
            {rel: b for rel, b in boxes.items() if b.cls != card.healthy},
            _tumor_classes(card, boxes),
        ),
    }


def _one_per_file(
    root: Path, items: list[tuple[str, SliceBoxes]]
) -> tuple[list[tuple[str, SliceBoxes]], int]:
    """The boxed files with one entry per file content: a path that holds the same bytes as
    an earlier one of the same class (a link of either kind, a copy) adds its boxes to that
    one, which is scored once; returns the entries and how many were merged (warned of).
    Files that cannot be read stay as they are (their row says why); the same bytes boxed as
    two classes stay apart (each scored as its box says). Each file is read here to hash it
    and again when it is decoded: a merged slice is scored against the boxes of all its paths,
    so every path's content must be known before any slice is scored, and keeping every file's
    bytes until then would hold the whole boxed set in memory; the second read is served from
    the page cache."""
    from mriscan.readers import file_sha256

    first: dict[tuple[str, str], int] = {}
    out: list[tuple[str, SliceBoxes]] = []
    merged: list[tuple[str, str]] = []
    class_of: dict[str, tuple[str, str]] = {}  # digest -> (first path, its class)
    across: list[tuple[str, str]] = []  # (path, the path of another class with its bytes)
    for rel, box in items:
        try:
            key = (file_sha256(root / rel), box.cls)
        except OSError:
            out.append((rel, box))
            continue
        seen_as = class_of.setdefault(key[0], (rel, box.cls))
        if seen_as[1] != box.cls:
            across.append((rel, seen_as[0]))
        if key in first:
            k = first[key]
            kept, earlier = out[k]
            out[k] = (kept, SliceBoxes(box.cls, (*earlier.boxes, *box.boxes)))
            merged.append((rel, kept))
            continue
        first[key] = len(out)
        out.append((rel, box))
    if merged:
        log.warning(
            "%d boxed file(s) hold the same bytes as another boxed file of their class (a "
            "link or a copy; e.g. %s, as %s): each such slice is scored once, with the boxes "
            "of both",
            len(merged), merged[0][0], merged[0][1],
        )  # fmt: skip
    if across:
        log.warning(
            "%d boxed file(s) hold the same bytes as a boxed file of another class (e.g. %s, "
            "as %s): each is scored as its box says, but one image under two classes is "
            "likely a labelling error",
            len(across), across[0][0], across[0][1],
        )  # fmt: skip
    return out, len(merged)


def _training_look_alikes(
    model_path: Any, card: Any, thumbs: Sequence[np.ndarray]
) -> np.ndarray | None:
    """Which of the scored slices (their 16×16 ``thumbs``) near-duplicate one of the model's
    training or validation slices (``mriscan.duplicates.near_duplicates_of``, as ``evaluate``
    removes them): a boolean mask, shape (len(thumbs),), any warned of with their count: the
    game on them says how the model looks at slices it learned from, not at new ones. None
    when the model has no training thumbnails (or they do not match it: warned of, the game
    is still played)."""
    from mriscan.artifacts import ModelCardError, training_signatures
    from mriscan.duplicates import DEFAULT_THRESHOLD, near_duplicates_of

    try:
        reference = training_signatures(model_path, card)
    except ModelCardError as exc:
        log.warning("the slices are not checked against the model's training slices: %s", exc)
        return None
    if reference is None or not thumbs:
        return None
    mask = near_duplicates_of(np.stack(thumbs), reference)
    n = int(mask.sum())
    if n:
        log.warning(
            "%d of the %d scored slices near-duplicate the model's training or validation "
            "slices (16×16 thumbnails correlating above %s, the rule by which evaluate removes "
            "them; look-alikes of other slices are caught too): on those the pointing game "
            "shows how the model looks at slices it learned from",
            n, len(thumbs), DEFAULT_THRESHOLD,
        )  # fmt: skip
    return mask


#: what makes a slice blank for the pointing game (``is_blank``)
BLANK_RULE = "99% of its pixels within 2 grey levels of its most common value"


def is_blank(image: np.ndarray) -> bool:
    """Whether a decoded slice (H, W) uint8 has no contrast to point at: ``BLANK_RULE`` (one
    grey level, or one with a few stray pixels). A map of such a slice peaks at a point fixed
    by the network's padding, not by anything in the slice (tester28: a blank slice's peak
    always fell on the same pixel, a hit whenever a box held it)."""
    values = np.asarray(image).ravel()
    mode = int(np.bincount(values).argmax())
    return bool(np.mean(np.abs(values.astype(np.int16) - mode) > 2) < 0.01)


def _blank_row(rel: str, box: SliceBoxes, img: np.ndarray) -> dict[str, Any]:
    """The per-slice row of a blank slice (``is_blank``): listed, not scored (its prediction,
    peak, distance and hit are undefined: None)."""
    row = dict.fromkeys(("predicted", "correct", "peak_x", "peak_y", "distance_px", "hit"))
    return {"file": rel, "class": box.cls, **row, "side_px": max(img.shape), "blank": True}


def _warn_blank(rows: Sequence[dict[str, Any]]) -> int:
    """Warn of boxed slices left out because they are blank (``is_blank``); returns how many.
    Their hits and misses would be noise: a blank slice's map peaks at a fixed point."""
    blank = [r["file"] for r in rows if r["blank"]]
    if blank:
        log.warning(
            "%d boxed slice(s) are blank (%s; e.g. %s): no anatomy to point at, not scored; "
            "check those files (column blank in the per-slice table)",
            len(blank), BLANK_RULE, blank[0],
        )  # fmt: skip
    return len(blank)


def _off_scale(sides: Sequence[int]) -> int:
    """How many of the correctly classified slices' longer ``sides`` lie outside
    ``TOLERANCE_SIDES``, warned of: there the 15-pixel tolerance is another share of the side
    (on a 32-pixel slice half of it, on a 5,000-pixel one 0.3%)."""
    lo, hi = TOLERANCE_SIDES
    odd = [s for s in sides if not lo <= s <= hi]
    if odd:
        log.warning(
            "%d of the %d correctly classified slices have a longer side outside %d-%d pixels "
            "(%d to %d): there 15 pixels are another share of the side than on the ~500-pixel "
            "images the tolerance was set for; read the strict share (inside the box), or "
            "distance_px against each slice's size",
            len(odd), len(sides), lo, hi, min(odd), max(odd),
        )  # fmt: skip
    return len(odd)


def _tumor_classes(card: Any, boxes: dict[str, SliceBoxes]) -> set[str]:
    """The classes whose folders hold tumor slices: those of the boxes, and the model's
    classes, but its healthy one (every class of a model without one)."""
    return ({b.cls for b in boxes.values()} | set(card.class_names)) - {card.healthy}


def _warn_folder_classes(items: Sequence[tuple[str, SliceBoxes]], card: Any) -> None:
    """Warn when a boxed file lies in a class folder of the model other than its box's class:
    the box's class decides how it is scored."""
    odd = [
        (rel, box.cls)
        for rel, box in items
        if len(parts := Path(rel).parts) > 1
        and parts[0] in card.class_names
        and parts[0] != box.cls
    ]
    if odd:
        rel, cls = odd[0]
        log.warning(
            "%d boxed slice(s) lie in another class's folder than their box's class (e.g. %s "
            "boxed as %r); they are scored as the boxes file says: check the class column",
            len(odd), rel, cls,
        )  # fmt: skip


def slices_without_box(
    root: str | os.PathLike[str], boxes: dict[str, Any], tumor_classes: Sequence[str] = ()
) -> dict[str, Any]:
    """The JPEG/PNG files of tumor slices that the boxes file does not list (not scored by the
    pointing game): those directly in a folder holding a boxed slice, or in ``root/<class>``
    for a class of ``tumor_classes``. Returns ``count``, ``per_folder`` (folder relative to
    ``root``, posix, "." for ``root`` itself → count; only folders with some) and ``rule``.
    ``boxes``: ``read_boxes``' result (paths relative to ``root``).

    Membership is decided on the paths as given, the way predict and ingest list a folder:
    symbolic links are not resolved, so a folder of links into a larger collection counts its
    own entries, not the files of the folders the links point into.
    """
    from mriscan.io import IMAGE_SUFFIXES

    def lexical(p: Path) -> Path:  # absolute, "."/".." folded, links kept
        return Path(os.path.normpath(os.path.abspath(p)))

    root = lexical(Path(root))
    boxed = {lexical(root / rel) for rel in boxes}
    folders = {p.parent for p in boxed}
    folders |= {root / c for c in tumor_classes if (root / c).is_dir()}
    per_folder: dict[str, int] = {}
    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        n = sum(
            1
            for f in folder.iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES
            and not f.name.startswith(".")
            and f.is_file()
            and f not in boxed
        )
        if n:
            try:
                name = folder.relative_to(root).as_posix()
            except ValueError:
                name = str(folder)
            per_folder[name] = n
    return {
        "count": sum(per_folder.values()),
        "per_folder": per_folder,
        "rule": "JPEG/PNG files directly in a folder holding boxed slices or in a tumor "
        "class's folder that the boxes file does not list; not scored",
    }


def _nothing_scored(
    root: Path,
    boxes_csv: Any,
    items: list[tuple[str, Any]],
    unreadable: list[tuple[str, str]],
    not_scored: dict[str, dict[str, Any]],
    listed: int,
    card: Any,
) -> str:
    """The error of a pointing game that could score no slice: which box classes the model's
    rule does not score (``pointing_rule``), which paths did not resolve (with an example),
    which files could not be decoded, what the paths are relative to."""
    if not listed:
        return f"{boxes_csv} lists no box: nothing to score."
    if not items:
        why = "; ".join(
            f"{c!r} ({v['n']} boxed slices): {v['reason']}" for c, v in not_scored.items()
        )
        return (
            f"None of the {listed} boxed slices of {boxes_csv} is of a class the pointing game "
            f"scores with a model of the classes {list(card.class_names)}: {why}."
        )
    missing = [rel for rel, _ in unreadable if not os.path.lexists(root / rel)]
    bad = [(rel, why) for rel, why in unreadable if os.path.lexists(root / rel)]
    parts = [f"None of the {len(items)} boxed slices of {boxes_csv} could be scored."]
    if missing:
        parts.append(
            f"{len(missing)} path(s) do not resolve: the `file` column is read relative to the "
            f"data folder {root} (e.g. {missing[0]!r} → {root / missing[0]}, which does not "
            "exist)."
        )
        first = Path(missing[0]).parts[0] if Path(missing[0]).parts else ""
        if first == root.name or (root.parent / missing[0]).is_file():
            parts.append(
                f"The paths seem to start with the data folder's own name ({first + '/'!r}): "
                "remove that prefix from the boxes file, or pass the folder above as IMAGES."
            )
    if bad:
        parts.append(
            f"{len(bad)} path(s) could not be decoded as JPEG/PNG, the only files the pointing "
            f"game reads (e.g. {bad[0][0]}: {bad[0][1]})."
        )
    return " ".join(parts)
