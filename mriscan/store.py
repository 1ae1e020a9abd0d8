"""The image store: a Zarr v3 group of preprocessed slices plus a JSON index (the commit point).

Layout of ``images.zarr/``::

    zarr.json            group metadata
    images/              (N, S, S) uint8, one slice per chunk, Blosc/Zstd
    labels/              (N,) uint8
    signatures/          (N, 16, 16) uint8 perceptual thumbnails (duplicate grouping)
    index.json           format, PreprocessConfig, classes, one record per sample
    write.lock           held (flock) by the one writer; readers never touch it

Only the first ``len(index.records)`` rows are committed. A writer writes new chunks past that
point, then grows the arrays, then atomically replaces ``index.json``: a crash at any moment leaves
the previous index and every chunk it names intact. The next writer trims the leftovers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from mriscan.duplicates import SIGNATURE_SIZE, duplicate_groups
from mriscan.duplicates import signatures as _thumbnails
from mriscan.errors import (
    ConfigError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
)
from mriscan.preprocess import PreprocessConfig

__all__ = ["FORMAT_VERSION", "ImageStore", "SampleRecord", "StoreIndex", "verify_store"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_KEY = "index.json"
DEFAULT_STORE = Path("data/processed/images.zarr")
_CLEVEL = 3
_BLOSC = numcodecs.Blosc(cname="zstd", clevel=_CLEVEL, shuffle=numcodecs.Blosc.NOSHUFFLE)
_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class SampleRecord:
    """One stored slice: where it came from and how to check it."""

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
        """Inverse of ``to_dict``."""
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
        """Inverse of ``to_dict``; rejects unknown format versions."""
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


def pixel_checksum(image: np.ndarray) -> str:
    """Short SHA-256 of a stored slice's bytes."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def _is_url(path: str | os.PathLike[str]) -> bool:
    """True for fsspec URLs such as ``memory://x`` or ``s3://bucket/x`` (not ``file://``)."""
    return "://" in str(path) and not str(path).startswith("file://")


def _local_path(path: str | os.PathLike[str]) -> Path:
    """A filesystem path from a path or ``file://`` URL."""
    s = str(path)
    return Path(s[len("file://") :] if s.startswith("file://") else s)


class _Files:
    """Byte access to the store's own (non-zarr) files: the index and the lock."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.url = _is_url(location)
        if self.url:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(str(location))
        else:
            self.root = str(_local_path(location))

    def _p(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def read(self, key: str) -> bytes | None:
        """Bytes of ``key``, or None if missing."""
        try:
            if self.url:
                return self.fs.cat_file(self._p(key))
            return Path(self._p(key)).read_bytes()
        except FileNotFoundError:
            return None

    def clear(self, *, keep: str) -> None:
        """Delete everything in the store except the file ``keep``."""
        if self.url:
            for p in self.fs.ls(self.root, detail=False):
                if p.rstrip("/").rsplit("/", 1)[-1] != keep:
                    self.fs.rm(p, recursive=True)
            return
        for entry in Path(self.root).iterdir():
            if entry.name != keep:
                _rmtree(entry) if entry.is_dir() else entry.unlink()

    def write_atomic(self, key: str, data: bytes) -> None:
        """Write ``key`` so readers see the old or the new bytes, never a mix (fsync'd locally)."""
        if self.url:
            self.fs.pipe_file(self._p(key), data)
            return
        path = Path(self._p(key))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _WriteLock:
    """One writer per store: ``flock`` on a local lock file (freed by the OS if the writer dies)."""

    def __init__(self, location: str | os.PathLike[str], files: _Files) -> None:
        self.location = str(location)
        self.files = files
        self._fd: int | None = None
        self._mem: threading.Lock | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreLockedError."""
        msg = (
            f"Store {self.location} is being written by another process or handle. "
            "Wait for it to finish (only one writer at a time), then retry."
        )
        if self.files.url:
            # Object stores have no cross-process locks; guard writers within this process.
            with _MEMORY_LOCKS_GUARD:
                lock = _MEMORY_LOCKS.setdefault(self.location, threading.Lock())
            if not lock.acquire(blocking=False):
                raise StoreLockedError(msg)
            self._mem = lock
            return
        import fcntl

        fd = os.open(self.files._p("write.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(msg) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Release the lock if held."""
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._mem is not None:
            self._mem.release()
            self._mem = None


class ImageStore:
    """A Zarr v3 store of preprocessed slices with an atomic JSON index.

    Create with ``ImageStore.create``, open with ``ImageStore.open``; use as a context manager.
    Only committed samples are visible: ``len(store)``, ``store.labels``, ``store.index``.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        mode: str,
        index: StoreIndex,
        group: zarr.Group,
        files: _Files,
        lock: _WriteLock | None,
    ) -> None:
        self.location = str(location)
        self.mode = mode
        self._index = index
        self._group = group
        self._files = files
        self._lock = lock
        self._images = group["images"]
        self._pending_images = 0
        self._pending_records: list[SampleRecord] = []
        self._pending_labels: list[np.ndarray] = []
        self._pending_sigs: list[np.ndarray] = []
        self._pending_dups: list[dict[str, Any]] = []
        self._fast = self._fast_path_ok()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._labels_cache: tuple[StoreIndex, np.ndarray] | None = None

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        image_size: int = 128,
        config: PreprocessConfig | None = None,
        *,
        overwrite: bool = False,
    ) -> ImageStore:
        """Create an empty store (committed, with zero samples) and open it for writing.

        Parameters
        ----------
        path : path or fsspec URL
        image_size : int
            Side S of the stored (S, S) slices; must equal ``config.size`` if both are given.
        config : PreprocessConfig, optional
            The preprocessing that produced the slices (recorded in the index).
        overwrite : bool
            Replace an existing store instead of raising.
        """
        config = config if config is not None else PreprocessConfig(size=int(image_size))
        if config.size != int(image_size):
            raise ConfigError(f"image_size ({image_size}) must equal config.size ({config.size}).")
        files = _Files(path)
        exists = files.read(INDEX_KEY) is not None or files.read("zarr.json") is not None
        if exists and not overwrite:
            raise StoreError(
                f"{path} already exists. Open it with ImageStore.open(..., "
                "mode='a') to append, or pass overwrite=True to replace it."
            )
        if not files.url:
            _local_path(path).mkdir(parents=True, exist_ok=True)
        lock = _WriteLock(path, files)
        lock.acquire()
        try:
            if exists:
                files.clear(keep="write.lock")
            group = zarr.open_group(
                cls._zarr_store(path), mode="a", attributes={"mriscan_format": FORMAT_VERSION}
            )
            s = config.size
            blosc = BloscCodec(cname="zstd", clevel=_CLEVEL, shuffle="noshuffle")
            # "." keys keep all chunk files in one folder: no directory per slice to create.
            group.create_array(
                "images",
                shape=(0, s, s),
                chunks=(1, s, s),
                dtype="uint8",
                compressors=blosc,
                fill_value=0,
                chunk_key_encoding={"name": "default", "separator": "."},
            )
            group.create_array(
                "labels",
                shape=(0,),
                chunks=(65536,),
                dtype="uint8",
                compressors=blosc,
                fill_value=0,
            )
            group.create_array(
                "signatures",
                shape=(0, SIGNATURE_SIZE, SIGNATURE_SIZE),
                chunks=(4096, SIGNATURE_SIZE, SIGNATURE_SIZE),
                dtype="uint8",
                compressors=blosc,
                fill_value=0,
            )
            index = StoreIndex(image_size=s, config=config)
            files.write_atomic(INDEX_KEY, json.dumps(index.to_dict()).encode())
        except BaseException:
            lock.release()
            raise
        return cls(path, mode="a", index=index, group=group, files=files, lock=lock)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: str = "r") -> ImageStore:
        """Open a committed store; ``mode`` is ``"r"`` (default, no lock) or ``"a"`` (append)."""
        if mode not in ("r", "a"):
            raise ConfigError(f"mode must be 'r' or 'a'. Received: mode={mode!r}.")
        files = _Files(path)
        raw = files.read(INDEX_KEY)
        if raw is None:
            raise StoreNotFoundError(
                f"No mriscan store at {path} (no index.json). Create one "
                "with `mriscan ingest RAW_DIR --store PATH`."
            )
        try:
            index = StoreIndex.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorruptError(f"{path}/index.json is unreadable ({exc}).") from exc
        lock = None
        if mode == "a":
            lock = _WriteLock(path, files)
            lock.acquire()
        try:
            group = zarr.open_group(cls._zarr_store(path), mode="r" if mode == "r" else "r+")
            store = cls(path, mode=mode, index=index, group=group, files=files, lock=lock)
            if mode == "a":
                store._trim_uncommitted()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    @staticmethod
    def _zarr_store(path: str | os.PathLike[str]) -> Any:
        """The zarr store object for a path or URL."""
        if _is_url(path):
            return zarr.storage.FsspecStore.from_url(str(path))
        return zarr.storage.LocalStore(_local_path(path))

    def _fast_path_ok(self) -> bool:
        """Whether chunks can be read/written as files directly (our own local layout)."""
        if self._files.url:
            return False
        meta = self._images.metadata
        names = [type(c).__name__ for c in meta.codecs]
        s = self._index.image_size
        return (
            names == ["BytesCodec", "BloscCodec"]
            and meta.chunk_grid.chunk_shape == (1, s, s)
            and getattr(meta.chunk_key_encoding, "separator", None) == "."
        )

    def _chunk_path(self, i: int) -> str:
        return os.path.join(self._files.root, "images", f"c.{i}.0.0")

    def _trim_uncommitted(self) -> None:
        """Drop rows a crashed writer left beyond the committed count."""
        n = len(self._index.records)
        for name in ("images", "labels", "signatures"):
            arr = self._group[name]
            if arr.shape[0] != n:
                log.info("trimming %s from %d to %d committed rows", name, arr.shape[0], n)
                arr.resize((n, *arr.shape[1:]))
        if self._fast:
            # Chunks written past the array's end are invisible to zarr; remove them too.
            with os.scandir(Path(self._files.root, "images")) as entries:
                for entry in entries:
                    parts = entry.name.split(".")
                    if (
                        len(parts) == 4
                        and parts[0] == "c"
                        and parts[1].isdigit()
                        and int(parts[1]) >= n
                    ):
                        os.unlink(entry.path)

    # ---- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index.records)

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def index(self) -> StoreIndex:
        """The committed index."""
        return self._index

    @property
    def config(self) -> PreprocessConfig:
        """The preprocessing the stored slices went through."""
        return self._index.config

    @property
    def image_size(self) -> int:
        """Side S of the stored slices."""
        return self._index.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names; label ``k`` is ``class_names[k]``."""
        return self._index.class_names

    @property
    def labels(self) -> np.ndarray:
        """Committed labels, ndarray of shape (N,), uint8."""
        # Cached per index: read_batch needs labels on every call, and rebuilding them from
        # the records is O(N) — it cost ~2 ms per random batch at 20k slices.
        cached = self._labels_cache
        if cached is None or cached[0] is not self._index:
            labels = np.array([r.label for r in self._index.records], dtype=np.uint8)
            labels.flags.writeable = False
            self._labels_cache = cached = (self._index, labels)
        return cached[1]

    @property
    def groups(self) -> np.ndarray:
        """Duplicate-group id of each committed sample, ndarray of shape (N,), int64."""
        return np.array([r.group for r in self._index.records], dtype=np.int64)

    def __getitem__(self, i: int) -> np.ndarray:
        images, _ = self.read_batch([i])
        return images[0]

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Read committed samples in the order asked.

        Parameters
        ----------
        indices : sequence of int
            Any order, repeats allowed; negative indices count from the end.

        Returns
        -------
        images : ndarray of shape (n, S, S), uint8
        labels : ndarray of shape (n,), uint8
        """
        self._check_open()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(
                f"indices must be in [-{n}, {n}) for a store of {n} samples. "
                f"Received min {idx.min()}, max {idx.max()}."
            )
        idx = np.where(idx < 0, idx + n, idx)
        s = self.image_size
        out = np.empty((idx.size, s, s), np.uint8)
        if self._fast:
            for k, i in enumerate(idx):
                out[k] = self._read_chunk(int(i))
        elif idx.size:
            uniq, inverse = np.unique(idx, return_inverse=True)
            out[:] = self._images.get_orthogonal_selection((uniq,))[inverse]
        labels = self.labels[idx] if idx.size else np.empty(0, np.uint8)
        return out, labels

    def _read_chunk(self, i: int) -> np.ndarray:
        """Decode one slice's chunk file directly (the layout this class writes)."""
        s = self.image_size
        try:
            with open(self._chunk_path(i), "rb") as fh:
                raw = fh.read()
            arr = np.frombuffer(numcodecs.blosc.decompress(raw), dtype=np.uint8)
        except FileNotFoundError:
            raise StoreCorruptError(
                f"{self.location}: chunk of sample {i} is missing. "
                "Run `mriscan verify` and re-ingest."
            ) from None
        except (RuntimeError, ValueError) as exc:
            raise StoreCorruptError(
                f"{self.location}: chunk of sample {i} cannot be decoded "
                f"({exc}). Run `mriscan verify` and re-ingest."
            ) from exc
        if arr.size != s * s:
            raise StoreCorruptError(
                f"{self.location}: chunk of sample {i} holds {arr.size} bytes, expected {s * s}."
            )
        return arr.reshape(s, s)

    def iter_batches(
        self,
        batch_size: int = 32,
        *,
        shuffle: bool = False,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(images, labels)`` batches over ``indices`` (default all), maybe shuffled."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1. Received: batch_size={batch_size}.")
        order = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        if shuffle:
            order = np.random.default_rng(seed).permutation(order)
        for start in range(0, len(order), batch_size):
            yield self.read_batch(order[start : start + batch_size])

    def signatures(self) -> np.ndarray:
        """Committed perceptual thumbnails, ndarray of shape (N, 16, 16), uint8."""
        return np.asarray(self._group["signatures"][: len(self)])

    # ---- writing ------------------------------------------------------------------------
    def append(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        records: Sequence[dict[str, Any]] | None = None,
        *,
        signatures: np.ndarray | None = None,
    ) -> None:
        """Write slices past the committed end; they become visible at ``commit()``.

        Parameters
        ----------
        images : ndarray of shape (n, S, S), uint8
        labels : array-like of shape (n,), int
        records : sequence of dict, optional
            Per-sample fields of ``SampleRecord`` (``source``, ``sha256``, ``height``, ...).
        signatures : ndarray of shape (n, 16, 16), uint8, optional
            Perceptual thumbnails of the original slices; defaults to thumbnails of ``images``.
        """
        self._check_writable()
        images = np.asarray(images)
        s = self.image_size
        if images.ndim != 3 or images.shape[1:] != (s, s) or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 of shape (n, {s}, {s}). Received dtype "
                f"{images.dtype}, shape {images.shape}."
            )
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have one entry per image ({images.shape[0]}). "
                f"Received {labels.shape[0]}."
            )
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("labels must be integers in [0, 255].")
        if records is not None and len(records) != images.shape[0]:
            raise ValueError(
                f"records must have one entry per image ({images.shape[0]}). "
                f"Received {len(records)}."
            )
        if signatures is None:
            signatures = _thumbnails(list(images))
        start = len(self) + self._pending_images
        images = np.ascontiguousarray(images)
        self._write_images(start, images)
        for k in range(images.shape[0]):
            rec = dict(records[k]) if records is not None else {}
            rec.setdefault("source", "")
            rec.setdefault("sha256", "")
            rec.setdefault("height", s)
            rec.setdefault("width", s)
            rec.update(
                position=start + k, label=int(labels[k]), pixel_sha256=pixel_checksum(images[k])
            )
            self._pending_records.append(SampleRecord.from_dict(rec))
        self._pending_labels.append(labels.astype(np.uint8))
        self._pending_sigs.append(np.asarray(signatures, np.uint8))
        self._pending_images += images.shape[0]

    def add_duplicate(self, source: str, sha256: str, duplicate_of: int) -> None:
        """Record (at the next commit) a file whose bytes equal an already stored sample."""
        self._check_writable()
        self._pending_dups.append(
            {"source": source, "sha256": sha256, "duplicate_of": int(duplicate_of)}
        )

    def set_class_names(self, names: Sequence[str]) -> None:
        """Set the class names (recorded at the next commit; existing ones must be a prefix)."""
        self._check_writable()
        names = tuple(names)
        old = self._index.class_names
        if old and names[: len(old)] != old:
            raise StoreError(f"Class names {list(names)} do not extend the store's {list(old)}.")
        self._index = dataclasses.replace(self._index, class_names=names)

    def add_source(self, folder: str) -> None:
        """Record (at the next commit) a raw folder whose slices this store holds."""
        self._check_writable()
        if folder not in self._index.sources:
            self._index = dataclasses.replace(self._index, sources=(*self._index.sources, folder))

    def _write_images(self, start: int, images: np.ndarray) -> None:
        """Write chunks for rows ``start..`` (files in parallel locally, zarr elsewhere)."""
        n = images.shape[0]
        if not n:
            return
        if not self._fast:
            arr = self._images
            arr.resize((start + n, *arr.shape[1:]))
            arr[start : start + n] = images
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        list(self._pool.map(lambda k: self._write_chunk(start + k, images[k]), range(n)))

    def _write_chunk(self, i: int, image: np.ndarray) -> None:
        """Compress one slice and write its chunk file.

        No temp file and rename: row ``i`` lies past the committed end, so no reader looks at
        this file until the commit that follows a complete write.
        """
        with open(self._chunk_path(i), "wb") as fh:
            fh.write(_BLOSC.encode(image))

    def commit(self) -> int:
        """Make everything appended so far visible at once; return the number of new samples.

        Grows the arrays, recomputes duplicate groups over all samples, and replaces
        ``index.json`` (the commit point). Readers that opened earlier keep their old view.
        """
        self._check_writable()
        old_n = len(self)
        n = old_n + self._pending_images
        if self._pending_images:
            if self._fast:
                self._images.resize((n, *self._images.shape[1:]))
            labels = self._group["labels"]
            labels.resize((n,))
            labels[old_n:n] = np.concatenate(self._pending_labels)
            sig_arr = self._group["signatures"]
            sig_arr.resize((n, *sig_arr.shape[1:]))
            sig_arr[old_n:n] = np.concatenate(self._pending_sigs)
            sigs = np.asarray(sig_arr[:n])
        records = list(self._index.records) + self._pending_records
        if self._pending_images:
            groups = duplicate_groups(sigs)
            records = [
                dataclasses.replace(r, group=int(g)) for r, g in zip(records, groups, strict=True)
            ]
        index = dataclasses.replace(
            self._index,
            records=tuple(records),
            duplicates=self._index.duplicates + tuple(self._pending_dups),
        )
        self._files.write_atomic(INDEX_KEY, json.dumps(index.to_dict()).encode())
        self._index = index
        added = self._pending_images
        self._pending_images = 0
        self._pending_records, self._pending_labels = [], []
        self._pending_sigs, self._pending_dups = [], []
        log.info("committed %d new samples (%d total) to %s", added, n, self.location)
        return added

    def close(self) -> None:
        """Release the write lock and worker threads; uncommitted appends are discarded."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._lock is not None:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"Store {self.location} is closed.")

    def _check_writable(self) -> None:
        self._check_open()
        if self.mode != "a":
            raise StoreError(f"Store {self.location} is open read-only; open it with mode='a'.")

    # ---- inspection ---------------------------------------------------------------------
    def nbytes_stored(self) -> int:
        """Bytes the store occupies (local stores; 0 if unknown)."""
        if self._files.url:
            try:
                return int(self._files.fs.du(self._files.root))
            except (OSError, NotImplementedError):
                return 0
        total = 0
        for dirpath, _, names in os.walk(self._files.root):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in names)
        return total

    def info(self) -> dict[str, Any]:
        """Summary for ``mriscan info``: counts, config, groups, codec, bytes on disk vs raw."""
        labels = self.labels
        meta = self._images.metadata
        s = self.image_size
        return {
            "location": self.location,
            "samples": len(self),
            "image_size": s,
            "classes": {name: int((labels == k).sum()) for k, name in enumerate(self.class_names)},
            "duplicate_groups": len(set(self.groups.tolist())) if len(self) else 0,
            "exact_duplicates_skipped": len(self._index.duplicates),
            "preprocess": self.config.to_dict(),
            "codec": [c.to_dict() for c in meta.codecs],
            "chunks": list(meta.chunk_grid.chunk_shape),
            "bytes_on_disk": self.nbytes_stored(),
            "bytes_raw": len(self) * s * s,
        }


def _rmtree(path: Path) -> None:
    """Remove a directory tree."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def verify_store(path: str | os.PathLike[str]) -> list[str]:
    """Check every committed sample of a store; return a list of problems (empty if sound).

    Opens every chunk, checks shapes and dtype, that the arrays cover the index, that labels
    agree, and that each slice's pixel checksum matches the index.
    """
    problems: list[str] = []
    with ImageStore.open(path) as store:
        n = len(store)
        images = store._images
        s = store.image_size
        if images.dtype != np.uint8 or images.shape[1:] != (s, s):
            problems.append(
                f"images array is {images.dtype} {images.shape}, expected uint8 (N, {s}, {s})"
            )
        for name in ("images", "labels", "signatures"):
            if store._group[name].shape[0] < n:
                problems.append(
                    f"{name} array has {store._group[name].shape[0]} rows but the index commits {n}"
                )
        if problems:
            return problems
        stored_labels = np.asarray(store._group["labels"][:n])
        for rec in store.index.records:
            i = rec.position
            try:
                img = store[i]
            except StoreError as exc:
                problems.append(f"sample {i} ({rec.source}): {exc}")
                continue
            if pixel_checksum(img) != rec.pixel_sha256:
                problems.append(
                    f"sample {i} ({rec.source}): pixel checksum mismatch "
                    f"(stored data differs from what was ingested)"
                )
            if int(stored_labels[i]) != rec.label:
                problems.append(
                    f"sample {i} ({rec.source}): label array says "
                    f"{int(stored_labels[i])}, index says {rec.label}"
                )
            if not 0 <= rec.label < max(len(store.class_names), 1):
                problems.append(f"sample {i} ({rec.source}): label {rec.label} has no class name")
        positions = [r.position for r in store.index.records]
        if positions != list(range(n)):
            problems.append("index positions are not 0..N-1 in order")
    return problems
