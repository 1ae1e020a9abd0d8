"""ImageStore: round trips, atomic commits, locking, concurrent readers, corruption, memory://."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from _shards import chunk_file, chunk_present, chunk_span, drop_chunk

from mriscan.errors import StoreError, StoreLockedError, StoreNotFoundError
from mriscan.preprocess import PreprocessConfig
from mriscan.store import FORMAT_VERSION, ImageStore, verify_store

S = 16


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S), dtype=np.uint8)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_store_is_never_created_over_a_user_s_files(tmp_path, overwrite):
    """A folder of other files (class folders given as --store) or a file is refused, with
    or without overwrite, and left as it was; an empty folder, or one an interrupted creation
    left with only its lock, becomes the store."""
    folder = tmp_path / "raw"
    (folder / "yes").mkdir(parents=True)
    (folder / "yes" / "a.png").write_bytes(b"png")
    with pytest.raises(StoreError, match=r"raw is a folder of other files \(yes\), not a store"):
        ImageStore.create(folder, image_size=S, overwrite=overwrite)
    assert sorted(p.name for p in folder.rglob("*")) == ["a.png", "yes"]
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StoreError, match="is a file, not a store"):
        ImageStore.create(tmp_path / "f", image_size=S, overwrite=overwrite)
    assert (tmp_path / "f").read_bytes() == b"x"
    # below a file, or a link to nothing: one clear error, not a traceback (tester31)
    with pytest.raises(StoreError, match=r"f is a file, so no store can be made at .*f/sub"):
        ImageStore.create(tmp_path / "f" / "sub", image_size=S, overwrite=overwrite)
    with pytest.raises(StoreNotFoundError):
        ImageStore.open(tmp_path / "f" / "sub")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    with pytest.raises(StoreError, match=r"dangling is a symbolic link to .*nothing, which"):
        ImageStore.create(tmp_path / "dangling", image_size=S, overwrite=overwrite)
    assert not (tmp_path / "nothing").exists()
    # a killed creation's remains (no index.json yet) beside a user's file: refused, both
    # kept (tester31: the remains were cleared with everything beside them)
    dead = tmp_path / "dead"
    ImageStore.create(dead, image_size=S).close()
    (dead / "index.json").unlink()
    (dead / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"dead is a folder of other files \(notes.txt\)"):
        ImageStore.create(dead, image_size=S, overwrite=overwrite)
    assert (dead / "notes.txt").read_text() == "mine" and (dead / "zarr.json").is_file()
    (dead / "notes.txt").unlink()  # the remains alone are cleared and the store made anew
    with ImageStore.create(dead, image_size=S, overwrite=overwrite) as st:
        assert len(st) == 0
    # inside a store, at any depth: refused, the outer store untouched (tester32: accepted)
    before = sorted(p.relative_to(dead) for p in dead.rglob("*"))
    for inner in (dead / "inner", dead / "images" / "deep" / "inner"):
        with pytest.raises(StoreError, match=r"inner lies inside the store .*dead: a store"):
            ImageStore.create(inner, image_size=S, overwrite=overwrite)
    (tmp_path / "into").symlink_to(dead / "images")  # a link into the store (tester33)
    with pytest.raises(StoreError, match=r"inner lies inside the store .*dead: a store"):
        ImageStore.create(tmp_path / "into" / "inner", image_size=S, overwrite=overwrite)
    assert sorted(p.relative_to(dead) for p in dead.rglob("*")) == before
    for name, inside in (("empty", ()), ("locked", ("write.lock",))):
        (tmp_path / name).mkdir()
        for f in inside:
            (tmp_path / name / f).write_text("")
        with ImageStore.create(tmp_path / name, image_size=S, overwrite=overwrite) as st:
            assert len(st) == 0
        assert (tmp_path / name / "index.json").is_file()


def test_create_append_commit_read(store_path):
    imgs = _images(40)
    labels = np.arange(40) % 2
    with ImageStore.create(store_path, image_size=S) as st:
        st.set_class_names(["no", "yes"])
        st.append(imgs[:32], labels[:32])
        st.append(imgs[32:], labels[32:])
        assert len(st) == 0  # not visible before commit
        assert st.commit() == 40
        assert len(st) == 40
    with ImageStore.open(store_path) as st:
        assert len(st) == 40 and st.class_names == ("no", "yes")
        order = [39, 0, 5, 5, -1]
        got, got_labels = st.read_batch(order)
        np.testing.assert_array_equal(got, imgs[[39, 0, 5, 5, 39]])
        np.testing.assert_array_equal(got_labels, labels[[39, 0, 5, 5, 39]])
        np.testing.assert_array_equal(st[7], imgs[7])
        np.testing.assert_array_equal(st.labels, labels)
        batches = list(st.iter_batches(16, shuffle=True, seed=1))
        assert [len(b[0]) for b in batches] == [16, 16, 8]
        seen = np.concatenate([b[0] for b in batches])
        assert sorted(map(bytes, seen)) == sorted(map(bytes, imgs))
        with pytest.raises(IndexError, match="indices must be in"):
            st.read_batch([40])
    # any zarr v3 reader sees the same pixels
    np.testing.assert_array_equal(zarr.open_array(store_path / "images", mode="r")[:], imgs)
    assert verify_store(store_path) == []


def test_index_records_config_and_checksums(store_path):
    cfg = PreprocessConfig(size=S, aspect="stretch")
    with ImageStore.create(store_path, S, cfg) as st:
        st.set_class_names(["a", "b"])
        st.append(
            _images(3),
            [0, 1, 1],
            [
                {"source": f"a/{i}.png", "sha256": f"h{i}", "height": 50, "width": 60}
                for i in range(3)
            ],
        )
        st.commit()
    index = json.loads((store_path / "index.json").read_text())
    assert index["format_version"] == FORMAT_VERSION and index["count"] == 3
    assert index["config"]["aspect"] == "stretch"
    # format 3: index.json is a small manifest; the records live in append-only column files
    assert "records" not in index and len((store_path / "index.json").read_bytes()) < 2000
    assert (store_path / "index" / "label.u1").read_bytes() == bytes([0, 1, 1])
    with ImageStore.open(store_path) as st:
        rec = st.index.records[2]
        assert rec.source == "a/2.png" and rec.label == 1 and rec.height == 50
        assert len(rec.pixel_sha256) == 16 and rec.group >= 0 and rec.position == 2
        assert list(st.index.records)[2] == rec and st.index.records[-1] == rec


def test_uncommitted_appends_vanish_and_are_trimmed(store_path):
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        st.append(_images(5), [0] * 5)
        st.commit()
        st.append(_images(7, seed=1), [1] * 7)  # never committed
    with ImageStore.open(store_path) as st:
        assert len(st) == 5
    with ImageStore.open(store_path, mode="a") as st:  # the next writer trims leftovers
        assert st._group["images"].shape[0] == 5
        assert not chunk_present(store_path, 6)
        assert not (store_path / "write.pending").exists()
        st.append(_images(2, seed=2), [1, 1])
        st.commit()
    assert verify_store(store_path) == []
    with ImageStore.open(store_path) as st:
        np.testing.assert_array_equal(st.read_batch([5, 6])[0], _images(2, seed=2))


def test_second_writer_gets_a_clear_error(store_path):
    with ImageStore.create(store_path, S):
        with pytest.raises(StoreLockedError, match="only one writer at a time"):
            ImageStore.open(store_path, mode="a")
        with ImageStore.open(store_path) as reader:  # readers take no lock
            assert len(reader) == 0
    with ImageStore.open(store_path, mode="a"):  # free again after close
        pass


def test_second_writer_in_another_process(store_path):
    with ImageStore.create(store_path, S):
        code = textwrap.dedent(f"""
            from mriscan.store import ImageStore
            from mriscan.errors import StoreLockedError
            try:
                ImageStore.open({str(store_path)!r}, mode="a")
            except StoreLockedError:
                raise SystemExit(3)
        """)
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3


def test_open_errors(tmp_path, store_path):
    with pytest.raises(StoreNotFoundError, match="No mriscan store"):
        ImageStore.open(tmp_path / "missing.zarr")
    ImageStore.create(store_path, S).close()
    with pytest.raises(StoreError, match="already exists"):
        ImageStore.create(store_path, S)
    with ImageStore.open(store_path) as st, pytest.raises(StoreError, match="read-only"):
        st.append(_images(1), [0])
    with (
        ImageStore.create(store_path, S, overwrite=True) as st,
        pytest.raises(ValueError, match=r"images must be uint8 of shape \(n, 16, 16\)"),
    ):
        st.append(_images(1)[:, :8], [0])


def test_concurrent_readers_agree(store_path):
    imgs = _images(300)
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        st.append(imgs, np.zeros(300, int))
        st.commit()
    errors: list[BaseException] = []
    with ImageStore.open(store_path) as st:

        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(30):
                    idx = rng.integers(0, 300, 32)
                    np.testing.assert_array_equal(st.read_batch(idx)[0], imgs[idx])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_reader_keeps_its_view_while_a_writer_commits(store_path):
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        st.append(_images(4), [0] * 4)
        st.commit()
        with ImageStore.open(store_path) as reader:
            st.append(_images(4, seed=9), [1] * 4)
            st.commit()
            assert len(reader) == 4
            np.testing.assert_array_equal(reader.read_batch(range(4))[0], _images(4))
        with ImageStore.open(store_path) as fresh:
            assert len(fresh) == 8


def test_verify_detects_a_corrupted_chunk(store_path):
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        st.append(_images(6), [0] * 6)
        st.commit()
    path, off, nb = chunk_span(store_path, 3)
    data = bytearray(path.read_bytes())
    data[off + nb - 5 : off + nb] = b"\xff" * 5
    path.write_bytes(bytes(data))
    problems = verify_store(store_path)
    assert len(problems) == 1 and problems[0].startswith("sample 3")
    drop_chunk(store_path, 3)
    assert "chunk of sample 3 is missing" in verify_store(store_path)[0]


def test_memory_url_store():
    url = f"memory://mriscan-test-{uuid.uuid4().hex}/s.zarr"
    imgs = _images(10)
    with ImageStore.create(url, S) as st:
        st.set_class_names(["a", "b"])
        st.append(imgs, np.arange(10) % 2)
        st.commit()
        with pytest.raises(StoreLockedError):
            ImageStore.open(url, mode="a")
    with ImageStore.open(url) as st:
        assert len(st) == 10
        np.testing.assert_array_equal(st.read_batch([9, 1])[0], imgs[[9, 1]])
    assert verify_store(url) == []


def test_url_store_grows_its_arrays_only_after_the_commit_point():
    """The zarr-python engine (any URL) writes appended rows past the stored shape: another
    zarr reader sees them only once index.json names them."""
    from mriscan.store.image_store import zarr_store

    url = f"memory://mriscan-test-{uuid.uuid4().hex}/s.zarr"
    with ImageStore.create(url, S) as st:
        st.set_class_names(["a", "b"])
        st.append(_images(10), [0] * 10)
        st.commit()
        st.append(_images(5, seed=1), [1] * 5)
        group = zarr.open_group(zarr_store(url), mode="r")
        assert [group[k].shape[0] for k in ("images", "labels", "signatures")] == [10] * 3
        st.commit()
    group = zarr.open_group(zarr_store(url), mode="r")
    assert [group[k].shape[0] for k in ("images", "labels", "signatures")] == [15] * 3
    np.testing.assert_array_equal(group["images"][10:], _images(5, seed=1))
    assert group["labels"][:].tolist() == [0] * 10 + [1] * 5
    assert verify_store(url) == []


_KILL_SCRIPT = """
import sys, numpy as np
from mriscan.store import ImageStore
path, stage = sys.argv[1], sys.argv[2]
st = ImageStore.open(path, mode="a")
imgs = np.full((64, 16, 16), 200, np.uint8)
print("ready", flush=True)
if stage == "append":
    while True:
        st.append(imgs, np.ones(64, int))
if stage == "commit":
    import mriscan.store as m
    real = m.ImageStore.commit
    st.append(imgs, np.ones(64, int))
    # stall just before the index is replaced (shards and columns written, arrays not grown)
    orig = st._files.write_atomic
    def stall(key, data):
        print("committing", flush=True)
        sys.stdin.readline()
        orig(key, data)
    st._files.write_atomic = stall
    st.commit()
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["append", "commit"])
def test_sigkill_mid_write_leaves_previous_store_readable(store_path, tmp_path, stage):
    base = _images(20)
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        st.append(base, [0] * 20)
        st.commit()
    script = tmp_path / "writer.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store_path), stage],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # the writer must run this checkout's mriscan, not whichever one is installed
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout.readline().strip() == "ready"
    if stage == "commit":
        assert proc.stdout.readline().strip() == "committing"
    else:
        # wait until the writer has put chunks past the committed end
        deadline = time.monotonic() + 30
        while not chunk_file(store_path, 600).exists():
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert verify_store(store_path) == []
    with ImageStore.open(store_path) as st:
        assert len(st) == 20
        np.testing.assert_array_equal(st.read_batch(range(20))[0], base)
    with ImageStore.open(store_path, mode="a") as st:  # the next writer recovers the lock
        st.append(_images(3, seed=5), [1] * 3)
        st.commit()
    # the killed writer's column rows were cut off, not appended to
    assert verify_store(store_path) == []
    with ImageStore.open(store_path) as st:
        assert len(st) == 23 and st.labels.tolist() == [0] * 20 + [1] * 3
        assert (store_path / "index" / "label.u1").stat().st_size == 23
    assert verify_store(store_path) == []


def test_commit_takes_groups_from_the_caller(store_path):
    imgs = np.zeros((4, S, S), np.uint8)  # identical slices: the store must not group them
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a"])
        st.append(imgs[:3], [0] * 3)
        st.commit()
        assert st.groups.tolist() == [0, 1, 2]  # no groups given: one group per new slice
        st.append(imgs[3:], [0])
        st.commit()
        assert st.groups.tolist() == [0, 1, 2, 3]
        st.append(imgs[:2], [0, 0])
        st.commit(groups=[0, 0, 1, 1, 0, 2])  # old ids may change: a new slice can join groups
        assert st.groups.tolist() == [0, 0, 1, 1, 0, 2]
        for bad in ([0, 1], [0, 0, 1, 1, 0, -1], [0.5] * 6):
            with pytest.raises(ValueError, match="one non-negative integer per sample"):
                st.commit(groups=bad)
        assert st.commit() == 0 and st.groups.tolist() == [0, 0, 1, 1, 0, 2]
    with ImageStore.open(store_path) as st:
        assert st.groups.tolist() == [0, 0, 1, 1, 0, 2]


def test_records_are_read_lazily_column_by_column(store_path):
    n = 100
    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        for start in range(0, n, 30):  # several commits: rows appended, never rewritten
            k = min(30, n - start)
            recs = [{"source": f"a/{start + i}.png", "sha256": f"h{start + i}"} for i in range(k)]
            st.append(_images(k, seed=start), [(start + i) % 2 for i in range(k)], recs)
            st.commit()
        st.update_record(5, flags=["removed"])
        st.commit()
    with ImageStore.open(store_path) as st:
        every = list(st.index.records)
        # one at a time: the first reads are row by row, later ones from whole columns
        assert [st.index.records[i] for i in range(n)] == every
        assert every[5].flags == ("removed",) and 5 not in st.active_indices()
        assert [r.source for r in every] == [f"a/{i}.png" for i in range(n)]
        assert st.labels.tolist() == [i % 2 for i in range(n)]
    # opening, labels and groups never touch the string columns
    (store_path / "index" / "source.bin").unlink()
    with ImageStore.open(store_path) as st:
        assert len(st) == n and st.labels.sum() == n // 2 and len(st.groups) == n
        with pytest.raises(StoreError, match=r"source\.bin is missing"):
            st.index.records[3]


def test_info_leaves_retired_samples_out_of_every_count(store_path):
    """A retired row keeps its group in the group column; info must not count it (nor a group
    only retired rows hold), as ingest's report and a fresh store do not."""
    from click.testing import CliRunner

    from mriscan.cli import main

    with ImageStore.create(store_path, S) as st:
        st.set_class_names(["a", "b"])
        st.append(_images(4), [0, 0, 1, 1])
        st.commit(groups=[0, 0, 1, 2])  # rows 0 and 1 one group; 2 and 3 alone
        st.update_record(3, flags=["removed"])  # a group only a retired row holds
        st.update_record(1, flags=["relabelled"])  # a group that keeps a live row
        st.commit()
    with ImageStore.open(store_path) as st:
        info = st.info()
    assert info["samples"] == 2 and info["retired"] == 2
    assert info["classes"] == {"a": 1, "b": 1} and info["duplicate_groups"] == 2
    out = CliRunner().invoke(main, ["info", "--store", str(store_path)]).output
    assert "Groups:     2 split groups" in out, out
