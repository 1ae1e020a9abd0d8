"""Safe decoding of JPEG/PNG slices into 2-D uint8 grayscale arrays."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mriscan.errors import (
    CorruptImageError,
    EmptyDatasetError,
    ImageTooLargeError,
    ManifestError,
    UnreadableFileError,
    UnsupportedFormatError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "ManifestEntry",
    "SourceFile",
    "decode_bytes",
    "decode_image",
    "file_kind",
    "is_dicom",
    "list_class_folders",
    "list_class_sources",
    "read_file",
    "read_manifest",
]

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
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


# --- scanner formats: recognition, listing, manifests ------------------------------------------


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True if the file starts like a DICOM Part 10 file: a 128-byte preamble, then ``DICM``.

    Reads 132 bytes; any suffix (or none). Unreadable files and folders give False.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """Which reader a file needs: ``"image"`` (JPEG/PNG by suffix), ``"nifti"`` (``.nii``,
    ``.nii.gz``), ``"dicom"`` (by content, any suffix), or None (not an input; hidden files too).
    """
    path = Path(path)
    name = path.name.lower()
    if name.startswith("."):
        return None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if is_dicom(path):
        return "dicom"
    return None


@dataclass(frozen=True)
class SourceFile:
    """One input file and its kind (``"image"``, ``"dicom"`` or ``"nifti"``, see ``file_kind``)."""

    path: Path
    kind: str


def list_class_sources(root: str | os.PathLike[str]) -> dict[str, list[SourceFile]]:
    """Map each class sub-folder of ``root`` (sorted) to its input files of every kind.

    Like ``list_class_folders``, but a class folder may also hold DICOM files (recognised by
    content, any suffix), folders of DICOM series at any depth, and NIfTI volumes. Files are
    sorted by path; files of no known kind are left out.

    Raises
    ------
    EmptyDatasetError
        If ``root`` is missing, has fewer than two class folders, or a class folder has no
        inputs.
    """
    root = Path(root)
    if not root.is_dir():
        raise EmptyDatasetError(
            f"Data folder {root} does not exist or is not a folder. "
            "Expected class sub-folders such as yes/ and no/."
        )
    classes: dict[str, list[SourceFile]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = []
        for path in sorted(_iter_files(sub)):
            kind = file_kind(path)
            if kind is not None:
                found.append(SourceFile(path, kind))
        classes[sub.name] = found
    if len(classes) < 2:
        raise EmptyDatasetError(
            f"{root} must hold at least two class sub-folders (e.g. yes/ and no/). "
            f"Received: {sorted(classes) or 'none'}."
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise EmptyDatasetError(
            f"Class folder(s) {empty} under {root} hold no JPEG/PNG, DICOM or NIfTI files."
        )
    return classes


def _iter_files(folder: Path) -> Iterator[Path]:
    """Yield every non-hidden file below ``folder`` (recursively)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


@dataclass(frozen=True)
class ManifestEntry:
    """One row of a CSV manifest: an existing input file, its label, and an optional group.

    ``path`` is absolute (resolved against the CSV's folder), ``kind`` as in ``file_kind``,
    ``group`` is None when the manifest has no group column or the cell is empty, and ``line``
    is the row's line number in the CSV (for messages).
    """

    path: Path
    label: str
    group: str | None
    kind: str
    line: int


def read_manifest(csv_path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Read a CSV manifest with the header ``path,label`` or ``path,label,group``.

    Paths are relative to the CSV's folder (absolute paths are kept). A path may name a JPEG/PNG,
    a DICOM file, a NIfTI volume, or a folder (every input file below it, with the row's label
    and group). UTF-8 (a BOM is allowed); blank lines are skipped.

    Returns
    -------
    list of ManifestEntry
        In file order (folders expanded in sorted order).

    Raises
    ------
    ManifestError
        The CSV is missing or unreadable, the header is not ``path,label[,group]``, a row has the
        wrong number of cells or an empty path/label, a path does not exist or is no input file,
        the same file is listed twice, or fewer than two labels are present.
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"Cannot read manifest {csv_path}: {exc}.") from exc
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ManifestError(f"Manifest {csv_path} is empty; expected a header path,label[,group].")
    header = [c.strip().lower() for c in rows[0]]
    if header not in (["path", "label"], ["path", "label", "group"]):
        raise ManifestError(
            f"Manifest {csv_path}: the first line must be the header 'path,label' or "
            f"'path,label,group'. Received: {','.join(rows[0])!r}."
        )
    base = csv_path.parent
    entries: list[ManifestEntry] = []
    seen: dict[Path, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ManifestError(
                f"Manifest {csv_path}, line {line}: expected {len(header)} cells "
                f"({','.join(header)}), got {len(row)}: {row!r}. Quote paths that contain commas."
            )
        raw_path, label = row[0].strip(), row[1].strip()
        group = (row[2].strip() or None) if len(row) == 3 else None
        if not raw_path or not label:
            raise ManifestError(
                f"Manifest {csv_path}, line {line}: path and label must not be empty. "
                f"Received: {row!r}."
            )
        target = Path(raw_path)
        target = target if target.is_absolute() else base / target
        if target.is_dir():
            files = [(p, file_kind(p)) for p in sorted(_iter_files(target))]
            files = [(p, k) for p, k in files if k is not None]
            if not files:
                raise ManifestError(
                    f"Manifest {csv_path}, line {line}: folder {target} holds no JPEG/PNG, "
                    "DICOM or NIfTI files."
                )
        elif target.is_file():
            kind = file_kind(target)
            if kind is None:
                raise ManifestError(
                    f"Manifest {csv_path}, line {line}: {target} is not a JPEG/PNG, DICOM or "
                    "NIfTI (.nii/.nii.gz) file."
                )
            files = [(target, kind)]
        else:
            raise ManifestError(
                f"Manifest {csv_path}, line {line}: {target} does not exist (paths are relative "
                f"to the manifest's folder {base})."
            )
        for p, kind in files:
            key = p.resolve()
            if key in seen:
                raise ManifestError(
                    f"Manifest {csv_path}, line {line}: {p} is already listed on line "
                    f"{seen[key]}; list each file once."
                )
            seen[key] = line
            entries.append(ManifestEntry(key, label, group, kind, line))
    labels = sorted({e.label for e in entries})
    if len(labels) < 2:
        raise ManifestError(
            f"Manifest {csv_path} must name at least two labels. Received: {labels or 'none'}."
        )
    return entries
