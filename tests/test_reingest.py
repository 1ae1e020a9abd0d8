"""Issue 19 items 8, 9, 10 (listing): re-ingest follows the folder; nested class layouts and
unreadable folders are named; uniform and thin images are stored only with a warning."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mriscan.cli import main
from mriscan.errors import BadFilesError, ConfigError, EmptyDatasetError
from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.sources import open_or_ingest
from mriscan.store import ImageStore, verify_store

SMALL = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)


def _active(store):
    with ImageStore.open(store) as st:
        return {r.source: st.class_names[r.label] for r in st.index.records if r.active}


# ---- item 8 -----------------------------------------------------------------------------------
def test_moving_a_file_to_another_class_relabels_it(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    shutil.move(class_folder / "no" / "no1.png", class_folder / "yes" / "no1.png")
    report = ingest(class_folder, store, SMALL)
    assert report.relabelled == 1 and report.added == {"no": 0, "yes": 1}
    assert report.exact_duplicates == 0 and report.total == 12
    now = _active(store)
    assert now["yes/no1.png"] == "yes" and "no/no1.png" not in now
    with ImageStore.open(store) as st:
        old = next(r for r in st.index.records if r.source == "no/no1.png")
        assert "relabelled" in old.flags and not old.active
        assert old.position not in st.active_indices()
    assert verify_store(store) == []


def test_a_file_renamed_within_its_class_is_said_renamed_not_deleted(class_folder, tmp_path):
    """Renaming a file (or a patient's folder, to anonymise it) in its class: its sample is
    retired and stored again under the new name, as a move to another class is, and the
    report says renamed, not "removed (file deleted)" (tester 18 F7)."""
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    shutil.move(class_folder / "no" / "no1.png", class_folder / "no" / "renamed.png")
    (class_folder / "no" / "no2.jpg").unlink()  # and one really deleted
    report = ingest(class_folder, store, SMALL)
    assert (report.renamed, report.removed, report.n_added, report.total) == (1, 1, 1, 11)
    now = _active(store)
    assert now["no/renamed.png"] == "no" and "no/no1.png" not in now
    res = CliRunner().invoke(main, ["ingest", str(class_folder), "--store", str(store)])
    assert res.exit_code == 0 and "renamed (the same file" not in res.output  # no change
    shutil.move(class_folder / "no" / "renamed.png", class_folder / "no" / "again.png")
    res = CliRunner().invoke(main, ["ingest", str(class_folder), "--store", str(store)])
    assert res.exit_code == 0 and "1 renamed (the same file under a new name" in res.output
    assert "removed (file deleted)" not in res.output
    assert verify_store(store) == []


def test_a_dicom_file_renamed_and_rewritten_is_said_replaced_as_an_overwritten_one(tmp_path):
    """NP2: a DICOM file renamed in its class and its header rewritten (other bytes, the same
    SOP Instance UID): the instance is still there with new content, so the report counts it
    as replaced (as a file rewritten in place), not as a deletion plus an addition; a plain
    rename stays renamed. Each time the old sample is retired and the new content stored."""
    import pydicom

    from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

    raw = tmp_path / "raw"
    for k, cls in enumerate(("no", "yes")):
        write_dicom_series(raw / cls / f"p{k}", phantom_volume(k, n_slices=3, canvas=32),
                           patient=FakePatient(patient_id=f"P-{k}"), seed=k)  # fmt: skip
    store = tmp_path / "s.zarr"
    ingest(raw, store, SMALL)

    def rewrite(src, dst):
        ds = pydicom.dcmread(src)
        ds.SeriesDescription = f"edited {dst.name}"  # other bytes every time
        ds.save_as(dst)
        if dst != src:
            src.unlink()

    counts = ("replaced", "removed", "renamed", "relabelled", "n_added", "total")
    folder = raw / "yes" / "p1"
    rewrite(folder / "IM0001.dcm", folder / "IM0001.dcm")  # in place
    report = ingest(raw, store, SMALL)
    assert tuple(getattr(report, c) for c in counts) == (1, 0, 0, 0, 1, 6)
    rewrite(folder / "IM0002.dcm", folder / "moved.dcm")  # renamed and rewritten
    report = ingest(raw, store, SMALL)
    assert tuple(getattr(report, c) for c in counts) == (1, 0, 0, 0, 1, 6)
    shutil.move(folder / "IM0003.dcm", folder / "plain.dcm")  # renamed only
    report = ingest(raw, store, SMALL)
    assert tuple(getattr(report, c) for c in counts) == (0, 0, 1, 0, 1, 6)
    rewrite(folder / "moved.dcm", folder / "again.dcm")
    (raw / "no" / "p0" / "IM0001.dcm").unlink()  # and one really deleted
    res = CliRunner().invoke(main, ["ingest", str(raw), "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "1 replaced (new content), 1 removed (file deleted)" in res.output
    assert verify_store(store) == []


def test_overwritten_file_replaces_its_sample(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    Image.fromarray(np.full((50, 60), 40, np.uint8) + np.eye(50, 60, dtype=np.uint8) * 90).save(
        class_folder / "yes" / "yes1.png"
    )
    report = ingest(class_folder, store, SMALL)
    assert report.replaced == 1 and report.n_added == 1 and report.total == 12
    with ImageStore.open(store) as st:
        live = [r for r in st.index.records if r.active and r.source == "yes/yes1.png"]
        assert len(live) == 1 and (live[0].height, live[0].width) == (50, 60)


def test_deleted_file_is_retired_and_left_out_of_training(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    kept = (class_folder / "no" / "no2.jpg").read_bytes()
    (class_folder / "no" / "no2.jpg").unlink()
    res = CliRunner().invoke(main, ["ingest", str(class_folder), "--store", str(store),
                                    "--image-size", "32"])  # fmt: skip
    assert res.exit_code == 0 and "1 removed (file deleted)" in res.output
    assert "no/no2.jpg" not in _active(store)
    with ImageStore.open(store) as st:
        assert len(st) == 12 and st.active_indices().size == 11 and st.info()["samples"] == 11
    # restored, it comes back as a new sample
    (class_folder / "no" / "no2.jpg").write_bytes(kept)
    report = ingest(class_folder, store, SMALL)
    assert report.added == {"no": 1, "yes": 0} and _active(store)["no/no2.jpg"] == "no"


def test_same_file_under_two_classes_is_a_conflict_not_folder_order(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copy(class_folder / "no" / "no0.jpg", class_folder / "yes" / "also_no0.jpg")
    report = ingest(class_folder, store, SMALL)
    reasons = dict(report.skipped)
    assert (
        "label conflict" in reasons["no/no0.jpg"]
        and "label conflict" in reasons["yes/also_no0.jpg"]
    )
    assert report.conflicts == 2 and report.total == 11
    assert "no/no0.jpg" not in _active(store)
    with pytest.raises(BadFilesError, match="label conflict"):
        ingest(class_folder, tmp_path / "strict.zarr", IngestConfig(
            preprocess=PreprocessConfig(size=32), strict=True))  # fmt: skip
    # an already stored file that gains a copy under the other class is retired, then restored
    (class_folder / "yes" / "also_no0.jpg").unlink()
    ingest(class_folder, store, SMALL)
    assert _active(store)["no/no0.jpg"] == "no"
    shutil.copy(class_folder / "no" / "no0.jpg", class_folder / "yes" / "again.jpg")
    ingest(class_folder, store, SMALL)
    assert "no/no0.jpg" not in _active(store)


# ---- item 9 -----------------------------------------------------------------------------------
@pytest.fixture
def kaggle_download(class_folder, tmp_path):
    """The archive as downloaded: yes/, no/ and brain_tumor_dataset/{yes,no}/."""
    root = tmp_path / "archive"
    shutil.copytree(class_folder, root)
    shutil.copytree(class_folder, root / "brain_tumor_dataset")
    return root


def test_nested_copy_of_the_class_layout_is_refused(kaggle_download, tmp_path):
    with pytest.raises(EmptyDatasetError, match="nested copy of the class layout"):
        ingest(kaggle_download, tmp_path / "s.zarr", SMALL)
    assert not (tmp_path / "s.zarr").exists()
    only = tmp_path / "only"
    (only / "brain_tumor_dataset").mkdir(parents=True)
    shutil.copytree(kaggle_download / "yes", only / "brain_tumor_dataset" / "yes")
    shutil.copytree(kaggle_download / "no", only / "brain_tumor_dataset" / "no")
    with pytest.raises(EmptyDatasetError, match=r"use .*brain_tumor_dataset as the data"):
        ingest(only, tmp_path / "s.zarr", SMALL)


def test_failed_train_ingest_leaves_no_store_that_blocks_the_fix(kaggle_download, tmp_path):
    store = tmp_path / "default.zarr"
    with pytest.raises(EmptyDatasetError):
        open_or_ingest(kaggle_download, store_path=store, image_size=32)
    assert not store.exists()
    # classes the task cannot use (which of two unknown names is the tumor?) are refused
    # before anything is written
    from mriscan.tasks import resolve_task

    pets = tmp_path / "pets"
    for c in ("cats", "dogs"):
        shutil.copytree(kaggle_download / "yes", pets / c)
    with pytest.raises(ConfigError, match="--positive"):
        open_or_ingest(pets, store_path=store, image_size=32, check_classes=resolve_task)
    assert not store.exists()
    # the corrected command works
    with open_or_ingest(kaggle_download / "brain_tumor_dataset", store_path=store,
                        image_size=32) as st:  # fmt: skip
        assert len(st) == 12


def test_a_store_created_by_a_failing_ingest_is_removed(class_folder, tmp_path, monkeypatch):
    import mriscan.ingest as ing

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ing, "preprocess_serial", boom)  # fails mid-run
    with pytest.raises(RuntimeError):
        ingest(class_folder, tmp_path / "s.zarr", SMALL)
    assert not (tmp_path / "s.zarr").exists()


# ---- item 10 (listing) ------------------------------------------------------------------------
def test_unreadable_sub_folder_is_named(class_folder, tmp_path, monkeypatch):
    hidden = class_folder / "yes" / "locked"
    hidden.mkdir()
    shutil.copy(class_folder / "yes" / "yes0.jpg", hidden / "inside.jpg")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(hidden):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    (class_folder / "no" / "no3.png").unlink()
    report = ingest(class_folder, store, SMALL)
    reasons = dict(report.skipped)
    assert "Permission denied" in reasons["yes/locked"]
    # deletions are not applied while a folder cannot be listed (its files would look deleted)
    assert report.removed == 0 and any("not looked for" in n for n in report.notes)


def test_unreadable_class_folder_is_reported_as_unreadable(class_folder, tmp_path, monkeypatch):
    real = os.listdir

    def listdir(path="."):
        if os.fspath(path) == os.fspath(class_folder / "yes"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(EmptyDatasetError, match=r"unreadable .*Permission denied") as err:
        ingest(class_folder, tmp_path / "s.zarr", SMALL)
    assert "holds no" not in str(err.value)


@pytest.mark.parametrize(
    ("array", "text"),
    [
        (np.zeros((40, 40), np.uint8), "all black"),
        (np.full((40, 40), 255, np.uint8), "all white"),
        (np.full((40, 40), 77, np.uint8), "every pixel = 77"),
        ((np.arange(300) % 255).astype(np.uint8)[None, :], "300x1 pixels"),
    ],
)
def test_degenerate_images_are_stored_with_a_warning(class_folder, tmp_path, array, text):
    Image.fromarray(array).save(class_folder / "no" / "odd.png")
    report = ingest(class_folder, tmp_path / "s.zarr", SMALL)
    warned = dict(report.warnings)
    assert text in warned["no/odd.png"] and report.total == 13
    with ImageStore.open(tmp_path / "s.zarr") as st:
        rec = next(r for r in st.index.records if r.source == "no/odd.png")
        assert rec.flags and rec.active
    with pytest.raises(BadFilesError, match=text):
        ingest(class_folder, tmp_path / "strict.zarr", IngestConfig(
            preprocess=PreprocessConfig(size=32), strict=True))  # fmt: skip
    assert not (tmp_path / "strict.zarr").exists()


def test_near_identical_slices_under_two_classes_are_reported_as_stored_per_class(
    class_folder, tmp_path, caplog
):
    """The warning names members of every class, with counts, and says they are stored; no log
    line calls them "not stored"."""
    import logging

    rng = np.random.default_rng(8)
    blocks = rng.integers(0, 256, (8, 8)).astype(np.uint8)  # a pattern unlike the other slices
    base = np.kron(blocks, np.ones((12, 12), np.uint8))
    copies = [
        np.clip(base.astype(int) + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
        for _ in range(10)
    ]
    for k, img in enumerate(copies[:7]):
        Image.fromarray(img).save(class_folder / "yes" / f"copy_yes{k}.png")
    for k, img in enumerate(copies[7:]):
        Image.fromarray(img).save(class_folder / "no" / f"copy_no{k}.png")
    args = ["ingest", str(class_folder), "--store", str(tmp_path / "s.zarr"), "--image-size", "32"]
    with caplog.at_level(logging.INFO):
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert not [r for r in caplog.records if "not stored" in r.getMessage()], caplog.text
    stored_part = res.output.split("stored with a warning", 1)[1]
    (line,) = [x for x in stored_part.splitlines() if "near-identical" in x]
    assert "all stored, under 2 classes" in line and "not stored" not in line
    yes = ", ".join(f"yes/copy_yes{k}.png" for k in range(5))
    assert f"7 yes ({yes} and 2 more)" in line, line
    assert "3 no (no/copy_no0.png, no/copy_no1.png, no/copy_no2.png)" in line, line
    with ImageStore.open(tmp_path / "s.zarr") as st:
        assert {r.source for r in st.index.records if r.active} >= {
            f"{c}/copy_{c}{k}.png" for c, m in (("yes", 7), ("no", 3)) for k in range(m)
        }
