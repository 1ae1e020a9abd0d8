"""The store's per-sample records as append-only column files (index format 3).

Each record field is one column below ``index/`` in the store:

- fixed width: ``label.u1``, ``height.i4``, ``width.i4``, ``origin.i4``, ``flags.u1`` (a bit
  mask over ``FLAG_BITS``), ``keyhash.i8`` (64-bit BLAKE2b of ``group_key``; 0 for ``""``) and
  ``proj.f4`` (the signature's 32-D ``mriscan.neighbors.dct_projection``, 32 float32 per row)
  and ``sig.u1`` (the 16×16 signature itself, 256 bytes per row, for reading single rows: the
  zarr ``signatures`` array, in chunks of 4,096, stays the one other readers use);
- strings (``source``, ``sha256``, ``pixel_sha256``, ``file_id``, ``group_key``, ``kind``,
  ``window``, ``plane``): ``<name>.bin`` (UTF-8 bytes, back to back) and ``<name>.off`` (int64
  end offset of each row);
- the split groups: ``group.<g>.i8`` (a group label per row as it was when the row was
  committed) and ``merges.<g>.i8`` (pairs ``(label, into)``: groups joined by later commits);
  ``<g>`` is the generation, bumped when a commit regroups in a way merges cannot express;
- ``patches.jsonl``: later changes of ``flags``, ``file_id``, ``group_key``, ``origin`` (one JSON
  object per changed record, the last one wins).

Every file only ever grows; ``index.json`` (the manifest) says how many rows, patch bytes and
merges are committed, so bytes past that point (a killed writer's leftovers) are never read and
the next writer cuts them off. Nothing here decides what is committed: ``ImageStore`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mriscan.errors import StoreCorruptError
from mriscan.store.files import StoreFiles, fsync_all

__all__ = [
    "COLUMN_DIR",
    "FIXED",
    "FLAG_BITS",
    "MUTABLE",
    "STRINGS",
    "ColumnFiles",
    "flags_from_mask",
    "key_hash",
    "mask_from_flags",
]

COLUMN_DIR = "index"
#: fixed-width columns: name -> (dtype, values per row)
FIXED: dict[str, tuple[str, int]] = {
    "label": ("<u1", 1),
    "height": ("<i4", 1),
    "width": ("<i4", 1),
    "origin": ("<i4", 1),
    "flags": ("<u1", 1),
    "keyhash": ("<i8", 1),
    "proj": ("<f4", 32),
    "sig": ("<u1", 256),
}
STRINGS = ("source", "sha256", "pixel_sha256", "file_id", "group_key", "kind", "window", "plane")
#: fields ``ImageStore.update_record`` may change (recorded in ``patches.jsonl``)
MUTABLE = ("flags", "file_id", "group_key", "origin")
#: every flag a record may carry, one bit each
FLAG_BITS = ("removed", "replaced", "relabelled", "conflict", "uniform", "thin", "noise")
_PATCHES = "patches.jsonl"


def mask_from_flags(flags: Sequence[str]) -> int:
    """Bit mask of ``flags``; raises ValueError for a flag outside ``FLAG_BITS``."""
    mask = 0
    for f in flags:
        if f not in FLAG_BITS:
            raise ValueError(f"unknown record flag {f!r}; known flags: {', '.join(FLAG_BITS)}")
        mask |= 1 << FLAG_BITS.index(f)
    return mask


def flags_from_mask(mask: int) -> tuple[str, ...]:
    """Inverse of ``mask_from_flags`` (flags in ``FLAG_BITS`` order)."""
    return tuple(f for k, f in enumerate(FLAG_BITS) if mask >> k & 1)


def key_hash(key: str) -> int:
    """64-bit signed BLAKE2b of a group key; 0 for ``""`` (no key)."""
    if not key:
        return 0
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)
    return h or 1


def _fixed_file(name: str) -> str:
    dtype, _ = FIXED[name]
    return f"{COLUMN_DIR}/{name}.{dtype[1:]}"


class ColumnFiles:
    """Append-only column files of one store (local path or fsspec URL).

    Reads are bounded by the committed ``count`` (rows), ``patch_bytes`` and ``merges`` a caller
    passes from the manifest; writes append past them. Locally a column is read with
    ``np.memmap``/``np.fromfile`` (only what is asked for); at a URL whole files are read and
    appends rewrite the file (object stores replace whole objects atomically).
    """

    def __init__(self, files: StoreFiles) -> None:
        self.files = files
        self._unsynced: list[str] | None = None

    # ---- low level ---------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        return self.files.path(rel)

    def read_bytes(self, rel: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of ``rel``.

        Raises
        ------
        StoreCorruptError
            The file is missing or shorter than ``stop``.
        """
        if stop <= start:
            return b""
        try:
            if self.files.url:
                data = self.files.fs.cat_file(self._path(rel), start=start, end=stop)
            else:
                with open(self._path(rel), "rb") as fh:
                    fh.seek(start)
                    data = fh.read(stop - start)
        except FileNotFoundError:
            data = b""
        if len(data) != stop - start:
            raise StoreCorruptError(
                f"{self.files.root}/{rel} is missing or shorter than the index says "
                f"(needs bytes {start}..{stop}, got {len(data)}). Run `mriscan verify`; "
                "re-ingest into a new --store if it reports damage."
            )
        return data

    def array(self, rel: str, dtype: str, count: int, width: int = 1) -> np.ndarray:
        """The first ``count`` rows of a fixed-width file, ndarray (count,) or (count, width)."""
        item = np.dtype(dtype).itemsize * width
        shape = (count,) if width == 1 else (count, width)
        if count == 0:
            return np.empty(shape, dtype)
        if not self.files.url:
            path = self._path(rel)
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                size = -1
            if size < count * item:
                self.read_bytes(rel, 0, count * item)  # raises with the message
            return np.fromfile(path, dtype=dtype, count=count * width).reshape(shape)
        raw = self.read_bytes(rel, 0, count * item)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    def rows(self, rel: str, dtype: str, positions: np.ndarray, width: int = 1) -> np.ndarray:
        """Rows at ``positions`` of a fixed-width file (all below the committed count)."""
        pos = np.asarray(positions, np.int64).reshape(-1)
        if not pos.size:
            return np.empty((0, width) if width > 1 else (0,), dtype)
        if not self.files.url:
            try:
                m = np.memmap(self._path(rel), dtype=dtype, mode="r")
                m = m[: len(m) // width * width].reshape(-1, width) if width > 1 else m
                return np.array(m[pos])
            except (OSError, ValueError, IndexError) as exc:
                raise StoreCorruptError(
                    f"{self.files.root}/{rel} is missing or shorter than the index says "
                    f"({type(exc).__name__}: {exc}). Run `mriscan verify`; re-ingest into a "
                    "new --store if it reports damage."
                ) from exc
        whole = self.array(rel, dtype, int(pos.max()) + 1, width)
        return whole[pos]

    def append(self, rel: str, committed: int, data: bytes) -> None:
        """Write ``data`` at byte ``committed`` of ``rel`` (cutting anything past it), flushed to
        disk (fsync) locally."""
        if self.files.url:
            old = self.read_bytes(rel, 0, committed) if committed else b""
            self.files.fs.pipe_file(self._path(rel), old + data)
            return
        path = self._path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < committed:
                raise StoreCorruptError(
                    f"{path} holds {size} bytes but the index commits {committed}. Run "
                    "`mriscan verify`; re-ingest into a new --store if it reports damage."
                )
            if size != committed:
                os.ftruncate(fd, committed)
            os.lseek(fd, committed, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._unsynced is None:
                os.fsync(fd)
            else:
                self._unsynced.append(path)
        finally:
            os.close(fd)

    def batch(self) -> _Batch:
        """A context in which appends are written at once and flushed to disk (fsync) together
        when it ends: one journal commit for all the files of a commit instead of one each."""
        return _Batch(self)

    def truncate(self, rel: str, size: int) -> None:
        """Cut ``rel`` to ``size`` bytes (a killed writer's leftovers); no-op if shorter."""
        if self.files.url:
            return  # appends at a URL rewrite the file from its committed prefix anyway
        path = self._path(rel)
        try:
            if os.path.getsize(path) > size:
                os.truncate(path, size)
        except FileNotFoundError:
            pass

    # ---- columns -----------------------------------------------------------------------
    def fixed(self, name: str, count: int) -> np.ndarray:
        """The first ``count`` values of a fixed-width column (no patches applied)."""
        dtype, width = FIXED[name]
        return self.array(_fixed_file(name), dtype, count, width)

    def fixed_rows(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Values of a fixed-width column at ``positions`` (no patches applied)."""
        dtype, width = FIXED[name]
        return self.rows(_fixed_file(name), dtype, positions, width)

    def string_ends(self, name: str, count: int) -> np.ndarray:
        """End offsets (int64, (count,)) of the first ``count`` strings of a column."""
        return self.array(f"{COLUMN_DIR}/{name}.off", "<i8", count)

    def string_end(self, name: str, count: int) -> int:
        """Bytes of ``<name>.bin`` the first ``count`` strings fill (reads one offset)."""
        if count == 0:
            return 0
        return int(self.rows(f"{COLUMN_DIR}/{name}.off", "<i8", np.array([count - 1]))[0])

    def string_at(self, name: str, i: int) -> str:
        """String ``i`` of a string column."""
        ends = self.rows(f"{COLUMN_DIR}/{name}.off", "<i8", np.array([i - 1, i] if i else [i]))
        start, stop = (0, int(ends[0])) if i == 0 else (int(ends[0]), int(ends[1]))
        return self.read_bytes(f"{COLUMN_DIR}/{name}.bin", start, stop).decode()

    def strings(self, name: str, count: int) -> list[str]:
        """The first ``count`` strings of a column."""
        if count == 0:
            return []
        ends = self.string_ends(name, count)
        blob = self.read_bytes(f"{COLUMN_DIR}/{name}.bin", 0, int(ends[-1]))
        starts = np.concatenate([[0], ends[:-1]]).tolist()
        return [blob[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]

    def append_rows(self, count: int, columns: dict[str, Any]) -> None:
        """Append rows after the ``count`` committed ones: ``columns`` maps every name in
        ``FIXED`` to an array and every name in ``STRINGS`` to a list of str, all the same
        length."""
        for name, (dtype, width) in FIXED.items():
            arr = np.ascontiguousarray(columns[name], dtype=dtype)
            self.append(_fixed_file(name), count * np.dtype(dtype).itemsize * width, arr.tobytes())
        for name in STRINGS:
            values = [v.encode() for v in columns[name]]
            start = self.string_end(name, count)
            ends = start + np.cumsum([len(v) for v in values], dtype=np.int64)
            self.append(f"{COLUMN_DIR}/{name}.bin", start, b"".join(values))
            self.append(f"{COLUMN_DIR}/{name}.off", count * 8, ends.astype("<i8").tobytes())

    def trim(self, count: int, patch_bytes: int, group_file: str, merges: int) -> None:
        """Cut every column past the committed state (``count`` rows, ``patch_bytes``, ``merges``
        pairs); call while holding the write lock."""
        for name, (dtype, width) in FIXED.items():
            self.truncate(_fixed_file(name), count * np.dtype(dtype).itemsize * width)
        for name in STRINGS:
            end = self.string_end(name, count)
            self.truncate(f"{COLUMN_DIR}/{name}.bin", end)
            self.truncate(f"{COLUMN_DIR}/{name}.off", count * 8)
        self.truncate(f"{COLUMN_DIR}/{_PATCHES}", patch_bytes)
        self.truncate(group_name(group_file), count * 8)
        self.truncate(merge_name(group_file), merges * 16)

    # ---- patches, groups, merges -------------------------------------------------------
    def patches(self, patch_bytes: int) -> dict[int, dict[str, Any]]:
        """Committed field changes by position (later lines override earlier ones)."""
        out: dict[int, dict[str, Any]] = {}
        raw = self.read_bytes(f"{COLUMN_DIR}/{_PATCHES}", 0, patch_bytes)
        for line in raw.splitlines():
            p = json.loads(line)
            out.setdefault(int(p.pop("position")), {}).update(p)
        return out

    def append_patches(self, patch_bytes: int, updates: dict[int, dict[str, Any]]) -> int:
        """Append ``updates`` (position -> fields); return the new committed byte count."""
        lines = b"".join(
            json.dumps({"position": int(p), **f}).encode() + b"\n" for p, f in updates.items()
        )
        self.append(f"{COLUMN_DIR}/{_PATCHES}", patch_bytes, lines)
        return patch_bytes + len(lines)

    def groups(self, group_file: str, count: int) -> np.ndarray:
        """Group labels as committed, int64 (count,)."""
        return self.array(group_name(group_file), "<i8", count)

    def groups_at(self, group_file: str, positions: np.ndarray) -> np.ndarray:
        """Group labels as committed at ``positions``, int64."""
        return self.rows(group_name(group_file), "<i8", positions)

    def merges(self, group_file: str, merges: int) -> np.ndarray:
        """Committed merges, int64 (merges, 2): label ``[k, 0]`` joined into ``[k, 1]``."""
        return self.array(merge_name(group_file), "<i8", merges, 2)


class _Batch:
    """``ColumnFiles.batch``: collects the appended paths, fsyncs each once on exit (several
    at a time, ``mriscan.store.files.fsync_all``)."""

    def __init__(self, columns: ColumnFiles) -> None:
        self.columns = columns

    def __enter__(self) -> _Batch:
        self.columns._unsynced = []
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        paths, self.columns._unsynced = self.columns._unsynced or [], None
        if exc_type is not None:
            return  # the commit failed: nothing will name these bytes
        fsync_all(paths)


def group_name(generation: str) -> str:
    """File of the group labels of a generation (``"0"`` -> ``index/group.0.i8``)."""
    return f"{COLUMN_DIR}/group.{generation}.i8"


def merge_name(generation: str) -> str:
    """File of the merges of a generation."""
    return f"{COLUMN_DIR}/merges.{generation}.i8"
