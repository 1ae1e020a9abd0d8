"""DICOM reading: transfer syntaxes, rescale, MONOCHROME1, windows, multi-frame, privacy, errors."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder

from mriscan.dicom import DicomConfig, codec_packages, group_series, read_dicom
from mriscan.errors import (
    ConfigError,
    CorruptImageError,
    MissingCodecError,
    MixedSeriesError,
    UnsupportedFormatError,
)
from mriscan.scan import percentile_window, salted_hash
from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

SALT = b"0123456789abcdef-test-salt"
TS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom_transfer_syntaxes"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _shipped(name: str) -> Path:
    """A test file inside the installed pydicom wheel (never downloaded), or skip."""
    path = PYDICOM_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not shipped in this pydicom wheel")
    return path


def _linear_window(real: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window to 0..255, written independently of mriscan."""
    y = ((real - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.floor(np.clip(y, 0, 255) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return phantom_volume(3, n_slices=5, canvas=48)


def test_nine_transfer_syntaxes_decode_to_one_array():
    if not TS_DIR.is_dir():
        pytest.skip(f"shared transfer-syntax files not found at {TS_DIR}")
    images = {}
    for i in range(1, 10):
        r = read_dicom(TS_DIR / f"{i}.dcm", salt=SALT)
        assert r.skipped is None and len(r.slices) == 1
        images[i] = r.slices[0].image
        assert r.slices[0].meta.window_source == "header"
    for i in range(2, 10):
        np.testing.assert_array_equal(images[i], images[1], err_msg=f"{i}.dcm differs")
    # and the array is the header window applied to the raw values, by the formula
    ds = pydicom.dcmread(TS_DIR / "1.dcm")
    expected = _linear_window(ds.pixel_array.astype(np.float64), 763.0, 1639.0)
    assert np.abs(images[1].astype(int) - expected).max() <= 1
    assert images[1].shape == (384, 384) and images[1].dtype == np.uint8


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_pydicom_mr_small_encodings_match(name):
    ref = read_dicom(_shipped("MR_small.dcm"), salt=SALT).slices[0]
    with pytest.warns(UserWarning) if "padded" in name else contextlib.nullcontext():
        other = read_dicom(_shipped(name), salt=SALT).slices[0]
    np.testing.assert_array_equal(other.image, ref.image)
    assert ref.meta.plane == "axial" and ref.image.shape == (64, 64)


def test_privacy_no_identifying_text_and_salted_ids(tmp_path, stack):
    pat = FakePatient(patient_id="FAKE-4242", name="Doe^Jane", birth_date="19610203")
    files = write_dicom_series(
        tmp_path / "s1", stack, patient=pat, description="T1 Doe axial", seed=1
    )
    files += write_dicom_series(
        tmp_path / "s2", stack, patient=pat, series_number=2, description="T2", seed=1
    )
    reads = [read_dicom(f, salt=SALT) for f in files]
    metas = [s.meta for r in reads for s in r.slices]
    text = json.dumps([m.to_dict() for m in metas])
    ds = pydicom.dcmread(files[0])
    for secret in ("Doe", "Jane", "19610203", "FAKE-4242", "Fictional", "ACC-FAKE", "Smith"):
        assert secret.lower() not in text.lower(), secret
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid not in text
    assert metas[0].series_description == "T1 [removed] axial"
    assert {m.patient for m in metas} == {salted_hash(SALT, "patient", "FAKE-4242")}
    assert len({m.series for m in metas}) == 2 and len({m.study for m in metas}) == 1
    assert len({m.instance for m in metas}) == 2 * len(stack)
    other = read_dicom(files[0], salt=b"another-salt-of-16+bytes").slices[0].meta
    assert other.patient != metas[0].patient
    assert metas[0].group == f"patient:{metas[0].patient}"


def test_salt_is_required_and_checked(tmp_path, stack):
    f = write_dicom_series(tmp_path, stack[:1])[0]
    with pytest.raises(ConfigError, match="salt must be bytes"):
        read_dicom(f, salt=b"short")


def test_monochrome1_is_inverted_to_the_same_picture(tmp_path, stack):
    """MONOCHROME1 stores 2000 - v, and its window is mirrored around 1000 (the writer does
    it: centre 1200 for 800), so the picture read is that of the MONOCHROME2 file."""
    m2 = write_dicom_series(tmp_path / "m2", stack, window=(800, 1400))
    m1 = write_dicom_series(tmp_path / "m1", stack, window=(800, 1400), monochrome1=True)
    a = [read_dicom(f, salt=SALT).slices[0] for f in m2]
    b = [read_dicom(f, salt=SALT).slices[0] for f in m1]
    assert b[0].meta.photometric == "MONOCHROME1"
    assert float(pydicom.dcmread(m1[0]).WindowCenter) == 1200.0
    for x, y in zip(a, b, strict=True):
        assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1
    # the stored pixels are the negative: without the inversion the pictures would differ
    raw1, raw2 = (pydicom.dcmread(f[2]).pixel_array.astype(int) for f in (m1, m2))
    np.testing.assert_array_equal(raw1, 2000 - raw2)


def test_rescale_then_header_window(tmp_path, stack):
    slope, intercept, c, w = 2.0, -100.0, 1500.0, 2400.0
    files = write_dicom_series(tmp_path, stack, slope=slope, intercept=intercept, window=(c, w))
    for k, f in enumerate(files):
        s = read_dicom(f, salt=SALT).slices[0]
        stored = np.rint(np.clip(stack[k], 0, 1) * 2000)
        expected = _linear_window(stored * slope + intercept, c, w)
        assert np.abs(s.image.astype(int) - expected).max() <= 1
        assert (s.meta.rescale_slope, s.meta.rescale_intercept) == (slope, intercept)
        assert s.meta.window_source == "header"
        assert s.meta.window_low == pytest.approx(c - 0.5 - (w - 1) / 2)


@pytest.mark.parametrize("use_header", [True, False])
def test_percentile_window_when_no_header_window(tmp_path, stack, use_header):
    window = None if use_header else (600.0, 1000.0)
    f = write_dicom_series(tmp_path, stack[2:3], window=window, slope=0.5, intercept=10)[0]
    cfg = DicomConfig(use_header_window=use_header, window_percentiles=(1, 99))
    s = read_dicom(f, salt=SALT, config=cfg).slices[0]
    real = np.rint(stack[2] * 2000) * 0.5 + 10
    lo, hi = np.percentile(real, [1, 99], method="inverted_cdf")
    assert s.meta.window_source == "percentile"
    assert (s.meta.window_low, s.meta.window_high) == pytest.approx((lo, hi))
    expected = np.floor(np.clip((real - lo) / (hi - lo), 0, 1) * 255 + 0.5)
    assert np.abs(s.image.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("center", [1e6, -1e6], ids=["above", "below"])
def test_a_header_window_that_blanks_the_slice_gives_way_with_a_note(tmp_path, stack, center):
    """A Window Center/Width that the pixel data lie wholly outside made an all-white or
    all-black slice, stored with only a "uniform" warning; now the percentile window is
    used for it, recorded as the window source and said in the read's note."""
    from mriscan.readers import read_input

    f = write_dicom_series(tmp_path, stack[2:3], window=(center, 10.0))[0]
    s = read_dicom(f, salt=SALT, config=DicomConfig(window_percentiles=(1, 99))).slices[0]
    assert s.meta.window_source == "percentile" and np.ptp(s.image) > 200
    plain = write_dicom_series(tmp_path / "p", stack[2:3], window=None)[0]
    ref = read_dicom(plain, salt=SALT, config=DicomConfig(window_percentiles=(1, 99))).slices[0]
    np.testing.assert_array_equal(s.image, ref.image)
    r = read_input(f, "dicom", salt=SALT, root=tmp_path)
    assert (
        "maps (nearly) every pixel of the slice to one value" in r.note
        and f"{center:g}/10" in r.note
    )
    # a window the data fall inside is used as before, with no note
    ok = write_dicom_series(tmp_path / "ok", stack[2:3], window=(1000.0, 2000.0))[0]
    assert read_dicom(ok, salt=SALT).slices[0].meta.window_source == "header"
    assert read_input(ok, "dicom", salt=SALT, root=tmp_path).note == ""


def test_a_blank_slice_under_its_header_window_stays_blank_and_is_flagged(tmp_path, stack):
    """A slice of faint noise (raw 0-2) that a sane header window (600/1000) maps to black is
    blank at that window: it keeps the header window and is flagged uniform, instead of its
    noise being stretched to full contrast by the percentile window (tester30: it became the
    top-scoring slice of its series). The fallback stays for windows of another scale."""
    from mriscan.readers import read_input, slice_warnings

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 3, stack[2].shape) / 2000  # raw 0-2 once written
    f = write_dicom_series(tmp_path, noise[None], window=(600.0, 1000.0))[0]
    s = read_dicom(f, salt=SALT).slices[0]
    assert s.meta.window_source == "header" and s.image.max() == 0
    assert slice_warnings(s.image) == ("uniform",)
    assert read_input(f, "dicom", salt=SALT, root=tmp_path).note == ""
    # the same noise under a window whose band it spans (width 100: 2 raw units are more
    # than 5 of its 255 grey levels) is out of the window: percentile, as for a bogus one
    g = write_dicom_series(tmp_path / "w", noise[None], window=(600.0, 100.0))[0]
    assert read_dicom(g, salt=SALT).slices[0].meta.window_source == "percentile"
    # stretched to full contrast it is noise with no structure: flagged so (tester32 MED: a
    # blank slice without a header window was stretched and not flagged at all)
    assert slice_warnings(read_dicom(g, salt=SALT).slices[0].image) == ("noise",)
    bare = write_dicom_series(tmp_path / "n", noise[None], window=None)[0]
    blank = read_dicom(bare, salt=SALT).slices[0]
    assert np.ptp(blank.image) > 200 and slice_warnings(blank.image) == ("noise",)


def test_multiframe_gives_one_slice_per_frame(tmp_path, stack):
    single = write_dicom_series(tmp_path / "single", stack, window=(900, 1600))
    multi = write_dicom_series(tmp_path / "multi", stack, window=(900, 1600), multiframe=True)
    assert len(multi) == 1
    r = read_dicom(multi[0], salt=SALT)
    assert [s.meta.frame for s in r.slices] == list(range(len(stack)))
    assert all(s.meta.n_frames == len(stack) for s in r.slices)
    for f, s in zip(single, r.slices, strict=True):
        np.testing.assert_array_equal(s.image, read_dicom(f, salt=SALT).slices[0].image)
    assert len({s.meta.instance for s in r.slices}) == 1


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_group_series_orders_slices_and_reads_the_plane(tmp_path, stack, plane):
    files = write_dicom_series(tmp_path, stack, plane=plane, suffix="")  # no suffix
    shuffled = files[:]
    random.Random(0).shuffle(shuffled)
    slices = [s for f in shuffled for s in read_dicom(f, salt=SALT).slices]
    (series,) = group_series(slices)
    assert [s.path for s in series.slices] == files
    assert all(s.meta.plane == plane for s in series.slices)
    pos = [s.meta.slice_position for s in series.slices]
    assert pos == sorted(pos)


def test_mixed_series_sizes_are_refused_without_naming_a_file(tmp_path, stack):
    """The error counts the sizes and names the series by its keyed hash, not by a path (the
    folder here is named after a made-up patient); the files stay on the exception."""
    folder = tmp_path / "Doe_Jane_19700101"
    files = write_dicom_series(folder, stack[:3], seed=5)
    ds = pydicom.dcmread(files[1])
    ds.Rows, ds.Columns = 24, 24
    ds.PixelData = np.zeros((24, 24), np.uint16).tobytes()
    ds.save_as(files[1])
    slices = [s for f in files for s in read_dicom(f, salt=SALT).slices]
    with pytest.raises(MixedSeriesError, match="mixes slice sizes") as info:
        group_series(slices)
    message = str(info.value)
    assert "Doe" not in message and "Jane" not in message and str(tmp_path) not in message
    assert "IM000" not in message
    h, w = stack.shape[1:]
    assert f"2 slices of {w}x{h}, 1 slice of 24x24 (from 3 files)" in message
    assert f"series:{slices[0].meta.series}" in message
    assert f"another size than {w}x{h}" in message
    assert info.value.files == {(h, w): [files[0], files[2]], (24, 24): [files[1]]}


@pytest.mark.parametrize("name", ["test-SR.dcm", "dicomdirtests/DICOMDIR"])
def test_non_image_dicom_is_skipped_with_a_reason(name):
    r = read_dicom(_shipped(name), salt=SALT)
    assert r.slices == () and r.skipped.startswith("not an image:")


def test_truncated_files_give_clear_errors(tmp_path, stack):
    with pytest.raises(CorruptImageError, match="less than expected"):
        read_dicom(_shipped("MR_truncated.dcm"), salt=SALT)
    data = write_dicom_series(tmp_path, stack[:1])[0].read_bytes()
    for cut in (len(data) // 2, 400):
        bad = tmp_path / f"cut{cut}.dcm"
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptImageError, match="truncated"):
            read_dicom(bad, salt=SALT)


def test_not_dicom_is_refused(tmp_path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"hello" * 40)
    with pytest.raises(UnsupportedFormatError, match="not a DICOM Part 10 file"):
        read_dicom(p, salt=SALT)


def test_compressed_without_decoder_names_the_codec_package(monkeypatch):
    path = _shipped("MR_small_jp2klossless.dcm")
    ts = pydicom.dcmread(path).file_meta.TransferSyntaxUID
    monkeypatch.setattr(get_decoder(ts), "_available", {})
    with pytest.raises(MissingCodecError, match="pylibjpeg-openjpeg") as info:
        read_dicom(path, salt=SALT)
    assert info.value.packages == codec_packages(ts) == ("pylibjpeg", "pylibjpeg-openjpeg")
    assert "JPEG 2000" in str(info.value)


@pytest.mark.parametrize("uid", ["1.2.3.4.5.6.7", "1.2.840.10008.1.2.9"])
def test_an_unknown_transfer_syntax_is_named(tmp_path, stack, uid):
    """A private or unknown Transfer Syntax UID is named with what to do, not reported as an
    unexpected ValueError of pydicom's (F11, tester 18)."""
    path = write_dicom_series(tmp_path, stack[:1])[0]
    if uid.startswith("1.2.840.10008."):  # pydicom writes no unknown standard UID: patch it
        data = path.read_bytes()
        known = b"1.2.840.10008.1.2.1\x00"
        assert data.count(known) == 1
        path.write_bytes(data.replace(known, uid.encode() + b"\x00"))
    else:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(path, enforce_file_format=False)
    with pytest.raises(UnsupportedFormatError, match=f"transfer syntax {uid} is not one") as e:
        read_dicom(path, salt=SALT)
    assert "re-export the file with a standard transfer syntax" in str(e.value)
    assert ("a private UID" in str(e.value)) == uid.startswith("1.2.3.")


@pytest.mark.parametrize(
    "dtype", [np.uint16, np.int16, np.uint8, np.int8, ">i2", ">u2", np.float32]
)
def test_percentile_window_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    wide = rng.normal(300, 200, (70, 50)).astype(dtype)
    narrow = rng.integers(-2, 3, (9, 7)).astype(dtype)  # few distinct values: ties at the ranks
    for v in (wide, narrow, wide[::3, ::-2], wide[:1, :1]):
        for q in [(0.5, 99.5), (0, 100), (1, 99), (37, 63), (99, 1)]:
            expected = tuple(float(x) for x in np.percentile(v, q, method="inverted_cdf"))
            # integers come from an exact histogram (a Numba kernel): the same values exactly
            assert percentile_window(v, q) == pytest.approx(expected, abs=0)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="window_percentiles"):
        DicomConfig(window_percentiles=(50, 10))


def _damaged_jpeg_ls(tmp_path):
    """pydicom's JPEG-LS MR_small with 200 bytes of its compressed data overwritten."""
    ds = pydicom.dcmread(_shipped("MR_small_jpeg_ls_lossless.dcm"))
    data = bytearray(ds.PixelData)
    data[len(data) // 3 : len(data) // 3 + 200] = b"\xff" * 200
    ds.PixelData = bytes(data)
    path = tmp_path / "damaged.dcm"
    ds.save_as(path)
    return path


def test_damaged_compressed_data_blame_the_data_not_a_missing_package(tmp_path):
    """libjpeg installed but failing on damaged JPEG-LS bytes: the error says the decoder
    failed (not "install pylibjpeg"), on one line."""
    from mriscan.errors import CorruptImageError, MissingCodecError

    path = _damaged_jpeg_ls(tmp_path)
    with pytest.raises(CorruptImageError) as err:
        read_dicom(path, salt=SALT)
    assert not isinstance(err.value, MissingCodecError)
    assert "the installed decoder failed" in err.value.reason
    assert "install" not in err.value.reason.replace("installed", "")
    assert "\n" not in str(err.value)


def test_the_pixel_cap_hint_names_only_ways_that_exist(tmp_path, stack):
    """The DICOM cap's hint once said "raise max_pixels", an option no command has; it names the
    Python parameter instead, and any option it names is a real one (as decode_image's hint)."""
    import re

    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.errors import ImageTooLargeError
    from mriscan.ingest import IngestConfig

    path = write_dicom_series(tmp_path / "s", stack[:1])[0]  # 48x48 = 2,304 pixels
    with pytest.raises(ImageTooLargeError, match=r"48x48 = 2,304 pixels per frame") as info:
        read_dicom(path, salt=SALT, config=DicomConfig(max_pixels=2000))
    message = str(info.value)
    assert "raise max_pixels" not in message and "no command-line option" in message
    assert "DicomConfig" in message and "max_pixels" in message
    cfg = IngestConfig(dicom=DicomConfig(max_pixels=5000))  # the way it names works
    assert read_dicom(path, salt=SALT, config=cfg.dicom).slices
    for flag in re.findall(r"--[a-z-]+", message):
        assert flag in CliRunner().invoke(main, ["ingest", "--help"]).output


def _variant(tmp_path, name, *, bits, stored, signed, frames=1, implicit=False, mono="MONOCHROME2",
             garbage=True, pad=0):  # fmt: skip
    """An uncompressed grey file written by pydicom, with garbage above Bits Stored."""
    rng = np.random.default_rng(bits + stored + signed + frames)
    shape = (frames, 12, 10) if frames > 1 else (12, 10)
    dtype = np.dtype(f"<{'ui'[signed]}{bits // 8}")
    lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    values = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    ds = pydicom.Dataset()
    ds.SOPClassUID = pydicom.uid.MRImageStorage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, mono
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = signed
    raw = values.view(f"<u{bits // 8}").copy()
    if garbage and stored < bits:  # bits above Bits Stored that a reader must ignore
        raw |= np.array(rng.integers(0, 1 << (bits - stored), shape) << stored, raw.dtype)
    ds.PixelData = raw.tobytes() + b"\0" * pad
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ts = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = ts
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "variant",
    [
        {"bits": 16, "stored": 12, "signed": 0},
        {"bits": 16, "stored": 12, "signed": 1},
        {"bits": 16, "stored": 16, "signed": 1},
        {"bits": 16, "stored": 10, "signed": 0, "frames": 3},
        {"bits": 8, "stored": 8, "signed": 0},
        {"bits": 8, "stored": 6, "signed": 1},
        {"bits": 32, "stored": 20, "signed": 1},
        {"bits": 16, "stored": 12, "signed": 0, "implicit": True},
        {"bits": 16, "stored": 12, "signed": 0, "mono": "MONOCHROME1"},
    ],
)
def test_uncompressed_pixels_equal_pydicoms_decoder(tmp_path, monkeypatch, variant):
    """mriscan's own view of uncompressed grey pixel data (``_native_pixels``) gives what
    pydicom's decoder gives (unused high bits cleared or sign-extended), and read_dicom the same
    slices and metadata with it as through pydicom."""
    from mriscan import dicom

    path = _variant(tmp_path, "v", **variant)
    ds = pydicom.dcmread(path)
    ts = ds.file_meta.TransferSyntaxUID
    n = int(np.prod(get_decoder(ts).as_array(ds)[0].shape))
    ours = dicom._native_pixels(ds, ts, n, str(ds.PhotometricInterpretation))
    theirs = get_decoder(ts).as_array(pydicom.dcmread(path))[0].reshape(-1)
    assert ours is not None and ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
    fast = read_dicom(path, salt=SALT, config=DicomConfig(modalities=None))
    monkeypatch.setattr(dicom, "_native_pixels", lambda *a: None)
    slow = read_dicom(path, salt=SALT, config=DicomConfig(modalities=None))
    assert len(fast.slices) == len(slow.slices) == variant.get("frames", 1)
    for a, b in zip(fast.slices, slow.slices, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.meta == b.meta


def test_pixel_data_of_another_length_is_left_to_pydicom(tmp_path):
    """Pixel data shorter or longer than the header says are not read by mriscan's own view:
    pydicom's decoder reports a short one (read_dicom names the file as damaged) and warns
    about excess padding, as before."""
    from mriscan import dicom

    short = _variant(tmp_path, "short", bits=16, stored=12, signed=0)
    ds = pydicom.dcmread(short)
    ds.PixelData = ds.PixelData[:-40]
    ds.save_as(short, enforce_file_format=True)
    padded = _variant(tmp_path, "padded", bits=16, stored=12, signed=0, pad=6)
    for path in (short, padded):
        ds = pydicom.dcmread(path)
        ts = ds.file_meta.TransferSyntaxUID
        assert dicom._native_pixels(ds, ts, 120, "MONOCHROME2") is None
    for keyword in ("BitsStored", "PixelRepresentation", "SamplesPerPixel"):  # absent
        ds = pydicom.dcmread(padded)
        delattr(ds, keyword)
        assert dicom._native_pixels(ds, ds.file_meta.TransferSyntaxUID, 120, "MONOCHROME2") is None
    with pytest.raises(CorruptImageError, match="less than expected"):
        read_dicom(short, salt=SALT)
    with pytest.warns(UserWarning, match="excess padding"):
        r = read_dicom(padded, salt=SALT)
    assert r.slices[0].image.shape == (12, 10)


def test_codec_advice_follows_pydicom_s_plugin_table(tmp_path):
    """Each alternative named once, GDCM only where pydicom's GDCM plugin decodes the syntax;
    MPEG-2 (no pydicom decoder at all) names no package and says what to do instead."""
    from pydicom.encaps import encapsulate

    from mriscan.dicom import codec_advice

    jls = codec_advice("1.2.840.10008.1.2.4.80")
    assert jls.count("python-gdcm") == 2 and "pyjpegls" in jls  # name + pip command
    assert "gdcm" not in codec_advice("1.2.840.10008.1.2.4.201")  # HTJ2K: openjpeg only
    mpeg2 = "1.2.840.10008.1.2.4.100"
    assert codec_packages(mpeg2) == () and "install" not in codec_advice(mpeg2)
    path = write_dicom_series(tmp_path, np.full((1, 16, 16), 0.5, np.float32))[0]
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = mpeg2
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x11" * 100])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(MissingCodecError, match="export the series again") as info:
        read_dicom(path, salt=SALT)
    assert info.value.packages == () and "MPEG2" in str(info.value)
    assert "install" not in info.value.reason


def test_a_decoder_failure_is_one_line_without_pydicom_s_traceback(tmp_path, caplog):
    """pydicom logs each failing plugin as ERROR with a traceback; while mriscan decodes, its
    one-line error is all that is shown (pydicom used directly still logs)."""
    import logging

    from mriscan.errors import CorruptImageError

    path = _damaged_jpeg_ls(tmp_path)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(CorruptImageError, match="JPEG-LS"):
            read_dicom(path, salt=SALT)
        assert not [r for r in caplog.records if r.name.startswith("pydicom")]
        with pytest.raises(RuntimeError):
            _ = pydicom.dcmread(path).pixel_array
        assert [r for r in caplog.records if r.levelno == logging.ERROR]


def test_an_mr_image_without_a_modality_element_is_read_as_mr_by_its_sop_class(tmp_path):
    """Modality is type 1, but an MR Image Storage object without it is still MR (its IOD says
    so): it is read, not refused as "not MR" (tester 18 F10). A CT image without Modality is
    still refused: nothing implies MR there."""
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    del ds.Modality
    ds.save_as(tmp_path / "mr.dcm")
    r = read_dicom(tmp_path / "mr.dcm", salt=SALT)
    assert r.excluded is None and len(r.slices) == 1
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    del ct.Modality
    ct.save_as(tmp_path / "ct.dcm")
    out = read_dicom(tmp_path / "ct.dcm", salt=SALT)
    assert out.slices == () and "without a Modality" in out.excluded
