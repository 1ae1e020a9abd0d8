"""Safe decoding of JPEG/PNG slices into 2-D uint8 grayscale arrays."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mriscan.errors import (
    CorruptImageError,
    EmptyDatasetError,
    ImageTooLargeError,
    UnreadableFileError,
    UnsupportedFormatError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "decode_bytes",
    "decode_image",
    "list_class_folders",
    "read_file",
]

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_FORMATS = ("JPEG", "PNG", "MPO")  # MPO: multi-picture JPEG from some cameras


def decode_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decode a JPEG or PNG file into a grayscale image.

    Parameters
    ----------
    path : path-like
        The image file.
    max_pixels : int
        Refuse images with more pixels than this (decompression bombs).
    draft_size : int, optional
        If given, let JPEG decoding shrink by a power of two while both sides stay
        ``>= draft_size`` (much faster when the target is far smaller than the file).

    Returns
    -------
    ndarray of shape (H, W), uint8
        EXIF orientation applied; alpha dropped; 16-bit scaled to 8-bit.

    Raises
    ------
    CorruptImageError, UnsupportedFormatError, ImageTooLargeError, UnreadableFileError
    """
    return decode_bytes(read_file(path), path, max_pixels=max_pixels, draft_size=draft_size)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """Read a whole file, raising ``UnreadableFileError`` with the reason on failure."""
    path = Path(path)
    if path.is_dir():
        raise UnreadableFileError(path, "is a directory, not an image file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(
            path, f"cannot open file ({exc.strerror or exc}); check that it exists and is readable"
        ) from exc


def decode_bytes(
    data: bytes,
    path: str | os.PathLike[str] = "<bytes>",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decode the bytes of a JPEG/PNG file (``path`` names it in errors); see ``decode_image``."""
    if not data:
        raise CorruptImageError(path, "file is empty (0 bytes); re-export or remove it")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(
            path, "not a recognised image (expected JPEG or PNG); is it a text or other file?"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, f"image is a possible decompression bomb ({exc})") from exc
    except OSError as exc:
        raise CorruptImageError(path, f"cannot read image header ({exc})") from exc
    with img:
        if img.format not in _FORMATS:
            raise UnsupportedFormatError(
                path, f"format {img.format} is not supported; convert it to JPEG or PNG"
            )
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLargeError(
                path,
                f"{w}x{h} = {w * h:,} pixels exceeds the cap of {max_pixels:,}; "
                "downscale it or raise max_pixels",
            )
        try:
            if draft_size is not None and img.format == "JPEG":
                img.draft("L", (int(draft_size), int(draft_size)))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_gray(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(
                path, f"image data is truncated or damaged ({exc}); re-export the file"
            ) from exc


def _to_gray(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to a 2-D uint8 luminance array."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Drop alpha instead of compositing onto black: transparent pixels keep their colour.
        img = img.convert("RGB") if mode in ("RGBA", "RGBa", "PA") else img.getchannel(0)
    if img.mode != "L":
        img = img.convert("L")
    return np.array(img, dtype=np.uint8)


def list_class_folders(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Map each class sub-folder name of ``root`` (sorted) to its sorted image files.

    Raises
    ------
    EmptyDatasetError
        If ``root`` is missing, has no class folders, or a class folder has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise EmptyDatasetError(
            f"Data folder {root} does not exist or is not a folder. "
            "Expected class sub-folders such as yes/ and no/."
        )
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[sub.name] = sorted(_iter_images(sub))
    if len(classes) < 2:
        raise EmptyDatasetError(
            f"{root} must hold at least two class sub-folders (e.g. yes/ and no/). "
            f"Received: {sorted(classes) or 'none'}."
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise EmptyDatasetError(
            f"Class folder(s) {empty} under {root} hold no .jpg/.jpeg/.png files."
        )
    return classes


def _iter_images(folder: Path) -> Iterator[Path]:
    """Yield the image files below ``folder`` (recursively, hidden files skipped)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / name
