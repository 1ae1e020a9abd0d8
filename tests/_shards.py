"""Test helpers that reach one slice inside a store's images, whatever its chunk layout.

A sharded store (the default) keeps 256 slices per shard file; damaging "the chunk of sample i"
means its bytes inside the shard (located through the shard index, ``shard_index``), not the
whole file.
"""

from __future__ import annotations

import json
from pathlib import Path

import google_crc32c
import numpy as np

from mriscan.store.engines import shard_index


def _layout(store: Path) -> tuple[int, bool]:
    """(rows per chunk file, sharded?) of ``store``'s images array."""
    meta = json.loads((Path(store) / "images" / "zarr.json").read_text())
    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    return rows, meta["codecs"][0]["name"] == "sharding_indexed"


def chunk_file(store: Path, i: int) -> Path:
    """The file holding sample ``i``'s chunk."""
    rows, sharded = _layout(store)
    if sharded:
        return Path(store) / "images" / "c" / str(i // rows) / "0" / "0"
    return Path(store) / "images" / f"c.{i}.0.0"


def chunk_span(store: Path, i: int) -> tuple[Path, int, int]:
    """(file, offset, length) of sample ``i``'s encoded chunk; length -1 when absent."""
    rows, sharded = _layout(store)
    path = chunk_file(store, i)
    if not sharded:
        return path, 0, path.stat().st_size if path.exists() else -1
    if not path.exists():
        return path, 0, -1
    raw = path.read_bytes()
    off, nb = shard_index(raw, rows)[i % rows].tolist()
    return path, off, -1 if off == 2**64 - 1 else nb


def chunk_present(store: Path, i: int) -> bool:
    """Whether sample ``i``'s chunk is stored (an absent one reads as the fill value)."""
    return chunk_span(store, i)[2] >= 0


def write_chunk_bytes(store: Path, i: int, data: bytes) -> None:
    """Overwrite the start of sample ``i``'s chunk with ``data`` (at most its length)."""
    path, off, nb = chunk_span(store, i)
    assert nb >= len(data), "the chunk is shorter than the bytes to write"
    raw = bytearray(path.read_bytes())
    raw[off : off + len(data)] = data
    path.write_bytes(bytes(raw))


def drop_chunk(store: Path, i: int) -> None:
    """Remove sample ``i``'s chunk (its file, or its entry in the shard index)."""
    rows, sharded = _layout(store)
    path = chunk_file(store, i)
    if not sharded:
        path.unlink()
        return
    raw = bytearray(path.read_bytes())
    nb = 16 * rows + 4
    index = shard_index(bytes(raw), rows).copy()
    index[i % rows] = 2**64 - 1
    body = index.astype("<u8").tobytes()
    raw[-nb:] = body + google_crc32c.value(body).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def truncate_chunk(store: Path, i: int, keep: int) -> None:
    """Cut sample ``i``'s chunk to its first ``keep`` bytes (the shard index then says so)."""
    rows, sharded = _layout(store)
    path = chunk_file(store, i)
    if not sharded:
        path.write_bytes(path.read_bytes()[:keep])
        return
    raw = bytearray(path.read_bytes())
    nb = 16 * rows + 4
    index = shard_index(bytes(raw), rows).copy()
    index[i % rows, 1] = np.uint64(keep)
    body = index.astype("<u8").tobytes()
    raw[-nb:] = body + google_crc32c.value(body).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
