"""Class-activation heatmaps (Grad-CAM of the last convolution, LayerCAM of several), computed
with ``keras.ops``.

The arithmetic (channel weights, weighted sum, ReLU, upsampling) is ``keras.ops``; only the
gradient itself comes from the backend's autodiff (TensorFlow ``GradientTape``, ``jax.grad``
or torch autograd), as Keras has no backend-neutral gradient op.
"""

from __future__ import annotations

import logging
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops

from mriscan._heatmap_record import HeatmapLedger
from mriscan.config import CAM_METHODS, DEFAULT_CAM
from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.io import display_path
from mriscan.readers import describe_flags, has_no_anatomy, slice_warnings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mriscan.readers import ReadOptions

__all__ = [
    "CAM_METHODS",
    "block_outputs",
    "check_method",
    "class_activation_map",
    "explain",
    "grad_cam",
    "heatmap_names",
    "layer_cam",
    "map_peak",
    "save_overlay",
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
    check_method(method)
    if method == "gradcam":
        return grad_cam(model, images, class_index=class_index)
    return layer_cam(model, images, class_index=class_index)


def check_method(method: str) -> None:
    """Raise ``ConfigError`` unless ``method`` is one of ``CAM_METHODS``."""
    if method not in CAM_METHODS:
        raise ConfigError(f"method must be one of {CAM_METHODS}. Received: {method!r}.")


def map_peak(cam: np.ndarray) -> tuple[int, int]:
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
    """Give ``row`` the ``warning`` predict gives the same slice (uniform, noise, thin: the
    rule of ``mriscan.readers.slice_warnings``), or ""."""
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
    explained class), ``explained_class``, ``label``, ``warning`` (the slice is uniform, noise
    or thin, as ``predict`` flags it, else ""), ``decision`` (why that label:
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
    check_method(method)
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
            "cam_peak": map_peak(cam),
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
                # ranked as the unit is pooled: slices with no anatomy (uniform or noise)
                # last, unless all are (tester32: the maps drawn were of blank slices the
                # series P left out)
                blank = np.array([has_no_anatomy(s.image) for _, s in members], bool)
                if blank.all():
                    chosen = sorted(np.argsort(-score, kind="stable")[:top_k].tolist())
                else:  # the slices with anatomy, by score
                    order = np.lexsort((-score, blank))[: int((~blank).sum())]
                    chosen = sorted(order[:top_k].tolist())
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
