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
    "SampleRecord",
    "StoreIndex",
    "decode_index",
    "encode_index",
    "pixel_checksum",
]

FORMAT_VERSION = 1
INDEX_KEY = "index.json"


@dataclass(frozen=True)
class SampleRecord:
    """One stored slice: where it came from and how to check it.

    ``position`` is the row in the images array; ``group`` the near-duplicate group id (-1 before
    the first commit assigns one); ``pixel_sha256`` the ``pixel_checksum`` of the stored slice.
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
        for name in ("position", "label", "height", "width", "group"):
            v = data.get(name, -1 if name == "group" else None)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"record field {name!r} must be an integer, got {v!r}")
        for name in ("source", "sha256", "pixel_sha256"):
            if not isinstance(data.get(name, ""), str):
                raise ValueError(f"record field {name!r} must be a string, got {data[name]!r}")
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreIndex:
        """Inverse of ``to_dict``; rejects unknown format versions (StoreCorruptError)."""
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreCorruptError(
                f"index.json has format_version {version!r}; this mriscan reads version "
                f"{FORMAT_VERSION}. Re-ingest the data with this version."
            )
        return cls(
            image_size=int(data["image_size"]),
            config=PreprocessConfig.from_dict(data["config"]),
            class_names=tuple(data["class_names"]),
            records=tuple(SampleRecord.from_dict(r) for r in data["records"]),
            duplicates=tuple(data.get("duplicates", ())),
            sources=tuple(data.get("sources", ())),
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
