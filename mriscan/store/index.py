"""The store's index schema: ``SampleRecord`` (one per committed slice), ``StoreIndex`` and the
manifest ``index.json``.

``index.json`` is the commit point of a store: the arrays and column files may hold more rows
than it names (leftovers of an interrupted writer), never fewer. Formats 3 and 4 keep the
records in append-only column files (``mriscan.store.columns``) and ``index.json`` is a small
manifest (``Manifest``: counts, config, classes, salt, sources); format 4 (this version) adds a
promise about the writer: before it writes a row past the committed end it records how far it
will write (``write.pending``), so the next writer removes a dead one's leftovers without listing
the store (a format-3 store's next writer lists them once). Formats 1 and 2 held every record
in ``index.json`` and are still read (``StoreIndex.from_dict``). This module owns the fields, the
format version and the (de)serialisation; nothing here touches files or arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mriscan.errors import ConfigError, StoreCorruptError
from mriscan.preprocess import PreprocessConfig
from mriscan.scan_config import ReaderSettings

__all__ = [
    "FORMAT_VERSION",
    "INDEX_KEY",
    "LEGACY_VERSIONS",
    "MANIFEST_VERSIONS",
    "RETIRED_FLAGS",
    "Manifest",
    "SampleRecord",
    "StoreIndex",
    "decode_index",
    "encode_manifest",
    "pixel_checksum",
]

FORMAT_VERSION = 4
#: versions whose ``index.json`` holds every record; read as they are, written as the current
#: format at the next commit (or by ``mriscan migrate``)
LEGACY_VERSIONS = (1, 2)
#: manifest versions (records in column files): 3 is read as it is and written as 4 at the next
#: commit
MANIFEST_VERSIONS = (3, FORMAT_VERSION)
INDEX_KEY = "index.json"
#: Flags of a record whose file is gone or changed: its row stays in the arrays (commits only
#: ever append), but training, CV, evaluation and duplicate matching skip it.
RETIRED_FLAGS = frozenset({"removed", "replaced", "relabelled", "conflict"})
_KINDS = ("image", "dicom", "nifti")


@dataclass(frozen=True)
class SampleRecord:
    """One stored slice: where it came from and how to check it.

    ``position`` is the row in the images array; ``group`` the split group id (-1 before the
    first commit assigns one): ``mriscan.ingest`` makes it the union of near-duplicate slices and
    slices of one patient / volume / manifest group; ``pixel_sha256`` the ``pixel_checksum`` of
    the stored slice.

    Format 2 fields (defaults for records read from a format-1 index):

    ``kind``
        ``"image"`` (JPEG/PNG), ``"dicom"`` or ``"nifti"``.
    ``source``
        The path relative to the raw folder for images; for DICOM/NIfTI a pseudonym that holds no
        file or folder name (``dicom/<series-hash>/<instance-hash>#<frame>``,
        ``nifti/<volume-hash>#<slice>``): scanner exports are often named after the patient.
    ``file_id``
        Salted hash of (raw folder, path relative to it): how a re-ingest finds the record of a
        file that moved, changed or disappeared, without storing the path.
    ``origin``
        Index into ``StoreIndex.sources`` of the raw folder or manifest the file came from
        (-1: unknown, a format-1 store built from several folders).
    ``group_key``
        What must stay on one side of a split, as keyed hashes: ``patient:<h>`` (or ``study:``,
        ``series:``, ``instance:`` when the DICOM header lacks the patient ID or holds a
        placeholder), ``volume:<h>``, ``manifest:<h>`` (a manifest's group column); several
        keys joined by a space when a manifest group meets a patient or volume
        (``mriscan.splits.join_keys``); ``""`` for plain images.
    ``window``, ``plane``
        The intensity window used (``"header"``, ``"percentile"``, ``"none"``; ``""`` for plain
        images) and the slice plane (``"axial"``, ``"coronal"``, ``"sagittal"``, ``"unknown"``,
        ``""``).
    ``flags``
        ``RETIRED_FLAGS`` mark a record whose file was deleted (``removed``), overwritten
        (``replaced``), moved to another class (``relabelled``) or whose bytes now also sit
        under another class (``conflict``) (see ``active``); ``"uniform"`` / ``"thin"`` mark
        slices stored with a warning.
    """

    position: int
    source: str
    sha256: str
    label: int
    height: int
    width: int
    group: int = -1
    pixel_sha256: str = ""
    flags: tuple[str, ...] = ()
    kind: str = "image"
    file_id: str = ""
    origin: int = -1
    group_key: str = ""
    window: str = ""
    plane: str = ""

    @property
    def active(self) -> bool:
        """False when the record is retired (its file was deleted, overwritten or moved)."""
        return not RETIRED_FLAGS.intersection(self.flags)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = {f: getattr(self, f) for f in _RECORD_FIELDS}
        d["flags"] = list(self.flags)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        """Inverse of ``to_dict``; checks every field's kind and range.

        Raises
        ------
        ValueError
            A field is missing, unknown, of the wrong kind (e.g. a position that is a string or a
            float) or out of range (a label outside [0, 255], a negative position).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(_RECORD_FIELDS)
        if unknown:
            raise ValueError(f"record has unknown fields {sorted(unknown)}")
        for name in ("position", "label", "height", "width", "group", "origin"):
            v = data.get(name, -1 if name in ("group", "origin") else None)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"record field {name!r} must be an integer, got {v!r}")
        for name in ("source", "sha256", "pixel_sha256", "file_id", "group_key", "window", "plane"):
            if not isinstance(data.get(name, ""), str):
                raise ValueError(f"record field {name!r} must be a string, got {data[name]!r}")
        if data.get("kind", "image") not in _KINDS:
            raise ValueError(f"record field 'kind' must be one of {_KINDS}, got {data['kind']!r}")
        flags = data.get("flags", ())
        if not isinstance(flags, list | tuple) or not all(isinstance(f, str) for f in flags):
            raise ValueError(f"record field 'flags' must be a list of strings, got {flags!r}")
        if data["position"] < 0 or not 0 <= data["label"] <= 255 or data.get("group", -1) < -1:
            raise ValueError(
                f"record out of range: position {data['position']}, label {data['label']} "
                f"(0..255), group {data.get('group', -1)}"
            )
        return cls(**{**data, "flags": tuple(data.get("flags", ()))})


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(SampleRecord))


@dataclass(frozen=True)
class Manifest:
    """Where the committed state of a format-3/4 store ends, as ``index.json`` records it.

    ``count`` rows of every column; ``patch_bytes`` of ``index/patches.jsonl``; the group
    generation ``group_file`` (``index/group.<g>.i8``, ``index/merges.<g>.i8``) and its number of
    ``merges``; ``constants``: the first position of each constant signature value (blank
    slices group by value); ``duplicates_file``: the JSON list of exact-duplicate files
    (``""``: none).
    """

    count: int = 0
    patch_bytes: int = 0
    group_file: str = "0"
    merges: int = 0
    constants: dict[int, int] = field(default_factory=dict)
    duplicates_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (merged into ``index.json``)."""
        return {
            "count": self.count,
            "patch_bytes": self.patch_bytes,
            "group_file": self.group_file,
            "merges": self.merges,
            "constants": {str(k): v for k, v in sorted(self.constants.items())},
            "duplicates_file": self.duplicates_file,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Inverse of ``to_dict``; raises ValueError for a field of the wrong kind or range."""
        for name in ("count", "patch_bytes", "merges"):
            v = data.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"manifest field {name!r} must be an integer >= 0, got {v!r}")
        gen, dup = data.get("group_file"), data.get("duplicates_file", "")
        if not isinstance(gen, str) or not gen.isdigit():
            raise ValueError(f"manifest field 'group_file' must be a number string, got {gen!r}")
        if not isinstance(dup, str) or (dup and not dup.startswith("index/")):
            raise ValueError(f"manifest field 'duplicates_file' is not a column file: {dup!r}")
        consts = data.get("constants", {})
        if not isinstance(consts, dict) or not all(
            isinstance(v, int) and 0 <= v < data["count"] for v in consts.values()
        ):
            raise ValueError(f"manifest field 'constants' is malformed: {consts!r}")
        return cls(
            count=data["count"],
            patch_bytes=data["patch_bytes"],
            group_file=gen,
            merges=data["merges"],
            constants={int(k): int(v) for k, v in consts.items()},
            duplicates_file=dup,
        )


@dataclass(frozen=True)
class StoreIndex:
    """The committed state of a store.

    ``records`` and ``duplicates`` are sequences; in an open format-3/4 store they are read from
    the column files when used (``mriscan.store.table.RecordView``), so opening stays cheap.
    ``format_version`` is the version the store was read as (1 or 2: converted at the next
    commit). ``key_id`` is the fingerprint of the identifier key the store's ids were hashed
    with (``mriscan.keys.key_fingerprint``; the key itself is never stored); ``salt`` is the
    hex salt that stores written before the key left the store kept here ("" in newer ones).
    ``reader`` is how the store's DICOM and NIfTI files were read
    (``mriscan.scan_config.ReaderSettings``, ``"reader"`` in ``index.json``); None in a store
    written before mriscan recorded it (then unknown: the defaults are assumed, and a store
    holding scanner slices is never given settings it may not have been read with).
    """

    image_size: int
    config: PreprocessConfig
    class_names: tuple[str, ...] = ()
    records: Sequence[SampleRecord] = ()
    duplicates: Sequence[dict[str, Any]] = ()
    sources: tuple[str, ...] = ()
    salt: str = ""
    key_id: str = ""
    format_version: int = FORMAT_VERSION
    reader: ReaderSettings | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of a format-2 index (every record inline; for tests and tools)."""
        return {
            "format_version": 2,
            "image_size": self.image_size,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "count": len(self.records),
            "records": [r.to_dict() for r in self.records],
            "duplicates": list(self.duplicates),
            "sources": list(self.sources),
            "salt": self.salt,
            "key_id": self.key_id,
            "reader": None if self.reader is None else self.reader.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreIndex:
        """A format-1/2 ``index.json`` (every record inline); rejects other versions
        (StoreCorruptError).

        A format-1 index (before scanner data) is read as format 2 with "no salt yet" (``salt``
        empty: the next ingest creates one) and records that were all plain images from the
        store's one raw folder (``origin`` 0; -1 when the store lists several folders, whose
        files then cannot be matched on re-ingest). It is written as format 2 at the next
        commit (the current format: ``mriscan migrate --store PATH`` does it without ingesting).
        """
        version = data.get("format_version")
        if version not in LEGACY_VERSIONS:
            raise StoreCorruptError(
                f"index.json has format_version {version!r}; this mriscan reads versions 1 to "
                f"{FORMAT_VERSION}. Re-ingest the data with this version into a new --store."
            )
        records = data["records"]
        if version == 1:
            origin = 0 if len(data.get("sources", ())) == 1 else -1
            records = [{**r, "origin": origin} if isinstance(r, dict) else r for r in records]
        salt = data.get("salt", "")
        if not isinstance(salt, str) or (salt and len(salt) < 32):
            raise ValueError(f"salt must be a hex string of >= 32 characters, got {salt!r}")
        return cls(
            image_size=int(data["image_size"]),
            config=PreprocessConfig.from_dict(data["config"]),
            class_names=tuple(data["class_names"]),
            records=tuple(SampleRecord.from_dict(r) for r in records),
            duplicates=tuple(data.get("duplicates", ())),
            sources=tuple(data.get("sources", ())),
            salt=salt,
            key_id=_key_id(data),
            format_version=version,
            reader=_reader(data),
        )


def _reader(data: dict[str, Any]) -> ReaderSettings | None:
    """The ``reader`` of an index dict (absent before mriscan recorded it: None)."""
    raw = data.get("reader")
    if raw is None:
        return None
    try:
        return ReaderSettings.from_dict(raw)
    except ConfigError as exc:
        raise ValueError(f"reader {exc}") from exc


def _key_id(data: dict[str, Any]) -> str:
    """The ``key_id`` of an index dict (absent before the key left the store: "")."""
    key_id = data.get("key_id", "")
    if not isinstance(key_id, str) or (key_id and len(key_id) != 16):
        raise ValueError(f"key_id must be 16 hex characters, got {key_id!r}")
    return key_id


def encode_manifest(index: StoreIndex, manifest: Manifest) -> bytes:
    """The bytes of a current-format ``index.json`` (compact JSON, UTF-8): the header of ``index``
    (records and duplicates live in column files) and ``manifest``."""
    return json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "image_size": index.image_size,
            "config": index.config.to_dict(),
            "class_names": list(index.class_names),
            "sources": list(index.sources),
            "salt": index.salt,
            "key_id": index.key_id,
            "reader": None if index.reader is None else index.reader.to_dict(),
            **manifest.to_dict(),
        }
    ).encode()


def decode_index(raw: bytes, where: str) -> tuple[StoreIndex, Manifest | None]:
    """Parse the bytes of ``index.json``; ``where`` names the store in the error.

    Returns
    -------
    index : StoreIndex
        For format 3/4 without records or duplicates (the caller attaches views of the column
        files); for formats 1/2 with every record.
    manifest : Manifest or None
        None for formats 1/2.

    Raises
    ------
    StoreCorruptError
        The bytes are not JSON, or not an index of a supported format version.
    """
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found a {type(data).__name__}")
        version = data.get("format_version")
        if version not in MANIFEST_VERSIONS:
            return StoreIndex.from_dict(data), None
        salt = data["salt"]  # formats 3/4 always write the key ("" before the first ingest)
        if not isinstance(salt, str) or (salt and len(salt) < 32):
            raise ValueError(f"salt must be a hex string of >= 32 characters, got {salt!r}")
        if not all(isinstance(x, str) for x in [*data["class_names"], *data["sources"]]):
            raise ValueError("class_names and sources must be lists of strings")
        names = data["class_names"]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"class_names must be distinct and non-empty, got {names!r}")
        index = StoreIndex(
            image_size=int(data["image_size"]),
            config=PreprocessConfig.from_dict(data["config"]),
            class_names=tuple(data["class_names"]),
            sources=tuple(data["sources"]),
            salt=salt,
            key_id=_key_id(data),
            format_version=version,
            reader=_reader(data),
        )
        return index, Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreCorruptError(f"{where}/index.json is unreadable ({exc}).") from exc


def pixel_checksum(image: np.ndarray) -> str:
    """Short SHA-256 (first 16 hex digits) of a stored slice's bytes, C order."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]
