"""scan_predict: DICOM/NIfTI rows of predict — warnings, several series in one folder, failed
files named by pseudonym."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mriscan.cli import _threshold_text
from mriscan.predict import predict
from mriscan.scan_predict import label_stem, series_labels
from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    stack_to_ras,
    write_dicom_series,
    write_nifti,
)

pytestmark = pytest.mark.backend


def _two_series(folder: Path) -> None:
    """Two series of one patient in one folder (a1-a3: series 3, b1-b2: series 7)."""
    for name, number, n, seed in (("a", 3, 3, 1), ("b", 7, 2, 2)):
        files = write_dicom_series(
            folder / name, phantom_volume(seed, n_slices=n, canvas=32), series_number=number,
            patient=FakePatient(), seed=seed,
        )  # fmt: skip
        for k, f in enumerate(files):
            f.rename(folder / f"{name}{k + 1}.dcm")
        (folder / name).rmdir()


def test_series_labels_tell_apart_only_series_sharing_a_place():
    f, g = Path("scans/two"), Path("scans/one")
    units = {
        "series:x": (f, 3, f / "a1"),
        "series:y": (f, 7, f / "b1"),
        "series:z": (g, 3, g / "c1"),
        "volume:v": (Path("v.nii"), None, Path("v.nii")),
    }
    assert series_labels(units) == {
        "series:x": "series 3", "series:y": "series 7", "series:z": "", "volume:v": "",
    }  # fmt: skip
    # equal (or missing) Series Numbers: numbered in the order of their first files
    same = {"s:2": (f, 5, f / "b1"), "s:1": (f, 5, f / "a1"), "s:3": (f, None, f / "c1")}
    assert series_labels(same) == {"s:1": "series 5 #1", "s:2": "series 5 #2", "s:3": "series #1"}
    assert label_stem("series 5 #2") == "series5-2" and label_stem("series 3") == "series3"


def test_uniform_scanner_slices_are_flagged_as_png_ones_are(model_file, tmp_path):
    """The rule of ingest and of predict's PNG rows (mriscan.readers.slice_warnings): a
    black DICOM instance and a NIfTI volume's constant slice get the same warning, and their
    series / volume row counts them."""
    from PIL import Image

    scans = tmp_path / "scans"
    stack = phantom_volume(1, n_slices=3, canvas=32)
    stack[1] = 0.0  # one all-black instance
    write_dicom_series(scans / "s", stack, window=None)
    vol = phantom_volume(2, n_slices=4, canvas=32)
    vol[2] = 0.0
    write_nifti(scans / "v.nii.gz", stack_to_ras(vol))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(scans / "black.png")
    from mriscan.readers import UNIFORM_RULE, ReadOptions
    from mriscan.scan_config import NiftiConfig

    rows = predict(
        model_file, [scans], read_options=ReadOptions(nifti=NiftiConfig(selection="all"))
    )
    png = next(r for r in rows if r["path"].endswith("black.png"))
    assert png["warning"].startswith("uniform image (all black)")
    flagged = [r for r in rows if r.get("level") == "slice" and r["warning"]]
    assert len(flagged) == 2 and all(r["warning"] == png["warning"] for r in flagged)
    assert all(not r["error"] and r["label"] for r in flagged)  # predicted all the same
    units = {r["level"]: r for r in rows if r.get("level") in ("series", "volume")}
    assert units["series"]["warning"] == (
        f"1 of 3 slices uniform (no anatomy: {UNIFORM_RULE}), left out of P (see their rows)"
    )
    assert units["volume"]["warning"].startswith("1 of 4 slices uniform")
    # the pool is the slices with anatomy (tester31: blank slices set a series' verdict)
    series = [r for r in rows if r.get("level") == "slice" and r["unit"] == units["series"]["unit"]]
    kept = [r["probability"] for r in series if not r["warning"]]
    assert units["series"]["slices"] == 2 and units["series"]["probability"] == pytest.approx(
        np.mean(kept)
    )


def test_noise_slices_are_flagged_and_left_out_of_the_volume_s_pool(model_file, tmp_path):
    """tester32: two slices of full-range noise turned a phantom volume into "yes": they have
    no anatomy (``mriscan.readers.has_no_anatomy``), so they are flagged "noise" and left
    out of the volume's P, as blank slices are; a volume of noise only pools them all."""
    from mriscan.readers import NOISE_RULE, ReadOptions
    from mriscan.scan_config import NiftiConfig

    rng = np.random.default_rng(32)
    vol = phantom_volume(3, n_slices=5, canvas=32)
    vol = np.concatenate([vol, rng.uniform(0, 1, (2, 32, 32)).astype(np.float32)])
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "v.nii.gz", stack_to_ras(vol))
    write_nifti(tmp_path / "in" / "n.nii.gz", rng.uniform(0, 1, (32, 32, 3)).astype(np.float32))
    rows = predict(
        model_file, [tmp_path / "in"], read_options=ReadOptions(nifti=NiftiConfig(selection="all"))
    )
    by_unit: dict[str, list[dict]] = {}
    for r in rows:
        by_unit.setdefault(r["unit"], []).append(r)
    vol_rows, noise_rows = sorted(by_unit.values(), key=len, reverse=True)
    slices = [r for r in vol_rows if r["level"] == "slice"]
    volume = next(r for r in vol_rows if r["level"] == "volume")
    noisy = [r for r in slices if r["warning"]]
    assert len(slices) == 7 and len(noisy) == 2
    assert all(r["warning"] == f"noise image ({NOISE_RULE}): no anatomy" for r in noisy)
    heads = sorted((r["probability"] for r in slices if not r["warning"]), reverse=True)
    assert volume["slices"] == 5 and volume["probability"] == pytest.approx(np.mean(heads[:3]))
    assert volume["warning"] == (
        f"2 of 7 slices noise (no anatomy: {NOISE_RULE}), left out of P (see their rows)"
    )
    alone = next(r for r in noise_rows if r["level"] == "volume")
    assert alone["slices"] == 3 and alone["warning"].endswith("all pooled: none has anatomy "
                                                              "(see their rows)")  # fmt: skip


def test_two_series_in_one_folder_get_distinct_rows_pngs_and_captures(model_file, tmp_path):
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.explain import explain

    folder = tmp_path / "Doe_Jane" / "two"
    _two_series(folder)
    rows = predict(model_file, [folder], show_paths=True)
    units = sorted(r["path"] for r in rows if r["level"] == "series")
    assert units == [f"{folder} [series 3]", f"{folder} [series 7]"]
    hidden = predict(model_file, [folder])
    assert not any("Doe" in r["path"] or "series 3" in r["path"] for r in hidden)
    files = sorted(folder.iterdir())
    res = explain(
        model_file, files, out=tmp_path / "png", slices=[0], show_paths=True,
        dicom_out=tmp_path / "dcm",
    )  # fmt: skip
    assert len(res) == 2 and not any(r["error"] for r in res)
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["two_series3_slice0_layercam.png", "two_series7_slice0_layercam.png"]
    # one Secondary Capture per series, named by its SOP Instance UID (not overwriting)
    captures = sorted(p.name for p in (tmp_path / "dcm").iterdir())
    assert len(captures) == 2 and captures == sorted(Path(r["dicom"]).name for r in res)
    # without --show-paths the names stay pseudonymous
    res = explain(model_file, files, out=tmp_path / "h", slices=[0])
    assert all(p.name.startswith("series-") for p in (tmp_path / "h").glob("*.png"))
    assert len(list((tmp_path / "h").glob("*.png"))) == 2
    # the console: slice counts in the singular when there is one, the label per series
    out = CliRunner().invoke(
        main, ["predict", str(model_file), str(folder), "--show-paths",
               "--output", str(tmp_path / "p.csv")],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"{folder} [series 7]: P = " in out.output and "(2 slices)" in out.output
    from mriscan.artifacts import ModelCard

    card = ModelCard.load(model_file)  # the threshold the series labels follow, said once
    thr = _threshold_text(card.threshold)
    said = f"label: {card.class_names[1]} at P ≥ {thr} ({card.threshold_rule})"
    assert out.output.count(said) == 1, out.output


def test_failed_scanner_files_follow_show_paths(model_file, tmp_path):
    """An unreadable NIfTI and a truncated DICOM: by pseudonym, with the path removed from the
    library's own message too (nibabel repeats it), unless --show-paths."""
    from click.testing import CliRunner

    from mriscan.cli import main

    scans = tmp_path / "Roe_Richard"
    files = write_dicom_series(scans / "s", phantom_volume(1, n_slices=2, canvas=32))
    files[0].write_bytes(files[0].read_bytes()[:-100])
    (scans / "bad.nii.gz").write_bytes(b"not gz at all")
    rows = predict(model_file, [scans])
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 2 and all(r["level"] == "file" for r in bad)
    assert not any("Roe" in r["path"] + r["error"] or "bad.nii" in r["error"] for r in bad)
    assert sorted(r["path"].split("/")[0] for r in bad) == ["dicom", "nifti"]
    shown = predict(model_file, [scans], show_paths=True)
    assert sorted(r["path"] for r in shown if r["error"]) == sorted(
        [str(files[0]), str(scans / "bad.nii.gz")]
    )
    res = CliRunner().invoke(
        main, ["predict", str(model_file), str(scans), "--output", str(tmp_path / "p.csv")]
    )
    assert res.exit_code == 0 and "Roe" not in res.output
    assert "run again with --show-paths" in res.output


def _patient_folder(root: Path) -> Path:
    """A folder named after a made-up patient: a readable series, a truncated instance, a
    structured report (pydicom's test-SR.dcm), a DICOMDIR, a notes file that is no input,
    and a JPEG-only folder beside it."""
    import shutil

    from PIL import Image
    from pydicom.data import get_testdata_file

    scans = root / "Roe_Richard_19650303"
    files = write_dicom_series(
        scans / "T1", phantom_volume(1, n_slices=3, canvas=32), patient=FakePatient()
    )
    files[0].write_bytes(files[0].read_bytes()[:-100])
    shutil.copy(get_testdata_file("test-SR.dcm"), scans / "Roe_report.dcm")
    shutil.copy(get_testdata_file("DICOMDIR"), scans / "DICOMDIR")
    (scans / "Roe_notes.txt").write_text("Richard Roe, referred by Dr X")
    plain = root / "jpegs"
    plain.mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(plain / "Moe_scan.jpg")
    (plain / "Moe_notes.txt").write_text("not an input")
    return scans


def test_no_path_under_scanner_data_reaches_any_output(model_file, tmp_path):
    """predict and explain name every file under a folder of scanner data by pseudonym:
    failed instances, non-image DICOM (SR, DICOMDIR) and files that are no input, on the
    console and in the output file; --show-paths names them by path. JPEG/PNG files and what
    lies beside them in folders without scanner data keep their paths."""
    from click.testing import CliRunner

    from mriscan.cli import main

    scans = _patient_folder(tmp_path / "in")
    plain = tmp_path / "in" / "jpegs"
    for suffix in (".csv", ".json"):
        out = tmp_path / f"p{suffix}"
        args = ["predict", str(model_file), str(scans), str(plain), "--output", str(out)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        text = res.output + out.read_text()
        assert "Roe" not in text and "Richard" not in text
        for name in ("other/file-", "dicom/unknown/file-", "skipped: not an image"):
            assert name in text
        assert "Moe_scan.jpg" in text and "Moe_notes.txt" in text  # no scanner data there
        assert "run again with --show-paths" in res.output
    res = CliRunner().invoke(main, [*args, "--show-paths"])
    assert res.exit_code == 0, res.output
    shown = out.read_text()
    for name in ("Roe_notes.txt", "Roe_report.dcm", "DICOMDIR", "IM0001"):
        assert name in shown and name in res.output

    exp = ["explain", str(model_file), str(scans), "--top-k", "1", "--out", str(tmp_path / "x")]
    res = CliRunner().invoke(main, exp)
    assert res.exit_code == 0, res.output
    assert "Roe" not in res.output and "Richard" not in res.output
    assert res.output.count("other/file-") == 1 and res.output.count("/file-") == 4
    assert "run again with --show-paths" in res.output
    assert not any("Roe" in p.name for p in (tmp_path / "x").iterdir())
    res = CliRunner().invoke(main, [*exp, "--show-paths"])
    assert res.exit_code == 0, res.output
    for name in ("Roe_notes.txt", "Roe_report.dcm", "DICOMDIR", "IM0001"):
        assert name in res.output


def test_a_4d_volume_is_said_in_its_volume_row_without_its_path(model_file, tmp_path, caplog):
    """The first volume of a 4-D NIfTI is read: the volume row's warning says so, and no log
    line above DEBUG names the file (named after a made-up patient)."""
    import logging

    stack = stack_to_ras(phantom_volume(3, n_slices=4, canvas=32))
    path = tmp_path / "OKAFOR_CHIDI_1970.nii.gz"
    write_nifti(path, np.stack([stack, stack], axis=-1))
    with caplog.at_level(logging.INFO):
        rows = predict(model_file, [path])
    [vol] = [r for r in rows if r.get("level") == "volume"]
    assert vol["warning"] == "4-D volume with 2 volumes: the first was read (--nifti-4d)"
    assert "OKAFOR" not in caplog.text + "".join(str(r) for r in rows)


def test_volumes_of_one_file_name_in_different_folders_stay_apart(model_file, tmp_path):
    """A BIDS tree holds sub-*/anat/T1w.nii.gz: their volume ids hashed the file name alone,
    so predict pooled every subject into one volume row and named their slices alike."""
    from mriscan.explain import explain

    for i in range(3):
        folder = tmp_path / "bids" / f"sub-0{i}" / "anat"
        folder.mkdir(parents=True)
        write_nifti(folder / "T1w.nii.gz", stack_to_ras(phantom_volume(i, n_slices=4, canvas=32)))
    rows = predict(model_file, [tmp_path / "bids"])
    volumes = [r for r in rows if r.get("level") == "volume"]
    assert len(volumes) == 3 and all(r["slices"] == 4 for r in volumes)
    slices = [r["path"] for r in rows if r.get("level") == "slice"]
    assert len(slices) == len(set(slices)) == 12
    files = sorted((tmp_path / "bids").rglob("*.nii.gz"))
    pngs = explain(model_file, files, out=tmp_path / "cam", top_k=1)
    assert len({r.get("png") for r in pngs}) == 3, pngs


def test_show_paths_writes_names_that_are_not_utf8_escaped(model_file, tmp_path):
    """A Latin-1 folder or file name under --show-paths crashed the CSV writer after 0 rows."""
    import os
    import shutil

    files = write_dicom_series(tmp_path / "src", phantom_volume(1, n_slices=2, canvas=32))
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/in/bad\xffname"))
    odd.mkdir(parents=True)
    shutil.copy(files[0], Path(os.fsdecode(bytes(odd) + b"/IM\xfe1.dcm")))
    (odd / "broken.dcm").write_bytes(files[1].read_bytes()[:400])
    out = tmp_path / "p.csv"
    predict(model_file, [tmp_path / "in"], output=out, show_paths=True)
    text = out.read_text(encoding="utf-8")
    assert "bad\\xffname/IM\\xfe1.dcm#0" in text and "bad\\xffname/broken.dcm" in text


def _series_row(rows):
    (row,) = [r for r in rows if r.get("level") == "series"]
    return row


def test_copies_of_an_instance_are_scored_once(model_file, tmp_path):
    """A copied file, the folder given with one of its files, and a damaged copy of an
    instance read from another file: each SOP instance is scored once, the series' probability
    and slice count are those of the series without the copies, each copy has a row saying so
    and the series row counts them."""
    import shutil

    clean = tmp_path / "clean"
    files = write_dicom_series(clean, phantom_volume(1, n_slices=4, canvas=32), seed=3)
    want = _series_row(predict(model_file, [clean]))
    assert want["slices"] == 4 and want["warning"] == ""

    scans = tmp_path / "scans"
    shutil.copytree(clean, scans)
    shutil.copy(scans / files[0].name, scans / "copy_a.dcm")
    shutil.copy(scans / files[1].name, scans / "copy_b.dcm")
    damaged = (scans / files[2].name).read_bytes()[:-100]  # not decodable, same instance
    (scans / "copy_c.dcm").write_bytes(damaged)
    rows = predict(model_file, [scans, scans / files[3].name, scans])
    got = _series_row(rows)
    assert got["slices"] == 4
    assert got["probability"] == pytest.approx(want["probability"], abs=1e-6)
    assert "3 files holding an instance read from another file" in got["warning"]
    assert "unreadable" not in got["warning"]  # the damaged file's instance was scored
    slices = [r for r in rows if r.get("level") == "slice"]
    assert len(slices) == 4 and len({r["path"] for r in slices}) == 4
    notes = [r["error"] for r in rows if "same SOP Instance UID" in r["error"]]
    assert len(notes) == 3
    firsts = {r["path"] for r in slices}
    for note in notes:  # each names the slice row (the damaged one: its instance) scored
        assert any(f"as {p.rsplit('#', 1)[0]}" in note for p in firsts)
    shown = predict(model_file, [scans], show_paths=True)
    copied = sorted(r["path"] for r in shown if "same SOP Instance UID" in r["error"])
    assert copied == sorted(str(scans / f"copy_{c}.dcm") for c in "abc")


def test_an_unreadable_instance_of_its_own_still_counts_as_missing(model_file, tmp_path):
    """Two damaged copies of one instance that no other file holds: one instance missing."""
    scans = tmp_path / "s"
    files = write_dicom_series(scans, phantom_volume(1, n_slices=3, canvas=32), seed=3)
    damaged = files[0].read_bytes()[:-100]
    files[0].write_bytes(damaged)
    (scans / "again.dcm").write_bytes(damaged)
    got = _series_row(predict(model_file, [scans]))
    assert got["slices"] == 2
    assert got["warning"].startswith("1 of 3 instances unreadable")


def test_a_file_that_fails_to_decode_has_its_header_read_once(model_file, tmp_path, monkeypatch):
    """A damaged file's header is read once for both its series and its SOP instance: by the
    pass that groups files into series before reading them (``mriscan.dicom.read_header_ids``),
    whose ids the failure path reuses instead of reading the header again; it still tells a
    damaged copy of a scored instance from a missing one (one copy, one damaged instance of
    its own)."""
    import pydicom

    import mriscan.dicom as dicom_mod

    scans = tmp_path / "s"
    files = write_dicom_series(scans, phantom_volume(1, n_slices=3, canvas=32), seed=3)
    (scans / "copy.dcm").write_bytes(files[1].read_bytes()[:-100])  # a scored instance
    files[0].write_bytes(files[0].read_bytes()[:-100])  # an instance of its own
    reads: dict[str, int] = {}
    real = pydicom.dcmread

    def counting(path, *args, **kwargs):
        tags = kwargs.get("specific_tags") or ()
        # predict's header look-ups (not the series-size check of ingest and audit)
        if tags and "Rows" not in tags:
            reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dicom_mod.pydicom, "dcmread", counting)
    got = _series_row(predict(model_file, [scans]))
    # every file's header once (the grouping pass), the failed files' no second time
    assert reads == {"copy.dcm": 1, **{f.name: 1 for f in files}}
    assert got["slices"] == 2 and got["warning"].startswith("1 of 3 instances unreadable")
    assert "1 file holding an instance read from another file" in got["warning"]


def _with_empty_instance(scans: Path) -> list[Path]:
    """A series of 4 instances of 32x32 in ``scans`` and a 5th of its own SOP instance with
    Rows = Columns = 0 and no pixel bytes (the tester's F1 case)."""
    import pydicom
    from pydicom.uid import generate_uid

    files = write_dicom_series(scans, phantom_volume(1, n_slices=4, canvas=32), seed=3)
    ds = pydicom.dcmread(files[-1])
    ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 0
    ds.PixelData = b""
    ds.save_as(scans / "IM9999.dcm")
    return [*files, scans / "IM9999.dcm"]


def test_an_instance_of_empty_size_fails_alone_and_its_series_is_read(tmp_path):
    """An instance whose header gives 0x0 gets its own reason and is not counted as one of
    its series' sizes: the series' 4 good files are read (F1, tester 18: the whole series was
    refused as "mixes slice sizes: 4 files of 128x128, 1 file of 0x0"). The header-only check
    (audit, ingest's redo) leaves such a file to the reader too."""
    from mriscan.io import SourceFile
    from mriscan.readers import check_series_sizes
    from mriscan.scan_predict import read_inputs

    files = _with_empty_instance(tmp_path / "s")
    reads = read_inputs([SourceFile(f, "dicom") for f in files], workers=1)
    assert [len(r.slices) for r in reads] == [1, 1, 1, 1, 0]
    assert "image size 0x0 in the header is empty" in reads[-1].error
    assert check_series_sizes(files) == {}


def test_a_series_of_two_real_sizes_is_still_refused_whole(tmp_path):
    """Two real sizes in one series, and a file of empty size among them: the sized files are
    refused with the counts of the two real sizes, the empty one keeps its own reason."""
    import pydicom

    from mriscan.io import SourceFile
    from mriscan.readers import check_series_sizes
    from mriscan.scan_predict import read_inputs

    files = _with_empty_instance(tmp_path / "s")
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    more = write_dicom_series(tmp_path / "t", phantom_volume(2, n_slices=2, canvas=24), seed=4)
    for f in more:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(f)
    files += more
    reads = read_inputs([SourceFile(f, "dicom") for f in files], workers=1)
    counts = "its series mixes slice sizes: 4 files of 32x32, 2 files of 24x24; this file is "
    assert [r.error.split("; a series")[0] for r in reads if r.path != files[4]] == [
        counts + "32x32 (the series' most common size)"
    ] * 4 + [counts + "24x24"] * 2
    assert "image size 0x0 in the header is empty" in reads[4].error
    header = check_series_sizes(files)
    assert header == {r.path: r.error for r in reads if r.path != files[4]}


def test_the_series_of_an_empty_instance_is_scored_with_it_counted_unreadable(model_file, tmp_path):
    files = _with_empty_instance(tmp_path / "s")
    rows = predict(model_file, [tmp_path / "s"])
    got = _series_row(rows)
    assert got["slices"] == 4 and got["warning"].startswith("1 of 5 instances unreadable")
    (bad,) = [r for r in rows if r["error"]]
    assert "image size 0x0 in the header is empty" in bad["error"]
    assert len(files) == 5


def test_a_file_beside_scanner_data_has_level_file_with_or_without_show_paths(tmp_path):
    """A notes file beside DICOM files: ``level`` "file" whether it is named by pseudonym or
    by path (F14, tester 18: it was empty with --show-paths); one beside JPEGs has none."""
    from PIL import Image

    from mriscan.readers import collect_inputs
    from mriscan.scan import new_salt
    from mriscan.scan_predict import problem_rows

    write_dicom_series(tmp_path / "lv", phantom_volume(1, n_slices=1, canvas=32))
    (tmp_path / "lv" / "notes.txt").write_text("not an input")
    (tmp_path / "jp").mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "jp" / "a.png")
    (tmp_path / "jp" / "notes.txt").write_text("not an input")
    inputs = [tmp_path / "lv", tmp_path / "jp"]
    files, problems = collect_inputs(inputs)
    for show in (False, True):
        rows = problem_rows(problems, inputs, files, salt=new_salt(), show_paths=show)
        by_folder = {("jp" if "/jp/" in r["path"] else "lv"): r for r in rows}
        assert by_folder["lv"]["level"] == "file", (show, rows)
        assert "level" not in by_folder["jp"]
        assert by_folder["lv"]["path"].startswith("other/file-") != show


def _reuse_uid(files: list[Path], uid: str = "1.2.3.4") -> None:
    """Give every file the same SOP Instance UID, as a broken anonymiser does."""
    import pydicom

    for f in files:
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(f)


def test_different_slices_that_share_a_sop_instance_uid_are_each_scored(model_file, tmp_path):
    """A broken anonymiser gave 4 different slices one SOP Instance UID (tester18 M1): each is
    scored, as the series without the reused UIDs is, under a name of its own (its file's
    pseudonym, or its path), with a warning naming the slice it shares the UID with; a byte
    copy (the same pixels) is still a copy, not scored again."""
    import shutil

    clean = tmp_path / "clean"
    files = write_dicom_series(clean, phantom_volume(1, n_slices=4, canvas=32), seed=3)
    want = _series_row(predict(model_file, [clean]))
    _reuse_uid(files)
    scans = tmp_path / "scans"
    shutil.copytree(clean, scans)
    shutil.copy(scans / files[0].name, scans / "zz_copy.dcm")
    rows = predict(model_file, [scans])
    got = _series_row(rows)
    assert got["slices"] == 4
    assert got["probability"] == pytest.approx(want["probability"], abs=1e-6)
    assert "1 file holding an instance read from another file" in got["warning"]
    assert (
        "3 slices sharing a SOP Instance UID with another slice of other pixels" in (got["warning"])
    )
    slices = [r for r in rows if r.get("level") == "slice"]
    assert len(slices) == 4 and len({r["path"] for r in slices}) == 4
    first = [r for r in slices if not r["warning"]]
    assert len(first) == 1
    clashed = [r for r in slices if r["warning"]]
    assert all(r["path"].startswith("dicom/") and "/file-" in r["path"] for r in clashed)
    assert all(
        r["warning"].startswith(
            f"same SOP Instance UID as {first[0]['path']} but different pixels: scored as a "
            "slice of its own; the file's UIDs are not unique"
        )
        for r in clashed
    )
    (copy,) = [r for r in rows if r["error"]]
    assert copy["error"].startswith(f"skipped: same SOP Instance UID as {first[0]['path']}")
    shown = predict(model_file, [scans], show_paths=True)
    assert sorted(r["path"] for r in shown if r.get("level") == "slice") == sorted(
        f"{scans / f.name}#0" for f in files
    )


def test_predict_summary_counts_copies_and_files_that_are_no_input_apart(model_file, tmp_path):
    """The summary line counts a damaged file as unreadable, and apart from it a copy of a
    scored instance, a DICOM file without an image and a text file (tester18 M2: all four
    were "4 unreadable")."""
    import shutil

    import pydicom
    from click.testing import CliRunner

    from mriscan.cli import main

    scans = tmp_path / "scans"
    files = write_dicom_series(scans, phantom_volume(1, n_slices=3, canvas=32), seed=3)
    shutil.copy(files[0], scans / "copy.dcm")
    files[1].write_bytes(files[1].read_bytes()[:-100])
    shutil.copy(Path(pydicom.data.get_testdata_file("test-SR.dcm")), scans / "report.dcm")
    (scans / "notes.txt").write_text("scanned on Monday")
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(main, ["predict", str(model_file), str(scans), "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert (
        "Predicted 2 image(s) (" in r.output
        and "); 1 unreadable, 1 copy of a scored instance (not scored again), 2 not inputs → "
        in r.output
    )


def test_a_series_over_two_folders_is_known_by_its_first_files_folder(model_file, tmp_path):
    """Series 3 has files in X/ and Y/, and X/ also holds series 7: predict names series 3 by
    X (its first file's folder, as explain does), so both rows of X carry their series label.
    It used to take the folder of the series' last file read (Y): two rows both named "X"
    (tester22 MED)."""
    x, y = tmp_path / "X", tmp_path / "Y"
    _two_series(x)  # a1-a3: series 3, b1-b2: series 7
    y.mkdir()
    (x / "a3.dcm").rename(y / "a3.dcm")
    rows = predict(model_file, [x, y], show_paths=True)
    units = sorted(r["path"] for r in rows if r["level"] == "series")
    assert units == [f"{x} [series 3]", f"{x} [series 7]"]


def test_a_series_whose_files_all_fail_still_counts_among_its_folders_series(model_file, tmp_path):
    """X/ holds series 3 and series 7, whose one file is truncated (header whole, pixels cut):
    predict and explain both label series 3 "[series 3]", from the headers, so their names
    agree. predict counted only series that gave slices (no label) while explain counted the
    headers' (tester22 MED)."""
    from mriscan.explain import explain

    x = tmp_path / "X"
    _two_series(x)  # a1-a3: series 3, b1-b2: series 7
    (x / "b2.dcm").unlink()
    data = (x / "b1.dcm").read_bytes()
    (x / "b1.dcm").write_bytes(data[: len(data) - 1000])
    rows = predict(model_file, [x], show_paths=True)
    assert [r["path"] for r in rows if r["level"] == "series"] == [f"{x} [series 3]"]
    assert any(r["level"] == "file" and r["error"] for r in rows)  # b1 said unreadable
    res = explain(model_file, sorted(x.iterdir()), out=tmp_path / "cam", top_k=1,
                  show_paths=True)  # fmt: skip
    (png,) = [Path(r["png"]).name for r in res if not r["error"]]
    assert png.startswith("X_series3_slice")
