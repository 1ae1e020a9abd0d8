"""Ingest: class folders (or a CSV manifest) of JPEG/PNG, DICOM and NIfTI → preprocessed slices
committed to an ImageStore in one atomic commit.

A re-ingest brings the store in line with the folder: a file moved to another class folder is
stored under its new label (the label follows the file's current folder), a file overwritten
with new content replaces its old sample, a deleted file's sample is retired. Retired samples
keep their rows (a commit only ever appends) but are flagged in the index and left out of
training, CV, evaluation and duplicate matching (``SampleRecord.active``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from mriscan._graph_kernels import component_minima
from mriscan.duplicates import (
    SIGNATURE_CONFIG,
    duplicate_groups,
    key_links,
    near_links,
    same_label_links,
)
from mriscan.errors import BadFilesError, ConfigError
from mriscan.ingest_config import IngestConfig
from mriscan.io import (
    EMPTY_FILE,
    UNLISTED_FOLDER,
    check_label_case,
    relative_name,
    scan_class_folders,
    scan_manifest,
)
from mriscan.keys import (
    KEY_FILE_ENV,
    KeyMismatchError,
    identifier_key,
    key_file_path,
    key_fingerprint,
)
from mriscan.preprocess import preprocess_serial
from mriscan.readers import (
    InputRead,
    InputSlice,
    ReadOptions,
    check_series_sizes,
    describe_flags,
    file_sha256,
    file_sha256_apart,
    read_input,
    slice_warnings,
)
from mriscan.scan import check_salt, salted_hash
from mriscan.scan_config import ReaderSettings, describe_setting
from mriscan.splits import join_keys, split_keys, union_groups
from mriscan.store import ImageStore, SampleRecord, StoreNotFoundError, pixel_checksum
from mriscan.store.files import is_url, local_path

__all__ = [
    "IngestConfig",
    "IngestReport",
    "check_reading_options",
    "ingest",
    "source_pseudonym",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestReport:
    """What an ingest run did.

    ``skipped``: ``(name, reason)`` of every file or folder not stored (bad files, label
    conflicts, unreadable folders, files of no input kind such as a BMP or a text file);
    ``not_images``: DICOM objects that are no image (no pixel data: structured reports,
    DICOMDIR; or no scan: segmentations, RT dose grids), listed; ``excluded``: DICOM images of
    a modality not read (``DicomConfig.modalities``, default MR only: CT, US, NM, ... are not
    stored); ``warnings``: ``(name, reason)`` of slices stored with a warning (uniform, thin)
    and of near-identical slices stored under two classes (one entry per group, naming up
    to five files of each class, with counts); ``ignored``: hidden files and folders (names
    starting with ".") and files beside the class folders (a README), not read by rule;
    ``placeholder_ids``: ``(name, Patient ID)`` of DICOM files stored whose Patient ID names
    no one (``"ANONYMOUS"``, ``"0"``, ...: ``mriscan.dicom.is_placeholder_patient_id``),
    grouped by their study instead of as one patient, and of those without a Patient ID
    element (the value is then one of ``mriscan.dicom.MISSING_PATIENT_ID``, which says how
    they are grouped: by study, by series, each file alone) (a warning: if such files are one
    patient, give them a manifest group). ``read_notes``: ``(name, note)`` of files stored
    but read otherwise than they hold (``mriscan.readers.InputRead.note``: the first volume
    of a 4-D NIfTI volume). ``empty_classes``: ``(class, its files in this run)`` of each
    class of this run left with no active sample (all its files failed: a warning, as
    ``train`` and ``cv`` need every class; ``empty_class_message``; ``strict``: fail).
    Names are paths relative to the raw folder; they are shown to the user so the files can be
    fixed, and never written into the store (DICOM/NIfTI samples are stored under
    pseudonyms). ``removed``, ``replaced``, ``relabelled`` count samples retired because
    their file was deleted, overwritten or moved to another class; ``renamed`` those whose file
    was renamed or moved within its class (the same bytes under another name and the same
    label: retired, with the store flag ``removed``, and stored again under the new name, as a
    move to another class is; not counted in ``removed``). A DICOM file renamed and rewritten
    (another name and other bytes, the same instance: SOP Instance UID and frame) is counted
    in ``replaced``, as its content changed (store flag ``removed``, as a rename's; not counted
    in ``removed``: its instance is still there). ``conflicts`` files whose
    bytes, or whose DICOM instance, sit under two classes. ``exact_duplicates``: files of this
    run newly recorded as copies of a stored sample (the same bytes, or a DICOM file of the same
    instance in other bytes). ``total`` counts the active samples after the run.
    """

    store: str
    added: dict[str, int]
    total: int
    exact_duplicates: int
    already_stored: int
    skipped: tuple[tuple[str, str], ...]
    duplicate_groups: int
    seconds: float
    removed: int = 0
    replaced: int = 0
    relabelled: int = 0
    renamed: int = 0
    conflicts: int = 0
    not_images: tuple[tuple[str, str], ...] = ()
    warnings: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    placeholder_ids: tuple[tuple[str, str], ...] = ()
    read_notes: tuple[tuple[str, str], ...] = ()
    empty_classes: tuple[tuple[str, int], ...] = ()

    @property
    def n_added(self) -> int:
        """Samples added by this run."""
        return sum(self.added.values())


@dataclass
class _Job:
    """One input file of this run."""

    path: Path
    kind: str
    label: int
    rel: str
    group: str | None = None
    sha256: str = ""
    file_id: str = ""
    error: str | None = None


def _listing(
    raw: Path, config: IngestConfig, store_path: str | os.PathLike[str]
) -> tuple[str, Path, list[str], list, list, list, list]:
    """(origin, root, class names, jobs, unreadable folders, unused files, hidden entries) of
    a class-folder tree or manifest; the last three as ``(name, reason)``.

    Raises ConfigError for a store inside a folder that a manifest row names
    (``_refuse_store_inside``)."""
    if raw.is_file() and raw.suffix.lower() == ".csv":
        manifest = scan_manifest(raw, min_labels=config.min_classes)
        for folder in manifest.folders:
            _refuse_store_inside(folder, store_path, what=f"a folder that the manifest {raw} lists")
        entries = manifest.entries
        names = sorted({e.label for e in entries})
        root = raw.resolve().parent
        jobs = [
            _Job(e.path, e.kind, names.index(e.label), _rel(e.path, root), e.group) for e in entries
        ]
        problems: list[tuple[str, str]] = []
        unused_files = manifest.unused
    else:
        listing = scan_class_folders(raw, config.used_classes, min_classes=config.min_classes)
        names = list(listing.classes)
        root = raw
        jobs = [
            _Job(f.path, f.kind, names.index(c), _rel(f.path, root))
            for c, files in listing.classes.items()
            for f in files
        ]
        problems = [(_rel(p, root), r) for p, r in listing.unreadable]
        unused_files = listing.unused
    unused = [(_rel(u.path, root), u.reason) for u in unused_files if not u.hidden]
    hidden = [(_rel(u.path, root), u.reason) for u in unused_files if u.hidden]
    if not (raw.is_file() and raw.suffix.lower() == ".csv"):
        hidden += [(name, EMPTY_LEFT_OUT) for name in listing.empty_left_out]
    if config.n_classes is not None and len(names) != config.n_classes:
        raise ConfigError(
            f"{raw} holds {len(names)} classes {names}; {config.n_classes} are needed. Point "
            "at the folder that holds exactly the class folders (e.g. yes/ and no/). Nothing "
            "was written."
        )
    return str(raw.resolve()), root, names, jobs, problems, unused, hidden


#: ``StoreIndex.sources`` entries written by this mriscan: the prefix, then a salted hash.
_SOURCE_PREFIX = "folder:"
#: ``IngestReport.ignored``'s reason for an empty class folder that the class map leaves out
EMPTY_LEFT_OUT = "an empty class folder the class map leaves out"


def source_pseudonym(salt: bytes, folder: str) -> str:
    """How a store records the raw folder (or manifest) ``folder`` (an absolute path) it was
    ingested from: ``"folder:"`` + its salted hash (``mriscan.scan.salted_hash``), never the
    path itself, whose folder names in hospital exports often name the patient. The same
    folder at the same path gives the same entry, so a re-ingest recognises it."""
    return _SOURCE_PREFIX + salted_hash(salt, "source", folder)


def _source_entry(sources, salt: bytes | None, folder: str) -> str | None:
    """The entry of ``sources`` that stands for ``folder`` (absolute path): its pseudonym, or
    the plain path an older mriscan recorded; None when the store has not seen the folder."""
    if folder in sources:
        return folder
    if salt is not None and (entry := source_pseudonym(salt, folder)) in sources:
        return entry
    return None


def _folder_name(sources, origin: int) -> str:
    """A stored sample's folder for messages: a path only where an older store kept one."""
    if not 0 <= origin < len(sources):
        return "another folder"
    entry = sources[origin]
    return f"folder #{origin + 1} of the store" if entry.startswith(_SOURCE_PREFIX) else entry


def _describe_sources(sources) -> str:
    """The folders of a store for messages (pseudonyms counted, not shown)."""
    plain = [s for s in sources if not s.startswith(_SOURCE_PREFIX)]
    hidden = len(sources) - len(plain)
    parts = plain + (
        [f"{hidden} folder(s) recorded by pseudonym only (paths are not stored)"] if hidden else []
    )
    return ", ".join(parts)


def _rel(path: Path, root: Path) -> str:
    return relative_name(path, root)


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _hash(job: _Job) -> _Job:
    try:
        digest: str | OSError = file_sha256(job.path)
    except OSError as exc:
        digest = exc
    _set_hash(job, digest)
    return job


def _set_hash(job: _Job, digest: str | OSError) -> None:
    """Record a file's SHA-256, or the reason it could not be read."""
    if isinstance(digest, OSError):
        job.error = f"cannot read file ({digest.strerror or digest}); check that it is readable"
    else:
        job.sha256 = digest


def ingest(
    raw_dir: str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    config: IngestConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    key: bytes | None = None,
) -> IngestReport:
    """Bring the store at ``store_path`` in line with ``raw_dir``'s class folders (or manifest).

    Inputs: JPEG/PNG, DICOM (by content, any suffix; series folders at any depth; multi-frame
    files give one sample per frame) and NIfTI volumes (``.nii``, ``.nii.gz``; one sample per
    kept slice). ``raw_dir`` may instead be a CSV manifest ``path,label[,group]``
    (``mriscan.io.read_manifest``).

    Every file is hashed first; only new or changed files are decoded (a DICOM-only folder
    new to the store is read while it is hashed, in a child process: ``_Prefetch``).
    Per file:

    - unchanged (same content, same label): nothing to do (``already_stored``);
    - moved to another class folder, or relabelled in the manifest: the old sample is retired
      (``relabelled``) and the file stored under its current label;
    - overwritten with new content: the old sample is retired (``replaced``), the new stored;
    - deleted: its sample is retired (``removed``) — not when a folder could not be listed;
    - same bytes as a stored file of the same label: recorded as an exact duplicate;
    - a DICOM file whose instance (SOP Instance UID and frame, the slice's ``source``
      pseudonym) is already stored, or read from another file of this run, in other bytes
      (another transfer syntax): recorded as an exact duplicate, as ``predict`` scores each
      instance once (a re-ingest does not read it again while its bytes, its label and the
      stored instance stay); a copy whose slice size differs makes its series mix sizes;
    - same bytes, or the same DICOM instance, under two labels: a label conflict, never
      resolved by folder order: every copy is listed in ``skipped`` and any stored copy retired
      (``conflict``). An instance conflict is found once the files are read: the run is then
      redone (nothing committed) with every copy refused before reading;
    - overwritten so that it now conflicts: its old sample is retired too (its bytes are gone);
    - unreadable or undecodable: listed in ``skipped`` with the reason (``strict``: fail);
    - of no input kind (a BMP, a text file, ...): listed in ``skipped`` (``strict``: fail);
      hidden files and folders, and files beside the class folders, are listed in ``ignored``;
    - a DICOM image of another modality than ``DicomConfig.modalities`` (default MR): not
      stored, listed in ``excluded`` (``strict``: fail);
    - uniform (all black, all white, one grey) or thin (a side < 8 px): stored, flagged, and
      listed in ``warnings`` (``strict``: fail);
    - near-identical slices (one duplicate group, ``mriscan.duplicates``) under two classes:
      stored (the split keeps a group on one side), listed in ``warnings`` (per class: how many
      files, the first five by name) by the run that stores the new slice (``strict``: fail).

    Split groups (``SampleRecord.group``) are the union of near-duplicate slices and slices that
    share a patient (DICOM; else study, series), a volume (NIfTI) or a manifest group (a
    manifest group joins those keys, it never replaces them). Patient and other identifiers
    are stored only as HMAC hashes under the user's identifier key (``mriscan.keys``: a key
    file outside the store, created on first use); the store records the key's fingerprint
    only. Everything becomes visible in one atomic commit; a store created by a run that fails
    is removed again.

    Parameters
    ----------
    raw_dir : path
        Folder with one sub-folder per class (e.g. ``yes/``, ``no/``), or a ``.csv`` manifest.
    store_path : path or fsspec URL
    config : IngestConfig, optional
    progress : callable(done, total), optional
        Called while decoding the files to add.
    key : bytes, optional
        The identifier key to hash ids with instead of the user's key file (which is then
        neither read nor created): ``mriscan evaluate``'s temporary store takes the user's key
        when the file exists, else a key of that run only, so that a mistyped
        ``$MRISCAN_KEY_FILE`` leaves no key file behind. It must match a key the store records.

    Returns
    -------
    IngestReport

    Raises
    ------
    EmptyDatasetError
        Missing, unreadable or empty class folders; a nested copy of the class layout.
    ManifestError
        A bad manifest.
    ConfigError
        ``store_path`` inside ``raw_dir`` (or equal to it); other preprocessing than the
        store's, another dataset without ``merge``, a wrong number of classes
        (``n_classes``), a class whose name differs from a stored class only by case; the
        identifier key file cannot be created or read; ``key`` is not bytes of at least 16.
    KeyMismatchError
        The store was made with another identifier key (``$MRISCAN_KEY_FILE``, or ``key``),
        or the key file it names does not exist (no key file is created for a store that
        records a key).
    BadFilesError
        ``strict`` and any bad or unused file, label conflict, image of another modality or
        warning (nothing committed); the message names every one.
    """
    config = config if config is not None else IngestConfig()
    if key is not None:
        check_salt(key)
    t0 = time.perf_counter()
    raw = Path(raw_dir)
    _refuse_store_inside(raw, store_path)
    source, root, classes, jobs, problems, unused, hidden = _listing(raw, config, store_path)
    created = False
    try:
        store = ImageStore.open(store_path, mode="a")
        if store.config != config.preprocess:
            differ = ", ".join(
                f"{f.name} {getattr(store.config, f.name)!r} (asked: "
                f"{getattr(config.preprocess, f.name)!r})"
                for f in dataclasses.fields(store.config)
                if getattr(store.config, f.name) != getattr(config.preprocess, f.name)
            )
            size = store.config.size
            store.close()
            raise ConfigError(
                f"Store {store_path} was built with other preprocessing than this ingest asks "
                f"for: {differ}. Use a new --store path, or the store's settings (e.g. "
                f"--image-size {size}; `mriscan info --store {store_path}` lists them)."
            )
        if config.compress is not None and store.compressed != config.compress:
            kind = "compressed" if store.compressed else "raw (uncompressed)"
            store.close()
            raise ConfigError(
                f"Store {store_path} holds {kind} slices; --compress/--no-compress "
                "(IngestConfig.compress) chooses the codec of a store being created and cannot "
                "change an existing one. Leave the option out to add to this store as it is, "
                "or use a new --store path. Nothing was written."
            )
        try:
            reader, reader_record = _reader_for(store, store_path, config)
            store_key = _store_key(store, store_path, key=key)
        except BaseException:
            store.close()
            raise
        if (
            store.index.sources
            and _source_entry(store.index.sources, store_key, source) is None
            and not config.merge
        ):
            store.close()
            raise ConfigError(
                f"Store {store_path} holds slices from "
                f"{_describe_sources(store.index.sources)}; adding {source} would mix two "
                "datasets in one store. Use another --store path, or pass --merge "
                "(IngestConfig(merge=True)) to combine them on purpose."
            )
        same = [
            g
            for g in check_label_case({*store.class_names, *classes})
            if any(c in classes for c in g)
        ]
        if same:
            store.close()
            raise ConfigError(
                f"Store {store_path} holds classes {list(store.class_names)}; {raw} names "
                + "; ".join(" and ".join(repr(c) for c in g) for g in same)
                + ", which differ only by case. Labels are compared exactly, so they would be "
                "separate classes: rename the folders (or manifest labels) to the store's "
                "spelling. Nothing was written."
            )
        _hint_migrate(store, store_path)
    except StoreNotFoundError:
        store = ImageStore.create(
            store_path, config.preprocess.size, config.preprocess, compress=bool(config.compress)
        )
        created = True
        reader = reader_record = ReadOptions(dicom=config.dicom, nifti=config.nifti).resolve()
    config = dataclasses.replace(config, dicom=reader.dicom, nifti=reader.nifti)
    series_errors = None  # first try: series sizes are checked on the slices as read
    conflicts = _InstanceConflicts()  # DICOM instances found under two classes by a try
    try:
        # the run parallelises over files; BLAS threads inside its small matrix products
        # (near-duplicate search) would only contend with the decoding threads for the cores
        with threadpool_limits(1, user_api="blas"):
            while True:
                try:
                    with store:  # _run fills in its jobs: each attempt gets fresh ones
                        report = _run(store, store_path, source, root, classes,
                                      [dataclasses.replace(j) for j in jobs], problems, config,
                                      progress, t0, unused=unused, hidden=hidden,
                                      series_errors=series_errors,
                                      reader_record=reader_record,
                                      conflicts=conflicts, key=key)  # fmt: skip
                    break
                except _InstanceConflictRedoError as redo:
                    # rare: one DICOM instance under two classes, found once read. Nothing was
                    # committed; run again with every copy refused before any file is read
                    conflicts = redo.conflicts
                    store = ImageStore.open(store_path, mode="a")
                except _MixedSeriesRedoError:
                    # rare: a series mixes slice sizes. Nothing was committed; run again with
                    # those series refused before any file is read (header-only check)
                    series_errors = check_series_sizes([j.path for j in jobs if j.kind == "dicom"])
                    store = ImageStore.open(store_path, mode="a")
    except BaseException as exc:
        if created:
            _remove_store(store_path)
        elif isinstance(exc, KeyboardInterrupt):
            _drop_uncommitted(store_path)
        raise
    log.info("ingest added %d samples to %s in %.1fs", report.n_added, store_path, report.seconds)
    return report


def _drop_uncommitted(store_path: str | os.PathLike[str]) -> None:
    """After an interrupted run (Ctrl-C), remove what it wrote past the committed end, as the
    next writer would (``ImageStore.open(mode="a")`` trims): the store is left exactly as its
    last commit, with no ``write.pending``. A failure here is logged, not raised over the
    interrupt: the next writer trims the rows all the same."""
    from mriscan.store import ImageStore

    try:
        ImageStore.open(store_path, mode="a").close()
    except Exception as exc:  # e.g. another writer took the lock meanwhile
        log.warning(
            "could not tidy %s after the interrupt (%s); the next ingest will", store_path, exc
        )


# (topic, store) pairs already warned about in this process: a store's lasting condition is
# said once, not on every ingest of a long run
_warned: set[tuple[str, str]] = set()


def _warn_once(topic: str, store_path: object, message: str, *args: object) -> None:
    """``log.warning(message, *args)`` the first time ``topic`` comes up for ``store_path``."""
    if (topic, str(store_path)) not in _warned:
        _warned.add((topic, str(store_path)))
        log.warning(message, *args)


_hinted_migrate: set[str] = set()


def _hint_migrate(store: ImageStore, store_path) -> None:
    """Say (once per store and process) that a store whose images are one file per slice, as
    mriscan wrote them before shards, can be converted with ``mriscan migrate``."""
    from mriscan.store.engines import LocalChunkFiles

    if not isinstance(store.engine, LocalChunkFiles) or str(store_path) in _hinted_migrate:
        return
    _hinted_migrate.add(str(store_path))
    log.warning(
        "store %s keeps its images as one file per slice (written by an older mriscan): it is "
        "read and added to as it is; `mriscan migrate --store %s` rewrites them as shards of "
        "256 slices (far fewer files, faster reads)",
        store_path,
        store_path,
    )


def _store_key(
    store: ImageStore, store_path, *, record: bool = False, key: bytes | None = None
) -> bytes:
    """The key the store's ids are hashed with: ``key`` when given (``ingest``'s; the key file
    is then not touched), else the user's identifier key
    (``mriscan.keys.identifier_key``), checked against the fingerprint the store recorded
    (``record``: recorded now when the store has none; the key file is created only for a
    store that records no key yet); a store written before the key left
    the store keeps using the salt in its index (with a warning, once per store and process).

    Raises
    ------
    KeyMismatchError
        The store was made with another identifier key, or records one and the key file
        does not exist (nothing is created then).
    ConfigError
        The key file cannot be created or read.
    """
    if store.salt is not None:
        _warn_once(
            "salt",
            store_path,
            "store %s keeps the secret salt of its patient/series hashes in its index.json "
            "(written by an older mriscan): anyone holding the store can test guessed "
            "patient IDs against them. Do not share it; to protect the ids, ingest the "
            "data again into a new --store (its key then stays in %s, outside the store)",
            store_path,
            key_file_path(),
        )
        return store.salt
    path = key_file_path()
    if key is not None:
        fp = key_fingerprint(key)
        if store.key_id and store.key_id != fp:
            raise KeyMismatchError(
                f"Store {store_path} was made with another identifier key (fingerprint "
                f"{store.key_id}) than the one given (fingerprint {fp}). Nothing was written."
            )
        if record and not store.key_id:
            store.set_key_id(fp)
        return key
    if store.key_id and not path.exists():
        # a new key could never match the store's ids: none is created (a mistyped
        # $MRISCAN_KEY_FILE would otherwise leave a stray key file behind a refused command)
        raise KeyMismatchError(
            f"Store {store_path} was made with an identifier key (fingerprint "
            f"{store.key_id}) that is not at {path}: no such file, and no key was created "
            f"there (a new key could not match the stored patient and file ids). Point "
            f"{KEY_FILE_ENV} at the key file the store was made with, or ingest into a new "
            "--store. Nothing was written."
        )
    key = identifier_key(path)
    fp = key_fingerprint(key)
    if store.key_id and store.key_id != fp:
        raise KeyMismatchError(
            f"Store {store_path} was made with another identifier key (fingerprint "
            f"{store.key_id}); the key file {key_file_path()} has fingerprint {fp}, so its "
            f"patient and file ids would not match the stored ones. Point {KEY_FILE_ENV} at the "
            "key file the store was made with, or ingest into a new --store. Nothing was written."
        )
    if record and not store.key_id:
        store.set_key_id(fp)
    return key


_KIND_NAMES = {"dicom": "DICOM", "nifti": "NIfTI"}


def _reader_for(
    store: ImageStore, store_path, config: IngestConfig
) -> tuple[ReaderSettings, ReaderSettings | None]:
    """How this ingest reads scanner files, and what the store records after it (None: leave
    its record as it is).

    ``config.dicom`` / ``config.nifti`` None take the store's recorded settings (the defaults
    where it records none). Settings for a kind of file the store already holds (DICOM, NIfTI)
    must equal the recorded ones; those of a kind it does not hold yet may change. A store
    written before mriscan recorded its settings that holds scanner slices keeps no record
    (how they were read is unknown): read with the defaults or the options given, with a
    warning (once per store and process) that this cannot be checked.

    Raises
    ------
    ConfigError
        A setting differs from the store's for a kind of file it holds; the message names
        each setting, the store's value and this ingest's, and what to do.
    """
    recorded = store.reader_settings
    wanted = ReadOptions(dicom=config.dicom, nifti=config.nifti).resolve(recorded)
    held = sorted(set(store.table.strings("kind")) & set(_KIND_NAMES)) if len(store) else []
    if recorded is None:
        if not held:
            return wanted, wanted
        _warn_once(
            "reader",
            store_path,
            "store %s holds %s slices but does not record how they were read (written by "
            "an older mriscan, which read them with the defaults unless --dicom-*/--nifti-*/"
            "--modality options were given): this ingest reads with %s and cannot check "
            "that they match",
            store_path,
            " and ".join(_KIND_NAMES[k] for k in held),
            "the defaults" if wanted == ReaderSettings() else "the options given",
        )
        return wanted, None
    diffs = recorded.differences(wanted, held)
    if diffs:
        raise ConfigError(
            _settings_differ(store_path, held, diffs, "this ingest asks for")
            + " Slices read two ways in one store would be trained on as one kind of data. "
            "Leave these options out (the store's settings are then used), or ingest into a "
            "new --store. Nothing was written."
        )
    return wanted, wanted


def _settings_differ(store_path, held: Sequence[str], diffs, asked: str) -> str:
    """ "Store S holds NIfTI slices read with --nifti-plane axial; <asked> --nifti-plane
    sagittal." for ``ReaderSettings.differences`` ``diffs`` of the ``held`` kinds."""
    kinds = " and ".join(_KIND_NAMES[k] for k in held)
    return (
        f"Store {store_path} holds {kinds} slices read with "
        + ", ".join(describe_setting(n, old) for n, old, _ in diffs)
        + f"; {asked} "
        + ", ".join(describe_setting(n, new) for n, _, new in diffs)
        + "."
    )


def check_reading_options(store: ImageStore, store_path, options: ReadOptions | None) -> None:
    """Refuse DICOM/NIfTI reading options given for an existing store (train, cv on a store)
    that differ from how its slices were read: they apply when files are ingested, and the
    store's slices were read otherwise (tester30: `train STORE --nifti-plane sagittal` trained
    on axial slices without a word). Options equal to the store's, or for a kind of file it
    does not hold, change nothing and pass.

    Raises
    ------
    ConfigError
        Naming each setting, the store's value and the option's, and what to do.
    """
    if options is None or not options.chosen:
        return
    recorded = store.reader_settings
    held = sorted(set(store.table.strings("kind")) & set(_KIND_NAMES)) if len(store) else []
    if recorded is None or not held:
        return
    diffs = recorded.differences(options.resolve(recorded), held)
    if diffs:
        raise ConfigError(
            _settings_differ(store_path, held, diffs, "the options given ask for")
            + " Reading options apply when files are ingested: leave them out to use the "
            "store as it is, or give the files as DATA with a new --store to read them so."
        )


def _refuse_store_inside(
    raw: Path, store_path: str | os.PathLike[str], *, what: str = "the data folder"
) -> None:
    """Refuse a store inside the class-folder tree it ingests, or inside a folder a manifest
    row names (``what`` says which): the next ingest of the tree would read the store as a
    class folder, or its files as bad inputs (tester31, tester32); and a store given as the
    tree.

    Raises
    ------
    ConfigError
        ``raw`` is a store; ``store_path`` is ``raw`` or lies below it (a CSV manifest's own
        folder is not checked: a manifest names its files; its folder rows are, by
        ``_listing``).
    """
    if raw.is_dir() and (raw / "index.json").is_file() and (raw / "zarr.json").is_file():
        raise ConfigError(  # its files were listed as bad inputs (tester31)
            f"{raw} is a store, not class folders: ingest reads class folders or a CSV "
            "manifest; train, cv and evaluate take a store as DATA."
        )
    if is_url(store_path) or not raw.is_dir():
        return
    tree, store = raw.resolve(), Path(store_path).resolve()
    if store == tree or tree in store.parents:
        raise ConfigError(
            f"--store {store_path} lies inside {what} {raw}: the store would be read as "
            "inputs by the next ingest. Choose a --store path outside it."
        )


def _remove_store(store_path: str | os.PathLike[str]) -> None:
    """Delete a store this run created (it never committed anything but an empty index)."""
    if is_url(store_path):
        return
    shutil.rmtree(local_path(store_path), ignore_errors=True)


class _MixedSeriesRedoError(Exception):
    """A series of this run mixes slice sizes: the run is redone with those files refused."""


@dataclass
class _InstanceConflicts:
    """DICOM instances (SOP Instance UID and frame) found under two classes by an ingest try:
    ``files`` maps the file id of each copy in this run to the other copies' names (for its
    label-conflict reason); ``positions`` are the stored samples of those instances (retired as
    ``"conflict"``). The next try refuses those files before reading anything."""

    files: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    positions: set[int] = dataclasses.field(default_factory=set)


class _InstanceConflictRedoError(Exception):
    """One DICOM instance sits under two classes: the run is redone with its copies refused."""

    def __init__(self, conflicts: _InstanceConflicts) -> None:
        super().__init__("DICOM instance label conflict")
        self.conflicts = conflicts


def _run(
    store,
    store_path,
    source,
    root,
    classes,
    jobs,
    problems,
    config,
    progress,
    t0,
    *,
    unused,
    hidden,
    series_errors: dict[Path, str] | None,
    reader_record: ReaderSettings | None = None,
    conflicts: _InstanceConflicts | None = None,
    key: bytes | None = None,
):
    """One ingest attempt; ``series_errors`` None: check series sizes on the slices read and
    raise ``_MixedSeriesRedoError`` (before anything is committed) when a series mixes sizes.
    ``reader_record``: the reading settings recorded in the store at the commit (None: left
    as they are). ``conflicts``: DICOM instances a former try found under two classes, whose
    copies are refused before reading; one found by this try raises
    ``_InstanceConflictRedoError`` (before anything is committed). ``key``: ``ingest``'s."""
    conflicts = conflicts if conflicts is not None else _InstanceConflicts()
    salt = _store_key(store, store_path, record=True, key=key)
    if reader_record is not None and store.reader_settings != reader_record:
        store.set_reader_settings(reader_record)
    # the folder is recorded by a salted pseudonym (its path may name a patient); a store of
    # an older mriscan that recorded the plain path keeps using that entry
    entry = _source_entry(store.index.sources, salt, source) or source_pseudonym(salt, source)
    store.add_source(entry)
    origin = store.index.sources.index(entry)
    names = list(store.class_names)
    names += [c for c in classes if c not in names]
    store.set_class_names(names)
    for j in jobs:
        j.label = names.index(classes[j.label])
    sources = store.index.sources

    def fid(orig: str, rel: str) -> str:
        # from the absolute folder path (as every mriscan so far): a file keeps its id
        return salted_hash(salt, "file", f"{orig}\x00{rel}")

    # format-1 records carry no file id yet: derive it from their relative path
    records = list(store.index.records)
    for i, r in enumerate(records):
        if not r.file_id and r.origin >= 0 and r.kind == "image" and r.source:
            records[i] = SampleRecord(**{**r.to_dict(), "flags": r.flags,
                                         "file_id": fid(sources[r.origin], r.source)})  # fmt: skip
            store.update_record(i, file_id=records[i].file_id)
    skipped: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []  # strict: everything that fails the run, all named
    notes: list[str] = []
    retire: dict[int, str] = {}
    key_updates: dict[int, str] = {}

    def fail(name: str, reason: str, into: list | None = None) -> None:
        if config.strict:  # nothing is stored: a warning's "all stored" would say otherwise
            refused.append((name, reason))
            return
        (skipped if into is None else into).append((name, reason))
        # the report lists it (the CLI prints it): a warning here would show it twice
        log.debug("reported: %s: %s", name, reason)

    for name, reason in (*problems, *unused):
        fail(name, reason)
    opts = ReadOptions(max_pixels=config.max_pixels, dicom=config.dicom, nifti=config.nifti)
    prefetch = None
    if _may_prefetch(jobs, records, origin, series_errors, conflicts):
        prefetch = _Prefetch(jobs, lambda j: _read_job(j, salt, root, opts), PREFETCH_BYTES)
    try:
        if prefetch is None:
            with ThreadPoolExecutor(max_workers=config.n_workers) as pool:
                list(pool.map(_hash, jobs))
        else:  # threads would queue for the GIL that the prefetching reader holds
            for j, digest in zip(jobs, file_sha256_apart([j.path for j in jobs]), strict=True):
                _set_hash(j, digest)
    finally:
        prefetched = prefetch.finish() if prefetch is not None else {}
    for j in jobs:
        j.file_id = fid(source, j.rel)
        if j.error is None and j.sha256 == _EMPTY_SHA256:  # not "the same bytes as" another
            j.error = EMPTY_FILE
    present = {j.file_id for j in jobs}
    active = [r for r in records if r.active]
    by_fid: dict[str, list[SampleRecord]] = {}
    for r in active:
        by_fid.setdefault(r.file_id, []).append(r)

    # 1. deleted files (not when a folder could not be listed: its files would look deleted)
    if any(why.startswith(UNLISTED_FOLDER) for _, why in problems):
        notes.append(
            "deleted files were not looked for: some folders could not be listed (see above)"
        )
    else:
        for r in active:
            if r.origin == origin and r.file_id and r.file_id not in present:
                retire[r.position] = "removed"
    # 2. label conflicts: the same bytes under two labels, now or against another folder
    labels_of: dict[str, set[int]] = {}
    where: dict[str, list[str]] = {}
    for j in jobs:
        if j.error is None:
            labels_of.setdefault(j.sha256, set()).add(j.label)
            where.setdefault(j.sha256, []).append(f"{j.rel} ({names[j.label]})")
    for r in active:
        if r.origin != origin and r.sha256 in labels_of:
            labels_of[r.sha256].add(r.label)
            where[r.sha256].append(
                f"a stored sample of {_folder_name(sources, r.origin)} ({names[r.label]})"
            )
    conflicted = {h for h, labs in labels_of.items() if len(labs) > 1}
    byte_conflicts = set(conflicted)  # by bytes alone (the instance conflicts join below)
    # one DICOM instance under two classes (found by a former try once read): as conflicting
    # bytes. A byte copy of such a file was not read; it is the same instance, so it goes too
    instance_of = {j.sha256: conflicts.files[j.file_id] for j in jobs
                   if j.error is None and j.file_id in conflicts.files}  # fmt: skip
    n_conflicts = 0
    for j in jobs:
        if j.error is not None:
            fail(j.rel, j.error)
        elif j.sha256 in conflicted:
            n_conflicts += 1
            others = [w for w in where[j.sha256] if not w.startswith(j.rel + " (")]
            fail(
                j.rel,
                f"label conflict: the same bytes are also stored as {', '.join(others)}; a "
                "slice cannot be both, and mriscan will not pick one by folder order: delete "
                "or move the wrong copy and rerun",
            )
        elif j.sha256 in instance_of:
            n_conflicts += 1
            others = [w for w in instance_of[j.sha256] if not w.startswith(j.rel + " (")]
            fail(
                j.rel,
                "label conflict: the same DICOM instance (SOP Instance UID) is also stored as "
                f"{', '.join(others)}; a slice cannot be both, and mriscan will not pick one by "
                "folder order: delete or move the wrong copy and rerun",
            )
    conflicted |= instance_of.keys()
    for r in active:
        if r.sha256 in conflicted or r.position in conflicts.positions:
            retire[r.position] = "conflict"
    # a file whose bytes changed keeps no old sample, whatever becomes of its new bytes (a
    # conflict, an exact duplicate, a decode error): the old pixels are no longer on disk
    for j in jobs:
        if j.error is None:
            for r in by_fid.get(j.file_id, []):
                if r.sha256 != j.sha256 and r.position not in retire:
                    retire[r.position] = "replaced"
    # 3. unchanged, relabelled and overwritten files
    todo: list[_Job] = []
    n_known = 0
    group_of = {j.file_id: _group_key(salt, j) for j in jobs}
    for j in jobs:
        if j.error is not None or j.sha256 in conflicted:
            continue
        old = [r for r in by_fid.get(j.file_id, []) if r.position not in retire]
        if old and all(r.sha256 == j.sha256 and r.label == j.label for r in old):
            n_known += 1
            key = group_of[j.file_id]
            for r in old:  # a manifest's group column may change (the reader's keys stay)
                own = [k for k in split_keys(r.group_key) if not k.startswith(_MANIFEST_KEY)]
                if (new_key := join_keys(key or "", *own)) != r.group_key:
                    key_updates[r.position] = new_key
            continue
        for r in old:
            retire[r.position] = "relabelled" if r.sha256 == j.sha256 else "replaced"
        todo.append(j)
    # a removed record whose bytes come back under another label: the file was moved
    moved = {j.sha256: j.label for j in todo}
    for pos, why in list(retire.items()):
        r = records[pos]
        if why == "removed" and r.sha256 in moved and moved[r.sha256] != r.label:
            retire[pos] = "relabelled"
    # ... and under the same label: renamed (a patient's folder renamed to anonymise it). Its
    # store flag stays "removed"; the report tells the two apart
    renamed = sum(
        1
        for pos, why in retire.items()
        if why == "removed" and moved.get(records[pos].sha256) == records[pos].label
    )
    # 4. exact duplicates of kept samples (same label: conflicts are gone by now)
    primary: dict[str, int] = {}
    for r in active:
        if r.position not in retire:
            primary.setdefault(r.sha256, r.position)
    old_dups = [d for d in store.index.duplicates if d.get("origin", 0) != origin]
    kept_dups = {
        (d["source"], d["sha256"]) for d in store.index.duplicates if d.get("origin", 0) == origin
    }
    # a DICOM copy of a stored instance in other bytes (another encoding) that a former run
    # recorded as a duplicate: still one while its bytes, label and stored instance stay
    copy_of = {
        d["file_id"]: (d["sha256"], int(d["duplicate_of"]))
        for d in store.index.duplicates
        if d.get("origin", 0) == origin and d.get("file_id")
    }
    dups: list[tuple[_Job, str]] = []
    to_add: list[_Job] = []
    pending_sha: set[str] = set()
    for j in todo:
        if j.sha256 in primary or j.sha256 in pending_sha:
            dups.append((j, j.sha256))
        elif (
            j.kind == "dicom"
            and (c := copy_of.get(j.file_id)) is not None
            and c[0] == j.sha256
            and 0 <= c[1] < len(records)
            and records[c[1]].active
            and c[1] not in retire
            and records[c[1]].label == j.label
            and records[c[1]].kind == "dicom"
        ):
            primary[j.sha256] = c[1]
            dups.append((j, j.sha256))
        else:
            pending_sha.add(j.sha256)
            to_add.append(j)
    # 5. decode and append the new files
    added = dict.fromkeys(classes, 0)
    not_images: list[tuple[str, str]] = []
    warned: list[tuple[str, str]] = []
    excluded: list[tuple[str, str]] = []
    placeholders: list[tuple[str, str]] = []
    read_notes: list[tuple[str, str]] = []
    unstored: dict[str, str] = {}  # sha256 -> the file of these bytes that was not stored
    check_sizes = series_errors is None
    series_errors = series_errors or {}
    shapes: dict[str, set[tuple[int, int]]] = {}  # DICOM series -> slice sizes seen (checked)
    # one sample per DICOM instance and frame, as predict scores them: a slice's source
    # (dicom/<series>/<instance>#<frame>) names its instance, so a copy in other bytes (another
    # transfer syntax) is recognised once read, against the active samples and this run's
    # Two files may share a SOP Instance UID and frame yet hold different pixels (an anonymiser
    # that reuses UIDs): those are two slices, each stored, so a source may have several
    # samples: the first under its source, the others under ``_slot(source, k)``
    instances: dict[str, tuple[int, int, str]] = {}  # slot -> (position, label, file id)
    if any(j.kind == "dicom" for j in to_add):
        for r in records:
            if r.kind == "dicom" and r.active and r.position not in retire:
                instances[_free_slot(r.source, instances)] = (r.position, r.label, r.file_id)
    copies: dict[str, list[tuple[int, str]]] = {}  # slot -> (label, file id) of each copy
    stored_instances: set[str] = set()  # sources of the DICOM slices this run stores
    pending_keys: list[str] = []
    pending_names: list[str] = []
    pending_labels: list[int] = []
    done = 0

    def load(j: _Job) -> tuple[InputRead, list[tuple[str, ...]]]:
        """The file's slices as read (decoded, windowed to uint8) and their warning flags, on a
        reader thread."""
        if j.path in series_errors:
            return InputRead(j.path, j.kind, error=series_errors[j.path]), []
        hit = prefetched.pop(j.path, None)  # read while the files were hashed
        return hit if hit is not None else _read_job(j, salt, root, opts)

    # The work is split by what holds the GIL. Reading a scanner file is mostly Python (the
    # DICOM header is parsed element by element): reader threads do only that, up to
    # ``2 * batch_size`` files ahead of the one being stored, taken in listing order (positions
    # do not depend on timing). Cropping, resizing and the signatures are Numba kernels that
    # release the GIL: the main thread runs them once per batch (``preprocess_serial``) while
    # the readers go on, so they take the second core instead of waiting for the GIL after
    # every slice. Each batch is then appended by one writer thread (pixel checksums, record
    # checks, the shard write), in order, while the main thread prepares the next batch.
    # Slices are appended as soon as ``batch_size`` of them are ready, so a few large files
    # (NIfTI volumes) are written while the next ones are read.
    window = 2 * config.batch_size
    images, labels, recs = [], [], []
    start = len(store) + store.n_pending  # the position of the first slice of this loop
    sent = 0  # slices handed to the writer so far
    appending: Future | None = None

    def flush() -> None:
        nonlocal images, labels, recs, pending_keys, sent, appending
        if images:
            pre, sig = preprocess_serial(images, config.preprocess, SIGNATURE_CONFIG)
            if appending is not None:
                appending.result()  # one batch in flight at most; its error surfaces here
            appending = writer.submit(store.append, pre, labels, recs, signatures=sig)
            pending_keys += [rec["group_key"] for rec in recs]
            sent += len(images)
        images, labels, recs = [], [], []

    n_committed = len(store)
    job_of = {j.file_id: j for j in jobs}

    def stored_checksum(pos: int) -> str:
        """The ``pixel_sha256`` of the sample at ``pos`` (committed, or this run's: its batch
        is appended first). Only for a DICOM instance read twice: rare, off the hot path."""
        if pos < n_committed:
            if records[pos].pixel_sha256:
                return records[pos].pixel_sha256
            return pixel_checksum(store.read_batch([pos])[0][0])  # a store without checksums
        if pos >= start + sent:
            flush()
        if appending is not None:
            appending.result()
        return store.pending_checksum(pos)

    def same_pixels(slot: str, s: InputSlice) -> bool:
        """Whether slice ``s`` stores as the same pixels as the sample holding ``slot``."""
        mine = pixel_checksum(preprocess_serial([s.image], config.preprocess)[0][0])
        return stored_checksum(instances[slot][0]) == mine

    def holder_name(slot: str) -> str:
        pos, _, fid = instances[slot]
        if fid in job_of:
            return job_of[fid].rel
        return _record_name(records[pos], job_of, sources) if pos < n_committed else "a file"

    with (
        ThreadPoolExecutor(max_workers=_readers(config, to_add)) as pool,
        ThreadPoolExecutor(max_workers=1) as writer,
    ):
        for k, (j, (r, slice_flags)) in enumerate(
            zip(to_add, _in_order(pool, load, to_add, window, _read_chunk(to_add)), strict=True)
        ):
            if r.error is not None or r.skipped is not None or r.excluded is not None:
                unstored[j.sha256] = j.rel
            if r.error is not None:
                fail(j.rel, r.error)
                pending_sha.discard(j.sha256)
            elif r.skipped is not None:
                not_images.append((j.rel, r.skipped))
            elif r.excluded is not None:
                fail(j.rel, r.excluded, into=excluded)
            else:
                kept = [(s, f, s.source) for s, f in zip(r.slices, slice_flags, strict=True)]
                matched: list[str] = []  # the slots this file's copied slices hold
                if j.kind == "dicom" and r.slices[0].instance is not None:
                    kept, matched, clashes = _new_instances(j, kept, instances, copies,
                                                            same_pixels)  # fmt: skip
                    if clashes:
                        fail(j.rel, f"same SOP Instance UID as {holder_name(clashes[0])} but "
                             f"{SAME_UID_OTHER_PIXELS}", into=warned)  # fmt: skip
                    if check_sizes and len(kept) < len(r.slices):
                        # a copy of another size makes its series mix sizes, as if stored
                        for s in r.slices:
                            if s.unit.startswith("series:"):
                                _add_shape(shapes, s.unit[len("series:") :], s.image.shape[:2])
                if not kept:  # every slice is a stored instance (or one of this run)
                    first_copy = instances[matched[0]]
                    primary.setdefault(j.sha256, first_copy[0])
                    if first_copy[1] == j.label:
                        dups.append((j, j.sha256))
                if r.placeholder_id and kept:
                    placeholders.append((j.rel, r.placeholder_id))
                if r.note:
                    read_notes.append((j.rel, r.note))
                key = group_of[j.file_id]
                first = start + sent + len(images)
                if kept:
                    primary.setdefault(j.sha256, first)
                for s, flags, slot in kept:
                    if check_sizes and s.unit.startswith("series:"):
                        _add_shape(shapes, s.unit[len("series:") :], s.image.shape[:2])
                    name = _slice_name(j, s.source)
                    if flags:
                        fail(name, describe_flags(flags, s.image), into=warned)
                    if j.kind == "dicom" and s.instance is not None:
                        instances[slot] = (start + sent + len(images), j.label, j.file_id)
                        stored_instances.add(s.source)
                    pending_names.append(name)
                    pending_labels.append(j.label)
                    images.append(s.image)
                    labels.append(j.label)
                    recs.append(
                        {
                            "source": s.source,
                            "sha256": j.sha256,
                            "height": int(s.image.shape[0]),
                            "width": int(s.image.shape[1]),
                            "flags": list(flags),
                            "kind": j.kind,
                            "file_id": j.file_id,
                            "origin": origin,
                            "group_key": join_keys(key or "", s.group_key),
                            "window": s.window,
                            "plane": s.plane,
                        }
                    )
                added[names[j.label]] += len(kept)
            last = k + 1 == len(to_add)
            if len(images) >= config.batch_size or last:
                flush()
            done += 1
            if progress is not None and (done % config.batch_size == 0 or last):
                progress(done, len(to_add))
        if appending is not None:
            appending.result()
    found = _instance_conflicts(
        copies, instances, records, jobs, names, sources, len(store), store.index.duplicates
    )
    _byte_conflict_instances(
        found, byte_conflicts, instances, jobs, active, len(store), read=lambda j: read_input(
            j.path, j.kind, salt=salt, root=root, options=opts
        ),
    )  # fmt: skip
    if found.files.keys() - conflicts.files.keys():
        found.files.update(conflicts.files)
        found.positions |= conflicts.positions
        raise _InstanceConflictRedoError(found)
    if check_sizes and shapes:
        # the unchanged DICOM files of this folder belong to the series they are in
        for r in records:
            if r.kind == "dicom" and r.active and r.position not in retire and r.file_id in present:
                parts = r.source.split("/")
                if len(parts) > 2:
                    _add_shape(shapes, parts[1], (r.height, r.width))
        if any(len(v) > 1 for v in shapes.values()):
            raise _MixedSeriesRedoError
    # 6. the duplicates list of this folder, rebuilt (deleted copies drop out)
    new_dups = []
    n_new_dups = 0
    for j, h in dups:
        if h not in primary:  # its original was not stored
            fail(
                j.rel,
                f"same bytes as {unstored.get(h, 'a file')}, which was not stored (see there)",
            )
            continue
        name = j.rel if j.kind == "image" else f"{j.kind}-file/{j.file_id}"
        new_dups.append({"source": name, "sha256": h, "duplicate_of": primary[h],
                         "origin": origin, "file_id": j.file_id})  # fmt: skip
        n_new_dups += (name, h) not in kept_dups
    # near-identical slices under two classes: the user must learn of it. The near-duplicate
    # links of the new slices are searched once, for this and for the split groups below
    near = _near_links(store)
    for name, reason in _mixed_classes(store, records, retire, jobs, sources, names,
                                       pending_names, pending_labels, near,
                                       stored=not config.strict):  # fmt: skip
        fail(name, reason, into=warned)
    empty = _empty_classes(classes, names, jobs, active, retire, pending_labels)
    if config.strict:
        refused += [
            (f"class {c}", empty_class_message(c, n).removeprefix(f"class {c} ")) for c, n in empty
        ]
    if refused:
        shown = "\n".join(f"  {n}: {r}" for n, r in refused)
        raise BadFilesError(
            f"Nothing was committed (--strict): {len(refused)} file(s) or folder(s) refused. "
            "Fix, move or remove them and rerun, or run without --strict to skip or flag them "
            f"(they are then listed in the report):\n{shown}"
        )
    store.set_duplicates(old_dups + new_dups)
    for pos, why in retire.items():
        store.update_record(pos, flags=(*records[pos].flags, why))
    for pos, key in key_updates.items():
        store.update_record(pos, group_key=key)
    # 7. split groups: near-duplicates of one class (``same_label_links`` says why not across
    # classes) joined with patients / volumes / manifest groups
    all_labels = np.concatenate([store.labels, np.asarray(pending_labels, np.int64)])
    if key_updates:  # a stored key changed: groups may split, recompute them all
        sigs = np.concatenate([store.signatures(), store.pending_signatures()])
        keys = [key_updates.get(r.position, r.group_key) for r in records] + pending_keys
        store.commit(groups=union_groups(duplicate_groups(sigs, labels=all_labels), keys))
    else:  # only new slices: link them to the stored groups (no stored pair is searched again)
        keyed = key_links(pending_keys, offset=len(store),
                          key_positions=store.positions_with_keys(pending_keys))  # fmt: skip
        store.commit(links=np.concatenate([same_label_links(near, all_labels), keyed]))
    counts = {w: sum(1 for v in retire.values() if v == w) for w in ("removed", "replaced",
                                                                     "relabelled")}  # fmt: skip
    # a deleted DICOM file whose instance (SOP Instance UID and frame) this run stored again
    # from a file of other bytes: renamed and rewritten (a header edited, re-exported). The
    # instance is still there with new content, as in a file overwritten in place: counted
    # as replaced, not as a deletion (its store flag stays "removed", as a rename's does)
    rewritten = sum(
        1
        for pos, why in retire.items()
        if why == "removed"
        and records[pos].kind == "dicom"
        and records[pos].source in stored_instances
        and moved.get(records[pos].sha256) != records[pos].label  # not renamed: its bytes
    )
    act = store.active_indices()
    return IngestReport(
        store=str(store_path),
        added=added,
        total=int(act.size),
        exact_duplicates=n_new_dups,
        already_stored=n_known,
        skipped=tuple(skipped),
        duplicate_groups=len(set(store.groups[act].tolist())),
        seconds=time.perf_counter() - t0,
        conflicts=n_conflicts,
        not_images=tuple(not_images),
        warnings=tuple(warned),
        notes=tuple(notes),
        excluded=tuple(excluded),
        ignored=tuple(hidden),
        placeholder_ids=tuple(placeholders),
        read_notes=tuple(read_notes),
        empty_classes=empty,
        removed=counts["removed"] - renamed - rewritten,
        replaced=counts["replaced"] + rewritten,
        relabelled=counts["relabelled"],
        renamed=renamed,
    )


def empty_class_message(name: str, n_files: int) -> str:
    """The warning for a class left with no stored slice (``IngestReport.empty_classes``)."""
    why = f": all its {n_files} file(s) failed, see above" if n_files else ""
    return f"class {name} has no stored slice{why}; train and cv need every class"


def _empty_classes(
    classes: Sequence[str],
    names: Sequence[str],
    jobs: Sequence[_Job],
    active: Sequence[SampleRecord],
    retire: Mapping[int, str],
    pending_labels: Sequence[int],
) -> tuple[tuple[str, int], ...]:
    """``(class, its files in this run)`` of each class of this run (``classes``) with no
    active sample once the run is committed: none of the stored ones left (``active`` less
    ``retire``) and none added (``pending_labels``); ``jobs``' labels index ``names``."""
    held = {r.label for r in active if r.position not in retire} | set(pending_labels)
    files = [j.label for j in jobs]
    return tuple((c, files.count(names.index(c))) for c in classes if names.index(c) not in held)


def _read_job(
    j: _Job, salt: bytes, root: Path, opts: ReadOptions
) -> tuple[InputRead, list[tuple[str, ...]]]:
    """The file's slices as read (decoded, windowed to uint8) and each slice's warning flags."""
    r = read_input(j.path, j.kind, salt=salt, root=root, options=opts)
    return r, [slice_warnings(s.image) for s in r.slices]


#: Decoded bytes (uint8 slices) that ``_Prefetch`` may hold: enough for the files it can read
#: while a large folder is hashed (~0.7 ms per 256x256 DICOM file, 64 KiB each), a bounded
#: share of memory for folders of any size.
PREFETCH_BYTES = 128 << 20


def _may_prefetch(
    jobs: Sequence[_Job],
    records: Sequence[SampleRecord],
    origin: int,
    series_errors: Mapping[Path, str] | None,
    conflicts: _InstanceConflicts,
) -> bool:
    """Whether a run reads DICOM files while it hashes them (``_Prefetch``): a first try
    (no file refused before reading) of a DICOM-only folder the store holds nothing of yet,
    so nearly every file will be read. A re-ingest would mostly read files already stored;
    NIfTI volumes and images are read by several threads outside the GIL, at a pace that
    the hash pass does not hold up as much."""
    return (
        series_errors is None
        and not conflicts.files
        and bool(jobs)
        and all(j.kind == "dicom" for j in jobs)
        and not any(r.origin == origin for r in records)
    )


class _Prefetch:
    """Reads ``jobs`` in order on one thread while the caller hashes them, until ``finish``.

    Why: a DICOM header is parsed in Python, holding the GIL, so ingest's one reader thread
    sets the pace of a DICOM run, and before this it waited for the whole hash pass (one
    SHA-256 of every file, which decides what is new, copied or conflicting). SHA-256 runs
    outside the GIL, so the reader can start on the listing's first files meanwhile; a file
    that the hash pass then leaves out (a copy, a conflict) is read for nothing, which is why
    only folders new to the store are prefetched (``_may_prefetch``). Reading stops at
    ``limit`` decoded bytes. A file whose read raises is left for the run's own read (where
    the error surfaces as it always did).
    """

    def __init__(
        self,
        jobs: Sequence[_Job],
        read: Callable[[_Job], tuple[InputRead, list[tuple[str, ...]]]],
        limit: int,
    ) -> None:
        self._stop = threading.Event()
        self._results: dict[Path, tuple[InputRead, list[tuple[str, ...]]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mriscan-prefetch")
        self._pool.submit(self._read, list(jobs), read, limit)

    def _read(self, jobs: list[_Job], read, limit: int) -> None:
        held = 0
        for j in jobs:
            if self._stop.is_set() or held >= limit:
                return
            try:
                out = read(j)
            except Exception:
                return  # not kept: the run reads this file again, and its error shows there
            self._results[j.path] = out
            held += sum(s.image.nbytes for s in out[0].slices)

    def finish(self) -> dict[Path, tuple[InputRead, list[tuple[str, ...]]]]:
        """Stop after the file being read; the reads so far, by path (the thread has ended)."""
        self._stop.set()
        self._pool.shutdown(wait=True)
        return self._results


#: DICOM files read per reader task. Each finished task wakes the main thread, and each
#: wake-up is a GIL hand-off between the reader (parsing headers in Python) and the main
#: thread: with one task per file, 2,000 single-slice files cost ~19,000 context switches.
DICOM_READ_CHUNK = 8


def _read_chunk(jobs: list[_Job]) -> int:
    """Files per reader task: ``DICOM_READ_CHUNK`` for DICOM-only runs (many small files, one
    reader); one for NIfTI volumes and images (large files, several readers: the first
    result should not wait for a whole chunk)."""
    return DICOM_READ_CHUNK if jobs and all(j.kind == "dicom" for j in jobs) else 1


def _in_order(pool: ThreadPoolExecutor, load, jobs: list, ahead: int, chunk: int):
    """``load(j)`` for each of ``jobs``, read by ``pool`` in tasks of ``chunk`` files, at most
    about ``ahead`` files ahead of the consumer, yielded in the order of ``jobs``."""
    chunks = [jobs[s : s + chunk] for s in range(0, len(jobs), chunk)]
    n_ahead = max(1, ahead // chunk)

    def task(chunk: list) -> list:
        return [load(j) for j in chunk]

    inflight: deque[Future] = deque(pool.submit(task, c) for c in chunks[:n_ahead])
    nxt = len(inflight)
    while inflight:
        done = inflight.popleft().result()
        if nxt < len(chunks):
            inflight.append(pool.submit(task, chunks[nxt]))
            nxt += 1
        yield from done


def _readers(config: IngestConfig, jobs: list[_Job]) -> int:
    """Reader threads of a run. DICOM headers are parsed in Python, holding the GIL: with
    only DICOM files to read, ``workers`` less the main thread (which preprocesses and stores;
    at least one), since a second parser on two cores only contends for the GIL with the
    first and with the main thread's kernels (measured slower). NIfTI volumes and JPEG/PNG
    images are mostly decompressed outside the GIL (zlib, Pillow): ``workers`` readers."""
    if jobs and all(j.kind == "dicom" for j in jobs):
        return max(1, config.n_workers - 1)
    return config.n_workers


#: Why a DICOM file that shares a SOP Instance UID (and frame) with another but holds other
#: pixels is stored (ingest) after "same SOP Instance UID as <the other>": not a copy
SAME_UID_OTHER_PIXELS = (
    "different pixels: stored as a slice of its own; the file's UIDs are not unique (an "
    "anonymiser that reuses UIDs?)"
)


def _slot(source: str, k: int) -> str:
    """The key under which the ``k``-th sample of a DICOM source (SOP Instance UID and frame)
    is known to ``_new_instances``: the source itself for the first, then ``source``, NUL,
    ``k`` (no source holds a NUL)."""
    return source if k == 0 else f"{source}\x00{k}"


def _free_slot(source: str, instances: Mapping[str, Any]) -> str:
    """The first slot of ``source`` (``_slot``) that ``instances`` does not hold yet."""
    k = 0
    while _slot(source, k) in instances:
        k += 1
    return _slot(source, k)


def _new_instances(
    job: _Job,
    slices: list[tuple[InputSlice, tuple[str, ...], str]],
    instances: dict[str, tuple[int, int, str]],
    copies: dict[str, list[tuple[int, str]]],
    same_pixels: Callable[[str, InputSlice], bool],
) -> tuple[list[tuple[InputSlice, tuple[str, ...], str]], list[str], list[str]]:
    """Split the ``(slice, flags, slot)`` of a DICOM file by its instances and frames
    (``InputSlice.source``) against ``instances`` (slot -> (position, label, file id) of the
    sample that holds it: active stored ones and this run's; slots: ``_slot``).

    A slice whose source is held by a sample of the same pixels (``same_pixels(slot, slice)``,
    asked only when the source is held) is a copy: noted in ``copies`` (slot -> (label, file
    id) of every further copy) and not stored again. One whose source is held only by other
    pixels is no copy (an anonymiser that reuses UIDs): kept, under the source's next free
    slot. Returns ``(kept, matched, clashes)``: the slices to store (each with its slot), the
    slots the copies matched, and for each kept slice whose source was held, one slot
    holding it with other pixels."""
    out: list[tuple[InputSlice, tuple[str, ...], str]] = []
    matched: list[str] = []
    clashes: list[str] = []
    for s, flags, _ in slices:
        k, other = 0, None
        while (slot := _slot(s.source, k)) in instances:
            if same_pixels(slot, s):
                copies.setdefault(slot, []).append((job.label, job.file_id))
                matched.append(slot)
                break
            other = other or slot
            k += 1
        else:
            out.append((s, flags, slot))
            if other is not None:
                clashes.append(other)
    return out, matched, clashes


def _instance_conflicts(
    copies: dict[str, list[tuple[int, str]]],
    instances: dict[str, tuple[int, int, str]],
    records: list[SampleRecord],
    jobs: list[_Job],
    names: list[str],
    sources: list[str],
    n_stored: int,
    duplicates: Sequence[Mapping[str, Any]] = (),
) -> _InstanceConflicts:
    """The DICOM instances of ``copies`` held under more than one class (by the first sample,
    ``instances``, and its copies): every copy's file in this run with the others' names, and
    the stored samples of those instances (``_InstanceConflicts``). A stored sample's copies in
    other bytes that a former run recorded (``duplicates`` entries with a ``file_id``) are
    copies too: refused with it, so that none is promoted in its place by the next run."""
    out = _InstanceConflicts()
    by_fid = {j.file_id: j for j in jobs}
    recorded: dict[int, list[str]] = {}  # stored position -> file ids of its recorded copies
    for d in duplicates:
        if d.get("file_id") and d.get("duplicate_of") is not None:
            recorded.setdefault(int(d["duplicate_of"]), []).append(str(d["file_id"]))
    for source, more in copies.items():
        pos, label, fid = instances[source]
        if all(lab == label for lab, _ in more):
            continue
        held = [(label, fid, pos), *((lab, f, -1) for lab, f in more)]
        if pos < n_stored:
            held += [(label, f, pos) for f in recorded.get(pos, ()) if f in by_fid]
        where = []
        for lab, f, p in held:
            if f in by_fid:
                where.append(f"{by_fid[f].rel} ({names[lab]})")
            else:
                origin = records[p].origin if 0 <= p < n_stored else -1
                where.append(f"a stored sample of {_folder_name(sources, origin)} ({names[lab]})")
        for _, f, _ in held:
            if f in by_fid:
                seen = out.files.setdefault(f, [])
                seen += [w for w in where if w not in seen]
        if pos < n_stored:
            out.positions.add(pos)
    return out


def _byte_conflict_instances(
    found: _InstanceConflicts,
    byte_conflicts: set[str],
    instances: dict[str, tuple[int, int, str]],
    jobs: list[_Job],
    active: Sequence[SampleRecord],
    n_stored: int,
    read: Callable[[_Job], InputRead],
) -> None:
    """Add to ``found`` the copies in other bytes of DICOM instances whose files are label
    conflicts by their bytes (the same file under two classes): those files are refused before
    they are read, so without this their instance stayed unknown and a copy of it in another
    encoding was stored under one of the classes (verifier NP1, sixteenth session). The refused
    files' instances come from the store (stored copies) or from reading them here (rare: only
    DICOM files in a byte conflict)."""
    if not byte_conflicts or not instances:
        return
    held: dict[str, str] = {}  # instance (source without its frame) -> a conflicted file's name
    known: set[str] = set()  # bytes whose instances are known: each is read at most once
    for r in active:
        if r.kind == "dicom" and r.sha256 in byte_conflicts:
            held.setdefault(r.source.rsplit("#", 1)[0], "a stored sample")
            known.add(r.sha256)
    for j in jobs:
        if (
            j.kind == "dicom"
            and j.error is None
            and j.sha256 in byte_conflicts
            and j.sha256 not in known
        ):
            known.add(j.sha256)
            for s in read(j).slices:
                held.setdefault(s.source.rsplit("#", 1)[0], j.rel)
    by_fid = {j.file_id: j for j in jobs}
    for source, (pos, _label, fid) in instances.items():
        name = held.get(source.rsplit("#", 1)[0])
        if name is None:
            continue
        if fid in by_fid and by_fid[fid].sha256 not in byte_conflicts:
            seen = found.files.setdefault(fid, [])
            why = f"{name} (its bytes sit under two classes)"
            if why not in seen:
                seen.append(why)
        if 0 <= pos < n_stored:
            found.positions.add(pos)


def _add_shape(shapes: dict[str, set[tuple[int, int]]], series: str, shape) -> None:
    """Note a slice size of a DICOM series (``series``: its pseudonym in the slice source;
    ``i<instance>``, a file without Series Instance UID, is a series of its own)."""
    if not series.startswith("i"):  # pseudonyms are hex
        shapes.setdefault(series, set()).add((int(shape[0]), int(shape[1])))


def _near_links(store: ImageStore) -> np.ndarray:
    """Near-duplicate links of the store's pending slices to each other and to the stored ones
    (``mriscan.duplicates.near_links``), (E, 2) int64; with the group keys' links
    (``key_links``) appended, the split-group links of ``mriscan.duplicates.new_links``."""
    if store.n_pending == 0:
        return np.empty((0, 2), np.int64)
    return near_links(
        store.pending_signatures(),
        offset=len(store),
        projections=store.signature_projections(),
        read_signatures=store.signature_rows,
        constants=store.constant_signatures(),
    )


_MANIFEST_KEY = "manifest:"


def _group_key(salt: bytes, job: _Job) -> str | None:
    """The split-group key a manifest row gives (None: none); it joins the reader's own key
    (patient / study / series / volume, ``mriscan.splits.join_keys``), never replaces it."""
    if job.group is None:
        return None
    return _MANIFEST_KEY + salted_hash(salt, "group", job.group)


def _slice_name(job: _Job, source: str) -> str:
    """How the report names one slice: the file, plus ``#frame`` / ``#slice`` for scanner
    files (never the pseudonym's identifiers)."""
    return job.rel if job.kind == "image" else f"{job.rel}#{source.rsplit('#', 1)[-1]}"


def _record_name(r: SampleRecord, jobs_by_fid: dict[str, _Job], sources: list[str]) -> str:
    """The report name of a stored sample: its file in this run, else its stored source."""
    job = jobs_by_fid.get(r.file_id)
    if job is not None:
        return _slice_name(job, r.source)
    where = _folder_name(sources, r.origin)
    return f"{r.source} (stored from {where})"


_SHOWN = 5  # names of each class that a near-identical group's warning shows


def _mixed_classes(
    store: ImageStore,
    records: list[SampleRecord],
    retire: dict[int, str],
    jobs: list[_Job],
    sources: list[str],
    classes: list[str],
    pending_names: list[str],
    pending_labels: list[int],
    links: np.ndarray,
    *,
    stored: bool = True,
) -> list[tuple[str, str]]:
    """``(first name, reason)`` for each near-duplicate group that a slice of this run joins
    and that holds slices of more than one class; the reason says "all stored" when
    ``stored`` (False: ``--strict`` refuses them, nothing is stored).

    The groups are the connected components of ``links``, the near-duplicate links of the new
    (pending) slices among themselves and to the stored ones (``_near_links``: no group keys, as
    a patient may rightly have slices of two classes, a near-identical slice may not), between
    active slices. Only the new slices are searched, as for the split groups, so a conflict is
    reported by the run that stores it.
    """
    m = store.n_pending
    if m == 0:
        return []
    n = len(store)
    # the linked positions that take part: new slices, and stored ones still active; their
    # components by a Numba union-find (a Python loop took 10-40 ms for 4k-12k links)
    nodes = np.unique(links)
    live = np.array(
        [p >= n or (records[p].active and p not in retire) for p in nodes.tolist()], bool
    ).reshape(-1)
    ends = np.searchsorted(nodes, links.reshape(-1, 2))
    kept = live[ends].all(axis=1) if len(ends) else np.zeros(0, bool)
    root = component_minima(ends[kept, 0].copy(), ends[kept, 1].copy(), len(nodes))
    members: dict[int, list[int]] = {}
    for p, r in zip(nodes[live].tolist(), root[live].tolist(), strict=True):
        members.setdefault(r, []).append(p)
    by_fid = {j.file_id: j for j in jobs}

    def label_name(p: int) -> tuple[str, str]:
        if p >= n:
            return classes[pending_labels[p - n]], pending_names[p - n]
        return classes[records[p].label], _record_name(records[p], by_fid, sources)

    out = []
    for rows in members.values():
        seen = sorted({label_name(p) for p in rows})
        by_class: dict[str, list[str]] = {}
        for c, name in seen:
            by_class.setdefault(c, []).append(name)
        if len(by_class) < 2:
            continue
        # every class, the largest first: how many, and the first few names
        listed = "; ".join(
            f"{len(names)} {c} ({', '.join(names[:_SHOWN])}"
            + (f" and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ")")
            for c, names in sorted(by_class.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        )
        out.append(
            (
                seen[0][1],
                f"near-identical slices{', all stored,' if stored else ''} under "
                f"{len(by_class)} classes: {listed}. "
                "One slice cannot be both: check the labels, then delete or move the wrong "
                "copies (split groups join near-duplicates of one class only, so until then "
                "these copies can fall on both sides of a split)",
            )
        )
    return sorted(out)
