"""predict --dicom-out: one DICOM Structured Report (TID 1500) per predicted DICOM series, read
back with pydicom and checked against predict's CSV rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    stack_to_ras,
    write_dicom_series,
    write_nifti,
)

pytestmark = pytest.mark.backend

# DICOM / SNOMED codes the reports use (pydicom.sr.codedict), by value
GROUP, FINDING, PROBABILITY, METHOD = "125007", "121071", "122157", "370129005"
ALGORITHM_PARAMETERS, NEOPLASM, PRESENT, ABSENT = "111002", "108369006", "52101004", "272519000"
CLASSIFICATION = "278201002"  # SCT "Classification": the class a probability is of


def _scans(root: Path) -> Path:
    """Two DICOM series of one (made-up) patient in two studies, in folders named after her,
    one of them multi-frame; a NIfTI volume; a JPEG."""
    from PIL import Image

    patient = FakePatient()
    write_dicom_series(root / "Doe_Jane_19700101" / "T1", phantom_volume(1, n_slices=4, canvas=32),
                       patient=patient, series_number=3)  # fmt: skip
    write_dicom_series(root / "Doe_Jane_19700101" / "MF", phantom_volume(2, n_slices=3, canvas=32),
                       patient=patient, multiframe=True, seed=5, series_number=4)  # fmt: skip
    write_nifti(root / "Roe_Richard.nii.gz", stack_to_ras(phantom_volume(3, n_slices=4, canvas=32)))
    img = (phantom_volume(4, n_slices=1, canvas=32)[0] * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "plain.jpg")
    return root


def _items(seq, code):
    """Content items of ``seq`` whose concept name has Code Value ``code``."""
    return [i for i in seq if i.ConceptNameCodeSequence[0].CodeValue == code]


def _walk(seq):
    """Every content item below ``seq``, depth first."""
    for item in seq:
        yield item
        yield from _walk(item.get("ContentSequence", ()))


def _probabilities(content) -> dict[str, object]:
    """Class -> its Probability NUM item, of a measurement group's content (the class is the
    NUM's concept modifier SCT Classification)."""
    out = {}
    for num in _items(content, PROBABILITY):
        (cls,) = _items(num.ContentSequence, CLASSIFICATION)
        assert cls.RelationshipType == "HAS CONCEPT MOD"
        assert cls.ConceptCodeSequence[0].CodingSchemeDesignator == "99MRISCAN"
        out[cls.ConceptCodeSequence[0].CodeValue] = num
    return out


def _groups(ds):
    """The report's measurement groups (TID 1501), by tracking identifier."""
    (imaging,) = _items(ds.ContentSequence, "126010")
    out = {}
    for g in _items(imaging.ContentSequence, GROUP):
        (tid,) = _items(g.ContentSequence, "112039")
        out[tid.TextValue] = g
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _check_report(ds, row: dict[str, str], classes, sources: dict[str, object]) -> None:
    """``ds`` states ``row``'s finding and probabilities and refers to ``sources`` (SOP
    Instance UID -> source dataset), all in their study."""
    from pydicom.uid import ComprehensiveSRStorage

    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    first = next(iter(sources.values()))
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID
    assert (ds.PatientName, ds.PatientID) == (first.PatientName, first.PatientID)
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # the evidence: every source instance, in the source's study and series
    (study,) = ds.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    refs = {i.ReferencedSOPInstanceUID: i for i in series.ReferencedSOPSequence}
    assert set(refs) == set(sources)
    assert all(refs[u].ReferencedSOPClassUID == s.SOPClassUID for u, s in sources.items())
    groups = _groups(ds)
    assert set(groups) == {"mriscan finding"}
    finding = groups["mriscan finding"].ContentSequence
    (code,) = _items(finding, FINDING)
    assert code.ConceptCodeSequence[0].CodeValue == row["label"]
    assert code.ConceptCodeSequence[0].CodingSchemeDesignator == "99MRISCAN"
    # one finding in the whole report: the predicted class, never the other classes
    assert len(_items(_walk(ds.ContentSequence), FINDING)) == 1
    images = [i for i in finding if i.ValueType == "IMAGE"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images} == set(sources)
    for item in images:  # a multi-frame source: all its frames, 1-based
        src = sources[item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        frames = item.ReferencedSOPSequence[0].get("ReferencedFrameNumber")
        if int(src.get("NumberOfFrames", 1)) > 1:
            assert [int(f) for f in frames] == list(range(1, int(src.NumberOfFrames) + 1))
        else:
            assert frames is None
    # every class's probability, in the finding's group, each with its class
    probabilities = _probabilities(finding)
    assert list(probabilities) == list(classes)
    for c, num in probabilities.items():
        value = num.MeasuredValueSequence[0]
        # the CSV holds six decimals; the report the float itself
        assert float(value.FloatingPointValue) == pytest.approx(float(row[f"p_{c}"]), abs=1e-6)
        assert float(value.NumericValue) == pytest.approx(float(row[f"p_{c}"]), abs=1e-6)
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        (method,) = _items(num.ContentSequence, METHOD)
        assert method.ConceptCodeSequence[0].CodeValue == "top3-mean"
    params = [i.TextValue for i in _items(finding, ALGORITHM_PARAMETERS)]
    assert any(row["aggregate"] in p for p in params)
    assert "classes: " + ", ".join(classes) in params
    scheme = ds.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99MRISCAN"
    # highdicom's own parser reads it back as a TID 1500 report with the same groups
    import highdicom as hd

    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (parsed,) = report.get_image_measurement_groups()
    assert parsed.tracking_identifier == "mriscan finding"
    assert parsed.finding_type.value == row["label"]
    from pydicom.sr.codedict import codes

    read = {}
    for m in parsed.get_measurements(name=codes.DCM.Probability):
        (cls,) = hd.sr.utils.find_content_items(m[0], name=codes.SCT.Classification)
        read[cls.value.value] = m.value
    assert read == pytest.approx({c: float(row[f"p_{c}"]) for c in classes}, abs=1e-6)


def _sources_of(root: Path) -> dict[str, dict[str, object]]:
    """Series Instance UID -> {SOP Instance UID -> header} of the DICOM files below root."""
    import pydicom

    out: dict[str, dict[str, object]] = {}
    for p in root.rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out.setdefault(ds.SeriesInstanceUID, {})[ds.SOPInstanceUID] = ds
    return out


def test_two_class_series_reports_match_the_csv(model_file, tmp_path):
    import pydicom

    from mriscan.artifacts import ModelCard
    from mriscan.predict import predict

    scans = _scans(tmp_path / "scans")
    out = tmp_path / "sr"
    rows = predict(model_file, [scans], output=tmp_path / "p.csv", dicom_out=out)
    table = {r["unit"]: r for r in _read_csv(tmp_path / "p.csv") if r["level"] == "series"}
    series_rows = [r for r in rows if r.get("level") == "series"]
    assert len(series_rows) == 2 and all(r.get("dicom") for r in series_rows)
    # files named by their own UIDs only, none left half-written
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(r["dicom"]).name for r in series_rows)
    assert all(n.endswith(".dcm") and n[:-4].replace(".", "").isdigit() for n in written)
    sources = _sources_of(scans)
    card = ModelCard.load(model_file)
    for r in series_rows:
        ds = pydicom.dcmread(r["dicom"])
        assert ds.SOPInstanceUID + ".dcm" == Path(r["dicom"]).name
        (study,) = ds.CurrentRequestedProcedureEvidenceSequence
        uid = study.ReferencedSeriesSequence[0].SeriesInstanceUID
        _check_report(ds, table[r["unit"]], card.class_names, sources[uid])
        params = [i.TextValue for i in _items(_groups(ds)["mriscan finding"].ContentSequence,
                                               ALGORITHM_PARAMETERS)]  # fmt: skip
        assert "label: yes when P(yes) >= 0.5, else no" in params
        assert not _items(_groups(ds)["mriscan finding"].ContentSequence, NEOPLASM)
    # the NIfTI volume and the JPEG get none, with the reason
    skipped = [r for r in rows if r.get("dicom_skipped")]
    assert {r.get("level", "image") for r in skipped} == {"volume", "image"}
    assert all(r["dicom_skipped"].startswith("not a DICOM input") for r in skipped)
    # predict's own output is as without the option (pseudonyms are salted afresh each run)
    predict(model_file, [scans], output=tmp_path / "q.csv")
    with_sr, without = _read_csv(tmp_path / "p.csv"), _read_csv(tmp_path / "q.csv")
    assert list(with_sr[0]) == list(without[0])

    def strip(table):
        return sorted(tuple(v for k, v in r.items() if k not in ("path", "unit")) for r in table)

    assert strip(with_sr) == strip(without)


def test_k_class_report_states_the_tumor_call(tmp_path):
    """A three-class model with a healthy class: probabilities and label as in the CSV, and
    SCT Neoplasm Present/Absent as its is_tumor column says; a hand-made row of each call."""
    import pydicom

    from mriscan.artifacts import ModelCard
    from mriscan.dicom_sr import SRSource, write_series_report
    from mriscan.model import build_model
    from mriscan.predict import predict
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m" / "best_model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8), num_classes=3).save(path)
    card = ModelCard(PreprocessConfig(size=32), ("glioma", "notumor", "pit"), None,
                     healthy="notumor")  # fmt: skip
    card.save(path)
    scans = tmp_path / "scans"
    write_dicom_series(scans / "P1" / "MF", phantom_volume(2, n_slices=3, canvas=32),
                       multiframe=True)  # fmt: skip
    rows = predict(path, [scans], output=tmp_path / "p.csv", dicom_out=tmp_path / "sr")
    (row,) = [r for r in _read_csv(tmp_path / "p.csv") if r["level"] == "series"]
    (made,) = [r for r in rows if r.get("dicom")]
    ds = pydicom.dcmread(made["dicom"])
    (sources,) = _sources_of(scans).values()
    _check_report(ds, row, card.class_names, sources)
    finding = _groups(ds)["mriscan finding"].ContentSequence
    (call,) = _items(finding, NEOPLASM)
    expected = ABSENT if row["is_tumor"] == "no" else PRESENT
    assert call.ConceptCodeSequence[0].CodeValue == expected
    params = [i.TextValue for i in _items(finding, ALGORITHM_PARAMETERS)]
    assert "label: the most probable class" in params
    # each call, from rows made by hand
    src = [SRSource(p) for p in sorted(scans.rglob("*.dcm"))]
    for label, probs, code in (("notumor", (0.2, 0.5, 0.3), ABSENT),
                               ("pit", (0.2, 0.3, 0.5), PRESENT)):  # fmt: skip
        hand = dict(zip(("p_glioma", "p_notumor", "p_pit"), probs, strict=True))
        hand.update(label=label, slices=3)
        written = write_series_report(src, hand, card, tmp_path / "hand", model_path=path,
                                      threshold=None)  # fmt: skip
        (item,) = _items(_groups(pydicom.dcmread(written))["mriscan finding"].ContentSequence,
                         NEOPLASM)  # fmt: skip
        assert item.ConceptCodeSequence[0].CodeValue == code


def test_a_series_without_a_study_is_listed_and_the_others_written(model_file, tmp_path):
    """A series whose files lost their Study Instance UID is still predicted, but gets no
    report (the reason is listed); the other series' report is written. The CLI says so."""
    import pydicom
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.predict import predict

    scans = _scans(tmp_path / "scans")
    for p in (scans / "Doe_Jane_19700101" / "T1").iterdir():
        ds = pydicom.dcmread(p)
        del ds.StudyInstanceUID
        ds.save_as(p)
    rows = predict(model_file, [scans], dicom_out=tmp_path / "sr")
    series = [r for r in rows if r.get("level") == "series"]
    assert len(series) == 2
    made = [r for r in series if r.get("dicom")]
    failed = [r for r in series if r.get("dicom_skipped")]
    assert len(made) == 1 and len(failed) == 1
    assert "no StudyInstanceUID" in failed[0]["dicom_skipped"]
    assert len(list((tmp_path / "sr").iterdir())) == 1
    res = CliRunner().invoke(
        main, ["predict", str(model_file), str(scans), "--output", str(tmp_path / "p.csv"),
               "--dicom-out", str(tmp_path / "sr2")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 DICOM Structured Report(s) → " in res.output
    assert "No DICOM Structured Report for 3 input(s):" in res.output
    assert "not a DICOM input: there is no study to file a Structured Report into: " in res.output
    assert "plain.jpg" in res.output and "no StudyInstanceUID" in res.output
    assert not any(s in res.output for s in ("Doe", "Jane", "Roe_Richard"))  # pseudonyms
    assert len(list((tmp_path / "sr2").iterdir())) == 1
    help_text = CliRunner().invoke(main, ["predict", "--help"]).output
    assert "--dicom-out" in help_text and "Structured Report" in help_text


def test_bad_rows_and_sources_are_refused_by_name(tmp_path):
    from mriscan.artifacts import ModelCard
    from mriscan.dicom_sr import SRSource, StructuredReportError, class_code, write_series_report
    from mriscan.errors import MriscanError
    from mriscan.preprocess import PreprocessConfig

    card = ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, model_sha256="0" * 64)
    files = write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=2, canvas=16))
    row = {"label": "yes", "p_no": 0.3, "p_yes": 0.7, "slices": 2}

    def write(sources, row):
        return write_series_report(sources, row, card, tmp_path / "o", model_path="m.keras",
                                   threshold=0.5)  # fmt: skip

    assert issubclass(StructuredReportError, MriscanError)
    with pytest.raises(StructuredReportError, match="no source instance"):
        write([], row)
    with pytest.raises(StructuredReportError, match="'maybe' is not one of"):
        write([SRSource(files[0])], {**row, "label": "maybe"})
    with pytest.raises(StructuredReportError, match="no probability in \\[0, 1\\] for class 'no'"):
        write([SRSource(files[0])], {**row, "p_no": None})
    (tmp_path / "not.dcm").write_bytes(b"plain text")
    with pytest.raises(StructuredReportError, match="cannot read a source's DICOM header"):
        write([SRSource(tmp_path / "not.dcm")], row)
    other = write_dicom_series(tmp_path / "t", phantom_volume(2, n_slices=1, canvas=16), seed=9)
    with pytest.raises(StructuredReportError, match="span 2 series"):
        write([SRSource(files[0]), SRSource(other[0])], row)
    with pytest.raises(StructuredReportError, match="has no frame 5"):
        write([SRSource(files[0], frame=4)], row)
    with pytest.raises(StructuredReportError, match="Code Meaning"):
        class_code("x" * 65)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    assert write([SRSource(f) for f in files], row).parent == tmp_path / "o"


def test_a_failed_write_leaves_no_file_and_is_a_report_error(tmp_path, monkeypatch):
    import os

    from mriscan.artifacts import ModelCard
    from mriscan.dicom_sr import SRSource, StructuredReportError, write_series_report
    from mriscan.preprocess import PreprocessConfig

    card = ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, model_sha256="0" * 64)
    files = write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=1, canvas=16))
    row = {"label": "no", "p_no": 0.6, "p_yes": 0.4, "slices": 1}

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(StructuredReportError, match="No space left on device"):
        write_series_report([SRSource(files[0])], row, card, tmp_path / "o",
                            model_path="m.keras", threshold=0.5)  # fmt: skip
    assert list((tmp_path / "o").iterdir()) == []  # the temporary file is gone too
    (tmp_path / "taken").write_bytes(b"")  # the folder's name is a file's
    monkeypatch.undo()
    with pytest.raises(StructuredReportError, match="cannot write"):
        write_series_report([SRSource(files[0])], row, card, tmp_path / "taken",
                            model_path="m.keras", threshold=0.5)  # fmt: skip


def test_a_series_scored_from_part_of_its_files_says_so_in_its_report(model_file, tmp_path):
    """One instance of a series is truncated: the series is scored from the others, its CSV
    row warns, and its report states the same note (counts only, no file name), so a reader
    of the report sees that the finding rests on part of the series."""
    import pydicom

    from mriscan.predict import predict

    scans = _scans(tmp_path / "scans")
    victim = sorted((scans / "Doe_Jane_19700101" / "T1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-100])  # header whole, pixel data cut
    rows = predict(model_file, [scans], dicom_out=tmp_path / "sr")
    (row,) = [r for r in rows if r.get("level") == "series" and "unreadable" in r["warning"]]
    assert row["warning"].startswith("1 of 4 instances unreadable")
    ds = pydicom.dcmread(row["dicom"])
    finding = _groups(ds)["mriscan finding"].ContentSequence
    params = [i.TextValue for i in _items(finding, ALGORITHM_PARAMETERS)]
    assert f"note: {row['warning']}" in params
    assert not any(victim.name in p or "Doe" in p for p in params)
    others = [r for r in rows if r.get("level") == "series" and r is not row]
    (other,) = others
    ds = pydicom.dcmread(other["dicom"])
    params = [i.TextValue for i in _items(_groups(ds)["mriscan finding"].ContentSequence,
                                          ALGORITHM_PARAMETERS)]  # fmt: skip
    assert not any(p.startswith("note: ") for p in params)


@pytest.mark.parametrize(
    ("keyword", "value", "what"),
    [
        ("PatientID", "OTHER999", "2 patients (Patient ID) (3 + 1 instances)"),
        ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1", "2 studies (Study Instance UID)"),
    ],
)
def test_a_series_spanning_patients_or_studies_gets_no_report(
    model_file, tmp_path, keyword, value, what
):
    """One instance of another patient or study in a series: predicted, warned in its row,
    and no report filed (the reason gives counts only, no identifier)."""
    import pydicom

    from mriscan.predict import predict

    files = write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=4, canvas=32), seed=2)
    ds = pydicom.dcmread(files[1])
    setattr(ds, keyword, value)
    if keyword == "PatientID":
        ds.PatientName = "Other^Person"
    ds.save_as(files[1])
    rows = predict(model_file, [tmp_path / "s"], dicom_out=tmp_path / "sr")
    (row,) = [r for r in rows if r.get("level") == "series"]
    assert row["slices"] == 4 and "dicom" not in row
    assert what in row["dicom_skipped"] and "one report cannot be filed" in row["dicom_skipped"]
    assert "OTHER" not in row["dicom_skipped"] and "Other" not in row["dicom_skipped"]
    kind = "patients (Patient ID)" if keyword == "PatientID" else "studies (Study UID)"
    assert f"its slices belong to 2 {kind} (3 + 1 slices)" in row["warning"]
    assert not (tmp_path / "sr").exists() or not list((tmp_path / "sr").iterdir())


@pytest.mark.parametrize(
    ("keyword", "value", "what"),
    [
        ("PatientName", "Secret^Name", "2 Patient's Names (0010,0010) (3 + 1 instances)"),
        ("PatientBirthDate", "19800202", "2 Patient's Birth Dates (0010,0030)"),
        ("PatientSex", "O", "2 Patient's Sex values (0010,0040)"),
    ],
)
def test_a_series_whose_instances_disagree_on_the_patient_gets_no_report(
    model_file, tmp_path, keyword, value, what
):
    """The report copies the first instance's patient module: instances of one Patient ID
    that name another person, birth date or sex were filed under the first, unsaid."""
    import pydicom

    from mriscan.predict import predict

    files = write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=4, canvas=32), seed=2)
    ds = pydicom.dcmread(files[1])
    setattr(ds, keyword, value)
    ds.save_as(files[1])
    rows = predict(model_file, [tmp_path / "s"], dicom_out=tmp_path / "sr")
    (row,) = [r for r in rows if r.get("level") == "series"]
    assert "dicom" not in row and f"instances state {what}" in row["dicom_skipped"]
    assert value not in row["dicom_skipped"] and "Secret" not in row["dicom_skipped"]
    assert not (tmp_path / "sr").exists() or not list((tmp_path / "sr").iterdir())


def test_an_invalid_study_uid_is_refused(model_file, tmp_path):
    """A malformed Study Instance UID is not copied into a report: the series is refused."""
    import pydicom

    from mriscan.predict import predict

    files = write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=2, canvas=32))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = "1.2.3.abc.0045"
        ds.save_as(f)
    import warnings

    with warnings.catch_warnings():  # pydicom may warn about the bad UID (once per process)
        warnings.simplefilter("ignore", UserWarning)
        rows = predict(model_file, [tmp_path / "s"], dicom_out=tmp_path / "sr")
    (row,) = [r for r in rows if r.get("level") == "series"]
    assert "StudyInstanceUID is not a valid DICOM UID" in row["dicom_skipped"]
    assert "abc" not in row["dicom_skipped"] and "dicom" not in row
    assert not (tmp_path / "sr").exists() or not list((tmp_path / "sr").iterdir())


def test_dicom_out_naming_a_file_is_a_usage_error_before_predicting(model_file, tmp_path):
    """--dicom-out at an existing file: exit 2 and no predictions file; the library refuses it
    too, before reading anything."""
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.errors import MriscanError
    from mriscan.predict import predict

    write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=2, canvas=32))
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(
        main, ["predict", str(model_file), str(tmp_path / "s"), "--output", str(out),
               "--dicom-out", str(tmp_path / "afile")],
    )  # fmt: skip
    assert res.exit_code == 2 and "--dicom-out" in res.output
    assert not out.exists()
    with pytest.raises(MriscanError, match="is not a folder"):
        predict(model_file, [tmp_path / "s"], output=out, dicom_out=tmp_path / "afile")
    assert not out.exists()


def test_a_rerun_replaces_its_reports_and_stale_temp_files_go(model_file, tmp_path):
    """The same prediction run twice into one folder leaves one report per series (same file
    name, same UIDs); another threshold adds its own. A temporary file of a writer that is
    gone (a run killed midway) is removed at the next run; one of a live process is kept."""
    import os
    import subprocess
    import sys

    import pydicom

    from mriscan.predict import predict

    write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=3, canvas=32))
    out = tmp_path / "sr"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = out / f".1.2.826.0.1.3680043.8.498.7.{int(dead.stdout)}.tmp"
    live = out / f".1.2.826.0.1.3680043.8.498.8.{os.getpid()}.tmp"
    stale.write_bytes(b"")
    live.write_bytes(b"")
    first = predict(model_file, [tmp_path / "s"], dicom_out=out)
    assert not stale.exists() and live.exists()
    live.unlink()
    (made,) = [r["dicom"] for r in first if r.get("dicom")]
    again = predict(model_file, [tmp_path / "s"], dicom_out=out)
    assert [r["dicom"] for r in again if r.get("dicom")] == [made]
    assert [p.name for p in out.iterdir()] == [Path(made).name]
    other = predict(model_file, [tmp_path / "s"], dicom_out=out, threshold=0.25)
    (made2,) = [r["dicom"] for r in other if r.get("dicom")]
    assert made2 != made and len(list(out.iterdir())) == 2
    a, b = pydicom.dcmread(made), pydicom.dcmread(made2)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.SOPInstanceUID == Path(made).stem and a.SOPInstanceUID.is_valid
    # the series' files changed: another report (one UID never names two contents), same series
    sorted((tmp_path / "s").iterdir())[0].unlink()
    changed = predict(model_file, [tmp_path / "s"], dicom_out=out)
    (made3,) = [r["dicom"] for r in changed if r.get("dicom")]
    c = pydicom.dcmread(made3)
    assert made3 not in (made, made2) and len(list(out.iterdir())) == 3
    assert c.SeriesInstanceUID == a.SeriesInstanceUID


def test_a_report_states_only_its_predicted_class_as_a_finding(tmp_path):
    """A series labelled ``no``: the report's one Finding is ``no`` (no item anywhere says
    "Finding: yes"), and both classes' probabilities are in that group, each with its class
    as the Probability's concept modifier, read back by highdicom's parser."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from mriscan.artifacts import ModelCard
    from mriscan.dicom_sr import SRSource, class_code, write_series_report
    from mriscan.preprocess import PreprocessConfig

    card = ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, model_sha256="0" * 64)
    files = write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=2, canvas=16))
    row = {"label": "no", "p_no": 0.8, "p_yes": 0.2, "slices": 2}
    path = write_series_report([SRSource(f) for f in files], row, card, tmp_path / "o",
                               model_path="m.keras", threshold=0.5)  # fmt: skip
    ds = pydicom.dcmread(path)
    findings = _items(_walk(ds.ContentSequence), FINDING)
    assert [f.ConceptCodeSequence[0].CodeValue for f in findings] == ["no"]
    (group,) = _groups(ds).values()
    probabilities = _probabilities(group.ContentSequence)
    assert {c: float(n.MeasuredValueSequence[0].FloatingPointValue)
            for c, n in probabilities.items()} == {"no": 0.8, "yes": 0.2}  # fmt: skip
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    assert report.get_image_measurement_groups(finding_type=class_code("yes")) == []
    (parsed,) = report.get_image_measurement_groups(finding_type=class_code("no"))
    assert len(parsed.get_measurements(name=codes.DCM.Probability)) == 2


def test_the_report_series_number_is_shown_and_a_missing_source_number_warned(
    model_file, tmp_path, caplog
):
    """Each report's Series Number is printed beside its file; a source series without a
    Series Number gets 8000, said on its line (row ``dicom_note``) and in a logged warning
    naming the series as predict shows it."""
    import logging

    import pydicom
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.dicom_sr import SERIES_NUMBER_BASE, report_series_number
    from mriscan.predict import predict

    assert report_series_number(None) == report_series_number(1000) == SERIES_NUMBER_BASE
    assert report_series_number(1003) == SERIES_NUMBER_BASE + 3
    scans = _scans(tmp_path / "scans")
    for p in (scans / "Doe_Jane_19700101" / "T1").iterdir():
        ds = pydicom.dcmread(p)
        del ds.SeriesNumber
        ds.save_as(p)
    with caplog.at_level(logging.WARNING, logger="mriscan.dicom_sr"):
        rows = predict(model_file, [scans], dicom_out=tmp_path / "sr")
    series = {r["slices"]: r for r in rows if r.get("level") == "series"}
    none, four = series[4], series[3]  # T1: 4 slices, no number; MF: 3 frames, number 4
    assert none["dicom_series_number"] == 8000 and four["dicom_series_number"] == 8004
    assert pydicom.dcmread(none["dicom"]).SeriesNumber == 8000
    assert pydicom.dcmread(four["dicom"]).SeriesNumber == 8004
    assert none["dicom_note"] == "the source series has no Series Number: the report's is 8000"
    assert "dicom_note" not in four
    (warned,) = [r.getMessage() for r in caplog.records if r.name == "mriscan.dicom_sr"]
    assert warned.startswith(f"{none['path']}: the source series has no Series Number")
    assert warned.endswith(f"{Path(none['dicom']).name} gets Series Number 8000")
    res = CliRunner().invoke(
        main, ["predict", str(model_file), str(scans), "--output", str(tmp_path / "p.csv"),
               "--dicom-out", str(tmp_path / "sr2")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "(Series Number " in ln]
    assert len(lines) == 2
    (no_number,) = [ln for ln in lines if "(Series Number 8000)" in ln]
    assert no_number.endswith("; the source series has no Series Number: the report's is 8000")
    assert any("(Series Number 8004)" in ln for ln in lines)


def test_a_series_of_bare_data_sets_gets_its_report(model_file, tmp_path):
    """Files without the 128-byte preamble and file meta information are read by predict
    (``force=True``); their series' report used to be skipped ("Use force=True")."""
    import struct

    import pydicom

    from mriscan.predict import predict

    root = tmp_path / "scans"
    write_dicom_series(root / "T1", phantom_volume(1, n_slices=3, canvas=32),
                       patient=FakePatient(), series_number=3)  # fmt: skip
    for f in (root / "T1").iterdir():
        raw = f.read_bytes()
        (meta_len,) = struct.unpack("<I", raw[140:144])
        f.write_bytes(raw[144 + meta_len :])
        assert not pydicom.misc.is_dicom(f)
    out = tmp_path / "sr"
    rows = predict(model_file, [root], output=tmp_path / "p.csv", dicom_out=out)
    (series,) = [r for r in rows if r.get("level") == "series"]
    assert not series.get("dicom_skipped"), series.get("dicom_skipped")
    ds = pydicom.dcmread(series["dicom"])
    source = pydicom.dcmread(next((root / "T1").iterdir()), force=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.Modality == "SR"


def test_a_legacy_mr_file_stating_frames_gets_a_report_naming_the_frames(model_file, tmp_path):
    """MR Image Storage has no frames in its IOD; a converter's file of that class stating
    Number of Frames 3 made highdicom refuse the report. It is referenced as a whole and the
    frames scored are stated."""
    import pydicom

    from mriscan.predict import predict

    root = tmp_path / "scans"
    write_dicom_series(root / "MF", phantom_volume(2, n_slices=3, canvas=32),
                       patient=FakePatient(), multiframe=True, seed=5, series_number=4)  # fmt: skip
    (f,) = (root / "MF").iterdir()
    ds = pydicom.dcmread(f)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.save_as(f)
    rows = predict(model_file, [root], output=tmp_path / "p.csv", dicom_out=tmp_path / "sr")
    (series,) = [r for r in rows if r.get("level") == "series"]
    assert not series.get("dicom_skipped"), series.get("dicom_skipped")
    sr = pydicom.dcmread(series["dicom"])
    texts = [i.TextValue for i in _walk(sr.ContentSequence) if "TextValue" in i]
    (note,) = [t for t in texts if "referenced as a whole" in t]
    assert "states 3 frames; frame(s) 1, 2, 3 scored" in note and ds.SOPInstanceUID in note
