"""Faults a new user found on the ingest path (issues 18/19), each as its whole kind:
one bad header or an unexpected reader exception is one file's error row; files are recognised
by content and every unused file is named; stale samples of overwritten files are retired;
non-MR and non-image DICOM objects are kept out of training; cross-class near-duplicates,
case-different labels and --strict refusals are all named."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword

import mriscan.dicom
import mriscan.readers
from mriscan.dicom import DicomConfig, read_dicom
from mriscan.errors import (
    BadFilesError,
    ConfigError,
    CorruptImageError,
    EmptyDatasetError,
    ManifestError,
)
from mriscan.ingest import IngestConfig, ingest
from mriscan.io import classify_file, decode_bytes, file_kind, read_manifest
from mriscan.preprocess import PreprocessConfig
from mriscan.readers import ReadOptions, collect_inputs, read_input
from mriscan.store import ImageStore
from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

SMALL = IngestConfig(preprocess=PreprocessConfig(size=32), workers=2, batch_size=4)
SALT = b"s" * 16
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
SHIPPED = sorted(p for p in PYDICOM_FILES.iterdir() if p.is_file())
TS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom_transfer_syntaxes"


def _mr_with_raw(path: Path, keyword: str, placeholder: str, bad: str) -> Path:
    """MR_small.dcm with ``keyword`` holding the raw text ``bad`` (pydicom refuses to write an
    invalid value, so a valid ``placeholder`` of the same length is written, then patched)."""
    assert len(placeholder) == len(bad)
    ds = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    setattr(ds, keyword, placeholder.split("\\") if "\\" in placeholder else placeholder)
    ds.save_as(path, enforce_file_format=True)
    tag, vr = tag_for_keyword(keyword), dictionary_VR(keyword)
    raw = path.read_bytes()
    value = placeholder.encode()
    value += b" " * (len(value) % 2)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode() + struct.pack("<H", len(value))
    at = raw.index(head) + len(head)
    assert raw[at : at + len(value)] == value
    fixed = bad.encode() + b" " * (len(bad.encode()) % 2)
    path.write_bytes(raw[:at] + fixed + raw[at + len(value) :])
    return path


def _png(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    return buf.getvalue()


def _active(store) -> list:
    with ImageStore.open(store) as st:
        return [r for r in st.index.records if r.active]


# ---- 1. one bad header, one odd file: that file's row, never the run -------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("modalities", [("MR",), None], ids=["mr", "any"])
def test_every_shipped_pydicom_file_is_one_row(path, modalities):
    """badVR.dcm (NumberOfFrames '1A') and every other file pydicom ships: a result, never an
    exception, and exactly one outcome."""
    kind = file_kind(path) or "dicom"
    opts = ReadOptions(dicom=DicomConfig(modalities=modalities))
    r = read_input(path, kind, salt=SALT, root=PYDICOM_FILES, options=opts)
    outcomes = [bool(r.slices), r.skipped is not None, r.excluded is not None, r.error is not None]
    assert sum(outcomes) == 1, r


@pytest.mark.parametrize(
    ("keyword", "placeholder", "bad"),
    [
        ("NumberOfFrames", "11", "1A"),  # badVR.dcm's fault, on an MR image
        ("RescaleSlope", "1.0", "abc"),
        ("RescaleIntercept", "0.0", "x.y"),
        ("WindowCenter", "600", "6O0"),
        ("WindowWidth", "1600", "16OO"),
        ("InstanceNumber", "12", "1?"),
        ("ImagePositionPatient", "1\\2\\3", "1\\b\\3"),
        ("PixelSpacing", "1\\1", "1\\?"),
        ("RescaleSlope", "1", "0"),  # slope0.dcm: a slope of 0 blanks the slice
    ],
)
def test_bad_header_value_names_the_file_and_element(tmp_path, keyword, placeholder, bad):
    path = _mr_with_raw(tmp_path / "IM1.dcm", keyword, placeholder, bad)
    r = read_input(path, "dicom", salt=SALT, root=tmp_path)
    assert not r.slices and r.error is not None
    assert keyword in r.error and repr(bad) in r.error, r.error
    with pytest.raises(CorruptImageError, match=f"IM1.dcm: header element {keyword}"):
        read_dicom(path, salt=SALT)


def test_a_bad_header_does_not_stop_ingest(tmp_path):
    root = tmp_path / "raw"
    for cls, seed in (("yes", 1), ("no", 2)):
        write_dicom_series(root / cls / "s", phantom_volume(seed, n_slices=3, canvas=24), seed=seed)
    _mr_with_raw(root / "no" / "bad.dcm", "NumberOfFrames", "11", "1A")
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    assert report.added == {"no": 3, "yes": 3}
    assert [n for n, _ in report.skipped] == ["no/bad.dcm"]
    assert "NumberOfFrames (0028,0008)" in report.skipped[0][1]


@pytest.mark.parametrize(
    "exc", [AttributeError("x"), ZeroDivisionError(), RecursionError(), KeyError("k")]
)
def test_read_input_turns_any_unexpected_exception_into_the_files_error(monkeypatch, tmp_path, exc):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(mriscan.dicom, "read_dicom", boom)
    monkeypatch.setattr(mriscan.readers, "decode_bytes", boom)
    for kind in ("dicom", "image"):
        (tmp_path / "f").write_bytes(b"data")
        r = read_input(tmp_path / "f", kind, salt=SALT, root=tmp_path)
        assert r.error is not None and f"unexpected {type(exc).__name__}" in r.error


@pytest.mark.parametrize("exc", [MemoryError, KeyboardInterrupt])
def test_read_input_lets_machine_and_user_interrupts_through(monkeypatch, tmp_path, exc):
    def boom(*a, **k):
        raise exc()

    monkeypatch.setattr(mriscan.dicom, "read_dicom", boom)
    with pytest.raises(exc):
        read_input(tmp_path / "f", "dicom", salt=SALT, root=tmp_path)


# ---- 2. recognised by content; every unused file named ---------------------------------------
def _bare(src: Path, path: Path) -> Path:
    """``src`` without its preamble and file meta information: the bare data set."""
    raw = src.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"  # group length
    (meta_len,) = struct.unpack("<I", raw[140:144])
    path.write_bytes(raw[144 + meta_len :])
    return path


@pytest.mark.parametrize(
    "name", ["MR_small_implicit.dcm", "MR_small.dcm", "MR_small_bigendian.dcm"]
)
def test_dicom_without_preamble_is_read_by_content(tmp_path, name):
    path = _bare(PYDICOM_FILES / name, tmp_path / "IM0001")  # no suffix either
    assert path.read_bytes()[128:132] != b"DICM"
    assert file_kind(path) == "dicom"
    got = read_input(path, "dicom", salt=SALT, root=tmp_path)
    ref = read_input(PYDICOM_FILES / "MR_small.dcm", "dicom", salt=SALT, root=tmp_path)
    assert got.error is None, got.error
    np.testing.assert_array_equal(got.slices[0].image, ref.slices[0].image)


def test_no_meta_dcm_is_named_not_called_an_image(tmp_path):
    """pydicom's no_meta.dcm holds one stray byte before its first element: it is DICOM by
    name and content, and damaged; never "not a recognised image"."""
    src = PYDICOM_FILES / "no_meta.dcm"
    assert file_kind(src) == "dicom"
    files, problems = collect_inputs([src])
    assert [f.kind for f in files] == ["dicom"] and not problems
    r = read_input(src, "dicom", salt=SALT, root=PYDICOM_FILES)
    assert "stray byte" in r.error and "recognised image" not in r.error


def test_every_file_in_a_class_folder_is_used_or_named(tmp_path, class_folder):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (40, 40), np.uint8)
    yes, no = class_folder / "yes", class_folder / "no"
    (yes / "scan_noext").write_bytes(_png(img, "JPEG"))  # suffix-less JPEG: used
    (no / "slice.dat").write_bytes(_png(img[::-1]))  # PNG under another suffix: used
    for fmt, name in (("BMP", "a.bmp"), ("TIFF", "b.tif"), ("WEBP", "c.webp"), ("GIF", "d.gif")):
        (no / name).write_bytes(_png(img, fmt))
    (yes / "notes.txt").write_text("scanned 2024\n")
    (yes / "empty").write_bytes(b"")
    (yes / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (class_folder / "README.md").write_text("data\n")
    store = tmp_path / "s.zarr"
    report = ingest(class_folder, store, SMALL)
    assert report.added == {"no": 7, "yes": 7}
    skipped = dict(report.skipped)
    assert sorted(skipped) == [
        "no/a.bmp", "no/b.tif", "no/c.webp", "no/d.gif", "yes/empty", "yes/notes.txt"
    ]  # fmt: skip
    assert "a BMP image" in skipped["no/a.bmp"] and "a GIF image" in skipped["no/d.gif"]
    assert "empty" in skipped["yes/empty"]
    assert dict(report.ignored).keys() == {"yes/.DS_Store", "README.md"}
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True)
    shutil.rmtree(store)
    with pytest.raises(BadFilesError) as err:
        ingest(class_folder, store, strict)
    for name in skipped:  # every one named, not the first
        assert name in str(err.value)
    assert not store.exists()
    # predict's listing names them too
    files, problems = collect_inputs([class_folder / "no"])
    assert {p.name for p, _ in problems} == {"a.bmp", "b.tif", "c.webp", "d.gif"}
    assert {f.path.name: f.kind for f in files}["slice.dat"] == "image"


def test_manifest_folder_rows_name_unused_files(tmp_path, class_folder):
    (class_folder / "yes" / "x.bmp").write_bytes(_png(np.zeros((8, 8), np.uint8), "BMP"))
    csv = class_folder / "m.csv"
    csv.write_text("path,label\nyes,tumor\nno,healthy\n")
    report = ingest(csv, tmp_path / "s.zarr", SMALL)
    assert [n for n, _ in report.skipped] == ["yes/x.bmp"]


# ---- 3. overwritten so that it conflicts: the stale sample goes ------------------------------
def test_overwritten_file_that_now_conflicts_retires_its_old_sample(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    old = next(r for r in _active(store) if r.source == "yes/yes1.png")
    shutil.copy(class_folder / "no" / "no2.jpg", class_folder / "yes" / "yes1.png")
    report = ingest(class_folder, store, SMALL)
    assert report.conflicts == 2 and report.replaced == 1
    active = _active(store)
    assert old.sha256 not in {r.sha256 for r in active}
    assert not {"yes/yes1.png", "no/no2.jpg"} & {r.source for r in active}


# ---- 4. not MR, not an image ---------------------------------------------------------------
NON_MR = {
    "CT_small.dcm": "excluded",  # CT
    "examples_rgb_color.dcm": "excluded",  # US
    "JPEG2000.dcm": "excluded",  # NM
    "image_dfl.dcm": "excluded",  # OT secondary capture
    "rtdose_1frame.dcm": "not_images",
    "liver_1frame.dcm": "not_images",  # SEG
}


def test_non_mr_and_non_image_dicom_are_kept_out(tmp_path):
    root = tmp_path / "raw"
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", root / "yes")
    write_dicom_series(root / "no" / "s", phantom_volume(1, n_slices=2, canvas=24))
    for name in NON_MR:
        shutil.copy(PYDICOM_FILES / name, root / "no" / name)
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    assert report.added == {"no": 2, "yes": 1}
    got = {n.split("/")[-1]: "excluded" for n, _ in report.excluded}
    got |= {n.split("/")[-1]: "not_images" for n, _ in report.not_images}
    assert got == NON_MR
    why = dict(report.excluded)
    assert "modality CT" in why["no/CT_small.dcm"] and "--modality" in why["no/CT_small.dcm"]
    assert "segmentation" in dict(report.not_images)["no/liver_1frame.dcm"]
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True)
    with pytest.raises(BadFilesError, match=r"CT_small.dcm(.|\n)*examples_rgb_color.dcm"):
        ingest(root, tmp_path / "strict.zarr", strict)
    anyway = IngestConfig(preprocess=PreprocessConfig(size=32), dicom=DicomConfig(modalities=None))
    report = ingest(root, tmp_path / "any.zarr", anyway)
    assert not report.excluded and report.added["no"] > 2
    assert {n.split("/")[-1] for n, _ in report.not_images} == {
        "rtdose_1frame.dcm",
        "liver_1frame.dcm",
    }


def test_modalities_config_is_checked():
    with pytest.raises(ConfigError, match="modalities"):
        DicomConfig(modalities="MR")
    assert DicomConfig(modalities=(" ct ", "mr")).modalities == ("CT", "MR")


# ---- 5. near-identical slices under two classes -----------------------------------------------
def test_half_size_resave_under_the_other_class_is_a_warning(class_folder, tmp_path):
    src = Image.open(class_folder / "yes" / "yes3.png")
    src.resize((src.width // 2, src.height // 2)).save(class_folder / "no" / "small_copy.png")
    report = ingest(class_folder, tmp_path / "s.zarr", SMALL)
    assert report.added == {"no": 7, "yes": 6}
    mixed = [r for _, r in report.warnings if "near-identical" in r]
    assert len(mixed) == 1
    assert "1 no (no/small_copy.png)" in mixed[0] and "yes/yes3.png" in mixed[0]
    assert "one class only" in mixed[0] and "both sides of a split" in mixed[0]
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True)
    with pytest.raises(BadFilesError, match="near-identical"):
        ingest(class_folder, tmp_path / "strict.zarr", strict)


def test_resaves_join_a_split_group_only_under_their_own_class(class_folder, tmp_path):
    """The near-identical pair of two classes is warned about (above) but does not join the
    split groups (``mriscan.duplicates.same_label_links``); a resave in its own class does,
    also when it arrives in a later ingest (the incremental links)."""
    src = Image.open(class_folder / "yes" / "yes3.png")
    src.resize((src.width // 2, src.height // 2)).save(class_folder / "no" / "small_copy.png")
    ingest(class_folder, tmp_path / "s.zarr", SMALL)
    src.resize((src.width * 2 // 3, src.height * 2 // 3)).save(
        class_folder / "yes" / "yes3_small.png"
    )
    ingest(class_folder, tmp_path / "s.zarr", SMALL)
    with ImageStore.open(tmp_path / "s.zarr") as st:
        group = {r.source: int(st.groups[r.position]) for r in st.index.records if r.active}
    assert group["yes/yes3_small.png"] == group["yes/yes3.png"] != group["no/small_copy.png"]


@pytest.mark.skipif(not TS_DIR.is_dir(), reason=f"shared data {TS_DIR} absent")
def test_nine_encodings_split_over_two_classes_are_named(tmp_path):
    root = tmp_path / "raw"
    for i in range(1, 10):
        cls = "yes" if i % 2 else "no"
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(TS_DIR / f"{i}.dcm", root / cls / f"{i}.dcm")
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    mixed = [r for _, r in report.warnings if "near-identical" in r]
    assert len(mixed) == 1
    for i in range(1, 10):
        assert f"/{i}.dcm#0" in mixed[0]


# ---- 6. labels that differ only by case --------------------------------------------------------
def test_manifest_labels_differing_by_case_are_an_error(class_folder):
    csv = class_folder / "m.csv"
    csv.write_text("path,label\nyes/yes1.png,yes\nno/no2.jpg,no\nyes/yes3.png,Yes\n")
    with pytest.raises(ManifestError, match=r"'Yes' \(line 4\) and 'yes' \(line 2\)"):
        read_manifest(csv)


def test_class_folders_differing_by_case_are_an_error(class_folder, tmp_path):
    shutil.copytree(class_folder / "yes", class_folder / "Yes")
    with pytest.raises(EmptyDatasetError, match="Yes/ and yes/"):
        ingest(class_folder, tmp_path / "s.zarr", SMALL)


def test_a_class_differing_by_case_from_the_stores_is_an_error(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(class_folder, store, SMALL)
    (class_folder / "yes").rename(class_folder / "YES")
    with pytest.raises(ConfigError, match="'YES' and 'yes'"):
        ingest(class_folder, store, SMALL)
    with ImageStore.open(store) as st:
        assert tuple(st.class_names) == ("no", "yes") and len(_active(store)) == 12


# ---- 7. minor ---------------------------------------------------------------------------------
def test_strict_names_every_bad_file(class_folder, tmp_path):
    (class_folder / "yes" / "cut.png").write_bytes(_png(np.zeros((9, 9), np.uint8))[:30])
    (class_folder / "no" / "empty.jpg").write_bytes(b"")
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True, batch_size=2)
    with pytest.raises(BadFilesError, match="2 file") as err:
        ingest(class_folder, tmp_path / "s.zarr", strict)
    assert "yes/cut.png" in str(err.value) and "no/empty.jpg" in str(err.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_damaged_header_says_damaged_format(fmt):
    data = bytearray(_png(np.arange(64, dtype=np.uint8).reshape(8, 8), fmt))
    if fmt == "PNG":
        data[29] ^= 0xFF  # the IHDR CRC
    else:
        data[3:] = b"\x00" * (len(data) - 3)  # the signature kept, every marker destroyed
    with pytest.raises(CorruptImageError, match=f"a damaged {fmt} file") as err:
        decode_bytes(bytes(data), "x")
    assert "text or other file" not in str(err.value)


def test_damaged_png_in_a_folder_is_named_as_such(tmp_path, class_folder):
    data = bytearray((class_folder / "yes" / "yes1.png").read_bytes())
    data[29] ^= 0xFF
    (class_folder / "yes" / "yes1.png").write_bytes(bytes(data))
    report = ingest(class_folder, tmp_path / "s.zarr", SMALL)
    assert "damaged PNG" in dict(report.skipped)["yes/yes1.png"]


def test_mixed_size_series_gives_each_file_its_size(tmp_path):
    root = tmp_path / "raw"
    p = FakePatient(patient_id="P1")
    write_dicom_series(root / "yes" / "s", phantom_volume(4, n_slices=7, canvas=24), patient=p)
    write_dicom_series(root / "yes" / "s" / "odd", phantom_volume(4, n_slices=1, canvas=32),
                       patient=p)  # fmt: skip
    write_dicom_series(root / "no" / "s", phantom_volume(5, n_slices=2, canvas=24))
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    reasons = {n: r for n, r in report.skipped}
    assert len(reasons) == 8
    for name, r in reasons.items():  # sizes and counts only; each file says its own size
        assert "7 files of 24x24, 1 file of 32x32" in r and "IM0" not in r
        own = "32x32" if name == "yes/s/odd/IM0001.dcm" else "24x24"
        assert f"this file is {own}" in r, (name, r)


def test_classify_file_reasons(tmp_path):
    (tmp_path / "t.txt").write_text("hello")
    assert classify_file(tmp_path / "t.txt") == (
        None,
        "not a JPEG/PNG image, DICOM file or NIfTI volume (by content and name)",
    )
    assert classify_file(tmp_path / ".x")[0] is None
    (tmp_path / "x.jpg").write_text("not really")  # a named image: the decoder explains
    assert classify_file(tmp_path / "x.jpg") == ("image", None)


def test_nifti_pairs_and_misnamed_nifti_get_the_way_out(tmp_path):
    """.hdr/.img pairs, a .nii.gz without its suffix and a .nii under another name were all
    "not a JPEG/PNG image, DICOM file or NIfTI volume"."""
    import gzip

    import nibabel as nib

    vol = np.zeros((4, 4, 3), np.int16)
    nib.save(nib.Nifti1Pair(vol, np.eye(4)), tmp_path / "pair.img")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii")
    (tmp_path / "gz_volume").write_bytes(gzip.compress((tmp_path / "v.nii").read_bytes()))
    (tmp_path / "volume.dat").write_bytes((tmp_path / "v.nii").read_bytes())
    why = {
        n: classify_file(tmp_path / n) for n in ("pair.hdr", "pair.img", "gz_volume", "volume.dat")
    }
    assert all(kind is None for kind, _ in why.values())
    assert why["pair.hdr"][1].startswith("the header of a NIfTI/Analyze .hdr/.img pair")
    assert "convert the pair to one .nii file" in why["pair.img"][1]
    assert "read when named .nii.gz" in why["gz_volume"][1]
    assert why["volume.dat"][1].startswith("a NIfTI volume under another name: name it .nii")


def test_cli_lists_what_it_did_not_store_and_modality_any_reads_ct(tmp_path):
    from click.testing import CliRunner

    from mriscan.cli import main

    root = tmp_path / "raw"
    write_dicom_series(root / "yes" / "s", phantom_volume(1, n_slices=2, canvas=24))
    write_dicom_series(root / "no" / "s", phantom_volume(2, n_slices=2, canvas=24), seed=2)
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", root / "no")
    (root / "no" / "x.gif").write_bytes(_png(np.zeros((8, 8), np.uint8), "GIF"))
    args = ["ingest", str(root), "--image-size", "32", "--workers", "1"]
    out = CliRunner().invoke(main, [*args, "--store", str(tmp_path / "a.zarr")])
    assert out.exit_code == 0, out.output
    assert "added 4" in out.output
    assert "1 DICOM image(s) of another modality" in out.output and "CT_small.dcm" in out.output
    assert "no/x.gif: a GIF image" in out.output
    out = CliRunner().invoke(
        main, [*args, "--store", str(tmp_path / "b.zarr"), "--modality", "any"]
    )
    assert out.exit_code == 0, out.output
    assert "added 5" in out.output and "another modality" not in out.output


# ---- 7. linked, looping and empty folders ------------------------------------------------------
def test_linked_series_folder_is_read_and_loops_and_empty_folders_are_listed(tmp_path):
    """A series folder reached by a symbolic link is data like any other (a linked file and a
    linked class folder are read too); a link back up the tree is listed, not followed for ever;
    an empty folder is listed as such."""
    elsewhere = tmp_path / "elsewhere"
    for k, cls in enumerate(("yes", "no")):
        write_dicom_series(elsewhere / cls, phantom_volume(k, n_slices=3, canvas=48), seed=k,
                           patient=FakePatient(patient_id=f"FAKE-{k}"))  # fmt: skip
    root = tmp_path / "raw"
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    (root / "yes" / "ROE_link").symlink_to(elsewhere / "yes", target_is_directory=True)
    (root / "no" / "series").symlink_to(elsewhere / "no", target_is_directory=True)
    (root / "no" / "series_again").symlink_to(elsewhere / "no", target_is_directory=True)
    (root / "yes" / "ROE_link_up").symlink_to(root, target_is_directory=True)
    (root / "yes" / "empty_series").mkdir()
    report = ingest(root, tmp_path / "s.zarr", SMALL)
    assert report.added == {"no": 3, "yes": 3}
    ignored = dict(report.ignored)
    assert "a loop" in ignored["yes/ROE_link_up"]
    assert "already listed" in ignored["no/series_again"]
    assert "empty folder" in ignored["yes/empty_series"]
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True)
    assert ingest(root, tmp_path / "strict.zarr", strict).added == {"no": 3, "yes": 3}


def test_a_class_left_without_a_slice_is_a_warning_and_strict_refuses_it(tmp_path):
    """Every file of yes/ is a truncated DICOM (tester18 L7): the store is committed with a
    warning naming the class and its failed files (train and cv would fail later), --strict
    refuses the run; once yes/ has a stored slice, a new broken file there warns nothing."""
    from click.testing import CliRunner

    from mriscan.cli import main

    root = tmp_path / "raw"
    good = write_dicom_series(root / "no" / "p", phantom_volume(1, n_slices=2, canvas=32), seed=1)
    (root / "yes").mkdir()
    for k in range(3):
        (root / "yes" / f"cut{k}.dcm").write_bytes(good[0].read_bytes()[:-200])
    store = tmp_path / "s.zarr"
    report = ingest(root, store, SMALL)
    assert report.added == {"no": 2, "yes": 0} and report.empty_classes == (("yes", 3),)
    r = CliRunner().invoke(main, ["ingest", str(root), "--store", str(tmp_path / "c.zarr"),
                                  "--image-size", "32"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (
        "warning: class yes has no stored slice: all its 3 file(s) failed, see above; train "
        "and cv need every class" in r.output
    )
    strict = IngestConfig(preprocess=PreprocessConfig(size=32), strict=True)
    with pytest.raises(BadFilesError, match="class yes: has no stored slice: all its 3 file"):
        ingest(root, tmp_path / "strict.zarr", strict)
    assert not (tmp_path / "strict.zarr").exists()

    for f in (root / "yes").iterdir():
        f.unlink()
    write_dicom_series(root / "yes" / "p", phantom_volume(2, n_slices=2, canvas=32), seed=2)
    assert ingest(root, store, SMALL).added == {"no": 0, "yes": 2}
    (root / "yes" / "cut.dcm").write_bytes(good[0].read_bytes()[:-200])
    later = ingest(root, store, SMALL)
    assert later.skipped and not later.empty_classes
