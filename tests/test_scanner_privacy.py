"""Scanner files named after a made-up patient: no reason, warning or console line of predict,
evaluate, explain or audit names them (the pseudonym rule of the README's scanner section),
and what does not fit (an image of another modality, an empty Patient ID) is listed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    stack_to_ras,
    write_dicom_series,
    write_nifti,
)

SMALL = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
NAME = "HERNANDEZ_MARIA_1962"


def _mixed_series(folder: Path) -> list[Path]:
    """One series in ``folder``, files named after the patient: 3 of 24x24, 2 of 32x32."""
    p = FakePatient(patient_id="MRN-4711", name="Hernandez^Maria", birth_date="19620101")
    files = write_dicom_series(folder / "a", phantom_volume(4, n_slices=3, canvas=24), patient=p)
    files += write_dicom_series(folder / "b", phantom_volume(4, n_slices=2, canvas=32), patient=p)
    out = []
    for k, f in enumerate(files):
        out.append(f.rename(folder / f"{NAME}_{k}.dcm"))
    (folder / "a").rmdir()
    (folder / "b").rmdir()
    return out


def test_mixed_size_reason_names_no_file_in_predict_or_evaluate_rows(tmp_path):
    """The reason of a series that mixes slice sizes counts the sizes and gives each file its
    own; no file name, so predict's rows and evaluate's rows (which may name a file only by
    pseudonym) hold none either, while ingest still lists each file by path."""
    from mriscan.evaluate import unreadable_rows
    from mriscan.io import SourceFile
    from mriscan.scan import new_salt
    from mriscan.scan_predict import read_inputs

    files = _mixed_series(tmp_path / "raw" / "yes" / NAME)
    write_dicom_series(tmp_path / "raw" / "no" / "s", phantom_volume(5, n_slices=2, canvas=24))
    reads = read_inputs([SourceFile(f, "dicom") for f in files], workers=1)
    errors = [r.error for r in reads]
    assert all(e and "3 files of 24x24, 2 files of 32x32" in e for e in errors), errors
    assert all("HERNANDEZ" not in e for e in errors)
    assert [e.split("this file is ")[1][:5] for e in errors] == ["24x24"] * 3 + ["32x32"] * 2

    report = ingest(tmp_path / "raw", tmp_path / "s.zarr", SMALL)
    skipped = [(n, r) for n, r in report.skipped if NAME in n]
    assert len(skipped) == 5  # ingest's own console lists the files by path
    rows = unreadable_rows(tmp_path / "raw", report.skipped, salt=new_salt())
    assert len(rows) == 5
    for row in rows:
        assert "HERNANDEZ" not in row["path"] + row["error"], row
        assert "mixes slice sizes" in row["error"]


def _four_d(path: Path) -> Path:
    stack = phantom_volume(6, n_slices=5, canvas=32)
    vol = np.stack([stack_to_ras(stack)] * 2, axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, vol)
    return path


def test_four_d_volume_is_said_once_without_its_path(tmp_path, caplog):
    """A 4-D NIfTI volume: the library logs no path above DEBUG (predict, evaluate, explain and
    audit say it without one, from ``InputRead.note``); ingest lists it by path once."""
    from mriscan.readers import read_input
    from mriscan.scan import new_salt

    raw = tmp_path / "raw"
    vol = _four_d(raw / "no" / "OKAFOR_CHIDI_1970.nii.gz")
    write_dicom_series(raw / "yes" / "s", phantom_volume(5, n_slices=2, canvas=32))
    with caplog.at_level(logging.INFO):
        r = read_input(vol, "nifti", salt=new_salt(), root=raw)
        report = ingest(raw, tmp_path / "s.zarr", SMALL)
    assert r.note == "4-D volume with 2 volumes: the first was read (--nifti-4d)"
    assert "OKAFOR" not in caplog.text
    assert report.read_notes == (("no/OKAFOR_CHIDI_1970.nii.gz", r.note),)


def test_audit_lists_an_image_of_another_modality_and_names_no_path(tmp_path):
    """pydicom's CT_small.dcm in a class folder of MR series: listed as not audited with the
    modality reason (it crashed with ZeroDivisionError); the console names it by pseudonym."""
    from click.testing import CliRunner

    from mriscan.cli import main

    root = tmp_path / "a1"
    for k, c in enumerate(("no", "yes")):
        pat = FakePatient(patient_id=f"MRN-{k}", name=f"Smith^John{k}")
        write_dicom_series(root / c / f"SMITH_JOHN{k}", phantom_volume(k, n_slices=3), patient=pat)
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", root / "yes" / "SMITH_JOHN_CT.dcm")
    out = tmp_path / "aud"
    res = CliRunner().invoke(main, ["audit", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("not audited:"))
    assert "modality CT" in line and "SMITH" not in res.output
    shown = CliRunner().invoke(main, ["audit", str(root), "--out", str(out), "--show-paths"])
    assert "SMITH_JOHN_CT.dcm" in shown.output


def test_unexpected_reader_error_is_logged_without_the_path(tmp_path, caplog, monkeypatch):
    """A library's unexpected exception: the warning names the kind and type, not the file
    (its row does, by its naming rule); the path and traceback only at DEBUG."""
    import mriscan.readers
    from mriscan.scan import new_salt

    def boom(path, *args, **kwargs):
        raise RuntimeError("odd input")

    monkeypatch.setattr(mriscan.readers, "_read_input", boom)
    path = tmp_path / f"{NAME}.dcm"
    path.write_bytes(b"x")
    with caplog.at_level(logging.DEBUG, logger="mriscan.readers"):
        r = mriscan.readers.read_input(path, "dicom", salt=new_salt(), root=tmp_path)
    assert "unexpected RuntimeError" in r.error
    above = [x.getMessage() for x in caplog.records if x.levelno > logging.DEBUG]
    assert above == ["unexpected RuntimeError while reading a dicom file (see its row; "
                     "`mriscan -vv` logs the traceback)"]  # fmt: skip
    assert NAME in caplog.text  # at DEBUG, for a bug report


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_patient_id_is_listed_as_a_placeholder_and_grouped_by_study(tmp_path, empty):
    """A Patient ID element that is present but empty (or blank) is treated as 'ANONYMOUS'
    is: listed in ingest's placeholder warning, its slices grouped by their study; an absent
    element is no placeholder value (it is listed as missing: test_ingest_scanner)."""
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.dicom import EMPTY_PATIENT_ID, read_dicom
    from mriscan.scan import new_salt

    raw = tmp_path / "raw"
    files = write_dicom_series(
        raw / "yes" / "s", phantom_volume(1, n_slices=2, canvas=32), patient=FakePatient(empty)
    )
    write_dicom_series(
        raw / "no" / "s", phantom_volume(2, n_slices=2, canvas=32), patient=FakePatient("ANON")
    )
    assert pydicom.dcmread(files[0]).PatientID.strip() == ""
    meta = read_dicom(files[0], salt=new_salt()).slices[0].meta
    assert meta.patient is None and meta.patient_placeholder == EMPTY_PATIENT_ID
    assert meta.group.startswith("study:")
    report = ingest(raw, tmp_path / "s.zarr", SMALL)
    assert sorted(v for _, v in report.placeholder_ids) == [EMPTY_PATIENT_ID] * 2 + ["ANON"] * 2
    out = CliRunner().invoke(main, ["ingest", str(raw), "--store", str(tmp_path / "c.zarr")])
    assert "empty Patient ID: 2 file(s)" in out.output and "Patient ID 'ANON'" in out.output

    del_id = raw / "yes" / "s" / files[1].name
    ds = pydicom.dcmread(del_id)
    del ds.PatientID
    ds.save_as(del_id)
    assert read_dicom(del_id, salt=new_salt()).slices[0].meta.patient_placeholder == ""


def test_a_note_beside_a_manifests_dicom_folder_is_named_by_pseudonym_with_its_label(tmp_path):
    """A manifest row may name a DICOM folder outside the manifest's own folder; a file of no
    input kind beside those DICOM files (its folder names the patient) is named
    ``other/file-<h>``, as below a class folder, and carries the row's label (tester20 F1)."""
    from mriscan.evaluate import unreadable_rows
    from mriscan.scan import new_salt

    series = tmp_path / "priv" / f"{NAME} 19620101"
    write_dicom_series(series, phantom_volume(4, n_slices=2, canvas=24))
    (series / f"{NAME}_notes.txt").write_text("x")
    other = tmp_path / "other"
    write_dicom_series(other, phantom_volume(5, n_slices=2, canvas=24))
    (tmp_path / "man").mkdir()
    manifest = tmp_path / "man" / "m.csv"
    manifest.write_text(f'path,label\n"../priv/{series.name}",yes\n../other,no\n')
    report = ingest(manifest, tmp_path / "s.zarr", SMALL)
    notes = [(n, r) for n, r in report.skipped if n.endswith("_notes.txt")]
    assert len(notes) == 1
    rows = unreadable_rows(manifest, notes, salt=new_salt())
    assert rows[0]["path"].startswith("other/file-") and rows[0]["label"] == "yes", rows
    assert NAME not in rows[0]["path"] + rows[0]["error"] and "19620101" not in rows[0]["error"]
    shown = unreadable_rows(manifest, notes, salt=new_salt(), show_paths=True)
    assert NAME in shown[0]["path"]


def test_a_failed_dicom_file_with_a_non_utf8_name_is_named_as_a_dicom_failure(tmp_path):
    """Ingest names a file whose name is not UTF-8 with ``\\xNN``; evaluate's rows matched
    the entries by raw names, so such a DICOM file fell through to ``other/file-<h>`` where
    predict says ``dicom/<series>/file-<h>`` (tester20 F9)."""
    import os

    from mriscan.evaluate import unreadable_rows
    from mriscan.scan import new_salt

    raw = tmp_path / "raw"
    good = write_dicom_series(raw / "no" / "s", phantom_volume(5, n_slices=2, canvas=24))
    write_dicom_series(raw / "yes" / "s", phantom_volume(6, n_slices=2, canvas=24))
    ds = pydicom.dcmread(good[0])
    del ds.PixelData
    bad = raw / "no" / "s" / os.fsdecode(b"M\xfcller_nopix.dcm")
    ds.save_as(bad)
    report = ingest(raw, tmp_path / "s.zarr", SMALL)
    entries = [(n, r) for n, r in report.skipped if "nopix" in n]
    assert entries and entries[0][0] == "no/s/M\\xfcller_nopix.dcm"
    rows = unreadable_rows(raw, entries, salt=new_salt())
    assert rows[0]["path"].startswith("dicom/") and "/file-" in rows[0]["path"], rows
    assert rows[0]["label"] == "no" and rows[0]["level"] == "file"
