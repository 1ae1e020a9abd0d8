"""One reader for every input kind: a file (JPEG/PNG, DICOM, NIfTI) -> uint8 slices with
pseudonymous names, split-group keys and warnings. Shared by ingest, evaluate, predict, explain.

A plain image is one slice named by its path relative to the raw folder. A DICOM file gives one
slice per frame, a NIfTI volume its selected slices (``mriscan.dicom``, ``mriscan.nifti``); their
slices are named by salted hashes only (``dicom/<series>/<instance>#<frame>``,
``nifti/<volume>#<slice>``), never by the file or folder name, which in scanner exports is often
the patient's name. Keras-free.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mriscan.errors import CorruptImageError, ImageDecodeError, MixedSeriesError
from mriscan.io import (
    DEFAULT_MAX_PIXELS,
    EMPTY_FILE,
    SourceFile,
    UnusedFile,
    _classify_all,
    _iter_files,
    decode_bytes,
    file_kind,
    relative_name,
)
from mriscan.scan import (
    NO_ANATOMY_RULE,
    NOISE_RULE,
    UNIFORM_RULE,
    has_no_anatomy,
    is_noise,
    is_uniform,
    no_anatomy,
)
from mriscan.scan_config import ReaderSettings, describe_setting

__all__ = [
    "FLAG_SUMMARY",
    "FOUR_D_NOTE",
    "MIN_SIDE",
    "NOISE_RULE",
    "NO_ANATOMY_FLAGS",
    "NO_ANATOMY_RULE",
    "UNIFORM_RULE",
    "InputRead",
    "InputSlice",
    "ReadOptions",
    "check_series_sizes",
    "collect_inputs",
    "describe_flags",
    "dicom_unit",
    "file_sha256",
    "has_no_anatomy",
    "is_noise",
    "is_uniform",
    "read_input",
    "refuse_mixed_series",
    "settings_for_model",
    "slice_warnings",
]

log = logging.getLogger(__name__)

#: Slices with a side shorter than this (e.g. 1×N strips) are stored only with a warning.
MIN_SIDE = 8


@dataclass(frozen=True)
class ReadOptions:
    """How inputs are read: the pixel cap and the DICOM/NIfTI settings.

    ``dicom`` / ``nifti`` None: the recorded settings of the store being added to or of the
    model being applied (``mriscan.scan_config.ReaderSettings``), or the configs' defaults
    where none are recorded (or when the options are used as they are). ``overrides``: dotted
    settings (``{"nifti.plane": "sagittal"}``, names in ``mriscan.scan_config.READER_FLAGS``)
    applied on top, e.g. the options a user typed; ``resolve`` combines the three.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    dicom: object | None = None  # mriscan.dicom.DicomConfig
    nifti: object | None = None  # mriscan.nifti.NiftiConfig
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> bool:
        """Whether these options choose any reading setting (else a recorded one applies)."""
        return self.dicom is not None or self.nifti is not None or bool(self.overrides)

    def resolve(self, base: ReaderSettings | None = None) -> ReaderSettings:
        """The settings these options give on top of ``base`` (None: the defaults).

        Raises
        ------
        ConfigError
            An override names an unknown setting or has a value the configs refuse.
        """
        s = base if base is not None else ReaderSettings()
        s = ReaderSettings(
            dicom=self.dicom if self.dicom is not None else s.dicom,
            nifti=self.nifti if self.nifti is not None else s.nifti,
        )
        return s.replace(self.overrides)

    def with_settings(self, settings: ReaderSettings) -> ReadOptions:
        """These options reading with ``settings`` (no overrides left)."""
        return ReadOptions(max_pixels=self.max_pixels, dicom=settings.dicom, nifti=settings.nifti)


def settings_for_model(
    recorded: ReaderSettings | None,
    options: ReadOptions | None,
    *,
    model: str = "the model",
    kinds: Iterable[str] | None = None,
) -> ReadOptions:
    """How to read scanner files for a model whose card records ``recorded`` (None: an older
    card, read with the defaults as before): ``options`` win where they choose a setting, and
    each chosen setting that differs from the training data's is logged (one warning line),
    since the model then sees slices read otherwise than those it learnt from. ``kinds``: the
    kinds of input file the model was trained on (``ModelCard.train_kinds``); only the
    settings of those kinds are compared, as a model trained on no NIfTI (DICOM) slice has no
    NIfTI (DICOM) reading to differ from. None (a card that does not record them): both.

    Raises
    ------
    ConfigError
        ``options.overrides`` names an unknown setting or a refused value.
    """
    opts = options if options is not None else ReadOptions()
    settings = opts.resolve(recorded)
    if recorded is not None and opts.chosen:
        diffs = recorded.differences(settings, ("dicom", "nifti") if kinds is None else kinds)
        if diffs:
            log.warning(
                "reading scanner files with %s; %s was trained on data read with %s",
                ", ".join(describe_setting(n, new) for n, _, new in diffs),
                model,
                ", ".join(describe_setting(n, old) for n, old, _ in diffs),
            )
    return opts.with_settings(settings)


#: the kinds of input file in words, for messages
KIND_WORDS = {"image": "JPEG/PNG", "dicom": "DICOM", "nifti": "NIfTI"}


def warn_unseen_kinds(
    kinds: Iterable[str], trained: Iterable[str] | None, *, model: str = "the model"
) -> list[str]:
    """Warn (one line) when input files are of a kind the model never saw in training, e.g.
    NIfTI volumes scored by a model trained on JPEG/PNG images only: its outputs on them are
    untested, however plausible they look. ``kinds``: the kind of every input file
    (``mriscan.io.file_kind``); ``trained``: ``ModelCard.train_kinds`` (None: an older card
    that does not record them, and nothing is said).

    Returns
    -------
    list of str
        The unseen kinds, in ``scan_config.INPUT_KINDS`` order (empty when none).
    """
    if trained is None:
        return []
    seen = set(trained)
    counts: dict[str, int] = {}
    for k in kinds:
        if k in KIND_WORDS and k not in seen:
            counts[k] = counts.get(k, 0) + 1
    unseen = [k for k in KIND_WORDS if k in counts]
    if unseen:
        log.warning(
            "%s scored by %s, which was trained on %s only: its outputs on them are untested "
            "(validate it on labelled data of that kind first, e.g. with mriscan evaluate)",
            " and ".join(f"{counts[k]} {KIND_WORDS[k]} file(s)" for k in unseen),
            model,
            " and ".join(KIND_WORDS[k] for k in KIND_WORDS if k in seen) or "no recorded kind",
        )
    return unseen


@dataclass(frozen=True)
class InputSlice:
    """One slice of an input file.

    Attributes
    ----------
    image : ndarray of shape (H, W), uint8
    source : str
        Relative path (plain images) or the pseudonym described in the module doc.
    group_key : str
        ``patient:<h>`` / ``study:`` / ``series:`` / ``instance:`` (DICOM), ``volume:<h>``
        (NIfTI), or ``""`` (plain images).
    unit : str
        The series or volume the slice belongs to, for per-series aggregation (``""`` for plain
        images).
    order : float
        Position in its unit (slice position in mm, instance number or slice index).
    window, plane : str
        ``SampleRecord.window`` / ``SampleRecord.plane``.
    series_number : int or None
        A DICOM slice's Series Number (0020,0011), to tell series apart for a person (None when
        absent, and for other kinds).
    instance : str or None
        A DICOM slice's salted SOP Instance UID hash and 0-based frame, ``"<h>#<frame>"``
        (None without a SOP Instance UID, and for other kinds): two files holding the same
        instance give slices with the same value.
    patient, study : str
        A DICOM slice's salted Patient ID (or its placeholder) and Study Instance UID hashes
        ("" when absent, and for other kinds), to tell a series whose instances disagree.
    """

    image: np.ndarray = field(repr=False)
    source: str
    group_key: str = ""
    unit: str = ""
    order: float = 0.0
    window: str = ""
    plane: str = ""
    series_number: int | None = None
    instance: str | None = None
    patient: str = ""
    study: str = ""


@dataclass(frozen=True)
class InputRead:
    """What reading one file gave: slices, or ``skipped`` (a DICOM object that is no image:
    no pixel data, a segmentation, a dose grid; listed, not an error), or ``excluded`` (a
    readable image this run does not use, e.g. a CT when only MR is read; the reason), or
    ``error`` (the reason, without the path). ``placeholder_id`` is a DICOM file's Patient ID
    when it is a placeholder that names no one (``mriscan.dicom.is_placeholder_patient_id``;
    its slices are then grouped by study), a value of ``mriscan.dicom.MISSING_PATIENT_ID``
    when it has no Patient ID element (grouped by study, series or file as that says), else
    "". ``note``: what was read otherwise than the
    file holds, without the path (a 4-D NIfTI volume: "4-D volume with 2 volumes: the first
    was read (--nifti-4d)"), else "": the caller reports it as its naming rule allows."""

    path: Path
    kind: str
    slices: tuple[InputSlice, ...] = ()
    skipped: str | None = None
    error: str | None = None
    excluded: str | None = None
    placeholder_id: str = ""
    note: str = ""


#: ``InputRead.note`` of a 4-D NIfTI volume read as its first volume (``%d``, ``%d``: the
#: file's axes, 4, or 5+ when those past the 4th have length 1; the volumes)
FOUR_D_NOTE = "%d-D volume with %d volumes: the first was read (--nifti-4d)"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (streamed, ``hashlib.file_digest``).

    Raises
    ------
    OSError
        The file cannot be read.
    """
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# The child of ``file_sha256_apart``: NUL-separated paths on stdin, one line per path out
# ("ok <hex digest>" or "err <reason>"), in order. Standard library only (hashlib), run with
# ``-I -S`` so that it starts in ~10 ms and reads no environment or site packages.
_HASHER = r"""
import hashlib, sys
out = []
for path in sys.stdin.buffer.read().split(b"\0"):
    if not path:
        continue
    try:
        with open(path, "rb") as fh:
            out.append(b"ok " + hashlib.file_digest(fh, "sha256").hexdigest().encode())
    except OSError as exc:
        why = str(exc.strerror or exc).replace("\n", " ")
        out.append(b"err " + why.encode("utf-8", "backslashreplace"))
sys.stdout.buffer.write(b"\n".join(out) + b"\n")
"""


def file_sha256_apart(paths: Sequence[str | os.PathLike[str]]) -> list[str | OSError]:
    """SHA-256 hex digests of ``paths``' bytes, computed by a child Python process.

    The digests equal ``file_sha256``'s. Why a process: threads hashing beside a thread that
    holds the GIL most of the time (ingest's DICOM reader, whose headers pydicom parses in
    Python) wait for the GIL at every file they open and every block they hash: measured
    3.5-4x slower on 2 cores (2,000 files of 129 kB: 0.25 s alone, 0.85-1.2 s beside a
    pydicom reader thread; 0.24 s in a process beside one). The child runs
    ``sys.executable -I -S`` with only ``hashlib``.

    Returns, in the order of ``paths``, the digest or the ``OSError`` that reading the file
    gave (``strerror`` set; the child's exception is not re-raised, so one unreadable file
    does not stop the others).

    Raises
    ------
    RuntimeError
        No Python interpreter to start (``sys.executable`` empty, as in some embedded
        interpreters), or the child failed or answered wrongly (its error output is quoted).
    """
    if not paths:
        return []
    if not sys.executable:
        raise RuntimeError("cannot hash in a child process: sys.executable is not set")
    data = b"\0".join(os.fsencode(p) for p in paths)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _HASHER],
        input=data,
        capture_output=True,
        check=False,
    )
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(paths):
        err = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeError(
            f"the SHA-256 child process failed (exit {proc.returncode}, {len(lines)} of "
            f"{len(paths)} digests): {err or 'no error output'}"
        )
    out: list[str | OSError] = []
    for line in lines:
        status, _, value = line.partition(b" ")
        text = value.decode("utf-8", "replace")
        out.append(text if status == b"ok" else OSError(0, text))
    return out


#: the ``slice_warnings`` flags of a slice with no anatomy (``has_no_anatomy``): such slices
#: are left out of a unit's pool, the pointing game and explain's top-k
NO_ANATOMY_FLAGS = ("uniform", "noise")


def slice_warnings(image: np.ndarray) -> tuple[str, ...]:
    """Flags of a slice (H, W) uint8 that is stored only with a warning: ``"uniform"`` or
    ``"noise"`` (no anatomy: ``is_uniform``, else ``is_noise``) and ``"thin"`` (a side
    shorter than ``MIN_SIDE``)."""
    flags = [rule] if (rule := no_anatomy(image)) else []
    if min(image.shape) < MIN_SIDE:
        flags.append("thin")
    return tuple(flags)


#: each ``slice_warnings`` flag in a few words, for rows that count flagged slices (a series
#: or volume row of ``predict``); ``describe_flags`` says it of one slice
FLAG_SUMMARY = {
    "uniform": f"uniform (no anatomy: {UNIFORM_RULE})",
    "noise": f"noise (no anatomy: {NOISE_RULE})",
    "thin": f"thin (a side under {MIN_SIDE} pixels)",
}


def describe_flags(flags: Iterable[str], image: np.ndarray) -> str:
    """Human text for ``slice_warnings`` flags of ``image`` (H, W) uint8 (e.g. for the ingest
    report): "uniform image (all black)", or "(nearly all black: ...)" when a few pixels
    differ."""
    parts = []
    if "uniform" in flags:
        values = np.asarray(image).reshape(-1)
        v = int(np.bincount(values).argmax()) if values.size else 0
        what = "all black" if v == 0 else "all white" if v == 255 else f"every pixel = {v}"
        if values.size and int(values.min()) != int(values.max()):
            what = f"nearly {what}: {UNIFORM_RULE}"
        parts.append(f"uniform image ({what}): no anatomy")
    if "noise" in flags:
        parts.append(f"noise image ({NOISE_RULE}): no anatomy")
    if "thin" in flags:
        parts.append(f"{image.shape[1]}x{image.shape[0]} pixels: a side under {MIN_SIDE}")
    return "; ".join(parts)


def read_input(
    path: str | os.PathLike[str],
    kind: str,
    *,
    salt: bytes,
    root: str | os.PathLike[str] | None,
    options: ReadOptions | None = None,
    data: bytes | None = None,
) -> InputRead:
    """Read one input file into slices; reader failures become ``InputRead.error``.

    Parameters
    ----------
    path : path-like
    kind : {"image", "dicom", "nifti"}
        As given by ``mriscan.io.file_kind``.
    salt : bytes
        The store's salt (``mriscan.scan.new_salt``) for every identifier.
    root : path-like or None
        The raw folder: plain images are named relative to it, NIfTI volume ids hash the path
        relative to it (None, for DICOM and NIfTI only: the absolute path is hashed, so files
        of one name in different folders get different ids).
    options : ReadOptions, optional
    data : bytes, optional
        The file's bytes if already read (plain images only).

    Returns
    -------
    InputRead
        Never raises for a property of the file: reader errors (``ImageDecodeError``,
        ``OSError``) and any other exception a library raises on odd input become
        ``InputRead.error`` (unexpected ones named by type, logged without the path, which
        is logged with the traceback at DEBUG), so
        one file can never abort a run. ``MemoryError`` (the machine, not the file: it
        propagates with a note naming the file) and ``KeyboardInterrupt`` / ``SystemExit``
        (not ``Exception``) are not caught.
    """
    opts = options if options is not None else ReadOptions()
    path = Path(path)
    try:
        return _read_input(path, kind, salt=salt, root=root, opts=opts, data=data)
    except MemoryError as exc:
        exc.add_note(f"while reading {path}")
        raise
    except ImageDecodeError as exc:
        return InputRead(path, kind, error=exc.reason)
    except OSError as exc:
        return InputRead(path, kind, error=f"cannot read file ({exc.strerror or exc})")
    except Exception as exc:  # a library's bug or an input nobody foresaw: this file only
        # the path may name the patient (scanner exports): the warning names the file's kind
        # and error type only (the file's own row or list entry says which file); the path
        # and traceback are logged at DEBUG (`mriscan -vv`), for a bug report
        log.warning(
            "unexpected %s while reading a %s file (see its row; `mriscan -vv` logs the traceback)",
            type(exc).__name__,
            kind,
        )
        log.debug("unexpected error reading %s", path, exc_info=True)
        return InputRead(
            path,
            kind,
            error=(
                f"unexpected {type(exc).__name__} while reading the {kind} file ({exc}); the "
                "file is probably damaged: re-export it, or report this message"
            ),
        )


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:  # the reader names what is wrong with the file
        return False


def _read_input(
    path: Path, kind: str, *, salt: bytes, root, opts: ReadOptions, data: bytes | None
) -> InputRead:
    """``read_input`` without its last-resort handler."""
    if kind == "image":
        if data is None:
            data = path.read_bytes()
        image = decode_bytes(data, path, max_pixels=opts.max_pixels)
        return InputRead(path, kind, (InputSlice(image, relative_name(path, root)),))
    if kind in ("dicom", "nifti") and (data == b"" or (data is None and _is_empty(path))):
        # as a JPEG/PNG of 0 bytes is refused, and as ingest words it (not as each reader's
        # own complaint about a missing header)
        raise CorruptImageError(path, EMPTY_FILE)
    if kind == "dicom":
        from mriscan.dicom import read_dicom

        r = read_dicom(path, salt=salt, config=opts.dicom)
        if r.skipped:
            return InputRead(path, kind, skipped=r.skipped)
        if r.excluded:
            return InputRead(path, kind, excluded=r.excluded)
        out = []
        for s in r.slices:
            m = s.meta
            unit = dicom_unit(m.series, m.instance)
            series = unit.split(":", 1)[1]
            order = (
                m.slice_position
                if m.slice_position is not None
                else float(m.instance_number or 0) + m.frame / max(m.n_frames, 1)
            )
            out.append(
                InputSlice(
                    s.image,
                    f"dicom/{series}/{m.instance or 'none'}#{m.frame}",
                    group_key=m.group,
                    unit=unit,
                    order=float(order),
                    window=m.window_source,
                    plane=m.plane,
                    series_number=m.series_number,
                    instance=f"{m.instance}#{m.frame}" if m.instance else None,
                    patient=m.patient
                    or (f"placeholder:{m.patient_placeholder}" if m.patient_placeholder else ""),
                    study=m.study or "",
                )
            )
        placeholder = next((s.meta.patient_placeholder for s in r.slices), "")
        if not placeholder and r.slices and r.slices[0].meta.patient is None:
            from mriscan.dicom import MISSING_PATIENT_ID

            placeholder = MISSING_PATIENT_ID[r.slices[0].meta.group.split(":", 1)[0]][0]
        return InputRead(path, kind, tuple(out), placeholder_id=placeholder, note=r.note)
    if kind == "nifti":
        from mriscan.nifti import read_nifti

        r = read_nifti(path, salt=salt, root=root, config=opts.nifti)
        out = [
            InputSlice(
                s.image,
                f"nifti/{s.meta.volume}#{s.meta.slice_index}",
                group_key=s.meta.group,
                unit=f"volume:{s.meta.volume}",
                order=float(s.meta.slice_index),
                window=s.meta.window_source,
                plane=s.meta.plane,
            )
            for s in r.slices
        ]
        if not out:
            return InputRead(path, kind, error="the volume has no slice to keep")
        meta = r.slices[0].meta
        notes = [FOUR_D_NOTE % (meta.n_dims, meta.n_volumes)] if meta.n_volumes > 1 else []
        notes += [r.note] if r.note else []
        return InputRead(path, kind, tuple(out), note="; ".join(notes))
    return InputRead(path, kind, error=f"unknown input kind {kind!r}")


def dicom_unit(series: str | None, instance: str | None) -> str:
    """The ``InputSlice.unit`` of a DICOM file's slices from its hashed Series and SOP
    Instance UIDs (``mriscan.dicom.DicomSliceMeta``, ``mriscan.dicom.header_ids``):
    ``series:<series>``, or ``series:i<instance>`` for a file without a Series Instance UID
    (its own unit). The one rule for the reader and for grouping files by their headers
    before they are read (``mriscan.scan_predict.iter_predict_inputs``)."""
    return f"series:{series or f'i{instance}'}"


#: the pixel data elements of a DICOM image (as ``mriscan.dicom``'s ``_has_pixels``)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_series_sizes(paths: Sequence[Path]) -> dict[Path, str]:
    """DICOM files whose series mixes slice sizes, each with the reason (header-only reads).

    Reads only Series Instance UID, Rows and Columns of each file, and whether it holds pixel
    data (``pydicom.dcmread`` with ``specific_tags``, the pixel data deferred, not read;
    ``force=True`` for files without the preamble); files that cannot be read here, files
    whose header gives an empty size (Rows or Columns 0 or absent), and files without pixel
    data (no slice can come of them) are left out and left to the full reader, which reports
    each with its own reason, as ``refuse_mixed_series`` counts only files that gave slices.
    A series whose other files disagree in size is refused whole (storing part of it would
    split one acquisition by accident).

    The reason names no file (file and folder names of scanner exports often name the patient,
    and the reason is shown by ``predict``, ``evaluate``, ``explain`` and ``audit``, which name
    such files by pseudonym): it counts the files of each size, the most common first, and
    gives the size of the file it is for, e.g. "its series mixes slice sizes: 3 files of
    96x96, 1 file of 80x80; this file is 80x80 (...)". Every file of the series gets its own
    reason (its own row), so the stray ones are found by their rows.
    """
    import pydicom

    series: dict[str, dict[tuple[int, int], list[Path]]] = {}
    for p in paths:
        try:
            ds = pydicom.dcmread(
                p,
                specific_tags=["SeriesInstanceUID", "Rows", "Columns", *_PIXEL_KEYWORDS],
                defer_size=64,  # the pixel data's presence is what counts: its value is not read
                force=True,
            )
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
            pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        except Exception:  # damaged files: read_dicom gives the precise error later
            continue
        # an empty size, or no pixel data, is no slice size: read_dicom refuses the file with
        # its own reason, and it must not count as one of its series' sizes
        if uid and min(shape) > 0 and pixels:
            series.setdefault(uid, {}).setdefault(shape, []).append(p)
    return _mixed_size_reasons(series)


def refuse_mixed_series(reads: Sequence[InputRead]) -> list[InputRead]:
    """``reads`` with the DICOM files of a series whose slices, as read, mix sizes refused.

    The check of ``check_series_sizes`` on files already read (``read_input``): only files
    that gave slices count, so a file that failed on its own (an empty size, a truncated or
    undecodable instance) keeps its own error and does not make its series "mixed"; the rest
    of such a series is kept (its series row then counts the failed instance as unreadable).
    Files are grouped by their slices' ``unit`` ("series:<h>"), sizes are the slices' (rows,
    columns) (a DICOM slice is its header's Rows x Columns). Each file of a series with more
    than one size becomes an ``InputRead`` with ``error`` the reason ``check_series_sizes``
    gives (it names no file); other reads are returned unchanged, in order.
    """
    series: dict[str, dict[tuple[int, int], list[Path]]] = {}
    for r in reads:
        if r.kind != "dicom" or not r.slices or not r.slices[0].unit.startswith("series:"):
            continue
        for shape in dict.fromkeys(s.image.shape[:2] for s in r.slices):
            series.setdefault(r.slices[0].unit, {}).setdefault(shape, []).append(r.path)
    bad = _mixed_size_reasons(series)
    return [InputRead(r.path, r.kind, error=bad[r.path]) if r.path in bad else r for r in reads]


def _mixed_size_reasons(
    series: Mapping[str, Mapping[tuple[int, int], list[Path]]],
) -> dict[Path, str]:
    """Series key -> {(rows, columns): files} to the reason of each file of a series with more
    than one size (see ``check_series_sizes``)."""
    bad: dict[Path, str] = {}
    for shapes in series.values():
        if len(shapes) > 1:
            # the most common size is the series' own; ties: the smaller (rows, columns) first,
            # so the message is stable
            ranked = sorted(shapes.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            counts = ", ".join(
                f"{len(ps)} file{'s' if len(ps) != 1 else ''} of {c}x{r}" for (r, c), ps in ranked
            )
            (main_r, main_c), _ = ranked[0]
            for (r, c), ps in ranked:
                err = MixedSeriesError(
                    f"its series mixes slice sizes: {counts}; this file is {c}x{r}"
                    + (" (the series' most common size)" if (r, c) == (main_r, main_c) else "")
                    + "; a series must have one size: remove the files of another size than "
                    f"{main_c}x{main_r} or give them a series of their own (each file of the "
                    "series is listed with its size)"
                )
                for p in ps:
                    bad[p] = str(err)
    return bad


def collect_inputs(
    inputs: Sequence[str | os.PathLike[str]],
) -> tuple[list[SourceFile], list[tuple[Path, str]]]:
    """Expand files and folders into input files of every kind, and the problems found.

    Folders are searched recursively (sorted; names starting with "." below the folder given are
    skipped, the folder given itself may lie anywhere); kinds are found by content
    (``mriscan.io.classify_file``); a file given by name is kept even if its kind is unknown (it
    then fails in its own row). Returns ``(files, problems)`` where problems are ``(path,
    reason)`` for inputs that do not exist, sub-folders that could not be listed, files found in
    a folder that are not inputs (with the reason), and folders with no file at all. A file
    reached more than once (the same input given twice, a folder and a file or sub-folder inside
    it, a symbolic or hard link to a file already found: the same device and inode) is listed
    once, where it was first reached, so it is read and scored once; how many were so is logged
    as a warning, with an example (a user who gave a file twice sees why it has one row).
    """
    files: list[SourceFile] = []
    problems: list[tuple[Path, str]] = []
    # the file's identity (device, inode: links of both kinds) → where first reached
    seen: dict[Any, Path] = {}
    # files reached again: the images' (path, where first reached), as examples to show, and
    # how many of every kind (a scanner file's path may name the patient: never shown)
    again: list[tuple[Path, Path]] = []
    n_again = 0

    def once(found: Sequence[SourceFile]) -> list[SourceFile]:
        nonlocal n_again
        out = []
        for f in found:
            try:
                st = os.stat(f.path)
                key: Any = (st.st_dev, st.st_ino)
            except OSError:  # unreadable or gone: its own row says so; by its real path
                key = os.path.realpath(f.path)
            if key not in seen:
                seen[key] = Path(f.path)
                out.append(f)
                continue
            n_again += 1
            if f.kind == "image":
                again.append((Path(f.path), seen[key]))
        return out

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            errors: list = []
            found: list[SourceFile] = []
            unused: list[UnusedFile] = []
            _classify_all(sorted(_iter_files(p, errors)), found, unused)
            problems += sorted(set(errors))
            problems += [(u.path, u.reason) for u in unused]
            if not found and not errors and not unused:
                problems.append((p, "holds no JPEG/PNG, DICOM or NIfTI files"))
            files += once(found)
        elif not os.path.lexists(p):
            # a path typed on the command line is named as typed whatever its suffix (a
            # missing "x.dcm" would otherwise be a DICOM file's row, named by pseudonym)
            problems.append((p, "does not exist; check the path"))
        else:
            files += once([SourceFile(p, file_kind(p) or "image")])
    if n_again:
        example = " (DICOM/NIfTI files: their paths, which may name the patient, not shown)"
        if again:
            path, first = again[0]
            example = f": e.g. {path}" + ("" if path == first else f" (as {first})")
        log.warning(
            "%d input file(s) reached more than once are read once, where first reached%s",
            n_again, example,
        )  # fmt: skip
    return files, problems
