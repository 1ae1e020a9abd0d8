"""Preprocessing: crop to the brain, resize to S×S, align the midline, normalise (Numba kernels).

Threads: ``preprocess_batch`` runs in parallel over images with Numba's thread pool, whose size is
``NUMBA_NUM_THREADS`` (default: all cores). Numba's default ``workqueue`` layer aborts when two
Python threads enter a parallel kernel at once (numba#8563), so calls are serialised by a lock;
``preprocess`` and ``normalize`` use serial, GIL-free kernels and scale with caller threads.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mriscan import _kernels
from mriscan.errors import ConfigError

__all__ = [
    "PreprocessConfig",
    "midline_pose",
    "normalize",
    "preprocess",
    "preprocess_batch",
    "preprocess_serial",
    "source_point",
]

_PARALLEL_LOCK = threading.Lock()
# largest stored side: 4096² uint8 is 16 MiB a slice, already far beyond what the model uses
MAX_SIZE = 4096
NORMALIZATIONS = ("zscore", "minmax", "none", "rank")  # see normalize
# Midline search range: axial slices in the real set lean by up to ~15° and sit up to ~8% of
# the side off-centre after the crop (experiments/ACCURACY.md, row 19).
_ALIGN_MAX_ANGLE = math.radians(15.0)
_ALIGN_MAX_SHIFT = 0.08
_ALIGN_CODES = {"search": _kernels.ALIGN_SEARCH, "fast": _kernels.ALIGN_FAST}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a decoded slice becomes a model input; stored with every store and model.

    Parameters
    ----------
    size : int
        Output side S (images become S×S). Default 48 (thirteenth session; 128 before): a
        ``brain_mri`` model ranks ``figshare_br35h`` at mean ROC AUC 0.866 / 0.903 / 0.937 /
        0.964 / **0.970** / 0.946 over three seeds at 128² / 96² / 80² / 64² / 48² / 32², while
        its own 5-fold CV (seeds 0 and 1) gives accuracy 0.877 / 0.855 and AUC 0.930 / 0.929
        at 128², 0.847 / 0.851 and 0.947 / 0.940 at 48² (experiments/ACCURACY.md rows 56-65):
        coarser slices carry less of each collection's texture and framing, which the models
        had used as a shortcut (row 50). Below 48² lesions of a few millimetres vanish (a pixel
        of a 230 mm field is 4.8 mm at 48², 7.2 mm at 32²), and 32² ranked worse anyway.
    crop : bool
        Crop to the bounding box of the bright foreground (the head) first.
    margin : float
        Extra border around the crop box, as a fraction of its size.
    threshold : float
        Foreground threshold, as a fraction of the image's 99th-percentile intensity.
    min_fraction : float
        A row/column belongs to the foreground only if at least this fraction of its pixels are
        bright (ignores small specks and labels).
    aspect : {"pad", "stretch"}
        ``pad`` keeps the aspect ratio and pads with black; ``stretch`` fills S×S.
    normalization : {"zscore", "minmax", "none", "rank"}
        Applied when feeding the model (stored images stay uint8); see ``normalize``.
        ``rank`` (the head's histogram equalised) made models worse in both directions
        between the shared collections (``figshare_br35h`` → ``brain_mri`` balanced accuracy
        0.718 → 0.646, ``brain_mri`` → ``figshare_br35h`` 0.925 → 0.885; experiments/ACCURACY.md
        row 72): the default stays ``zscore``.
    align : bool
        Rotate (up to ±15°) and shift (up to 8% of S) the S×S slice so that the head's
        left-right symmetry axis is the centre column: healthy brains are then close to their
        mirror image, which the model's mirror channel compares against. Configs saved before
        this field existed read as ``align=False``.
    align_method : {"fast", "search"}
        How ``align`` finds the axis; both maximise the correlation of the slice with its mirror
        image. ``search`` (the reference): every 3° (then ±1.5° around the best) × every whole
        pixel of shift, each a full-resolution bilinear rotation; ~3.7 ms per 128² slice.
        ``fast``: the same score searched coarse-to-fine on a 2×2-averaged image (6°, 3°, 1.5°
        steps; only the shifts near the axis through the intensity centroid), refined between
        grid points by parabolas, and applied with a three-shear rotation (Paeth 1986); on the
        real set it finds the reference's angle within 1.5° and shift within 1 px for 88.5% of
        slices (``bench/RESULTS.md``). Configs saved before this field existed read as
        ``search``, what they were built with.
    smooth : float
        Standard deviation σ, in output pixels, of a Gaussian low-pass applied to the S×S slice
        last (0 = off, the default; at most 3; a separable Numba kernel, edges mirrored, equal to
        ``scipy.ndimage.gaussian_filter(..., mode="reflect")`` rounded to ±1 grey level: SciPy's
        filter cost 0.21 ms per 128² slice, as much as the crop, resize and alignment together). It
        removes the fine texture (noise, JPEG blocks, sharpening) in which collections differ:
        models trained on ``brain_mri`` and on ``figshare_br35h`` both turned out to call
        smoother slices tumors and noisier ones healthy (experiments/ACCURACY.md row 50). With
        σ = 1 px a ``brain_mri`` model ranks ``figshare_br35h`` better (AUC 0.892 → 0.944 and
        0.857 → 0.884 on two seeds) but its validation-chosen threshold does not carry over
        (balanced accuracy 0.790 → 0.792, 0.650 → 0.675), and its own CV accuracy moved
        0.877 → 0.828 and 0.855 → 0.873 on two seeds at AUC +0.01 (rows 51-54): off by
        default. Configs saved before this field existed read as 0.
    """

    size: int = 48
    crop: bool = True
    margin: float = 0.02
    threshold: float = 0.1
    min_fraction: float = 0.02
    aspect: Literal["pad", "stretch"] = "pad"
    normalization: Literal["zscore", "minmax", "none", "rank"] = "zscore"
    align: bool = True
    align_method: Literal["fast", "search"] = "fast"
    smooth: float = 0.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int | np.integer)
            or self.size < 1
        ):
            raise ConfigError(f"size must be a positive integer. Received: size={self.size!r}.")
        if self.size > MAX_SIZE:
            raise ConfigError(
                f"size must be at most {MAX_SIZE} (an S×S uint8 slice per sample; the default "
                f"is 48). Received: size={self.size}."
            )
        object.__setattr__(self, "size", int(self.size))
        if not 0.0 <= float(self.margin) <= 1.0:
            raise ConfigError(f"margin must be in [0, 1]. Received: margin={self.margin!r}.")
        if not 0.0 <= float(self.threshold) < 1.0:
            raise ConfigError(
                f"threshold must be in [0, 1). Received: threshold={self.threshold!r}."
            )
        if not 0.0 <= float(self.min_fraction) < 1.0:
            raise ConfigError(
                f"min_fraction must be in [0, 1). Received: min_fraction={self.min_fraction!r}."
            )
        if self.aspect not in ("pad", "stretch"):
            raise ConfigError(
                f"aspect must be 'pad' or 'stretch'. Received: aspect={self.aspect!r}."
            )
        if not isinstance(self.align, bool | np.bool_):
            raise ConfigError(f"align must be True or False. Received: align={self.align!r}.")
        object.__setattr__(self, "align", bool(self.align))
        if self.align_method not in _ALIGN_CODES:
            raise ConfigError(
                "align_method must be 'fast' or 'search'. "
                f"Received: align_method={self.align_method!r}."
            )
        if (
            isinstance(self.smooth, bool)
            or not isinstance(self.smooth, int | float | np.floating | np.integer)
            or not 0.0 <= float(self.smooth) <= 3.0
        ):
            raise ConfigError(
                f"smooth must be a σ in [0, 3] pixels. Received: smooth={self.smooth!r}."
            )
        object.__setattr__(self, "smooth", float(self.smooth))
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                "normalization must be 'zscore', 'minmax', 'none' or 'rank'. "
                f"Received: normalization={self.normalization!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Rebuild a config from ``to_dict`` output (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"Unknown PreprocessConfig keys {sorted(unknown)}.")
        # stores and models written before midline alignment existed were not aligned, those
        # written before align_method existed were aligned by the full search, and those
        # written before smooth existed were not low-passed
        return cls(**{"align": False, "align_method": "search", "smooth": 0.0, **data})


def _resolve(config: PreprocessConfig | None, overrides: dict[str, Any]) -> PreprocessConfig:
    """Merge keyword overrides into a config."""
    config = config if config is not None else PreprocessConfig()
    if not isinstance(config, PreprocessConfig):
        raise ConfigError(f"config must be a PreprocessConfig. Received: {type(config).__name__}.")
    return dataclasses.replace(config, **overrides) if overrides else config


def _as_gray_uint8(image: Any, what: str) -> np.ndarray:
    """Validate a 2-D uint8 image and make it C-contiguous."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D grayscale array (H, W). Received shape {arr.shape}."
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{what} must have dtype uint8. Received dtype {arr.dtype}; "
            "decode with mriscan.decode_image or convert with .astype(np.uint8)."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{what} is empty. Received shape {arr.shape}.")
    return np.ascontiguousarray(arr)


def _kernel_args(cfg: PreprocessConfig) -> tuple:
    """The scalar kernel arguments of a config."""
    return (
        cfg.crop,
        float(cfg.threshold),
        float(cfg.min_fraction),
        float(cfg.margin),
        cfg.aspect == "pad",
        _ALIGN_CODES[cfg.align_method] if cfg.align else _kernels.ALIGN_NONE,
        _ALIGN_MAX_ANGLE,
        max(0, round(_ALIGN_MAX_SHIFT * cfg.size)),
        float(cfg.smooth),
    )


def preprocess(
    image: np.ndarray, config: PreprocessConfig | None = None, **overrides
) -> np.ndarray:
    """Crop, resize and (``align``) midline-align one grayscale slice.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8
    config : PreprocessConfig, optional
    **overrides
        Fields of ``PreprocessConfig`` to change, e.g. ``size=64``.

    Returns
    -------
    ndarray of shape (S, S), uint8

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((40, 80), np.uint8); img[10:30, 20:60] = 200
    >>> out = preprocess(img, size=8, crop=True, margin=0.0, smooth=0.0)
    >>> out.shape, int(out.max()), int(out[0, 0])
    ((8, 8), 200, 0)
    """
    cfg = _resolve(config, overrides)
    arr = _as_gray_uint8(image, "image")
    out = np.empty((cfg.size, cfg.size), np.uint8)
    _kernels.crop_resize_one(arr, out, *_kernel_args(cfg))
    return out


def preprocess_batch(
    images: Sequence[np.ndarray], config: PreprocessConfig | None = None, **overrides
) -> np.ndarray:
    """Crop, resize and midline-align differently sized slices in parallel.

    Parameters
    ----------
    images : sequence of ndarray of shape (H_i, W_i), uint8
    config : PreprocessConfig, optional
    **overrides
        Fields of ``PreprocessConfig`` to change.

    Returns
    -------
    ndarray of shape (N, S, S), uint8
    """
    cfg = _resolve(config, overrides)
    out = np.empty((len(images), cfg.size, cfg.size), np.uint8)
    if not len(images):
        return out
    with _PARALLEL_LOCK:
        _kernels.crop_resize_batch(*_packed(images), out, *_kernel_args(cfg))
    return out


def preprocess_serial(
    images: Sequence[np.ndarray], *configs: PreprocessConfig
) -> tuple[np.ndarray, ...]:
    """``preprocess_batch`` of the same slices under each of ``configs``, on the calling thread:
    the same results, from one GIL-free Numba call per config and without Numba's thread pool.

    For callers that already keep the cores busy with threads of their own (``ingest``
    preprocesses a batch and its signatures on the main thread while its reader thread decodes
    the next files): the calls hold no lock and let other Python threads run, take the GIL back
    once per batch rather than once per image (a thread that waits for the GIL after every
    image falls behind a thread that parses headers in Python), and the slices are packed for
    the kernels once for all configs.

    Parameters
    ----------
    images : sequence of ndarray of shape (H_i, W_i), uint8
    *configs : PreprocessConfig
        One or more.

    Returns
    -------
    tuple of ndarray of shape (N, S_k, S_k), uint8
        One per config, in order.
    """
    if not configs or not all(isinstance(c, PreprocessConfig) for c in configs):
        raise ConfigError("preprocess_serial needs one or more PreprocessConfig.")
    outs = tuple(np.empty((len(images), c.size, c.size), np.uint8) for c in configs)
    if len(images):
        packed = _packed(images)
        for cfg, out in zip(configs, outs, strict=True):
            _kernels.crop_resize_serial(*packed, out, *_kernel_args(cfg))
    return outs


def _packed(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slices back to back as the batch kernels take them: (flat uint8, offsets (N,)
    int64, shapes (N, 2) int64)."""
    arrays = [_as_gray_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    shapes = np.array([a.shape for a in arrays], np.int64).reshape(len(arrays), 2)
    offsets = np.zeros(len(arrays), np.int64)
    np.cumsum(shapes[:-1, 0] * shapes[:-1, 1], out=offsets[1:])
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    return flat, offsets, shapes


def midline_pose(image: np.ndarray, method: str = "fast") -> tuple[float, float]:
    """The pose that ``align`` applies to one already resized square slice.

    Parameters
    ----------
    image : ndarray of shape (S, S), uint8
        A slice as ``preprocess(..., align=False)`` returns it.
    method : {"fast", "search"}
        ``PreprocessConfig.align_method``: "search" is the reference brute-force search.

    Returns
    -------
    (angle, shift) : tuple of float
        Rotation in degrees (±15 at most) about the image centre and then the move to the left
        in pixels (±8% of S at most) that put the head's symmetry axis on the centre column;
        the output pixel (y, x) is sampled from (c + dy·cos a − (dx + shift)·sin a,
        c + dy·sin a + (dx + shift)·cos a), c = (S − 1)/2, dy = y − c, dx = x − c.

    Raises
    ------
    ValueError
        If ``image`` is not a square 2-D uint8 array.
    ConfigError
        If ``method`` is not "fast" or "search".
    """
    arr = _as_gray_uint8(image, "image")
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"image must be square (S, S). Received shape {arr.shape}.")
    if method not in _ALIGN_CODES:
        raise ConfigError(f"method must be 'fast' or 'search'. Received: method={method!r}.")
    max_shift = max(0, round(_ALIGN_MAX_SHIFT * arr.shape[0]))
    if method == "search":
        a, d = _kernels.midline_pose(arr, _ALIGN_MAX_ANGLE, max_shift)
    else:
        a, d, _ = _kernels.midline_pose_fast(
            arr, _ALIGN_MAX_ANGLE, max_shift, _kernels.FAST_WINDOW, _kernels.FAST_COARSE
        )
    return math.degrees(a), float(d)


def source_point(
    image: np.ndarray, y: float, x: float, config: PreprocessConfig | None = None, **overrides
) -> tuple[float, float]:
    """Where a pixel of the preprocessed slice comes from in the source image.

    Inverts the geometry of ``preprocess`` (crop to the foreground box, area resize into the
    S×S frame with padding, midline rotation and shift) for one point.

    Parameters
    ----------
    image : ndarray of shape (H, W), uint8
        The source slice, as given to ``preprocess``.
    y, x : float
        Row and column in the S×S preprocessed slice (pixel centres at integers).

    Returns
    -------
    (row, col) : tuple of float
        In source pixel coordinates (pixel centres at integers); may lie outside the image when
        the point is in the padding.
    """
    cfg = _resolve(config, overrides)
    arr = _as_gray_uint8(image, "image")
    h, w = arr.shape
    size = cfg.size
    if cfg.crop:
        y0, y1, x0, x1 = _kernels.foreground_bbox(
            arr, float(cfg.threshold), float(cfg.min_fraction), float(cfg.margin)
        )
    else:
        y0, y1, x0, x1 = 0, h, 0, w
    ch, cw = y1 - y0, x1 - x0
    if cfg.aspect == "pad":
        longest = max(ch, cw)
        oh, ow = max(1, round(ch * size / longest)), max(1, round(cw * size / longest))
    else:
        oh, ow = size, size
    oy, ox = (size - oh) // 2, (size - ow) // 2
    sy, sx = float(y), float(x)
    if cfg.align:
        unaligned = preprocess(arr, cfg, align=False)
        degrees, shift = midline_pose(unaligned, cfg.align_method)
        a, c = math.radians(degrees), (size - 1) / 2.0
        dy, dx = sy - c, sx + shift - c
        sy, sx = c + dy * math.cos(a) - dx * math.sin(a), c + dy * math.sin(a) + dx * math.cos(a)
    return (
        y0 + (sy - oy + 0.5) * ch / oh - 0.5,
        x0 + (sx - ox + 0.5) * cw / ow - 0.5,
    )


def normalize(images: np.ndarray, method: str = "zscore", *, threshold: float = 0.1) -> np.ndarray:
    """Normalise uint8 images per image to float32.

    Parameters
    ----------
    images : ndarray of shape (H, W) or (N, H, W), uint8
    method : {"zscore", "minmax", "none", "rank"}
        ``zscore`` uses the mean and std of the foreground (pixels above ``threshold`` × the
        99th percentile); ``minmax`` maps each image to [0, 1]; ``none`` divides by 255;
        ``rank`` equalises the foreground's histogram: a foreground pixel becomes its mid-rank
        quantile q among the foreground's pixels, as (q - 1/2)·√12 (a uniform of zero mean and
        unit variance), the background -√3. Any monotone change of intensities (gain,
        offset, gamma, a scanner's or exporter's grey curve) leaves ``rank`` unchanged; it is
        histogram equalisation (Gonzalez & Woods, Digital Image Processing, 3.3.1) restricted
        to the head, as brain-MRI intensity standardisation does (Nyúl & Udupa 1999).

    Returns
    -------
    ndarray of the same shape, float32

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.array([[0, 255]], np.uint8), "minmax").tolist()
    [[0.0, 1.0]]
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(
            f"images must be uint8 of shape (H, W) or (N, H, W). "
            f"Received dtype {arr.dtype}, shape {arr.shape}."
        )
    batch = np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr)
    out = np.empty(batch.shape, np.float32)
    if method == "zscore":
        _kernels.normalize_zscore(batch, out, float(threshold))
    elif method == "minmax":
        _kernels.normalize_minmax(batch, out)
    elif method == "none":
        np.multiply(batch, np.float32(1.0 / 255.0), out=out)
    elif method == "rank":
        _kernels.normalize_rank(batch, out, float(threshold))
    else:
        raise ConfigError(
            f"method must be 'zscore', 'minmax', 'none' or 'rank'. Received: {method!r}."
        )
    return out[0] if arr.ndim == 2 else out
