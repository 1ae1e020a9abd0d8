"""Ingest: resume, duplicates, bad files, strict mode, and the real set's duplicate groups."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from mriscan.errors import BadFilesError, ConfigError, EmptyDatasetError
from mriscan.ingest import IngestConfig, ingest, source_pseudonym
from mriscan.keys import identifier_key
from mriscan.preprocess import PreprocessConfig
from mriscan.store import ImageStore, verify_store

SMALL = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)


def test_ingest_then_resume_adds_nothing(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    first = ingest(class_folder, store, SMALL)
    assert first.added == {"no": 6, "yes": 6} and first.total == 12 and not first.skipped
    again = ingest(class_folder, store, SMALL)
    assert again.n_added == 0 and again.already_stored == 12 and again.total == 12
    (class_folder / "yes" / "new.png").write_bytes((class_folder / "yes" / "yes1.png").read_bytes())
    shutil.copy(class_folder / "no" / "no0.jpg", class_folder / "no" / "copy of no0.jpg")
    from PIL import Image

    Image.fromarray(np.full((50, 50), 99, np.uint8)).save(class_folder / "no" / "fresh.png")
    third = ingest(class_folder, store, SMALL)
    assert third.added == {"no": 1, "yes": 0} and third.exact_duplicates == 2
    with ImageStore.open(store) as st:
        assert len(st) == 13 and st.class_names == ("no", "yes")
        dups = {d["source"]: d["duplicate_of"] for d in st.index.duplicates}
        assert st.index.records[dups["yes/new.png"]].source == "yes/yes1.png"
        assert st.index.records[dups["no/copy of no0.jpg"]].source == "no/no0.jpg"
        rec = next(r for r in st.index.records if r.source == "no/fresh.png")
        assert (rec.height, rec.width, rec.label) == (50, 50, 0)
        assert (st.labels == np.array([r.label for r in st.index.records])).all()
    assert verify_store(store) == []


def test_a_file_name_that_is_not_utf8_is_stored_escaped_and_recognised(class_folder, tmp_path):
    """A Latin-1 file name (bytes that are not UTF-8) used to crash the commit after every
    file was decoded; it is stored as \\xNN text and a re-ingest recognises the file."""
    import os

    os.rename(
        class_folder / "yes" / "yes1.png",
        os.fsdecode(bytes(class_folder / "yes") + b"/caf\xe9.png"),
    )
    store = tmp_path / "s.zarr"
    first = ingest(class_folder, store, SMALL)
    assert first.added == {"no": 6, "yes": 6}
    with ImageStore.open(store) as st:
        assert "yes/caf\\xe9.png" in {r.source for r in st.index.records}
    again = ingest(class_folder, store, SMALL)
    assert again.n_added == 0 and again.already_stored == 12
    assert verify_store(store) == []


def test_a_class_folder_name_that_is_not_utf8_is_refused_before_reading(class_folder, tmp_path):
    import os

    os.rename(class_folder / "no", os.fsdecode(bytes(class_folder) + b"/n\xf6"))
    with pytest.raises(EmptyDatasetError, match=r"n\\xf6/ under .* not valid UTF-8.*[Rr]ename"):
        ingest(class_folder, tmp_path / "s.zarr", SMALL)
    assert not (tmp_path / "s.zarr").exists()


def test_a_broken_link_is_named_and_deleted_files_are_still_retired(class_folder, tmp_path):
    """Only a folder that cannot be listed stops the search for deleted files (its files are
    unknown); a broken link is named, and a file deleted beside it is retired."""
    import os

    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    (class_folder / "no" / "no0.jpg").unlink()
    os.symlink("gone.png", class_folder / "no" / "link.png")
    report = ingest(class_folder, store, SMALL)
    assert report.removed == 1 and report.total == 11
    assert "broken symbolic link: it points to gone.png" in dict(report.skipped)["no/link.png"]
    assert not any("not looked for" in n for n in report.notes)


def _add_bad_files(folder):
    (folder / "yes" / "empty.jpg").write_bytes(b"")
    (folder / "yes" / "notes.jpg").write_text("not an image")
    good = (folder / "no" / "no0.jpg").read_bytes()
    (folder / "no" / "cut.jpg").write_bytes(good[: len(good) // 3])


def test_bad_files_are_skipped_with_reasons(class_folder, tmp_path):
    _add_bad_files(class_folder)
    report = ingest(class_folder, tmp_path / "s.zarr", SMALL)
    reasons = dict(report.skipped)
    assert set(reasons) == {"yes/empty.jpg", "yes/notes.jpg", "no/cut.jpg"}
    assert (
        "empty" in reasons["yes/empty.jpg"]
        and "not a recognised image" in reasons["yes/notes.jpg"]
        and "truncated" in reasons["no/cut.jpg"]
    )
    assert report.total == 12


def test_strict_fails_before_committing(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    _add_bad_files(class_folder)
    from PIL import Image

    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(class_folder / "yes" / "a_new.png")
    # near-identical copies under two classes: refused too, and not said to be "all stored"
    rng = np.random.default_rng(4)
    base = np.kron(rng.integers(0, 256, (8, 8)), np.ones((8, 8)))
    for cls in ("yes", "no"):  # not the same bytes (a label conflict): near-identical
        twin = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(twin).save(class_folder / cls / f"twin_{cls}.png")
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True, batch_size=2)
    with pytest.raises(BadFilesError, match="Nothing was committed") as exc:
        ingest(class_folder, store, strict)
    assert "near-identical slices under 2 classes" in str(exc.value)
    assert "all stored" not in str(exc.value)
    with ImageStore.open(store) as st:
        assert len(st) == 12
    assert verify_store(store) == []


def test_empty_and_single_class_are_clear_errors(tmp_path):
    (tmp_path / "raw" / "yes").mkdir(parents=True)
    with pytest.raises(EmptyDatasetError, match="at least two class sub-folders"):
        ingest(tmp_path / "raw", tmp_path / "s.zarr", SMALL)
    with pytest.raises(EmptyDatasetError, match="does not exist"):
        ingest(tmp_path / "nothing", tmp_path / "s.zarr", SMALL)


def test_mismatched_preprocessing_is_refused(class_folder, tmp_path):
    ingest(class_folder, tmp_path / "s.zarr", SMALL)
    other = IngestConfig(preprocess=PreprocessConfig(size=64))
    with pytest.raises(ConfigError, match=r"size 32 \(asked: 64\)\. .*--image-size 32"):
        ingest(class_folder, tmp_path / "s.zarr", other)


def test_a_second_dataset_is_refused_unless_merged(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    other = tmp_path / "other"
    shutil.copytree(class_folder, other)
    from PIL import Image

    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(other / "no" / "extra.png")
    with pytest.raises(ConfigError, match="would mix two datasets") as err:
        ingest(other, store, SMALL)
    assert str(other.resolve()) in str(err.value) and "--merge" in str(err.value)
    assert "1 folder(s) recorded by pseudonym only" in str(err.value)
    with ImageStore.open(store) as st:  # refused before anything was written
        first = (source_pseudonym(identifier_key(), str(class_folder.resolve())),)
        assert len(st) == 12 and st.index.sources == first
    merged = ingest(other, store, dataclasses.replace(SMALL, merge=True))
    assert merged.n_added == 1
    with ImageStore.open(store) as st:
        assert st.index.sources == (
            *first,
            source_pseudonym(identifier_key(), str(other.resolve())),
        )
    assert verify_store(store) == []


@pytest.mark.slow
def test_real_set_duplicate_groups(real_data, tmp_path):
    report = ingest(real_data, tmp_path / "real.zarr", IngestConfig())
    assert report.total + report.exact_duplicates == 253 and not report.skipped
    assert 180 <= report.duplicate_groups <= 215
    with ImageStore.open(tmp_path / "real.zarr") as st:
        group_of = {r.source: r.group for r in st.index.records}
        for d in st.index.duplicates:
            group_of[d["source"]] = st.index.records[d["duplicate_of"]].group
        assert group_of["yes/Y20.jpg"] == group_of["yes/Y92.png"]
        assert group_of["no/no 923.jpg"] == group_of["no/no.jpg"]
        assert group_of["yes/Y1.jpg"] != group_of["no/no.jpg"]
        # groups never mix classes in this set
        labels = st.labels
        for g in set(st.groups.tolist()):
            assert len(set(labels[st.groups == g].tolist())) == 1
    assert verify_store(tmp_path / "real.zarr") == []


def test_ingest_groups_old_and_new_slices_together(class_folder, tmp_path):
    from PIL import Image

    from mriscan.duplicates import duplicate_groups

    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    # a near-copy of an already stored slice arrives in a later run: it joins that slice's group
    img = np.asarray(Image.open(class_folder / "yes" / "yes2.jpg").convert("L")).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(class_folder / "yes" / "near copy.png")
    assert ingest(class_folder, store, SMALL).n_added == 1
    with ImageStore.open(store) as st:
        np.testing.assert_array_equal(st.groups, duplicate_groups(st.signatures()))
        src = [r.source for r in st.index.records]
        assert st.groups[src.index("yes/near copy.png")] == st.groups[src.index("yes/yes2.jpg")]


def test_a_store_inside_the_data_folder_is_refused(class_folder, tmp_path):
    """`ingest small2 --store small2/st.zarr` was accepted, and the next ingest read the store
    as a class folder (tester31): refused before anything is written, in the folder itself,
    below it, or below a class folder; beside it is fine."""
    for inside in (class_folder / "st.zarr", class_folder / "yes" / "st.zarr", class_folder):
        with pytest.raises(ConfigError, match="lies inside the data folder"):
            ingest(class_folder, inside, SMALL)
        assert not (class_folder / "st.zarr").exists()
    assert ingest(class_folder, tmp_path / "beside.zarr", SMALL).total == 12
    with pytest.raises(ConfigError, match=r"beside\.zarr is a store, not class folders"):
        ingest(tmp_path / "beside.zarr", tmp_path / "other.zarr", SMALL)


def test_a_store_inside_a_folder_a_manifest_lists_is_refused(class_folder, tmp_path):
    """tester32: a manifest row may name a folder, and a store inside it was accepted; the
    next ingest of the manifest read the store's files as inputs. Refused before anything is
    written; a store beside the manifest's files, or in the manifest's own folder, is fine."""
    manifest = class_folder / "list.csv"
    manifest.write_text("path,label\nyes,yes\nno/no0.jpg,no\nno/no1.png,no\n")
    with pytest.raises(ConfigError, match=r"lies inside a folder that the manifest .*list\.csv"):
        ingest(manifest, class_folder / "yes" / "st.zarr", SMALL)
    assert not (class_folder / "yes" / "st.zarr").exists()
    assert ingest(manifest, class_folder / "no" / "st.zarr", SMALL).total == 8
    assert ingest(manifest, class_folder / "st.zarr", SMALL).total == 8
    # that store, inside the class-folder tree, is named as a store by an ingest of the tree
    # (tester33: its chunk files were listed as bad inputs)
    with pytest.raises(EmptyDatasetError, match=r"^st\.zarr under .* is a store, not a class"):
        ingest(class_folder, tmp_path / "other.zarr", SMALL)
