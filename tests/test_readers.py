"""mriscan.readers: file digests computed in a child process; the uniform-slice rule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
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


def _uniform_by_definition(image: np.ndarray) -> bool:
    """``UNIFORM_RULE`` written out with NumPy, to check the kernel against: the largest
    share of pixels in any band of 5 consecutive grey levels."""
    counts = np.bincount(image.reshape(-1), minlength=256)
    bands = np.convolve(counts, np.ones(5, np.int64))  # every band, clipped at 0 and 255
    return bool(bands.max() >= 0.99 * image.size)


def test_is_uniform_is_the_rule_on_every_slice_and_stops_early_only_when_proven():
    """The kernel stops reading once the pixels seen prove the slice is not uniform: it must
    answer as the rule does, on slices at the 99% edge, with stray pixels anywhere (early
    rows, the last pixel), on ties between two modes, and on sides that are not a multiple
    of the kernel's steps (4, 8,192)."""
    from mriscan.readers import is_uniform

    rng = np.random.default_rng(26)
    cases = []
    for _ in range(600):
        h, w = (int(v) for v in rng.integers(1, 180, 2))
        image = np.full((h, w), rng.integers(0, 256), np.uint8)
        k = int(rng.integers(0, max(1, image.size // 40)))  # up to 2.5%: both sides of 99%
        image.flat[rng.integers(0, image.size, k)] = rng.integers(0, 256, k)
        cases.append(image)
    edge = np.zeros((100, 100), np.uint8)
    edge.flat[:100] = 200  # exactly 1% off the mode, all in the first rows: uniform
    late = edge.copy()
    late.flat[-1] = 200  # one more, the very last pixel: not
    tie = np.zeros((10, 10), np.uint8)
    tie.flat[50:] = 100  # two modes of 50 pixels: no band holds 99%
    near = np.full((64, 64), 128, np.uint8)
    near.flat[::2] = 132  # four grey levels apart: one band of 5
    # noise over 4 levels whose most common is the lowest: flagged as when it is a middle one
    # (tester31: the old rule, 2 levels either side of the mode, flagged only the latter)
    edge_mode = np.repeat(np.array([40, 41, 42, 43], np.uint8), [4349, 4041, 4060, 3934])
    big = np.full((300, 300), 40, np.uint8)  # 22 steps of the kernel, read from the middle
    big[:6, :] = 41  # within 1 level
    big[-3:, :] = 250  # exactly 1% off, in the last rows read: uniform
    over = big.copy()
    over[0, 0] = 250  # one more, in the first row (read last): not
    cases += [big, over]
    cases += [edge, late, tie, near, edge_mode.reshape(-1, 8), np.zeros((1, 1), np.uint8)]
    got = [is_uniform(c) for c in cases]
    assert got == [_uniform_by_definition(c) for c in cases]
    assert got[-6:] == [True, False, False, True, True, True]
    assert sum(got) > 100 and len(got) - sum(got) > 100  # both answers are exercised
    noisy = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    assert not is_uniform(noisy) and not is_uniform(np.zeros((0, 5), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        is_uniform(np.zeros((4, 4), np.float32))


def test_a_nearly_uniform_slice_is_flagged_and_described_as_nearly_so():
    """Ingest, predict and explain flag a slice "uniform" by one rule (a few stray pixels do
    not hide an empty slice, as JPEG noise would); the text says when it is not exact."""
    from mriscan.readers import FLAG_SUMMARY, UNIFORM_RULE, describe_flags, slice_warnings

    black = np.zeros((40, 40), np.uint8)
    assert describe_flags(slice_warnings(black), black) == ("uniform image (all black): no anatomy")
    stray = black.copy()
    stray[3, 7] = 255
    assert slice_warnings(stray) == ("uniform",)
    assert describe_flags(slice_warnings(stray), stray) == (
        f"uniform image (nearly all black: {UNIFORM_RULE}): no anatomy"
    )
    assert UNIFORM_RULE in FLAG_SUMMARY["uniform"]
    anatomy = black.copy()
    anatomy[10:20, 10:20] = 90  # 6% of the slice
    assert slice_warnings(anatomy) == ()


def test_a_noise_slice_is_flagged_noise_and_said_to_have_no_anatomy():
    """A slice of noise is not uniform but has no anatomy either (tester32): flagged
    "noise", with its own words; a uniform slice is flagged "uniform" only."""
    from mriscan.readers import (
        FLAG_SUMMARY,
        NO_ANATOMY_FLAGS,
        NOISE_RULE,
        describe_flags,
        slice_warnings,
    )

    noise = np.random.default_rng(3).integers(0, 256, (40, 6), dtype=np.uint8)
    flags = slice_warnings(noise)
    assert flags == ("noise", "thin")
    assert describe_flags(flags, noise).startswith(f"noise image ({NOISE_RULE}): no anatomy; ")
    assert NOISE_RULE in FLAG_SUMMARY["noise"] and set(NO_ANATOMY_FLAGS) == {"uniform", "noise"}
    assert slice_warnings(np.zeros((40, 40), np.uint8)) == ("uniform",)
