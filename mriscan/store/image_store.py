"""``ImageStore``: a transaction (pending appends, one atomic commit, one writer) over a chunk
engine (the images) and the index (what is committed).

Only the first ``len(index.records)`` rows are committed. A writer writes new chunks past that
point, then grows the arrays, then atomically replaces ``index.json``: a crash at any moment leaves
the previous index and every chunk it names intact. The next writer trims the leftovers.

The store does not decide which slices are near-duplicates: whoever commits passes the groups
(``commit(groups=...)``; ``mriscan.ingest`` computes them with ``mriscan.duplicates``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from mriscan.duplicates import SIGNATURE_SIZE
from mriscan.duplicates import signatures as _thumbnails
from mriscan.errors import ConfigError, StoreCorruptError, StoreError, StoreNotFoundError
from mriscan.preprocess import PreprocessConfig
from mriscan.store.engines import (
    ChunkEngine,
    blosc_codec,
    create_images_array,
    open_engine,
)
from mriscan.store.files import LOCK_KEY, StoreFiles, WriteLock, is_url, local_path
from mriscan.store.index import (
    FORMAT_VERSION,
    INDEX_KEY,
    SampleRecord,
    StoreIndex,
    decode_index,
    encode_index,
    pixel_checksum,
)

__all__ = ["DEFAULT_STORE", "ImageStore"]

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("data/processed/images.zarr")


def zarr_store(path: str | os.PathLike[str]) -> Any:
    """The zarr store object for a path or fsspec URL."""
    if is_url(path):
        return zarr.storage.FsspecStore.from_url(str(path))
    return zarr.storage.LocalStore(local_path(path))


def _is_mriscan_group(group_meta: bytes | None) -> bool:
    """Whether a group's ``zarr.json`` bytes carry the attribute ``ImageStore.create`` writes."""
    if group_meta is None:
        return False
    try:
        meta = json.loads(group_meta)
        return isinstance(meta, dict) and "mriscan_format" in (meta.get("attributes") or {})
    except (ValueError, TypeError, AttributeError):
        return False


def _open_arrays(path: str | os.PathLike[str], mode: str) -> zarr.Group:
    """Open the store's zarr group and check its three arrays are there and readable.

    Raises
    ------
    StoreCorruptError
        A ``zarr.json`` (the group's or an array's) is missing or unreadable.
    """
    try:
        group = zarr.open_group(zarr_store(path), mode="r" if mode == "r" else "r+")
        for name in _ARRAYS:
            if not isinstance(group[name], zarr.Array):
                raise ValueError(f"{name} is a group, not an array")
    except (KeyError, ValueError, TypeError, OSError, zarr.errors.BaseZarrError) as exc:
        raise StoreCorruptError(
            f"{path}: the zarr metadata of the store (zarr.json of the group or of "
            f"{', '.join(_ARRAYS)}) is missing or unreadable ({type(exc).__name__}: {exc}). "
            "The slices cannot be located; re-ingest the raw folder into a new --store."
        ) from exc
    return group


_ARRAYS = ("images", "labels", "signatures")


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
        files: StoreFiles,
        lock: WriteLock | None,
    ) -> None:
        self.location = str(location)
        self.mode = mode
        self._index = index
        self._group = group
        self._files = files
        self._lock = lock
        self._engine: ChunkEngine = open_engine(group["images"], files)
        self._pending_images = 0
        self._pending_records: list[SampleRecord] = []
        self._pending_labels: list[np.ndarray] = []
        self._pending_sigs: list[np.ndarray] = []
        self._pending_dups: list[dict[str, Any]] = []
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

        Raises
        ------
        ConfigError
            ``image_size`` differs from ``config.size``.
        StoreError
            A store exists at ``path`` and ``overwrite`` is False.
        StoreLockedError
            Another writer holds the store.
        """
        config = config if config is not None else PreprocessConfig(size=int(image_size))
        if config.size != int(image_size):
            raise ConfigError(f"image_size ({image_size}) must equal config.size ({config.size}).")
        files = StoreFiles(path)
        committed = files.read(INDEX_KEY) is not None
        group_meta = files.read("zarr.json")
        exists = committed or group_meta is not None
        # A creation killed before its first index.json left a group that holds nothing
        # committed: replacing it loses nothing. Anything else is somebody's data.
        interrupted = not committed and _is_mriscan_group(group_meta)
        if exists and not overwrite and not interrupted:
            what = "a mriscan store" if committed else "a zarr group that is not a mriscan store"
            raise StoreError(
                f"{path} already exists and holds {what}. Append to it (`mriscan ingest "
                f"RAW_DIR --store {path}`, or ImageStore.open(..., mode='a')), or choose another "
                "--store path, or delete it (ImageStore.create(..., overwrite=True)) to replace it."
            )
        if not files.url:
            local_path(path).mkdir(parents=True, exist_ok=True)
        lock = WriteLock(path, files)
        lock.acquire()
        try:
            if exists:
                files.clear(keep=LOCK_KEY)
            group = zarr.open_group(
                zarr_store(path), mode="a", attributes={"mriscan_format": FORMAT_VERSION}
            )
            s = config.size
            create_images_array(group, s)
            group.create_array(
                "labels",
                shape=(0,),
                chunks=(65536,),
                dtype="uint8",
                compressors=blosc_codec(),
                fill_value=0,
            )
            group.create_array(
                "signatures",
                shape=(0, SIGNATURE_SIZE, SIGNATURE_SIZE),
                chunks=(4096, SIGNATURE_SIZE, SIGNATURE_SIZE),
                dtype="uint8",
                compressors=blosc_codec(),
                fill_value=0,
            )
            index = StoreIndex(image_size=s, config=config)
            files.write_atomic(INDEX_KEY, encode_index(index))
            return cls(path, mode="a", index=index, group=group, files=files, lock=lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: str = "r") -> ImageStore:
        """Open a committed store; ``mode`` is ``"r"`` (default, no lock) or ``"a"`` (append).

        Raises
        ------
        StoreNotFoundError
            No ``index.json`` at ``path``.
        StoreCorruptError
            ``index.json`` cannot be parsed.
        StoreLockedError
            ``mode="a"`` and another writer holds the store.
        """
        if mode not in ("r", "a"):
            raise ConfigError(f"mode must be 'r' or 'a'. Received: mode={mode!r}.")
        files = StoreFiles(path)
        raw = files.read(INDEX_KEY)
        if raw is None:
            raise StoreNotFoundError(
                f"No mriscan store at {path} (no index.json). Create one "
                "with `mriscan ingest RAW_DIR --store PATH`."
            )
        index = decode_index(raw, str(path))
        lock = None
        if mode == "a":
            lock = WriteLock(path, files)
            lock.acquire()
        try:
            group = _open_arrays(path, mode)
            store = cls(path, mode=mode, index=index, group=group, files=files, lock=lock)
            if mode == "a":
                store._trim_uncommitted()
                files.remove_orphan_temps(INDEX_KEY)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    def _trim_uncommitted(self) -> None:
        """Drop rows a crashed writer left beyond the committed count."""
        n = len(self._index.records)
        if self._engine.rows != n:
            log.info("trimming images from %d to %d committed rows", self._engine.rows, n)
            self._engine.resize(n)
        for name in ("labels", "signatures"):
            arr = self._group[name]
            if arr.shape[0] != n:
                log.info("trimming %s from %d to %d committed rows", name, arr.shape[0], n)
                arr.resize((n, *arr.shape[1:]))
        # chunks written past the array's end are invisible to zarr; remove them too
        self._engine.remove_leftovers(n)

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
    def engine(self) -> ChunkEngine:
        """The chunk engine chosen at open (``LocalChunkFiles`` or ``ZarrEngine``)."""
        return self._engine

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

        Raises
        ------
        IndexError
            An index is outside [-N, N).
        StoreCorruptError
            A chunk cannot be decoded, or the array is shorter than the index.
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
        out = self._engine.read(idx)
        labels = self.labels[idx] if idx.size else np.empty(0, np.uint8)
        return out, labels

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

    def pending_signatures(self) -> np.ndarray:
        """Thumbnails of the appended, not yet committed samples, ndarray (n, 16, 16), uint8."""
        if not self._pending_sigs:
            return np.empty((0, SIGNATURE_SIZE, SIGNATURE_SIZE), np.uint8)
        return np.concatenate(self._pending_sigs)

    @property
    def n_pending(self) -> int:
        """Samples appended since the last commit."""
        return self._pending_images

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

        Raises
        ------
        ValueError
            Shapes, dtype or label range are wrong.
        StoreError
            The store is closed or read-only.
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
        self._engine.write(start, images)
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

    def commit(self, groups: Sequence[int] | np.ndarray | None = None) -> int:
        """Make everything appended so far visible at once; return the number of new samples.

        Grows the arrays and replaces ``index.json`` (the commit point). Readers that opened
        earlier keep their old view.

        Parameters
        ----------
        groups : array-like of shape (N_committed + N_pending,), int >= 0, optional
            Near-duplicate group of every sample after the commit, old and new (a new slice can
            join two old groups, so old ids may change). ``mriscan.ingest`` passes
            ``duplicate_groups(concat(store.signatures(), store.pending_signatures()))``.
            If omitted, committed samples keep their groups and each new sample gets a group of
            its own (``max + 1, max + 2, ...``): the store never decides on its own that two
            slices are copies of each other.

        Raises
        ------
        ValueError
            ``groups`` has the wrong length or holds negative ids.
        StoreError
            The store is closed or read-only.
        """
        self._check_writable()
        old_n = len(self)
        n = old_n + self._pending_images
        records = list(self._index.records) + self._pending_records
        if groups is not None:
            ids = np.asarray(groups).reshape(-1)
            if ids.shape[0] != n or (ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0)):
                raise ValueError(
                    f"groups must hold one non-negative integer per sample after the commit "
                    f"({old_n} committed + {self._pending_images} pending = {n}). Received "
                    f"dtype {ids.dtype}, shape {ids.shape}."
                )
            records = [
                dataclasses.replace(r, group=int(g)) for r, g in zip(records, ids, strict=True)
            ]
        elif self._pending_images:
            next_id = max((r.group for r in self._index.records), default=-1) + 1
            records[old_n:] = [
                dataclasses.replace(r, group=next_id + k)
                for k, r in enumerate(self._pending_records)
            ]
        if self._pending_images:
            self._engine.resize(n)
            labels = self._group["labels"]
            labels.resize((n,))
            labels[old_n:n] = np.concatenate(self._pending_labels)
            sig_arr = self._group["signatures"]
            sig_arr.resize((n, *sig_arr.shape[1:]))
            sig_arr[old_n:n] = np.concatenate(self._pending_sigs)
        index = dataclasses.replace(
            self._index,
            records=tuple(records),
            duplicates=self._index.duplicates + tuple(self._pending_dups),
        )
        self._files.write_atomic(INDEX_KEY, encode_index(index))
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
        self._engine.close()
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
        """Bytes the store occupies (0 if the filesystem cannot tell)."""
        return self._files.nbytes()

    def info(self) -> dict[str, Any]:
        """Summary for ``mriscan info``: counts, config, groups, codec, bytes on disk vs raw."""
        labels = self.labels
        meta = self._engine.array.metadata
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
