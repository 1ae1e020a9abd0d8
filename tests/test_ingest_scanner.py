"""Ingest of scanner data: DICOM series, multi-frame, NIfTI, manifests; privacy; patient groups;
bad scanner inputs each named with nothing committed half-way; old (format 1) stores."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.pixels import get_decoder

from mriscan.cli import main
from mriscan.duplicates import duplicate_groups
from mriscan.errors import BadFilesError, StoreCorruptError
from mriscan.ingest import IngestConfig, ingest, source_pseudonym
from mriscan.keys import identifier_key, key_fingerprint
from mriscan.preprocess import PreprocessConfig
from mriscan.splits import kfold_indices, union_groups
from mriscan.store import FORMAT_VERSION, ImageStore, verify_store
from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    stack_to_ras,
    write_dicom_series,
    write_nifti,
)

SMALL = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
# made-up identifying values: none may reach the store or a report
SECRETS = ("Doe", "Jane", "19700101", "FAKE-0001", "Roe", "Richard", "Fictional", "Smith")


def _plain_slice() -> np.ndarray:
    """A 40×40 uint8 slice with structure (a ramp under mild noise): not flagged as noise."""
    ramp = np.add.outer(np.arange(40), np.arange(40)) * 2.5
    return (ramp + np.random.default_rng(1).random((40, 40)) * 30).astype(np.uint8)


def _patient(root: Path, cls: str, pid: str, name: str, seed: int, series: int = 1) -> None:
    """``series`` DICOM series of one made-up patient under root/cls/<name>/."""
    p = FakePatient(patient_id=pid, name=name.replace("_", "^"), birth_date="19700101")
    for k in range(series):
        stack = phantom_volume(seed + k, n_slices=4, canvas=32, tumor=cls == "yes")
        write_dicom_series(
            root / cls / name / f"series{k}", stack, patient=p, series_number=k + 1, seed=seed
        )


@pytest.fixture
def scanner_root(tmp_path: Path) -> Path:
    """yes/: patient Doe_Jane (2 series of 4) + a NIfTI named after a patient; no/: patient
    FAKE-0002 (one multi-frame file of 4 frames) + 2 PNGs."""
    root = tmp_path / "scans"
    _patient(root, "yes", "FAKE-0001", "Doe_Jane", seed=1, series=2)
    vol = phantom_volume(9, n_slices=6, canvas=32, tumor=True)
    write_nifti(root / "yes" / "Roe_Richard_19700101.nii.gz", stack_to_ras(vol))
    p2 = FakePatient(patient_id="FAKE-0002", name="Roe^Richard")
    write_dicom_series(
        root / "no" / "Roe_Richard", phantom_volume(5, n_slices=4, canvas=32),
        patient=p2, multiframe=True, suffix="",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((40, 40)) * 200).astype(np.uint8)
        Image.fromarray(img).save(root / "no" / f"plain{i}.png")
    return root


def test_scanner_folders_become_slices_with_groups_and_no_identity(scanner_root, tmp_path):
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(
        main, ["ingest", str(scanner_root), "--store", str(store), "--image-size", "32"]
    )
    assert res.exit_code == 0, res.output
    with ImageStore.open(store) as st:
        recs = st.index.records
        kinds = [r.kind for r in recs]
        assert kinds.count("dicom") == 8 + 4 and kinds.count("image") == 2
        assert 1 <= kinds.count("nifti") <= 6
        assert st.salt is None and st.key_id == key_fingerprint(identifier_key())
        dicom = [r for r in recs if r.kind == "dicom"]
        assert all(r.source.startswith("dicom/") and "#" in r.source for r in dicom)
        assert {r.window for r in dicom} == {"header"} and {r.plane for r in dicom} == {"axial"}
        assert {r.window for r in recs if r.kind == "nifti"} == {"percentile"}
        assert all(r.group_key == "" and r.window == "" for r in recs if r.kind == "image")
        # one patient = one split group, across both of her series
        doe = [r for r in dicom if r.label == 1]
        assert len({r.group_key for r in doe}) == 1 and doe[0].group_key.startswith("patient:")
        assert len({r.group for r in doe}) == 1
        roe = [r for r in dicom if r.label == 0]
        assert len({r.group for r in roe}) == 1 and roe[0].group != doe[0].group
        vol = [r for r in recs if r.kind == "nifti"]
        assert len({r.group for r in vol}) == 1 and vol[0].group_key.startswith("volume:")
    index_text = (store / "index.json").read_text()
    for secret in SECRETS:
        assert secret.lower() not in index_text.lower(), secret
        assert secret.lower() not in res.output.lower(), secret
    info = CliRunner().invoke(main, ["info", "--store", str(store), "--json"])
    assert info.exit_code == 0 and not any(s in info.output for s in SECRETS)
    again = ingest(scanner_root, store, SMALL)
    assert again.n_added == 0 and again.already_stored == 8 + 1 + 1 + 2
    assert verify_store(store) == []


def test_no_input_path_is_stored_and_reingest_still_recognises_the_files(tmp_path):
    """A raw folder whose path names a (made-up) patient: the store records the folder only by
    a salted pseudonym, so neither its path nor the name is in any file of the store or in
    ``info``; the same folder ingested again is recognised (nothing added); a store that an
    older mriscan wrote with the plain path keeps working (and gains no second entry)."""
    root = tmp_path / "Doe^Jane FAKE-0001 19700101" / "export"
    _patient(root, "yes", "FAKE-0001", "Doe_Jane", seed=1)
    _patient(root, "no", "FAKE-0002", "Roe_Richard", seed=5)
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(
        main, ["ingest", str(root), "--store", str(store), "--image-size", "32"]
    )
    assert res.exit_code == 0, res.output
    absolute = str(root.resolve())
    leaks = [absolute, "Doe^Jane FAKE-0001", *SECRETS]
    for f in (p for p in store.rglob("*") if p.is_file()):
        data = f.read_bytes().lower()
        for text in leaks:
            assert text.lower().encode() not in data, (f.relative_to(store), text)
    info = CliRunner().invoke(main, ["info", "--store", str(store), "--json"])
    assert info.exit_code == 0 and not any(t.lower() in info.output.lower() for t in leaks)
    with ImageStore.open(store) as st:
        assert st.index.sources == (source_pseudonym(identifier_key(), absolute),)
        n = len(st)
    again = ingest(root, store, SMALL)
    assert again.n_added == 0 and again.already_stored == 8 and again.total == n
    # an older mriscan's store: the plain path in sources, file ids made from it
    index = json.loads((store / "index.json").read_text())
    index["sources"] = [absolute]
    (store / "index.json").write_text(json.dumps(index))
    old = ingest(root, store, SMALL)
    assert old.n_added == 0 and old.already_stored == 8 and old.total == n
    with ImageStore.open(store) as st:
        assert st.index.sources == (absolute,)


def test_shipped_mr_small_and_nibabel_example(tmp_path):
    root = tmp_path / "shipped"
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", root / "yes" / "MR_small.dcm")
    example = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    shutil.copy(example, root / "no" / "example4d.nii.gz")
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    assert report.added["yes"] == 1 and report.added["no"] >= 1 and not report.skipped
    with ImageStore.open(tmp_path / "s.zarr") as st:
        mr = [r for r in st.index.records if r.kind == "dicom"]
        assert mr[0].window == "header" and (mr[0].height, mr[0].width) == (64, 64)


def _bad_inputs(root: Path) -> dict[str, str]:
    """Add one of each bad scanner input under root/no/; return {relative name: reason part}."""
    no = root / "no"
    sr = PYDICOM_FILES / "test-SR.dcm"
    shutil.copy(sr, no / "report.dcm")
    data = write_dicom_series(no / "cut", phantom_volume(2, n_slices=1, canvas=24))[0].read_bytes()
    (no / "cut" / "IM0001.dcm").write_bytes(data[: len(data) // 2])
    shutil.copy(PYDICOM_FILES / "MR_small_jp2klossless.dcm", no / "j2k.dcm")
    good = write_nifti(no / "broken.nii", stack_to_ras(phantom_volume(2, n_slices=3, canvas=16)))
    raw = bytearray(good.read_bytes())
    raw[344:348] = b"xx1\x00"
    good.write_bytes(bytes(raw))
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.int16), np.eye(4)), no / "empty.nii")
    # one series whose files disagree in size (same patient, series number and seed)
    p = FakePatient(patient_id="FAKE-0003")
    write_dicom_series(no / "mixed", phantom_volume(4, n_slices=2, canvas=24), patient=p, seed=3)
    write_dicom_series(
        no / "mixed" / "more", phantom_volume(4, n_slices=2, canvas=32), patient=p, seed=3
    )
    return {
        "no/cut/IM0001.dcm": "truncated",
        "no/j2k.dcm": "pylibjpeg-openjpeg",
        "no/broken.nii": "broken or truncated header",
        "no/empty.nii": "zero-size volume",
        "no/mixed/IM0001.dcm": "mixes slice sizes",
        "no/mixed/more/IM0002.dcm": "mixes slice sizes",
    }


def test_bad_scanner_inputs_are_named_and_never_half_committed(scanner_root, tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    first = ingest(scanner_root, store, SMALL)
    expected = _bad_inputs(scanner_root)
    ts = pydicom.dcmread(scanner_root / "no" / "j2k.dcm").file_meta.TransferSyntaxUID
    monkeypatch.setattr(get_decoder(ts), "_available", {})  # as if the plugin were missing
    with pytest.raises(BadFilesError, match="Nothing was committed"):
        ingest(scanner_root, store, IngestConfig(preprocess=PreprocessConfig(size=32), strict=True))
    with ImageStore.open(store) as st:
        assert len(st) == first.total
    report = ingest(scanner_root, store, SMALL)
    reasons = dict(report.skipped)
    for name, part in expected.items():
        assert part in reasons[name], (name, reasons.get(name))
    assert len([n for n in reasons if n.startswith("no/mixed/")]) == 4  # the whole series
    assert [n for n, _ in report.not_images] == ["no/report.dcm"]
    assert report.not_images[0][1].startswith("not an image:")
    assert report.n_added == 0 and report.total == first.total
    assert verify_store(store) == []


def test_a_new_file_of_another_size_in_a_stored_series_is_refused(scanner_root, tmp_path):
    """Series sizes are checked on the slices as read, against the stored slices of the series
    too; a mismatch redoes the run with the header check, so nothing is half-committed."""
    store = tmp_path / "s.zarr"
    first = ingest(scanner_root, store, SMALL)
    p = FakePatient(patient_id="FAKE-0003")
    write_dicom_series(scanner_root / "no" / "s", phantom_volume(4, n_slices=2, canvas=24),
                       patient=p, seed=3)  # fmt: skip
    second = ingest(scanner_root, store, SMALL)
    assert second.n_added == 2 and not second.skipped
    # the same series (patient, number, seed) again, one slice of another size, in a new folder
    write_dicom_series(scanner_root / "no" / "t", phantom_volume(4, n_slices=3, canvas=32),
                       patient=p, seed=3)  # fmt: skip
    (scanner_root / "no" / "t" / "IM0001.dcm").unlink()
    (scanner_root / "no" / "t" / "IM0002.dcm").unlink()
    third = ingest(scanner_root, store, SMALL)
    reasons = dict(third.skipped)
    assert list(reasons) == ["no/t/IM0003.dcm"]
    assert "mixes slice sizes" in reasons["no/t/IM0003.dcm"]
    assert third.n_added == 0 and third.total == first.total + 2
    assert verify_store(store) == []


def test_a_file_without_pixel_data_is_no_size_of_a_mixed_series(tmp_path):
    """N4: a series that really mixes two sizes and holds an instance without pixel data: the
    mixed-size reason counts only the files that give slices (3 of 48x48, 1 of 40x40, not 4 of
    48x48), and the file without pixel data keeps its own reason. The header-only check
    (ingest's redo, audit) agrees with the check on the slices as read."""
    from mriscan.io import SourceFile
    from mriscan.readers import check_series_sizes
    from mriscan.scan_predict import read_inputs

    raw = tmp_path / "raw"
    files = write_dicom_series(raw / "yes" / "s", phantom_volume(1, n_slices=5, canvas=48),
                               patient=FakePatient(patient_id="P-1"))  # fmt: skip
    write_dicom_series(raw / "no" / "t", phantom_volume(2, n_slices=2, canvas=48),
                       patient=FakePatient(patient_id="P-2"), seed=2)  # fmt: skip
    ds = pydicom.dcmread(files[0])
    small = ds.pixel_array[:40, :40].copy()
    ds.Rows = ds.Columns = 40
    ds.PixelData = small.tobytes()
    ds.save_as(files[0])
    ds = pydicom.dcmread(files[1])
    del ds.PixelData
    ds.save_as(files[1])
    report = ingest(raw, tmp_path / "s.zarr", SMALL)
    reasons = dict(report.skipped)
    counts = "its series mixes slice sizes: 3 files of 48x48, 1 file of 40x40; this file is "
    assert reasons["yes/s/IM0001.dcm"].startswith(counts + "40x40;")
    for name in ("IM0003", "IM0004", "IM0005"):
        assert reasons[f"yes/s/{name}.dcm"].startswith(counts + "48x48 (the series' most")
    assert "without pixel data" in reasons["yes/s/IM0002.dcm"]
    assert report.n_added == 2
    reads = read_inputs([SourceFile(f, "dicom") for f in files], workers=1)
    assert check_series_sizes(files) == {r.path: r.error for r in reads if r.path != files[1]}


def test_manifest_with_groups(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    rng = np.random.default_rng(1)
    rows = ["path,label,group"]
    for i in range(6):
        img = (rng.random((40, 40)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"s{i}.png")
        rows.append(f"s{i}.png,{'tumor' if i < 3 else 'healthy'},P{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(
        main, ["ingest", "--manifest", str(root / "labels.csv"), "--store", str(store),
               "--image-size", "32"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with ImageStore.open(store) as st:
        assert st.class_names == ("healthy", "tumor")
        by = {r.source: r for r in st.index.records}
        assert by["s0.png"].group == by["s1.png"].group != by["s2.png"].group
        assert by["s2.png"].group == by["s3.png"].group  # P1 spans both labels
        assert all(r.group_key.startswith("manifest:") for r in st.index.records)
    # the group column edited: groups follow on re-ingest
    (root / "labels.csv").write_text("\n".join(rows).replace(",P0", ",P9") + "\n")
    ingest(root / "labels.csv", store, SMALL)
    with ImageStore.open(store) as st:
        by = {r.source: r for r in st.index.records}
        assert by["s0.png"].group_key != by["s2.png"].group_key
    res = CliRunner().invoke(main, ["ingest", str(root), "--manifest", str(root / "labels.csv")])
    assert res.exit_code != 0 and "either RAW_DIR or --manifest" in res.output


def _legacy_index(store: Path, version: int, folder: Path) -> dict:
    """Rewrite a store as an older mriscan left it: every record inline in index.json, the
    raw ``folder``'s plain absolute path in ``sources``."""
    with ImageStore.open(store) as st:
        index = st.index.to_dict()
    index["format_version"] = version
    index["sources"] = [str(folder.resolve())]
    shutil.rmtree(store / "index")
    (store / "index.json").write_text(json.dumps(index))
    return index


def test_format_1_store_is_read_and_upgraded(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    index = _legacy_index(store, 1, class_folder)
    del index["salt"]
    for r in index["records"]:
        for k in ("kind", "file_id", "origin", "group_key", "window", "plane"):
            r.pop(k)
    (store / "index.json").write_text(json.dumps(index))
    with ImageStore.open(store) as st:
        assert st.salt is None and len(st) == 12 and st.index.records[0].origin == 0
    (class_folder / "no" / "no0.jpg").unlink()
    report = ingest(class_folder, store, SMALL)  # the v1 records are matched by their path
    assert report.n_added == 0 and report.removed == 1 and report.already_stored == 11
    with ImageStore.open(store) as st:
        assert st.key_id and st.index.format_version == FORMAT_VERSION
        assert all(r.file_id for r in st.index.records)
    assert json.loads((store / "index.json").read_text())["format_version"] == FORMAT_VERSION
    assert verify_store(store) == []


def test_format_2_store_is_read_as_is_and_migrated(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    with ImageStore.open(store) as st:
        records, groups, labels = list(st.index.records), st.groups.copy(), st.labels.copy()
        dups = list(st.index.duplicates)
    _legacy_index(store, 2, class_folder)
    with ImageStore.open(store) as st:  # read as it is, nothing written
        assert st.index.format_version == 2 and list(st.index.records) == records
        assert st.groups.tolist() == groups.tolist() and st.labels.tolist() == labels.tolist()
    assert verify_store(store) == []
    assert not (store / "index").exists()
    r = CliRunner().invoke(main, ["migrate", "--store", str(store)])
    assert r.exit_code == 0 and f"index format 2 -> {FORMAT_VERSION}" in r.output, r.output
    with ImageStore.open(store) as st:
        assert st.index.format_version == FORMAT_VERSION and list(st.index.records) == records
        assert st.groups.tolist() == groups.tolist() and list(st.index.duplicates) == dups
    assert "records" not in json.loads((store / "index.json").read_text())
    assert verify_store(store) == []
    r = CliRunner().invoke(main, ["migrate", "--store", str(store)])
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_unknown_format_is_refused_with_how_to_convert(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    index = json.loads((store / "index.json").read_text())
    index["format_version"] = 99
    (store / "index.json").write_text(json.dumps(index))
    with pytest.raises(StoreCorruptError, match=r"reads versions 1 to 4\. Re-ingest"):
        ImageStore.open(store)


def canonical(groups: np.ndarray) -> np.ndarray:
    """Group ids renumbered in order of first appearance (to compare partitions)."""
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(g), len(order)) for g in groups])


def _series_of(st: ImageStore) -> dict[int, str]:
    """position -> DICOM series pseudonym of every committed slice."""
    return {r.position: r.source.split("/")[1] for r in st.index.records if r.kind == "dicom"}


def test_manifest_groups_join_patients_and_series_never_split_them(tmp_path):
    """One manifest group per file (finding of issue 18's review): the groups must join the
    patient/series keys, so a series or patient never spans two folds; a later run adding a
    series of a stored patient joins that patient's group (incremental links through stored
    records that carry two keys)."""
    root = tmp_path / "m"
    files = {}
    for p in range(6):
        cls = "yes" if p % 2 else "no"
        patient = FakePatient(patient_id=f"FAKE-{p:04d}", name=f"Doe^P{p}")
        stack = phantom_volume(p, n_slices=4, canvas=32, tumor=cls == "yes")
        for f in write_dicom_series(root / f"p{p}", stack, patient=patient, seed=p):
            files[f] = cls
    rows = ["path,label,group"] + [
        f"{f.relative_to(root).as_posix()},{c},G{k}" for k, (f, c) in enumerate(files.items())
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.zarr"
    ingest(root / "labels.csv", store, SMALL)
    with ImageStore.open(store) as st:
        series = _series_of(st)
        groups = st.groups
        assert len(series) == 24
        by_series: dict[str, set[int]] = {}
        for pos, s in series.items():
            by_series.setdefault(s, set()).add(int(groups[pos]))
        assert all(len(g) == 1 for g in by_series.values()), by_series
        assert len(set(groups.tolist())) >= 3
        folds = kfold_indices(st.labels, groups, n_folds=3, seed=0)
        for s in by_series:
            assert len({int(folds[p]) for p, v in series.items() if v == s}) == 1
        first = {s: next(iter(g)) for s, g in by_series.items()}
    # a second series of patient 1, added to the manifest later (incremental linking)
    patient = FakePatient(patient_id="FAKE-0001", name="Doe^P1")
    more = write_dicom_series(
        root / "p1b", phantom_volume(77, n_slices=4, canvas=32, tumor=True),
        patient=patient, series_number=2, seed=77,
    )  # fmt: skip
    rows += [f"{f.relative_to(root).as_posix()},yes,H{k}" for k, f in enumerate(more)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    ingest(root / "labels.csv", store, SMALL)
    with ImageStore.open(store) as st:
        groups = st.groups
        recs = st.index.records
        new = [r for r in recs if _series_of(st)[r.position] not in first]
        assert len(new) == 4
        patient_key = next(k for k in new[0].group_key.split() if k.startswith("patient:"))
        same_patient = [r for r in recs if patient_key in r.group_key.split() and r not in new]
        assert len(same_patient) == 4  # the stored series of FAKE-0001
        joined = {int(groups[r.position]) for r in new + same_patient}
        assert joined == {int(groups[new[0].position])}
        keys = [r.group_key for r in st.index.records]
        assert all(len(k.split()) == 2 for k in keys)  # manifest group + patient
        np.testing.assert_array_equal(
            canonical(groups), canonical(union_groups(duplicate_groups(st.signatures()), keys))
        )


def test_placeholder_patient_ids_do_not_merge_studies(tmp_path):
    """Six studies of both classes whose Patient ID is a placeholder ("ANONYMOUS", "0", ...):
    each study is its own split group, and the report lists them with a warning."""
    root = tmp_path / "scans"
    ids = ("ANONYMOUS", "ANONYMOUS", "0", "unknown", "N/A", "XXXXXX")
    for k, pid in enumerate(ids):
        cls = "yes" if k % 2 else "no"
        write_dicom_series(
            root / cls / f"study{k}", phantom_volume(10 + k, n_slices=2, canvas=32,
                                                     tumor=cls == "yes"),
            patient=FakePatient(patient_id=pid), seed=k,
        )  # fmt: skip
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["ingest", str(root), "--store", str(store),
                                    "--image-size", "32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    with ImageStore.open(store) as st:
        keys = [r.group_key for r in st.index.records]
    assert all(k.startswith("study:") for k in keys) and len(set(keys)) == 6
    assert "placeholder Patient ID" in res.output and "'ANONYMOUS': 4 file(s)" in res.output
    report = ingest(root, tmp_path / "t.zarr", SMALL)
    assert len(report.placeholder_ids) == 12
    assert {v for _, v in report.placeholder_ids} == {"ANONYMOUS", "0", "unknown", "N/A", "XXXXXX"}


def test_dicom_without_patient_id_or_any_uid_is_listed_with_how_it_was_grouped(tmp_path):
    """No Patient ID element: grouped by study; no Patient ID, Study or Series UID: each file
    alone. Both are listed in the placeholder warning (count, names, how grouped), pointing
    to a manifest group; a file with a real Patient ID is not."""
    from mriscan.dicom import MISSING_PATIENT_ID

    root = tmp_path / "scans"
    no_pid = write_dicom_series(root / "yes" / "a", phantom_volume(1, n_slices=2, canvas=32),
                                patient=FakePatient("P1"), seed=1)  # fmt: skip
    no_ids = write_dicom_series(root / "yes" / "b", phantom_volume(2, n_slices=3, canvas=32),
                                patient=FakePatient("P2"), seed=2)  # fmt: skip
    write_dicom_series(root / "no" / "c", phantom_volume(3, n_slices=2, canvas=32),
                       patient=FakePatient("P3"), seed=3)  # fmt: skip
    for f in no_pid + no_ids:
        ds = pydicom.dcmread(f)
        del ds.PatientID
        if f in no_ids:
            del ds.StudyInstanceUID, ds.SeriesInstanceUID
        ds.save_as(f)
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    study, alone = MISSING_PATIENT_ID["study"][0], MISSING_PATIENT_ID["instance"][0]
    assert sorted(report.placeholder_ids) == sorted(
        [(f"yes/a/{f.name}", study) for f in no_pid] + [(f"yes/b/{f.name}", alone) for f in no_ids]
    )
    with ImageStore.open(tmp_path / "s.zarr") as st:
        keys = sorted(r.group_key.split(":")[0] for r in st.index.records)
    assert keys == ["instance"] * 3 + ["patient"] * 2 + ["study"] * 2
    res = CliRunner().invoke(main, ["ingest", str(root), "--store", str(tmp_path / "c.zarr"),
                                    "--image-size", "32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "5 DICOM file(s) with a placeholder Patient ID or none" in res.output
    assert "manifest's group column" in res.output
    assert "no Patient ID: 2 file(s), grouped by their study: yes/a/IM0001.dcm" in res.output
    assert "no Patient ID, Study or Series Instance UID: 3 file(s), each file a group" in res.output


def test_is_placeholder_patient_id():
    from mriscan.dicom import is_placeholder_patient_id

    for v in ("ANONYMOUS", " anon ", "", "0", "0000", "UNKNOWN", "NONE", "N/A", "---"):
        assert is_placeholder_patient_id(v), v
    for v in ("100017", "FAKE-0001", "A1", "anonymous-7"):
        assert not is_placeholder_patient_id(v), v


def test_empty_files_and_broken_nifti_header_are_reported_once(tmp_path, caplog):
    """0-byte files are "empty", not "same bytes as" each other; a NIfTI whose sizeof_hdr is
    broken is refused (nibabel would silently fix it); each reason is shown once: in the report,
    not also as a log warning."""
    import logging
    import struct

    root = tmp_path / "scans"
    _patient(root, "yes", "FAKE-0001", "Doe_Jane", seed=1)
    _patient(root, "no", "FAKE-0002", "Roe_Richard", seed=5)
    (root / "no" / "empty.dcm").write_bytes(b"")
    (root / "no" / "empty.nii.gz").write_bytes(b"")
    vol = phantom_volume(3, n_slices=6, canvas=32)
    write_nifti(root / "no" / "broken.nii", stack_to_ras(vol))
    data = bytearray((root / "no" / "broken.nii").read_bytes())
    data[:4] = struct.pack("<i", 0)
    (root / "no" / "broken.nii").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        report = ingest(root, tmp_path / "s.zarr", SMALL)
    reasons = dict(report.skipped)
    assert reasons["no/empty.dcm"].startswith("empty file (0 bytes)")
    assert reasons["no/empty.nii.gz"].startswith("empty file (0 bytes)")
    assert "sizeof_hdr = 0" in reasons["no/broken.nii"]
    assert not [r for r in caplog.records if "empty.dcm" in r.getMessage()]
    assert not [r for r in caplog.records if r.name.startswith("nibabel")]


def test_volumes_are_appended_as_each_is_read_in_listing_order(tmp_path, monkeypatch):
    """Slices go to the store every ``batch_size`` slices, not every ``batch_size`` files: each
    volume of 6 kept slices (batch_size 4) is appended on its own, while later volumes are still
    being read, and the positions follow the listing order whatever the threads' timing."""
    root = tmp_path / "vols"
    for v in range(5):
        cls = "yes" if v < 3 else "no"
        (root / cls).mkdir(parents=True, exist_ok=True)
        vol = phantom_volume(20 + v, n_slices=6, canvas=32, tumor=cls == "yes")
        write_nifti(root / cls / f"v{v}.nii.gz", stack_to_ras(vol))
    calls = []
    real_append = ImageStore.append

    def append(self, images, labels, records=None, **kw):
        calls.append([r["file_id"] for r in records])
        return real_append(self, images, labels, records, **kw)

    monkeypatch.setattr(ImageStore, "append", append)
    cfg = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)
    report = ingest(root, tmp_path / "s.zarr", cfg)
    n_vol = [len(c) for c in calls]
    assert report.n_added == sum(n_vol) and len(calls) == 5  # one append per volume
    assert all(len(set(c)) == 1 for c in calls)  # ... holding that volume's slices only
    with ImageStore.open(tmp_path / "s.zarr") as st:
        assert [r.file_id for r in st.index.records] == [i for c in calls for i in c]
    monkeypatch.undo()  # the same folder on one thread, one batch: the same store
    serial = IngestConfig(preprocess=PreprocessConfig(size=32), workers=1, batch_size=64)
    assert ingest(root, tmp_path / "t.zarr", serial).n_added == report.n_added
    with ImageStore.open(tmp_path / "s.zarr") as a, ImageStore.open(tmp_path / "t.zarr") as b:
        n = len(a)
        np.testing.assert_array_equal(a.read_batch(range(n))[0], b.read_batch(range(n))[0])
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.groups, b.groups)


def _sop_copies(root: Path, placed: dict[str, str]) -> None:
    """pydicom's MR_small in other encodings (one SOP instance): ``placed`` maps a class to the
    encodings under it (``"-"``: MR_small.dcm itself, ``"bigendian"``, ``"RLE"``,
    ``"implicit"``); a PNG in no/."""
    for cls, names in placed.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for n in names.split():
            src = PYDICOM_FILES / (f"MR_small_{n}.dcm" if n != "-" else "MR_small.dcm")
            shutil.copy(src, root / cls / src.name)
    (root / "no").mkdir(parents=True, exist_ok=True)
    img = _plain_slice()
    Image.fromarray(img).save(root / "no" / "plain.png")


def test_one_dicom_instance_in_other_encodings_is_stored_once(tmp_path, monkeypatch):
    """Copies of one SOP instance in other transfer syntaxes (other bytes) under one class: one
    sample, the copies recorded as exact duplicates, as predict scores the instance once; a
    re-ingest reads none of them again; a copy added later is a duplicate of the stored one."""
    root = tmp_path / "raw"
    _sop_copies(root, {"yes": "- bigendian RLE"})
    store = tmp_path / "s.zarr"
    report = ingest(root, store, SMALL)
    assert report.added == {"no": 1, "yes": 1} and report.exact_duplicates == 2
    assert not report.skipped and not report.warnings
    with ImageStore.open(store) as st:
        mr = [r for r in st.index.records if r.kind == "dicom"]
        dups = list(st.index.duplicates)
    assert len(mr) == 1 and {d["duplicate_of"] for d in dups} == {mr[0].position}
    assert len(dups) == 2 and all(d["source"].startswith("dicom-file/") for d in dups)

    import mriscan.ingest as ingest_mod

    read = []
    real = ingest_mod.read_input

    def counted(path, *args, **kwargs):
        read.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingest_mod, "read_input", counted)
    again = ingest(root, store, SMALL)
    assert again.n_added == 0 and again.exact_duplicates == 0 and read == []
    with ImageStore.open(store) as st:
        assert len(st) == 2 and len(st.index.duplicates) == 2
    # a copy in yet another encoding, added later: a duplicate of the stored instance
    shutil.copy(PYDICOM_FILES / "MR_small_implicit.dcm", root / "yes" / "implicit.dcm")
    later = ingest(root, store, SMALL)
    assert later.n_added == 0 and later.exact_duplicates == 1 and len(read) == 1
    with ImageStore.open(store) as st:
        assert len(st) == 2 and len(st.index.duplicates) == 3


def test_one_dicom_instance_under_two_classes_is_a_label_conflict(tmp_path):
    """The same SOP instance in other bytes under two classes: every copy is listed as a label
    conflict and none stored (as for the same bytes under two classes), in one run or when a
    copy comes to a stored instance under another class (the stored sample is retired)."""
    root = tmp_path / "raw"
    _sop_copies(root, {"yes": "- bigendian", "no": "RLE"})
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    assert report.added == {"no": 1, "yes": 0} and report.conflicts == 3
    conflicts = dict(report.skipped)
    assert set(conflicts) == {
        "yes/MR_small.dcm",
        "yes/MR_small_bigendian.dcm",
        "no/MR_small_RLE.dcm",
    }
    assert all("label conflict: the same DICOM instance" in v for v in conflicts.values())
    assert "yes/MR_small.dcm (yes)" in conflicts["no/MR_small_RLE.dcm"]
    with ImageStore.open(tmp_path / "s.zarr") as st:
        assert [r.kind for r in st.index.records] == ["image"]

    inc = tmp_path / "inc"
    _sop_copies(inc, {"yes": "-"})
    store = tmp_path / "inc.zarr"
    assert ingest(inc, store, SMALL).added == {"no": 1, "yes": 1}
    shutil.copy(PYDICOM_FILES / "MR_small_RLE.dcm", inc / "no" / "rle.dcm")
    report = ingest(inc, store, SMALL)
    assert report.conflicts == 2 and report.n_added == 0 and report.total == 1
    assert {n for n, _ in report.skipped} == {"yes/MR_small.dcm", "no/rle.dcm"}
    with ImageStore.open(store) as st:
        (mr,) = [r for r in st.index.records if r.kind == "dicom"]
        assert not mr.active and "conflict" in mr.flags


def test_a_conflict_with_a_stored_instance_that_has_recorded_copies_settles_in_one_run(tmp_path):
    """A stored instance with a copy in other bytes recorded as its duplicate (yes: MR_small,
    MR_small_bigendian), then a copy under no: every copy is refused in that run, the stored
    copy of the recorded one is not promoted in its place, and a rerun changes nothing (the
    verifier's N1: each rerun stored and retired another copy, four runs to settle)."""
    inc = tmp_path / "inc"
    _sop_copies(inc, {"yes": "- bigendian"})
    store = tmp_path / "inc.zarr"
    first = ingest(inc, store, SMALL)
    assert first.added == {"no": 1, "yes": 1} and first.exact_duplicates == 1
    shutil.copy(PYDICOM_FILES / "MR_small_RLE.dcm", inc / "no" / "rle.dcm")
    report = ingest(inc, store, SMALL)
    assert report.n_added == 0 and report.total == 1
    assert {n for n, _ in report.skipped} == {
        "yes/MR_small.dcm",
        "yes/MR_small_bigendian.dcm",
        "no/rle.dcm",
    }
    again = ingest(inc, store, SMALL)
    assert again.n_added == 0 and again.total == 1 and again.removed == 0
    with ImageStore.open(store) as st:
        assert not [r for r in st.index.records if r.kind == "dicom" and r.active]


def test_a_byte_conflict_also_refuses_the_instance_s_copies_in_other_bytes(tmp_path):
    """yes/A and no/C are the same bytes (a label conflict found before reading), and yes/R is
    the same instance in another encoding: R goes with them, in a fresh ingest and when A was
    stored before C came (the verifier's NP1: R stayed stored as yes)."""
    raw = tmp_path / "raw"
    _sop_copies(raw, {"yes": "- RLE"})
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", raw / "no" / "C.dcm")
    report = ingest(raw, tmp_path / "s.zarr", SMALL)
    assert {n for n, _ in report.skipped} == {
        "yes/MR_small.dcm",
        "yes/MR_small_RLE.dcm",
        "no/C.dcm",
    }
    assert "its bytes sit under two classes" in dict(report.skipped)["yes/MR_small_RLE.dcm"]
    with ImageStore.open(tmp_path / "s.zarr") as st:
        assert not [r for r in st.index.records if r.kind == "dicom" and r.active]

    inc = tmp_path / "inc"
    _sop_copies(inc, {"yes": "- RLE"})
    store = tmp_path / "inc.zarr"
    assert ingest(inc, store, SMALL).added == {"no": 1, "yes": 1}  # R: a duplicate of A
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", inc / "no" / "C.dcm")
    ingest(inc, store, SMALL)
    again = ingest(inc, store, SMALL)
    assert again.n_added == 0 and again.total == 1
    with ImageStore.open(store) as st:
        assert not [r for r in st.index.records if r.kind == "dicom" and r.active]


def _dicom_folder(root: Path) -> Path:
    """yes/: 2 patients' series of 4 slices + a byte copy of one file; no/: 1 patient."""
    for k, (cls, pid) in enumerate([("yes", "P1"), ("yes", "P2"), ("no", "P3")]):
        stack = phantom_volume(30 + k, n_slices=4, canvas=32, tumor=cls == "yes")
        write_dicom_series(root / cls / pid, stack, patient=FakePatient(patient_id=pid), seed=k)
    first = sorted((root / "yes" / "P1").iterdir())[0]
    shutil.copy(first, root / "yes" / "copy_of_first.dcm")
    return root


@pytest.mark.parametrize("limit", [1, 1 << 30])
def test_dicom_files_read_while_hashed_give_the_store_of_a_plain_read(tmp_path, monkeypatch, limit):
    """A DICOM folder new to the store is read while its files are hashed (``_Prefetch``): the
    hash waits here until 3 files were read, so the reads really overlap. Every file is read at
    most once, and the store equals the one of a run that reads only after hashing: records,
    labels, groups and pixels. ``limit``: the decoded bytes the prefetch may hold (1: it stops
    after one file)."""
    import threading

    import mriscan.ingest as ing

    root = _dicom_folder(tmp_path / "scans")
    reads: list[Path] = []
    three_read = threading.Event()
    real_read, real_hash = ing._read_job, ing.file_sha256_apart

    def read_job(j, *a):
        reads.append(j.path)
        if len(reads) >= (1 if limit == 1 else 3):
            three_read.set()
        return real_read(j, *a)

    def hash_after_reads(paths):
        assert three_read.wait(60)
        return real_hash(paths)

    monkeypatch.setattr(ing, "PREFETCH_BYTES", limit)
    monkeypatch.setattr(ing, "_read_job", read_job)
    monkeypatch.setattr(ing, "file_sha256_apart", hash_after_reads)
    report = ingest(root, tmp_path / "pre.zarr", SMALL)
    # no file twice (a prefetched read is used); the byte copy (listed last) only if the
    # prefetch got that far
    assert len(reads) == len(set(reads)) and len(reads) in ((12,) if limit == 1 else (12, 13))
    monkeypatch.setattr(ing, "_may_prefetch", lambda *a: False)
    plain = ingest(root, tmp_path / "plain.zarr", SMALL)
    assert (report.n_added, report.exact_duplicates) == (plain.n_added, plain.exact_duplicates)
    assert report.n_added == 12 and report.exact_duplicates == 1
    with ImageStore.open(tmp_path / "pre.zarr") as a, ImageStore.open(tmp_path / "plain.zarr") as b:
        assert [r.to_dict() for r in a.index.records] == [r.to_dict() for r in b.index.records]
        np.testing.assert_array_equal(
            a.read_batch(range(len(a)))[0], b.read_batch(range(len(b)))[0]
        )
        np.testing.assert_array_equal(a.groups, b.groups)


def test_only_dicom_folders_new_to_the_store_are_read_while_hashed(tmp_path, monkeypatch):
    """A re-ingest (mostly stored files) and a folder with other kinds of files hash first."""
    import mriscan.ingest as ing

    made = []
    real = ing._Prefetch

    def spy(*a, **k):
        made.append(a)
        return real(*a, **k)

    monkeypatch.setattr(ing, "_Prefetch", spy)
    root = _dicom_folder(tmp_path / "scans")
    ingest(root, tmp_path / "s.zarr", SMALL)
    assert len(made) == 1
    write_dicom_series(root / "no" / "P4", phantom_volume(40, n_slices=4, canvas=32),
                       patient=FakePatient(patient_id="P4"), seed=9)  # fmt: skip
    assert ingest(root, tmp_path / "s.zarr", SMALL).n_added == 4
    assert len(made) == 1  # the re-ingest did not prefetch
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(root / "no" / "plain.png")
    ingest(root, tmp_path / "mixed.zarr", SMALL)
    assert len(made) == 1


def test_an_interrupted_hash_stops_the_prefetch_and_leaves_no_store(tmp_path, monkeypatch):
    import threading

    import mriscan.ingest as ing

    def interrupted(paths):
        raise KeyboardInterrupt

    monkeypatch.setattr(ing, "file_sha256_apart", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(_dicom_folder(tmp_path / "scans"), tmp_path / "s.zarr", SMALL)
    assert not (tmp_path / "s.zarr").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("mriscan-prefetch")]


def _reuse_uid(files: list[Path], uid: str = "1.2.3.4", series: str | None = None) -> None:
    """Give every file the same SOP Instance UID, as a broken anonymiser does (and ``series``
    as Series Instance UID, when given)."""
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = uid
        if series is not None:
            ds.SeriesInstanceUID = series
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(f)


def _reused_uid_root(root: Path) -> list[Path]:
    """yes/: one series of 4 different slices sharing one SOP Instance UID, plus a copy of its
    first file in another encoding (implicit VR: same instance, same pixels); no/: a PNG."""
    stack = phantom_volume(3, n_slices=4, canvas=32, tumor=True)
    files = write_dicom_series(root / "yes" / "series", stack, seed=3)
    _reuse_uid(files)
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    pydicom.dcmwrite(root / "yes" / "zz_implicit.dcm", ds, implicit_vr=True, little_endian=True)
    (root / "no").mkdir(parents=True, exist_ok=True)
    img = _plain_slice()
    Image.fromarray(img).save(root / "no" / "plain.png")
    return files


def test_different_slices_that_share_a_sop_instance_uid_are_each_stored_with_a_warning(tmp_path):
    """A broken anonymiser gave 4 different slices one SOP Instance UID (tester18 M1): each is a
    slice of its own, with a warning naming the file it shares the UID with; a copy of the same
    pixels in other bytes is still an exact duplicate; a re-ingest reads and warns nothing; a
    file of that UID under another class with other pixels is no label conflict; --strict
    refuses the run."""
    root = tmp_path / "raw"
    files = _reused_uid_root(root)
    store = tmp_path / "s.zarr"
    report = ingest(root, store, SMALL)
    assert report.added == {"no": 1, "yes": 4} and report.exact_duplicates == 1
    assert not report.skipped and report.conflicts == 0
    warned = dict(report.warnings)
    first = files[0].relative_to(root).as_posix()
    assert set(warned) == {f.relative_to(root).as_posix() for f in files[1:]}
    assert all(
        w.startswith(f"same SOP Instance UID as {first} but different pixels: stored as a slice")
        and "an anonymiser that reuses UIDs?" in w
        for w in warned.values()
    )
    with ImageStore.open(store) as st:
        mr = [r for r in st.index.records if r.kind == "dicom"]
        assert len(mr) == 4 and len({r.pixel_sha256 for r in mr}) == 4
        assert [d["duplicate_of"] for d in st.index.duplicates] == [mr[0].position]

    again = ingest(root, store, SMALL)
    assert again.n_added == 0 and not again.warnings and again.already_stored == 5

    # another class, the same UID, other pixels again: stored under no/, not a conflict
    other = write_dicom_series(
        root / "no" / "series", phantom_volume(8, n_slices=1, canvas=32), seed=8
    )
    _reuse_uid(other, series=pydicom.dcmread(files[0]).SeriesInstanceUID)
    later = ingest(root, store, SMALL)
    assert later.added == {"no": 1, "yes": 0} and later.conflicts == 0 and not later.skipped
    assert len(later.warnings) == 1 and later.total == 6

    strict = dataclasses.replace(SMALL, strict=True)
    with pytest.raises(BadFilesError, match="different pixels"):
        ingest(root, tmp_path / "strict.zarr", strict)
