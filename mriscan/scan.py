"""What the DICOM and NIfTI readers share: salted identifiers and intensity windows to uint8.

Scanner data carry patient identity; mriscan keeps none of it. Every identifier that leaves a
reader (patient, study, series, instance, volume) is a keyed hash (HMAC-SHA-256) under a secret
key that the caller owns and keeps out of what it writes (for stores the user's identifier key,
``mriscan.keys``; for one ``predict`` run a fresh ``new_salt``): equal inputs give equal ids
under one key, so grouping works, while without the key an id can neither be reversed nor tested
against guessed identifiers, nor matched against ids made under another key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

import numpy as np

from mriscan._scan_kernels import affine_to_uint8, integer_percentiles
from mriscan.errors import ConfigError

__all__ = [
    "HASH_CHARS",
    "MIN_SALT_BYTES",
    "NOISE_BRIGHT_CORRELATION",
    "NOISE_BRIGHT_MIN_PAIRS",
    "NOISE_BRIGHT_SIDE",
    "NOISE_CORRELATION",
    "NOISE_LAG2_CORRELATION",
    "NOISE_LAG2_SIDE",
    "NOISE_MIN_PAIRS",
    "NOISE_ROWS",
    "NOISE_RULE",
    "NO_ANATOMY_RULE",
    "UNIFORM_BAND",
    "UNIFORM_RULE",
    "UNIFORM_SHARE",
    "Window",
    "check_salt",
    "has_no_anatomy",
    "is_noise",
    "is_uniform",
    "neighbour_correlations",
    "new_salt",
    "no_anatomy",
    "percentile_window",
    "row_step",
    "salted_hash",
    "window_to_uint8",
]

MIN_SALT_BYTES = 16

#: A slice is "uniform" (no anatomy: all black, all white or one grey) when this share of its
#: pixels lies in one band of ``UNIFORM_BAND`` consecutive grey levels; not "every pixel
#: equal", so JPEG noise or a few stray pixels do not hide an empty slice (tester28: a blank
#: slice with a stray pixel was scored by the pointing game, its map peaking at a point fixed
#: by the network's padding), and any band, not one around the most common value, so the
#: same noise is flagged whichever of its levels happens to be the most common (tester31).
#: The one rule of ingest, predict, explain, evaluate and the pointing game (``is_uniform``);
#: the DICOM reader keeps a header window that leaves a slice uniform by it (``mriscan.dicom``).
UNIFORM_SHARE = 0.99
UNIFORM_BAND = 5
UNIFORM_RULE = f"{UNIFORM_SHARE:.0%} of the pixels within {UNIFORM_BAND} consecutive grey levels"


def is_uniform(image: np.ndarray) -> bool:
    """Whether a decoded slice has no anatomy by ``UNIFORM_RULE``.

    Parameters
    ----------
    image : ndarray (H, W), uint8
        A decoded slice, as the readers give it.

    Returns
    -------
    bool
        False for an empty array (nothing to judge; ``mriscan.readers.slice_warnings`` flags
        it "thin").

    Raises
    ------
    TypeError
        If ``image`` is not uint8 (grey levels are counted on the 0-255 scale).
    """
    from mriscan._scan_kernels import band_share

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"is_uniform takes a uint8 slice, not {image.dtype}")
    if not image.size:
        return False
    # a Numba kernel, not np.bincount: ingest's reader thread calls this on every slice, and
    # the kernel runs without the GIL and stops once the slice is proven not uniform
    flat = np.ascontiguousarray(image).reshape(-1)
    return band_share(flat, UNIFORM_BAND, UNIFORM_SHARE) >= UNIFORM_SHARE


#: A slice is "noise" (no anatomy: no spatial structure) by three tests of the Pearson r
#: between pixels and their neighbours, each taken to the right and below and failed by the
#: lower of the two (``is_noise``). Anatomy is smooth at the scale of a pixel, in every
#: direction; noise is not:
#:
#: 1. r of each pixel with its neighbour below ``NOISE_CORRELATION``. The 4,817 JPEG/PNG
#:    slices of ``brain_mri`` and ``figshare_br35h`` all have r >= 0.47 (the lowest: small,
#:    sharpened 225×225 scans; >= 0.47 resized to 32 px), the phantoms more; independent
#:    noise of any amplitude has r ~ 0 (|r| < 0.04 even after JPEG at quality 10), and so
#:    do random stripes across them (tester33: ~0.5 when the two directions were pooled).
#:    A phantom under Gaussian noise of SD 0.3 × 255 keeps r ~ 0.39 (its head visible).
#: 2. On slices of at least ``NOISE_LAG2_SIDE`` pixels a side, r of pixels two apart below
#:    ``NOISE_LAG2_CORRELATION``: noise upsampled 2× by nearest neighbour, or by a scanner's
#:    unfiltered zero-filling, has r ~ 0.5 at one pixel and ~0 at two (tester33); real slices
#:    >= 0.19, >= 0.34 resized to 64 px. Bilinear, bicubic or filtered (Hann) 2× upsampling
#:    keeps r 0.15-0.41 at two pixels: not caught (tester34).
#: 3. On slices of at least ``NOISE_BRIGHT_SIDE`` pixels a side (over at least
#:    ``NOISE_BRIGHT_MIN_PAIRS`` pairs), r among the pixels brighter than the slice's mean
#:    below ``NOISE_BRIGHT_CORRELATION``: noise inside a head-shaped
#:    region on black (tester33), whose edge lifts the whole slice's r to ~0.6 while its
#:    bright pixels' r stays ~0; real slices >= 0.31 (>= 0.37 resized to 128 px, but as low
#:    as -0.1 at 32 px: too few bright pixels to judge, hence the side).
#:
#: A correlation over fewer than ``NOISE_MIN_PAIRS`` pairs, or without variance, is not
#: judged; the pairs start on a sample of the rows (``NOISE_ROWS``), and "the mean" is
#: theirs. Not caught: noise with structure of its own over two or more pixels (upsampled
#: with interpolation, smoothed, or under a smooth gradient or bias field: tester34). The
#: "uniform" rule misses noise (tester32: two slices of full-range noise set a phantom
#: volume's verdict, and counted as all brain in NIfTI's slice selection).
NOISE_CORRELATION = 0.25
NOISE_LAG2_CORRELATION = 0.07
NOISE_LAG2_SIDE = 64
NOISE_BRIGHT_CORRELATION = 0.15
NOISE_BRIGHT_SIDE = 128
NOISE_MIN_PAIRS = 64
#: the bright pixels are judged only over at least this many sampled pairs a direction: a
#: small head in a large field of view has too few (tester34: heads padded to 3× their side
#: and resized to 128 px fell to r -0.31 over their ~300 bright pairs), a head-sized region
#: of noise at 128 px has ~2,000
NOISE_BRIGHT_MIN_PAIRS = 1024
#: the correlations read about this many rows of a slice (every ``H // NOISE_ROWS``-th row as
#: the first pixels of the pairs): ~16,000 pairs a direction on a 256² slice, a standard error
#: of r under 0.01, at a quarter of the cost of every row (ingest and NIfTI's slice selection
#: judge every slice: tester33's check cost a NIfTI ingest 40% of its speed)
NOISE_ROWS = 64
NOISE_RULE = (
    f"neighbouring pixels correlate below r = {NOISE_CORRELATION} across or down; on slices "
    f"of {NOISE_LAG2_SIDE}+ pixels, pixels two apart below r = {NOISE_LAG2_CORRELATION}; on "
    f"slices of {NOISE_BRIGHT_SIDE}+ pixels, the pixels brighter than the mean below "
    f"r = {NOISE_BRIGHT_CORRELATION}: no spatial structure"
)
#: both rules of a slice with no anatomy, as ``has_no_anatomy`` applies them
NO_ANATOMY_RULE = f"uniform ({UNIFORM_RULE}) or noise ({NOISE_RULE})"


def neighbour_correlations(
    image: np.ndarray, *, above: float = -1.0, max_lag: int = 1
) -> tuple[float, ...]:
    """Pearson r between the pixels of ``image`` (H, W) uint8 and their neighbours:
    ``(right, below)`` at one pixel, then ``(right, below)`` at two when ``max_lag`` is 2,
    over the pairs whose two pixels are both brighter than ``above`` (-1: all) and whose
    first pixel lies on a sampled row (``row_step``); NaN where fewer than
    ``NOISE_MIN_PAIRS`` pairs count or they do not vary (one Numba pass over exact integer
    sums, ``mriscan._scan_kernels.neighbour_correlations``)."""
    return tuple(_correlations(np.asarray(image), above, max_lag)[0])


def row_step(height: int) -> int:
    """Every how many rows the noise rule reads a slice of ``height`` rows (``NOISE_ROWS``)."""
    return max(1, height // NOISE_ROWS)


def _correlations(
    image: np.ndarray, above: float, max_lag: int, min_pairs: int = NOISE_MIN_PAIRS
) -> tuple[np.ndarray, float]:
    """(the r values of ``neighbour_correlations`` as an array, the sampled rows' mean)."""
    from mriscan._scan_kernels import neighbour_correlations as kernel

    out = np.empty(2 * max_lag, np.float64)
    step = row_step(image.shape[0])
    mean = kernel(image, float(above), max_lag, step, min_pairs, out)
    return out, float(mean)


def _below(values: np.ndarray, limit: float) -> bool:
    """Whether the lowest defined value is below ``limit`` (none defined: False)."""
    defined = values[~np.isnan(values)]
    return bool(defined.size) and float(defined.min()) < limit


def is_noise(image: np.ndarray) -> bool:
    """Whether a decoded slice is noise with no spatial structure, by ``NOISE_RULE``.

    Parameters
    ----------
    image : ndarray (H, W), uint8
        A decoded slice, as the readers give it.

    Returns
    -------
    bool
        False when every correlation the slice's size calls for is undefined: a side under 2
        pixels (such a slice is "thin"), every pixel equal (``is_uniform`` says that one).

    Raises
    ------
    TypeError
        If ``image`` is not a 2-D uint8 array.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise TypeError(f"is_noise takes a 2-D uint8 slice, not {image.ndim}-D {image.dtype}")
    side = min(image.shape)
    if side < 2:
        return False
    # a C-ordered copy of a strided view (a NIfTI slice) is cheaper than the kernel on it,
    # which LLVM vectorises only over unit strides
    image = np.ascontiguousarray(image)
    lag2 = side >= NOISE_LAG2_SIDE
    r, mean = _correlations(image, -1.0, 2 if lag2 else 1)
    if _below(r[:2], NOISE_CORRELATION) or (lag2 and _below(r[2:], NOISE_LAG2_CORRELATION)):
        return True
    if side < NOISE_BRIGHT_SIDE:
        return False
    bright, _ = _correlations(image, mean, 1, NOISE_BRIGHT_MIN_PAIRS)  # the sampled rows' mean
    return _below(bright, NOISE_BRIGHT_CORRELATION)


def no_anatomy(image: np.ndarray) -> str | None:
    """Which rule finds no anatomy in a decoded slice (H, W) uint8: ``"uniform"``
    (``is_uniform``), else ``"noise"`` (``is_noise``), else None (``NO_ANATOMY_RULE``).
    Raises TypeError for arrays that are not uint8."""
    image = np.asarray(image)
    if image.ndim == 2 and image.dtype == np.uint8:
        image = np.ascontiguousarray(image)  # one copy of a strided view, for both rules
    if is_uniform(image):
        return "uniform"
    return "noise" if is_noise(image) else None


def has_no_anatomy(image: np.ndarray) -> bool:
    """Whether a decoded slice (H, W) uint8 has no anatomy (``no_anatomy``). Such slices are
    flagged at ingest and left out of the pooling, the pointing game and explain's top-k, as
    the rules' users say. Raises TypeError for arrays that are not uint8."""
    return no_anatomy(image) is not None


HASH_CHARS = 24  # 96 bits of the HMAC: collisions are negligible for any archive
_PERCENTILE_SAMPLE = 1 << 20  # percentiles of larger arrays come from an even subsample


def new_salt() -> bytes:
    """A fresh random key of 32 bytes (``secrets.token_bytes``) for ids that need not outlive one
    run; never write it beside the ids (stores use ``mriscan.keys.identifier_key``)."""
    return secrets.token_bytes(32)


def check_salt(salt: bytes) -> bytes:
    """Return ``salt`` if it is bytes of at least ``MIN_SALT_BYTES``, else raise ``ConfigError``."""
    if not isinstance(salt, bytes | bytearray) or len(salt) < MIN_SALT_BYTES:
        got = f"{type(salt).__name__} of length {len(salt)}" if hasattr(salt, "__len__") else salt
        raise ConfigError(
            f"salt must be bytes of length >= {MIN_SALT_BYTES} (use mriscan.scan.new_salt() once "
            f"per store and keep it). Received: {got}."
        )
    return bytes(salt)


def salted_hash(salt: bytes, kind: str, value: str) -> str:
    """Keyed hash of an identifier: ``HMAC-SHA-256(salt, kind + NUL + value)``, first 24 hex chars.

    ``kind`` ("patient", "study", ...) separates the domains, so a patient ID equal to some
    series UID does not give the same id.
    """
    msg = kind.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
    return hmac.new(salt, msg, hashlib.sha256).hexdigest()[:HASH_CHARS]


@dataclass(frozen=True)
class Window:
    """The intensity window that mapped a slice to uint8.

    ``low`` maps to 0 and ``high`` to 255 (linearly, clipped), in the file's real-world units
    (after Rescale Slope/Intercept for DICOM, after scl_slope/scl_inter for NIfTI).
    ``source`` says where it came from: ``"header"`` (DICOM Window Center/Width) or
    ``"percentile"`` (computed from the data). ``function`` is the DICOM VOI LUT Function
    (``"LINEAR"``, ``"LINEAR_EXACT"``, ``"SIGMOID"``) or ``"LINEAR"`` for percentile windows.
    """

    source: str
    low: float
    high: float
    function: str = "LINEAR"


def percentile_window(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The (low, high) percentiles of ``values`` (any shape), as floats.

    The percentile is NumPy's ``method="inverted_cdf"`` (the smallest value whose cumulative
    share reaches q; Hyndman & Fan 1996, definition 1): it is always a value of the data, and for
    integer arrays of 8/16 bits it is computed exactly from a histogram (``np.bincount``), which
    is several times faster than sorting. Other arrays above 2**20 elements are subsampled with
    an even stride first (robust percentiles move by far less than one grey level). Non-finite
    values are ignored; an array with none finite gives (0.0, 0.0).
    """
    if values.size == 0:
        return 0.0, 0.0
    if values.size > _PERCENTILE_SAMPLE and values.ndim > 0:
        # an even grid of voxels (a stride per axis): cheap on views in any memory order
        step = int(np.ceil((values.size / _PERCENTILE_SAMPLE) ** (1.0 / values.ndim)))
        values = values[(slice(None, None, step),) * values.ndim]
    flat = values.ravel(order="K")
    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 2:
        # inverted_cdf: first value whose count reaches ceil-like q * n (NumPy's definition),
        # from an exact histogram (one Numba pass that releases the GIL); the ranks in Python
        # floats: the same float64 arithmetic as on arrays, a few microseconds less per call
        ranks = np.array(
            [max(math.ceil(float(p) / 100.0 * flat.size - 1e-9), 1) for p in percentiles],
            np.float64,
        )
        if not flat.dtype.isnative:
            flat = flat.astype(flat.dtype.newbyteorder("="))
        out = np.empty(2, np.int64)
        integer_percentiles(flat, ranks, out)
        return float(out[0]), float(out[1])
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return 0.0, 0.0
    lo, hi = np.percentile(flat, percentiles, method="inverted_cdf")
    return float(lo), float(hi)


def window_to_uint8(
    stored: np.ndarray,
    window: Window,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    invert: bool = False,
    center_width: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map raw values through ``value * slope + intercept`` and ``window`` to uint8.

    Parameters
    ----------
    stored : ndarray, any shape, integer or float
        Stored values (before rescale).
    window : Window
        ``low`` -> 0 and ``high`` -> 255 in rescaled units, linear and clipped; for
        ``function == "SIGMOID"`` the DICOM sigmoid (PS3.3 C.11.2.1.3.1) with ``center_width``.
    slope, intercept : float
        The modality rescale, fused with the window into one multiply-add (float32).
    invert : bool
        ``255 - value`` afterwards (MONOCHROME1: low values are displayed white).

    Returns
    -------
    ndarray of the same shape, uint8
        A window of zero width maps everything at or below it to 0 and above it to 255.
    """
    if window.function == "SIGMOID":
        x = stored.astype(np.float32, copy=True)
    if window.function == "SIGMOID":
        if center_width is None:
            raise ConfigError("a SIGMOID window needs center_width=(center, width).")
        c, w = center_width
        # PS3.3 C.11.2.1.3.1: y = range / (1 + exp(-4 (x - c) / w))
        x *= np.float32(slope)
        x += np.float32(intercept - c)
        x *= np.float32(-4.0 / w)
        np.exp(x, out=x)
        x += 1
        np.divide(np.float32(255.0), x, out=x)
        x += np.float32(0.5)
    else:
        span = window.high - window.low
        if span <= 0:
            # a step at ``low``: everything above it is white
            real = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            out = (real > window.low).astype(np.uint8)
            out *= 255
            return 255 - out if invert else out
        # (v * slope + intercept - low) * 255 / span, as one multiply-add on the stored values
        a = slope * 255.0 / span
        b = (intercept - window.low) * 255.0 / span
        if stored.dtype.kind in "uif":
            # one fused Numba pass in the array's own memory order (no float copy)
            src = stored if _contiguous(stored) else np.ascontiguousarray(stored)
            if not src.dtype.isnative:  # e.g. big-endian NIfTI: Numba needs native order
                src = src.astype(src.dtype.newbyteorder("="))
            out = np.empty_like(src, dtype=np.uint8)  # same order as src
            affine_to_uint8(src.ravel(order="K"), a, b + 0.5, invert, out.ravel(order="K"))
            return out
        x = stored.astype(np.float32, copy=True)
        x *= np.float32(a)
        x += np.float32(b + 0.5)  # + 0.5 then truncation = round half up on [0, 255]
    np.clip(x, 0, 255.5, out=x)  # truncation below maps [255, 255.5] to 255
    out = x.astype(np.uint8)
    if invert:
        np.subtract(np.uint8(255), out, out=out)
    return out


def _contiguous(a: np.ndarray) -> bool:
    return a.flags.c_contiguous or a.flags.f_contiguous
