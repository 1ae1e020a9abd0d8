"""Chunk engines: how the rows of the ``images`` array, shape (N, S, S) uint8, reach the bytes.

``ChunkEngine`` is the small interface ``ImageStore`` talks to (read rows by position, write rows,
flush, resize, remove leftovers past the committed end). Three engines implement it:

- ``ShardedFiles``: the layout of every new store (``create_images_array``): the standard Zarr v3
  sharding codec (``sharding_indexed``), shards of ``SHARD_ROWS`` slices at keys ``c/<k>/0/0``,
  each inner chunk one slice, the shard index (offset, length) at the
  shard's end with a CRC32C; inner chunks are raw slices (or Blosc-LZ4 with ``compress``). It
  reads the index once per shard (cached with the open file) and then ``preadv`` s each slice
  straight into the output: one system call per slice, no file open, no decode. zarr-python
  and TensorStore read the same files (``tests/test_store_layout.py``).
  Why its own reader: zarr-python's sharded read path costs ~1.5 ms per random slice and
  TensorStore, the fastest library reader, measured 0.24-0.7× this one on random batches of 32
  (``bench/RESULTS.md``, "#20 store layout"). The shard format is the Zarr v3 sharding
  specification (https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/).
- ``LocalChunkFiles``: stores made before the sharded layout (one Blosc-Zstd chunk file per
  slice, keys ``c.<i>.0.0``), read and written directly (``mriscan migrate`` converts them).
- ``ZarrEngine``: zarr-python, for any URL (``memory://``, ``s3://``) or any other layout.

``open_engine`` picks one, once, when a store is opened. Both read a chunk that does not exist
(inside the array's shape) as the array's fill value, as zarr does: zarr v3 does not write a
chunk equal to the fill value, so a store written through zarr may lack the chunks of all-black
slices. Both raise ``StoreCorruptError`` for a row outside the array or a chunk that cannot be
decoded. Try another chunk layout by writing an engine against ``ChunkEngine`` and running the
conformance suite in ``tests/test_store_engines.py`` on it.
"""

from __future__ import annotations

import abc
import os
import resource
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

from mriscan.errors import StoreCorruptError
from mriscan.store.files import StoreFiles, fsync_all

__all__ = [
    "SHARD_ROWS",
    "ChunkEngine",
    "LocalChunkFiles",
    "ShardedFiles",
    "ZarrEngine",
    "blosc_codec",
    "covering",
    "create_chunk_per_slice_array",
    "create_images_array",
    "is_compressed",
    "is_local_chunk_layout",
    "is_sharded_layout",
    "open_engine",
    "shard_index",
]

IMAGES = "images"
CLEVEL = 3
# Blosc settings of every chunk this package writes (zarr's codec and numcodecs' encoder agree).
_BLOSC_CONFIG = {"cname": "zstd", "clevel": CLEVEL, "shuffle": "noshuffle", "typesize": 1}
_BLOSC = numcodecs.Blosc(cname="zstd", clevel=CLEVEL, shuffle=numcodecs.Blosc.NOSHUFFLE)


def blosc_codec() -> BloscCodec:
    """The zarr codec of every array a new store holds: Blosc-Zstd level 3, no shuffle."""
    return BloscCodec(cname="zstd", clevel=CLEVEL, shuffle="noshuffle")


#: Slices per shard file of a new store's images (about 3 MB of 128² slices).
SHARD_ROWS = 256
# Inner chunks of a compressed sharded layout (``compress=True``): Blosc-LZ4, measured on real
# 128² slices (bench/RESULTS.md, "#20 store layout"): LZ4 decodes in ~9 µs per slice where Zstd
# takes ~40 µs and encodes 7× faster; it stores 73-79% of raw bytes where Zstd stores 58-66%.
_LZ4 = {"cname": "lz4", "clevel": 9, "shuffle": "noshuffle"}
_MISSING = np.uint64(2**64 - 1)  # the sharding spec's offset/length of an absent inner chunk
_BLOSC_SIZES = struct.Struct("<III")  # raw, block and compressed sizes in a Blosc header


def covering(array: zarr.Array, rows: int) -> zarr.Array:
    """``array`` itself when its first dimension is at least ``rows``, else a handle on the same
    stored array whose first dimension is ``rows`` long in memory only (its ``zarr.json`` is not
    touched): for writing rows past the stored shape before a commit, and for reading the
    committed rows of a store whose writer stopped between its commit point and growing the
    arrays (``ImageStore.commit``). Uses zarr-python's ``AsyncArray`` and
    ``ArrayV3Metadata.update_shape`` (the same step ``zarr.Array.resize`` takes, minus the write).
    """
    if array.shape[0] >= rows:
        return array
    a = array._async_array
    meta = a.metadata.update_shape((int(rows), *array.shape[1:]))
    return zarr.Array(type(a)(meta, a.store_path, a.config))


def create_images_array(
    group: zarr.Group, size: int, *, shard_rows: int = SHARD_ROWS, compress: bool = False
) -> zarr.Array:
    """Create the empty ``images`` array of a new store, shape (0, size, size) uint8.

    Zarr v3 sharding codec: shards of ``shard_rows`` slices (keys ``c/<k>/0/0``), inner chunks
    of one slice — raw bytes by default, Blosc-LZ4 with ``compress`` — the shard index at the
    end with a CRC32C (zarr's defaults), fill value 0. ``ShardedFiles`` serves this layout;
    zarr-python and TensorStore read it.

    Why uncompressed by default (measured on 20,000 real 128² slices, random batches of 32 at 2
    threads, ``bench/RESULTS.md`` "#20 store layout"): raw slices read at ~40% of a warm
    ``np.memmap`` (each slice one ``preadv`` into the output), LZ4 at ~13% (its decode is the
    cost), the old one-Zstd-file-per-slice layout at ~4%; raw slices take 100% of their bytes
    on disk, LZ4 79%, Zstd 66%.
    """
    return group.create_array(
        IMAGES,
        shape=(0, size, size),
        chunks=(1, size, size),
        shards=(int(shard_rows), size, size),
        dtype="uint8",
        compressors=BloscCodec(**_LZ4) if compress else None,
        fill_value=0,
    )


def create_chunk_per_slice_array(group: zarr.Group, size: int) -> zarr.Array:
    """Create an empty ``images`` array in the layout of stores made before the sharded one.

    One slice per chunk, Blosc-Zstd, fill value 0, chunk keys ``c.<i>.0.0``.
    ``LocalChunkFiles`` serves this layout; new stores use ``create_images_array``.
    """
    return group.create_array(
        IMAGES,
        shape=(0, size, size),
        chunks=(1, size, size),
        dtype="uint8",
        compressors=blosc_codec(),
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
    )


def is_local_chunk_layout(array: zarr.Array) -> bool:
    """Whether ``array``'s metadata is exactly the layout ``LocalChunkFiles`` reads and writes.

    Checked on the metadata, not on names: uint8 (N, S, S) with chunks (1, S, S), default chunk
    keys with "." separator, no storage transformers, and codecs ``[BytesCodec, BloscCodec]``
    whose Blosc configuration is the one ``LocalChunkFiles`` encodes with (zstd, level 3, no
    shuffle, typesize 1, automatic block size).
    """
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or len(array.shape) != 3:
        return False
    codecs = meta.codecs
    if (
        len(codecs) != 2
        or not isinstance(codecs[0], BytesCodec)
        or not isinstance(codecs[1], BloscCodec)
    ):
        return False
    blosc = codecs[1].to_dict().get("configuration", {})
    keys = meta.chunk_key_encoding
    return (
        np.dtype(array.dtype) == np.uint8
        and tuple(meta.chunk_grid.chunk_shape) == (1, *array.shape[1:])
        and isinstance(keys, DefaultChunkKeyEncoding)
        and keys.separator == "."
        and not meta.storage_transformers
        and all(blosc.get(k) == v for k, v in _BLOSC_CONFIG.items())
        and blosc.get("blocksize", 0) == 0
    )


def _decode_slice(
    raw: bytes | memoryview,
    shape: tuple[int, int],
    root: str,
    i: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode one Blosc frame into a (S, S) uint8 slice (into ``out`` if given).

    Raises
    ------
    StoreCorruptError
        The frame is shorter than its header says, holds another number of bytes than a slice,
        or Blosc cannot decode it.
    """
    s0, s1 = shape
    try:
        # Blosc trusts the sizes in its 16-byte header: a truncated frame would decode bytes
        # past its end. Check them first (header layout: c-blosc README_HEADER.rst).
        if len(raw) < 16:
            raise ValueError(f"{len(raw)} bytes, shorter than a Blosc header")
        nbytes, _, cbytes = _BLOSC_SIZES.unpack_from(raw, 4)
        if cbytes != len(raw) or nbytes != s0 * s1:
            raise ValueError(
                f"Blosc header says {cbytes} compressed / {nbytes} raw bytes; the chunk holds "
                f"{len(raw)} and a slice needs {s0 * s1}"
            )
        if out is None:
            out = np.empty((s0, s1), np.uint8)
        numcodecs.blosc.decompress(raw, out)
    except (RuntimeError, ValueError) as exc:
        raise StoreCorruptError(
            f"{root}: chunk of sample {i} cannot be decoded ({exc}). Run `mriscan verify`; "
            "re-ingest the raw folder into a new --store."
        ) from exc
    return out


class ChunkEngine(abc.ABC):
    """Reads and writes rows of one (N, S, S) uint8 zarr array.

    Rows past the committed end are written first (``write``) and joined to the array by
    ``resize``; until then no reader looks at them. Engines are safe for concurrent readers.
    """

    #: Short name for logs and ``mriscan info``.
    name: str = ""

    def __init__(self, array: zarr.Array, files: StoreFiles) -> None:
        self.array = array
        self.files = files
        self.fill_value = np.uint8(array.metadata.fill_value)
        self._rows_of: object = None
        self._rows = 0

    @property
    def rows(self) -> int:
        """Rows in the array as this handle last saw its metadata."""
        # zarr's ``shape`` goes through the metadata objects (~7 µs): cached per metadata
        meta = self.array.metadata
        if self._rows_of is not meta:
            self._rows_of, self._rows = meta, int(meta.shape[0])
        return self._rows

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(S, S)."""
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (any order, repeats allowed), ndarray (n, S, S) uint8.

        Raises
        ------
        StoreCorruptError
            A position lies outside [0, rows), or a chunk cannot be decoded.
        """
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= self.rows):
            bad = int(pos.min()) if pos.min() < 0 else int(pos.max())
            raise StoreCorruptError(
                f"{self.files.root}: sample {bad} lies outside the images array "
                f"({self.rows} rows). Run `mriscan verify`; re-ingest the raw folder into a "
                "new --store."
            )
        return self._read(pos)

    @abc.abstractmethod
    def _read(self, positions: np.ndarray) -> np.ndarray:
        """``read`` after the bounds check."""

    @abc.abstractmethod
    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``images`` (n, S, S) uint8 as rows ``start .. start + n - 1``."""

    def flush(self) -> None:  # noqa: B027 - engines that write at once have nothing to flush
        """Write whatever ``write`` still buffers (``ImageStore.commit`` calls this first)."""

    def resize(self, rows: int) -> None:
        """Make the array ``rows`` long (zarr deletes chunks inside the old shape past the new)."""
        if self.rows != rows:
            self.array.resize((rows, *self.slice_shape))

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk (per shard, for a sharded array): the unit of a chunk file."""
        return int(self.array.metadata.chunk_grid.chunk_shape[0])

    @abc.abstractmethod
    def has_chunk(self, position: int) -> bool:
        """Whether row ``position``'s chunk exists (a missing one reads as the fill value)."""

    def remove_leftovers(self, rows: int, upto: int | None = None) -> int:
        """Delete chunks of rows >= ``rows`` that lie past the array's end; return how many.

        A writer that dies after writing chunks but before growing the array leaves such chunks;
        zarr cannot see them, but a later ``resize`` would make them visible again. With
        ``upto`` (the high-water mark a writer recorded before writing, ``ImageStore``'s
        ``write.pending``) only the chunks of rows ``rows .. upto - 1`` are looked at: O(rows
        written), not O(store). Without it every chunk file is listed (stores whose last writer
        kept no such record).
        """
        removed = 0
        chunk_rows = self.chunk_rows
        if upto is not None:
            first = -(-rows // chunk_rows)  # the first chunk wholly at or past ``rows``
            for c in range(first, -(-upto // chunk_rows)):
                key = f"{IMAGES}/{self._chunk_key(c)}"
                if self.files.exists(key):
                    self.files.delete(key)
                    removed += 1
            return removed
        for key in list(self.files.keys(IMAGES)):
            coords = self._chunk_coords(key)
            if coords is not None and coords[0] * chunk_rows >= rows:
                self.files.delete(f"{IMAGES}/{key}")
                removed += 1
        return removed

    def _chunk_key(self, c: int) -> str:
        """Key (below ``images/``) of chunk ``c`` along the first axis."""
        return self.array.metadata.encode_chunk_key((c,) + (0,) * (len(self.array.shape) - 1))

    def _chunk_coords(self, key: str) -> tuple[int, ...] | None:
        """Chunk coordinates of a key below ``images/``, or None for metadata and strays."""
        enc = self.array.metadata.chunk_key_encoding
        sep = getattr(enc, "separator", "/")
        body = key
        if isinstance(enc, DefaultChunkKeyEncoding):
            if not key.startswith("c" + sep):
                return None
            body = key[2:]
        parts = body.split(sep)
        if len(parts) != len(self.array.shape) or not all(p.isdigit() for p in parts):
            return None
        return tuple(int(p) for p in parts)

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing
        """Release threads or handles (the engine is unusable afterwards)."""


class LocalChunkFiles(ChunkEngine):
    """One Blosc-Zstd chunk file per slice at ``images/c.<i>.0.0`` (stores made before the
    sharded layout), read and written directly.

    Only valid for arrays where ``is_local_chunk_layout`` holds, on a local filesystem.
    Chunk files are written without temp file and rename: a row being written lies past the
    committed end, so no reader looks at it until the commit that follows a complete write.
    """

    name = "local chunk files"

    def __init__(self, array: zarr.Array, files: StoreFiles) -> None:
        if files.url or not is_local_chunk_layout(array):
            raise ValueError(
                "LocalChunkFiles needs a local store whose images array has the layout "
                "create_chunk_per_slice_array writes; use ZarrEngine for anything else."
            )
        super().__init__(array, files)
        self._dir = os.path.join(files.root, IMAGES)
        self._pool: ThreadPoolExecutor | None = None

    def chunk_path(self, i: int) -> str:
        """File of row ``i``."""
        return os.path.join(self._dir, f"c.{i}.0.0")

    def _read(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((positions.size, *self.slice_shape), np.uint8)
        for k, i in enumerate(positions):
            out[k] = self._read_one(int(i))
        return out

    def _read_one(self, i: int) -> np.ndarray:
        """Decode one slice's chunk file; a missing file is the fill value (as in zarr)."""
        s0, s1 = self.slice_shape
        try:
            with open(self.chunk_path(i), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return np.full((s0, s1), self.fill_value, np.uint8)
        return _decode_slice(raw, (s0, s1), self.files.root, i)

    def write(self, start: int, images: np.ndarray) -> None:
        """Compress and write one chunk file per slice, in parallel threads."""
        images = np.ascontiguousarray(images)
        n = images.shape[0]
        if not n:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))

        def put(k: int) -> None:
            with open(self.chunk_path(start + k), "wb") as fh:
                fh.write(_BLOSC.encode(images[k]))

        list(self._pool.map(put, range(n)))

    def has_chunk(self, position: int) -> bool:
        return os.path.exists(self.chunk_path(position))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _blosc_config(codec: object) -> dict | None:
    """The configuration of a ``BloscCodec`` (None for any other codec)."""
    if not isinstance(codec, BloscCodec):
        return None
    return codec.to_dict().get("configuration", {})


def is_compressed(array: zarr.Array) -> bool:
    """Whether ``array``'s chunks are compressed: any codec besides the bytes serialisation
    among its (inner, for a sharded array) chunk codecs, or a v2 compressor."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3:
        return getattr(meta, "compressor", None) is not None
    codecs = meta.codecs
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        codecs = codecs[0].codecs
    return any(not isinstance(c, BytesCodec) for c in codecs)


def is_sharded_layout(array: zarr.Array) -> bool:
    """Whether ``array``'s metadata is a layout ``ShardedFiles`` reads and writes.

    uint8 (N, S, S), chunk grid (R, S, S), default chunk keys, no storage transformers, one
    ``sharding_indexed`` codec with inner chunks (1, S, S) of ``[BytesCodec, BloscCodec]`` (any
    Blosc compressor, typesize 1, automatic block size) and the index ``[BytesCodec(little),
    Crc32cCodec]`` at the end.
    """
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or len(array.shape) != 3:
        return False
    if len(meta.codecs) != 1 or not isinstance(meta.codecs[0], ShardingCodec):
        return False
    shard = meta.codecs[0]
    inner = shard.codecs
    blosc = _blosc_config(inner[1]) if len(inner) == 2 else None
    index = shard.index_codecs
    return (
        np.dtype(array.dtype) == np.uint8
        and isinstance(meta.chunk_key_encoding, DefaultChunkKeyEncoding)
        and not meta.storage_transformers
        and tuple(shard.chunk_shape) == (1, *array.shape[1:])
        and isinstance(inner[0], BytesCodec)
        and (
            len(inner) == 1  # uncompressed slices
            or (blosc is not None and blosc.get("typesize") == 1 and blosc.get("blocksize", 0) == 0)
        )
        and len(index) == 2
        and isinstance(index[0], BytesCodec)
        and getattr(index[0].endian, "value", index[0].endian) == "little"
        and isinstance(index[1], Crc32cCodec)
        and shard.index_location == ShardingCodecIndexLocation.end
    )


def shard_index(tail: bytes, shard_rows: int, file_size: int | None = None) -> np.ndarray:
    """Decode a shard's index from its last ``16 shard_rows + 4`` bytes (or the whole file).

    Zarr v3 ``sharding_indexed`` with index codecs ``[bytes(little), crc32c]`` at the end:
    (offset, length) per inner chunk as little-endian uint64, 2**64 - 1 for an absent chunk,
    then the CRC32C of those bytes.

    Returns
    -------
    ndarray of shape (shard_rows, 2), uint64 (read-only)

    Raises
    ------
    ValueError
        Too few bytes, a CRC mismatch, or (with ``file_size``) an entry pointing past the data.
    """
    nb = 16 * shard_rows + 4
    if len(tail) < nb:
        raise ValueError(f"{len(tail)} bytes, shorter than its index ({nb} bytes)")
    raw = tail[-nb:]
    if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise ValueError("the CRC32C of its index does not match")
    index = np.frombuffer(raw[:-4], "<u8").reshape(shard_rows, 2)
    if file_size is not None:
        present = index[:, 0] != _MISSING
        ends = index[present, 0] + index[present, 1]
        if ends.size and int(ends.max()) > file_size - nb:
            raise ValueError("its index points past the end of its chunk data")
    return index


class _Shard:
    """An open shard file and its decoded index (R, 2) uint64 (offset, length; ``_MISSING``)."""

    __slots__ = ("entries", "evicted", "fd", "index", "users")

    def __init__(self, fd: int, index: np.ndarray) -> None:
        self.fd, self.index = fd, index
        self.entries = index.tolist()  # [offset, length] per row, as Python ints (fast lookup)
        self.users, self.evicted = 0, False


class ShardedFiles(ChunkEngine):
    """Zarr v3 shards of ``R`` slices (``images/c/<k>/0/0``), read and written directly.

    Only valid for arrays where ``is_sharded_layout`` holds, on a local filesystem.

    Reading: a shard's index (the last ``16 R + 4`` bytes: offset and length of each inner chunk,
    little-endian uint64, then their CRC32C) is read and checked once per open shard; each slice
    is then one ``os.pread`` and one Blosc decode into the output (the GIL is released during
    both). Open shards are kept in a bounded LRU (``max_open`` files); a shard in use by another
    thread is closed only when that thread is done.

    Writing (rows past the committed end only): slices are encoded at ``write`` and buffered per
    shard; a full shard is written when complete, the last partial one at ``flush``. A shard
    that starts at its first row is written in place (no committed row lives in it). A shard
    that already holds committed rows (the last shard of the previous commit) is rewritten
    whole — its committed chunks copied byte for byte, the new ones after them — into a
    temporary file that is fsync'd and then renamed over it, so a killed or crashed writer
    leaves the old shard or the new one, never a mix, and a reader that holds the old file keeps
    reading it. Every shard file and its folder are fsync'd before ``flush`` returns, i.e.
    before the commit point.
    """

    name = "local zarr shards"

    def __init__(self, array: zarr.Array, files: StoreFiles, *, max_open: int | None = None):
        if files.url or not is_sharded_layout(array):
            raise ValueError(
                "ShardedFiles needs a local store whose images array has the layout "
                "create_images_array writes; use ZarrEngine for anything else."
            )
        super().__init__(array, files)
        shard = array.metadata.codecs[0]
        self._compressed = len(shard.codecs) == 2
        if self._compressed:
            cfg = _blosc_config(shard.codecs[1])
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[cfg["shuffle"]]
            blosc = numcodecs.Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=shuffle)
            self._encode = blosc.encode
        else:
            self._encode = lambda image: image.tobytes()
        self.shard_rows = self.chunk_rows
        self._index_bytes = 16 * self.shard_rows + 4
        self._dir = os.path.join(files.root, IMAGES)
        if max_open is None:  # a quarter of the process's file limit, at most 512
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_open = 512 if soft == resource.RLIM_INFINITY else max(4, min(512, soft // 4))
        self._max_open = max_open
        self._open: OrderedDict[int, _Shard] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # write buffer: shard number, encoded chunks of its rows from the shard's first row on
        # (None: absent), and whether the shard file already holds committed rows
        self._buf_shard: int | None = None
        self._buf: list[bytes | None] = []
        self._buf_has_committed = False
        self._unsynced: list[str] = []  # shards written in place since the last flush

    def shard_path(self, k: int) -> str:
        """File of shard ``k`` (rows ``k R .. (k + 1) R - 1``)."""
        return os.path.join(self._dir, "c", str(k), "0", "0")

    # ---- reading ------------------------------------------------------------------------
    def _load(self, k: int) -> _Shard | None:
        """Open shard ``k`` and read its index; None if the file does not exist."""
        path = self.shard_path(k)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            nb = self._index_bytes
            raw = os.pread(fd, nb, size - nb) if size >= nb else b""
            try:
                index = shard_index(raw, self.shard_rows, size)
            except ValueError as exc:
                rows = f"{k * self.shard_rows}..{(k + 1) * self.shard_rows - 1}"
                raise StoreCorruptError(
                    f"{self.files.root}: the shard file of samples {rows} ({path}) is damaged: "
                    f"{exc}. Run `mriscan verify`; re-ingest the raw folder into a new --store."
                ) from exc
        except BaseException:
            os.close(fd)
            raise
        return _Shard(fd, index)

    def _acquire(self, shards: list[int]) -> dict[int, _Shard | None]:
        """The open shards ``shards``, each marked in use (release with ``_release``)."""
        got: dict[int, _Shard | None] = {}
        with self._lock:
            for k in shards:
                sh = self._open.get(k)
                if sh is not None:
                    self._open.move_to_end(k)
                    sh.users += 1
                got[k] = sh
        missing = [k for k, sh in got.items() if sh is None]
        if not missing:
            return got
        try:
            loaded = {k: self._load(k) for k in missing}
        except BaseException:
            self._release(got)
            raise
        with self._lock:
            for k, sh in loaded.items():
                if sh is None:
                    continue
                have = self._open.get(k)
                if have is not None:  # another thread opened it meanwhile: use that one
                    os.close(sh.fd)
                    sh = have
                    self._open.move_to_end(k)
                else:
                    self._open[k] = sh
                sh.users += 1
                got[k] = sh
            while len(self._open) > self._max_open:
                _, old = self._open.popitem(last=False)
                self._retire(old)
        return got

    def _retire(self, sh: _Shard) -> None:
        """Close ``sh`` now or, if a thread still reads it, when that thread releases it."""
        sh.evicted = True
        if sh.users == 0:
            os.close(sh.fd)

    def _release(self, got: dict[int, _Shard | None]) -> None:
        with self._lock:
            for sh in got.values():
                if sh is not None:
                    sh.users -= 1
                    if sh.evicted and sh.users == 0:
                        os.close(sh.fd)

    def _forget(self, k: int) -> None:
        """Drop shard ``k`` from the cache (it is about to be rewritten)."""
        with self._lock:
            sh = self._open.pop(k, None)
            if sh is not None:
                self._retire(sh)

    def _read(self, positions: np.ndarray) -> np.ndarray:
        shape = self.slice_shape
        out = np.empty((positions.size, *shape), np.uint8)
        if not positions.size:
            return out
        r = self.shard_rows
        pos = positions.tolist()
        got = self._acquire(sorted({i // r for i in pos}))
        try:
            # the per-slice loop is the whole cost of a read (~10 µs of which ~5 are the LZ4
            # decode): keep it to a pread, a header check and a decode into the output
            pread, missing, decompress = os.pread, int(_MISSING), numcodecs.blosc.decompress
            sizes, size = _BLOSC_SIZES.unpack_from, shape[0] * shape[1]
            flat = memoryview(out.reshape(-1))
            if not self._compressed:  # each slice read straight into the output
                for j, i in enumerate(pos):
                    sh = got[i // r]
                    off, nb = sh.entries[i % r] if sh is not None else (missing, 0)
                    if off == missing:
                        out[j] = self.fill_value
                    elif (
                        nb != size
                        or os.preadv(sh.fd, [flat[j * size : (j + 1) * size]], off) != size
                    ):
                        raise StoreCorruptError(
                            f"{self.files.root}: chunk of sample {i} cannot be decoded ({nb} "
                            f"bytes stored, a slice needs {size}). Run `mriscan verify`; "
                            "re-ingest the raw folder into a new --store."
                        )
                return out
            for j, i in enumerate(pos):
                sh = got[i // r]
                off, nb = sh.entries[i % r] if sh is not None else (missing, 0)
                if off == missing:
                    out[j] = self.fill_value
                    continue
                raw = pread(sh.fd, nb, off)
                if nb < 16 or sizes(raw, 4) != (size, sizes(raw, 4)[1], nb) or len(raw) != nb:
                    _decode_slice(raw, shape, self.files.root, i)  # raises, naming the sample
                try:
                    decompress(raw, flat[j * size : (j + 1) * size])
                except (RuntimeError, ValueError):
                    _decode_slice(raw, shape, self.files.root, i)
                    raise
        finally:
            self._release(got)
        return out

    def has_chunk(self, position: int) -> bool:
        """Whether row ``position``'s inner chunk is in its shard file as the file is now (not
        as this handle's open-file cache saw it)."""
        sh = self._load(position // self.shard_rows)
        if sh is None:
            return False
        os.close(sh.fd)
        return bool(sh.index[position % self.shard_rows, 0] != _MISSING)

    # ---- writing ------------------------------------------------------------------------
    def _committed_chunks(self, k: int, rows: int) -> list[bytes | None]:
        """The encoded chunks of the first ``rows`` rows of shard ``k``, as stored."""
        got = self._acquire([k])
        try:
            sh = got[k]
            if sh is None:
                return [None] * rows
            chunks: list[bytes | None] = []
            for off, nb in sh.entries[:rows]:
                chunks.append(None if off == int(_MISSING) else os.pread(sh.fd, nb, off))
            return chunks
        finally:
            self._release(got)

    def write(self, start: int, images: np.ndarray) -> None:
        """Encode rows ``start ..`` into the shard buffer; write every shard they complete.

        ``start`` must continue the previous ``write`` (rows are appended in order) unless the
        buffer was flushed; the first write after a flush may start inside a shard whose first
        rows are committed (they are carried over).
        """
        images = np.ascontiguousarray(images)
        n = images.shape[0]
        if not n:
            return
        r = self.shard_rows
        if self._buf_shard is not None and start != self._buf_shard * r + len(self._buf):
            raise ValueError(
                f"rows must be written in order: expected row "
                f"{self._buf_shard * r + len(self._buf)}, got {start}"
            )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        if self._compressed:  # Blosc releases the GIL: encode on the pool
            encoded = list(self._pool.map(self._encode, images))
        else:  # a copy of each row: a pool would only add its dispatch
            encoded = [im.tobytes() for im in images]
        pos = start
        while encoded:
            if self._buf_shard is None:
                self._buf_shard = pos // r
                self._buf = self._committed_chunks(pos // r, pos % r) if pos % r else []
                self._buf_has_committed = pos % r > 0
            take = r - len(self._buf)
            self._buf.extend(encoded[:take])
            encoded = encoded[take:]
            pos += take
            if len(self._buf) == r:
                self._write_buffer()

    def flush(self) -> None:
        """Write the partly filled shard of the buffer, if any, and fsync every shard written
        since the last flush (and its folder)."""
        if self._buf_shard is not None:
            self._write_buffer()
        unsynced, self._unsynced = self._unsynced, []
        # each shard and its folder; one rewritten or removed since has nothing to keep
        targets = [t for path in unsynced for t in (path, os.path.dirname(path))]
        fsync_all(targets, missing_ok=True)

    def _write_buffer(self) -> None:
        k, chunks, replace = self._buf_shard, self._buf, self._buf_has_committed
        self._buf_shard, self._buf, self._buf_has_committed = None, [], False
        self._write_shard(k, chunks, replace=replace)

    def _write_shard(self, k: int, chunks: list[bytes | None], *, replace: bool) -> None:
        """Write shard ``k`` from its rows' encoded chunks: when ``replace`` (the shard holds
        committed rows) to a temp file, fsync'd and renamed over the old one; else in place,
        fsync'd by the next ``flush`` (a new shard holds only uncommitted rows, which no index
        names before ``ImageStore.commit`` has flushed them: the disk writes them back in the
        meantime instead of the writer waiting on each)."""
        r = self.shard_rows
        index = np.full((r, 2), _MISSING, np.uint64)
        off = 0
        for j, c in enumerate(chunks):
            if c is not None:
                index[j] = (off, len(c))
                off += len(c)
        raw_index = index.astype("<u8").tobytes()
        tail = raw_index + google_crc32c.value(raw_index).to_bytes(4, "little")
        path = self.shard_path(k)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        self._forget(k)
        target = os.path.join(self.files.root, f".shard.{k}.tmp") if replace else path
        with open(target, "wb") as fh:
            fh.writelines([c for c in chunks if c is not None])
            fh.write(tail)
            if not replace:
                self._unsynced.append(path)
                return
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(target, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def resize(self, rows: int) -> None:
        """As ``ChunkEngine.resize``; shrinking into a shard also drops its rows past ``rows``
        (zarr keeps a boundary shard whole), so growing again never shows them."""
        self._buf_shard, self._buf, self._buf_has_committed = None, [], False
        r = self.shard_rows
        if rows < self.rows and rows % r:
            k = rows // r
            if os.path.exists(self.shard_path(k)):
                self._write_shard(k, self._committed_chunks(k, rows % r), replace=True)
        super().resize(rows)
        for k in list(self._open):
            if k * r >= rows:
                self._forget(k)

    def remove_leftovers(self, rows: int, upto: int | None = None) -> int:
        """As ``ChunkEngine.remove_leftovers``, plus the rows past ``rows`` inside the shard
        that holds row ``rows`` (rewritten without them) and temporary shard files."""
        self._buf_shard, self._buf, self._buf_has_committed = None, [], False
        removed = super().remove_leftovers(rows, upto)
        r = self.shard_rows
        k = rows // r
        if rows % r and (upto is None or upto > rows):
            got = self._acquire([k])
            try:
                sh = got[k]
                stale = sh is not None and bool(np.any(sh.index[rows % r :, 0] != _MISSING))
            finally:
                self._release(got)
            if stale:
                self._write_shard(k, self._committed_chunks(k, rows % r), replace=True)
                removed += 1
        with os.scandir(self.files.root) as entries:  # the store's top folder: a few entries
            # (a rewrite of the partly filled shard killed before its rename)
            for e in entries:
                if e.name.startswith(".shard.") and e.name.endswith(".tmp"):
                    os.unlink(e.path)
        return removed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            while self._open:
                _, sh = self._open.popitem()
                self._retire(sh)


class ZarrEngine(ChunkEngine):
    """zarr-python for every read and write: any store URL, any chunk layout and codec."""

    name = "zarr"

    def _read(self, positions: np.ndarray) -> np.ndarray:
        if not positions.size:
            return np.empty((0, *self.slice_shape), np.uint8)
        uniq, inverse = np.unique(positions, return_inverse=True)
        try:
            return np.asarray(self.array.get_orthogonal_selection((uniq,)))[inverse]
        except (RuntimeError, ValueError, TypeError) as exc:
            # name the sample: retry one row at a time
            for i in uniq:
                try:
                    self.array[int(i)]
                except (RuntimeError, ValueError, TypeError) as one:
                    raise StoreCorruptError(
                        f"{self.files.root}: chunk of sample {int(i)} cannot be decoded "
                        f"({one}). Run `mriscan verify`; re-ingest the raw folder into a new "
                        "--store."
                    ) from one
            raise StoreCorruptError(f"{self.files.root}: images cannot be read ({exc}).") from exc

    def resize(self, rows: int) -> None:
        """As ``ChunkEngine.resize``; shrinking into a chunk (a shard) first clears its rows past
        ``rows`` (zarr keeps a boundary chunk whole), so growing again never shows them."""
        cr = self.chunk_rows
        if rows < self.rows and rows % cr:
            self.array[rows : min(self.rows, (rows // cr + 1) * cr)] = self.fill_value
        super().resize(rows)

    def write(self, start: int, images: np.ndarray) -> None:
        """Write the rows (zarr skips all-fill-value chunks) through a handle that covers them;
        the stored shape grows only at ``resize``, after the commit point."""
        n = images.shape[0]
        if not n:
            return
        covering(self.array, start + n)[start : start + n] = images

    def remove_leftovers(self, rows: int, upto: int | None = None) -> int:
        """As ``ChunkEngine.remove_leftovers``, plus the rows past ``rows`` inside the chunk that
        holds row ``rows`` (written past the shape by a writer that died before its commit):
        set to the fill value, so that growing the array never shows them."""
        removed = super().remove_leftovers(rows, upto)
        cr = self.chunk_rows
        if rows % cr and (upto is None or upto > rows) and rows >= self.rows:
            end = (rows // cr + 1) * cr
            covering(self.array, end)[rows:end] = self.fill_value
        return removed

    def has_chunk(self, position: int) -> bool:
        key = f"{IMAGES}/{self._chunk_key(position // self.chunk_rows)}"
        if not is_sharded_layout(self.array):
            return self.files.exists(key)
        raw = self.files.read(key)  # inside a shard: the inner chunk's index entry
        if raw is None:
            return False
        try:
            index = shard_index(raw, self.chunk_rows, len(raw))
        except ValueError:
            return True  # a damaged shard exists; reading it names the damage
        return bool(index[position % self.chunk_rows, 0] != _MISSING)


def open_engine(array: zarr.Array, files: StoreFiles) -> ChunkEngine:
    """The engine for a store's images array: ``ShardedFiles`` or ``LocalChunkFiles`` for a
    local store in one of this package's layouts, ``ZarrEngine`` for everything else."""
    if not files.url and is_sharded_layout(array):
        return ShardedFiles(array, files)
    if not files.url and is_local_chunk_layout(array):
        return LocalChunkFiles(array, files)
    return ZarrEngine(array, files)
