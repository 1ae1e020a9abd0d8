"""Non-conformant but common source header values (Patient's Sex "U", a birth date
"1961-07-23", an ACR-NEMA time "14:04:38", no Modality) under ``explain --dicom-out`` (Secondary
Captures) and ``predict --dicom-out`` (Structured Reports): mended or emptied in the copy, each
change named by element, never by value, and no value on the console (tester18 H2, H4, M4)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

# the source values that must never reach the console, a row or a log line
ISO = {"PatientSex": "U", "PatientBirthDate": "1961-07-23", "StudyTime": "14:04:38"}
JUNK = {
    "PatientBirthDate": "1950-01-10 born in Springfield",
    "PatientSex": "Female-JaneDoe",
    "PatientAge": "AGE42YEARSOLD",
}
SECRETS = ("1961-07-23", "19610723", "14:04:38", "Springfield", "1950-01-10", "Female-JaneDoe",
           "AGE42YEARSOLD", "'U'")  # fmt: skip


def _rewrite(files: list[Path], values: dict[str, object]) -> None:
    """Set header ``values`` (None: delete the element) in ``files``, invalid ones included, as
    a non-conformant exporter writes them."""
    import pydicom
    from pydicom import config

    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for p in files:
            ds = pydicom.dcmread(p)
            for keyword, value in values.items():
                if value is None:
                    delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
            ds.save_as(p)
    finally:
        config.settings.writing_validation_mode = mode


def _series(root: Path, name: str, seed: int, values: dict[str, object]) -> list[Path]:
    files = write_dicom_series(root / name, phantom_volume(seed, n_slices=3, canvas=32),
                               patient=FakePatient(patient_id=name), seed=seed)  # fmt: skip
    _rewrite(files, values)
    return files


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert not [s for s in SECRETS if s in text], text


# --- the one place that mends the copy ---------------------------------------------------------


def test_common_forms_are_mended_and_the_rest_emptied_naming_the_element(tmp_path):
    import pydicom

    from mriscan.dicom import read_header
    from mriscan.dicom_headers import tidy_copied_header

    (path,) = _series(tmp_path, "a", 1, {**ISO, "StudyDate": "2020.01.02", "PatientAge": "42Y"})[:1]
    ds = read_header(path)
    notes = tidy_copied_header(ds, "report")
    assert (ds.PatientSex, ds.PatientBirthDate, ds.StudyTime) == ("", "19610723", "140438")
    assert (ds.StudyDate, ds.PatientAge) == ("20200102", "")
    assert notes == [
        "Patient's Birth Date (0010,0030) is not in DICOM form: rewritten as a DICOM date "
        "(YYYYMMDD) in the report",
        "Patient's Sex (0010,0040) is not M, F or O: written empty in the report",
        "Study Date (0008,0020) is not in DICOM form: rewritten as a DICOM date (YYYYMMDD) in "
        "the report",
        "Study Time (0008,0030) is not in DICOM form: rewritten as a DICOM time "
        "(HHMMSS.FFFFFF) in the report",
        "Patient's Age (0010,1010) is not a DICOM age (nnnD, nnnW, nnnM or nnnY): written "
        "empty in the report",
    ]
    _no_secret(*notes)
    assert pydicom.dcmread(path).PatientBirthDate == "1961-07-23"  # the source is untouched
    _rewrite([path], {"PatientBirthDate": "19610230", "StudyTime": "250000"})
    again = read_header(path)
    tidy_copied_header(again, "report")
    assert (again.PatientBirthDate, again.StudyTime) == ("", "")  # no 30 February, no 25 h
    clean = read_header(_series(tmp_path, "b", 2, {"StudyTime": "140438.5"})[0])
    assert tidy_copied_header(clean, "report") == []


def test_a_type_1c_element_that_does_not_parse_is_refused_by_name(tmp_path):
    from mriscan.dicom import read_header
    from mriscan.dicom_headers import HeaderError, tidy_copied_header

    (path,) = _series(tmp_path, "a", 1, {"PatientAlternativeCalendar": "by-Doe"})[:1]
    with pytest.raises(HeaderError, match=r"Patient's Alternative Calendar \(0010,0035\)") as e:
        tidy_copied_header(read_header(path), "report")
    assert "by-Doe" not in str(e.value)


def test_the_table_covers_what_highdicom_copies_and_parses():
    """Every Patient/Study element of the image IODs that highdicom copies and parses by VR
    (DA, TM, DT, AS, CS) is in ``COPIED`` with its Type."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from mriscan.dicom_headers import COPIED

    modules = get_module_attribute_map()
    for iod in (
        "mr-image",
        "ct-image",
        "enhanced-mr-image",
        "secondary-capture-image",
        "multi-frame-grayscale-word-secondary-capture-image",
    ):
        for module in get_iod_module_map()[iod]:
            if module["ie"] not in ("Patient", "Study"):
                continue
            for item in modules[module["key"]]:
                tag = tag_for_keyword(item["keyword"])
                if item["path"] or tag is None:
                    continue
                if dictionary_VR(tag) in ("DA", "TM", "DT", "AS", "CS"):
                    assert COPIED.get(item["keyword"]) == item["type"], item["keyword"]


def test_library_messages_keep_values_off_the_console(caplog, capfd):
    from pydicom.misc import warn_and_log

    from mriscan.dicom_headers import library_messages, mask_values

    assert mask_values("'U' is not a valid PatientSexValues") == (
        "'<value>' is not a valid PatientSexValues"
    )
    assert mask_values("Unable to convert '1961-07-23' to 'DA' object") == (
        "Unable to convert '<value>' to 'DA' object"
    )
    assert mask_values('copied attribute "PatientName"') == 'copied attribute "PatientName"'
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with library_messages():
            warn_and_log("Invalid value for VR DA: '1950-01-10 born in Springfield'.")
            warnings.warn(
                "value of argument is potentially invalid: 'Female-JaneDoe'", stacklevel=1
            )
    assert caught == []
    _no_secret(caplog.text, *capfd.readouterr())
    said = [r.getMessage() for r in caplog.records if r.name == "mriscan.dicom_headers"]
    assert "pydicom: Invalid value for VR DA: '<value>'." in said[0]
    assert len(said) == 2  # pydicom's logged and warned copies are said once


# --- Secondary Captures (explain --dicom-out) ------------------------------------------------


@pytest.fixture
def bad_series(tmp_path):
    """Three DICOM series: one clean, one with Sex "U", an ISO birth date and an ACR-NEMA
    time, one with values that are no date, sex or age at all."""
    root = tmp_path / "scans"
    _series(root, "CLEAN", 1, {})
    _series(root, "ISO", 2, ISO)
    _series(root, "JUNK", 3, JUNK)
    return root


def _explain_cli(*args):
    from click.testing import CliRunner

    from mriscan.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(main, ["explain", *map(str, args)])
    return res, [str(w.message) for w in caught]


def _by_patient(rows, key):
    import pydicom

    return {pydicom.dcmread(r[key]).PatientID: r for r in rows if r.get(key)}


@pytest.mark.backend
def test_explain_mends_the_copy_and_names_each_change(model_file, bad_series, tmp_path, caplog):
    import pydicom

    from mriscan.explain import explain
    from mriscan.readers import collect_inputs

    files = [f.path for f in collect_inputs([bad_series])[0]]
    with caplog.at_level(logging.DEBUG):
        rows = explain(
            model_file, files, out=tmp_path / "png", slices=[1], dicom_out=tmp_path / "sc"
        )
    assert len(rows) == 3 and not [r for r in rows if r.get("dicom_skipped")]
    made = _by_patient(rows, "dicom")
    assert sorted(made) == ["CLEAN", "ISO", "JUNK"]
    iso = pydicom.dcmread(made["ISO"]["dicom"])
    assert (iso.PatientSex, iso.PatientBirthDate, iso.StudyTime) == ("", "19610723", "140438")
    junk = pydicom.dcmread(made["JUNK"]["dicom"])
    assert (junk.PatientSex, junk.PatientBirthDate) == ("", "")
    assert "dicom_note" not in made["CLEAN"]
    assert made["ISO"]["dicom_note"].startswith(
        "Patient's Birth Date (0010,0030) is not in DICOM form: rewritten as a DICOM date "
        "(YYYYMMDD) in the Secondary Capture; Patient's Sex (0010,0040) is not M, F or O"
    )
    assert (
        "Patient's Birth Date (0010,0030) is not a DICOM date (YYYYMMDD): written empty"
        in (made["JUNK"]["dicom_note"])
    )
    _no_secret(caplog.text, *(str(v) for r in rows for v in r.values()))
    res, said = _explain_cli(model_file, bad_series, "--slices", "1", "--out", tmp_path / "p2",
                             "--dicom-out", tmp_path / "sc2")  # fmt: skip
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if "rewritten as a DICOM date" in ln]
    assert line.startswith("dicom/") and "; Patient's Birth Date (0010,0030)" in line
    _no_secret(res.output, *said)


@pytest.mark.backend
def test_a_slice_highdicom_refuses_is_listed_and_the_others_written(
    model_file, bad_series, tmp_path, monkeypatch
):
    """Without the mending (as before it), highdicom refuses Sex "U" and an ISO date: those
    slices are listed by pseudonym with the reason, values masked, and the clean series' is
    written; no traceback."""
    import mriscan.dicom_sc

    # raising=False: the test also runs against the code before the fix, which has no mending
    monkeypatch.setattr(
        mriscan.dicom_sc, "tidy_copied_header", lambda ds, target: [], raising=False
    )
    res, said = _explain_cli(model_file, bad_series, "--slices", "1", "--out", tmp_path / "png",
                             "--dicom-out", tmp_path / "sc")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    assert len(list((tmp_path / "sc").iterdir())) == 1
    assert "No DICOM Secondary Capture for 2 explained image(s):" in res.output
    listed = [
        ln for ln in res.output.splitlines() if "highdicom refused the Secondary Capture" in ln
    ]
    assert len(listed) == 2 and all(ln.startswith("  dicom/") for ln in listed)
    assert "'<value>'" in "".join(listed)
    _no_secret(res.output, *said)


def test_a_write_error_of_a_secondary_capture_is_its_error(tmp_path, monkeypatch):
    import os

    import numpy as np

    from mriscan.dicom_sc import SCSeries, SecondaryCaptureError, write_secondary_capture

    (src,) = _series(tmp_path, "a", 1, {})[:1]

    def full_disk(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SecondaryCaptureError, match="No space left on device"):
        write_secondary_capture(src, np.zeros((8, 8, 3), np.uint8), tmp_path / "o" / "x.dcm",
                                series=SCSeries("1.2.3", 9001, "x"), instance_number=1)  # fmt: skip


# --- Structured Reports (predict --dicom-out) ------------------------------------------------


@pytest.mark.backend
def test_predict_reports_mended_series_and_names_a_missing_modality(
    model_file, bad_series, tmp_path, caplog
):
    import pydicom
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.predict import predict

    with caplog.at_level(logging.DEBUG):
        rows = predict(model_file, [bad_series], dicom_out=tmp_path / "sr")
    series = [r for r in rows if r.get("level") == "series"]
    assert len(series) == 3 and not [r for r in series if r.get("dicom_skipped")]
    made = _by_patient(series, "dicom")
    iso = pydicom.dcmread(made["ISO"]["dicom"])
    assert (iso.PatientSex, iso.PatientBirthDate, iso.StudyTime) == ("", "19610723", "140438")
    junk = pydicom.dcmread(made["JUNK"]["dicom"])
    assert (junk.PatientSex, junk.PatientBirthDate, junk.get("PatientAge", "")) == ("", "", "")
    assert (
        "Patient's Sex (0010,0040) is not M, F or O: written empty in the report"
        in (made["ISO"]["dicom_note"])
    )
    _no_secret(caplog.text, *(str(v) for r in rows for v in r.values()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(
            main, ["predict", str(model_file), str(bad_series), "--output",
                   str(tmp_path / "p.csv"), "--dicom-out", str(tmp_path / "sr2")],
        )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "3 DICOM Structured Report(s)" in res.output
    assert "(Series Number 8001); Patient's Birth Date (0010,0030)" in res.output
    _no_secret(res.output, *(str(w.message) for w in caught))


def test_a_source_without_modality_gets_a_clear_reason(tmp_path):
    from mriscan.artifacts import ModelCard
    from mriscan.dicom_sr import SRSource, StructuredReportError, write_series_report
    from mriscan.preprocess import PreprocessConfig

    card = ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, model_sha256="0" * 64)
    files = _series(tmp_path, "a", 1, {"Modality": None})
    row = {"label": "yes", "p_no": 0.3, "p_yes": 0.7, "slices": 3}
    with pytest.raises(StructuredReportError, match=r"the source has no Modality \(0008,0060\)"):
        write_series_report([SRSource(f) for f in files], row, card, tmp_path / "o",
                            model_path="m.keras", threshold=0.5)  # fmt: skip
