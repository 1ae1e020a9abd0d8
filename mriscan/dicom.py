"""DICOM files to uint8 slices with de-identified metadata (pydicom and its decoder plugins).

One file gives one slice per frame: stored values -> Modality LUT (Rescale Slope/Intercept) ->
VOI window (the file's Window Center/Width, else a percentile window) -> 0..255, inverted for
MONOCHROME1, as a viewer would show it (DICOM PS3.3 C.11.1, C.11.2, C.7.6.3.1.2). Compressed
transfer syntaxes are decoded by pydicom's plugins (pylibjpeg + libjpeg/openjpeg/rle, or GDCM);
a syntax without an installed plugin raises ``MissingCodecError`` naming what to install.

Identifiers leave this module only as salted hashes (``mriscan.scan.salted_hash``); names,
birth dates and other header text are never copied, and the free-text series description is
kept only after removing anything that matches the patient's name, ID or birth date.

Typical use (ingest)::

    salt = store_salt                      # mriscan.scan.new_salt(), kept with the store
    result = read_dicom(path, salt=salt)   # DicomRead
    if result.skipped:                     # SR, DICOMDIR, ...: list it, go on
        report.append((path, result.skipped))
    for s in result.slices:                # DicomSlice: image (H, W) uint8 + meta
        ...
    series = group_series(all_slices)      # ordered, size-checked, per series
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.datadict import dictionary_has_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mriscan.errors import (
    CorruptImageError,
    ImageTooLargeError,
    MissingCodecError,
    MixedSeriesError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from mriscan.io import looks_like_dicom_dataset
from mriscan.library_warnings import recorded
from mriscan.scan import (
    UNIFORM_BAND,
    UNIFORM_SHARE,
    Window,
    check_salt,
    is_uniform,
    percentile_window,
    salted_hash,
    window_to_uint8,
)
from mriscan.scan_config import DicomConfig

__all__ = [
    "EMPTY_PATIENT_ID",
    "MISSING_PATIENT_ID",
    "DicomConfig",
    "DicomRead",
    "DicomSeries",
    "DicomSlice",
    "DicomSliceMeta",
    "HeaderIds",
    "codec_advice",
    "codec_packages",
    "group_series",
    "header_ids",
    "is_placeholder_patient_id",
    "read_dicom",
    "read_header_ids",
]

logger = logging.getLogger(__name__)

# What to `pip install` for each compressed transfer syntax, as pydicom 3's decoder plugins
# declare it (``DECODER_DEPENDENCIES`` of ``pydicom.pixels.decoders.{pylibjpeg,gdcm,pyjpegls}``;
# pydicom.github.io/pydicom/stable/guides/plugin_table.html): the alternatives, the one
# mriscan installs first. GDCM's plugin covers the JPEG, JPEG-LS and JPEG 2000 syntaxes only
# (not HTJ2K); RLE Lossless has pydicom's own decoder; MPEG-2/MPEG-4/HEVC video and any other
# syntax have no decoder in pydicom at all, so no package helps (``codec_packages`` gives ()).
_LIBJPEG = ("pylibjpeg", "pylibjpeg-libjpeg")
_OPENJPEG = ("pylibjpeg", "pylibjpeg-openjpeg")
_GDCM = ("python-gdcm",)
_CODEC_PACKAGES: dict[str, tuple[tuple[str, ...], ...]] = {
    "1.2.840.10008.1.2.4.50": (_LIBJPEG, _GDCM),  # JPEG Baseline (Pillow also decodes it)
    "1.2.840.10008.1.2.4.51": (_LIBJPEG, _GDCM),  # JPEG Extended 12-bit
    "1.2.840.10008.1.2.4.57": (_LIBJPEG, _GDCM),  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": (_LIBJPEG, _GDCM),  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": (_LIBJPEG, ("pyjpegls",), _GDCM),  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": (_LIBJPEG, ("pyjpegls",), _GDCM),  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90": (_OPENJPEG, _GDCM),  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": (_OPENJPEG, _GDCM),  # JPEG 2000
    "1.2.840.10008.1.2.4.201": (_OPENJPEG,),  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": (_OPENJPEG,),  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": (_OPENJPEG,),  # HTJ2K
    "1.2.840.10008.1.2.5": (("pylibjpeg", "pylibjpeg-rle"),),  # RLE (pydicom also has NumPy)
    "1.2.840.10008.1.2.8.1": (("pydicom>=3.1",),),  # Deflated Image Frame Compression
}


def codec_packages(transfer_syntax: str) -> tuple[str, ...]:
    """The PyPI packages that let pydicom decode ``transfer_syntax`` (a UID string), the first
    of the alternatives in pydicom's plugin table; ``()`` when no package can (MPEG-2, MPEG-4,
    HEVC video and every syntax pydicom has no decoder for)."""
    alternatives = _CODEC_PACKAGES.get(str(transfer_syntax), ())
    return alternatives[0] if alternatives else ()


def codec_advice(transfer_syntax: str) -> str:
    """What to do when ``transfer_syntax`` cannot be decoded: every alternative to install
    (e.g. "install pylibjpeg and pylibjpeg-openjpeg (`pip install pylibjpeg
    pylibjpeg-openjpeg`) or python-gdcm (`pip install python-gdcm`)"), or, for a syntax no
    package decodes, that none exists and the series must be exported in another syntax."""
    alternatives = _CODEC_PACKAGES.get(str(transfer_syntax), ())
    if not alternatives:
        return (
            "no package adds one (pydicom has no decoder plugin for MPEG/HEVC video or other "
            "syntaxes outside its plugin table): export the series again uncompressed or in "
            "a JPEG / JPEG 2000 syntax"
        )
    return "install " + " or ".join(
        f"{' and '.join(a)} (`pip install {' '.join(a)}`)" for a in alternatives
    )


_PLANES = ("sagittal", "coronal", "axial")  # the patient axis (x, y, z) the slice normal follows
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")


@dataclass(frozen=True)
class DicomSliceMeta:
    """De-identified facts about one DICOM slice (one frame of one file).

    Attributes
    ----------
    patient, study, series, instance : str or None
        Salted hashes (24 hex chars) of Patient ID, Study / Series / SOP Instance UID; None
        when the element is absent or empty.
    frame, n_frames : int
        0-based frame index within the file, and the file's frame count.
    instance_number : int or None
        Instance Number (0020,0013).
    slice_position : float or None
        Position along the slice normal in mm (Image Position Patient · normal), for ordering.
    plane : str
        ``"axial"``, ``"coronal"``, ``"sagittal"`` (the closest one to the slice normal, from
        Image Orientation Patient) or ``"unknown"``.
    series_description : str
        Series Description with any patient name/ID/birth-date text removed, at most 64 chars.
    series_number : int or None
    modality, photometric, transfer_syntax : str
        Modality, Photometric Interpretation and transfer syntax UID.
    rows, columns : int
        Size of the slice in pixels (``image.shape``).
    pixel_spacing : (float, float) or None
        Row and column spacing in mm.
    window_source : str
        ``"header"`` (Window Center/Width), ``"percentile"`` or ``"none"`` (8-bit colour shown
        as is).
    window_low, window_high : float
        The values mapped to 0 and 255, in real-world units (after rescale).
    window_function : str
        VOI LUT Function used (``"LINEAR"``, ``"LINEAR_EXACT"``, ``"SIGMOID"``).
    rescale_slope, rescale_intercept : float
        The modality rescale applied (1, 0 when absent; 1, 0 when a Modality LUT was used).
    patient_placeholder : str
        The Patient ID when it is a placeholder that names no one (``"ANONYMOUS"``, ``"0"``,
        ...: ``is_placeholder_patient_id``; ``EMPTY_PATIENT_ID`` when the element is present
        but empty or blank); ``patient`` is then None, so the study becomes the split group
        instead of one "patient" for every such study. "" otherwise (also when the element is
        absent).
    """

    patient: str | None
    study: str | None
    series: str | None
    instance: str | None
    frame: int
    n_frames: int
    instance_number: int | None
    slice_position: float | None
    plane: str
    series_description: str
    series_number: int | None
    modality: str
    photometric: str
    transfer_syntax: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    window_source: str
    window_low: float
    window_high: float
    window_function: str
    rescale_slope: float
    rescale_intercept: float
    patient_placeholder: str = ""

    @property
    def group(self) -> str:
        """What must stay on one side of a split: the patient, else the study, series, file."""
        for kind in ("patient", "study", "series", "instance"):
            value = getattr(self, kind)
            if value:
                return f"{kind}:{value}"
        return "unknown"

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields (tuples become lists)."""
        d = asdict(self)
        if d["pixel_spacing"] is not None:
            d["pixel_spacing"] = list(d["pixel_spacing"])
        return d


@dataclass(frozen=True)
class DicomSlice:
    """One uint8 slice: ``image`` (H, W) uint8, its ``meta``, and the ``path`` it came from.

    ``path`` is for the caller (errors, the source column); it is not part of ``meta``.
    """

    image: np.ndarray = field(repr=False)
    meta: DicomSliceMeta
    path: Path


@dataclass(frozen=True)
class DicomRead:
    """The outcome of reading one file: its slices, or why it was skipped.

    ``skipped`` is None for image files; for files without pixel data (structured reports,
    DICOMDIR, presentation states, ...) it reads ``"not an image: <SOP class> has no pixel
    data"``, for objects whose pixel data are no scan (segmentations, RT dose grids) ``"not an
    image: <SOP class> (...)"``; ``slices`` is then empty. ``excluded`` is set (and ``slices``
    empty) for an image of a modality ``DicomConfig.modalities`` does not read, with the reason.
    ``note``: what was read otherwise than the header says (``BLANKING_WINDOW_NOTE``), or "".
    """

    path: Path
    slices: tuple[DicomSlice, ...]
    skipped: str | None = None
    excluded: str | None = None
    note: str = ""


@dataclass(frozen=True)
class DicomSeries:
    """The slices of one series in display order (slice position, instance number, frame)."""

    series: str
    slices: tuple[DicomSlice, ...]

    @property
    def group(self) -> str:
        """The split group of the series (see ``DicomSliceMeta.group``)."""
        return self.slices[0].meta.group

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) shared by all slices."""
        return self.slices[0].image.shape


def read_dicom(
    path: str | os.PathLike[str],
    *,
    salt: bytes,
    config: DicomConfig | None = None,
) -> DicomRead:
    """Read a DICOM Part 10 file into uint8 slices (one per frame).

    Parameters
    ----------
    path : path-like
        A DICOM file (128-byte preamble + ``DICM``), any suffix.
    salt : bytes
        The store's secret salt (>= 16 bytes, ``mriscan.scan.new_salt``) for the identifiers.
    config : DicomConfig, optional

    Returns
    -------
    DicomRead
        ``slices``: one ``DicomSlice`` per frame, ``image`` of shape (Rows, Columns), uint8;
        or ``skipped`` with the reason for a file without pixel data.

    Raises
    ------
    UnsupportedFormatError
        Not a DICOM Part 10 file, a transfer syntax pydicom does not know (private or
        invalid), or a photometric interpretation that is not grey or RGB/YBR.
    MissingCodecError
        Compressed pixel data and no installed decoder (the message names the packages).
    CorruptImageError
        Truncated or damaged file (header or pixel data), an image without pixel data.
    ImageTooLargeError, UnreadableFileError
    """
    cfg = config if config is not None else DicomConfig()
    salt = check_salt(salt)
    path = Path(path)
    try:
        ds = _dcmread(path)  # Part 10 files, or a bare data set (no preamble) that parses as one
    except UnreadableFileError:
        # said plainly for the two usual causes (looked up only now: two stat calls per file)
        if path.is_dir():
            raise UnreadableFileError(path, "is a directory, not a DICOM file") from None
        if not path.exists():
            raise UnreadableFileError(path, "does not exist") from None
        raise
    try:
        return _read_dataset(ds, path, salt, cfg)
    except _HeaderValueError as exc:
        raise CorruptImageError(
            path,
            f"header element {exc.keyword} {exc.tag} holds {exc.value!r}, {exc.problem}; fix "
            "the header or re-export the file",
        ) from exc


def _read_dataset(ds: pydicom.Dataset, path: Path, salt: bytes, cfg: DicomConfig) -> DicomRead:
    """``read_dicom`` after the header was read; header values that do not parse raise
    ``_HeaderValueError``."""
    meta_ts = _transfer_syntax(ds)
    if not _has_pixels(ds):
        sop = _sop_class_name(ds)
        if "Image Storage" in sop or "Rows" in ds:
            raise CorruptImageError(
                path,
                f"a {sop} file without pixel data: the file is truncated or damaged; "
                "re-export it from the archive",
            )
        return DicomRead(path, (), skipped=f"not an image: {sop} has no pixel data")
    not_scan = _not_a_scan(ds)
    if not_scan is not None:
        return DicomRead(path, (), skipped=f"not an image: {not_scan}")
    # Modality is type 1, but a file without it still says MR by its SOP class (MR Image,
    # Enhanced MR, Legacy Converted Enhanced MR Image Storage: their IODs require MR)
    modality = str(_raw(ds, "Modality") or "").strip().upper() or _MODALITY_OF_SOP.get(
        str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or ""), ""
    )
    if cfg.modalities is not None and modality not in cfg.modalities:
        what = (
            f"an image of modality {modality}"
            if modality
            else "an image without a Modality (0008,0060)"
        )
        allowed = ", ".join(cfg.modalities)
        return DicomRead(
            path,
            (),
            excluded=(
                f"{what} ({_sop_class_name(ds)}), not {allowed}: mriscan reads {allowed} "
                "images only; remove the file, or allow the modality (--modality "
                f"{modality or 'any'} on the command, DicomConfig(modalities=...) in Python)"
            ),
        )
    if meta_ts is None:
        raise CorruptImageError(path, "no Transfer Syntax UID in the file meta information")
    ts = _uid(str(meta_ts))
    if not ts.is_transfer_syntax:  # pydicom's properties of it raise a bare ValueError
        what = "a private UID" if ts.is_private else "no transfer syntax of the DICOM standard"
        raise UnsupportedFormatError(
            path,
            f"transfer syntax {str(ts)[:64]} is not one pydicom knows ({what}, or an invalid "
            "value), so the pixel data cannot be decoded; re-export the file with a standard "
            "transfer syntax (e.g. Explicit VR Little Endian, 1.2.840.10008.1.2.1)",
        )
    rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    n_frames = _header_int(ds, "NumberOfFrames", 1)
    if n_frames == 0:  # invalid; pydicom (pixels.utils.get_nr_frames) also reads it as 1
        n_frames = 1
    if n_frames < 0:
        raise _HeaderValueError("NumberOfFrames", n_frames, "a negative frame count")
    if rows < 1 or cols < 1:
        raise CorruptImageError(path, f"image size {rows}x{cols} in the header is empty")
    if rows * cols > cfg.max_pixels:
        raise ImageTooLargeError(
            path,
            f"{cols}x{rows} = {rows * cols:,} pixels per frame exceeds the cap of "
            f"{cfg.max_pixels:,} (a guard against decompression bombs); re-export the series "
            "at a smaller matrix. The cap has no command-line option; from Python, pass a "
            "larger max_pixels to "
            "mriscan.dicom.DicomConfig (IngestConfig(dicom=DicomConfig(max_pixels=...)))",
        )
    if ts.is_compressed:
        _check_decoder(path, ts)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _GREY and photometric not in _COLOUR:
        raise UnsupportedFormatError(
            path,
            f"photometric interpretation {photometric} is not supported (expected MONOCHROME1, "
            "MONOCHROME2, RGB or YBR); convert the series to grey scale",
        )
    arr = _native_pixels(ds, ts, n_frames * rows * cols, photometric)
    if arr is None:
        arr = _pixels(ds, path, ts)
    colour = photometric in _COLOUR
    shape = (n_frames, rows, cols, 3) if colour else (n_frames, rows, cols)
    if arr.size != math.prod(shape):
        raise CorruptImageError(
            path,
            f"the pixel data hold {arr.size:,} values but the header says {n_frames} frame(s) "
            f"of {cols}x{rows}{' RGB' if colour else ''}; the header or the pixel data are "
            "damaged",
        )
    frames = arr.reshape(shape)
    ident = _identifiers(ds, salt)
    description = _safe_description(ds)
    notes: list[str] = []
    images, windows, rescales = _to_uint8(ds, frames, cfg, photometric, notes)
    instance_number = _int_or_none(ds, "InstanceNumber")
    series_number = _int_or_none(ds, "SeriesNumber")
    slices = []
    for f in range(n_frames):
        normal, position = _geometry(ds, f)
        window, (slope, intercept) = windows[f], rescales[f]
        meta = DicomSliceMeta(
            **ident,
            frame=f,
            n_frames=n_frames,
            instance_number=instance_number,
            slice_position=position,
            plane=_plane(normal),
            series_description=description,
            series_number=series_number,
            modality=modality,
            photometric=photometric,
            transfer_syntax=str(ts),
            rows=rows,
            columns=cols,
            pixel_spacing=_spacing(ds, f),
            window_source=window.source,
            window_low=window.low,
            window_high=window.high,
            window_function=window.function,
            rescale_slope=slope,
            rescale_intercept=intercept,
        )
        slices.append(DicomSlice(images[f], meta, path))
    return DicomRead(path, tuple(slices), note="; ".join(notes))


class _HeaderValueError(ValueError):
    """A header element mriscan uses holds a value that does not parse (or is invalid)."""

    def __init__(self, keyword: str, value: object, problem: str) -> None:
        self.keyword, self.value, self.problem = keyword, value, problem
        tag = tag_for_keyword(keyword)
        self.tag = f"({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        super().__init__(f"{keyword} {self.tag} = {value!r}: {problem}")


def _header_int(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """A single integer element (US or IS), ``default`` when absent or empty.

    Raises ``_HeaderValueError`` when the value is not one integer (e.g. ``'1A'``).
    """
    tag = _tag(keyword)
    elem = ds.get_item(tag)
    if (
        type(elem) is RawDataElement
        and elem.is_little_endian
        and elem.length == 2
        and (elem.VR == "US" or (elem.VR is None and tag in _US_TAGS))
    ):
        # one unsigned short as read (pydicom's conversion gives the same int through
        # ``Dataset.get``, at ~6 us a call; the header sizes take seven per file)
        return int.from_bytes(elem.value, "little")
    try:
        value = ds.get(keyword)
    except Exception as exc:  # pydicom converts the raw bytes on access
        raise _HeaderValueError(keyword, "?", f"which cannot be parsed ({exc})") from exc
    if value is None or value == "" or value == b"":
        return default
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        if len(value) != 1:
            raise _HeaderValueError(keyword, list(value), "not one integer")
        value = value[0]
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError(value)
            number = int(number)
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _HeaderValueError(keyword, value, "not an integer") from exc


#: elements that are US by the DICOM dictionary, read by ``_header_int`` in implicit VR files
_US_TAGS = frozenset({0x00280002, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280103})


def group_series(slices: Iterable[DicomSlice]) -> list[DicomSeries]:
    """Gather slices into series, each ordered for display, and check their sizes agree.

    Slices are grouped by ``meta.series`` (by ``meta.instance`` when a file has no Series
    Instance UID) and ordered by (slice position, instance number, frame); series are returned
    in order of their first slice.

    Raises
    ------
    MixedSeriesError
        If the slices of one series differ in size. The message names the series by its keyed
        hash (``series:<h>``, as the store's per-series units) and counts the slices of each
        size, the most common first, as ``mriscan.readers.check_series_sizes`` does; it names
        no file (a path below a scanner folder may name the patient). The exception's
        ``files`` maps each ``(rows, columns)`` to the paths of its slices' files.
    """
    groups: dict[str, list[DicomSlice]] = {}
    for s in slices:
        key = s.meta.series or f"instance:{s.meta.instance}"
        groups.setdefault(key, []).append(s)
    out = []
    for key, members in groups.items():
        by_size: dict[tuple[int, int], list[DicomSlice]] = {}
        for m in members:
            by_size.setdefault(m.image.shape[:2], []).append(m)
        if len(by_size) > 1:
            raise _mixed_sizes(key, by_size)
        members.sort(key=_order_key)
        out.append(DicomSeries(key, tuple(members)))
    return out


def _mixed_sizes(key: str, by_size: dict[tuple[int, int], list[DicomSlice]]) -> MixedSeriesError:
    """The ``MixedSeriesError`` of series ``key`` whose slices come in the sizes of ``by_size``
    ((rows, columns) -> slices): sizes counted, no file named, the files on ``.files``."""
    # the most common size is the series' own; ties: the smaller (rows, columns) first
    ranked = sorted(by_size.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    counts = ", ".join(
        f"{len(ms)} slice{'s' if len(ms) != 1 else ''} of {c}x{r}" for (r, c), ms in ranked
    )
    (main_r, main_c), _ = ranked[0]
    n_files = len({m.path for ms in by_size.values() for m in ms})
    name = key if key.startswith("instance:") else f"series:{key}"
    return MixedSeriesError(
        f"DICOM series {name} mixes slice sizes: {counts} (from {n_files} "
        f"file{'s' if n_files != 1 else ''}). A series must have one size: remove the files "
        f"of another size than {main_c}x{main_r} or give them a series of their own "
        "(the exception's .files lists the files of each size).",
        files={size: sorted({m.path for m in ms}, key=str) for size, ms in ranked},
    )


def _order_key(s: DicomSlice) -> tuple:
    m = s.meta
    inf = float("inf")
    return (
        m.slice_position if m.slice_position is not None else inf,
        m.instance_number if m.instance_number is not None else 1 << 62,
        m.frame,
        str(s.path),
    )


def read_header(path: str | os.PathLike[str]) -> pydicom.Dataset:
    """The header of a DICOM file (``pydicom.dcmread`` with ``stop_before_pixels``), for the
    files mriscan writes into a source's study (``--dicom-out``).

    A Part 10 file is read as it is; a bare data set without the 128-byte preamble and file
    meta information (``mriscan.io.looks_like_dicom_dataset``), which ingest and predict read
    too, with ``force=True`` as pydicom reads such files.

    Raises
    ------
    pydicom.errors.InvalidDicomError
        The file is neither.
    OSError
        It cannot be read.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        with open(path, "rb") as fh:
            if not looks_like_dicom_dataset(fh.read(256)):
                raise
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _dcmread(path: Path) -> pydicom.Dataset:
    """``pydicom.dcmread`` with its failures turned into mriscan errors.

    A file without the 128-byte preamble and ``DICM`` is read again with ``force=True`` (how
    pydicom reads bare data sets) and kept only if it parses as DICOM: its first element a
    DICOM dictionary tag in group 0002/0008 and at least two elements. Such a file has no file
    meta information, so its transfer syntax is the encoding pydicom found (implicit or
    explicit VR, little or big endian); its pixel data cannot be compressed.
    """
    try:
        ds = _dcmread_checked(path, force=False)
    except InvalidDicomError:
        try:
            ds = _dcmread_checked(path, force=True)
        except (InvalidDicomError, CorruptImageError) as exc:
            raise UnsupportedFormatError(
                path,
                "not a DICOM Part 10 file (no 128-byte preamble followed by 'DICM'), and the "
                "bytes do not parse as a bare DICOM data set either",
            ) from exc
        _check_bare_dataset(ds, path)
    return ds


def _dcmread_checked(path: Path, *, force: bool) -> pydicom.Dataset:
    try:
        with recorded() as caught:  # one thread at a time: see mriscan.library_warnings
            ds = pydicom.dcmread(path, force=force)
    except InvalidDicomError:
        raise
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot read file ({exc})") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged headers
        raise CorruptImageError(
            path, f"the DICOM header is damaged or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    for w in caught:
        text = str(w.message)
        if "End of file" in text or "truncated" in text.lower():
            raise CorruptImageError(path, f"the file is truncated ({text}); re-export it")
        logger.debug("%s: pydicom warned: %s", path, text)
    return ds


def _check_bare_dataset(ds: pydicom.Dataset, path: Path) -> None:
    """Refuse what ``force=True`` made of a file that is no data set; give a bare data set the
    transfer syntax of its encoding (it has no file meta information to say it)."""
    tags = list(ds.keys())
    first = int(tags[0]) if tags else 0
    if (
        len(tags) < 2
        or first >> 16 not in (0x0002, 0x0008)
        or not (first & 0xFFFF == 0 or dictionary_has_tag(first))
    ):
        shown = f"({first >> 16:04X},{first & 0xFFFF:04X})" if tags else "none"
        with open(path, "rb") as fh:
            head = fh.read(256)
        shift = next((k for k in range(1, 8) if looks_like_dicom_dataset(head[k:])), None)
        if shift is not None:
            raise CorruptImageError(
                path,
                f"a DICOM data set without the preamble, but {shift} stray byte(s) precede its "
                "first element, so it cannot be parsed: the file is damaged; re-export it",
            )
        raise UnsupportedFormatError(
            path,
            "not a DICOM Part 10 file (no 128-byte preamble followed by 'DICM'), nor a bare "
            f"DICOM data set: read as one it gives {len(tags)} element(s) starting with "
            f"{shown}, which is no DICOM header; the file is damaged or not DICOM",
        )
    if ds.file_meta.get("TransferSyntaxUID") is None:
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            raise CorruptImageError(path, "the data set's encoding cannot be determined")
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )


#: the modality an image SOP class implies (PS3.3: the IOD's Modality is fixed), used when a
#: file lacks the Modality element
_MODALITY_OF_SOP = {
    "1.2.840.10008.5.1.4.1.1.4": "MR",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4": "MR",  # Legacy Converted Enhanced MR Image Storage
}
# objects whose pixel data are no scan slice: segmentation masks and dose grids
_NOT_SCAN_SOP = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation mask",
    "1.2.840.10008.5.1.4.1.1.66.7": "a segmentation label map",
    "1.2.840.10008.5.1.4.1.1.66.8": "a segmentation height map",
    "1.2.840.10008.5.1.4.1.1.481.2": "a radiotherapy dose grid",
}
_NOT_SCAN_MODALITY = {
    "SEG": "a segmentation mask",
    "RTDOSE": "a radiotherapy dose grid",
    "RTSTRUCT": "a radiotherapy structure set",
    "RTPLAN": "a radiotherapy plan",
    "REG": "a registration",
    "SR": "a structured report",
    "KO": "a key object selection",
    "PR": "a presentation state",
}


@functools.lru_cache(maxsize=64)
def _uid(value: str) -> UID:
    """``UID(value)``, remembered: a run meets a few transfer syntaxes, and pydicom validates
    the string each time (~5 us)."""
    return UID(value)


def _not_a_scan(ds: pydicom.Dataset) -> str | None:
    """Why a data set with pixel data is still no image to learn from (SEG, RT dose), or None."""
    if _surely_a_scan(ds):
        return None
    uid = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    modality = str(_raw(ds, "Modality") or "").strip().upper()
    what = _NOT_SCAN_SOP.get(uid) or _NOT_SCAN_MODALITY.get(modality)
    if what is None:
        return None
    return f"{_sop_class_name(ds)} is {what}, not a scan slice"


def _surely_a_scan(ds: pydicom.Dataset) -> bool:
    """True when the SOP Class UID's bytes, stripped, and the Modality name no object of
    ``_NOT_SCAN_SOP`` / ``_NOT_SCAN_MODALITY``: then pydicom's converted UID (which strips no
    more than that) names none either, and ``_not_a_scan`` need not convert it (~5 us). False
    when unsure (no raw SOP Class UID of its own: the file meta's is used)."""
    elem = ds.get_item(_SOP_CLASS)
    if type(elem) is not RawDataElement or not isinstance(elem.value, bytes):
        return False
    uid = elem.value.decode("ascii", "replace").strip(" \x00")
    if not uid or uid in _NOT_SCAN_SOP:
        return False
    modality = str(_raw(ds, "Modality") or "").strip().upper()
    return modality not in _NOT_SCAN_MODALITY


def _has_pixels(ds: pydicom.Dataset) -> bool:
    # Pixel Data, Float Pixel Data, Double Float Pixel Data (by tag: no keyword lookups)
    return _PIXEL_DATA in ds or _FLOAT_PIXEL_DATA in ds or _DOUBLE_PIXEL_DATA in ds


_SOP_CLASS = BaseTag(0x00080016)
_SYNTAX_TAG = BaseTag(0x00020010)
#: the padded bytes of every transfer syntax pydicom knows -> its UID, as pydicom converts them
_SYNTAX_BYTES = {
    (str(u) + "\0" * (len(str(u)) % 2)).encode("ascii"): UID(str(u))
    for u in pydicom.uid.AllTransferSyntaxes
}


def _transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    """``ds.file_meta.get("TransferSyntaxUID")``; the usual spellings of the known syntaxes
    are looked up by their bytes instead of being converted and validated by pydicom (~5 us)."""
    elem = ds.file_meta.get_item(_SYNTAX_TAG)
    if type(elem) is RawDataElement and elem.value in _SYNTAX_BYTES:
        return _SYNTAX_BYTES[elem.value]
    return ds.file_meta.get("TransferSyntaxUID")


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if not uid:
        return "DICOM object of unknown SOP class"
    name = UID(str(uid)).name
    return name if name and name != str(uid) else f"SOP class {uid}"


def _check_decoder(path: Path, ts: UID) -> None:
    """Raise ``MissingCodecError`` unless a pydicom plugin can decode transfer syntax ``ts``."""
    packages = codec_packages(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        decoder = None
    if decoder is not None and decoder.is_available:
        return
    what = "no installed decoder reads them" if packages else "pydicom has no decoder for them"
    raise MissingCodecError(
        path,
        f"pixel data are compressed as {ts.name} ({ts}) and {what}; " + codec_advice(ts),
        packages,
    )


#: uncompressed little-endian transfer syntaxes, whose pixel data are the values themselves
_NATIVE_LE = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})
_PIXEL_DATA = BaseTag(0x7FE00010)
_FLOAT_PIXEL_DATA = BaseTag(0x7FE00008)
_DOUBLE_PIXEL_DATA = BaseTag(0x7FE00009)


def _native_pixels(
    ds: pydicom.Dataset, ts: UID, n_values: int, photometric: str
) -> np.ndarray | None:
    """The stored values of an uncompressed little-endian grey image, 1-D (``n_values``), or
    None for anything else (``_pixels`` then asks pydicom's decoder).

    For these files pydicom's native decoder (``Decoder.as_array``) does exactly this: a view
    of the Pixel Data bytes as (u)int8/16/32 by Bits Allocated and Pixel Representation, the
    first ``n_values`` of them, with the bits above Bits Stored cleared (unsigned) or
    sign-extended (signed) by a left and a right shift (``_correct_unused_bits``); its option
    handling and validation cost ~0.1 ms per file, ~20% of a 256x256 file's whole read, which
    is why the common case is done here (``tests/test_dicom.py`` checks it equals pydicom's
    result on every kind it takes); the unused bits are corrected while copying the values
    out of the read-only bytes (one pass for unsigned values). Pixel data of another length
    than the header says (short: pydicom's error; longer than the padding byte: its warning,
    or extra frames), and every other layout (1-bit, colour, big endian, compressed, float
    pixel data), go to pydicom.
    """
    if str(ts) not in _NATIVE_LE or photometric not in _GREY:
        return None
    if _FLOAT_PIXEL_DATA in ds or _DOUBLE_PIXEL_DATA in ds:
        return None
    elem = ds.get_item(_PIXEL_DATA)
    data = None if elem is None else elem.value
    if not isinstance(data, bytes | bytearray):
        return None
    # absent (-1) or odd values: pydicom decides (and names what is wrong), as before
    if _header_int(ds, "SamplesPerPixel", -1) != 1:
        return None
    allocated = _header_int(ds, "BitsAllocated", -1)
    stored = _header_int(ds, "BitsStored", -1)
    signed = _header_int(ds, "PixelRepresentation", -1)
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or signed not in (0, 1):
        return None
    expected = n_values * (allocated // 8)
    if not expected <= len(data) <= expected + expected % 2:  # else: pydicom's warning/error
        return None
    dtype = np.dtype(f"<{'ui'[signed]}{allocated // 8}")
    raw = np.frombuffer(data, dtype, count=n_values)
    if stored == allocated:
        return raw.copy()
    unused = allocated - stored
    if signed:  # the shifts, written into a new array (the bytes are read-only)
        arr = np.left_shift(raw, unused)
        return np.right_shift(arr, unused, out=arr)
    # unsigned: the same as the two shifts, in one pass
    return np.bitwise_and(raw, np.array((1 << stored) - 1, dtype))


_decoding = threading.local()  # .active: this thread is inside ``_pixels``


class _QuietWhileDecoding(logging.Filter):
    """Drops the records of pydicom's decoder logger on threads inside ``_pixels``.

    pydicom logs every plugin's failure as ERROR with its full traceback
    (``LOGGER.exception`` in ``pydicom.pixels.decoders.base.Decoder._decode_frame``) and then
    raises a ``RuntimeError`` listing the same failures; ``_pixels`` turns that into one line
    naming the file and the codec, so the log would only repeat it at length. Other threads,
    and pydicom used outside mriscan's reads, log as before.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_decoding, "active", False)


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_QuietWhileDecoding())


def _pixels(ds: pydicom.Dataset, path: Path, ts: UID) -> np.ndarray:
    """``_decode``, with pydicom's per-plugin error log silenced (``_QuietWhileDecoding``)."""
    _decoding.active = True
    try:
        return _decode(ds, path, ts)
    finally:
        _decoding.active = False


def _decode(ds: pydicom.Dataset, path: Path, ts: UID) -> np.ndarray:
    """All frames of ``ds`` as pydicom decodes them, through the transfer syntax's decoder
    (``pydicom.pixels.get_decoder(ts).as_array(ds)``): what ``Dataset.pixel_array`` returns, without
    its bookkeeping for repeated access (``get_image_pixel_ids`` twice and a cached copy on the
    data set; ~0.13 ms of a 256x256 file's ~0.5 ms read), as the array is read only once."""
    try:
        arr = get_decoder(ts).as_array(ds)[0]
    except (ValueError, EOFError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptImageError(
            path,
            f"pixel data cannot be decoded as {ts.name}: {_one_line(exc)}; the file may be "
            "truncated",
        ) from exc
    except RuntimeError as exc:  # the installed plugins failed on these data, or none is usable
        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if available:  # _check_decoder found one: the decoder ran and rejected the data
            raise CorruptImageError(
                path,
                f"pixel data ({ts.name}) could not be decoded: the installed decoder failed "
                f"({_one_line(exc)}); the compressed data are probably damaged: export the "
                "file again",
            ) from exc
        raise MissingCodecError(
            path,
            f"pixel data ({ts.name}) could not be decoded: {_one_line(exc)}; " + codec_advice(ts),
            codec_packages(ts),
        ) from exc
    return arr


def _one_line(exc: BaseException) -> str:
    """A library's message on one line (pydicom lists each plugin's failure on its own line)."""
    return " ".join(str(exc).split())


def _frame_item(ds: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset | None:
    """The first item of ``sequence`` for ``frame`` in an enhanced multi-frame file, if any."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):  # fmt: skip
        seq = ds.get(groups)
        if seq and len(seq) > index and sequence in seq[index] and seq[index][sequence].value:
            return seq[index][sequence].value[0]
    return None


def _raw(ds: pydicom.Dataset, keyword: str) -> str | list[str] | None:
    """A top-level *text* element's value as str (list of str when multi-valued), or None.

    Reads the element's bytes directly instead of through pydicom's value conversion (which
    builds and regex-validates a DSfloat/IS per number): that conversion of ~20 elements cost as
    much as decoding a 256x256 slice. Only for text VRs (DS, IS, CS, UI, LO, SH, PN, DA);
    bytes are decoded as UTF-8 with replacement (consistently, so hashes stay stable).
    """
    tag = _tag(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace").strip(" \x00")
        if not text:
            return None
        return [v.strip(" \x00") for v in text.split("\\")] if "\\" in text else text
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [str(v) for v in value]
    return str(value)


def _tag(keyword: str) -> BaseTag:
    """The tag object of a dictionary keyword, made once (``pydicom.tag.Tag`` converts each
    time)."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = BaseTag(tag_for_keyword(keyword))
    return tag


_TAGS: dict[str, BaseTag] = {}


_SHARED_GROUPS = BaseTag(0x52009229)  # Shared Functional Groups Sequence
_PER_FRAME_GROUPS = BaseTag(0x52009230)  # Per-frame Functional Groups Sequence


def _attr(ds: pydicom.Dataset, frame: int, sequence: str, name: str):
    """``name`` from the top level, else from ``sequence`` in the functional groups."""
    value = _raw(ds, name)
    if value is not None:
        return value
    if _SHARED_GROUPS not in ds and _PER_FRAME_GROUPS not in ds:
        return None
    item = _frame_item(ds, frame, sequence)
    return item[name].value if item is not None and name in item else None


def _number(keyword: str, value) -> float | None:
    """The first number of a DS/IS/FD value, None when absent or empty.

    Raises ``_HeaderValueError`` when it does not parse or is not finite."""
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0] if len(value) else None
        if value is None or value == "":
            return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise _HeaderValueError(keyword, value, "not a number") from exc
    if not np.isfinite(number):
        raise _HeaderValueError(keyword, value, "not a finite number")
    return number


def _numbers(keyword: str, value, count: int) -> list[float] | None:
    """``count`` numbers of a multi-valued element (IOP, IPP, Pixel Spacing), None when absent.

    Raises ``_HeaderValueError`` when the count is wrong or a value does not parse."""
    if value is None or value == "":
        return None
    values = (
        list(value) if isinstance(value, pydicom.multival.MultiValue | list | tuple) else [value]
    )
    shown = "\\".join(str(v) for v in values)  # as the header holds it: "1\\2\\3"
    if len(values) != count:
        raise _HeaderValueError(keyword, shown, f"{len(values)} values where {count} belong")
    try:
        out = [_number(keyword, v) for v in values]
    except _HeaderValueError as exc:
        raise _HeaderValueError(keyword, shown, f"{exc.problem} among them") from exc
    if any(v is None for v in out):
        raise _HeaderValueError(keyword, shown, "an empty value among them")
    return out  # type: ignore[return-value]


def _rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of the Modality LUT; (1, 0) when absent.

    Raises ``_HeaderValueError`` for a slope of 0: it would map every pixel to the intercept
    (a blank slice), which no scanner writes; the header is damaged."""
    raw_slope = _attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    slope = _number("RescaleSlope", raw_slope)
    icpt = _number(
        "RescaleIntercept", _attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    )
    if slope == 0:
        raise _HeaderValueError(
            "RescaleSlope", raw_slope, "a slope of 0, which would map every pixel to one value"
        )
    return (1.0 if slope is None else slope), (0.0 if icpt is None else icpt)


def _header_window(ds: pydicom.Dataset, frame: int) -> tuple[float, float, str] | None:
    c = _number("WindowCenter", _attr(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    w = _number("WindowWidth", _attr(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    if c is None or w is None:
        return None
    fn = str(_attr(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
    if fn not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return None
    if (fn == "LINEAR" and w < 1) or w <= 0:  # invalid per PS3.3 C.11.2.1.2: not usable
        return None
    return c, w, fn


#: ``DicomRead.note`` when a header window blanked frames and the percentile window was used
BLANKING_WINDOW_NOTE = (
    "the header's Window Center/Width ({center:g}/{width:g}) maps (nearly) every pixel of {frames} "
    "to one value (the pixel data lie outside it: a window for another rescaling or "
    "contrast); the percentile window was used there instead"
)


def _contrast_at(frame: np.ndarray, slope: float, window: Window) -> bool:
    """Whether ``frame`` (raw stored values, any shape) has contrast on the scale of
    ``window``: its central ``UNIFORM_SHARE`` of values, rescaled by ``slope``, span at least
    the band of grey levels that the uniform rule allows (``UNIFORM_BAND`` of the
    window's 255). A frame that a header window maps to one value is then out of the window
    (a window for another rescaling: the percentile window is used instead); one without is
    a blank slice at that window, kept as it is (uniform, flagged as such) rather than its
    noise stretched to full contrast (tester30: a blank slice with raw values 0-2 under a
    600/1000 window was stretched and became a series' top-scoring slice)."""
    tail = 50 * (1 - UNIFORM_SHARE)  # percent on each side
    lo, hi = np.percentile(frame, [tail, 100 - tail])
    band = UNIFORM_BAND / 255 * (window.high - window.low)
    return bool(abs(float(hi) - float(lo)) * abs(slope) >= band)


def _to_uint8(
    ds: pydicom.Dataset,
    frames: np.ndarray,
    cfg: DicomConfig,
    photometric: str,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, list[Window], list[tuple[float, float]]]:
    """Rescale + window every frame to uint8 (see ``DicomConfig``).

    A header window that leaves a frame with contrast on its scale (``_contrast_at``)
    uniform (``mriscan.scan.is_uniform``: all black or all white, but for a few pixels: the
    data lie outside it) is not
    used for that frame: the percentile window is,
    and ``notes`` gets ``BLANKING_WINDOW_NOTE`` naming the frames, so the switch is reported
    (ingest: "stored with a note") and recorded (the sample's window source "percentile")."""
    n = frames.shape[0]
    if photometric in _COLOUR:
        # ITU-R BT.601 luma, as Pillow's "L" (pydicom already converted YBR to RGB)
        grey = frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114
        if _header_int(ds, "BitsStored", 8) <= 8:
            w = Window("none", 0.0, 255.0)
            out = window_to_uint8(grey, w)
            return out, [w] * n, [(1.0, 0.0)] * n
        frames = grey
    if ds.get("ModalityLUTSequence"):
        # a lookup table, not a line: pydicom applies it; the window then sees LUT output
        frames = apply_modality_lut(frames, ds)
        rescales = [(1.0, 0.0)] * n
    else:
        rescales = [_rescale(ds, f) for f in range(n)]
    out = np.empty(frames.shape[:3], np.uint8)
    invert = photometric == "MONOCHROME1"
    windows: list[Window] = []
    pct = None
    blanked: list[int] = []
    for f in range(n):
        slope, intercept = rescales[f]
        hdr = _header_window(ds, f) if cfg.use_header_window else None
        cw = None
        if hdr is not None:
            c, w, fn = hdr
            if fn == "LINEAR":  # PS3.3 C.11.2.1.2.1: centre - 0.5, width - 1
                lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
            else:
                lo, hi = c - w / 2, c + w / 2
            window, cw = Window("header", lo, hi, fn), (c, w)
        else:
            if pct is None:  # per file: all frames of a multi-frame file share one window
                pct = percentile_window(frames, cfg.window_percentiles)
            a, b = pct[0] * slope + intercept, pct[1] * slope + intercept
            window = Window("percentile", min(a, b), max(a, b))
        out[f] = window_to_uint8(
            frames[f], window, slope=slope, intercept=intercept, invert=invert, center_width=cw
        )
        # uniform by the rule, not only every pixel equal: a few stray pixels inside a window
        # for another scale kept it, storing the head all white (tester31)
        if cw is not None and is_uniform(out[f]) and _contrast_at(frames[f], slope, window):
            blanked.append(f)
            if pct is None:
                pct = percentile_window(frames, cfg.window_percentiles)
            a, b = pct[0] * slope + intercept, pct[1] * slope + intercept
            window = Window("percentile", min(a, b), max(a, b))
            out[f] = window_to_uint8(
                frames[f], window, slope=slope, intercept=intercept, invert=invert
            )
        windows.append(window)
    if blanked and notes is not None:
        c, w, _ = _header_window(ds, blanked[0])
        where = "the slice" if n == 1 else f"frame(s) {', '.join(str(f + 1) for f in blanked)}"
        notes.append(BLANKING_WINDOW_NOTE.format(center=c, width=w, frames=where))
    return out, windows, rescales


#: Patient IDs that anonymisers and scanners write when there is no patient: they name no one,
#: and as split keys they would merge every such study into one "patient"
PLACEHOLDER_PATIENT_IDS = frozenset({
    "ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED", "ANONYMOUS PATIENT", "DEIDENTIFIED",
    "DE-IDENTIFIED", "REMOVED", "UNKNOWN", "UNK", "NONE", "NULL", "NIL", "N/A", "NA", "NOID",
    "NO ID", "NO_ID", "NOT AVAILABLE", "PATIENT", "PATIENTID", "PATIENT ID", "ID", "TEST",
    "DEFAULT", "EMPTY", "BLANK", "MISSING",
})  # fmt: skip


#: ``DicomSliceMeta.patient_placeholder`` of a file whose Patient ID element is present but
#: empty (or only blanks): listed like ``"ANONYMOUS"``, grouped by study like every placeholder
EMPTY_PATIENT_ID = "(empty)"

#: ``mriscan.readers.InputRead.placeholder_id`` of a file without a Patient ID element, by the
#: id its slices are grouped by instead (the kind of ``DicomSliceMeta.group``): (that value,
#: how such files are grouped, in words). Listed with the placeholder IDs by ingest, since the
#: split then keeps apart what may be one patient's (each file on its own without any UID)
MISSING_PATIENT_ID = {
    "study": ("(no Patient ID)", "grouped by their study"),
    "series": ("(no Patient ID or Study Instance UID)", "grouped by their series"),
    "instance": (
        "(no Patient ID, Study or Series Instance UID)",
        "each file a group of its own (one acquisition's slices can fall on both sides of a split)",
    ),
    "unknown": ("(no Patient ID, Study, Series or SOP Instance UID)", "all in one group"),
}


def is_placeholder_patient_id(value: str) -> bool:
    """True for a Patient ID that names no patient: empty, one in ``PLACEHOLDER_PATIENT_IDS``
    (case and surrounding blanks ignored), or one character repeated (``"0"``, ``"0000"``,
    ``"XXXXXX"``, ``"---"``)."""
    v = value.strip().upper()
    return not v or v in PLACEHOLDER_PATIENT_IDS or len(set(v)) == 1


def _identifiers(ds: pydicom.Dataset, salt: bytes) -> dict[str, str | None]:
    """The hashed ids of ``ds``, and ``patient_placeholder``: a placeholder Patient ID
    (``is_placeholder_patient_id``), treated as missing (the study is then the split group)."""
    placeholder = ""

    def h(kind: str, keyword: str) -> str | None:
        nonlocal placeholder
        value = _raw(ds, keyword)
        value = "" if value is None else "\\".join(value) if isinstance(value, list) else value
        if kind == "patient" and value and is_placeholder_patient_id(value):
            placeholder = value.strip()[:32] or EMPTY_PATIENT_ID
            return None
        if kind == "patient" and not value and keyword in ds:  # present, empty: as a placeholder
            placeholder = EMPTY_PATIENT_ID
            return None
        if not value:
            return None
        # the patient, study and series of a file repeat across its series: hashed once
        return salted_hash(salt, kind, value) if kind == "instance" else _hash(salt, kind, value)

    out: dict[str, str | None] = {
        "patient": h("patient", "PatientID"),
        "study": h("study", "StudyInstanceUID"),
        "series": h("series", "SeriesInstanceUID"),
        "instance": h("instance", "SOPInstanceUID"),
    }
    out["patient_placeholder"] = placeholder
    return out


#: ``salted_hash``, remembered for the few ids (patient, study, series) that repeat file after
#: file (an HMAC costs ~7 us; a series of 50 files needs 3, not 150)
_hash = functools.lru_cache(maxsize=1024)(salted_hash)


class HeaderIds(NamedTuple):
    """The hashed ``series`` (``DicomSliceMeta.series``) and ``instance``
    (``DicomSliceMeta.instance``) ids of a DICOM file read from its header alone
    (``header_ids``); each None when the header cannot be read or lacks the UID. ``number``:
    its Series Number (``DicomSliceMeta.series_number``), None when absent or not one
    integer (the full read then names the fault)."""

    series: str | None
    instance: str | None
    number: int | None = None


def header_ids(path: str | os.PathLike[str], salt: bytes) -> HeaderIds:
    """The hashed Series Instance UID and SOP Instance UID of a DICOM file, and its Series
    Number, from one read of its header (``pydicom.dcmread`` with ``stop_before_pixels`` and
    only those three tags; ``force=True`` for files without the preamble), hashed as
    ``read_dicom`` hashes them; each None when the header cannot be read or has no such
    element (never raises for a damaged file: the caller has the file's own error already).

    For files whose pixels fail to decode (a truncated instance): the series tells which
    per-series result misses them, the instance whether the file is a copy of an instance
    read from another file.

    Raises
    ------
    ConfigError
        If ``salt`` is no valid salt (``mriscan.scan.check_salt``).
    """
    ids = read_header_ids(path, salt)
    return ids if ids is not None else HeaderIds(None, None)


def read_header_ids(path: str | os.PathLike[str], salt: bytes) -> HeaderIds | None:
    """``header_ids``, but None when the header cannot be read (a ``HeaderIds`` of Nones is
    then a header read without those UIDs): ``mriscan.scan_predict`` groups files into series
    before reading their pixels, and leaves a file whose header fails to the full reader.

    Raises
    ------
    ConfigError
        If ``salt`` is no valid salt (``mriscan.scan.check_salt``).
    """
    salt = check_salt(salt)
    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["SeriesInstanceUID", "SOPInstanceUID", "SeriesNumber"],
            force=True,
        )
        ids = _identifiers(ds, salt)
    except Exception:  # a damaged header: the full reader gives the file's own error
        return None
    try:
        number = _int_or_none(ds, "SeriesNumber")
    except _HeaderValueError:  # the full read names it; the ids still group the file
        number = None
    return HeaderIds(ids["series"], ids["instance"], number)


_PATIENT_TEXT = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs",
                 "PatientBirthName")  # fmt: skip


def _safe_description(ds: pydicom.Dataset) -> str:
    """Series Description without any text that matches the patient's name, ID or birth date."""
    text = _raw(ds, "SeriesDescription")
    if not text:
        return ""
    text = "\\".join(text) if isinstance(text, list) else text
    values = tuple(_raw(ds, k) for k in _PATIENT_TEXT)
    return _scrub(text, tuple(tuple(v) if isinstance(v, list) else v for v in values))


@functools.lru_cache(maxsize=256)
def _scrub(text: str, values: tuple) -> str:
    """``_safe_description`` of ``text`` given the patient elements' ``_raw`` values (lists as
    tuples), cached: the files of a series repeat both, and the regular expressions cost
    ~25 us per file."""
    tokens = set()
    for value in values:
        if value:
            value = " ".join(value) if isinstance(value, tuple) else value
            tokens.update(t for t in re.split(r"[\^=\s,]+", value) if len(t) >= 2)
    for t in sorted(tokens, key=len, reverse=True):
        text = re.sub(re.escape(t), "[removed]", text, flags=re.IGNORECASE)
    text = "".join(ch for ch in text if ch.isprintable())
    return text.strip()[:64]


def _geometry(ds: pydicom.Dataset, frame: int) -> tuple[np.ndarray | None, float | None]:
    """Slice normal (unit, patient LPS axes; read-only) and position along it in mm, when
    known."""
    raw = _attr(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    if isinstance(raw, str | list):  # header text (``_raw``): the files of a series share it
        normal = _normal_of(raw if isinstance(raw, str) else tuple(raw))
    else:
        normal = _normal(raw)
    if normal is None:
        return None, None
    ipp = _numbers(
        "ImagePositionPatient",
        _attr(ds, frame, "PlanePositionSequence", "ImagePositionPatient"),
        3,
    )
    if ipp is None:
        return normal, None
    return normal, float(np.dot(np.asarray(ipp), normal))


def _normal(raw) -> np.ndarray | None:
    """The unit normal of an Image Orientation Patient value (6 numbers), read-only; None when
    absent or degenerate. ``_HeaderValueError`` when it does not parse."""
    iop = _numbers("ImageOrientationPatient", raw, 6)
    if iop is None:
        return None
    v = np.asarray(iop)
    normal = np.cross(v[:3], v[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return None
    normal /= norm
    normal.flags.writeable = False
    return normal


@functools.lru_cache(maxsize=256)
def _normal_of(raw: str | tuple[str, ...]) -> np.ndarray | None:
    """``_normal`` of the header text, cached: every file of a series repeats its orientation,
    and NumPy's cross product and norm of 3-vectors cost ~50 us per call (same arithmetic, so
    the same bits, as computing it each time)."""
    return _normal(list(raw) if isinstance(raw, tuple) else raw)


def _plane(normal: np.ndarray | None) -> str:
    return "unknown" if normal is None else _PLANES[int(np.argmax(np.abs(normal)))]


def _spacing(ds: pydicom.Dataset, frame: int) -> tuple[float, float] | None:
    ps = _numbers("PixelSpacing", _attr(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
    return None if ps is None else (ps[0], ps[1])


def _int_or_none(ds: pydicom.Dataset, keyword: str) -> int | None:
    """An IS element as int, None when absent; ``_HeaderValueError`` when it does not parse."""
    value = _raw(ds, keyword)
    if value is None:
        return None
    if isinstance(value, list):
        raise _HeaderValueError(keyword, value, "not one integer")
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _HeaderValueError(keyword, value, "not an integer") from exc
