"""The images layout of a store: standard Zarr v3 shards that zarr-python and TensorStore read,
older chunk-per-slice stores read and converted by ``mriscan migrate``, and a writer's open that
removes a dead writer's leftovers without listing the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from _shards import chunk_file, chunk_span
from click.testing import CliRunner

from mriscan.cli import main
from mriscan.store import FORMAT_VERSION, ImageStore, verify_store
from mriscan.store.engines import (
    SHARD_ROWS,
    LocalChunkFiles,
    ShardedFiles,
    create_chunk_per_slice_array,
)
from mriscan.store.files import PENDING_KEY, StoreFiles

S = 16


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S), dtype=np.uint8)


def _store(path: Path, batches: list[np.ndarray], compress: bool = False) -> np.ndarray:
    """A store committed in one commit per batch (so partly filled shards get rewritten)."""
    with ImageStore.create(path, S, compress=compress) as st:
        st.set_class_names(["a", "b"])
        for b in batches:
            st.append(b, np.zeros(len(b), int))
            st.commit()
    return np.concatenate(batches)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("compress", [False, True])
def test_new_stores_are_sharded_and_zarr_python_reads_them(path, compress):
    imgs = _store(path, [_images(100), _images(200, 1), _images(3, 2)], compress)
    meta = json.loads((path / "images" / "zarr.json").read_text())
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [1, S, S]
    inner = [c["name"] for c in codec["configuration"]["codecs"]]
    assert inner == (["bytes", "blosc"] if compress else ["bytes"])
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [SHARD_ROWS, S, S]
    assert sorted(p.relative_to(path / "images").as_posix() for p in path.glob("images/c/*/0/0"))
    assert [chunk_file(path, i).exists() for i in (0, 255, 256, 302)] == [True] * 4
    assert not (path / "images" / "c" / "2").exists()
    arr = zarr.open_array(str(path / "images"), mode="r")
    assert arr.shape == (303, S, S)
    np.testing.assert_array_equal(arr[:], imgs)
    with ImageStore.open(path) as st:
        assert isinstance(st.engine, ShardedFiles)
        np.testing.assert_array_equal(st.read_batch(np.arange(303)[::-1])[0], imgs[::-1])
    assert verify_store(path) == []


@pytest.mark.parametrize("compress", [False, True])
def test_tensorstore_reads_the_store(path, compress):
    ts = pytest.importorskip("tensorstore")
    imgs = _store(path, [_images(40), _images(250, 1)], compress)
    arr = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "images")}}
    ).result()
    assert tuple(arr.shape) == (290, S, S)
    np.testing.assert_array_equal(arr.read().result(), imgs)
    idx = np.array([289, 0, 255, 256, 17])
    np.testing.assert_array_equal(arr[idx].read().result(), imgs[idx])


def test_committed_slices_survive_a_rewrite_killed_before_its_rename(path):
    imgs = _store(path, [_images(10)])
    # the rewrite of shard 0 (committed rows 0..9 + new ones) died after writing its temp file
    (path / ".shard.0.tmp").write_bytes(b"half a shard")
    with ImageStore.open(path) as st:
        np.testing.assert_array_equal(st.read_batch(range(10))[0], imgs)
    with ImageStore.open(path, mode="a") as st:
        assert not (path / ".shard.0.tmp").exists()
        st.append(_images(5, 3), np.ones(5, int))
        st.commit()
    with ImageStore.open(path) as st:
        np.testing.assert_array_equal(st.read_batch(range(15))[0][:10], imgs)
    assert verify_store(path) == []


def test_a_reader_keeps_reading_the_shard_it_opened_while_a_writer_rewrites_it(path):
    imgs = _store(path, [_images(10)])
    reader = ImageStore.open(path)
    np.testing.assert_array_equal(reader.read_batch([3])[0][0], imgs[3])  # shard 0 now open
    with ImageStore.open(path, mode="a") as st:
        st.append(_images(20, 4), np.ones(20, int))
        st.commit()  # shard 0 replaced by rename
    np.testing.assert_array_equal(reader.read_batch(range(10))[0], imgs)
    assert len(reader) == 10
    reader.close()


def _old_layout_store(path: Path, imgs: np.ndarray) -> None:
    """A store whose images are one Blosc-Zstd file per slice, as mriscan wrote before shards,
    and whose index is format 3."""
    with ImageStore.create(path, S) as st:
        st.set_class_names(["a", "b"])
        st.commit()
    shutil.rmtree(path / "images")
    create_chunk_per_slice_array(zarr.open_group(str(path), mode="r+"), S)
    with ImageStore.open(path, mode="a") as st:
        assert isinstance(st.engine, LocalChunkFiles)
        st.append(imgs, np.arange(len(imgs)) % 2)
        st.commit()
    index = json.loads((path / "index.json").read_text())
    index["format_version"] = 3
    (path / "index.json").write_text(json.dumps(index))


def test_old_chunk_per_slice_store_is_read_and_migrated(path):
    imgs = _images(300, 5)
    _old_layout_store(path, imgs)
    with ImageStore.open(path) as st:
        assert isinstance(st.engine, LocalChunkFiles) and st.index.format_version == 3
        np.testing.assert_array_equal(st.read_batch(range(300))[0], imgs)
    r = CliRunner().invoke(main, ["migrate", "--store", str(path)])
    assert r.exit_code == 0, r.output
    assert f"index format 3 -> {FORMAT_VERSION}" in r.output and "into shards" in r.output
    assert not list((path / "images").glob("c.*.0.0")) and not (path / ".migrate.zarr").exists()
    with ImageStore.open(path) as st:
        assert isinstance(st.engine, ShardedFiles) and st.index.format_version == FORMAT_VERSION
        np.testing.assert_array_equal(st.read_batch(range(300))[0], imgs)
        assert st.labels.tolist() == (np.arange(300) % 2).tolist()
    np.testing.assert_array_equal(zarr.open_array(str(path / "images"), mode="r")[:], imgs)
    assert verify_store(path) == []
    r = CliRunner().invoke(main, ["migrate", "--store", str(path)])
    assert r.exit_code == 0 and "nothing to do" in r.output


@pytest.mark.parametrize("dies", ["before the switch", "after the switch"])
def test_a_killed_migration_leaves_a_readable_store_and_reruns(path, monkeypatch, dies):
    imgs = _images(40, 6)
    _old_layout_store(path, imgs)

    class KilledError(Exception):
        pass

    if dies == "before the switch":  # shards written, images/zarr.json not yet replaced
        real = StoreFiles.write_atomic

        def write_atomic(self, key, data):
            if key == "images/zarr.json":
                raise KilledError
            real(self, key, data)

        monkeypatch.setattr(StoreFiles, "write_atomic", write_atomic)
    else:  # switched to shards, old chunk files not yet deleted

        def remove(self):
            raise KilledError

        monkeypatch.setattr(ImageStore, "_remove_per_slice_chunks", remove)
    with pytest.raises(KilledError):
        CliRunner().invoke(main, ["migrate", "--store", str(path)], catch_exceptions=False)
    monkeypatch.undo()
    with ImageStore.open(path) as st:
        np.testing.assert_array_equal(st.read_batch(range(40))[0], imgs)
    assert verify_store(path) == []
    assert CliRunner().invoke(main, ["migrate", "--store", str(path)]).exit_code == 0
    assert not list((path / "images").glob("c.*.0.0"))
    with ImageStore.open(path) as st:
        assert isinstance(st.engine, ShardedFiles)
        np.testing.assert_array_equal(st.read_batch(range(40))[0], imgs)
    assert verify_store(path) == []


def test_writer_open_removes_a_dead_writers_leftovers_without_listing(path, monkeypatch):
    imgs = _store(path, [_images(100)])
    dead = ImageStore.open(path, mode="a")
    dead.append(_images(700, 7), np.ones(700, int))  # shards 0 (rewritten), 1, 2 are written
    dead._engine.flush()  # ... and the partial shard 3: then the writer dies
    dead._lock.release()
    assert (path / PENDING_KEY).read_text() == "100 1024\n"  # the end of shard 3
    assert chunk_file(path, 799).exists() and chunk_span(path, 150)[2] > 0

    listed = []
    real_keys = StoreFiles.keys

    def keys(self, prefix):
        listed.append(prefix)
        return real_keys(self, prefix)

    monkeypatch.setattr(StoreFiles, "keys", keys)
    with ImageStore.open(path, mode="a") as st:
        assert "images" not in listed  # O(uncommitted): no listing of the chunk files
        assert not (path / PENDING_KEY).exists()
        assert [chunk_file(path, i).exists() for i in (0, 256, 512, 768)] == [1, 0, 0, 0]
        assert chunk_span(path, 99)[2] > 0 and chunk_span(path, 100)[2] == -1
        st.append(_images(3, 8), np.zeros(3, int))
        st.commit()
    with ImageStore.open(path) as st:
        assert len(st) == 103
        np.testing.assert_array_equal(st.read_batch(range(100))[0], imgs)
        np.testing.assert_array_equal(st.read_batch([100, 101, 102])[0], _images(3, 8))
    assert verify_store(path) == []


def test_a_format_3_store_is_listed_once_for_leftovers(path, monkeypatch):
    """A store last written by a writer that kept no ``write.pending``: the next writer lists
    the chunk files once (it cannot know how far the dead writer got)."""
    imgs = _images(20, 9)
    _old_layout_store(path, imgs)
    for i in (20, 35):  # a dead old writer's chunk files, with a gap
        shutil.copy(path / "images" / "c.0.0.0", path / "images" / f"c.{i}.0.0")
    listed = []
    real_keys = StoreFiles.keys
    monkeypatch.setattr(
        StoreFiles, "keys", lambda self, prefix: listed.append(prefix) or real_keys(self, prefix)
    )
    with ImageStore.open(path, mode="a") as st:
        assert "images" in listed
        assert not (path / "images" / "c.35.0.0").exists()
        st.commit()
    assert json.loads((path / "index.json").read_text())["format_version"] == FORMAT_VERSION
    assert verify_store(path) == []


def test_a_writer_notes_pending_rows_once_per_shard_and_fsyncs_new_shards_at_commit(
    path, monkeypatch
):
    """Appending batch after batch rewrites ``write.pending`` once per shard (each in-place
    rewrite is a flush on ext4), and a shard that holds only new rows is fsync'd by the commit,
    not as it is written; both before the index names the rows."""
    import os

    notes, synced, order = [], [], []
    real_write, real_fsync = StoreFiles.write, os.fsync

    def write(self, key, data):
        if key == PENDING_KEY:
            notes.append(data)
        return real_write(self, key, data)

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    imgs = _images(600, 3)
    with ImageStore.create(path, 16) as st:
        st.set_class_names(["x"])
        monkeypatch.setattr(StoreFiles, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)
        for s in range(0, 600, 32):  # 19 batches over shards 0, 1, 2
            st.append(imgs[s : s + 32], np.zeros(len(imgs[s : s + 32]), int))
        order.append(len(synced))  # shards 0 and 1 are complete, and written
        assert chunk_file(path, 0).exists() and chunk_file(path, 256).exists()
        st.commit()
    assert [n.decode() for n in notes] == ["0 256\n", "0 512\n", "0 768\n"]
    shards = [p for p in synced if "/images/c/" in p and os.path.isfile(p)]
    assert sorted(shards) == sorted(str(chunk_file(path, i)) for i in (0, 256, 512))
    index_sync = next(i for i, p in enumerate(synced) if ".index.json." in p)
    assert all(synced.index(p) < index_sync for p in shards)  # slices first, then the index
    assert order == [0]
    assert not (path / PENDING_KEY).exists()
    with ImageStore.open(path) as st:
        np.testing.assert_array_equal(st.read_batch(range(600))[0], imgs)
    assert verify_store(path) == []


def _outside_views(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes that zarr-python sees, and TensorStore's images shape when it is installed."""
    group = zarr.open_group(str(path), mode="r")
    seen = {name: group[name].shape for name in ("images", "labels", "signatures")}
    try:
        import tensorstore as ts
    except ImportError:
        return seen
    for name in ("images", "labels", "signatures"):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}}
        seen[f"ts {name}"] = tuple(ts.open(spec).result().shape)
    return seen


class _KilledError(Exception):
    pass


def test_outside_readers_never_see_rows_of_a_commit_killed_before_its_commit_point(
    path, monkeypatch
):
    """Everything but index.json written (shards flushed, columns appended): zarr-python and
    TensorStore must still see the 200 committed rows, not the 100 uncommitted ones."""
    imgs = _store(path, [_images(200)])
    real = StoreFiles.write_atomic

    def write_atomic(self, key, data):
        if key == "index.json":
            raise _KilledError
        real(self, key, data)

    st = ImageStore.open(path, mode="a")
    st.append(_images(100, 1), np.ones(100, int))  # rewrites shard 0, writes shard 1
    monkeypatch.setattr(StoreFiles, "write_atomic", write_atomic)
    with pytest.raises(_KilledError):
        st.commit()
    monkeypatch.undo()
    st._lock.release()  # the writer dies holding nothing else
    seen = _outside_views(path)
    assert {v[0] for v in seen.values()} == {200}, seen
    np.testing.assert_array_equal(zarr.open_array(str(path / "images"), mode="r")[:], imgs)
    assert verify_store(path) == []
    with ImageStore.open(path, mode="a") as st:  # the next writer trims and goes on
        assert len(st) == 200
    assert {v[0] for v in _outside_views(path).values()} == {200}


def test_a_writer_stopped_after_its_commit_point_leaves_outside_readers_lagging(path, monkeypatch):
    """Killed between index.json and growing the arrays: zarr-python and TensorStore see the
    old rows only (never more than is committed), mriscan reads all committed rows, verify
    says how to bring the zarr view up to date, and `mriscan migrate` does."""
    old = _store(path, [_images(200)])
    new = _images(100, 1)

    def publish(self, new_rows=None):
        raise _KilledError

    st = ImageStore.open(path, mode="a")
    st.append(new, np.ones(100, int))
    monkeypatch.setattr(ImageStore, "_publish", publish)
    with pytest.raises(_KilledError):
        st.commit()
    monkeypatch.undo()
    st.close()
    assert {v[0] for v in _outside_views(path).values()} == {200}
    with ImageStore.open(path) as reader:  # committed: mriscan reads every row
        assert len(reader) == 300
        np.testing.assert_array_equal(reader.read_batch(range(300))[0], np.concatenate([old, new]))
        assert reader.labels.tolist() == [0] * 200 + [1] * 100
        assert reader.signatures().shape == (300, 16, 16)
    (problem,) = verify_store(path)
    assert "lags the index" in problem and "mriscan migrate" in problem
    with ImageStore.open(path) as reader:
        assert reader.zarr_lag() == 100
    r = CliRunner().invoke(main, ["migrate", "--store", str(path)])
    assert r.exit_code == 0 and "grown by 100 committed rows" in r.output, r.output
    assert {v[0] for v in _outside_views(path).values()} == {300}
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["images"][200:], new)
    assert group["labels"][:].tolist() == [0] * 200 + [1] * 100
    with ImageStore.open(path) as reader:
        np.testing.assert_array_equal(group["signatures"][:], reader.signature_rows(np.arange(300)))
    assert verify_store(path) == []


def test_info_names_the_format_and_suggests_migrate_for_an_older_store(path):
    _old_layout_store(path, _images(20, 5))
    out = CliRunner().invoke(main, ["info", "--store", str(path)]).output
    assert "Format:     index format 3; images one file per slice" in out, out
    assert f"`mriscan migrate --store {path}`" in out
    (codec,) = [x for x in out.splitlines() if x.startswith("Codec:")]
    assert codec == "Codec:      Blosc-ZSTD level 3; chunks 1×16×16", codec
    assert CliRunner().invoke(main, ["migrate", "--store", str(path)]).exit_code == 0
    out = CliRunner().invoke(main, ["info", "--store", str(path)]).output
    assert f"Format:     index format {FORMAT_VERSION}; images in shards of 256 slices" in out
    assert "mriscan migrate" not in out
    (codec,) = [x for x in out.splitlines() if x.startswith("Codec:")]
    assert codec == "Codec:      sharding, inner chunks 1×16×16: uncompressed; chunks 256×16×16"
    with ImageStore.create(path.with_name("c.zarr"), S, compress=True):
        pass
    out = CliRunner().invoke(main, ["info", "--store", str(path.with_name("c.zarr"))]).output
    assert "inner chunks 1×16×16: Blosc-LZ4 level" in out and "{" not in out.split("Codec:")[1]


def test_ingest_into_an_unmigrated_store_hints_at_migrate_once(class_folder, path, caplog):
    import logging

    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig

    _old_layout_store(path, _images(4, 5))
    cfg = IngestConfig(preprocess=PreprocessConfig(size=S), workers=1, merge=True)
    with caplog.at_level(logging.WARNING, logger="mriscan.ingest"):
        ingest(class_folder, path, cfg)
        ingest(class_folder, path, cfg)
    hints = [r for r in caplog.records if "mriscan migrate --store" in r.getMessage()]
    assert len(hints) == 1 and "one file per slice" in hints[0].getMessage()
    assert verify_store(path) == []


def test_fsync_all_syncs_every_path_once_and_reports_a_missing_one(tmp_path, monkeypatch):
    """fsync_all syncs each distinct path (several at a time), skips vanished ones only when
    asked, and raises a failure after trying the rest."""
    import os

    from mriscan.store import files

    paths = []
    for k in range(12):
        p = tmp_path / f"f{k}"
        p.write_bytes(b"x" * k)
        paths.append(str(p))
    synced: list[int] = []
    real = os.fsync

    def fsync(fd):
        synced.append(fd)
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    files.fsync_all(paths + paths[:3])
    assert len(synced) == 12
    missing = str(tmp_path / "gone")
    synced.clear()
    files.fsync_all([*paths[:4], missing], missing_ok=True)
    assert len(synced) == 4
    synced.clear()
    with pytest.raises(FileNotFoundError):
        files.fsync_all([missing, *paths[:4]])
    assert len(synced) == 4
