"""mriscan's own Part 10 element walk (``mriscan._dicom_part10``) gives what pydicom.dcmread
gives, element by element, and leaves every other file to pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement

from mriscan import dicom
from mriscan._dicom_part10 import read_part10
from mriscan.dicom import DicomConfig, read_dicom
from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

SALT = b"part10-test-salt-0123456789"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _difference(ours, theirs) -> str | None:
    """What differs between two read data sets (None: nothing)."""
    tags = list(theirs.keys())  # iterating a Dataset would convert its elements
    if list(ours.keys()) != tags:
        return "the elements"
    for tag in tags:
        a, b = ours.get_item(tag), theirs.get_item(tag)
        if type(a) is not type(b):
            return f"the kind of element {tag}"
        same = tuple(a) == tuple(b) if isinstance(a, RawDataElement) else a == b
        if not same:
            return f"element {tag}"
    for name in ("file_meta", "preamble", "filename", "original_encoding",
                 "original_character_set"):  # fmt: skip
        if getattr(ours, name) != getattr(theirs, name):
            return name
    return None


def _shipped_files() -> list[Path]:
    return sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())


def test_shipped_files_read_as_pydicom_reads_them():
    """Every file of pydicom's own test set that the walk takes (explicit and implicit VR,
    private sequences, DICOMDIRs, character sets, RT objects, ...) gives pydicom's data set; at
    least the plain MR and CT examples are taken, and compressed or big-endian files are not."""
    files = _shipped_files()
    if not files:
        pytest.skip("pydicom's test files are not shipped in this wheel")
    taken = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warnings on its odd test files
        for path in files:
            ours = read_part10(path)
            if ours is None:
                continue
            taken.append(path.name)
            assert _difference(ours, pydicom.dcmread(path)) is None, path
    assert {"MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm"} <= set(taken)
    for name in ("MR_small_bigendian.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        if (PYDICOM_FILES / name).is_file():
            assert read_part10(PYDICOM_FILES / name) is None, name


def _series(tmp_path, **kwargs) -> list[Path]:
    stack = phantom_volume(0, n_slices=3, canvas=64)
    patient = FakePatient(patient_id="FAKE-0001")
    return write_dicom_series(tmp_path / "s", stack, seed=3, patient=patient, **kwargs)


def test_written_series_read_the_same_through_either_reader(tmp_path, monkeypatch):
    """read_dicom gives the same slices and metadata with the walk as with pydicom.dcmread."""
    paths = _series(tmp_path, window=(900.0, 1600.0))
    fast = [read_dicom(p, salt=SALT, config=DicomConfig()) for p in paths]
    monkeypatch.setattr(dicom, "read_part10", lambda path: None)
    slow = [read_dicom(p, salt=SALT, config=DicomConfig()) for p in paths]
    for a, b in zip(fast, slow, strict=True):
        assert len(a.slices) == len(b.slices) == 1
        np.testing.assert_array_equal(a.slices[0].image, b.slices[0].image)
        assert a.slices[0].meta == b.slices[0].meta


def _rewritten(tmp_path, name: str, edit) -> Path:
    path = _series(tmp_path)[0]
    data = bytearray(path.read_bytes())
    out = tmp_path / name
    out.write_bytes(bytes(edit(data)))
    return out


def test_files_of_other_layouts_are_left_to_pydicom(tmp_path):
    """No preamble, a truncated file, a stray tail shorter than an element, or an element of
    undefined length: None (pydicom reads them and reports what is wrong)."""
    bare = _rewritten(tmp_path, "bare", lambda d: d[132:])
    truncated = _rewritten(tmp_path, "truncated", lambda d: d[:-100])
    tail = _rewritten(tmp_path, "tail", lambda d: d + b"\0\0\0")
    for path in (bare, truncated, tail):
        assert read_part10(path) is None, path.name
    ds = pydicom.dcmread(_series(tmp_path)[0])
    seq = pydicom.Dataset()
    seq.CodeValue = "X"
    ds.ReferencedImageSequence = pydicom.Sequence([seq])
    ds["ReferencedImageSequence"].is_undefined_length = True
    undefined = tmp_path / "undefined.dcm"
    ds.save_as(undefined, enforce_file_format=True)
    assert read_part10(undefined) is None
    with pytest.raises(OSError):
        read_part10(tmp_path / "missing.dcm")


def test_a_sequence_of_defined_length_is_read_as_pydicom_reads_it(tmp_path):
    """A sequence with a defined length stays one raw element (pydicom parses it on access),
    and private elements are kept."""
    ds = pydicom.dcmread(_series(tmp_path)[0])
    item = pydicom.Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    block = ds.private_block(0x0029, "MRISCAN TEST", create=True)
    block.add_new(0x10, "LO", "private text")
    path = tmp_path / "seq.dcm"
    ds.save_as(path, enforce_file_format=True)
    ours, theirs = read_part10(path), pydicom.dcmread(path)
    assert ours is not None and _difference(ours, theirs) is None
    assert ours.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3"
