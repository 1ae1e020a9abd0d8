"""Data audit: duplicates, label conflicts, split leakage and shortcut risk, before training.

``audit(paths, ...)`` reads one or more data sets (class folders or ImageStores) and checks

- exact duplicates (file SHA-256), same pixels after decoding, near-duplicates (Pearson
  correlation of the 16×16 perceptual signatures above a threshold, found with the k-d tree of
  ``mriscan.neighbors``), the near-duplicate groups and their sizes;
- label conflicts: the same (or a near-same) slice filed under two labels, listed pair by pair;
- duplicates across sets and the leakage of a train/test pair (two sets, or a ``split.json``):
  duplicates, and patients (keyed Patient ID hashes) with slices on both sides;
- shortcut risk: per-class file metadata (size, aspect, colour mode, format, file size, JPEG
  quality, intensity and border statistics), and how well a classifier that sees only those
  metadata predicts the label under grouped cross-validation (ROC AUC), with the features that
  carry it; the same on simple statistics of the preprocessed slices, to show whether
  preprocessing removed the cue.

Class folders are listed as ``mriscan ingest`` lists them (JPEG/PNG, DICOM, NIfTI; the slices
of a volume or series are the items, named by the readers' pseudonyms); stores are audited on
their active records.

``write_report`` writes ``audit.md``, ``audit.json`` and PNG figures. Keras-free.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mriscan.duplicates import duplicate_groups, signatures
from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.io import decode_bytes, read_file, scan_class_folders
from mriscan.neighbors import cross_pairs, near_pairs
from mriscan.preprocess import PreprocessConfig, preprocess_batch
from mriscan.readers import check_series_sizes, file_sha256, read_input
from mriscan.scan import new_salt, salted_hash
from mriscan.splits import union_groups

__all__ = [
    "AUDIT_KEY",
    "EXIT_BOTH",
    "EXIT_CONFLICT",
    "EXIT_LEAKAGE",
    "AuditConfig",
    "AuditError",
    "AuditSet",
    "audit",
    "audit_key",
    "check_patients",
    "load_set",
    "prepare_out",
    "to_json",
    "write_report",
]

log = logging.getLogger(__name__)

#: Exit status of ``mriscan audit`` (``audit()["exit_status"]``): codes click does not use (it
#: takes 1 for errors and 2 for bad usage), so a CI job cannot read bad usage as leakage.
EXIT_LEAKAGE = 3
EXIT_CONFLICT = 4
EXIT_BOTH = EXIT_LEAKAGE | EXIT_CONFLICT  # 7
_THUMB = 96  # side of the display thumbnails in the figures
_BATCH = 64
_COUNT_LEVELS = (0.90, 0.95, 0.98, 0.99)
# ITU-T T.81 Annex K.1 luminance quantisation table (the IJG base table for quality scaling)
_STD_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_STD_LUMA_MEAN = float(np.mean(_STD_LUMA))


class AuditError(MriscanError, ValueError):
    """Audit inputs that cannot be checked (unknown layout, split that does not fit the store)."""


@dataclass(frozen=True)
class AuditConfig:
    """Options of an audit.

    Parameters
    ----------
    threshold : float
        Signature correlation (in [0, 1)) above which two slices are near-duplicates.
    conflict_threshold : float
        Near-duplicates filed under two labels are a label conflict (an error) above this
        correlation; between ``threshold`` and it they are reported as cross-class look-alikes
        (on figshare_br35h 1,671 pairs of different tumours' slices sit at 0.95-0.99, none above).
    borderline : float
        Pairs with correlation in ``(threshold - borderline, threshold]`` are shown as
        borderline (look-alikes or copies just missed).
    shortcut_auc : float
        Metadata-only AUC at or above which a set is flagged as having a shortcut.
    folds : int
        Folds of the grouped cross-validation of the shortcut classifier.
    max_pairs : int
        Pairs listed (and drawn) per table.
    workers : int, optional
        Threads reading and decoding files (default: CPU cores).
    seed : int
        Seed of the cross-validation folds and the classifier.
    min_groups : int
        Fewest independent groups (near-duplicate / patient / volume) a class needs for the
        shortcut AUC to be scored; below it the AUC is reported as undefined.
    """

    threshold: float = 0.95
    conflict_threshold: float = 0.99
    borderline: float = 0.02
    shortcut_auc: float = 0.75
    folds: int = 5
    max_pairs: int = 12
    workers: int | None = None
    seed: int = 0
    min_groups: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(
                f"threshold must be a correlation in [0, 1). Received: threshold={self.threshold}."
            )
        if not self.threshold <= self.conflict_threshold < 1.0:
            raise ConfigError(
                "conflict_threshold must be in [threshold, 1). Received: "
                f"conflict_threshold={self.conflict_threshold}."
            )
        if not 0.0 <= self.borderline <= self.threshold:
            raise ConfigError(
                f"borderline must be in [0, threshold]. Received: borderline={self.borderline}."
            )
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2. Received: folds={self.folds}.")
        if self.min_groups < 2:
            raise ConfigError(f"min_groups must be >= 2. Received: min_groups={self.min_groups}.")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1. Received: workers={self.workers}.")


@dataclass
class AuditSet:
    """One data set as the audit sees it: per-item arrays in a fixed order.

    Attributes
    ----------
    name : str
        Display name (the folder name).
    path : str
    kind : {"folder", "store"}
    class_names : tuple of str
    sources : list of str
        Path of each item relative to the set's root (``class/file.jpg``); a DICOM/NIfTI
        slice's pseudonym (``dicom/<series>/<instance>#<frame>``: one instance in two files
        gives one name).
    files : list of str
        The file each item came from, by the name the audit gives files: ``sources``' for a
        JPEG/PNG file and a store's record, the salted file pseudonym of a DICOM/NIfTI file of
        a class folder (``dicom-file/<h>``, ``nifti-file/<h>``: one per file).
    labels : ndarray of shape (N,), int64
    sha256 : list of str
        File hash ("" when the file could not be read).
    pixel_hash : list of str
        Hash of the decoded grayscale array with its shape ("" when unavailable).
    signatures : ndarray of shape (N, 16, 16), uint8
    thumbs : ndarray of shape (N, 96, 96), uint8
        Whole-slice display thumbnails (padded, not cropped).
    meta : dict of str to ndarray of shape (N,)
        Numeric metadata features (NaN where unknown).
    categorical : dict of str to list of str
        Colour mode and format per item.
    prep_stats : dict of str to ndarray of shape (N,)
        Simple statistics of the preprocessed slices (default ``PreprocessConfig``).
    store_positions : ndarray of shape (N,), int64
        Store record position of each item (-1 for folders and recorded exact duplicates).
    skipped : list of (str, str)
        Files (and folders) that were not audited, with the reason.
    notes : list of str
        What could not be checked and why.
    group_keys : list of str
        Split-group key of each item (``SampleRecord.group_key``: patient / volume / manifest
        group, ``""`` for plain images); joined with the near-duplicate groups.
    n_files : int
        Files (and unlistable folders) the set holds: a DICOM/NIfTI file may give many items.
    local_names : dict of str to str
        File pseudonym -> local path of the DICOM/NIfTI files of class folders (those in
        ``skipped`` and those in ``files``), for the console of ``mriscan audit --show-paths``
        only: never written to the report (scanner exports are often named after the
        patient).
    key_id : str
        Which key the patient hashes of ``group_keys`` were made with: ``AUDIT_KEY`` (class
        folders: this audit's own salt, shared by every folder of one audit), a store's
        identifier-key fingerprint (``ImageStore.key_id``; class folders too when audited
        beside a store made with the user's identifier key, see ``audit_key``), ``"own salt
        of <store>"`` (an older store with a salt of its own), or ``""`` when unknown (sets
        merged from different keys). Patients of two sets can be matched only when the two
        are equal.
    """

    name: str
    path: str
    kind: str
    class_names: tuple[str, ...]
    sources: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    sha256: list[str] = field(default_factory=list)
    pixel_hash: list[str] = field(default_factory=list)
    signatures: np.ndarray = field(default_factory=lambda: np.empty((0, 16, 16), np.uint8))
    thumbs: np.ndarray = field(default_factory=lambda: np.empty((0, _THUMB, _THUMB), np.uint8))
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    prep_stats: dict[str, np.ndarray] = field(default_factory=dict)
    store_positions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    group_keys: list[str] = field(default_factory=list)
    local_names: dict[str, str] = field(default_factory=dict)
    n_files: int = 0
    key_id: str = ""

    def __len__(self) -> int:
        return len(self.sources)

    def class_of(self, i: int) -> str:
        """Class name of item ``i``."""
        return self.class_names[int(self.labels[i])]


# ---------------------------------------------------------------------------------------------
# reading


def _jpeg_quality(img: Image.Image) -> float:
    """IJG quality (1-100) whose scaled standard luminance table has the file's mean step.

    Inverts libjpeg's ``jpeg_quality_scaling`` (jcparam.c: scale = 5000/q below 50, 200 - 2q
    above) on the mean of quantisation table 0 (order-independent); NaN for non-JPEG files or
    files without tables. An estimate: encoders with custom tables get their nearest IJG level.
    """
    tables = getattr(img, "quantization", None)
    if img.format not in ("JPEG", "MPO") or not tables or 0 not in tables:
        return float("nan")
    scale = 100.0 * float(np.mean(tables[0])) / _STD_LUMA_MEAN
    q = 5000.0 / scale if scale > 100.0 else (200.0 - scale) / 2.0
    return float(np.clip(q, 1.0, 100.0))


def _read_one(path: Path) -> dict[str, Any]:
    """File hash, header metadata and decoded grayscale slice of one file (errors captured)."""
    try:
        data = read_file(path)
    except ImageDecodeError as exc:
        return {"error": exc.reason}
    out: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "file_size": len(data)}
    try:
        with Image.open(io.BytesIO(data)) as img:
            out["format"] = str(img.format)
            out["mode"] = str(img.mode)
            out["quality"] = _jpeg_quality(img)
        gray = decode_bytes(data, path)
    except ImageDecodeError as exc:
        return {**out, "error": exc.reason}
    except Exception as exc:  # Pillow raises assorted errors on broken headers
        return {**out, "error": f"cannot read the image header ({exc})"}
    out["gray"] = gray
    return out


def _gray_stats(gray: np.ndarray) -> dict[str, float]:
    """Intensity statistics of a decoded slice (from its 256-bin histogram: no sort of
    megapixel arrays), and the level of its outer 5% frame."""
    h, w = gray.shape
    b = max(1, round(0.05 * min(h, w)))
    frame_sum = (
        gray[:b].sum(dtype=np.int64)
        + gray[-b:].sum(dtype=np.int64)
        + gray[b:-b, :b].sum(dtype=np.int64)
        + gray[b:-b, -b:].sum(dtype=np.int64)
    )
    frame_n = 2 * b * w + 2 * b * max(0, h - 2 * b)
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256.0)
    n = hist.sum()
    mean = float(hist @ levels / n)
    cdf = np.cumsum(hist) / n
    p5, p50, p95 = (float(np.searchsorted(cdf, q)) for q in (0.05, 0.5, 0.95))
    return {
        "intensity_mean": mean,
        "intensity_std": float(np.sqrt(max(hist @ (levels - mean) ** 2 / n, 0.0))),
        "intensity_p5": p5,
        "intensity_p50": p50,
        "intensity_p95": p95,
        "border_mean": float(frame_sum / max(frame_n, 1)),
        "background_fraction": float(hist[:16].sum() / n),
    }


def _prep_stats(slices: np.ndarray) -> dict[str, np.ndarray]:
    """Simple statistics of preprocessed slices (N, S, S) uint8: what a model could pick up
    without anatomy (brightness, contrast, padding, border)."""
    x = slices.reshape(len(slices), -1).astype(np.float32)
    s = slices.shape[1]
    b = max(1, round(0.05 * s))
    frame = np.concatenate(
        [
            slices[:, :b].reshape(len(slices), -1),
            slices[:, -b:].reshape(len(slices), -1),
            slices[:, :, :b].reshape(len(slices), -1),
            slices[:, :, -b:].reshape(len(slices), -1),
        ],
        axis=1,
    ).astype(np.float32)
    p5, p50, p95 = np.percentile(x, (5, 50, 95), axis=1)
    return {
        "mean": x.mean(axis=1),
        "std": x.std(axis=1),
        "p5": p5,
        "p50": p50,
        "p95": p95,
        "zero_fraction": np.mean(x == 0, axis=1),
        "border_mean": frame.mean(axis=1),
    }


def _is_store(path: Path) -> bool:
    return (path / "index.json").is_file()


@dataclass(frozen=True)
class _Item:
    """One file to read: ``source`` names it in the report (the relative path of a plain image;
    for a DICOM/NIfTI file of a class folder a salted pseudonym, its slices get the readers'
    pseudonyms); ``position`` is its store row (-1: none)."""

    path: Path | None
    source: str
    label: int
    position: int = -1
    kind: str = "image"
    group_key: str = ""


def _store_items(path: Path) -> tuple[list[_Item], tuple[str, ...], list[str]]:
    """Items of a store's active records and recorded duplicates, its class names, and notes
    on what is not audited (retired records)."""
    from mriscan.store import ImageStore
    from mriscan.store.index import RETIRED_FLAGS

    with ImageStore.open(path) as store:
        index = store.index
        names = tuple(index.class_names)
        roots = [Path(s) for s in index.sources]

        def resolve(src: str, kind: str) -> Path | None:
            if kind != "image":  # DICOM/NIfTI records hold pseudonyms, never paths
                return None
            for root in roots:
                p = root / src
                if p.is_file():
                    return p
            return None

        items = [
            _Item(
                resolve(r.source, r.kind), r.source, int(r.label), r.position, r.kind, r.group_key
            )
            for r in index.records
            if r.active
        ]
        retired = Counter(
            next(f for f in r.flags if f in RETIRED_FLAGS) for r in index.records if not r.active
        )
        for d in index.duplicates:
            folder = d["source"].split("/", 1)[0]
            label = (
                names.index(folder)
                if folder in names
                else int(index.records[d["duplicate_of"]].label)
            )
            kind = "image" if "-file/" not in d["source"] else d["source"].split("-file/")[0]
            items.append(_Item(resolve(d["source"], kind), d["source"], label, -1, kind))
    notes = []
    if retired:
        notes.append(
            f"{sum(retired.values())} retired records are not audited (their file was "
            + ", ".join(f"{_RETIRED_WORDS[k]}: {v}" for k, v in sorted(retired.items()))
            + "); training, CV and evaluation no longer use them."
        )
    return items, names, notes


_RETIRED_WORDS = {
    "removed": "deleted",
    "replaced": "overwritten",
    "relabelled": "moved to another class",
    "conflict": "also filed under another class",
}


def _folder_items(path: Path, salt: bytes) -> tuple[list[_Item], tuple[str, ...], list]:
    """Items of a class-folder tree (``mriscan.io.scan_class_folders``, as ingest lists it:
    JPEG/PNG, DICOM and NIfTI; a nested copy of the class layout is refused), its class names
    and the sub-folders that could not be listed ``(relative path, reason)``."""
    listing = scan_class_folders(path)
    items = []
    for k, files in enumerate(listing.classes.values()):
        for f in files:
            rel = f.path.relative_to(path).as_posix()
            src = rel if f.kind == "image" else f"{f.kind}-file/{salted_hash(salt, 'file', rel)}"
            items.append(_Item(f.path, src, k, -1, f.kind))
    bad = [(Path(os.path.relpath(p, path)).as_posix(), why) for p, why in listing.unreadable]
    return items, tuple(listing.classes), bad


#: ``AuditSet.key_id`` of class folders: their Patient IDs are hashed with the audit's own salt
AUDIT_KEY = "this audit's salt"


def _store_key_id(path: Path) -> str:
    """``AuditSet.key_id`` of a store: its identifier-key fingerprint, or, for an older store
    hashed with a salt of its own, a text naming that store (it matches only itself)."""
    from mriscan.store import ImageStore

    with ImageStore.open(path) as store:
        return store.key_id or f"own salt of {path.resolve()}"


def audit_key(paths: Sequence[str | os.PathLike[str]]) -> tuple[bytes, str]:
    """The key class folders of one audit are read with, and their ``AuditSet.key_id``.

    When ``paths`` hold class folders and a store made with the user's identifier key (its
    ``ImageStore.key_id`` is the fingerprint of ``mriscan.keys.identifier_key``, read, never
    created, here), that key and its fingerprint: the folders' Patient IDs then hash as the
    store's do, so patients on both sides of a folder-vs-store pair are found. Otherwise a
    fresh salt (``mriscan.scan.new_salt``) and ``AUDIT_KEY``: a store of another key (or an
    older one with a salt of its own), or no key file, cannot be matched, and
    ``check_patients`` says so.

    Raises
    ------
    StoreError
        A store's index cannot be read (as ``load_set`` would raise).
    """
    from mriscan.keys import identifier_key, key_fingerprint

    paths = [Path(p) for p in paths]
    stores = [p for p in paths if _is_store(p)]
    if stores and len(stores) < len(paths):
        try:
            key = identifier_key(create=False)
        except ConfigError:  # no key file, or an unreadable one: nothing to match with
            key = None
        if key is not None:
            fp = key_fingerprint(key)
            if any(_store_key_id(p) == fp for p in stores):
                return key, fp
    return new_salt(), AUDIT_KEY


def _count_items(path: Path) -> int:
    """Files a set will read (for the progress total); checks the layout like ``load_set``."""
    if _is_store(path):
        from mriscan.store import ImageStore

        with ImageStore.open(path) as store:
            index = store.index
            return sum(r.active for r in index.records) + len(index.duplicates)
    return sum(len(v) for v in scan_class_folders(path).classes.values())


def load_set(
    path: str | os.PathLike[str],
    config: AuditConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    salt: bytes | None = None,
    key_id: str = AUDIT_KEY,
) -> AuditSet:
    """Read a class folder or an ImageStore into an ``AuditSet``.

    Every file is read once: SHA-256, Pillow header (format, mode, quantisation tables), safe
    decode (``mriscan.io``), then the 16×16 signature, a display thumbnail and the slice as the
    default ``PreprocessConfig`` would store it. Class folders are listed like ``mriscan
    ingest`` lists them (``mriscan.io.scan_class_folders``): DICOM files and series and NIfTI
    volumes are read with ``mriscan.readers.read_input``, each slice an item named by the
    readers' salted pseudonyms (never by file or folder names, which in scanner exports are
    often the patient's). For a store, only active records are audited (retired ones are noted);
    the files are found under the folders recorded in its index; when some are not there (or
    the store holds DICOM/NIfTI slices, stored under pseudonyms) the store's own records,
    signatures and slices are used and the report notes what could not be checked.

    Parameters
    ----------
    path : path
        A folder with one sub-folder per class, or a store folder (holding ``index.json``).
    config : AuditConfig, optional
    progress : callable(done, total), optional
    salt : bytes, optional
        Key of the pseudonyms and Patient ID hashes of DICOM/NIfTI inputs of class folders
        (default: a fresh random salt, ``mriscan.scan.new_salt``: names are stable within one
        audit only).
    key_id : str
        ``AuditSet.key_id`` of a class folder read with ``salt``: ``AUDIT_KEY`` for a salt of
        the audit's own, the fingerprint (``mriscan.keys.key_fingerprint``) when ``salt`` is
        the identifier key (``audit_key``). Ignored for a store (its own fingerprint).

    Returns
    -------
    AuditSet

    Raises
    ------
    EmptyDatasetError
        If a folder has fewer than two class folders, an empty or unreadable one, or a nested
        copy of the class layout (``mriscan.io.scan_class_folders``).
    AuditError
        If no file of the set could be decoded.
    """
    config = config or AuditConfig()
    path = Path(path)
    salt = salt if salt is not None else new_salt()
    if _is_store(path):
        items, names, notes = _store_items(path)
        kind, unlisted, key_id = "store", [], _store_key_id(path)
    else:
        items, names, unlisted = _folder_items(path, salt)
        kind, notes = "folder", []
    aset = AuditSet(
        name=path.resolve().name, path=str(path), kind=kind, class_names=names, key_id=key_id
    )
    aset.notes += notes
    aset.skipped += unlisted
    aset.n_files = len(items) + len(unlisted)
    if kind == "store" and any(it.path is None for it in items):
        missing = [it for it in items if it.path is None and it.kind == "image"]
        scanner = sum(it.path is None and it.kind != "image" for it in items)
        if scanner:
            aset.notes.append(
                f"{scanner} of {len(items)} items are DICOM/NIfTI slices, stored under "
                "pseudonymous names by design (no file paths are kept): file-level checks "
                "(format, colour mode, file size, JPEG quality, decoded pixels) use the store's "
                "records and slices for the whole set."
            )
        if missing:
            from mriscan.store import ImageStore

            with ImageStore.open(path) as store:
                hidden = any(s.startswith("folder:") for s in store.index.sources)
            aset.notes.append(
                f"{len(missing)} of {len(items)} source files are not found under the store's "
                "recorded folders"
                + (
                    " (the store records its raw folders by salted pseudonym only, as folder "
                    "names can name patients; audit the raw folder itself for file-level checks)"
                    if hidden
                    else ""
                )
                + ": file-level checks (format, colour mode, file size, JPEG quality, decoded "
                "pixels) use the store's records and slices for the whole set instead."
            )
        return _load_from_store(path, aset, items)
    return _load_files(aset, items, config, progress, salt, path)


def _read_item(
    item: _Item, salt: bytes, root: Path, series_errors: dict[Path, str]
) -> dict[str, Any]:
    """Hash, file metadata and decoded slices of one item (errors captured, never raised).

    Returns ``{"error": reason}`` or the file's ``sha256``, ``file_size``, ``format``, ``mode``,
    ``quality`` and ``slices``: a list of ``(name, gray (H, W) uint8, group key)``.
    """
    if item.kind == "image":
        r = _read_one(item.path)
        if "error" in r:
            return r
        r["slices"] = [(item.source, r.pop("gray"), item.group_key)]
        return r
    if item.path in series_errors:
        return {"error": series_errors[item.path]}
    got = read_input(item.path, item.kind, salt=salt, root=root)
    if got.error is not None:
        return {"error": got.error}
    if got.skipped is not None:
        return {"error": f"no image to audit ({got.skipped})"}
    if got.excluded is not None:  # e.g. a CT among MR series: ingest would not store it either
        return {"error": f"not read, as `mriscan ingest` would not store it: {got.excluded}"}
    if not got.slices:  # read_input gives an error for a file without slices; never divide by 0
        return {"error": "the file gave no slice"}
    try:
        sha, size = file_sha256(item.path), os.path.getsize(item.path)
    except OSError as exc:
        return {"error": f"cannot read file ({exc.strerror or exc})"}
    return {
        "sha256": sha,
        # per slice: a DICOM file's bytes are its frames; a NIfTI volume's are not per slice
        "file_size": size / len(got.slices) if item.kind == "dicom" else float("nan"),
        "format": "DICOM" if item.kind == "dicom" else "NIfTI",
        "mode": "-",
        "quality": float("nan"),
        "slices": [(s.source, s.image, s.group_key) for s in got.slices],
        "note": got.note,
    }


def _load_files(aset, items, config, progress, salt, root) -> AuditSet:
    prep_cfg = PreprocessConfig()
    rows: dict[str, list] = defaultdict(list)
    n_done = 0
    workers = config.workers or os.cpu_count() or 1
    series_errors = check_series_sizes([it.path for it in items if it.kind == "dicom"])
    n_scanner = sum(it.kind != "image" for it in items)
    read_notes: list[str] = []

    def read(item: _Item) -> dict[str, Any]:
        return _read_item(item, salt, root, series_errors)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), _BATCH):
            chunk = items[start : start + _BATCH]
            results = list(pool.map(read, chunk))
            grays, kept = [], []
            for it, r in zip(chunk, results, strict=True):
                if "error" in r:
                    reason = r["error"]
                    if it.kind != "image":  # readers' messages may hold the path: not in reports
                        aset.local_names[it.source] = str(it.path)
                        parts = {str(it.path), os.path.relpath(it.path, root), it.path.name}
                        for part in sorted(parts, key=len, reverse=True):
                            reason = reason.replace(part, it.source)
                    aset.skipped.append((it.source, reason))
                    continue
                if r.get("note"):
                    read_notes.append(r["note"])
                n = len(r["slices"])
                for k, (name, g, key) in enumerate(r["slices"]):
                    # the exact-duplicate key of a slice: its file's hash (and its place in a
                    # multi-slice file, so the slices of one volume are not "copies")
                    sha = r["sha256"] if n == 1 else _sha(f"{r['sha256']}#{k}".encode())
                    grays.append(g)
                    kept.append((name, it, key, sha, r, g))
            if grays:
                sigs = signatures(grays)
                thumbs = preprocess_batch(
                    grays, size=_THUMB, crop=False, aspect="pad", align=False, smooth=0.0
                )
                prepped = preprocess_batch(grays, prep_cfg)
                rows["sig"].append(sigs)
                rows["thumb"].append(thumbs)
                for k, v in _prep_stats(prepped).items():
                    rows[f"prep:{k}"].append(v)
            for name, it, key, sha, r, g in kept:
                h, w = g.shape
                aset.sources.append(name)
                aset.files.append(it.source)
                if it.kind != "image":  # --show-paths names a label conflict's file by path
                    aset.local_names[it.source] = str(it.path)
                aset.group_keys.append(key)
                rows["label"].append(it.label)
                rows["pos"].append(it.position)
                aset.sha256.append(sha)
                aset.pixel_hash.append(_sha(f"{h}x{w}".encode() + g.tobytes()))
                meta = {
                    "height": float(h),
                    "width": float(w),
                    "aspect": w / h,
                    "megapixels": h * w / 1e6,
                    "file_size": float(r["file_size"]),
                    "bytes_per_pixel": r["file_size"] / (h * w),
                    "jpeg_quality": r["quality"],
                    **_gray_stats(g),
                }
                for k, v in meta.items():
                    aset.meta.setdefault(k, []).append(v)
                aset.categorical.setdefault("mode", []).append(r["mode"])
                aset.categorical.setdefault("format", []).append(r["format"])
            n_done += len(chunk)
            if progress is not None:
                progress(n_done, len(items))
    if not aset.sources:
        raise AuditError(
            f"{aset.path}: none of its {len(items)} files could be decoded "
            f"(first: {aset.skipped[0] if aset.skipped else 'no files'}). Check the folder."
        )
    if n_scanner:
        whose = (
            "of this run"
            if aset.key_id == AUDIT_KEY
            else "under the identifier key of the store audited beside them (as the store's)"
        )
        aset.notes.append(
            f"{n_scanner} DICOM/NIfTI files were read as in `mriscan ingest`; their slices are "
            f"named by salted pseudonyms {whose} (dicom/<series>/<instance>#<frame>, "
            "nifti/<volume>#<slice>), never by file or folder names."
        )
    if read_notes:  # by count: the files are named by pseudonym only
        aset.notes.append(
            f"{len(read_notes)} file(s) read with a note: " + "; ".join(sorted(set(read_notes))[:3])
        )
    aset.labels = np.asarray(rows["label"], np.int64)
    aset.store_positions = np.asarray(rows["pos"], np.int64)
    aset.signatures = np.concatenate(rows["sig"])
    aset.thumbs = np.concatenate(rows["thumb"])
    aset.meta = {k: np.asarray(v, np.float64) for k, v in aset.meta.items()}
    aset.prep_stats = {
        k.split(":", 1)[1]: np.concatenate(v) for k, v in rows.items() if k.startswith("prep:")
    }
    _note_empty_classes(aset)
    return aset


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _note_empty_classes(aset: AuditSet) -> None:
    """A note for every class none of whose files could be decoded (its metrics are undefined)."""
    for k, name in enumerate(aset.class_names):
        if not np.any(aset.labels == k):
            aset.notes.append(
                f"class {name!r} has 0 decodable files: its metadata, duplicates and shortcut "
                "metrics are undefined (see the skipped files)."
            )


def _load_from_store(path: Path, aset: AuditSet, items) -> AuditSet:
    """Store-only view: records, stored signatures and slices (no source files)."""
    from mriscan.store import ImageStore

    recs = [(it.source, it.label, it.position) for it in items if it.position >= 0]
    with ImageStore.open(path) as store:
        sigs = store.signatures()
        pos = np.array([p for *_, p in recs], np.int64)
        slices, _ = store.read_batch(pos)
        index = store.index
    aset.sources = [s for s, *_ in recs]
    aset.files = list(aset.sources)  # a record is one slice of its file, by its own name
    aset.labels = np.array([lab for _, lab, _ in recs], np.int64)
    aset.store_positions = pos
    aset.group_keys = [index.records[p].group_key for p in pos]
    # the exact-duplicate key of a slice of a multi-slice file: its file's hash and its name
    aset.sha256 = [
        index.records[p].sha256
        if index.records[p].kind == "image"
        else _sha(f"{index.records[p].sha256}#{index.records[p].source}".encode())
        for p in pos
    ]
    aset.pixel_hash = [index.records[p].pixel_sha256 or "" for p in pos]
    aset.signatures = sigs[pos]
    aset.thumbs = preprocess_batch(list(slices), size=_THUMB, crop=False, align=False, smooth=0.0)
    h = np.array([index.records[p].height for p in pos], np.float64)
    w = np.array([index.records[p].width for p in pos], np.float64)
    aset.meta = {"height": h, "width": w, "aspect": w / h, "megapixels": h * w / 1e6}
    aset.prep_stats = _prep_stats(slices) if store.config == PreprocessConfig() else {}
    if not aset.prep_stats:
        aset.notes.append(
            "the store was preprocessed with other settings than the default PreprocessConfig; "
            "the preprocessed-slice shortcut check is skipped."
        )
    _note_empty_classes(aset)
    n_dup = sum(1 for it in items if it.position < 0)
    if n_dup:
        aset.notes.append(
            f"{n_dup} exact duplicates recorded at ingest are counted from the index only."
        )
    return aset


# ---------------------------------------------------------------------------------------------
# checks


def _hash_groups(keys: Sequence[str]) -> list[list[int]]:
    """Items sharing a non-empty key, as lists of indices (groups of 2 or more)."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k:
            by[k].append(i)
    return [v for v in by.values() if len(v) > 1]


def _pair_row(a: AuditSet, i: int, b: AuditSet, j: int, corr: float, kind: str) -> dict:
    return {
        "a": a.sources[i],
        "a_class": a.class_of(i),
        "b": b.sources[j],
        "b_class": b.class_of(j),
        "correlation": round(float(corr), 4),
        "kind": kind,
    }


def _conflict_row(aset: AuditSet, i: int, j: int, corr: float, kind: str, shared: set[str]) -> dict:
    """A label conflict of items ``i`` and ``j`` of ``aset`` (``_pair_row``), with the files
    they came from (``a_file``, ``b_file``: ``AuditSet.files``). A slice name that more than
    one item of the set holds (``shared``: one DICOM instance copied into two files, under two
    classes) is followed by its file's name, so each side of the conflict is named by a name
    of its own."""
    row = _pair_row(aset, i, aset, j, corr, kind)
    row["a_file"], row["b_file"] = aset.files[int(i)], aset.files[int(j)]
    for side in ("a", "b"):
        if row[side] in shared:
            row[side] = f"{row[side]} in {row[side + '_file']}"
    return row


def _kind(a: AuditSet, i: int, b: AuditSet, j: int) -> str:
    if a.sha256[i] and a.sha256[i] == b.sha256[j]:
        return "exact"
    if a.pixel_hash[i] and a.pixel_hash[i] == b.pixel_hash[j]:
        return "pixels"
    return "near"


def _size_histogram(groups: np.ndarray) -> dict[str, int]:
    sizes = np.bincount(np.bincount(groups))
    bins = {"1": (1, 1), "2": (2, 2), "3": (3, 3), "4-5": (4, 5), "6-10": (6, 10)}
    out = {k: int(sizes[lo : hi + 1].sum()) for k, (lo, hi) in bins.items()}
    out[">10"] = int(sizes[11:].sum())
    return out


def check_set(aset: AuditSet, config: AuditConfig) -> dict[str, Any]:
    """Duplicates, near-duplicates, groups and label conflicts within one set.

    Returns
    -------
    dict
        JSON-ready: ``exact``, ``pixels``, ``near``, ``borderline``, ``groups``,
        ``label_conflicts`` (pairs of items with different labels that are exact, pixel-identical
        or near-duplicates; each side named by a name of its own, with its file in ``a_file``
        and ``b_file``, see ``_conflict_row``), and the internal ``_pairs`` (i, j, corr) arrays
        for figures.
    """
    t = config.threshold
    exact = _hash_groups(aset.sha256)
    pixel = [g for g in _hash_groups(aset.pixel_hash) if len({aset.sha256[i] for i in g}) > 1]
    lo = max(0.0, t - config.borderline)
    i, j, c = near_pairs(aset.signatures, threshold=lo)
    above = c > t
    # the split groups ingest would make: near-duplicates of one class (the cross-class pairs
    # are the conflicts and look-alikes below), joined by patient / volume / manifest keys
    groups = duplicate_groups(aset.signatures, labels=aset.labels, threshold=t)
    if any(aset.group_keys):  # slices of one patient / volume / manifest group stay together
        groups = union_groups(groups, aset.group_keys)
    conflicts = []
    seen = set()  # conflicting pairs by item: two items may share a name (see _conflict_row)
    shared = {n for n, m in Counter(aset.sources).items() if m > 1}
    for g in exact + pixel:
        if len({int(aset.labels[k]) for k in g}) > 1:
            for k in g[1:]:
                if aset.labels[k] != aset.labels[g[0]]:
                    conflicts.append(
                        _conflict_row(aset, g[0], k, 1.0, _kind(aset, g[0], aset, k), shared)
                    )
                    seen.add((min(g[0], k), max(g[0], k)))
    lookalikes = []
    for a_, b_, cc in zip(i[above], j[above], c[above], strict=True):
        if aset.labels[a_] != aset.labels[b_]:
            if (min(a_, b_), max(a_, b_)) in seen:
                continue
            kind = _kind(aset, a_, aset, b_)
            if cc > config.conflict_threshold or kind != "near":
                conflicts.append(_conflict_row(aset, a_, b_, cc, kind, shared))
            else:
                lookalikes.append(_pair_row(aset, a_, aset, b_, cc, kind))
    conflicts.sort(key=lambda r: -r["correlation"])
    lookalikes.sort(key=lambda r: -r["correlation"])
    order = np.argsort(-c[above], kind="stable")
    worst = [
        _pair_row(aset, i[above][k], aset, j[above][k], c[above][k], "")
        for k in order[: config.max_pairs]
    ]
    for r, k in zip(worst, order, strict=False):
        r["kind"] = _kind(aset, i[above][k], aset, j[above][k])
    bl = np.flatnonzero(~above)
    bl = bl[np.argsort(-c[bl], kind="stable")][: config.max_pairs]
    sizes = np.bincount(groups)
    largest = np.argsort(-sizes, kind="stable")[:5]
    near_items = np.unique(np.r_[i[above], j[above]])
    by_class = Counter(aset.class_of(k) for k in near_items)
    return {
        "name": aset.name,
        "path": aset.path,
        "kind": aset.kind,
        "files": aset.n_files or len(aset) + len(aset.skipped),
        "files_not_audited": len(aset.skipped),
        "decoded": len(aset),  # slices: a DICOM/NIfTI file may give many
        "skipped": [{"source": s, "reason": r} for s, r in aset.skipped],
        "classes": {n: int(np.sum(aset.labels == k)) for k, n in enumerate(aset.class_names)},
        "notes": aset.notes,
        "exact": {
            "groups": len(exact),
            "files": sum(len(g) for g in exact),
            "extra_copies": sum(len(g) - 1 for g in exact),
            "examples": [[aset.sources[k] for k in g] for g in exact[: config.max_pairs]],
        },
        "pixels": {
            "groups": len(pixel),
            "files": sum(len(g) for g in pixel),
            "examples": [[aset.sources[k] for k in g] for g in pixel[: config.max_pairs]],
        },
        "near": {
            "threshold": t,
            "pairs": int(above.sum()),
            "pairs_not_byte_identical": int(
                sum(
                    1
                    for a_, b_ in zip(i[above], j[above], strict=True)
                    if aset.sha256[a_] != aset.sha256[b_]
                )
            ),
            "items": len(near_items),
            "items_by_class": dict(sorted(by_class.items())),
            "worst": worst,
        },
        "borderline": {
            "range": [round(lo, 4), t],
            "pairs": int(len(bl) and (~above).sum()),
            "examples": [_pair_row(aset, i[k], aset, j[k], c[k], "near") for k in bl],
        },
        "groups": {
            # near-duplicate groups, joined with patient / volume / manifest groups when known
            "with_keys": bool(any(aset.group_keys)),
            "count": len(sizes),
            "size_histogram": _size_histogram(groups),
            "largest": [
                {
                    "size": int(sizes[g]),
                    "classes": dict(Counter(aset.class_of(k) for k in np.flatnonzero(groups == g))),
                }
                for g in largest
                if sizes[g] > 1
            ],
        },
        "label_conflicts": conflicts,
        "conflict_threshold": config.conflict_threshold,
        "cross_class_lookalikes": {
            "pairs": len(lookalikes),
            "by_classes": dict(
                Counter(" / ".join(sorted((r["a_class"], r["b_class"]))) for r in lookalikes)
            ),
            "examples": lookalikes[: config.max_pairs],
        },
        "_pairs": (i[above], j[above], c[above], i[~above], j[~above], c[~above]),
        "_groups": groups,
    }


def check_cross(a: AuditSet, b: AuditSet, config: AuditConfig) -> dict[str, Any]:
    """Items of ``b`` that have an exact, pixel-identical or near duplicate in ``a``.

    Returns
    -------
    dict
        JSON-ready: counts of pairs and of ``b`` items at several correlation levels, the
        matched ``b`` items by class (exact / pixels / near, at ``config.threshold``), the worst
        pairs, borderline pairs, and ``_pairs`` for figures.
    """
    t = config.threshold
    lo = max(0.0, min(t - config.borderline, min(_COUNT_LEVELS)))
    if len(a) and len(b):
        i, j, c = cross_pairs(a.signatures, b.signatures, threshold=lo)
    else:  # a side left empty (e.g. every test file of a split deleted since)
        i, j, c = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    sha_a = {h: k for k, h in enumerate(a.sha256) if h}
    pix_a = {h: k for k, h in enumerate(a.pixel_hash) if h}
    matched: dict[int, tuple[str, int, float]] = {}
    for k in range(len(b)):
        if b.sha256[k] in sha_a:
            matched[k] = ("exact", sha_a[b.sha256[k]], 1.0)
        elif b.pixel_hash[k] and b.pixel_hash[k] in pix_a:
            matched[k] = ("pixels", pix_a[b.pixel_hash[k]], 1.0)
    above = c > t
    order = np.argsort(-c, kind="stable")
    for k in order:
        if c[k] <= t:
            break
        matched.setdefault(int(j[k]), ("near", int(i[k]), float(c[k])))
    by_class: dict[str, dict[str, int]] = {
        n: {"items": int(np.sum(b.labels == q)), "exact": 0, "pixels": 0, "near": 0}
        for q, n in enumerate(b.class_names)
    }
    for k, (kind, _, _) in matched.items():
        by_class[b.class_of(k)][kind] += 1
    for row in by_class.values():
        row["leaked"] = row["exact"] + row["pixels"] + row["near"]
        row["share"] = round(row["leaked"] / row["items"], 4) if row["items"] else 0.0
    worst_keys = sorted(matched, key=lambda k: (-matched[k][2], k))[: config.max_pairs]
    worst = [_pair_row(a, matched[k][1], b, k, matched[k][2], matched[k][0]) for k in worst_keys]
    levels = {}
    for lv in sorted({*_COUNT_LEVELS, t}):
        m = c > lv
        levels[f"{lv:.2f}"] = {"pairs": int(m.sum()), "b_items": len(np.unique(j[m]))}
    bl = np.flatnonzero((c <= t) & (c > t - config.borderline))
    bl = bl[np.argsort(-c[bl], kind="stable")][: config.max_pairs]
    return {
        "a": a.name,
        "b": b.name,
        "threshold": t,
        "pairs": int(above.sum()),
        "levels": levels,
        "b_items_matched": len(matched),
        "by_class": by_class,
        "worst": worst,
        "borderline": [_pair_row(a, i[k], b, j[k], c[k], "near") for k in bl],
        "_matched": matched,
        "_borderline": (i[bl], j[bl], c[bl]),
    }


def check_patients(a: AuditSet, b: AuditSet) -> dict[str, Any]:
    """Patients with slices in both ``a`` (train) and ``b`` (test): the same keyed hash of the
    DICOM Patient ID (``patient:<h>`` in ``AuditSet.group_keys``,
    ``mriscan.splits.patient_keys``), which holds only when both were hashed with one key
    (``AuditSet.key_id``).

    Returns
    -------
    dict
        JSON-ready: ``checked`` (bool), ``why_not`` ("" or why the sets cannot be compared:
        different keys), ``train_patients`` / ``test_patients`` (patients on each side, when
        checked), ``patients`` (how many are on both sides), ``test_slices`` /
        ``train_slices`` (their slices on each side), ``by_class`` (test slices per class) and
        ``shared``: per patient, by pseudonym (the keyed hash, never the ID), its slices on
        each side and the test slices' classes; largest first.
    """
    from mriscan.splits import patient_keys

    out: dict[str, Any] = {
        "checked": False,
        "why_not": "",
        "patients": 0,
        "test_slices": 0,
        "train_slices": 0,
        "by_class": {},
        "shared": [],
    }
    if not a.key_id or not b.key_id or a.key_id != b.key_id:
        out["why_not"] = (
            f"the two sides' patient IDs were hashed with different keys (train: "
            f"{a.key_id or 'several keys'}; test: {b.key_id or 'several keys'}), so one "
            "patient would have two hashes; audit two class folders together, two stores "
            "ingested with the same identifier key, or a class folder beside a store made "
            "with your identifier key ($MRISCAN_KEY_FILE: the folder is then read with it)"
        )
        return out
    out["checked"] = True

    def by_patient(s: AuditSet) -> dict[str, list[int]]:
        found: dict[str, list[int]] = defaultdict(list)
        for i, key in enumerate(s.group_keys):
            for p in patient_keys(key):
                found[p].append(i)
        return found

    train, test = by_patient(a), by_patient(b)
    both = sorted(set(train) & set(test), key=lambda p: (-len(test[p]), p))
    shared = []
    for p in both:
        classes = Counter(b.class_of(i) for i in test[p])
        shared.append(
            {
                "patient": p,
                "train_slices": len(train[p]),
                "test_slices": len(test[p]),
                "test_classes": dict(sorted(classes.items())),
            }
        )
    test_items = sorted({i for p in both for i in test[p]})
    out.update(
        train_patients=len(train),
        test_patients=len(test),
        patients=len(both),
        test_slices=len(test_items),
        train_slices=len({i for p in both for i in train[p]}),
        by_class=dict(sorted(Counter(b.class_of(i) for i in test_items).items())),
        shared=shared,
    )
    return out


def _subset(aset: AuditSet, idx: np.ndarray, name: str) -> AuditSet:
    """The items ``idx`` of a set as a set of their own."""
    idx = np.asarray(idx, np.int64)
    return AuditSet(
        name=name,
        path=aset.path,
        kind=aset.kind,
        class_names=aset.class_names,
        sources=[aset.sources[k] for k in idx],
        files=[aset.files[k] for k in idx],
        labels=aset.labels[idx],
        sha256=[aset.sha256[k] for k in idx],
        pixel_hash=[aset.pixel_hash[k] for k in idx],
        signatures=aset.signatures[idx],
        thumbs=aset.thumbs[idx],
        meta={k: v[idx] for k, v in aset.meta.items()},
        categorical={k: [v[q] for q in idx] for k, v in aset.categorical.items()},
        prep_stats={k: v[idx] for k, v in aset.prep_stats.items()},
        store_positions=aset.store_positions[idx],
        group_keys=[aset.group_keys[k] for k in idx] if aset.group_keys else [],
        key_id=aset.key_id,
    )


def _merge(sets: Sequence[AuditSet], name: str) -> AuditSet:
    """Several sets as one (labels remapped onto the union of class names, in order)."""
    if len(sets) == 1:
        return sets[0]
    names: list[str] = []
    for s in sets:
        names += [n for n in s.class_names if n not in names]
    keys = set.intersection(*(set(s.meta) for s in sets))
    cats = set.intersection(*(set(s.categorical) for s in sets))
    preps = set.intersection(*(set(s.prep_stats) for s in sets))
    return AuditSet(
        name=name,
        path=", ".join(s.path for s in sets),
        kind="+".join(sorted({s.kind for s in sets})),
        class_names=tuple(names),
        sources=[f"{s.name}/{src}" for s in sets for src in s.sources],
        files=[f"{s.name}/{f}" for s in sets for f in s.files],
        labels=np.concatenate(
            [[names.index(s.class_of(k)) for k in range(len(s))] for s in sets]
        ).astype(np.int64),
        sha256=[h for s in sets for h in s.sha256],
        pixel_hash=[h for s in sets for h in s.pixel_hash],
        signatures=np.concatenate([s.signatures for s in sets]),
        thumbs=np.concatenate([s.thumbs for s in sets]),
        meta={k: np.concatenate([s.meta[k] for s in sets]) for k in keys},
        categorical={k: [v for s in sets for v in s.categorical[k]] for k in cats},
        prep_stats={k: np.concatenate([s.prep_stats[k] for s in sets]) for k in preps},
        store_positions=np.concatenate([s.store_positions for s in sets]),
        group_keys=[k for s in sets for k in (s.group_keys if s.group_keys else [""] * len(s))],
        key_id=sets[0].key_id if len({s.key_id for s in sets}) == 1 else "",
    )


def _split_sets(aset: AuditSet, split_path: Path) -> tuple[AuditSet, AuditSet, dict[str, Any]]:
    """Train (+ validation) and test items of a store from a ``split.json``, on the store's
    current content, and what changed since the split was made.

    A split position whose record the store has retired since (``SampleRecord.active`` False:
    its file was deleted, overwritten, moved to another class, or its bytes filed under another
    class) is not audited as it was: it is listed under ``changed`` and replaced by the file's
    current content where there is one (the active record or recorded exact duplicate with the
    same file id, or for a moved file the record with the same bytes under its new class). So a
    test file overwritten with a copy of a training slice counts as leakage.
    """
    from mriscan.store import ImageStore
    from mriscan.store.index import RETIRED_FLAGS

    try:
        split = json.loads(Path(split_path).read_text())
        parts = {k: [int(p) for p in split[k]["indices"]] for k in ("train", "val", "test")}
        srcs = {k: list(split[k]["sources"]) for k in ("train", "val", "test")}
        if any(len(parts[k]) != len(srcs[k]) for k in parts):
            raise ValueError("indices and sources differ in length")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(
            f"{split_path}: not a split.json written by `mriscan train` (keys train/val/test, "
            f"each with indices and sources): {exc}"
        ) from exc
    if aset.kind != "store":
        raise AuditError(
            f"--split needs the store the split was made on; {aset.path} is a class folder. "
            f"Pass the store ({split.get('store', 'recorded in the split file')})."
        )
    with ImageStore.open(aset.path) as store:
        records = list(store.index.records)
        dups = list(store.index.duplicates)
    where = {int(p): k for k, p in enumerate(aset.store_positions) if p >= 0}
    dup_rows = {
        s: k
        for k, (s, p) in enumerate(zip(aset.sources, aset.store_positions, strict=True))
        if p < 0
    }

    def current(rec) -> list[tuple[int, str]]:
        """(audit row, name) of the current content of a retired record's file."""
        out = [
            (where[q.position], q.source)
            for q in records
            if q.active
            and q.file_id
            and q.file_id == rec.file_id
            and q.origin == rec.origin
            and q.position in where
        ]
        for d in dups:
            if d.get("file_id") and d["file_id"] == rec.file_id and d.get("origin") == rec.origin:
                row = dup_rows.get(d["source"], where.get(int(d["duplicate_of"])))
                if row is not None:
                    out.append((row, d["source"]))
        if not out and "relabelled" in rec.flags:  # moved: same bytes, new place and label
            out = [
                (where[q.position], q.source)
                for q in records
                if q.active
                and q.sha256 == rec.sha256
                and q.origin == rec.origin
                and q.position in where
            ]
        return out

    chosen: dict[str, list[tuple[int, str]]] = {}
    changed: dict[str, list[dict[str, Any]]] = {}
    for name, idx in parts.items():
        picked: list[tuple[int, str]] = []
        changed[name] = []
        for p, src in zip(idx, srcs[name], strict=True):
            if not 0 <= p < len(records):
                raise AuditError(
                    f"{split_path}: {name} index {p} is not a record of store {aset.path} "
                    f"({len(records)} records). Was the split made on another store?"
                )
            rec = records[p]
            if rec.source != src:
                raise AuditError(
                    f"{split_path}: {name} lists {src!r} at a position where store {aset.path} "
                    "holds another file. Was the split made on another store?"
                )
            if rec.active and p in where:
                picked.append((where[p], rec.source))
                continue
            if rec.active:  # its file is in the store but could not be read for this audit
                changed[name].append(
                    {"source": rec.source, "change": "not readable now (see skipped)", "now": []}
                )
                continue
            now = current(rec)
            why = next(f for f in rec.flags if f in RETIRED_FLAGS)
            changed[name].append(
                {"source": rec.source, "change": _RETIRED_WORDS[why], "now": [n for _, n in now]}
            )
            picked += now
        chosen[name] = list(dict.fromkeys(picked))
    train = _subset(aset, [r for r, _ in chosen["train"] + chosen["val"]], "train+val")
    train.sources = [n for _, n in chosen["train"] + chosen["val"]]
    test = _subset(aset, [r for r, _ in chosen["test"]], "test")
    test.sources = [n for _, n in chosen["test"]]
    train.files, test.files = list(train.sources), list(test.sources)
    info = {
        "train": changed["train"] + changed["val"],
        "test": changed["test"],
        "split_items": {
            "train+val": len(parts["train"]) + len(parts["val"]),
            "test": len(parts["test"]),
        },
    }
    return train, test, info


# ---------------------------------------------------------------------------------------------
# shortcut risk


def _feature_matrix(aset: AuditSet, source: str) -> tuple[np.ndarray, list[str]]:
    """Numeric design matrix of metadata (``source="metadata"``) or preprocessed statistics."""
    if source == "preprocessed":
        names = sorted(aset.prep_stats)
        return np.column_stack([aset.prep_stats[k] for k in names]), names
    names = list(aset.meta)
    cols = [aset.meta[k] for k in names]
    for key, values in aset.categorical.items():
        for level in sorted(set(values)):
            names.append(f"{key}={level}")
            cols.append(np.array([v == level for v in values], np.float64))
    return np.column_stack(cols), names


def _cv_auc(model, X, y, groups, folds, seed) -> tuple[float, list[float]]:
    """Grouped, stratified k-fold out-of-fold probabilities -> ROC AUC (macro one-vs-rest)
    and the one-vs-rest AUC of each class."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    k = min(folds, len(np.unique(groups)))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    prob = cross_val_predict(model, X, y, groups=groups, cv=cv, method="predict_proba")
    if prob.shape[1] == 2:
        auc = float(roc_auc_score(y, prob[:, 1]))
        return auc, [auc, auc]
    per = [float(roc_auc_score(y == k, prob[:, k])) for k in range(prob.shape[1])]
    return float(np.mean(per)), per


def check_shortcut(
    aset: AuditSet, groups: np.ndarray, config: AuditConfig, *, source: str = "metadata"
) -> dict[str, Any]:
    """How well features that carry no anatomy predict the label.

    A histogram gradient-boosting classifier (scikit-learn) on all features, and a depth-3
    decision tree on each feature alone, scored by ROC AUC (one-vs-rest macro for more than two
    classes) on out-of-fold predictions of ``StratifiedGroupKFold``: near-duplicate groups never
    straddle a fold, so copies cannot inflate the score.

    Parameters
    ----------
    aset : AuditSet
    groups : ndarray of shape (N,), int64
        Near-duplicate group of each item.
    config : AuditConfig
    source : {"metadata", "preprocessed"}
        File metadata, or statistics of the preprocessed slices.

    Returns
    -------
    dict
        ``auc``, ``flagged`` (``auc >= config.shortcut_auc``), ``features`` (single-feature AUC,
        best first) and ``carriers`` (the features whose own AUC is at least 0.75 or, if none,
        the best one). ``auc`` is None (undefined, never a made-up 0.5) with a ``reason`` when
        fewer than two classes have slices, a class has fewer than ``config.min_groups`` groups
        (with 2 slices per class a 2-fold CV scores 0.5 whatever the data), or no feature
        varies. Classes without slices are left out of the scoring.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.tree import DecisionTreeClassifier
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: on a busy 2-core machine the default pool spin-waits and one fit took
    # 12 s instead of 0.5 s (measured on this project's reference machine)
    with threadpool_limits(1):
        return _check_shortcut(
            aset, groups, config, source, HistGradientBoostingClassifier, DecisionTreeClassifier
        )


def _check_shortcut(
    aset, groups, config, source, HistGradientBoostingClassifier, DecisionTreeClassifier
) -> dict[str, Any]:

    X, names = _feature_matrix(aset, source)
    y = aset.labels
    present = [k for k in range(len(aset.class_names)) if np.any(y == k)]
    if len(present) < 2:
        return {
            "auc": None,
            "flagged": False,
            "source": source,
            "reason": "fewer than two classes have decodable slices",
        }
    few = {
        aset.class_names[k]: len(np.unique(groups[y == k]))
        for k in present
        if len(np.unique(groups[y == k])) < config.min_groups
    }
    if few:
        return {
            "auc": None,
            "flagged": False,
            "source": source,
            "reason": "too few independent slices to score: "
            + ", ".join(f"class {c!r} has {n} group(s)" for c, n in few.items())
            + f" (near-duplicate/patient groups; at least {config.min_groups} per class needed)",
        }
    if len(present) < len(aset.class_names):
        keep_rows = np.isin(y, present)
        X, y, groups = X[keep_rows], np.searchsorted(present, y[keep_rows]), groups[keep_rows]
    folds = min(config.folds, min(len(np.unique(groups[y == k])) for k in np.unique(y)))
    keep = [
        k for k in range(X.shape[1]) if np.isfinite(X[:, k]).sum() > 1 and np.nanstd(X[:, k]) > 0
    ]
    X, names = X[:, keep], [names[k] for k in keep]
    if not names:
        return {
            "auc": None,
            "flagged": False,
            "source": source,
            "reason": "no feature varies across the set: nothing a classifier could use",
        }
    # the default 20 samples per leaf cannot split a small set at all
    leaf = int(np.clip(len(y) // 100, 2, 20))
    model = HistGradientBoostingClassifier(
        max_iter=100, min_samples_leaf=leaf, random_state=config.seed
    )
    auc, per_class = _cv_auc(model, X, y, groups, folds, config.seed)
    feats = []
    for k, name in enumerate(names):
        col = np.nan_to_num(X[:, k : k + 1], nan=-1.0)
        tree = DecisionTreeClassifier(max_depth=3, random_state=config.seed)
        f_auc, f_per = _cv_auc(tree, col, y, groups, folds, 0)
        feats.append(
            {"feature": name, "auc": round(f_auc, 4), "per_class": [round(v, 4) for v in f_per]}
        )
    feats.sort(key=lambda r: -r["auc"])
    carriers = [f["feature"] for f in feats if f["auc"] >= 0.75] or [feats[0]["feature"]]
    by_class = {}
    for k, cname in enumerate(aset.class_names[q] for q in present):
        if k >= len(per_class):
            continue
        ranked = sorted(feats, key=lambda f: -f["per_class"][k])
        by_class[cname] = {
            "auc": round(per_class[k], 4),
            "carriers": [f["feature"] for f in ranked if f["per_class"][k] >= 0.9][:4]
            or [ranked[0]["feature"]],
        }
    return {
        "per_class": by_class,
        "source": source,
        "auc": round(auc, 4),
        "flagged": bool(auc >= config.shortcut_auc),
        "threshold": config.shortcut_auc,
        "folds": folds,
        "features": feats,
        "carriers": carriers,
    }


def per_class_metadata(aset: AuditSet) -> dict[str, Any]:
    """Median (and 5th-95th percentile) of each numeric feature per class, and counts of each
    colour mode / format per class.

    A class with no decodable slice (``slices`` 0) gets None for every numeric feature and
    ``most_common_size``: undefined, not zero."""
    out: dict[str, Any] = {}
    for k, name in enumerate(aset.class_names):
        m = aset.labels == k
        row: dict[str, Any] = {"slices": int(m.sum())}
        for f, v in aset.meta.items():
            x = v[m][~np.isnan(v[m])]
            row[f] = (
                {
                    "median": round(float(np.median(x)), 3),
                    "p5": round(float(np.percentile(x, 5)), 3),
                    "p95": round(float(np.percentile(x, 95)), 3),
                }
                if x.size
                else None
            )
        for f, vals in aset.categorical.items():
            row[f] = dict(Counter(v for v, keep in zip(vals, m, strict=True) if keep))
        sizes = Counter(
            f"{int(w)}x{int(h)}"
            for w, h, keep in zip(aset.meta["width"], aset.meta["height"], m, strict=True)
            if keep
        )
        row["distinct_sizes"] = len(sizes)
        row["most_common_size"] = sizes.most_common(1)[0] if sizes else None
        out[name] = row
    return out


# ---------------------------------------------------------------------------------------------
# the audit


def audit(
    paths: Sequence[str | os.PathLike[str]],
    *,
    test: str | os.PathLike[str] | None = None,
    split: str | os.PathLike[str] | None = None,
    config: AuditConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Audit one or more data sets, and a train/test pair when ``test`` or ``split`` is given.

    Parameters
    ----------
    paths : sequence of path
        Class folders or stores. With ``test``, they are the training side (merged).
    test : path, optional
        A class folder or store used as the test side.
    split : path, optional
        A ``split.json`` written by ``mriscan train``: its train and val items (of the one store
        in ``paths``) are the training side, its test items the test side.
    config : AuditConfig, optional
    progress : callable(done, total), optional
        Called while files are read (the long part).

    Returns
    -------
    dict
        JSON-ready report: ``sets`` (per set: duplicates, groups, label conflicts, shortcut),
        ``cross`` (pairs of sets), ``leakage`` (train vs test, or None; its
        ``same_patient``: the patients with slices on both sides, ``check_patients``; any
        counts as leakage), ``exit_status``
        (``EXIT_LEAKAGE`` | ``EXIT_CONFLICT`` bits), ``seconds``. Keys starting with ``_`` hold
        arrays for the figures and are dropped by ``write_report``.

    Raises
    ------
    AuditError
        If both ``test`` and ``split`` are given, ``split`` is used with other than one store,
        or a split does not fit its store.
    """
    config = config or AuditConfig()
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    if not paths:
        raise AuditError("Give at least one data set (a class folder or a store).")
    if test is not None and split is not None:
        raise AuditError("Pass either --test DATA or --split split.json, not both.")
    if split is not None and len(paths) != 1:
        raise AuditError(f"--split needs exactly one store as DATA. Received {len(paths)} sets.")
    all_paths = [*paths, *([Path(test)] if test is not None else [])]
    # one key for the pseudonyms of every folder of this audit: the identifier key when a
    # store made with it is audited too (patients then match across folder and store)
    salt, key_id = audit_key(all_paths)
    counts = [_count_items(p) for p in all_paths]
    sets = []
    for k, p in enumerate(all_paths):
        before = sum(counts[:k])
        cb = None
        if progress is not None:

            def cb(d: int, n: int, before: int = before) -> None:
                progress(before + d, sum(counts))

        sets.append(load_set(p, config, progress=cb, salt=salt, key_id=key_id))
    names = [s.name for s in sets]
    for k, s in enumerate(sets):
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{k + 1}"
    report: dict[str, Any] = {
        "threshold": config.threshold,
        "config": {
            "threshold": config.threshold,
            "borderline": config.borderline,
            "shortcut_auc": config.shortcut_auc,
            "folds": config.folds,
            "seed": config.seed,
        },
        "signature": "16x16 area-averaged whole-slice thumbnail, Pearson correlation",
        "sets": [],
        "cross": [],
        "leakage": None,
    }
    for s in sets:
        r = check_set(s, config)
        r["metadata_by_class"] = per_class_metadata(s) if s.categorical else {}
        r["shortcut"] = check_shortcut(s, r["_groups"], config)
        r["shortcut_preprocessed"] = (
            check_shortcut(s, r["_groups"], config, source="preprocessed")
            if s.prep_stats
            else {"auc": None, "flagged": False, "reason": "no default-preprocessed slices"}
        )
        r["_set"] = s
        report["sets"].append(r)
    if split is None:
        # with --test the test set is compared in the leakage section instead
        n_cross = len(sets) - (test is not None)
        for a_k in range(n_cross):
            for b_k in range(a_k + 1, n_cross):
                x = check_cross(sets[a_k], sets[b_k], config)
                x["_a"], x["_b"] = sets[a_k], sets[b_k]
                report["cross"].append(x)
    if test is not None or split is not None:
        if split is not None:
            train, test_set, changed = _split_sets(sets[0], Path(split))
            source = str(split)
        else:
            train = _merge(sets[:-1], "+".join(s.name for s in sets[:-1]))
            test_set = sets[-1]
            source, changed = "--test", None
        leak = check_cross(train, test_set, config)
        leak.update({"train": train.name, "test": test_set.name, "from": source})
        leak["_a"], leak["_b"] = train, test_set
        leak["leaked"] = leak["b_items_matched"]
        leak["test_items"] = len(test_set)
        # split items the store retired since the split was made (None for --test)
        leak["changed_since_split"] = changed
        leak["same_patient"] = check_patients(train, test_set)
        report["leakage"] = leak
    status = 0
    leak = report["leakage"]
    if leak is not None and (leak["leaked"] or leak["same_patient"]["patients"]):
        status |= EXIT_LEAKAGE
    if any(r["label_conflicts"] for r in report["sets"]):
        status |= EXIT_CONFLICT
    report["exit_status"] = status
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


# ---------------------------------------------------------------------------------------------
# report


def _public(obj: Any) -> Any:
    """Drop the ``_``-prefixed internals, recursively."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON text (internals dropped)."""
    return json.dumps(_public(report), indent=1, allow_nan=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if math.isnan(o) else float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_report(report: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write ``audit.json``, ``audit.md`` and the figures under ``out``; return ``audit.md``.

    Figures: ``<set>_worst_pairs.png`` / ``<set>_borderline.png`` (pairs side by side with their
    correlation), ``<set>_metadata.png`` (per-class histograms), and for a train/test pair
    ``leakage_worst_pairs.png`` / ``leakage_borderline.png``. ``audit.md`` and then
    ``audit.json`` are written last, each atomically: an ``audit.json`` is only ever the result
    of a finished run.

    Raises
    ------
    AuditError
        ``out`` is an existing file or cannot be created (``prepare_out``).
    """
    from mriscan import _audit_report

    out = prepare_out(out)
    text = to_json(report)  # fails before anything is written if the report cannot be encoded
    page = _audit_report.write_markdown(report, out)
    _write_atomic(out / "audit.json", text)  # last: a JSON report means a finished run
    return page


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half a
    file, never a stale one claiming another run's result)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """Create the report folder ``out`` (and its parents) and remove the reports of an earlier
    run there (``audit.json``, ``audit.md``), so a failed run never leaves a report that claims
    a result. Call it before the (long) audit to fail early.

    Raises
    ------
    AuditError
        ``out`` (or a parent) is an existing file, or the folder cannot be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AuditError(
            f"--out {out} is an existing file; the report needs a folder (audit.md, audit.json "
            "and figures). Pass a folder path, or move the file."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("audit.json", "audit.md"):
            (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise AuditError(
            f"--out {out}: cannot create or write the report folder ({exc.strerror or exc}). "
            "Pass a writable folder path."
        ) from exc
    return out
