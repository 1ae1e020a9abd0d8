"""Chunk engines: one conformance suite that every ``ChunkEngine`` passes, and engine selection.

Modelled on zarr-python's ``zarr.testing.store.StoreTests``: each test runs against every engine
(``LocalChunkFiles`` on a local store, ``ZarrEngine`` on the same local layout and on a
``memory://`` URL). A new engine joins by adding a case to ``ENGINES``.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from mriscan.errors import StoreCorruptError
from mriscan.store.engines import (
    ChunkEngine,
    LocalChunkFiles,
    ZarrEngine,
    create_images_array,
    is_local_chunk_layout,
    open_engine,
)
from mriscan.store.files import StoreFiles
from mriscan.store.image_store import zarr_store

S = 8
ENGINES = ["local-files", "zarr-local", "zarr-memory"]


def make_engine(kind: str, tmp_path) -> ChunkEngine:
    """A fresh, empty images array of side S behind the engine ``kind``."""
    if kind == "zarr-memory":
        location = f"memory://engine-{uuid.uuid4().hex}/s.zarr"
    else:
        location = str(tmp_path / f"{kind}.zarr")
    files = StoreFiles(location)
    group = zarr.open_group(zarr_store(location), mode="a")
    array = create_images_array(group, S)
    cls = LocalChunkFiles if kind == "local-files" else ZarrEngine
    return cls(array, files)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (n, S, S), dtype=np.uint8)


def _chunk_key(engine: ChunkEngine, i: int) -> str:
    return f"images/{engine.array.metadata.encode_chunk_key((i, 0, 0))}"


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
        engine.resize(3)
        np.testing.assert_array_equal(engine.read(np.arange(3)), imgs)

    def test_missing_chunk_inside_the_shape_is_the_fill_value(self, engine):
        engine.write(0, _images(4))
        engine.resize(4)
        assert engine.has_chunk(2)
        engine.files.delete(_chunk_key(engine, 2))
        assert not engine.has_chunk(2)
        np.testing.assert_array_equal(engine.read(np.array([2])), np.zeros((1, S, S), np.uint8))
        np.testing.assert_array_equal(engine.read(np.array([3])), _images(4)[[3]])

    @pytest.mark.parametrize("bad", [-1, 5, 50])
    def test_out_of_range_is_an_error(self, engine, bad):
        engine.write(0, _images(5))
        engine.resize(5)
        with pytest.raises(StoreCorruptError, match=f"sample {bad} lies outside the images array"):
            engine.read(np.array([0, bad]))

    def test_shrink_then_grow_shows_no_stale_rows(self, engine):
        engine.write(0, _images(6))
        engine.resize(6)
        engine.resize(2)
        assert engine.rows == 2
        engine.resize(6)
        np.testing.assert_array_equal(engine.read(np.arange(2, 6)), np.zeros((4, S, S), np.uint8))

    def test_leftovers_past_the_end_are_removed(self, engine):
        engine.write(0, _images(3))
        engine.resize(3)
        engine.write(3, _images(4, seed=1))  # a writer that dies before its commit
        engine.resize(3)
        stray = _chunk_key(engine, 40)  # a chunk past any shape the array had
        engine.files.write_atomic(stray, engine.files.read(_chunk_key(engine, 0)))
        assert engine.remove_leftovers(3) >= 1
        assert not engine.files.exists(stray)
        keys = [k for k in engine.files.keys("images") if k != "zarr.json"]
        assert sorted(keys) == sorted(_chunk_key(engine, i)[len("images/") :] for i in range(3))
        engine.resize(7)  # growing again must not resurrect the dead writer's rows
        np.testing.assert_array_equal(engine.read(np.arange(3, 7)), np.zeros((4, S, S), np.uint8))
        np.testing.assert_array_equal(engine.read(np.arange(3)), _images(3))

    def test_garbage_chunk_names_the_sample(self, engine):
        engine.write(0, _images(4))
        engine.resize(4)
        engine.files.write_atomic(_chunk_key(engine, 1), b"\x00not blosc at all" * 4)
        with pytest.raises(StoreCorruptError, match="chunk of sample 1 cannot be decoded"):
            engine.read(np.array([0, 1, 2]))
        np.testing.assert_array_equal(engine.read(np.array([0, 2])), _images(4)[[0, 2]])

    def test_truncated_chunk_never_reads_as_the_written_slice(self, engine):
        engine.write(0, _images(4))
        engine.resize(4)
        key = _chunk_key(engine, 1)
        engine.files.write_atomic(key, engine.files.read(key)[:40])
        if isinstance(engine, LocalChunkFiles):  # checks the Blosc header against the file
            with pytest.raises(StoreCorruptError, match="chunk of sample 1 cannot be decoded"):
                engine.read(np.array([1]))
        else:
            # numcodecs trusts the header's sizes (zarr-developers/numcodecs#854): zarr decodes
            # the cut chunk into other pixels, which verify's checksum reports.
            assert not np.array_equal(engine.read(np.array([1]))[0], _images(4)[1])


def test_open_engine_picks_the_fast_path_only_for_its_own_local_layout(tmp_path):
    local = zarr.open_group(zarr_store(tmp_path / "a.zarr"), mode="a")
    arr = create_images_array(local, S)
    assert is_local_chunk_layout(arr)
    assert isinstance(open_engine(arr, StoreFiles(tmp_path / "a.zarr")), LocalChunkFiles)

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
        assert not is_local_chunk_layout(a), name
        assert isinstance(open_engine(a, StoreFiles(path)), ZarrEngine), name
