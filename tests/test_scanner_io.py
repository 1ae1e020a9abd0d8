"""Recognising input files, listing class folders with scanner data, CSV manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mriscan.errors import EmptyDatasetError, ManifestError
from mriscan.io import file_kind, is_dicom, list_class_sources, read_manifest
from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_dicom_series, write_nifti


@pytest.fixture
def mixed_root(tmp_path: Path) -> Path:
    """yes/: a DICOM series folder (no suffix) + a NIfTI; no/: a PNG, a .dcm, a text file."""
    stack = phantom_volume(0, n_slices=2, canvas=24)
    root = tmp_path / "data"
    write_dicom_series(root / "yes" / "pat1" / "series1", stack, suffix="")
    write_nifti(root / "yes" / "vol.nii.gz", stack_to_ras(stack))
    (root / "no").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "no" / "a.png")
    write_dicom_series(root / "no", stack[:1])
    (root / "no" / "notes.txt").write_text("not an image")
    (root / "no" / ".hidden.dcm").write_bytes(b"\0" * 128 + b"DICM")
    return root


def test_file_kind(mixed_root):
    assert file_kind(mixed_root / "no" / "a.png") == "image"
    assert file_kind(mixed_root / "yes" / "vol.nii.gz") == "nifti"
    assert file_kind(mixed_root / "yes" / "pat1" / "series1" / "IM0001") == "dicom"
    assert file_kind(mixed_root / "no" / "notes.txt") is None
    assert file_kind(mixed_root / "no" / ".hidden.dcm") is None
    assert is_dicom(mixed_root / "no" / "IM0001.dcm")
    assert not is_dicom(mixed_root / "no" / "notes.txt")
    assert not is_dicom(mixed_root / "missing")


def test_list_class_sources(mixed_root):
    classes = list_class_sources(mixed_root)
    assert sorted(classes) == ["no", "yes"]
    kinds = {c: [(f.path.name, f.kind) for f in files] for c, files in classes.items()}
    assert kinds["yes"] == [("IM0001", "dicom"), ("IM0002", "dicom"), ("vol.nii.gz", "nifti")]
    assert kinds["no"] == [("IM0001.dcm", "dicom"), ("a.png", "image")]


def test_list_class_sources_errors(tmp_path):
    with pytest.raises(EmptyDatasetError, match="does not exist"):
        list_class_sources(tmp_path / "nope")
    (tmp_path / "yes").mkdir()
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "x.txt").write_text("x")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "yes" / "a.jpg")
    with pytest.raises(EmptyDatasetError, match=r"\['no'\].*no JPEG/PNG, DICOM or NIfTI"):
        list_class_sources(tmp_path)


def test_read_manifest(mixed_root):
    csv = mixed_root / "manifest.csv"
    csv.write_text(
        "path,label,group\n"
        "yes/pat1,tumor,p1\n"  # a folder: both slices, same label and group
        "yes/vol.nii.gz,tumor,\n"
        "\n"
        "no/a.png,healthy,p2\n"
    )
    entries = read_manifest(csv)
    assert [(e.path.name, e.label, e.group, e.kind, e.line) for e in entries] == [
        ("IM0001", "tumor", "p1", "dicom", 2),
        ("IM0002", "tumor", "p1", "dicom", 2),
        ("vol.nii.gz", "tumor", None, "nifti", 3),
        ("a.png", "healthy", "p2", "image", 5),
    ]
    assert all(e.path.is_absolute() for e in entries)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("file,class\nno/a.png,x\n", "header"),
        ("path,label\nno/a.png\n", "line 2: expected 2 cells"),
        ("path,label\nno/a.png,\nno/IM0001.dcm,b\n", "line 2: path and label must not be empty"),
        ("path,label\nno/gone.png,a\nno/a.png,b\n", "gone.png does not exist"),
        ("path,label\nno/notes.txt,a\nno/a.png,b\n", "is not a JPEG/PNG, DICOM or NIfTI"),
        ("path,label\nno/a.png,a\nno/a.png,b\n", "already listed on line 2"),
        ("path,label\nno/a.png,a\nno/IM0001.dcm,a\n", "at least two labels"),
    ],
)
def test_read_manifest_errors(mixed_root, text, match):
    csv = mixed_root / "m.csv"
    csv.write_text(text)
    with pytest.raises(ManifestError, match=match):
        read_manifest(csv)


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="Cannot read manifest"):
        read_manifest(tmp_path / "none.csv")
