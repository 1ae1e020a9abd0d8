"""Safe decoding of JPEG/PNG slices into 2-D uint8 grayscale arrays."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mriscan.errors import (
    CorruptImageError,
    EmptyDatasetError,
    ImageDecodeError,
    ImageTooLargeError,
    ManifestError,
    UnreadableFileError,
    UnsupportedFormatError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_SUFFIXES",
    "EMPTY_FILE",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "UNLISTED_FOLDER",
    "ClassListing",
    "ManifestEntry",
    "ManifestListing",
    "SourceFile",
    "UnusedFile",
    "check_label_case",
    "classify_file",
    "decode_bytes",
    "decode_image",
    "display_path",
    "file_kind",
    "is_dicom",
    "list_class_folders",
    "list_class_sources",
    "looks_like_dicom_dataset",
    "one_line",
    "read_file",
    "read_manifest",
    "relative_name",
    "scan_class_folders",
    "scan_manifest",
    "sniff_image_format",
    "write_whole",
]

DEFAULT_MAX_PIXELS = 64_000_000
#: the reason every command gives for a file of 0 bytes, whatever its kind
EMPTY_FILE = "empty file (0 bytes): nothing to read; export it again or remove it"
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
        EXIF orientation applied; alpha dropped; 16-bit scaled to 8-bit (its range
        min-max to 0-255, a range under 256 values shifted to 0, not stretched).

    Raises
    ------
    CorruptImageError, UnsupportedFormatError, ImageTooLargeError, UnreadableFileError
    """
    return decode_bytes(read_file(path), path, max_pixels=max_pixels, draft_size=draft_size)


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that is always valid UTF-8, for messages, tables, plot titles.

    A file name holding bytes that are not valid UTF-8 reaches Python as lone surrogates
    (PEP 383 ``surrogateescape``), which UTF-8 writers, terminals and Matplotlib reject; those
    bytes are shown as ``\\xNN`` instead (``os.fsencode`` then ``backslashreplace``). Valid
    names are returned unchanged.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def relative_name(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` relative to ``root``, with forward slashes, as text a store or a table keeps.

    A name holding bytes that are not valid UTF-8 (an old Latin-1 export) keeps them as
    ``\\xNN`` (``display_path``): the store's index, the JSON reports and the CSV tables are
    UTF-8 and cannot hold them raw. The same file always gives the same text, so a re-ingest
    recognises it.
    """
    p, r = os.fspath(path), os.fspath(root)
    # the common case, a file found by walking ``root``: ``path`` is ``root`` joined with plain
    # names, and cutting the prefix gives what ``os.path.relpath`` gives without its two
    # ``abspath`` calls (a fifth of a DICOM folder's listing time, measured)
    if os.sep == "/" and r and isinstance(p, str) and isinstance(r, str):
        prefix = r if r.endswith("/") else r + "/"
        rest = p[len(prefix) :] if p.startswith(prefix) else ""
        if rest and not _UNCLEAN_PARTS.search(f"/{rest}/"):
            return display_path(rest)
    return display_path(Path(os.path.relpath(path, root)).as_posix())


#: a part of a relative path that ``os.path.relpath`` would normalise away: empty, "." or ".."
_UNCLEAN_PARTS = re.compile(r"/(?:\.\.?)?/")


_LINE_BREAKS = re.compile(r"\s*[^\S ]\s*")


def one_line(text: str) -> str:
    """``text`` as one line of valid UTF-8, for the one-line-per-file lists of the console.

    A library's reason may span lines (nibabel prints a 4x4 affine over four, and ends a
    truncated file's message with a newline before " - could the file be damaged?"): every
    run of white space holding a line break or tab becomes one space, the ends are stripped
    (single and double spaces are kept, as file names may hold them). Bytes of a file name
    that are not valid UTF-8 become ``\\xNN``, as ``display_path`` shows them.
    """
    return _LINE_BREAKS.sub(" ", display_path(text)).strip()


def write_whole(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` writes a temporary file beside it
    (``.<name>.<pid>.tmp``), which ``os.replace`` then moves onto ``path``. Whatever stops the
    write (an error, Ctrl-C), the temporary file is removed and the exception passes on, so a
    rerun never finds half a file; an existing ``path`` is replaced in one step.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # e.g. the folder is missing: there is no tmp
            tmp.unlink(missing_ok=True)
        raise
    return path


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
    """Decode the bytes of a JPEG/PNG file (``path`` names it in errors); see ``decode_image``.

    Every exception Pillow raises while reading the bytes (``OSError``, ``SyntaxError``,
    ``ValueError``, ``struct.error``, ``IndexError``, ``TypeError``, ``EOFError``, ... its
    plugins use them all for damaged input) becomes an ``ImageDecodeError`` subclass naming the
    file and the reason, so one odd file never aborts a batch. ``MemoryError`` is not a
    property of the file but of the machine: it propagates, with a note naming the file;
    ``KeyboardInterrupt`` and other ``BaseException`` subclasses are never caught.

    Raises
    ------
    CorruptImageError, UnsupportedFormatError, ImageTooLargeError
    """
    if not data:
        raise CorruptImageError(path, EMPTY_FILE)
    stage = ["header"]
    try:
        return _decode_pillow(data, path, max_pixels, draft_size, stage)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        exc.add_note(f"while decoding {path}")
        raise
    except Exception as exc:  # Pillow: no common base class for bad-input errors
        raise _pillow_error(path, exc, stage[0]) from exc


def _decode_pillow(
    data: bytes, path: object, max_pixels: int, draft_size: int | None, stage: list[str]
) -> np.ndarray:
    """Open, check and decode with Pillow; ``stage[0]`` says how far it got (for messages)."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise _unidentified_error(data, path) from exc
    except Image.DecompressionBombError as exc:
        # over Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS): mriscan's cap decides, with
        # mriscan's message, on the header Pillow's plugin reads without that check
        img = _open_unchecked(data, path, max_pixels, exc)
    with img:
        if img.format not in _FORMATS:
            raise UnsupportedFormatError(
                path, f"format {img.format} is not supported; convert it to JPEG or PNG"
            )
        w, h = img.size
        if w * h > max_pixels:
            raise _too_large(path, f"{w}x{h} = {w * h:,}", max_pixels)
        stage[0] = "data"
        if draft_size is not None and img.format == "JPEG":
            img.draft("L", (int(draft_size), int(draft_size)))
        img.load()
        img = ImageOps.exif_transpose(img)
        arr = _to_gray(img)
    if arr.ndim != 2 or arr.dtype != np.uint8 or arr.size == 0:
        raise CorruptImageError(
            path, f"decoded to an unusable array {arr.shape} {arr.dtype}; re-export the file"
        )
    return arr


def _too_large(path: object, size: str, max_pixels: int) -> ImageTooLargeError:
    """mriscan's message for an image over the pixel cap; ``size`` like ``"W x H = N"``."""
    return ImageTooLargeError(
        path,
        f"{size} pixels exceeds the cap of {max_pixels:,} (a guard against decompression "
        "bombs); downscale the image. The cap has no command-line option; from Python, pass a "
        "larger max_pixels to mriscan.decode_image or mriscan.ingest.IngestConfig",
    )


def _open_unchecked(data: bytes, path: object, max_pixels: int, bomb: Exception) -> Image.Image:
    """Open an image that ``Image.open`` refused as a decompression bomb with its format's
    Pillow plugin directly (``Image.OPEN[format]``, what ``Image.open`` calls before its own
    size check), so that mriscan's cap (checked next, before any pixel is decoded) decides and
    words the refusal. Raises ``ImageTooLargeError`` itself when no plugin reads the header."""
    fmt = sniff_image_format(data[:32])
    if fmt in _FORMATS and fmt in Image.OPEN:
        try:
            return Image.OPEN[fmt][0](io.BytesIO(data), "")
        except Exception:  # a header the plugin cannot read: refuse by Pillow's pixel count
            pass
    counted = re.search(r"\((\d+) pixels\)", str(bomb))
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    size = f"{int(counted.group(1)):,}" if counted else f"more than {limit:,}"
    raise _too_large(path, size, max_pixels) from bomb


def _pillow_error(path: object, exc: Exception, stage: str) -> ImageDecodeError:
    """The ``ImageDecodeError`` for an exception Pillow raised at ``stage`` (header or data)."""
    text = str(exc) or type(exc).__name__
    if "Decompressed data too large" in text:  # PngImagePlugin.MAX_TEXT_CHUNK / ICC limits
        return CorruptImageError(
            path,
            f"a PNG metadata chunk decompresses past Pillow's safety limit ({text}); "
            "re-save the image without its text/ICC metadata",
        )
    if not isinstance(exc, OSError | SyntaxError | ValueError):
        text = f"{type(exc).__name__}: {text}"
    if stage == "header":
        return CorruptImageError(path, f"cannot read image header ({text}); re-export the file")
    return CorruptImageError(
        path, f"image data is truncated or damaged ({text}); re-export the file"
    )


# Formats whose Pillow signature check is strong enough to name a file by its first bytes
# (several other plugins accept almost anything, e.g. TGA has no check at all).
_SNIFFED = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "JPEG2000", "ICO", "PPM", "PSD")


def sniff_image_format(head: bytes) -> str | None:
    """The image format a file's first bytes announce, by Pillow's own signature checks.

    Parameters
    ----------
    head : bytes
        The first bytes of the file (16 or more; shorter heads match fewer formats).

    Returns
    -------
    str or None
        A Pillow format name (``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"BMP"``, ``"TIFF"``,
        ``"WEBP"``, ...) or None. Only the signature is checked: the file may still be damaged.
    """
    Image.init()
    for fmt in _SNIFFED:
        entry = Image.OPEN.get(fmt)
        if entry is None or entry[1] is None:
            continue
        try:
            if entry[1](head):
                return fmt
        except Exception:  # an accept() that needs more bytes than given
            continue
    return None


def _unidentified_error(data: bytes, path: object) -> ImageDecodeError:
    """Why Pillow identified no format: a damaged JPEG/PNG (with its plugin's own reason), an
    unsupported image format, a DICOM file, or something that is no image at all."""
    fmt = sniff_image_format(data[:32])
    if fmt is not None:
        try:  # the plugin's own complaint, which Image.open() swallows
            Image.OPEN[fmt][0](io.BytesIO(data)).close()
            why = "Pillow cannot identify it"
        except Exception as exc:
            why = str(exc) or type(exc).__name__
        if fmt in _FORMATS:
            return CorruptImageError(
                path, f"a damaged {fmt} file: its header cannot be read ({why}); re-export it"
            )
        return CorruptImageError(
            path,
            f"a damaged {fmt} image ({why}); {fmt} is not read anyway: re-export it as PNG",
        )
    if (len(data) >= 132 and data[128:132] == b"DICM") or looks_like_dicom_dataset(data[:256]):
        return UnsupportedFormatError(
            path, "a DICOM file, not a JPEG/PNG image: give it a .dcm suffix or its own folder"
        )
    return UnsupportedFormatError(
        path, "not a recognised image (expected JPEG or PNG); is it a text or other file?"
    )


def _to_gray(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to a 2-D uint8 luminance array."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        # min-max to 0-255, but an integer image is never amplified past one grey level per
        # stored value: a 16-bit slice of values 0-3 (noise on black) stays 0-3, dark and
        # uniform by the readers' rule, instead of becoming full-contrast noise (tester30)
        span = hi - lo if mode == "F" else max(hi - lo, 255.0)
        return np.round((arr - lo) * (255.0 / span)).astype(np.uint8)
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
    _refuse_stores_as_classes(Path(root), empty)
    if empty:
        raise EmptyDatasetError(
            f"Class folder(s) {empty} under {root} hold no .jpg/.jpeg/.png files. "
            + _EMPTY_FIX.format(root=root)
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
    """True if the file starts like a DICOM file: a Part 10 file (a 128-byte preamble, then
    ``DICM``, as ``pydicom.misc.is_dicom`` checks) or a bare data set without the preamble and
    file meta information whose first element is a DICOM element
    (``looks_like_dicom_dataset``).

    Reads 256 bytes; any suffix (or none). Unreadable files and folders give False. A bare data
    set is only *likely* DICOM: ``mriscan.dicom.read_dicom`` confirms it by parsing the header.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    return _is_part10(head) or looks_like_dicom_dataset(head)


def _is_part10(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


# groups a data set written without its file meta information starts with: the meta group
# itself (some writers drop only the preamble) or the identifying group 0008
_FIRST_GROUPS = (0x0002, 0x0008)
_VRS: frozenset[bytes] | None = None


def looks_like_dicom_dataset(head: bytes) -> bool:
    """True if ``head`` starts with a DICOM data element as a file without the 128-byte
    preamble would (pydicom reads such files with ``force=True``).

    The first element must be in group 0002 or 0008, little or big endian, and either carry a
    valid explicit VR (``pydicom.valuerep.VR``) or, implicit VR little endian, be a tag of the
    DICOM dictionary (``pydicom.datadict``) with a plausible length. A heuristic on 8 bytes:
    ``mriscan.dicom.read_dicom`` confirms it by parsing the header.
    """
    if len(head) < 8:
        return False
    global _VRS
    for order in ("<", ">"):
        group, elem = struct.unpack(order + "HH", head[:4])
        if group not in _FIRST_GROUPS:
            continue
        from pydicom.datadict import dictionary_has_tag

        if _VRS is None:
            from pydicom.valuerep import VR

            _VRS = frozenset(v.value.encode() for v in VR if len(v.value) == 2)
        known = elem == 0 or dictionary_has_tag((group << 16) | elem)
        if head[4:6] in _VRS and known:
            return True
        if order == "<" and known:
            (length,) = struct.unpack("<I", head[4:8])
            if length < 1 << 16 or length == 0xFFFFFFFF:
                return True
    return False


#: Suffixes that say "DICOM" on their own (the content then only has to parse).
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """Which reader a file needs: ``"image"``, ``"dicom"``, ``"nifti"``, or None (not an
    input; hidden files too). See ``classify_file``, which also says why a file is None."""
    return classify_file(path)[0]


def classify_file(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """Which reader a file needs, by its content first and its name second.

    Order: hidden (name starts with ".") -> None; ``DICM`` after a 128-byte preamble ->
    ``"dicom"``; a JPEG or PNG signature (``sniff_image_format``) -> ``"image"`` (any suffix or
    none); ``.nii`` / ``.nii.gz`` -> ``"nifti"``; a DICOM suffix (``DICOM_SUFFIXES``) or a first
    element that looks like a DICOM data set (``looks_like_dicom_dataset``: files without the
    preamble) -> ``"dicom"``; a ``.jpg``/``.jpeg``/``.png`` name -> ``"image"`` (the decoder
    then says what is wrong with it). Reads the first 352 bytes.

    Returns
    -------
    (kind, reason)
        ``kind`` is ``"image"``, ``"dicom"``, ``"nifti"`` or None; when None, ``reason`` says
        why the file is not an input (e.g. ``"a GIF image: only JPEG and PNG images are read;
        convert it to PNG"``), in one line, for the listing of unused files.
    """
    path = Path(path)
    name = path.name.lower()
    if name.startswith("."):
        return None, "hidden file (its name starts with '.')"
    suffix_kind = (
        "image"
        if path.suffix.lower() in IMAGE_SUFFIXES
        else "nifti"
        if name.endswith(NIFTI_SUFFIXES)
        else "dicom"
        if path.suffix.lower() in DICOM_SUFFIXES
        else None
    )
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)  # a NIfTI-1 header's magic ends at byte 348
    except OSError as exc:
        if suffix_kind is not None:  # the reader reports it in the file's own row
            return suffix_kind, None
        return None, f"cannot be read to find its kind ({exc.strerror or exc})"
    if _is_part10(head):
        return "dicom", None
    fmt = sniff_image_format(head[:32])
    if fmt in _FORMATS:
        return "image", None
    if suffix_kind == "nifti":
        return "nifti", None
    if suffix_kind == "dicom" or looks_like_dicom_dataset(head):
        return "dicom", None
    if suffix_kind is not None:
        return suffix_kind, None
    if not head:
        return None, EMPTY_FILE  # one reason for every empty file, with the way out
    if fmt is not None:
        return None, (
            f"a {fmt} image: only JPEG and PNG images (and DICOM, NIfTI) are read; convert "
            "it to PNG to use it"
        )
    return None, _unknown_reason(name, head)


def _unknown_reason(name: str, head: bytes) -> str:
    """Why a file of no input kind is not read, with the way out where its name or first
    bytes tell what it is: a NIfTI/Analyze header-image pair, gzip data without .nii.gz, a
    NIfTI volume under another name (its magic at byte 344: "n+1"; NIfTI-2: "n+2" at 4)."""
    pair = "convert the pair to one .nii file (e.g. nibabel: nib.save(nib.load('x.hdr'), 'x.nii'))"
    if name.endswith(".hdr") and head[:4] in _PAIR_SIZES:
        return f"the header of a NIfTI/Analyze .hdr/.img pair, which is not read: {pair}"
    if name.endswith(".img"):
        return (
            f"an .img file (the image half of a NIfTI/Analyze .hdr/.img pair?) is not read: {pair}"
        )
    if head[:2] == b"\x1f\x8b":
        return "gzip-compressed data: a gzipped NIfTI volume is read when named .nii.gz"
    if head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00":
        return "a NIfTI volume under another name: name it .nii (or .nii.gz when gzipped)"
    return "not a JPEG/PNG image, DICOM file or NIfTI volume (by content and name)"


#: ``sizeof_hdr`` (348, either byte order) that opens a NIfTI-1 or Analyze 7.5 ``.hdr``
_PAIR_SIZES = (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")


@dataclass(frozen=True)
class UnusedFile:
    """A file or folder below a class folder (or a manifest folder row) that is not an input.

    ``hidden`` marks entries not read by rule, listed for completeness: names starting with
    "." and files beside the class folders (a README); other entries are files of no input
    kind, with the ``reason``.
    """

    path: Path
    reason: str
    hidden: bool = False


@dataclass(frozen=True)
class SourceFile:
    """One input file and its kind (``"image"``, ``"dicom"`` or ``"nifti"``, see ``file_kind``)."""

    path: Path
    kind: str


def list_class_sources(root: str | os.PathLike[str]) -> dict[str, list[SourceFile]]:
    """Map each class sub-folder of ``root`` (sorted) to its input files of every kind.

    Like ``list_class_folders``, but a class folder may also hold DICOM files (recognised by
    content, any suffix), folders of DICOM series at any depth, and NIfTI volumes: the
    ``classes`` of ``scan_class_folders``, which ingest uses (its checks apply).

    Raises
    ------
    EmptyDatasetError
        As ``scan_class_folders``: ``root`` missing, fewer than two class folders, a class
        folder without inputs, and the other layout faults it names.
    """
    return scan_class_folders(root).classes


@dataclass(frozen=True)
class ClassListing:
    """The input files of each class folder, and everything below them that is not used.

    ``classes`` maps each class name (sorted) to its ``SourceFile`` list (sorted by path);
    ``unreadable`` lists ``(path, reason)`` for every sub-folder that could not be listed (its
    files are not in ``classes``: the caller must say so, never skip them silently; the reason
    starts with ``UNLISTED_FOLDER``) and every broken symbolic link (with its target);
    ``unused`` lists every other file that is not an input (``UnusedFile``: files of no input
    kind with the reason, and hidden files and folders marked ``hidden``), sorted by path.
    """

    classes: dict[str, list[SourceFile]]
    unreadable: tuple[tuple[Path, str], ...]
    unused: tuple[UnusedFile, ...] = ()
    empty_left_out: tuple[str, ...] = ()


def scan_class_folders(
    root: str | os.PathLike[str], used: Collection[str] | None = None, *, min_classes: int = 2
) -> ClassListing:
    """List ``root``'s class folders like ``list_class_sources``, checking the layout first.

    Raises
    ------
    EmptyDatasetError
        ``root`` is missing or unreadable; fewer than two class folders (naming a sub-folder
        that holds class folders itself, when there is one); a class folder that cannot be read
        (named as unreadable, with the reason); a class folder with no input files; or a nested
        copy of the class layout (a folder holding two or more folders named like the classes,
        as in the Kaggle download's ``brain_tumor_dataset/{yes,no}`` beside ``yes/`` and
        ``no/``), which would be read as a class of its own; class folders whose names differ
        only by case (``Yes/`` beside ``yes/``).

    Every file that is not an input (of no input kind, hidden, or beside the class folders) is
    listed in ``ClassListing.unused`` with the reason; none is dropped silently.

    ``used``: the class folders the caller will use (the sources of a class map), None for
    all. An empty class folder outside ``used`` is left out of ``classes`` and named in
    ``ClassListing.empty_left_out`` instead of refused: the map leaves it out explicitly.

    ``min_classes``: the fewest class folders (with files) accepted: 2 for data a model is
    trained on (and for ``mriscan ingest``); 1 for the data ``mriscan evaluate`` scores (a
    tumor-only collection). A lone class folder that itself holds two or more folders named
    like classes (``yes/``, ``glioma/``, ...: ``mriscan.tasks.tumor_like`` /
    ``healthy_like``) is refused even then: the data were pointed at one level too high.
    """
    root = Path(root)
    if not root.is_dir():
        raise EmptyDatasetError(
            f"Data folder {root} does not exist or is not a folder. "
            "Expected class sub-folders such as yes/ and no/."
        )
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise EmptyDatasetError(
            f"Data folder {root} cannot be read ({exc.strerror or exc}); check its permissions."
        ) from exc
    _check_class_names(subs)
    names = {p.name.lower() for p in subs}
    if len(subs) < min_classes:
        hint = ""
        for sub in subs:
            inner = _class_like_children(sub, None)
            if len(inner) >= 2:
                hint = f" {sub} holds class folders ({', '.join(inner)}): use {sub} as the data."
        raise EmptyDatasetError(
            f"{root} must hold at least two class sub-folders (e.g. yes/ and no/). "
            f"Received: {[p.name for p in subs] or 'none'}.{hint}"
            if min_classes >= 2
            else f"{root} holds no class sub-folder (e.g. yes/ or no/); put the images in "
            "one folder per class."
        )
    if len(subs) == 1:  # one class allowed (evaluate): not the parent of the class folders
        from mriscan.tasks import healthy_like, tumor_like

        inner = [n for n in _class_like_children(subs[0], None) if tumor_like(n) or healthy_like(n)]
        if len(inner) >= 2:
            raise EmptyDatasetError(
                f"{root} holds one folder, {subs[0].name}/, and it holds folders named like "
                f"classes ({', '.join(inner)}): use {subs[0]} as the data (its sub-folders are "
                f"the classes), or, to score everything as the one class {subs[0].name!r}, "
                "move the images out of those folders."
            )
    same = check_label_case(p.name for p in subs)
    if same:
        raise EmptyDatasetError(
            f"{root} holds class folders whose names differ only by case: "
            + "; ".join(" and ".join(f"{n}/" for n in group) for group in same)
            + ". Labels are compared exactly, so they would be separate classes: merge each "
            "set into one folder (e.g. move Yes/* into yes/)."
        )
    classes: dict[str, list[SourceFile]] = {}
    unreadable: list[tuple[Path, str]] = []
    unused: list[UnusedFile] = []
    for p in sorted(root.iterdir()):  # what lies beside the class folders is not read either
        if p.name.startswith("."):
            what = "folder" if p.is_dir() else "file"
            unused.append(UnusedFile(p, f"hidden {what} (its name starts with '.')", True))
        elif not p.is_dir():  # e.g. a README or PROVENANCE.md: listed, not a problem
            unused.append(
                UnusedFile(p, "beside the class folders: only files inside them are read", True)
            )
    for sub in subs:
        try:
            os.listdir(sub)
        except OSError as exc:
            raise EmptyDatasetError(
                f"Class folder {sub} is unreadable ({exc.strerror or exc}); fix its permissions "
                "(e.g. chmod -R u+rX) or move it out of the data folder."
            ) from exc
        found: list[SourceFile] = []
        errors: list[tuple[Path, str]] = []
        for dirpath, dirnames, _ in os.walk(sub):
            inner = sorted({d.lower() for d in dirnames} & names)
            if len(inner) >= 2:
                raise EmptyDatasetError(
                    f"{dirpath} holds folders named like the class folders ({', '.join(inner)}): "
                    f"a nested copy of the class layout (the Kaggle download holds yes/, no/ and "
                    f"brain_tumor_dataset/{{yes,no}}/). It would be read as part of class "
                    f"{sub.name!r}. Point mriscan at one copy of the data (e.g. {dirpath}), or "
                    "delete the duplicate folders."
                )
        hidden: list[UnusedFile] = []
        others = {os.path.realpath(o): o.name for o in subs if o != sub}
        _classify_all(sorted(_iter_files(sub, errors, hidden, others)), found, unused)
        unused += hidden
        classes[sub.name] = found
        unreadable += sorted(set(errors))
    left_out = tuple(
        n for n, files in classes.items() if not files and used is not None and n not in used
    )
    for name in left_out:
        del classes[name]
    empty = [name for name, files in classes.items() if not files]
    _refuse_stores_as_classes(Path(root), empty)
    if empty:
        raise EmptyDatasetError(
            f"Class folder(s) {empty} under {root} hold no JPEG/PNG, DICOM or NIfTI files"
            + _unused_hint(unused, [root / n for n in empty])
            + ". "
            + _EMPTY_FIX.format(root=root)
        )
    if len(classes) < min_classes:
        few = "fewer than two class folders" if min_classes >= 2 else "no class folder"
        raise EmptyDatasetError(
            f"{root} holds {few} with files once the empty one(s) the "
            f"class map leaves out ({', '.join(left_out)}) are set aside: {sorted(classes)}."
        )
    return ClassListing(
        classes,
        tuple(unreadable),
        tuple(sorted(unused, key=lambda u: u.path)),
        left_out,
    )


def _refuse_stores_as_classes(root: Path, empty: Sequence[str]) -> None:
    """Raise EmptyDatasetError naming the folders among ``empty`` (class folders under
    ``root`` with no input) that are mriscan stores (tester33: a store's chunk files were
    listed as bad inputs of a class "st.zarr")."""
    stores = [
        n
        for n in empty
        if (root / n / "index.json").is_file() and (root / n / "zarr.json").is_file()
    ]
    if stores:
        raise EmptyDatasetError(
            f"{', '.join(stores)} under {root} {'is a store' if len(stores) == 1 else 'are stores'}"
            ", not a class folder: a store is no input. Move it out of the data folder (ingest "
            "makes none inside one), or give it to train, cv or evaluate as DATA."
        )


def _check_class_names(subs: Sequence[Path]) -> None:
    """Refuse class folders whose names are not valid UTF-8 (bytes of an old Latin-1 export).

    A file name may keep such bytes as ``\\xNN`` (``relative_name``); a class name may not:
    it becomes the model's label, typed back by users (``--class-map``, ``--positive``) and
    shown in every report and plot, and an escaped label would not match what they type.
    """
    bad = [p for p in subs if display_path(p.name) != p.name]
    if bad:
        raise EmptyDatasetError(
            "Class folder name(s) "
            + ", ".join(f"{display_path(p.name)}/" for p in bad)
            + f" under {display_path(bad[0].parent)} are not valid UTF-8 text (the \\xNN "
            "bytes): a class name becomes the model's label. Rename the folder(s) to UTF-8, "
            "e.g. `convmv -f latin1 -t utf8 -r --notest FOLDER`."
        )


# why an empty class folder is refused rather than skipped, and the way out
_EMPTY_FIX = (
    "Every sub-folder of {root} is a class, and a class without slices cannot be learnt or "
    "scored (nor silently dropped: the model's classes would no longer be the folders). Put "
    "that class's images in it, move the folder out of {root}, or (train, cv, evaluate) give "
    "a --class-map that leaves it out."
)


def _unused_hint(unused: Sequence[UnusedFile], folders: Sequence[Path]) -> str:
    """'; they hold: a.bmp (a BMP image...), ...' for the files of ``folders`` not used."""
    inside = [u for u in unused if not u.hidden and any(f in u.path.parents for f in folders)]
    if not inside:
        return ""
    shown = "; ".join(f"{u.path.name}: {u.reason}" for u in inside[:3])
    more = f" (and {len(inside) - 3} more)" if len(inside) > 3 else ""
    return f"; they hold only files that are not inputs: {shown}{more}"


def _class_like_children(folder: Path, names: set[str] | None) -> list[str]:
    """Sub-folder names of ``folder`` that look like class folders (yes/no/tumor...)."""
    try:
        kids = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted(kids) if names is None else sorted(k for k in kids if k.lower() in names)


#: how a folder that cannot be listed is reported (``ClassListing.unreadable``): its files
#: are unknown, so callers must not take them for deleted
UNLISTED_FOLDER = "folder cannot be listed"


def _walk_error(exc: OSError) -> tuple[Path, str]:
    return Path(exc.filename or "?"), f"{UNLISTED_FOLDER} ({exc.strerror or exc})"


def _iter_files(
    folder: Path,
    errors: list | None = None,
    hidden: list | None = None,
    classes: Mapping[str, str] | None = None,
) -> Iterator[Path]:
    """Yield every non-hidden file below ``folder`` (recursively), following symbolic links to
    folders as to files (a linked series folder is data like any other).

    Folders that cannot be listed, and broken symbolic links (named with their target), are
    appended to ``errors`` as ``(path, reason)`` when given; hidden files and folders (names
    starting with ".") to ``hidden`` as ``UnusedFile`` (a hidden folder once, not its
    contents) when given, and so are empty folders, links to a folder above (a loop), links to
    a folder already listed (a second path to it: read once) and links into another class
    folder (``classes``: real path -> class name; its files are that class's, and read there).
    """
    onerror = None if errors is None else (lambda e: errors.append(_walk_error(e)))
    top = os.path.realpath(folder)
    seen = {top}
    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                _note(hidden, Path(dirpath) / d, "hidden folder (its name starts with '.')")
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if top.startswith(real.rstrip(os.sep) + os.sep):  # os.walk would loop for ever
                _note(hidden, Path(dirpath) / d, "link to a folder above it (a loop): not read")
                continue
            if real in seen:
                _note(hidden, Path(dirpath) / d, "link to a folder already listed: read once")
                continue
            into = next((n for r, n in (classes or {}).items() if _within(real, r)), None)
            if into is not None:
                _note(hidden, Path(dirpath) / d,
                      f"link into class folder {into}/: its files are read there, as {into!r}, "
                      "not again under this class")  # fmt: skip
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        if not dirnames and not filenames and Path(dirpath) != Path(folder):
            _note(hidden, Path(dirpath), "empty folder: nothing to read")
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith("."):
                _note(hidden, path, "hidden file (its name starts with '.')")
            elif errors is not None and os.path.islink(path) and not os.path.exists(path):
                target = display_path(os.readlink(path))
                errors.append((path, f"broken symbolic link: it points to {target}, which does "
                               "not exist; fix the link or delete it"))  # fmt: skip
            else:
                yield path


def _within(path: str, folder: str) -> bool:
    """True if the real path ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _note(hidden: list | None, path: Path, reason: str) -> None:
    """List ``path`` as not read, by rule (``UnusedFile.hidden``), when a list is kept."""
    if hidden is not None:
        hidden.append(UnusedFile(path, reason, True))


def _classify_all(paths: Iterable[Path], found: list[SourceFile], unused: list[UnusedFile]) -> None:
    """Append each path to ``found`` (an input) or ``unused`` (with the reason)."""
    for path in paths:
        kind, reason = classify_file(path)
        if kind is not None:
            found.append(SourceFile(path, kind))
        else:
            unused.append(UnusedFile(path, reason or "not an input file"))


def check_label_case(labels: Iterable[str]) -> list[tuple[str, ...]]:
    """Sets of labels that differ only by case (``str.casefold``), e.g. ``[("Yes", "yes")]``.

    Labels are compared exactly everywhere else, so "Yes" beside "yes" would silently become a
    class of its own; callers turn a non-empty result into an error.
    """
    by_fold: dict[str, set[str]] = {}
    for label in labels:
        by_fold.setdefault(label.casefold(), set()).add(label)
    return [tuple(sorted(v)) for _, v in sorted(by_fold.items()) if len(v) > 1]


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


@dataclass(frozen=True)
class ManifestListing:
    """A manifest's entries, the files below its folder rows that are not inputs
    (``UnusedFile``, with the reason; hidden ones marked) and the folders its rows name (as
    written, joined to the manifest's folder)."""

    entries: list[ManifestEntry]
    unused: tuple[UnusedFile, ...] = ()
    folders: tuple[Path, ...] = ()


def read_manifest(csv_path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """The entries of a CSV manifest (``scan_manifest(csv_path).entries``); see there."""
    return scan_manifest(csv_path).entries


def scan_manifest(csv_path: str | os.PathLike[str], *, min_labels: int = 2) -> ManifestListing:
    """Read a CSV manifest with the header ``path,label`` or ``path,label,group``.

    Paths are relative to the CSV's folder (absolute paths are kept). A path may name a JPEG/PNG,
    a DICOM file, a NIfTI volume, or a folder (every input file below it, with the row's label
    and group). UTF-8 (a BOM is allowed); blank lines are skipped.

    Returns
    -------
    ManifestListing
        ``entries`` in file order (folders expanded in sorted order); ``unused``: the files
        below folder rows that are not inputs, with the reason.

    Raises
    ------
    ManifestError
        The CSV is missing or unreadable, the header is not ``path,label[,group]``, a row has the
        wrong number of cells or an empty path/label, a path does not exist or is no input file,
        the same file is listed twice, fewer than ``min_labels`` labels are present (2; 1 for
        the data ``mriscan evaluate`` scores), or two labels differ only by case (``Yes`` beside
        ``yes``).
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
    unused: list[UnusedFile] = []
    folders: list[Path] = []
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
            found: list[SourceFile] = []
            here: list[UnusedFile] = []
            _classify_all(sorted(_iter_files(target, None, here)), found, here)
            files = [(f.path, f.kind) for f in found]
            if not files:
                raise ManifestError(
                    f"Manifest {csv_path}, line {line}: folder {target} holds no JPEG/PNG, "
                    "DICOM or NIfTI files" + _unused_hint(here, [target]) + "."
                )
            unused += here
            folders.append(target)
        elif target.is_file():
            kind, reason = classify_file(target)
            if kind is None:
                raise ManifestError(
                    f"Manifest {csv_path}, line {line}: {target} is not a JPEG/PNG, DICOM or "
                    f"NIfTI (.nii/.nii.gz) file: {reason}."
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
    same = check_label_case(labels)
    if same:
        lines = {e.label: e.line for e in reversed(entries)}  # first line of each label
        raise ManifestError(
            f"Manifest {csv_path}: labels that differ only by case: "
            + "; ".join(
                " and ".join(f"{lab!r} (line {lines[lab]})" for lab in group) for group in same
            )
            + ". Labels are compared exactly, so each spelling would become a class of its own: "
            "write every label the same way."
        )
    if len(labels) < min_labels:
        least = "two labels" if min_labels >= 2 else "one label"
        raise ManifestError(
            f"Manifest {csv_path} must name at least {least}. Received: {labels or 'none'}."
        )
    return ManifestListing(entries, tuple(sorted(unused, key=lambda u: u.path)), tuple(folders))
