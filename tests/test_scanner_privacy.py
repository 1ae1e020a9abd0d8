"""Scanner files named after a made-up patient: no reason, warning or console line of predict,
evaluate, explain or audit names them (the pseudonym rule of the README's scanner section),
and what does not fit (an image of another modality, an empty Patient ID) is listed."""

from __future__ import annotations

from pathlib import Path

import pydicom

from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    write_dicom_series,
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
