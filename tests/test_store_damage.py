"""Tampered and half-created stores (issue 19 item 13): ``verify`` names the damage and never
crashes with a traceback; an interrupted creation can be fixed by rerunning ingest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _shards import chunk_file, drop_chunk, write_chunk_bytes
from click.testing import CliRunner

from mriscan.cli import main
from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.store import ImageStore, verify_store

S = 16


def _store(path: Path) -> Path:
    imgs = np.random.default_rng(0).integers(1, 256, (5, S, S), dtype=np.uint8)
    with ImageStore.create(path, S) as st:
        st.set_class_names(["no", "yes"])
        st.append(imgs, [0, 1, 0, 1, 1])
        st.commit()
    return path


def _edit_index(path: Path, change) -> None:
    """Damage a record the way it would sit in a format-2 index (every record inline)."""
    with ImageStore.open(path) as st:
        data = st.index.to_dict()
    shutil.rmtree(path / "index")
    data = change(data)
    (path / "index.json").write_text(json.dumps(data))


def _edit_manifest(change) -> None:
    def damage(path: Path) -> None:
        data = json.loads((path / "index.json").read_text())
        (path / "index.json").write_text(json.dumps(change(data)))

    return damage


def _set(key, value):
    def change(d):
        d[key] = value
        return d

    return change


def _bytes_at(rel, offset, data):
    def damage(path: Path) -> None:
        with open(path / rel, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)

    return damage


def _truncate(rel, size):
    def damage(path: Path) -> None:
        os.truncate(path / rel, size)

    return damage


def _set_record(field, value):
    def change(d):
        d["records"][2][field] = value
        return d

    return change


def _garbage(rel):
    def damage(path: Path) -> None:
        (path / rel).write_bytes(b"\x00garbage, not what zarr wrote" * 3)

    return damage


def _delete(rel):
    def damage(path: Path) -> None:
        target = path / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return damage


DAMAGE = {
    "index is a JSON list": lambda p: _edit_index(p, lambda d: d["records"]),
    "index is not JSON": lambda p: (p / "index.json").write_text("{oops"),
    "position past the end": lambda p: _edit_index(p, _set_record("position", 99)),
    "position is a string": lambda p: _edit_index(p, _set_record("position", "2")),
    "position is a float": lambda p: _edit_index(p, _set_record("position", 2.0)),
    "label 300": lambda p: _edit_index(p, _set_record("label", 300)),
    "label -1": lambda p: _edit_index(p, _set_record("label", -1)),
    'label "yes"': lambda p: _edit_index(p, _set_record("label", "yes")),
    "label without a class name": lambda p: _edit_index(p, _set_record("label", 7)),
    # format 3: the manifest and the column files
    "manifest count past the rows": _edit_manifest(_set("count", 99)),
    "manifest count is a string": _edit_manifest(_set("count", "5")),
    "manifest patch bytes past the file": _edit_manifest(_set("patch_bytes", 10)),
    "manifest group generation missing": _edit_manifest(_set("group_file", "7")),
    "manifest duplicates file outside index/": _edit_manifest(_set("duplicates_file", "../x")),
    "column label without a class name": _bytes_at("index/label.u1", 2, b"\x07"),
    "label column disagrees with labels array": _bytes_at("index/label.u1", 2, b"\x01"),
    "truncated source offsets": _truncate("index/source.off", 16),
    "truncated checksum column": _truncate("index/pixel_sha256.bin", 20),
    "deleted group column": _delete("index/group.0.i8"),
    "deleted projections": _delete("index/proj.f4"),
    "signature column disagrees with the array": _bytes_at("index/sig.u1", 300, b"\x01\x02"),
    "garbage labels chunk": _garbage("labels/c/0"),
    "garbage signatures chunk": _garbage("signatures/c/0/0/0"),
    "garbage images chunk": lambda p: write_chunk_bytes(p, 1, b"\x00garbage"),
    "garbage images shard": lambda p: chunk_file(p, 1).write_bytes(b"\x00garbage" * 3),
    "garbage images/zarr.json": _garbage("images/zarr.json"),
    "deleted images/zarr.json": _delete("images/zarr.json"),
    "deleted group zarr.json": _delete("zarr.json"),
    "deleted images folder": _delete("images"),
    "deleted chunk": lambda p: drop_chunk(p, 3),
    "deleted shard": lambda p: chunk_file(p, 3).unlink(),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_verify_names_every_kind_of_damage_without_a_traceback(tmp_path, kind):
    path = _store(tmp_path / "s.zarr")
    assert verify_store(path) == []
    DAMAGE[kind](path)
    problems = verify_store(path)
    assert problems, f"{kind}: verify passed a damaged store"
    result = CliRunner().invoke(main, ["verify", "--store", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


def test_interrupted_creation_is_fixed_by_rerunning_ingest(class_folder, tmp_path):
    path = _store(tmp_path / "s.zarr")
    (path / "index.json").unlink()  # killed before the first commit point
    (path / ".index.json.123.456.tmp").write_bytes(b"{half")
    cfg = IngestConfig(preprocess=PreprocessConfig(size=32), workers=1)
    report = ingest(class_folder, path, cfg)
    assert report.total == 12
    assert verify_store(path) == []
    assert not list(path.glob(".index.json.*.tmp"))


def test_orphan_index_temp_is_removed_by_the_next_writer(tmp_path):
    path = _store(tmp_path / "s.zarr")
    (path / ".index.json.123.456.tmp").write_bytes(b"{half")
    with ImageStore.open(path):  # readers leave it
        pass
    assert (path / ".index.json.123.456.tmp").exists()
    with ImageStore.open(path, mode="a"):
        pass
    assert not list(path.glob(".index.json.*.tmp"))


def test_a_foreign_zarr_group_is_never_replaced(tmp_path):
    import zarr

    path = tmp_path / "other.zarr"
    zarr.open_group(str(path), mode="a", attributes={"owner": "someone else"})
    with pytest.raises(Exception, match="not a mriscan store") as err:
        ImageStore.create(path, S)
    assert "another --store path" in str(err.value)
    assert (path / "zarr.json").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.__setitem__("class_names", ["no", "no"]),
        lambda d: d.__setitem__("class_names", ["", "yes"]),
        lambda d: d.pop("salt"),
    ],
    ids=["duplicate class names", "empty class name", "salt key removed"],
)
def test_verify_names_damaged_manifest_fields(small_store, damage):
    import json

    from mriscan.store import verify_store

    index = small_store / "index.json"
    data = json.loads(index.read_text())
    damage(data)
    index.write_text(json.dumps(data))
    problems = verify_store(small_store)
    assert problems and "index.json" in problems[0]


def test_verify_advice_on_a_damaged_shard_is_one_that_works(class_folder, tmp_path):
    """Re-ingesting into the damaged store adds nothing (its records say the files are
    stored), so verify must not suggest it; the advice it gives (a new store) must work."""
    cfg = IngestConfig(preprocess=PreprocessConfig(size=32), workers=1)
    path = tmp_path / "s.zarr"
    ingest(class_folder, path, cfg)
    chunk_file(path, 0).write_bytes(b"\x00garbage" * 3)
    result = CliRunner().invoke(main, ["verify", "--store", str(path)])
    assert result.exit_code == 1 and "named samples" not in result.output
    assert "cannot repair" in result.output and "into a new store" in result.output
    assert ingest(class_folder, path, cfg).n_added == 0  # why: nothing is re-stored
    assert verify_store(path)
    new = tmp_path / "new.zarr"
    ingest(class_folder, new, cfg)  # the advice
    result = CliRunner().invoke(main, ["verify", "--store", str(new)])
    assert result.exit_code == 0, result.output


def test_verify_on_a_lagging_zarr_view_points_at_migrate(tmp_path):
    path = _store(tmp_path / "s.zarr")
    meta = json.loads((path / "labels" / "zarr.json").read_text())
    meta["shape"] = [3]  # as if the writer stopped after its commit point
    (path / "labels" / "zarr.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(main, ["verify", "--store", str(path)])
    assert result.exit_code == 1 and "mriscan migrate" in result.output, result.output
    assert "re-ingest" not in result.output.lower()
    assert CliRunner().invoke(main, ["migrate", "--store", str(path)]).exit_code == 0
    assert verify_store(path) == []
