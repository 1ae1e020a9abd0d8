"""Chunk engines: one conformance suite that every ``ChunkEngine`` passes, and engine selection.

Modelled on zarr-python's ``zarr.testing.store.StoreTests``: each test runs against every engine
(``ShardedFiles`` on a local sharded store with small shards, ``LocalChunkFiles`` on the older
chunk-per-slice layout, ``ZarrEngine`` on both local layouts and on a ``memory://`` URL). A new
engine joins by adding a case to ``ENGINES``. "The chunk of row i" is its bytes inside its shard
for a sharded array.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from mriscan.errors import StoreCorruptError
from mriscan.store.engines import (
    ChunkEngine,
    LocalChunkFiles,
    ShardedFiles,
    ZarrEngine,
    create_chunk_per_slice_array,
    create_images_array,
    is_local_chunk_layout,
    is_sharded_layout,
    open_engine,
    shard_index,
)
from mriscan.store.files import StoreFiles
from mriscan.store.image_store import zarr_store

S = 8
SHARD = 4  # rows per shard in these tests: every test crosses shard boundaries
ENGINES = [
    "local-shards",
    "local-shards-lz4",
    "local-files",
    "zarr-local-shards",
    "zarr-local-shards-lz4",
    "zarr-local-files",
    "zarr-memory",
]


def make_engine(kind: str, tmp_path) -> ChunkEngine:
    """A fresh, empty images array of side S behind the engine ``kind``."""
    if kind == "zarr-memory":
        location = f"memory://engine-{uuid.uuid4().hex}/s.zarr"
    else:
        location = str(tmp_path / f"{kind}.zarr")
    files = StoreFiles(location)
    group = zarr.open_group(zarr_store(location), mode="a")
    if kind.endswith("files"):
        array = create_chunk_per_slice_array(group, S)
    else:
        array = create_images_array(group, S, shard_rows=SHARD, compress=kind.endswith("lz4"))
    cls = {"local-files": LocalChunkFiles}.get(kind, ZarrEngine)
    if kind.startswith("local-shards"):
        cls = ShardedFiles
    return cls(array, files)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (n, S, S), dtype=np.uint8)


def _chunk_key(engine: ChunkEngine, i: int) -> str:
    """Key of the file holding row ``i`` (its shard, in a sharded array)."""
    return f"images/{engine.array.metadata.encode_chunk_key((i // engine.chunk_rows, 0, 0))}"


def _same_file(engine: ChunkEngine, i: int) -> np.ndarray:
    """Rows (of the first 8) that share row ``i``'s file."""
    r = engine.chunk_rows
    return np.arange(8)[np.arange(8) // r == i // r]


def _edit_chunk(engine: ChunkEngine, i: int, edit) -> None:
    """Replace row ``i``'s encoded chunk ``b`` by ``edit(b)`` (inside its shard, whose index
    then points at the new bytes)."""
    import google_crc32c

    key = _chunk_key(engine, i)
    raw = engine.files.read(key)
    if not is_sharded_layout(engine.array):
        engine.files.write_atomic(key, edit(raw))
        return
    r = engine.chunk_rows
    index = shard_index(raw, r).copy()
    off, nb = (int(x) for x in index[i % r])
    new = edit(raw[off : off + nb])
    data = raw[: -(16 * r + 4)] + new  # the edited chunk appended after the others
    index[i % r] = (len(data) - len(new), len(new))
    body = index.astype("<u8").tobytes()
    engine.files.write_atomic(key, data + body + google_crc32c.value(body).to_bytes(4, "little"))


@pytest.fixture(params=ENGINES)
def engine(request, tmp_path):
    eng = make_engine(request.param, tmp_path)
    yield eng
    eng.close()


class TestChunkEngine:
    def test_write_resize_read_any_order(self, engine):
        imgs = _images(10)
        engine.write(0, imgs[:6])
        engine.write(6, imgs[6:])
        engine.flush()
        engine.resize(10)
        assert engine.rows == 10
        order = np.array([9, 0, 3, 3, 7])
        np.testing.assert_array_equal(engine.read(order), imgs[order])
        assert engine.read(np.array([], np.int64)).shape == (0, S, S)

    def test_empty_write_changes_nothing(self, engine):
        engine.write(0, np.empty((0, S, S), np.uint8))
        assert engine.rows == 0

    def test_all_zero_slice_reads_as_zeros(self, engine):
        imgs = _images(3)
        imgs[1] = 0
        engine.write(0, imgs)
        engine.flush()
        engine.resize(3)
        np.testing.assert_array_equal(engine.read(np.arange(3)), imgs)

    def test_missing_chunk_inside_the_shape_is_the_fill_value(self, engine):
        engine.write(0, _images(8))
        engine.flush()
        engine.resize(8)
        assert engine.has_chunk(2)
        engine.files.delete(_chunk_key(engine, 2))
        assert not engine.has_chunk(2)
        gone = _same_file(engine, 2)
        kept = np.setdiff1d(np.arange(8), gone)
        np.testing.assert_array_equal(engine.read(gone), np.zeros((len(gone), S, S), np.uint8))
        np.testing.assert_array_equal(engine.read(kept), _images(8)[kept])

    @pytest.mark.parametrize("bad", [-1, 5, 50])
    def test_out_of_range_is_an_error(self, engine, bad):
        engine.write(0, _images(5))
        engine.flush()
        engine.resize(5)
        with pytest.raises(StoreCorruptError, match=f"sample {bad} lies outside the images array"):
            engine.read(np.array([0, bad]))

    def test_shrink_then_grow_shows_no_stale_rows(self, engine):
        engine.write(0, _images(6))
        engine.flush()
        engine.resize(6)
        engine.resize(2)
        assert engine.rows == 2
        engine.resize(6)
        np.testing.assert_array_equal(engine.read(np.arange(2, 6)), np.zeros((4, S, S), np.uint8))

    def test_leftovers_past_the_end_are_removed(self, engine):
        engine.write(0, _images(3))
        engine.flush()
        engine.resize(3)
        engine.write(3, _images(4, seed=1))  # a writer that dies before its commit
        engine.flush()
        engine.resize(3)
        stray = _chunk_key(engine, 40 * engine.chunk_rows)  # past any shape the array had
        if not engine.files.url:
            os.makedirs(os.path.dirname(engine.files.path(stray)), exist_ok=True)
        engine.files.write_atomic(stray, engine.files.read(_chunk_key(engine, 0)))
        assert engine.remove_leftovers(3) >= 1
        assert not engine.files.exists(stray)
        keys = [k for k in engine.files.keys("images") if k != "zarr.json"]
        assert sorted(keys) == sorted({_chunk_key(engine, i)[len("images/") :] for i in range(3)})
        engine.resize(7)  # growing again must not resurrect the dead writer's rows
        np.testing.assert_array_equal(engine.read(np.arange(3, 7)), np.zeros((4, S, S), np.uint8))
        np.testing.assert_array_equal(engine.read(np.arange(3)), _images(3))

    def test_garbage_chunk_names_the_sample(self, engine):
        engine.write(0, _images(4))
        engine.flush()
        engine.resize(4)
        _edit_chunk(engine, 1, lambda b: b"\x00not blosc at all" * 4)
        with pytest.raises(StoreCorruptError, match="chunk of sample 1 cannot be decoded"):
            engine.read(np.array([0, 1, 2]))
        np.testing.assert_array_equal(engine.read(np.array([0, 2])), _images(4)[[0, 2]])

    def test_truncated_chunk_never_reads_as_the_written_slice(self, engine):
        engine.write(0, _images(4))
        engine.flush()
        engine.resize(4)
        _edit_chunk(engine, 1, lambda b: b[:40])
        if isinstance(engine, LocalChunkFiles | ShardedFiles):  # check the Blosc header
            with pytest.raises(StoreCorruptError, match="chunk of sample 1 cannot be decoded"):
                engine.read(np.array([1]))
        else:
            # numcodecs trusts the header's sizes (zarr-developers/numcodecs#854): zarr decodes
            # a cut Blosc chunk into other pixels, which verify's checksum reports; a cut raw
            # chunk cannot be reshaped
            try:
                got = engine.read(np.array([1]))[0]
            except StoreCorruptError as exc:
                assert "chunk of sample 1 cannot be decoded" in str(exc)
            else:
                assert not np.array_equal(got, _images(4)[1])


def test_open_engine_picks_the_fast_path_only_for_its_own_local_layout(tmp_path):
    local = zarr.open_group(zarr_store(tmp_path / "a.zarr"), mode="a")
    arr = create_chunk_per_slice_array(local, S)
    assert is_local_chunk_layout(arr) and not is_sharded_layout(arr)
    assert isinstance(open_engine(arr, StoreFiles(tmp_path / "a.zarr")), LocalChunkFiles)
    sharded = create_images_array(zarr.open_group(zarr_store(tmp_path / "b.zarr"), mode="a"), S)
    assert is_sharded_layout(sharded) and not is_local_chunk_layout(sharded)
    assert isinstance(open_engine(sharded, StoreFiles(tmp_path / "b.zarr")), ShardedFiles)

    url = f"memory://engine-{uuid.uuid4().hex}/s.zarr"
    mem = create_images_array(zarr.open_group(zarr_store(url), mode="a"), S)
    assert isinstance(open_engine(mem, StoreFiles(url)), ZarrEngine)
    with pytest.raises(ValueError, match="use ZarrEngine"):
        LocalChunkFiles(mem, StoreFiles(url))

    # same codecs but another layout or Blosc setting: zarr reads it, the fast path must not
    others = {
        "chunks": {"chunks": (2, S, S), "compressors": BloscCodec(cname="zstd", clevel=3)},
        "lz4": {"chunks": (1, S, S), "compressors": BloscCodec(cname="lz4", clevel=3)},
        "shuffle": {
            "chunks": (1, S, S),
            "compressors": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
        },
        "no-compressor": {"chunks": (1, S, S), "compressors": None},
    }
    for name, kw in others.items():
        path = tmp_path / f"{name}.zarr"
        g = zarr.open_group(zarr_store(path), mode="a")
        a = g.create_array(
            "images",
            shape=(0, S, S),
            dtype="uint8",
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "."},
            **kw,
        )
        assert not is_local_chunk_layout(a) and not is_sharded_layout(a), name
        assert isinstance(open_engine(a, StoreFiles(path)), ZarrEngine), name
    # sharded, but not a layout ShardedFiles reads: inner chunks of 2 slices, gzip, the index
    # at the start of the shard
    from zarr.codecs import BytesCodec, GzipCodec, ShardingCodec

    sharded_others = {
        "inner chunks of 2": {"chunks": (2, S, S), "shards": (4, S, S)},
        "gzip": {"chunks": (1, S, S), "shards": (4, S, S), "compressors": GzipCodec()},
        "index at start": {
            "chunks": (4, S, S),
            "serializer": ShardingCodec(
                chunk_shape=(1, S, S),
                codecs=[BytesCodec(), BloscCodec(cname="lz4")],
                index_location="start",
            ),
            "compressors": None,
        },
    }
    for name, kw in sharded_others.items():
        path = tmp_path / f"sharded-{name}.zarr"
        a = zarr.open_group(zarr_store(path), mode="a").create_array(
            "images", shape=(0, S, S), dtype="uint8", fill_value=0, **kw
        )
        assert not is_sharded_layout(a), name
        assert isinstance(open_engine(a, StoreFiles(path)), ZarrEngine), name
