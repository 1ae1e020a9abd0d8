"""``ImageStore``: a transaction (pending appends, one atomic commit, one writer) over a chunk
engine (the images), the record columns and the manifest ``index.json`` (what is committed).

Only the first ``count`` rows are committed. A writer writes new chunks and column rows past that
point (column files only ever grow; shards past the arrays' shape are invisible to zarr), then
atomically replaces ``index.json`` (the commit point), and only then grows the zarr arrays'
shapes, so that outside readers (zarr-python, TensorStore) never see an uncommitted row: a crash
at any moment leaves the previous manifest and every chunk and column byte it names intact, or,
after the commit point, arrays shorter than the index (mriscan reads past their shape). The next
writer trims the leftovers and grows short arrays. A commit writes only its new rows, a few
changed fields (``index/patches.jsonl``) and a manifest of a few hundred bytes; opening reads
only the manifest, and columns are read when first used.

The store does not decide which slices are near-duplicates: whoever commits passes the groups
(``commit(groups=...)``; ``mriscan.ingest`` computes them with ``mriscan.duplicates``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from mriscan._graph_kernels import component_minima
from mriscan.duplicates import SIGNATURE_SIZE
from mriscan.duplicates import signatures as _thumbnails
from mriscan.errors import ConfigError, StoreCorruptError, StoreError, StoreNotFoundError
from mriscan.neighbors import PROJECTION_DIMS, dct_projection
from mriscan.paths import DEFAULT_STORE
from mriscan.preprocess import PreprocessConfig
from mriscan.scan_config import ReaderSettings
from mriscan.store.columns import (
    COLUMN_DIR,
    ColumnFiles,
    group_name,
    mask_from_flags,
    merge_name,
)
from mriscan.store.engines import (
    ChunkEngine,
    LocalChunkFiles,
    blosc_codec,
    covering,
    create_images_array,
    is_compressed,
    open_engine,
)
from mriscan.store.files import LOCK_KEY, PENDING_KEY, StoreFiles, WriteLock, is_url, local_path
from mriscan.store.index import (
    FORMAT_VERSION,
    INDEX_KEY,
    Manifest,
    SampleRecord,
    StoreIndex,
    decode_index,
    encode_manifest,
    pixel_checksum,
)
from mriscan.store.table import RecordTable, RecordView, canonical_groups, columns_of

__all__ = ["DEFAULT_STORE", "ImageStore", "migrate_store"]

log = logging.getLogger(__name__)


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


class _Duplicates(Sequence[dict[str, Any]]):
    """The committed list of exact-duplicate files, read from its file when first used."""

    def __init__(self, files: StoreFiles, key: str) -> None:
        self._files, self._key, self._items = files, key, None

    def _load(self) -> list[dict[str, Any]]:
        if self._items is None:
            raw = self._files.read(self._key) if self._key else b"[]"
            try:
                items = json.loads(raw) if raw is not None else None
                if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
                    raise ValueError("not a JSON list of objects")
            except ValueError as exc:
                raise StoreCorruptError(
                    f"{self._files.root}/{self._key} (the exact-duplicate list) is missing or "
                    f"unreadable ({exc}). Re-ingest the raw folder into a new --store."
                ) from exc
            self._items = items
        return self._items

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, i):
        return self._load()[i]

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _constant_values(sigs: np.ndarray) -> np.ndarray:
    """Per signature: its value if constant (a blank slice), else -1; int64 (n,)."""
    if not len(sigs):
        return np.empty(0, np.int64)
    flat = np.asarray(sigs).reshape(len(sigs), -1)
    const = np.all(flat == flat[:, :1], axis=1)
    return np.where(const, flat[:, 0].astype(np.int64), -1)


def _refuse_a_path_of_no_folder(folder: Path) -> None:
    """Raise StoreError when no store folder can be made at ``folder``: it is a file, a
    broken symbolic link, a file lies on its path (tester31: tracebacks), or it lies inside
    another store (tester32: accepted; the outer store's rewrites or deletion would take the
    inner one along)."""
    if folder.is_file():
        raise StoreError(f"{folder} is a file, not a store: choose another --store path.")
    if folder.is_symlink() and not folder.exists():
        raise StoreError(
            f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist: "
            "create its target folder, or choose another --store path."
        )
    for above in folder.parents:
        if above.exists() and not above.is_dir():
            raise StoreError(
                f"{above} is a file, so no store can be made at {folder}: choose another "
                "--store path."
            )
    # through links too (tester33: a link into a store's sub-folder let a store in)
    for above in (*folder.parents, *folder.resolve().parents):
        if (above / INDEX_KEY).is_file() and (above / "zarr.json").is_file():
            raise StoreError(
                f"{folder} lies inside the store {above}: a store cannot hold another. Choose "
                "a --store path outside it."
            )


#: what ``ImageStore.create`` writes before its first commit: the only entries a folder may
#: hold for a new store to be created in it (an interrupted creation's remains, cleared)
_CREATION_ENTRIES = frozenset(
    {LOCK_KEY, PENDING_KEY, "zarr.json", "images", "labels", "signatures", "index"}
)


def _refuse_a_folder_of_other_files(folder: Path, store: bool) -> None:
    """Raise StoreError when a new store at ``folder`` would be written into a user's files
    (``store`` False: no committed store there): a folder holding anything but an interrupted
    creation's entries (``_CREATION_ENTRIES`` and temp files of ``write_atomic``), which are
    cleared (tester30: `train --store CLASS_FOLDERS` wrote a store into the class folders;
    tester31: a killed creation's zarr.json beside a user's files had them all deleted)."""
    if store or not folder.is_dir():
        return
    others = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in _CREATION_ENTRIES
        and not (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file())
    )
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise StoreError(
            f"{folder} is a folder of other files ({shown}), not a store: a store is written "
            "into a new or empty folder of its own. Choose another --store path (class "
            "folders are DATA: `mriscan train DATA --store NEW_PATH`)."
        )


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
        manifest: Manifest | None = None,
    ) -> None:
        self.location = str(location)
        self.mode = mode
        self._group = group
        self._files = files
        self._columns = ColumnFiles(files)
        self._lock = lock
        self._manifest = manifest
        self._legacy = manifest is None
        self._set_index(index, manifest)
        # the images' zarr.json may lag the committed count (a writer stopped after its commit
        # point): the shards hold those rows, so read them through a handle that covers them
        self._engine: ChunkEngine = open_engine(covering(group["images"], len(self)), files)
        self._pending_images = 0
        self._pending_records: list[dict[str, Any]] = []
        self._pending_labels: list[np.ndarray] = []
        self._pending_sigs: list[np.ndarray] = []
        self._pending_dups: list[dict[str, Any]] = []
        self._pending_updates: dict[int, dict[str, Any]] = {}
        self._new_duplicates: tuple[dict[str, Any], ...] | None = None
        self._pending_upto = 0  # rows up to which write.pending says data may lie
        self._closed = False

    def _set_index(self, index: StoreIndex, manifest: Manifest | None) -> None:
        """Attach the record table of ``manifest`` (format 3) or of ``index.records`` (1/2)."""
        if manifest is None:
            self._table = RecordTable.from_records(
                index.records, lambda: dct_projection(self.signatures())
            )
            dups = tuple(index.duplicates)
        else:
            self._table = RecordTable(
                manifest.count,
                self._columns,
                patch_bytes=manifest.patch_bytes,
                group_file=manifest.group_file,
                merges=manifest.merges,
            )
            dups = _Duplicates(self._files, manifest.duplicates_file)
        self._index = dataclasses.replace(index, records=RecordView(self._table), duplicates=dups)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        image_size: int = 128,
        config: PreprocessConfig | None = None,
        *,
        overwrite: bool = False,
        compress: bool = False,
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
        compress : bool
            Store slices Blosc-LZ4 compressed (~75-80% of their bytes on disk for real 128²
            slices) instead of raw (the default: random reads ~3× faster,
            ``mriscan.store.engines.create_images_array``).

        Raises
        ------
        ConfigError
            ``image_size`` differs from ``config.size``.
        StoreError
            A store exists at ``path`` and ``overwrite`` is False; or ``path`` is a file, or a
            folder that holds other files than a store's (whatever ``overwrite`` says: a
            store is written into a folder of its own, never over a user's files).
        StoreLockedError
            Another writer holds the store.
        """
        config = config if config is not None else PreprocessConfig(size=int(image_size))
        if config.size != int(image_size):
            raise ConfigError(f"image_size ({image_size}) must equal config.size ({config.size}).")
        if not is_url(path):
            _refuse_a_path_of_no_folder(local_path(path))
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
            # a store (replaced only with overwrite) is left to the check above; a new one,
            # or an interrupted creation's remains (cleared below), must not hold other files
            _refuse_a_folder_of_other_files(local_path(path), committed)
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
            create_images_array(group, s, compress=compress)
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
            index, manifest = StoreIndex(image_size=s, config=config), Manifest()
            files.write_atomic(INDEX_KEY, encode_manifest(index, manifest))
            return cls(
                path, mode="a", index=index, group=group, files=files, lock=lock, manifest=manifest
            )
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: str = "r") -> ImageStore:
        """Open a committed store; ``mode`` is ``"r"`` (default, no lock) or ``"a"`` (append).

        Reads only ``index.json`` (a small manifest) and the zarr metadata; record columns are
        read when first used. A format-1/2 store (every record in ``index.json``) is read as it
        is and written as format 3 at its next commit (``mriscan migrate`` converts it at once).

        Raises
        ------
        StoreNotFoundError
            No ``index.json`` at ``path``.
        StoreCorruptError
            ``index.json`` cannot be parsed or has an unknown format version.
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
        index, manifest = decode_index(raw, str(path))
        lock = None
        if mode == "a":
            lock = WriteLock(path, files)
            lock.acquire()
        try:
            group = _open_arrays(path, mode)
            store = cls(
                path, mode=mode, index=index, group=group, files=files, lock=lock, manifest=manifest
            )
            if mode == "a":
                store._trim_uncommitted()
                files.remove_orphan_temps(INDEX_KEY)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    def _leftover_bound(self) -> int | None:
        """How far a dead writer may have written images past the committed end: the rows its
        ``write.pending`` names (format 4), or None when only a listing can tell (a format
        1-3 store, whose writers kept no such record, or an unreadable record)."""
        raw = self._files.read(PENDING_KEY)
        if self._index.format_version != FORMAT_VERSION:
            return None
        if raw is None:
            return len(self)  # nothing was written past the committed end
        try:  # "<committed> <upto>\n"; a write cut short lacks its newline
            committed, upto = (int(x) for x in raw.decode("ascii").split(" "))
            if not raw.endswith(b"\n") or committed < 0:
                return None
        except (ValueError, UnicodeDecodeError):
            return None
        return max(upto, len(self))

    def _note_pending(self, upto: int) -> None:
        """Record, before any image row past the committed end is written, that rows up to
        ``upto`` may be written (``write.pending``: the next writer removes them if this one
        dies, without listing the store).

        The note names the end of the chunk (shard) that holds row ``upto - 1``, so that a
        writer appending batch after batch rewrites it once per shard, not once per batch:
        rewriting a small file in place costs ~2-8 ms on ext4 (a truncated file's data is
        flushed at close, ``auto_da_alloc``), and the next writer's cleanup looks at whole
        chunks anyway."""
        step = max(1, self._engine.chunk_rows)
        upto = -(-upto // step) * step
        if upto > self._pending_upto:
            self._files.write(PENDING_KEY, f"{len(self)} {upto}\n".encode())
            self._pending_upto = upto

    def _trim_uncommitted(self) -> None:
        """Drop rows a crashed writer left beyond the committed count (images, arrays, column
        files) and column files no longer named by the manifest.

        Costs O(rows the dead writer wrote) on a format-4 store (``write.pending``); a store
        last written by an older writer is listed once."""
        n = len(self)
        if self._engine.rows > n:
            log.info("trimming images from %d to %d committed rows", self._engine.rows, n)
            self._engine.resize(n)
        for name in ("labels", "signatures"):
            arr = self._group[name]
            if arr.shape[0] > n:
                log.info("trimming %s from %d to %d committed rows", name, arr.shape[0], n)
                arr.resize((n, *arr.shape[1:]))
        # chunks written past the array's end are invisible to zarr; remove them too
        removed = self._engine.remove_leftovers(n, self._leftover_bound())
        if removed:
            log.info("removed %d leftover chunk file(s) past row %d", removed, n)
        self._files.delete(PENDING_KEY)
        self._publish()  # a writer that stopped after its commit point left the arrays short
        m = self._manifest
        if m is None:
            return  # format 1/2: the columns are written whole at the next commit
        self._columns.trim(m.count, m.patch_bytes, m.group_file, m.merges)
        keep = {group_name(m.group_file), merge_name(m.group_file), m.duplicates_file}
        stale = re.compile(r"(group|merges)\.\d+\.i8|duplicates\.\d+\.json")
        for key in list(self._files.keys(COLUMN_DIR)):
            rel = f"{COLUMN_DIR}/{key}"
            if stale.fullmatch(key) and rel not in keep:
                self._files.delete(rel)

    # ---- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._table.count

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def index(self) -> StoreIndex:
        """The committed index."""
        return self._index

    @property
    def compressed(self) -> bool:
        """Whether the slices are stored compressed (``create(..., compress=True)``: Blosc-LZ4
        shards; stores of index format 1-3: Blosc-Zstd chunk files), else raw."""
        return is_compressed(self._engine.array)

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
        # read once per commit from index/label.u1 (read_batch needs labels on every call)
        return self._table.fixed("label")

    @property
    def salt(self) -> bytes | None:
        """The secret salt that a store written before the identifier key left the store
        (``mriscan.keys``) keeps in its index, or None (newer stores, format-1 stores and stores
        never ingested into)."""
        return bytes.fromhex(self._index.salt) if self._index.salt else None

    def active_indices(self) -> np.ndarray:
        """Positions of the committed samples that are not retired, ndarray (n,), int64.

        Retired records (``SampleRecord.active`` False: their file was deleted, overwritten or
        moved to another class) keep their rows, but training, CV and evaluation use only these.
        """
        return np.flatnonzero(self._table.active_mask()).astype(np.int64)

    def zarr_lag(self) -> int:
        """Committed rows that the zarr arrays' shapes (``zarr.json``) do not cover yet, int: 0
        unless a writer stopped between its commit point and growing the arrays. mriscan reads
        those rows anyway; zarr-python and TensorStore see them once a writer opens the store
        (``mriscan migrate``, the next ingest)."""
        n = len(self)
        return max(n - self._group[name].shape[0] for name in _ARRAYS)

    @property
    def groups(self) -> np.ndarray:
        """Split-group id of each committed sample, ndarray of shape (N,), int64, numbered 0.. in
        order of first appearance (read-only; computed once per commit)."""
        return self._table.groups()

    @property
    def table(self) -> RecordTable:
        """The committed records column by column (``mriscan.store.table.RecordTable``)."""
        return self._table

    def signature_projections(self) -> np.ndarray:
        """``mriscan.neighbors.dct_projection`` of every committed signature, (N, 32) float32
        (read from ``index/proj.f4``; computed for a format-1/2 store)."""
        return self._table.fixed("proj")

    def signature_rows(self, positions: np.ndarray) -> np.ndarray:
        """Committed signatures at ``positions``, ndarray (k, 16, 16) uint8."""
        pos = np.asarray(positions, np.int64).reshape(-1)
        if not pos.size:
            return np.empty((0, SIGNATURE_SIZE, SIGNATURE_SIZE), np.uint8)
        if self._table.columns is not None:  # format 3: index/sig.u1, one row per read
            rows = self._columns.fixed_rows("sig", pos)
            return rows.reshape(len(pos), SIGNATURE_SIZE, SIGNATURE_SIZE)
        return np.asarray(self._group["signatures"].get_orthogonal_selection((pos,)))

    def constant_signatures(self) -> dict[int, int]:
        """First committed position of every constant signature value (blank slices)."""
        if self._manifest is not None:
            return dict(self._manifest.constants)
        vals = _constant_values(self.signatures())
        out: dict[int, int] = {}
        for pos in np.flatnonzero(vals >= 0).tolist():
            out.setdefault(int(vals[pos]), pos)
        return out

    def positions_with_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """A committed position carrying each single key of ``keys`` (``mriscan.splits.
        split_keys``: a record whose ``group_key`` joins several keys carries each of them);
        keys no committed record carries are left out."""
        from mriscan.splits import KEY_SEPARATOR, split_keys
        from mriscan.store.columns import key_hash

        wanted = {key_hash(p): p for k in keys for p in split_keys(k)}
        if not wanted or not len(self):
            return {}
        kh = self._table.fixed("keyhash")
        hits = np.flatnonzero(np.isin(kh, np.fromiter(wanted, np.int64)))
        out: dict[str, int] = {}
        for pos in hits.tolist():
            k = wanted[int(kh[pos])]
            if k not in out and self._table.string_at("group_key", pos) == k:
                out[k] = pos
        # records with several keys (a manifest group joined with a patient, ...)
        names = set(wanted.values())
        for pos in self._table.rows_containing("group_key", KEY_SEPARATOR).tolist():
            for k in split_keys(self._table.string_at("group_key", pos)):
                if k in names:
                    out.setdefault(k, pos)
        return out

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
        n = len(self)
        if self._table.columns is not None:  # index/sig.u1 (the zarr array may lag the index)
            return self._columns.fixed("sig", n).reshape(n, SIGNATURE_SIZE, SIGNATURE_SIZE)
        return np.asarray(self._group["signatures"][:n])

    def pending_signatures(self) -> np.ndarray:
        """Thumbnails of the appended, not yet committed samples, ndarray (n, 16, 16), uint8."""
        if not self._pending_sigs:
            return np.empty((0, SIGNATURE_SIZE, SIGNATURE_SIZE), np.uint8)
        return np.concatenate(self._pending_sigs)

    @property
    def n_pending(self) -> int:
        """Samples appended since the last commit."""
        return self._pending_images

    def pending_checksum(self, position: int) -> str:
        """The ``pixel_sha256`` of a sample appended since the last commit (``position``: its
        store position, at least ``len(self)``).

        Raises
        ------
        IndexError
            ``position`` is not a pending sample's.
        """
        k = position - len(self)
        if not 0 <= k < len(self._pending_records):
            raise IndexError(f"no pending sample at position {position}")
        return str(self._pending_records[k]["pixel_sha256"])

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
        self._note_pending(start + images.shape[0])
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
            full = SampleRecord.from_dict(rec).to_dict()  # checks every field
            mask_from_flags(full["flags"])  # a flag outside FLAG_BITS cannot be stored
            self._pending_records.append(full)
        self._pending_labels.append(labels.astype(np.uint8))
        self._pending_sigs.append(np.asarray(signatures, np.uint8))
        self._pending_images += images.shape[0]

    def add_duplicate(self, source: str, sha256: str, duplicate_of: int) -> None:
        """Record (at the next commit) a file whose bytes equal an already stored sample."""
        self._check_writable()
        self._pending_dups.append(
            {"source": source, "sha256": sha256, "duplicate_of": int(duplicate_of)}
        )

    @property
    def key_id(self) -> str:
        """Fingerprint of the identifier key the store's ids are hashed with
        (``mriscan.keys.key_fingerprint``), or "" when none was recorded yet."""
        return self._index.key_id

    def set_key_id(self, key_id: str) -> None:
        """Record (at the next commit) the fingerprint of the identifier key of a store that has
        none; the key itself is never written into the store.

        Raises
        ------
        StoreError
            The store already records another key, or keeps a salt of its own.
        ConfigError
            ``key_id`` is not 16 hex characters.
        """
        self._check_writable()
        if not re.fullmatch(r"[0-9a-f]{16}", key_id or ""):
            raise ConfigError(f"key_id must be 16 lowercase hex characters. Received: {key_id!r}.")
        if self._index.salt or (self._index.key_id and self._index.key_id != key_id):
            raise StoreError(
                f"Store {self.location} already has its identifier key; it cannot change."
            )
        self._index = dataclasses.replace(self._index, key_id=key_id)

    @property
    def reader_settings(self) -> ReaderSettings | None:
        """How the store's DICOM and NIfTI files were read (``ReaderSettings``), or None for a
        store written before mriscan recorded it (unknown; the defaults are assumed)."""
        return self._index.reader

    def set_reader_settings(self, settings: ReaderSettings) -> None:
        """Record (at the next commit) how the store's scanner files are read; ``mriscan.ingest``
        decides when that may change (never for a kind of file the store already holds)."""
        self._check_writable()
        if not isinstance(settings, ReaderSettings):
            raise TypeError(f"settings must be a ReaderSettings. Received: {settings!r}.")
        self._index = dataclasses.replace(self._index, reader=settings)

    def set_salt(self, salt: bytes) -> None:
        """Give a store without a salt its salt (recorded at the next commit).

        Raises
        ------
        StoreError
            The store already has a different salt (ids made with it would no longer match).
        ConfigError
            ``salt`` is shorter than 16 bytes.
        """
        from mriscan.scan import check_salt

        self._check_writable()
        salt = check_salt(salt)
        if self._index.salt and self._index.salt != salt.hex():
            raise StoreError(f"Store {self.location} already has a salt; it cannot change.")
        self._index = dataclasses.replace(self._index, salt=salt.hex())

    def update_record(self, position: int, **fields: Any) -> None:
        """Change fields of a committed record at the next commit (the pixels never change).

        Only ``flags``, ``file_id``, ``group_key`` and ``origin`` may change: a relabel or new
        content is a new sample (``append``) plus the old one retired with a flag in
        ``RETIRED_FLAGS``, so that every commit only appends rows.

        Raises
        ------
        ValueError
            Another field, or a position that is not committed.
        """
        self._check_writable()
        bad = set(fields) - {"flags", "file_id", "group_key", "origin"}
        if bad:
            raise ValueError(f"update_record cannot change {sorted(bad)}.")
        if not 0 <= int(position) < len(self):
            raise ValueError(f"position {position} is not a committed sample (0..{len(self) - 1}).")
        if "flags" in fields:
            fields["flags"] = list(fields["flags"])
            mask_from_flags(fields["flags"])
        for name in ("file_id", "group_key"):
            if name in fields and not isinstance(fields[name], str):
                raise ValueError(f"{name} must be a string, got {fields[name]!r}")
        if "origin" in fields:
            fields["origin"] = int(fields["origin"])
        self._pending_updates.setdefault(int(position), {}).update(fields)

    def set_duplicates(self, duplicates: Sequence[dict[str, Any]]) -> None:
        """Replace the whole list of exact-duplicate files at the next commit (instead of adding
        to it with ``add_duplicate``); each dict: ``source``, ``sha256``, ``duplicate_of``."""
        self._check_writable()
        self._new_duplicates = tuple(dict(d) for d in duplicates)
        self._pending_dups = []

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

    def commit(
        self,
        groups: Sequence[int] | np.ndarray | None = None,
        *,
        links: np.ndarray | None = None,
    ) -> int:
        """Make everything appended so far visible at once; return the number of new samples.

        Appends the new rows to the column files, replaces ``index.json`` (the commit point),
        then grows the zarr arrays (``_publish``). Readers that opened earlier keep their old
        view. A format-1/2 store is written as the current format (all columns) here.

        Parameters
        ----------
        groups : array-like of shape (N_committed + N_pending,), int >= 0, optional
            Split group of every sample after the commit, old and new. When it only joins old
            groups (and places new samples) it is recorded as merges; otherwise (an old group
            split) the group column is rewritten as a new generation.
        links : ndarray of shape (E, 2), int, optional
            Pairs of positions (committed or pending) that must share a group, the incremental
            form (``mriscan.ingest`` passes the near-duplicate and same-key pairs of the new
            samples): groups only ever join, and the commit costs O(new samples + E).
            Not with ``groups``.

        If neither is given, committed samples keep their groups and each new sample gets a group
        of its own: the store never decides on its own that two slices are copies of each other.

        Raises
        ------
        ValueError
            ``groups`` has the wrong length or holds negative ids; ``links`` names a position
            outside the store or comes with ``groups``.
        StoreError
            The store is closed or read-only.
        """
        self._check_writable()
        old_n = len(self)
        n = old_n + self._pending_images
        if groups is not None and links is not None:
            raise ValueError("pass either groups or links to commit, not both")
        table = self._table
        merges = np.empty((0, 2), np.int64)
        rebase: np.ndarray | None = None
        if groups is not None:
            ids = np.asarray(groups).reshape(-1)
            if ids.shape[0] != n or (ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0)):
                raise ValueError(
                    f"groups must hold one non-negative integer per sample after the commit "
                    f"({old_n} committed + {self._pending_images} pending = {n}). Received "
                    f"dtype {ids.dtype}, shape {ids.shape}."
                )
            new_labels, merges, rebase = _labels_from_groups(table.group_labels(), ids)
        elif links is not None:
            pairs = np.asarray(links, np.int64).reshape(-1, 2)
            if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
                raise ValueError(
                    f"links must name positions in [0, {n}); received {pairs.min()}..{pairs.max()}"
                )
            new_labels, merges = _labels_from_links(table, old_n, n, pairs)
        else:
            new_labels = np.arange(old_n, n, dtype=np.int64)
        pending_sigs = self.pending_signatures()
        if self._pending_images:
            # every slice on disk (fsync'd), past the arrays' shape: no reader looks there yet
            self._engine.flush()
        with self._columns.batch():  # every column byte is on disk before the manifest
            if self._legacy or self._manifest is None:
                manifest = self._write_all(new_labels, merges, rebase, pending_sigs)
            else:
                manifest = self._write_appended(new_labels, merges, rebase, pending_sigs)
        index = dataclasses.replace(self._index, format_version=FORMAT_VERSION)
        self._files.write_atomic(INDEX_KEY, encode_manifest(index, manifest))
        self._manifest, self._legacy = manifest, False
        self._set_index(index, manifest)
        added = self._pending_images
        if added:  # only now may outside readers see the new rows
            self._publish(
                {"labels": np.concatenate(self._pending_labels), "signatures": pending_sigs}
            )
        self._pending_images = 0
        self._pending_records, self._pending_labels = [], []
        self._pending_sigs, self._pending_dups = [], []
        self._pending_updates, self._new_duplicates = {}, None
        if self._pending_upto:
            self._files.delete(PENDING_KEY)  # nothing lies past the (new) committed end
            self._pending_upto = 0
        log.info("committed %d new samples (%d total) to %s", added, n, self.location)
        return added

    def _publish(self, new_rows: dict[str, np.ndarray] | None = None) -> None:
        """Grow the zarr arrays (their ``zarr.json`` shape) to the committed count, so that
        zarr-python and TensorStore see the committed rows, and never earlier than the commit
        point: ``commit`` calls this after replacing ``index.json``, and a writer's ``open``
        calls it for a writer that stopped in between (until then outside readers see fewer
        rows, never uncommitted ones).

        ``labels`` and ``signatures`` get their values for the rows past their shape first,
        from ``new_rows`` (the rows this commit added, by array name) or else from the
        committed columns (``index/label.u1``, ``index/sig.u1``); the images' shards were
        written and fsync'd before the commit point."""
        n = len(self)
        for name in ("labels", "signatures"):
            arr = self._group[name]
            have = arr.shape[0]
            if have >= n:
                continue
            values = (new_rows or {}).get(name)
            if values is None or len(values) != n - have:
                if name == "labels":
                    values = self._columns.fixed("label", n)[have:]
                else:
                    values = self.signature_rows(np.arange(have, n))
            covering(arr, n)[have:n] = values  # chunks past the shape: invisible until resize
            arr.resize((n, *arr.shape[1:]))
        images = self._group["images"]
        if images.shape[0] < n:
            images.resize((n, *images.shape[1:]))
        self._engine.array = images
        self._engine.resize(n)  # drops the write buffer; the shape is already n

    def _new_columns(self, pending_sigs: np.ndarray) -> dict[str, Any]:
        cols = columns_of(self._pending_records)
        cols["proj"] = (
            dct_projection(pending_sigs)
            if len(pending_sigs)
            else np.empty((0, PROJECTION_DIMS), np.float32)
        )
        cols["sig"] = pending_sigs.reshape(len(pending_sigs), -1)
        return cols

    def _duplicates_file(self, manifest: Manifest) -> str:
        """Write the exact-duplicate list if this commit changed it; return its key."""
        if self._new_duplicates is None and not self._pending_dups:
            return manifest.duplicates_file
        base = list(self._index.duplicates) if self._new_duplicates is None else []
        new = base + list(self._new_duplicates or ()) + list(self._pending_dups)
        if new == list(self._index.duplicates) and (manifest.duplicates_file or not new):
            return manifest.duplicates_file
        if not new:
            return ""
        last = re.fullmatch(r"index/duplicates\.(\d+)\.json", manifest.duplicates_file)
        key = f"{COLUMN_DIR}/duplicates.{int(last.group(1)) + 1 if last else 0}.json"
        self._files.write_atomic(key, json.dumps(new).encode())
        return key

    def _write_appended(self, new_labels, merges, rebase, pending_sigs) -> Manifest:
        """Format 3 onto format 3: append the new rows, patches and merges."""
        m = self._manifest
        cols = self._columns
        old_n = m.count
        if self._pending_images:
            cols.append_rows(old_n, self._new_columns(pending_sigs))
        gen, n_merges = m.group_file, m.merges
        if rebase is not None:
            gen, n_merges = str(int(gen) + 1), 0
            cols.append(group_name(gen), 0, rebase.astype("<i8").tobytes())
        else:
            if len(new_labels):
                cols.append(group_name(gen), old_n * 8, new_labels.astype("<i8").tobytes())
            if len(merges):
                cols.append(merge_name(gen), n_merges * 16, merges.astype("<i8").tobytes())
                n_merges += len(merges)
        patch_bytes = m.patch_bytes
        if self._pending_updates:
            patch_bytes = cols.append_patches(patch_bytes, self._pending_updates)
        constants = dict(m.constants)
        for k, v in enumerate(_constant_values(pending_sigs).tolist()):
            if v >= 0:
                constants.setdefault(v, old_n + k)
        return Manifest(
            count=old_n + self._pending_images,
            patch_bytes=patch_bytes,
            group_file=gen,
            merges=n_merges,
            constants=constants,
            duplicates_file=self._duplicates_file(m),
        )

    def _write_all(self, new_labels, merges, rebase, pending_sigs) -> Manifest:
        """A format-1/2 store (or a first commit): write every column from row 0."""
        t = self._table
        old_n = t.count
        records = [r.to_dict() for r in self._index.records]
        for pos, fields in self._pending_updates.items():
            records[pos].update(fields)
        records += self._pending_records
        cols = columns_of(records)
        all_sigs = np.concatenate([self.signatures(), pending_sigs])
        cols["proj"] = (
            dct_projection(all_sigs)
            if len(all_sigs)
            else np.empty((0, PROJECTION_DIMS), np.float32)
        )
        cols["sig"] = all_sigs.reshape(len(all_sigs), -1)
        self._columns.append_rows(0, cols)
        if rebase is not None:
            labels = rebase
        else:
            labels = np.concatenate([t.group_labels(), new_labels])
            if len(merges):
                from mriscan.store.table import resolve_labels

                roots = resolve_labels(merges)
                labels = np.array([roots.get(x, x) for x in labels.tolist()], np.int64)
        labels = canonical_groups(labels)
        self._columns.append(group_name("0"), 0, labels.astype("<i8").tobytes())
        self._columns.append(merge_name("0"), 0, b"")
        self._columns.append(f"{COLUMN_DIR}/patches.jsonl", 0, b"")
        constants: dict[int, int] = {}
        for pos, v in enumerate(_constant_values(all_sigs).tolist()):
            if v >= 0:
                constants.setdefault(v, pos)
        dups = list(self._index.duplicates) if self._new_duplicates is None else []
        dups += list(self._new_duplicates or ()) + list(self._pending_dups)
        dup_key = ""
        if dups:
            dup_key = f"{COLUMN_DIR}/duplicates.0.json"
            self._files.write_atomic(dup_key, json.dumps(dups).encode())
        return Manifest(
            count=old_n + self._pending_images,
            group_file="0",
            constants=constants,
            duplicates_file=dup_key,
        )

    def _reshard_images(self, batch: int = 1024) -> bool:
        """Rewrite a local chunk-per-slice ``images`` array as shards (see ``migrate_store``);
        return whether anything was converted. Call with nothing pending."""
        from mriscan.store.engines import ShardedFiles, is_local_chunk_layout, is_sharded_layout

        self._check_writable()
        if self._files.url or self._pending_images:
            return False
        if is_sharded_layout(self._engine.array):
            self._remove_per_slice_chunks()  # a migration killed after its switch point
            return False
        if not is_local_chunk_layout(self._engine.array):
            return False
        n, s = len(self), self.image_size
        scratch = local_path(self.location) / ".migrate.zarr"
        shutil.rmtree(scratch, ignore_errors=True)
        new_array = create_images_array(zarr.open_group(str(scratch), mode="w"), s)
        new_array.resize((n, s, s))
        writer = ShardedFiles(new_array, self._files)  # writes into images/c/<k>/0/0
        try:
            for start in range(0, n, batch):
                writer.write(start, self._engine.read(np.arange(start, min(n, start + batch))))
            writer.flush()
        finally:
            writer.close()
        meta = (scratch / "images" / "zarr.json").read_bytes()
        self._files.write_atomic("images/zarr.json", meta)  # the images' switch point
        self._engine.close()
        self._group = _open_arrays(self.location, self.mode)
        self._engine = open_engine(self._group["images"], self._files)
        self._remove_per_slice_chunks()
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("rewrote %d slices of %s as shards", n, self.location)
        return True

    def _remove_per_slice_chunks(self) -> None:
        """Delete chunk files of the old layout (``images/c.<i>.0.0``) from a sharded store."""
        folder = local_path(self.location) / "images"
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_file() and re.fullmatch(r"c\.\d+\.0\.0", e.name):
                    os.unlink(e.path)
        shutil.rmtree(local_path(self.location) / ".migrate.zarr", ignore_errors=True)

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
        """Summary for ``mriscan info``: counts, config, groups, codec, bytes on disk vs raw,
        the index format and images layout, and whether ``mriscan migrate`` would convert
        the store (``migrate``: an older index format or images one file per slice)."""
        active = self.active_indices()
        labels = self.labels[active]
        meta = self._engine.array.metadata
        s = self.image_size
        return {
            "location": self.location,
            "samples": int(active.size),
            "retired": len(self) - int(active.size),
            "image_size": s,
            "classes": {name: int((labels == k).sum()) for k, name in enumerate(self.class_names)},
            "duplicate_groups": int(np.unique(self.groups[active]).size),  # retired left out
            "exact_duplicates_skipped": len(self._index.duplicates),
            "format_version": self._index.format_version,
            "images_layout": self._engine.name,
            "migrate": self._index.format_version != FORMAT_VERSION
            or isinstance(self._engine, LocalChunkFiles),
            "preprocess": self.config.to_dict(),
            # None: written before mriscan recorded it (read with the defaults, presumably)
            "reader": None if self.reader_settings is None else self.reader_settings.to_dict(),
            "codec": [c.to_dict() for c in meta.codecs],
            "chunks": list(meta.chunk_grid.chunk_shape),
            "bytes_on_disk": self.nbytes_stored(),
            "bytes_raw": len(self) * s * s,
        }


def _labels_from_links(
    table: RecordTable, old_n: int, n: int, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Group labels of the new rows and the merges of old groups that ``pairs`` imply.

    Union-find over labels (a committed row's resolved label, a new row's own position); the
    smallest label is the root, so an old group never takes a new row's label.
    """
    new = np.arange(old_n, n, dtype=np.int64)
    if not len(pairs):
        return new, np.empty((0, 2), np.int64)
    # both ends as labels (an old row's resolved label, a new row's own position); then the
    # components over the labels that occur, by a Numba union-find (~12k links of 400 NIfTI
    # slices took 40 ms as a Python loop); a component's label is its smallest
    ends = pairs.copy()
    old_lab = np.empty(0, np.int64)
    old = pairs < old_n
    old_pos = np.unique(pairs[old])
    if old_pos.size:
        raw = (
            table.memory["group"][old_pos]
            if table.memory is not None
            else table.columns.groups_at(table.group_file, old_pos)
        )
        roots = table.roots()
        old_lab = np.array([roots.get(g, g) for g in raw.tolist()], np.int64)
        ends[old] = old_lab[np.searchsorted(old_pos, pairs[old])]
    nodes, inverse = np.unique(np.concatenate([ends.reshape(-1), new]), return_inverse=True)
    inverse = inverse.reshape(-1)
    e = 2 * len(ends)
    root = component_minima(inverse[:e:2].copy(), inverse[1:e:2].copy(), len(nodes))
    labels = nodes[root[inverse[e:]]]
    old_roots = np.unique(old_lab)
    joined = nodes[root[np.searchsorted(nodes, old_roots)]]
    moved = joined != old_roots
    return labels, np.stack([old_roots[moved], joined[moved]], axis=1).reshape(-1, 2)


def _labels_from_groups(
    old: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(new rows' labels, merges, None) when ``ids`` only joins the old groups ``old`` (resolved
    labels) and places new rows; (empty, empty, all labels) when it splits an old group."""
    old_n, n = len(old), len(ids)
    ids = ids.astype(np.int64)
    if old_n:
        pairs = np.unique(np.stack([old, ids[:old_n]], axis=1), axis=0)
        if len(np.unique(pairs[:, 0])) != len(pairs):  # an old group now has two ids: a split
            return np.empty(0, np.int64), np.empty((0, 2), np.int64), canonical_groups(ids)
    else:
        pairs = np.empty((0, 2), np.int64)
    root_of_id: dict[int, int] = {}
    for label, gid in pairs.tolist():  # sorted by label: the first is the smallest
        root_of_id.setdefault(gid, label)
    merges = [(label, root_of_id[gid]) for label, gid in pairs.tolist() if root_of_id[gid] != label]
    labels = np.empty(n - old_n, np.int64)
    for k, gid in enumerate(ids[old_n:].tolist()):
        labels[k] = root_of_id.setdefault(gid, old_n + k)
    return labels, np.array(merges, np.int64).reshape(-1, 2), None


def migrate_store(path: str | os.PathLike[str]) -> int:
    """Convert a store written by an older mriscan to the current format in place; return the
    index format version it had. ``mriscan migrate --store PATH`` calls this.

    Index formats 1-3 are written as the current one in one atomic commit. The images of a
    local store in the chunk-per-slice layout of older versions (``c.<i>.0.0``) are rewritten
    as shards (``create_images_array``): every shard is written and fsync'd beside the old
    chunk files (which the old ``images/zarr.json`` never names), then ``images/zarr.json`` is
    atomically replaced — the images' switch point; both layouts hold the same pixels, so a
    migration killed at any moment leaves a readable store and can be re-run — and only then
    are the old chunk files deleted. Nothing is written when the store is already current.

    Raises
    ------
    StoreNotFoundError, StoreCorruptError, StoreLockedError
        As ``ImageStore.open(path, mode="a")``.
    """
    with ImageStore.open(path, mode="a") as store:
        version = store.index.format_version
        store._reshard_images()
        if version != FORMAT_VERSION:
            store.commit()
        return version
