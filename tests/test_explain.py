"""Grad-CAM sanity: when the label is a bright blob at a known place, the heatmap peaks there."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from mriscan.errors import ConfigError
from mriscan.explain import class_activation_map, grad_cam, layer_cam, save_overlay
from mriscan.model import build_model
from tests.conftest import three_class_task

pytestmark = pytest.mark.backend


def _blob_task(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 32, 32, 1)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    x[y == 1, 4:12, 4:12, 0] += 3.0  # the evidence: top-left
    return x, y


@pytest.fixture(scope="module")
def blob_model():
    """A small CNN trained until its evidence is the blob, with 20 held-out blob images."""
    keras.utils.set_random_seed(0)
    x, y = _blob_task(256)
    model = build_model(
        32, filters=(8, 16, 16, 16), dropout=0.0, augment=False, dense_units=16, mirror=False
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    xt, yt = _blob_task(40, seed=1)
    acc = float(np.mean((np.asarray(model.predict(xt, verbose=0)).ravel() > 0.5) == yt))
    assert acc > 0.9  # the model learned the task, so its evidence is the blob
    return model, xt[yt == 1]


def test_heatmap_peaks_on_the_blob(tmp_path, blob_model):
    model, blobs = blob_model
    cams = grad_cam(model, blobs)
    assert cams.shape == (20, 32, 32) and cams.max() <= 1.0 and cams.min() >= 0.0
    peaks = [np.unravel_index(np.argmax(c), c.shape) for c in cams]
    on_blob = [py < 16 and px < 16 for py, px in peaks]
    assert np.mean(on_blob) >= 0.8, peaks
    png = save_overlay(blobs[0, ..., 0], cams[0], tmp_path / "cam.png", title="blob")
    assert png.stat().st_size > 1000


def test_layer_cam_peaks_inside_the_blob_itself(blob_model):
    """LayerCAM fuses the finer maps of shallower blocks, so its peak lands on the 8×8 blob
    (rows/cols 4-11) and nearer its centre than the peak of the last block's 4×4 Grad-CAM."""
    model, blobs = blob_model
    cams = layer_cam(model, blobs)
    assert cams.shape == (20, 32, 32) and cams.max() == pytest.approx(1.0)
    assert cams.min() >= 0.0
    peaks = np.array([np.unravel_index(np.argmax(c), c.shape) for c in cams])
    inside = np.all((peaks >= 2) & (peaks <= 13), axis=1)  # the blob, ±2 px
    assert np.mean(inside) >= 0.8, peaks
    coarse = np.array([np.unravel_index(np.argmax(c), c.shape) for c in grad_cam(model, blobs)])
    centre = np.array([7.5, 7.5])
    offset = np.linalg.norm(peaks - centre, axis=1).mean()
    assert offset < np.linalg.norm(coarse - centre, axis=1).mean(), (peaks, coarse)
    # the dispatcher gives the same maps; an unknown method is refused by name
    np.testing.assert_allclose(class_activation_map(model, blobs[:4]), cams[:4], atol=1e-5)
    with pytest.raises(ConfigError, match="gradcam"):
        class_activation_map(model, blobs[:1], method="saliency")
    with pytest.raises(ConfigError, match="at least one layer"):
        layer_cam(model, blobs[:1], layer_names=[])


# --- issue 19 item 12: explain's inputs and outputs ---------------------------------------------


def _slice_file(path):
    from PIL import Image

    from tests.conftest import make_slice

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_slice(np.random.default_rng(len(str(path))), 48, 40)).save(path)
    return path


def test_heatmap_names_are_distinct_and_follow_the_relative_path(tmp_path):
    from mriscan.explain import heatmap_names

    assert heatmap_names([tmp_path / "a/slice_1.jpg", tmp_path / "b/slice_1.jpg"]) == [
        "a__slice_1_layercam.png",
        "b__slice_1_layercam.png",
    ]
    assert heatmap_names([tmp_path / "x/slice_1.jpg"]) == ["slice_1_layercam.png"]
    names = heatmap_names(
        [tmp_path / p for p in ("x/s.jpg", "x/s.png", "x/S.JPG", "x/s.jpg", "x/y/s.jpg")]
    )
    assert names[0] == names[3]  # the same file twice: one name
    assert len({n.casefold() for n in names}) == 4  # distinct files: distinct names
    assert names[4] == "y__s_layercam.png"


def test_explain_writes_one_png_per_file_even_with_equal_names(model_file, tmp_path):
    import os

    from mriscan.explain import explain

    images = [_slice_file(tmp_path / "in" / d / "slice_1.jpg") for d in ("a", "b")]
    odd = _slice_file(tmp_path / "in" / "c" / "x.png")
    try:
        odd = odd.rename(odd.with_name(os.fsdecode(b"scan_\xff.png")))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    out = tmp_path / "cam"
    results = explain(model_file, [*images, odd], out=out)
    assert [r["error"] for r in results] == ["", "", ""]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "a__slice_1_layercam.png",
        "b__slice_1_layercam.png",
        "c__scan__xff_layercam.png",
    ]
    assert results[2]["path"].endswith("scan_\\xff.png")  # printable, valid UTF-8
    # the label's reason states the threshold (0.5 on this card), "P(no) = 0.46, predicted no"
    # alone reads as a contradiction when the threshold is not 0.5
    for r in results:
        assert r["decision"].startswith("P(yes) = ") and "threshold 0.500" in r["decision"]


def test_explain_flags_uniform_and_thin_slices_as_predict_does(model_file, tmp_path):
    from PIL import Image

    from mriscan.explain import explain

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "in" / "black.png")
    Image.fromarray(np.full((40, 4), 90, np.uint8)).save(tmp_path / "in" / "thin.png")
    ok = _slice_file(tmp_path / "in" / "ok.png")
    rows = explain(model_file, [tmp_path / "in" / "black.png", tmp_path / "in" / "thin.png", ok],
                   out=tmp_path / "cam")  # fmt: skip
    why = {Path(r["path"]).name: r["warning"] for r in rows}
    assert "uniform image (all black)" in why["black.png"]
    assert "a side under 8" in why["thin.png"] and why["ok.png"] == ""


def test_explain_cli_without_images_or_readable_images_exits_1(model_file, tmp_path):
    from click.testing import CliRunner

    from mriscan.cli import main

    (tmp_path / ".cache" / "empty").mkdir(parents=True)
    r = CliRunner().invoke(main, ["explain", str(model_file), str(tmp_path / ".cache" / "empty")])
    assert r.exit_code == 1 and "No image to explain" in r.output
    bad = tmp_path / ".cache" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = CliRunner().invoke(main, ["explain", str(model_file), str(bad), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "None of the 1 image(s) could be read" in r.output
    assert "bad.png" in r.output


def test_explain_cli_with_no_requested_slice_says_so_not_unreadable(model_file, tmp_path):
    """--slices 999 on a series and a volume that were read: each is listed with the slices it
    has, and the last line says no requested slice exists (F15, tester 18: it said "None of the
    2 image(s) could be read"); exit status 1 as for nothing written. With a broken image
    beside them, both causes are counted."""
    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_dicom_series, write_nifti

    write_dicom_series(tmp_path / "s", phantom_volume(1, n_slices=3, canvas=32))
    vol = write_nifti(tmp_path / "v.nii.gz", stack_to_ras(phantom_volume(2, n_slices=4, canvas=32)))
    args = ["explain", str(model_file), str(vol), str(tmp_path / "s"), "--slices", "999"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x")])
    assert r.exit_code == 1, r.output
    assert "could be read" not in r.output
    assert "no requested slice (999) exists in the 2 series/volume(s) read" in r.output
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = CliRunner().invoke(main, [*args, str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "and 1 input(s) could not be read" in r.output


@pytest.mark.parametrize("cam_fn", [grad_cam, layer_cam], ids=["gradcam", "layercam"])
def test_k_class_heatmaps_follow_the_chosen_class(three_class_model, cam_fn):
    """The map of class k depends on class k's score only: changing the output weights of the
    other classes leaves it unchanged, changing class k's changes it."""
    xt, yt = three_class_task(60, seed=1)
    pred = np.asarray(three_class_model.predict(xt, verbose=0)).argmax(axis=1)
    assert np.mean(pred == yt) > 0.9  # the model learned the task
    x = xt[yt == 1][:8]
    head = three_class_model.layers[-1]
    kernel, bias = (np.array(w) for w in head.get_weights())
    before = cam_fn(three_class_model, x, class_index=1)
    try:
        other = kernel.copy()
        other[:, [0, 2]] = np.random.default_rng(0).normal(size=(kernel.shape[0], 2))
        head.set_weights([other, bias])
        np.testing.assert_allclose(cam_fn(three_class_model, x, class_index=1), before, atol=1e-5)
        mine = kernel.copy()
        mine[:, 1] = -mine[:, 1]
        head.set_weights([mine, bias])
        assert not np.allclose(cam_fn(three_class_model, x, class_index=1), before, atol=1e-3)
    finally:
        head.set_weights([kernel, bias])
    # by default each slice is explained for its predicted class
    np.testing.assert_allclose(cam_fn(three_class_model, x), before, atol=1e-5)


def test_explain_refuses_class_with_boxes(tmp_path):
    """The pointing game maps each slice's predicted class: --class with --boxes would be
    ignored, so it is a usage error (exit 2) saying so, before the model is read."""
    (tmp_path / "m.keras").write_bytes(b"not read")
    (tmp_path / "data" / "glioma").mkdir(parents=True)
    (tmp_path / "boxes.csv").write_text("file,class,x_center,y_center,width,height\n")
    res = _cli(
        tmp_path / "m.keras", tmp_path / "data", "--boxes", tmp_path / "boxes.csv",
        "--class", "notumor", "--out", tmp_path / "pg",
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "--class and --boxes exclude each other" in res.output
    assert "predicted class" in res.output and not (tmp_path / "pg").exists()


def test_explain_boxes_takes_one_folder_typed_twice_but_not_two(tmp_path):
    """--boxes reads one data folder: the same folder given twice (another spelling too) is
    that folder (tester26 #15: it was refused), two folders are a usage error saying so."""
    (tmp_path / "m.keras").write_bytes(b"not a model")
    for d in ("data/glioma", "other"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "boxes.csv").write_text("file,class,x_center,y_center,width,height\n")
    data, boxes = tmp_path / "data", tmp_path / "boxes.csv"
    twice = _cli(tmp_path / "m.keras", data, tmp_path / "data" / "glioma" / "..", "--boxes", boxes)
    assert "exactly one data folder" not in twice.output  # past the check: the model is read
    assert "m.json is missing" in twice.output and twice.exit_code == 1, twice.output
    two = _cli(tmp_path / "m.keras", data, tmp_path / "other", "--boxes", boxes)
    assert two.exit_code == 2 and "got 2 distinct paths" in two.output, two.output
    # a folder given as the boxes file: a usage error, not a traceback (tester28)
    folder = _cli(tmp_path / "m.keras", data, "--boxes", tmp_path / "other")
    assert folder.exit_code == 2 and "is a directory" in folder.output, folder.output


@pytest.mark.parametrize(
    ("given", "why"),
    [
        (["--slices", "0,3"], "picks the DICOM/NIfTI slices"),
        (["--top-k", "3"], "picks the DICOM/NIfTI slices"),  # the default value, given
        (["--dicom-out", "sc"], "writes no heatmap"),
        (["--show-paths"], "names files by their path in the boxes file"),
        (["--modality", "CT"], "not DICOM/NIfTI"),
        (["--nifti-4d", "refuse"], "not DICOM/NIfTI"),
    ],
)
def test_explain_refuses_options_the_pointing_game_would_ignore(tmp_path, given, why):
    """--slices, --top-k, --dicom-out, --show-paths and the scanner reading options change
    nothing in the pointing game: each is a usage error (exit 2) naming it and why, before
    the model is read (the model file here is no model)."""
    (tmp_path / "m.keras").write_bytes(b"not read")
    (tmp_path / "data" / "glioma").mkdir(parents=True)
    (tmp_path / "boxes.csv").write_text("file,class,x_center,y_center,width,height\n")
    res = _cli(
        tmp_path / "m.keras", tmp_path / "data", "--boxes", tmp_path / "boxes.csv",
        "--out", tmp_path / "pg", *given,
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"does not use {given[0]}" in res.output and why in res.output, res.output
    assert not (tmp_path / "pg").exists() and not (tmp_path / "sc").exists()


def test_nifti_slices_are_numbered_by_the_volume_s_own_index(model_file, tmp_path):
    """Blank slices 0-2 are not read (too little brain): slice 3 of the volume is called slice
    3 (not 0) in the row, the PNG name and --slices, as in its source nifti/<id>#3."""
    from mriscan.explain import explain
    from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_nifti

    stack = phantom_volume(2, n_slices=6, canvas=32)
    padded = np.concatenate([np.zeros_like(stack[:3]), stack])  # volume slices 3..8 hold brain
    vol = write_nifti(tmp_path / "Roe_Richard.nii.gz", stack_to_ras(padded))
    res = explain(model_file, [vol], out=tmp_path / "x", slices=[3, 8, 1])
    made = [r for r in res if not r["error"]]
    assert [r["path"].split("#")[1] for r in made] == ["3 (slice 3)", "8 (slice 8)"]
    assert sorted(p.name.split("_slice")[1] for p in (tmp_path / "x").glob("*.png")) == [
        "3_layercam.png",
        "8_layercam.png",
    ]
    (missing,) = [r for r in res if r["error"]]
    assert "no slice 1 among the volume's slices that are read (indices 3-8" in missing["error"]
    top = explain(model_file, [vol], out=tmp_path / "y", top_k=2)
    for r in top:  # the number shown is the source's index
        index = r["path"].split("#")[1].split(" ")[0]
        assert r["path"].endswith(f"(slice {index})") and 3 <= int(index) <= 8


# --- issue 18: explain reads scanner files as predict does; --show-paths; --dicom-out ------------


@pytest.fixture
def scans(tmp_path):
    """A 5-slice DICOM series in a folder named after its (made-up) patient, a NIfTI volume
    whose slices 0-2 are blank (not read by default), and a JPEG."""
    from PIL import Image

    from mriscan.synth_scanner import (
        FakePatient,
        phantom_volume,
        stack_to_ras,
        write_dicom_series,
        write_nifti,
    )

    root = tmp_path / "scans"
    series = root / "Doe_Jane_19700101" / "T1"
    write_dicom_series(series, phantom_volume(1, n_slices=5, canvas=32), patient=FakePatient())
    stack = phantom_volume(2, n_slices=6, canvas=32)
    padded = np.concatenate([np.zeros_like(stack[:3]), stack])
    write_nifti(root / "Roe_Richard.nii.gz", stack_to_ras(padded))
    Image.fromarray((stack[2] * 255).astype(np.uint8)).save(root / "plain.jpg")
    return root


def _files(root):
    from mriscan.readers import collect_inputs

    return [f.path for f in collect_inputs([root])[0]]


def _cli(*args):
    from click.testing import CliRunner

    from mriscan.cli import main

    return CliRunner().invoke(main, ["explain", *map(str, args)])


def test_explain_takes_predict_s_reader_options(model_file, scans, tmp_path):
    """--nifti-slices all makes the blank slice 1 explainable; --modality CT leaves the MR
    series unread; --dicom-window/--no-dicom-header-window give the probabilities predict
    gives with the same options, slice by slice (matched by file with --show-paths)."""
    vol = scans / "Roe_Richard.nii.gz"
    res = _cli(model_file, vol, "--slices", "1", "--out", tmp_path / "a")
    assert res.exit_code == 1 and "no slice 1 among the volume's slices" in res.output
    res = _cli(model_file, vol, "--slices", "1", "--out", tmp_path / "b", "--nifti-slices", "all")
    assert res.exit_code == 0, res.output
    assert [p.name.split("_", 1)[1] for p in (tmp_path / "b").glob("*.png")] == [
        "slice1_layercam.png"
    ]
    series = scans / "Doe_Jane_19700101" / "T1"
    res = _cli(model_file, series, "--modality", "CT", "--out", tmp_path / "c")
    assert res.exit_code == 1 and res.output.count("skipped: ") == 5
    assert not (tmp_path / "c").exists()

    from mriscan.explain import explain
    from mriscan.predict import predict
    from mriscan.readers import ReadOptions
    from mriscan.scan_config import DicomConfig

    opts = ReadOptions(dicom=DicomConfig(window_percentiles=(5.0, 60.0), use_header_window=False))
    predicted = {
        r["path"]: r["probability"]
        for r in predict(model_file, [series], show_paths=True, read_options=opts)
        if r["level"] == "slice"
    }
    res = explain(
        model_file, _files(series), out=tmp_path / "d", slices=range(5), read_options=opts,
        show_paths=True, explain_class="yes",
    )  # fmt: skip
    assert len(res) == 5 and not any(r["error"] for r in res)
    for r in res:
        assert r["probability"] == pytest.approx(predicted[r["path"].split(" (slice")[0]], abs=1e-5)


def test_show_paths_names_scanner_slices_by_file(model_file, scans, tmp_path):
    from mriscan.explain import explain

    secret = ("Doe", "Jane", "19700101", "Roe", "Richard")
    hidden = explain(model_file, _files(scans), out=tmp_path / "h", top_k=1)
    assert len(hidden) == 3 and not any(r["error"] for r in hidden)
    for r in hidden:  # the JPEG keeps its name; scanner slices have pseudonyms
        assert not any(s in r["path"] or s in Path(r["png"]).name for s in secret)
    shown = explain(model_file, _files(scans), out=tmp_path / "s", top_k=1, show_paths=True)
    by_kind = {Path(r["path"].split("#")[0]).suffix: r for r in shown}
    dicom, nifti = by_kind[".dcm"], by_kind[".gz"]
    assert "Doe_Jane_19700101/T1/IM000" in dicom["path"] and "#0 (slice " in dicom["path"]
    assert Path(dicom["png"]).name.startswith("Doe_Jane_19700101__T1_slice")
    assert nifti["path"].startswith(str(scans / "Roe_Richard.nii.gz") + "#")
    assert Path(nifti["png"]).name.startswith("Roe_Richard.nii_slice")
    res = _cli(model_file, scans, "--top-k", "1", "--show-paths", "--out", tmp_path / "c")
    assert res.exit_code == 0 and "Doe_Jane_19700101" in res.output and "Roe_Richard" in res.output
    res = _cli(model_file, scans, "--top-k", "1", "--out", tmp_path / "c2")
    assert res.exit_code == 0 and not any(s in res.output for s in secret)


def test_dicom_out_writes_secondary_captures_in_the_source_study(model_file, scans, tmp_path):
    """Each explained DICOM slice gets an RGB Secondary Capture whose pixels are the overlay
    of the PNG's right panel, in the source's study and patient; JPEG and NIfTI are listed as
    skipped with the reason."""
    import pydicom
    from pydicom.uid import SecondaryCaptureImageStorage

    from mriscan.explain import class_activation_map, explain
    from mriscan.io import SourceFile
    from mriscan.model import load_model
    from mriscan.plots import overlay_rgb
    from mriscan.preprocess import normalize, preprocess
    from mriscan.scan_predict import read_inputs

    out = tmp_path / "dcm"
    res = explain(model_file, _files(scans), out=tmp_path / "png", slices=[0, 3], dicom_out=out)
    made = [r for r in res if r.get("dicom")]
    assert len(made) == 2
    skipped = [r for r in res if r.get("dicom_skipped")]
    assert len(skipped) == 2 and all("not a DICOM input" in r["dicom_skipped"] for r in skipped)
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(r["dicom"]).name for r in made)
    model, card = load_model(model_file)
    sources = {pydicom.dcmread(p).SOPInstanceUID: p for p in scans.rglob("*.dcm")}
    series_uids = set()
    for r in made:
        ds = pydicom.dcmread(r["dicom"])
        assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.Modality == "OT"
        (ref,) = ds.SourceImageSequence
        src = pydicom.dcmread(sources[ref.ReferencedSOPInstanceUID])
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert (ds.PatientName, ds.PatientID) == (src.PatientName, src.PatientID)
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (32, 32, 3)
        assert ds.PhotometricInterpretation == "RGB" and list(ds.PatientOrientation) == ["L", "P"]
        series_uids.add(ds.SeriesInstanceUID)
        # the same pixels, recomputed from the source file through the public functions
        (read,) = read_inputs([SourceFile(sources[ref.ReferencedSOPInstanceUID], "dicom")])
        img = preprocess(read.slices[0].image, card.preprocess)
        x = normalize(img, card.preprocess.normalization, threshold=card.preprocess.threshold)
        cam = class_activation_map(model, x[None, ..., None])[0]
        np.testing.assert_array_equal(ds.pixel_array, overlay_rgb(img, cam))
        assert ds.pixel_array.any()
    assert len(series_uids) == 1  # one new series per source series
    res = _cli(model_file, scans, "--slices", "3", "--out", tmp_path / "p2", "--dicom-out", out)
    assert res.exit_code == 0, res.output
    assert "No DICOM Secondary Capture for 2 explained image(s)" in res.output
    assert "plain.jpg: not a DICOM input" in res.output


def test_secondary_captures_of_a_rerun_replace_the_first_run_s(model_file, scans, tmp_path):
    """explain --dicom-out twice on the same slices writes the same objects (UIDs derived
    from the source, the model file, the method and the class; files named by SOP Instance
    UID), so a PACS gets no second series; another map method is another series (tester 18
    F8: every rerun added objects with new UIDs)."""
    import pydicom

    from mriscan.explain import explain

    out = tmp_path / "dcm"
    first = explain(model_file, _files(scans), out=tmp_path / "a", slices=[0, 3], dicom_out=out)
    names = sorted(p.name for p in out.iterdir())
    uids = {pydicom.dcmread(out / n).SOPInstanceUID for n in names}
    assert len(names) == 2 and {f"{u}.dcm" for u in uids} == set(names)
    again = explain(model_file, _files(scans), out=tmp_path / "b", slices=[0, 3], dicom_out=out)
    assert sorted(p.name for p in out.iterdir()) == names
    assert sorted(r["dicom"] for r in again if r.get("dicom")) == sorted(
        r["dicom"] for r in first if r.get("dicom")
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    other = explain(
        model_file, _files(scans), out=tmp_path / "c", slices=[0], dicom_out=out, method="gradcam"
    )
    (made,) = [r["dicom"] for r in other if r.get("dicom")]
    series = {pydicom.dcmread(out / n).SeriesInstanceUID for n in names}
    assert len(series) == 1 and pydicom.dcmread(made).SeriesInstanceUID not in series
    assert len(list(out.iterdir())) == 3


def test_patient_orientation_from_the_source_header():
    import pydicom

    from mriscan.dicom_sc import SecondaryCaptureError, patient_orientation

    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    assert patient_orientation(ds) == ("L", "P")
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    assert patient_orientation(ds) == ("P", "F")
    ds.ImageOrientationPatient = [-0.94, 0.34, 0, 0, 0, -1]  # coronal, tilted 20 degrees
    assert patient_orientation(ds) == ("R", "F")
    del ds.ImageOrientationPatient
    ds.PatientOrientation = ["A", "F"]
    assert patient_orientation(ds) == ("A", "F")
    with pytest.raises(SecondaryCaptureError, match="no Image Orientation"):
        patient_orientation(pydicom.Dataset())


def test_secondary_capture_of_a_multiframe_source_names_its_frame(tmp_path):
    import pydicom

    from mriscan.dicom_sc import SCSeries, SecondaryCaptureError, write_secondary_capture
    from mriscan.synth_scanner import phantom_volume, write_dicom_series

    (src,) = write_dicom_series(tmp_path / "mf", phantom_volume(3, n_slices=4, canvas=16),
                                multiframe=True)  # fmt: skip
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:8, 4:8] = (255, 0, 0)
    series = SCSeries(pydicom.uid.generate_uid(), 9001, "mriscan Grad-CAM (yes)")
    path = write_secondary_capture(src, rgb, tmp_path / "o" / "x.dcm", series=series,
                                   instance_number=3, frame=2)  # fmt: skip
    ds = pydicom.dcmread(path)
    (ref,) = ds.SourceImageSequence
    assert ref.ReferencedFrameNumber == 3 and ds.InstanceNumber == 3
    assert ds.SeriesDescription == "mriscan Grad-CAM (yes)" and ds.SeriesNumber == 9001
    np.testing.assert_array_equal(ds.pixel_array, rgb)
    with pytest.raises(SecondaryCaptureError, match="uint8"):
        write_secondary_capture(src, rgb[..., 0], tmp_path / "y.dcm", series=series,
                                instance_number=1)  # fmt: skip
    (tmp_path / "not.dcm").write_bytes(b"plain text")
    with pytest.raises(SecondaryCaptureError, match="cannot read the source's DICOM header"):
        write_secondary_capture(tmp_path / "not.dcm", rgb, tmp_path / "z.dcm", series=series,
                                instance_number=1)  # fmt: skip


def test_explain_cli_names_its_flags_in_usage_errors(model_file, scans, tmp_path):
    """Bad --slices / --top-k are click usage errors (exit 2) naming the flag; --slices with a
    --top-k of its own is refused; a slice given twice is explained once."""
    series = scans / "Doe_Jane_19700101" / "T1"
    for args, flag in (
        (["--slices", "-1"], "'--slices'"),
        (["--slices", "0,x"], "'--slices'"),
        (["--top-k", "0"], "'--top-k'"),
        (["--slices", "1", "--top-k", "2"], "--top-k"),
    ):
        res = _cli(model_file, series, *args, "--out", tmp_path / "bad")
        assert res.exit_code == 2 and flag in res.output, (args, res.output)
        assert "top_k" not in res.output and not (tmp_path / "bad").exists()
    res = _cli(model_file, series, "--slices", "0,0,2", "--out", tmp_path / "d")
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "d").glob("*.png"))) == 2
    from mriscan.explain import explain

    assert len(explain(model_file, _files(series), out=tmp_path / "e", slices=[1, 1])) == 1
    with pytest.raises(ConfigError, match=r"top_k \(--top-k\)"):
        explain(model_file, _files(series), out=tmp_path / "e", top_k=0)
    with pytest.raises(ConfigError, match="exclude each other"):  # the library, like the CLI
        explain(model_file, _files(series), out=tmp_path / "e", slices=[1], top_k=2)


def test_a_long_overlay_title_stays_inside_the_figure(tmp_path, monkeypatch):
    """A title as long as a deep --show-paths path is wrapped, not cut at both edges."""
    import mriscan.plots as plots

    figures = []
    real = plots.save_figure

    def keep(fig, path):
        fig.tight_layout()
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        figures.append((box, fig.bbox, fig._suptitle.get_text()))
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    title = "/data/exports/" + "/".join(["SMITH_JANE_1970_MRN100001"] * 4) + "/IM0001.dcm#0"
    title += " (slice 3): P(yes) = 0.49; predicted no"
    img = np.zeros((32, 32), np.float32)
    save_overlay(img, img, tmp_path / "t.png", title=title)
    ((box, fig_box, text),) = figures
    assert text.count("\n") >= 1 and "".join(text.split()) == "".join(title.split())
    assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1 and box.y1 <= fig_box.y1


# --- issue 18, L5: a rerun into the same --out replaces its heat maps -----------------------


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def _recorded(folder: Path) -> dict[tuple, list[str]]:
    import json

    runs = json.loads((folder / "explain_files.json").read_text())["runs"]
    return {(r["method"], r["class"]): sorted(r["files"]) for r in runs}


def test_a_rerun_replaces_the_heat_maps_of_the_earlier_run(model_file, scans, tmp_path, caplog):
    """Scanner slices' PNGs are named by pseudonyms salted afresh each run: a rerun used to
    add a second set beside the first. Now it removes the earlier run's files once it has
    written its own, says so, and leaves every file explain did not write."""
    import logging

    from mriscan.explain import explain

    out = tmp_path / "cam"
    explain(model_file, _files(scans), out=out, top_k=1)
    first = _pngs(out)
    assert len(first) == 3
    (out / "notes.txt").write_text("mine")
    (out / "mine_layercam.png").write_bytes(b"not explain's")
    with caplog.at_level(logging.INFO, logger="mriscan.explain"):
        res = _cli(model_file, scans, "--top-k", "1", "--out", out)
    assert res.exit_code == 0, res.output
    again = [p for p in _pngs(out) if p != "mine_layercam.png"]
    assert len(again) == 3 and again != first  # new pseudonyms, the old files gone
    assert not set(first) & set(again) - {"plain_layercam.png"}
    assert "plain_layercam.png" in again  # named by its file: written over, not removed
    assert _recorded(out) == {("layercam", None): again}
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "mine_layercam.png").read_bytes() == b"not explain's"
    assert "replaced 3 heat map(s) an earlier run made of these inputs in" in caplog.text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary record


def test_a_rerun_on_other_inputs_keeps_the_earlier_maps(model_file, scans, tmp_path, caplog):
    """A rerun replaces the maps of the inputs it explains again, not those of another patient
    explained into the same folder earlier (tester20 F3); a later rerun of the first patient
    still replaces theirs, since they stay recorded."""
    import logging

    from mriscan.explain import explain

    series = _files(scans / "Doe_Jane_19700101")
    volume = [p for p in _files(scans) if p.name.endswith((".nii", ".nii.gz"))]
    out = tmp_path / "cam"
    explain(model_file, series, out=out, top_k=2)
    first = set(_pngs(out))
    with caplog.at_level(logging.INFO, logger="mriscan.explain"):
        explain(model_file, volume, out=out, top_k=1)
    second = set(_pngs(out)) - first
    assert len(first) == 2 and len(second) == 1 and first <= set(_pngs(out))
    assert "replaced" not in caplog.text
    explain(model_file, series, out=out, top_k=1)
    third = set(_pngs(out)) - first - second
    assert len(third) == 1 and set(_pngs(out)) == second | third  # the series' maps replaced
    assert sorted(_recorded(out)[("layercam", None)]) == sorted(second | third)


def test_a_rerun_removes_only_unchanged_files_of_its_own_method_and_class(
    model_file, scans, tmp_path, caplog
):
    """Runs for another --class or --method keep their maps (their names differ on purpose);
    a map changed since explain wrote it is kept and named; a run that fails, or writes
    nothing, removes nothing."""
    import logging

    from mriscan.explain import explain

    series = _files(scans / "Doe_Jane_19700101")
    out = tmp_path / "cam"
    explain(model_file, series, out=out, slices=[0, 1])
    ours = _pngs(out)
    explain(model_file, series, out=out, slices=[0], explain_class="no")
    explain(model_file, series, out=out, slices=[0], method="gradcam")
    assert len(_pngs(out)) == 4 and set(ours) <= set(_pngs(out))
    (out / ours[0]).write_bytes(b"edited by the user")
    with caplog.at_level(logging.INFO, logger="mriscan.explain"):
        explain(model_file, series, out=out, slices=[0])
    assert f"kept 1 of its files changed or made read-only since it wrote them: {ours[0]}" in (
        caplog.text
    )
    assert (out / ours[0]).read_bytes() == b"edited by the user" and not (out / ours[1]).exists()
    assert len(_pngs(out)) == 4  # the edited file, this run's, --class no's, gradcam's
    before = {p: (out / p).read_bytes() for p in _pngs(out)}
    res = explain(model_file, series, out=out, slices=[999])  # nothing written
    assert all(r["error"] for r in res) and _pngs(out) == sorted(before)


def test_a_rerun_keeps_heat_maps_made_read_only(model_file, scans, tmp_path, caplog):
    """A map the user made read-only (chmod a-w) is kept as it is, mode included: a rerun of
    the JPEG writes its map under a numbered name beside it, and a rerun of the series (new
    pseudonyms) does not delete it (tester25 #5: it was replaced and its mode lost)."""
    import logging
    import stat

    from mriscan.explain import explain

    out = tmp_path / "cam"
    explain(model_file, [scans / "plain.jpg"], out=out)
    assert _pngs(out) == ["plain_layercam.png"]
    kept = out / "plain_layercam.png"
    kept.chmod(0o444)
    before = kept.read_bytes()
    explain(model_file, [scans / "plain.jpg"], out=out)
    assert _pngs(out) == ["plain-2_layercam.png", "plain_layercam.png"]
    assert kept.read_bytes() == before and stat.S_IMODE(kept.stat().st_mode) == 0o444
    series = _files(scans / "Doe_Jane_19700101")
    explain(model_file, series, out=out, slices=[0])
    (mine,) = set(_pngs(out)) - {"plain-2_layercam.png", "plain_layercam.png"}
    (out / mine).chmod(0o444)
    with caplog.at_level(logging.INFO, logger="mriscan.explain"):
        explain(model_file, series, out=out, slices=[0])
    assert (out / mine).exists() and stat.S_IMODE((out / mine).stat().st_mode) == 0o444
    assert f"kept 1 of its files changed or made read-only since it wrote them: {mine}" in (
        caplog.text
    )
    assert len(_pngs(out)) == 4


def test_a_failed_rerun_keeps_the_earlier_heat_maps(model_file, scans, tmp_path, monkeypatch):
    import mriscan.explain as ex

    series = _files(scans / "Doe_Jane_19700101")
    out = tmp_path / "cam"
    ex.explain(model_file, series, out=out, slices=[0, 1])
    first = _pngs(out)
    calls = []
    save = ex.save_overlay

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return save(*args, **kwargs)

    monkeypatch.setattr(ex, "save_overlay", fail_second)
    with pytest.raises(OSError, match="disk full"):
        ex.explain(model_file, series, out=out, slices=[0, 1])
    assert set(first) < set(_pngs(out)) and len(_pngs(out)) == 3  # one new map written
    assert _recorded(out) == {("layercam", None): _pngs(out)}  # both runs' files listed
    monkeypatch.setattr(ex, "save_overlay", save)
    ex.explain(model_file, series, out=out, slices=[0, 1])
    assert len(_pngs(out)) == 2 and not set(first) & set(_pngs(out))


def test_a_record_explain_cannot_read_is_left_alone_and_nothing_removed(
    model_file, scans, tmp_path, caplog
):
    """A record naming a file outside the folder (hand-edited), or any file of that name that
    is not such a record, makes explain delete nothing and leave the file as it is."""
    import json
    import logging

    from mriscan.explain import explain

    series = _files(scans / "Doe_Jane_19700101")
    out = tmp_path / "cam"
    explain(model_file, series, out=out, slices=[0])
    record = json.loads((out / "explain_files.json").read_text())
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"x")
    record["runs"][0]["files"]["../victim.png"] = "0" * 64
    (out / "explain_files.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="mriscan.explain"):
        explain(model_file, series, out=out, slices=[0])
    assert victim.exists() and len(_pngs(out)) == 2
    assert "explain_files.json is not a record of mriscan explain" in caplog.text
    assert "../victim.png" in (out / "explain_files.json").read_text()  # left as it was


def test_explain_reads_one_series_at_a_time(model_file, tmp_path, monkeypatch):
    """explain holds about one series in memory, as predict does: of three 40-file series,
    the first map is drawn before the third series is read (``SeriesReads`` reads ahead
    fewer than 32 files past the series in use: here the whole second series). It used to
    read every file first."""
    import mriscan.explain as ex
    import mriscan.scan_predict as sp
    from mriscan.synth_scanner import phantom_volume, write_dicom_series

    for k in range(3):
        stack = phantom_volume(k, n_slices=40, canvas=16)
        write_dicom_series(tmp_path / "in" / f"s{k}", stack, series_number=k + 1, seed=k)
    started: list[Path] = []
    read_one, save = sp._read_one, ex.save_overlay

    def counting_read(f, *args):
        started.append(f.path)
        return read_one(f, *args)

    drawn_after: list[int] = []  # files whose reading had started when each map was drawn

    def counting_save(*args, **kwargs):
        drawn_after.append(len(started))
        return save(*args, **kwargs)

    monkeypatch.setattr(sp, "_read_one", counting_read)
    monkeypatch.setattr(ex, "save_overlay", counting_save)
    files = sorted((tmp_path / "in").rglob("*.dcm"))
    res = ex.explain(model_file, files, out=tmp_path / "cam", top_k=1)
    assert len(res) == 3 and not any(r["error"] for r in res)
    assert sorted(started) == files  # each file read once
    assert drawn_after[0] <= 80 and drawn_after[-1] == 120


def test_show_paths_names_never_clash_between_a_folders_series_and_another_folder(
    model_file, tmp_path
):
    """Folder ``flat/`` holding series 1 and 2 names series 2's maps ``flat_series2_...``, the
    name folder ``flat_series2/``'s maps would have: the later one is numbered (``-2``), so no
    map overwrites another patient's (tester22 HIGH: one PNG for two series)."""
    from mriscan.explain import explain
    from mriscan.synth_scanner import phantom_volume, write_dicom_series

    root = tmp_path / "in"
    write_dicom_series(root / "flat", phantom_volume(1, n_slices=3, canvas=16), series_number=1)
    write_dicom_series(
        root / "flat", phantom_volume(2, n_slices=3, canvas=16), series_number=2, suffix=".ima",
        seed=1,
    )  # fmt: skip
    write_dicom_series(
        root / "flat_series2", phantom_volume(3, n_slices=3, canvas=16), series_number=1, seed=2
    )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    res = explain(model_file, files, out=tmp_path / "cam", top_k=1, show_paths=True)
    pngs = [r["png"] for r in res if not r["error"]]
    assert len(pngs) == 3 and len(set(pngs)) == 3
    assert len(list((tmp_path / "cam").glob("*.png"))) == 3


def test_explain_prints_each_map_as_written_and_a_ctrl_c_says_what_is_there(
    model_file, class_folder, tmp_path, monkeypatch
):
    """The console shows each heat map as it is written, not all at the end; a Ctrl-C while
    the third is drawn exits 130 and says how many maps were written and where they are
    listed (tester22 MED: nothing was printed until the end, and a Ctrl-C left no account)."""
    from click.testing import CliRunner

    import mriscan.explain as ex
    from mriscan.cli import main

    save, calls = ex.save_overlay, []

    def third_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return save(*args, **kwargs)

    monkeypatch.setattr(ex, "save_overlay", third_interrupted)
    r = CliRunner().invoke(main, ["explain", str(model_file), str(class_folder), "--out",
                                  str(tmp_path / "cam")])  # fmt: skip
    assert r.exit_code == 130, r.output
    assert r.output.count("→") == 2 and len(list((tmp_path / "cam").glob("*.png"))) == 2
    assert "Interrupted: 2 heat map(s) written to" in r.output
    assert "explain_files.json" in r.output


def test_an_image_and_a_scanner_slice_never_share_a_png(model_file, class_folder, tmp_path):
    """``flat_slice0.jpg`` and slice 0 of series folder ``flat/`` both make
    ``flat_slice0_layercam.png``: the later is numbered, so the image's row does not point at
    another image's map (tester23 HIGH). With --show-paths an image's row names its path."""
    import shutil

    from mriscan.explain import explain
    from mriscan.synth_scanner import phantom_volume, write_dicom_series

    root = tmp_path / "in"
    write_dicom_series(root / "flat", phantom_volume(1, n_slices=3, canvas=16))
    jpg = next(class_folder.rglob("*.png"))
    shutil.copy(jpg, root / "flat_slice0.png")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    res = explain(model_file, files, out=tmp_path / "cam", slices=[0], show_paths=True)
    pngs = [r["png"] for r in res if not r["error"]]
    assert len(pngs) == 2 and len(set(pngs)) == 2
    assert len(list((tmp_path / "cam").glob("*.png"))) == 2
    assert str(root / "flat_slice0.png") in [r["path"] for r in res]


def test_heat_maps_of_earlier_runs_in_an_input_folder_are_not_explained_again(
    model_file, class_folder, tmp_path
):
    """--out inside the folder explained: a rerun, into it or into a second folder there,
    skips (and counts) the maps an explain record lists, instead of explaining them and calling
    explain_files.json no image (tester23 LOW, tester24 MED); --out equal to the input folder
    still explains its images (tester24 MED: every input was skipped)."""
    import shutil

    from click.testing import CliRunner

    from mriscan.cli import main

    data = tmp_path / "data"
    for p in sorted(class_folder.rglob("*"))[:6]:  # a few images of each class: 5 runs below
        if p.is_file():
            (data / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, data / p.parent.name / p.name)
    n = sum(p.is_file() for p in data.rglob("*"))  # the images
    assert n >= 3
    args = ["explain", str(model_file), str(data), "--out", str(data / "maps")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    made = sorted(p.name for p in (data / "maps").glob("*.png"))
    assert len(made) == n
    for out in ("maps", "maps2"):
        again = CliRunner().invoke(main, [*args[:-1], str(data / out)])
        assert again.exit_code == 0, again.output
        assert again.output.count("→") == n
        assert f"Skipped {n + 1} heat map(s) and record(s) of earlier explain runs" in again.output
    assert sorted(p.name for p in (data / "maps").glob("*.png")) == made
    # a map replaced by an image since is no map: it is explained, not skipped (tester25 LOW)
    shutil.copy(next(class_folder.rglob("*.png")), data / "maps" / made[0])
    third = CliRunner().invoke(main, [*args[:-1], str(data / "maps2")])
    assert third.exit_code == 0, third.output
    assert third.output.count("→") == n + 1
    assert f"Skipped {2 * n + 1} heat map(s)" in third.output
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list(class_folder.rglob("*.png"))[:2]:
        shutil.copy(p, flat / p.name)
    same = CliRunner().invoke(main, ["explain", str(model_file), str(flat), "--out", str(flat)])
    assert same.exit_code == 0 and same.output.count("→") == 2, same.output


def test_a_file_explain_did_not_write_or_one_changed_since_is_never_written_over(
    model_file, class_folder, tmp_path
):
    """A user's file in --out with a map's name, and a map annotated since its run, are kept:
    the new map is numbered instead (tester24 MED: both were overwritten)."""
    import shutil

    from mriscan.explain import explain

    img = tmp_path / "x.png"
    shutil.copy(next(class_folder.rglob("*.png")), img)
    out = tmp_path / "cam"
    out.mkdir()
    (out / "x_layercam.png").write_bytes(b"my notes")
    (first,) = explain(model_file, [img], out=out)
    assert Path(first["png"]).name == "x-2_layercam.png"
    assert first["path"] == str(img)  # an image's path, as predict shows it (tester24 LOW)
    assert (out / "x_layercam.png").read_bytes() == b"my notes"
    with open(first["png"], "ab") as f:
        f.write(b"annotated")
    (second,) = explain(model_file, [img], out=out)
    assert Path(second["png"]).name == "x-3_layercam.png"
    assert Path(first["png"]).read_bytes().endswith(b"annotated")
    (third,) = explain(model_file, [img], out=out)  # its own unchanged map is replaced
    assert third["png"] == second["png"]


def test_a_ctrl_c_whose_interrupt_was_lost_still_stops_explain(
    model_file, class_folder, tmp_path, monkeypatch
):
    """A Ctrl-C whose KeyboardInterrupt is swallowed (raised inside a garbage-collector
    callback, JAX's ``_xla_gc_callback``) used to let explain run to the end and exit 0
    (tester25 MED): the signal is also noted, and explain stops after the map being drawn."""
    import contextlib
    import signal

    from click.testing import CliRunner

    import mriscan.explain as ex
    from mriscan.cli import main

    save, calls = ex.save_overlay, []

    def swallowed_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            # swallowed, as Python does an exception raised in a gc callback
            with contextlib.suppress(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        return save(*args, **kwargs)

    monkeypatch.setattr(ex, "save_overlay", swallowed_on_second)
    r = CliRunner().invoke(main, ["explain", str(model_file), str(class_folder), "--out",
                                  str(tmp_path / "cam")])  # fmt: skip
    assert r.exit_code == 130, r.output
    assert r.output.count("→") == 2 and "Interrupted: 2 heat map(s) written" in r.output


def test_top_k_ranks_the_slices_with_anatomy_as_the_series_is_pooled(model_file, tmp_path):
    """A series of 3 blank slices and 2 with anatomy: `--top-k 3` drew the blank ones (their
    P may be the highest) while predict's series P leaves them out (tester32). Only slices
    with anatomy are drawn, at most as many as there are; a series of blanks draws blanks."""
    from mriscan.explain import explain
    from mriscan.synth_scanner import phantom_volume, write_dicom_series

    stack = phantom_volume(4, n_slices=5, canvas=32)
    stack[:3] = 0.0
    write_dicom_series(tmp_path / "in" / "s", stack, window=None)
    rows = explain(model_file, _files(tmp_path / "in"), out=tmp_path / "o", top_k=3)
    drawn = [r for r in rows if not r.get("error")]
    assert [r["path"].rsplit("(slice ", 1)[1] for r in drawn] == ["3)", "4)"]
    assert not any("uniform" in (r.get("warning") or "") for r in drawn)
    blank = np.zeros_like(stack)
    write_dicom_series(tmp_path / "in2" / "b", blank, window=None)
    rows = explain(model_file, _files(tmp_path / "in2"), out=tmp_path / "o2", top_k=2)
    assert len([r for r in rows if not r.get("error")]) == 2
