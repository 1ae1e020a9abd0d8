"""The image store: a Zarr v3 group of preprocessed slices, per-sample record columns and a small
JSON manifest (the commit point).

Layout of ``images.zarr/`` (index format 4)::

    zarr.json            group metadata
    images/              (N, S, S) uint8, Zarr v3 shards of 256 slices (c/<k>/0/0), one slice
                         per inner chunk, raw (or Blosc-LZ4); older stores: c.<i>.0.0 files
    labels/              (N,) uint8
    signatures/          (N, 16, 16) uint8 perceptual thumbnails (duplicate grouping)
    index/               append-only record columns (``columns``): label.u1, flags.u1, ...,
                         source.bin/.off, ..., proj.f4, group.<g>.i8, merges.<g>.i8,
                         patches.jsonl, duplicates.<k>.json
    index.json           the manifest: format, PreprocessConfig, classes, key_id, sources, the
                         committed count of rows / patch bytes / merges
    write.lock           held (flock) by the one writer; readers never touch it
    write.pending        how far an uncommitted writer may have written image rows

Format 1/2 stores (every record inline in ``index.json``) are read as they are and written as
format 3 at their next commit; ``mriscan migrate`` (``migrate_store``) converts one at once.

Who owns what:

- ``index``: the schema (``SampleRecord``, ``StoreIndex``, ``Manifest``, ``FORMAT_VERSION``),
  the (de)serialisation of ``index.json`` and ``pixel_checksum``. Add a record field here and in
  ``columns``.
- ``columns``: the append-only column files below ``index/``; ``table``: the committed records
  column by column (``RecordTable``) and as lazily built ``SampleRecord`` s (``RecordView``).
- ``files``: the store's own byte files (atomic write with fsync, read, list, delete, clear) and
  the one-writer ``WriteLock``; local paths and fsspec URLs alike.
- ``engines``: the ``ChunkEngine`` interface and its engines, ``ShardedFiles`` (the local
  layout of new stores: shards read through their index and written whole), ``LocalChunkFiles``
  (older stores: one chunk file per slice) and ``ZarrEngine`` (zarr-python, any URL or layout);
  ``open_engine`` picks one per store at open. Try another chunk layout here.
- ``image_store``: ``ImageStore`` = the transaction (pending appends, one atomic commit, trimming
  a dead writer's leftovers) over an engine and the index. It stores duplicate groups but does not
  compute them: ``mriscan.ingest`` does (with ``mriscan.duplicates``) and passes them to
  ``commit(groups=...)``.
- ``verify``: ``verify_store``, every committed sample checked against the index.

Nothing here imports Keras or TensorFlow.
"""

from __future__ import annotations

from mriscan.errors import StoreCorruptError, StoreError, StoreLockedError, StoreNotFoundError
from mriscan.store.engines import (
    ChunkEngine,
    LocalChunkFiles,
    ShardedFiles,
    ZarrEngine,
    open_engine,
)
from mriscan.store.files import StoreFiles, WriteLock
from mriscan.store.image_store import DEFAULT_STORE, ImageStore, migrate_store
from mriscan.store.index import (
    FORMAT_VERSION,
    INDEX_KEY,
    SampleRecord,
    StoreIndex,
    pixel_checksum,
)
from mriscan.store.verify import verify_store

__all__ = [
    "DEFAULT_STORE",
    "FORMAT_VERSION",
    "INDEX_KEY",
    "ChunkEngine",
    "ImageStore",
    "LocalChunkFiles",
    "SampleRecord",
    "ShardedFiles",
    "StoreCorruptError",
    "StoreError",
    "StoreFiles",
    "StoreIndex",
    "StoreLockedError",
    "StoreNotFoundError",
    "WriteLock",
    "ZarrEngine",
    "migrate_store",
    "open_engine",
    "pixel_checksum",
    "verify_store",
]
