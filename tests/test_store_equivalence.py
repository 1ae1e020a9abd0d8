"""The fast path equals zarr: stores written by either engine read identically by both.

Covers the case zarr-python and the old fast path disagreed on: zarr v3 does not write a chunk
equal to the fill value, so a store written through zarr (here at a ``memory://`` URL) that holds
an all-zero slice lacks that chunk; copied to a local disk it must still read, and verify, clean.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from _shards import chunk_present, drop_chunk

from mriscan.store import ImageStore, LocalChunkFiles, ZarrEngine, verify_store
from mriscan.store.engines import (
    ShardedFiles,
    create_chunk_per_slice_array,
    create_images_array,
    is_sharded_layout,
)
from mriscan.store.files import StoreFiles
from mriscan.store.image_store import zarr_store

S = 16


def _batch(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random slices, some all-zero (the fill value), some constant, some sparse."""
    imgs = rng.integers(0, 256, (n, S, S), dtype=np.uint8)
    kind = rng.integers(0, 4, n)
    imgs[kind == 0] = 0
    imgs[kind == 1] = rng.integers(1, 256, (int((kind == 1).sum()), 1, 1), dtype=np.uint8)
    sparse = kind == 2
    imgs[sparse] *= rng.random((int(sparse.sum()), S, S)) < 0.02
    return imgs


def _engines_on(location: str):
    """Both engines over the images array of the store at ``location`` (fresh handles)."""
    files = StoreFiles(location)
    array = zarr.open_group(zarr_store(location), mode="r+")["images"]
    engines = [ZarrEngine(array, files)]
    if not files.url:
        local = ShardedFiles if is_sharded_layout(array) else LocalChunkFiles
        engines.append(local(array, files))
    return engines


def _new_array(location: str, layout: str):
    group = zarr.open_group(zarr_store(location), mode="a")
    if layout == "per-slice":
        return create_chunk_per_slice_array(group, S)
    return create_images_array(group, S, shard_rows=8)


def _copy_memory_store_to_disk(url: str, dest: Path) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    for path in fs.find(root):
        target = dest / path[len(root) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(path))


@pytest.mark.parametrize("layout", ["per-slice", "sharded"])
@pytest.mark.parametrize("writer", ["local", "zarr"])
def test_either_engine_writes_what_both_read(tmp_path, writer, layout):
    location = str(tmp_path / "s.zarr")
    array = _new_array(location, layout)
    files = StoreFiles(location)
    local = ShardedFiles if layout == "sharded" else LocalChunkFiles
    eng = local(array, files) if writer == "local" else ZarrEngine(array, files)
    imgs = _batch(np.random.default_rng(3), 24)
    imgs[5] = 0
    eng.write(0, imgs)
    eng.flush()
    eng.resize(len(imgs))
    eng.close()
    order = np.random.default_rng(4).integers(0, len(imgs), 50)
    for reader in _engines_on(location):
        np.testing.assert_array_equal(reader.read(np.arange(len(imgs))), imgs, err_msg=reader.name)
        np.testing.assert_array_equal(reader.read(order), imgs[order], err_msg=reader.name)
    np.testing.assert_array_equal(zarr.open_array(f"{location}/images", mode="r")[:], imgs)


def test_memory_store_with_a_blank_slice_copied_to_disk_reads_and_verifies(tmp_path):
    url = f"memory://equiv-{uuid.uuid4().hex}/s.zarr"
    imgs = _batch(np.random.default_rng(0), 12)
    imgs[[2, 7]] = 0
    imgs[3] = 255
    with ImageStore.create(url, S) as st:
        st.set_class_names(["a", "b"])
        st.append(imgs, np.arange(12) % 2)
        st.commit()
        assert isinstance(st.engine, ZarrEngine)
        assert not st.engine.has_chunk(2)  # zarr skipped the all-zero chunks
    local = tmp_path / "copy.zarr"
    _copy_memory_store_to_disk(url, local)
    assert not chunk_present(local, 2)
    with ImageStore.open(local) as st:
        assert isinstance(st.engine, ShardedFiles)
        np.testing.assert_array_equal(st.read_batch(range(12))[0], imgs)
    assert verify_store(local) == []
    assert verify_store(url) == []
    # verify still sees real damage: a lost chunk of a non-blank slice
    drop_chunk(local, 3)
    problems = verify_store(local)
    assert len(problems) == 1 and "chunk of sample 3 is missing" in problems[0]


def test_local_store_copied_to_a_url_reads_the_same(tmp_path):
    imgs = _batch(np.random.default_rng(1), 10)
    imgs[0] = 0
    local = tmp_path / "s.zarr"
    with ImageStore.create(local, S) as st:
        st.set_class_names(["a"])
        st.append(imgs, np.zeros(10, int))
        st.commit()
    url = f"memory://equiv-{uuid.uuid4().hex}/s.zarr"
    fs, root = fsspec.core.url_to_fs(url)
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())
    with ImageStore.open(url) as st:
        assert isinstance(st.engine, ZarrEngine)
        np.testing.assert_array_equal(st.read_batch(range(10))[0], imgs)
    assert verify_store(url) == []


@pytest.mark.parametrize("layout", ["per-slice", "sharded"])
def test_fast_path_equals_zarr_on_random_batches(tmp_path, layout):
    """Property test (seeded loop): 25 random histories of appends, commits, trims and reads
    give the same pixels through the local engine and through zarr, on the same files."""
    local = ShardedFiles if layout == "sharded" else LocalChunkFiles
    for trial in range(25):
        rng = np.random.default_rng(trial)
        location = str(tmp_path / f"t{trial}.zarr")
        files = StoreFiles(location)
        url = f"memory://prop-{trial}-{uuid.uuid4().hex}/s.zarr"
        writers = [
            local(_new_array(location, layout), files),
            ZarrEngine(_new_array(url, layout), StoreFiles(url)),
        ]
        truth = np.empty((0, S, S), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            if len(truth) and rng.random() < 0.3:  # a dead writer's rows, then the trim
                extra = _batch(rng, int(rng.integers(1, 4)))
                for w in writers:
                    w.write(len(truth), extra)
                    w.flush()
                    w.resize(len(truth))
                    w.remove_leftovers(len(truth))
            new = _batch(rng, int(rng.integers(1, 12)))
            for w in writers:
                w.write(len(truth), new)
                w.flush()
                w.resize(len(truth) + len(new))
            truth = np.concatenate([truth, new])
            idx = rng.integers(0, len(truth), int(rng.integers(1, 40)))
            fresh = _engines_on(location)  # new handles read what the writer left on disk
            for eng in [*writers, *fresh]:
                np.testing.assert_array_equal(
                    eng.read(idx), truth[idx], err_msg=f"trial {trial}, {eng.name}"
                )
        for w in writers:
            w.close()
