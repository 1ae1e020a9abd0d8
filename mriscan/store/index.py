"""The store's index schema: one ``SampleRecord`` per committed slice, in ``index.json``.

``index.json`` is the commit point of a store: the arrays may hold more rows than it names
(leftovers of an interrupted writer), never fewer. This module owns its fields, its format
version and its (de)serialisation; nothing here touches files or arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mriscan.errors import StoreCorruptError
from mriscan.preprocess import PreprocessConfig

__all__ = [
    "FORMAT_VERSION",
    "INDEX_KEY",
    "RETIRED_FLAGS",
    "SampleRecord",
    "StoreIndex",
    "decode_index",
    "encode_index",
    "pixel_checksum",
]

FORMAT_VERSION = 2
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
        What must stay on one side of a split, as a salted hash: ``patient:<h>`` (or ``study:``,
        ``series:``, ``instance:`` when the DICOM header lacks the patient ID), ``volume:<h>``,
        ``manifest:<h>`` (a manifest's group column); ``""`` for plain images.
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
class StoreIndex:
    """The committed state of a store, written to ``index.json`` as one atomic replace."""

    image_size: int
    config: PreprocessConfig
    class_names: tuple[str, ...] = ()
    records: tuple[SampleRecord, ...] = ()
    duplicates: tuple[dict[str, Any], ...] = ()
    sources: tuple[str, ...] = ()
    salt: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "format_version": self.format_version,
            "image_size": self.image_size,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "count": len(self.records),
            "records": [r.to_dict() for r in self.records],
            "duplicates": list(self.duplicates),
            "sources": list(self.sources),
            "salt": self.salt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreIndex:
        """Inverse of ``to_dict``; rejects unknown format versions (StoreCorruptError).

        A format-1 index (before scanner data) is read as format 2 with "no salt yet" (``salt``
        empty: the next ingest creates one) and records that were all plain images from the
        store's one raw folder (``origin`` 0; -1 when the store lists several folders, whose
        files then cannot be matched on re-ingest). It is written as format 2 at the next
        commit.
        """
        version = data.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise StoreCorruptError(
                f"index.json has format_version {version!r}; this mriscan reads versions 1 "
                f"and {FORMAT_VERSION}. Re-ingest the data with this version into a new --store."
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
        )


def encode_index(index: StoreIndex) -> bytes:
    """The bytes of ``index.json`` for ``index`` (compact JSON, UTF-8)."""
    return json.dumps(index.to_dict()).encode()


def decode_index(raw: bytes, where: str) -> StoreIndex:
    """Parse the bytes of ``index.json``; ``where`` names the store in the error.

    Raises
    ------
    StoreCorruptError
        The bytes are not JSON, or not an index of the supported format version.
    """
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found a {type(data).__name__}")
        return StoreIndex.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreCorruptError(f"{where}/index.json is unreadable ({exc}).") from exc


def pixel_checksum(image: np.ndarray) -> str:
    """Short SHA-256 (first 16 hex digits) of a stored slice's bytes, C order."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]
