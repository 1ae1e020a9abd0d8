"""Chunk engines: how the rows of the ``images`` array, shape (N, S, S) uint8, reach the bytes.

``ChunkEngine`` is the small interface ``ImageStore`` talks to (read rows by position, write rows,
resize, remove leftovers past the committed end). Two engines implement it:

- ``LocalChunkFiles``: the fast path for a local store in the layout ``create_images_array``
  writes (one Blosc-Zstd chunk file per slice, keys ``c.<i>.0.0``): it reads and writes those
  files directly, because zarr-python's per-chunk machinery costs ~1 ms per slice
  (``bench/RESULTS.md``), more than decoding the slice.
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
from concurrent.futures import ThreadPoolExecutor

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

from mriscan.errors import StoreCorruptError
from mriscan.store.files import StoreFiles

__all__ = [
    "ChunkEngine",
    "LocalChunkFiles",
    "ZarrEngine",
    "blosc_codec",
    "create_images_array",
    "is_local_chunk_layout",
    "open_engine",
]

IMAGES = "images"
CLEVEL = 3
# Blosc settings of every chunk this package writes (zarr's codec and numcodecs' encoder agree).
_BLOSC_CONFIG = {"cname": "zstd", "clevel": CLEVEL, "shuffle": "noshuffle", "typesize": 1}
_BLOSC = numcodecs.Blosc(cname="zstd", clevel=CLEVEL, shuffle=numcodecs.Blosc.NOSHUFFLE)


def blosc_codec() -> BloscCodec:
    """The zarr codec of every array a new store holds: Blosc-Zstd level 3, no shuffle."""
    return BloscCodec(cname="zstd", clevel=CLEVEL, shuffle="noshuffle")


def create_images_array(group: zarr.Group, size: int) -> zarr.Array:
    """Create the empty ``images`` array, shape (0, size, size) uint8, in ``group``.

    One slice per chunk, Blosc-Zstd, fill value 0, chunk keys ``c.<i>.0.0`` ("." keeps all chunk
    files in one folder: no directory per slice to create). ``LocalChunkFiles`` serves this layout.
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

    @property
    def rows(self) -> int:
        """Rows in the array as this handle last saw its metadata."""
        return int(self.array.shape[0])

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
                f"({self.rows} rows). Run `mriscan verify` and re-ingest."
            )
        return self._read(pos)

    @abc.abstractmethod
    def _read(self, positions: np.ndarray) -> np.ndarray:
        """``read`` after the bounds check."""

    @abc.abstractmethod
    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``images`` (n, S, S) uint8 as rows ``start .. start + n - 1``."""

    def resize(self, rows: int) -> None:
        """Make the array ``rows`` long (zarr deletes chunks inside the old shape past the new)."""
        if self.rows != rows:
            self.array.resize((rows, *self.slice_shape))

    @abc.abstractmethod
    def has_chunk(self, position: int) -> bool:
        """Whether row ``position``'s chunk exists (a missing one reads as the fill value)."""

    def remove_leftovers(self, rows: int) -> int:
        """Delete chunks of rows >= ``rows`` that lie past the array's end; return how many.

        A writer that dies after writing chunks but before growing the array leaves such chunks;
        zarr cannot see them, but a later ``resize`` would make them visible again.
        """
        removed = 0
        chunk_rows = int(self.array.metadata.chunk_grid.chunk_shape[0])
        for key in list(self.files.keys(IMAGES)):
            coords = self._chunk_coords(key)
            if coords is not None and coords[0] * chunk_rows >= rows:
                self.files.delete(f"{IMAGES}/{key}")
                removed += 1
        return removed

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
    """One Blosc-Zstd chunk file per slice at ``images/c.<i>.0.0``, read and written directly.

    Only valid for arrays where ``is_local_chunk_layout`` holds, on a local filesystem.
    Chunk files are written without temp file and rename: a row being written lies past the
    committed end, so no reader looks at it until the commit that follows a complete write.
    """

    name = "local chunk files"

    def __init__(self, array: zarr.Array, files: StoreFiles) -> None:
        if files.url or not is_local_chunk_layout(array):
            raise ValueError(
                "LocalChunkFiles needs a local store whose images array has the layout "
                "create_images_array writes; use ZarrEngine for anything else."
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
        try:
            # Blosc trusts the sizes in its 16-byte header: a truncated file would decode
            # bytes past its end. Check them first (header layout: c-blosc README_HEADER.rst).
            if len(raw) < 16:
                raise ValueError(f"{len(raw)} bytes, shorter than a Blosc header")
            nbytes, _, cbytes = np.frombuffer(raw[4:16], "<u4")
            if cbytes != len(raw) or nbytes != s0 * s1:
                raise ValueError(
                    f"Blosc header says {cbytes} compressed / {nbytes} raw bytes; the file holds "
                    f"{len(raw)} and a slice needs {s0 * s1}"
                )
            arr = np.frombuffer(numcodecs.blosc.decompress(raw), dtype=np.uint8)
        except (RuntimeError, ValueError) as exc:
            raise StoreCorruptError(
                f"{self.files.root}: chunk of sample {i} cannot be decoded "
                f"({exc}). Run `mriscan verify` and re-ingest."
            ) from exc
        if arr.size != s0 * s1:
            raise StoreCorruptError(
                f"{self.files.root}: chunk of sample {i} holds {arr.size} bytes, "
                f"expected {s0 * s1}. Run `mriscan verify` and re-ingest."
            )
        return arr.reshape(s0, s1)

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
                        f"({one}). Run `mriscan verify` and re-ingest."
                    ) from one
            raise StoreCorruptError(f"{self.files.root}: images cannot be read ({exc}).") from exc

    def write(self, start: int, images: np.ndarray) -> None:
        """Grow the array if needed, then write the rows (zarr skips all-fill-value chunks)."""
        n = images.shape[0]
        if not n:
            return
        if start + n > self.rows:
            self.resize(start + n)
        self.array[start : start + n] = images

    def has_chunk(self, position: int) -> bool:
        chunk_rows = int(self.array.metadata.chunk_grid.chunk_shape[0])
        coords = (position // chunk_rows,) + (0,) * (len(self.array.shape) - 1)
        return self.files.exists(f"{IMAGES}/{self.array.metadata.encode_chunk_key(coords)}")


def open_engine(array: zarr.Array, files: StoreFiles) -> ChunkEngine:
    """The engine for a store's images array: ``LocalChunkFiles`` for a local store in this
    package's layout, ``ZarrEngine`` for everything else."""
    if not files.url and is_local_chunk_layout(array):
        return LocalChunkFiles(array, files)
    return ZarrEngine(array, files)
