"""mriscan.readers: file digests computed in a child process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mriscan import readers
from mriscan.readers import file_sha256, file_sha256_apart


def test_file_sha256_apart_gives_file_sha256_of_each_path_in_order(tmp_path):
    """Odd names (a newline, bytes that are not UTF-8, spaces), an empty file, a missing path
    and a folder: digests equal ``file_sha256``'s, in order; each unreadable path its own
    ``OSError`` with the reason, the rest still hashed."""
    names = ["plain.dcm", "with space", "new\nline", os.fsdecode(b"latin\xe9"), "empty"]
    paths = []
    for k, name in enumerate(names):
        p = tmp_path / name
        p.write_bytes(b"" if name == "empty" else bytes([k]) * (70_000 + k))
        paths.append(p)
    missing, folder = tmp_path / "missing.dcm", tmp_path / "sub"
    folder.mkdir()
    got = file_sha256_apart([paths[0], missing, *paths[1:], folder])
    assert got[0] == file_sha256(paths[0])
    assert got[2:-1] == [file_sha256(p) for p in paths[1:]]
    assert isinstance(got[1], OSError) and "No such file" in got[1].strerror
    assert isinstance(got[-1], OSError) and "directory" in got[-1].strerror
    assert file_sha256_apart([]) == []


def test_file_sha256_apart_names_a_failing_child(tmp_path, monkeypatch):
    p = tmp_path / "a.dcm"
    p.write_bytes(b"x")
    monkeypatch.setattr(readers, "_HASHER", "import sys; sys.stderr.write('boom'); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"exit 3, 0 of 1 digests\): boom"):
        file_sha256_apart([p])
    monkeypatch.setattr(sys, "executable", "")
    with pytest.raises(RuntimeError, match=r"sys\.executable is not set"):
        file_sha256_apart([p])


@pytest.mark.parametrize("name, kind", [("a.dcm", "dicom"), ("a.nii", "nifti"), ("a.png", "image")])
def test_an_empty_file_of_any_kind_gets_the_one_reason_ingest_gives(tmp_path, name, kind):
    """predict named an empty .dcm "no preamble ... 0 element(s)" and an empty .nii "broken
    or truncated header (Empty file...)", where ingest said "empty file (0 bytes)"."""
    from mriscan.io import EMPTY_FILE

    (tmp_path / name).write_bytes(b"")
    r = readers.read_input(tmp_path / name, kind, salt=b"s" * 32, root=tmp_path)
    assert r.error == EMPTY_FILE and not r.slices


def test_a_file_reached_twice_is_read_once_and_said(tmp_path, caplog):
    """The same image given as a file and inside its folder, and a DICOM file twice: each read
    once, where first reached, and one warning counts both; the example named is the image,
    never the scanner file (its path may name the patient) (tester24 #6: silently once)."""
    import numpy as np
    from PIL import Image
    from pydicom.data import get_testdata_file

    from mriscan.readers import collect_inputs

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((8, 8), 30, np.uint8)).save(folder / "b.png")
    dcm = tmp_path / "Doe_Jane" / "IM1"
    dcm.parent.mkdir()
    dcm.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    with caplog.at_level("WARNING", logger="mriscan.readers"):
        files, problems = collect_inputs([folder, folder / "a.png", dcm, dcm])
    assert [f.path for f in files] == [folder / "a.png", folder / "b.png", dcm] and not problems
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("2 input file(s) reached more than once")
    assert str(folder / "a.png") in said[0] and "Doe_Jane" not in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mriscan.readers"):
        assert len(collect_inputs([folder])[0]) == 2
    assert not caplog.records
    # a hard link is the same file (tester26: scored twice); a scanner file's path is not
    # shown, and the warning says so instead of stopping mid-sentence
    os.link(folder / "b.png", tmp_path / "hard.png")
    with caplog.at_level("WARNING", logger="mriscan.readers"):
        files, _ = collect_inputs([tmp_path / "hard.png", folder, dcm, dcm])
    assert [f.path for f in files] == [tmp_path / "hard.png", folder / "a.png", dcm]
    assert f"e.g. {folder / 'b.png'} (as {tmp_path / 'hard.png'})" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mriscan.readers"):
        collect_inputs([dcm, dcm])
    assert caplog.records[0].getMessage().endswith("(DICOM/NIfTI files: their paths, which "
                                                   "may name the patient, not shown)")  # fmt: skip
