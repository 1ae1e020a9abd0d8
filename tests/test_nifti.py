"""NIfTI reading: canonical orientation, planes, slice choice, 4-D rule, ids, bad volumes."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from mriscan.errors import ConfigError, CorruptImageError, UnsupportedFormatError
from mriscan.nifti import NiftiConfig, read_nifti
from mriscan.scan import Window, salted_hash, window_to_uint8
from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_nifti

SALT = b"0123456789abcdef-test-salt"
ALL = NiftiConfig(selection="all")


def _nibabel_file(name: str) -> Path:
    path = Path(data_path) / name
    if not path.is_file():
        pytest.skip(f"{name} is not shipped in this nibabel wheel")
    return path


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return phantom_volume(7, n_slices=9, canvas=40)


def _expected(vol: np.ndarray, q=(0.5, 99.5)) -> tuple[np.ndarray, float, float]:
    lo, hi = np.percentile(vol, q, method="inverted_cdf")
    return window_to_uint8(vol, Window("percentile", lo, hi)), lo, hi


@pytest.mark.parametrize("axcodes", ["RAS", "LAS", "PSR", "ASL", "LPI", "SRA"])
def test_any_voxel_order_gives_the_same_axial_slices(tmp_path, stack, axcodes):
    ras = stack_to_ras(stack)
    path = write_nifti(tmp_path / f"v_{axcodes}.nii.gz", ras, axcodes=axcodes)
    assert "".join(nib.aff2axcodes(nib.load(path).affine)) == axcodes
    r = read_nifti(path, salt=SALT, config=ALL)
    stored = np.rint(stack * 1000).astype(np.int16)  # the display stack, as saved
    expected, lo, hi = _expected(stored)
    assert r.shape == ras.shape
    assert [s.meta.slice_index for s in r.slices] == list(range(len(stack)))
    for k, s in enumerate(r.slices):
        np.testing.assert_array_equal(s.image, expected[k])
        assert (s.meta.window_low, s.meta.window_high) == (lo, hi)
        assert s.meta.plane == "axial" and s.meta.window_source == "percentile"


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_coronal_and_sagittal_slices_follow_the_display_convention(tmp_path, stack, plane):
    ras = stack_to_ras(stack)
    path = write_nifti(tmp_path / "v.nii", ras, axcodes="PSR", zooms=(1.0, 2.0, 3.0))
    r = read_nifti(path, salt=SALT, config=NiftiConfig(plane=plane, selection="all"))
    vol, _, _ = _expected(np.rint(ras * 1000).astype(np.int16))
    if plane == "coronal":  # rows superior -> inferior, columns right -> left
        want = [vol[::-1, j, ::-1].T for j in range(ras.shape[1])]
        assert r.slices[0].meta.pixel_spacing == (3.0, 1.0)
    else:  # rows superior -> inferior, columns anterior -> posterior
        want = [vol[i, ::-1, ::-1].T for i in range(ras.shape[0])]
        assert r.slices[0].meta.pixel_spacing == (3.0, 2.0)
    assert len(r.slices) == len(want)
    for s, w in zip(r.slices, want, strict=True):
        np.testing.assert_array_equal(s.image, w)


def test_slice_selection(tmp_path, stack):
    path = write_nifti(tmp_path / "v.nii.gz", stack_to_ras(stack))
    brain = read_nifti(path, salt=SALT, config=NiftiConfig(brain_fraction=0.6))
    idx = [s.meta.slice_index for s in brain.slices]
    # the envelope makes the area peak in the middle and fall to the ends
    assert 4 in idx and 0 not in idx and 8 not in idx and idx == sorted(idx)
    assert all(s.meta.foreground_share >= 0.6 for s in brain.slices)
    middle = read_nifti(path, salt=SALT, config=NiftiConfig(selection="middle", middle_count=3))
    assert [s.meta.slice_index for s in middle.slices] == [3, 4, 5]
    big = read_nifti(path, salt=SALT, config=NiftiConfig(selection="middle", middle_count=99))
    assert len(big.slices) == 9


def test_noise_slices_count_as_no_brain_in_the_selection(tmp_path, stack):
    """tester32: two slices of full-range noise measured as all brain, so the "brain"
    selection (>= 30% of the largest area) kept them and dropped the head's slices. A slice
    without anatomy has no brain area; a volume of noise only has nothing to slice."""
    rng = np.random.default_rng(32)
    vol = np.concatenate([stack, rng.uniform(0, 1, (2, *stack.shape[1:])).astype(np.float32)])
    path = write_nifti(tmp_path / "v.nii.gz", stack_to_ras(vol))
    heads = read_nifti(path, salt=SALT, config=ALL).slices[:9]
    kept = read_nifti(path, salt=SALT)
    idx = [s.meta.slice_index for s in kept.slices]
    assert 4 in idx and 9 not in idx and 10 not in idx and len(idx) >= 5
    assert max(s.meta.foreground_share for s in kept.slices) == 1.0
    every = read_nifti(path, salt=SALT, config=ALL)
    assert [s.meta.foreground_share for s in every.slices[9:]] == [0.0, 0.0]
    assert [s.meta.slice_index for s in heads] == list(range(9))
    noise = write_nifti(tmp_path / "n.nii.gz", rng.uniform(0, 1, (30, 30, 4)).astype(np.float32))
    with pytest.raises(CorruptImageError, match="no slice shows anatomy"):
        read_nifti(noise, salt=SALT)


@pytest.mark.parametrize(("axcodes", "loudness"), [("RAS", 20), ("LPI", 20), ("SAR", 60)])
def test_loud_noise_slices_do_not_set_the_volume_s_window(tmp_path, stack, axcodes, loudness):
    """tester33: three slices of noise at 20× the head's brightness stretched the volume's
    percentile window until the head fell under the foreground level, and the volume was
    refused as blank; at 50× the head fell into a few grey levels and read as uniform
    (tester34). The window is taken again without the noise slices, in any voxel order of the
    file: the head reads as it reads alone."""
    rng = np.random.default_rng(33)
    loud = rng.uniform(0, loudness, (3, *stack.shape[1:])).astype(np.float32)
    both = np.concatenate([loud[:1], stack, loud[1:]])
    path = write_nifti(tmp_path / "v.nii.gz", stack_to_ras(both), axcodes=axcodes, scale=100)
    alone = write_nifti(tmp_path / "a.nii.gz", stack_to_ras(stack), axcodes=axcodes, scale=100)
    got = read_nifti(path, salt=SALT)
    want = read_nifti(alone, salt=SALT)
    assert [s.meta.slice_index - 1 for s in got.slices] == [s.meta.slice_index for s in want.slices]
    for g, w in zip(got.slices, want.slices, strict=True):
        np.testing.assert_array_equal(g.image, w.image)
        assert (g.meta.window_low, g.meta.window_high) == (w.meta.window_low, w.meta.window_high)


def test_volume_id_is_a_salted_hash_of_the_relative_path(tmp_path, stack):
    (tmp_path / "yes" / "sub").mkdir(parents=True)
    path = write_nifti(tmp_path / "yes" / "sub" / "Doe_Jane.nii.gz", stack_to_ras(stack))
    r = read_nifti(path, salt=SALT, root=tmp_path / "yes")
    assert r.volume == salted_hash(SALT, "volume", "sub/Doe_Jane.nii.gz")
    assert all(s.meta.group == f"volume:{r.volume}" for s in r.slices)
    assert "Doe" not in str([s.meta.to_dict() for s in r.slices])


def test_nibabel_t1(tmp_path):
    r = read_nifti(_nibabel_file("anatomical.nii"), salt=SALT)
    assert r.shape == (33, 41, 25) and r.slices
    assert all(s.image.dtype == np.uint8 and s.image.shape == (41, 33) for s in r.slices)
    assert r.slices[0].meta.n_volumes == 1


def test_4d_uses_the_first_volume_and_logs_its_path_at_debug_only(caplog):
    path = _nibabel_file("example4d.nii.gz")
    with caplog.at_level(logging.DEBUG, logger="mriscan.nifti"):
        r = read_nifti(path, salt=SALT, config=ALL)
    # the path may name the patient: callers report n_volumes by their own naming rule
    assert [rec.levelno for rec in caplog.records] == [logging.DEBUG]
    assert "using the first" in caplog.text
    assert r.slices[0].meta.n_volumes == 2 and r.slices[0].meta.volume_index == 0
    first = nib.as_closest_canonical(nib.load(path).slicer[..., 0])
    expected, _, _ = _expected(np.asanyarray(first.dataobj))
    np.testing.assert_array_equal(r.slices[3].image, expected[::-1, ::-1, 3].T)
    with pytest.raises(UnsupportedFormatError, match="4-D volume with 2 volumes") as info:
        read_nifti(path, salt=SALT, config=NiftiConfig(four_d="refuse"))
    # the way out is named for both audiences: the CLI flag and the Python option
    assert "`--nifti-4d first`" in info.value.reason and "four_d='first'" in info.value.reason


def test_a_5d_file_is_named_5d_and_refused_when_its_5th_axis_holds_components(tmp_path, stack):
    """Shape (X, Y, Z, 2, 1): 2 volumes of a 5-D file, said as such (F12, tester 18: it was
    "4-D volume with 3 volumes"); shape (X, Y, Z, 1, 3), vector components per voxel: refused
    as 5-D, not as "expected a 3-D or 4-D volume"."""
    from mriscan.readers import read_input

    vol = stack_to_ras(stack)
    path = tmp_path / "five.nii"
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1)[..., None], np.eye(4)), path)
    r = read_nifti(path, salt=SALT)
    assert (r.slices[0].meta.n_dims, r.slices[0].meta.n_volumes) == (5, 2)
    got = read_input(path, "nifti", salt=SALT, root=tmp_path)
    assert got.note == "5-D volume with 2 volumes: the first was read (--nifti-4d)"
    with pytest.raises(UnsupportedFormatError, match=r"5-D volume with 2 volumes \(shape"):
        read_nifti(path, salt=SALT, config=NiftiConfig(four_d="refuse"))
    nib.save(nib.Nifti1Image(np.stack([vol] * 3, -1)[..., None, :], np.eye(4)), path)
    with pytest.raises(UnsupportedFormatError, match=r"5-D volume .* past the 4th") as info:
        read_nifti(path, salt=SALT)
    assert "vector or parameter components" in info.value.reason


def _patched(path: Path, out: Path, offset: int, value: bytes, gz: bool = False) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(value)] = value
    out.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return out


def test_broken_header(tmp_path, stack):
    path = write_nifti(tmp_path / "v.nii", stack_to_ras(stack))
    with pytest.raises(CorruptImageError, match="broken or truncated header"):  # magic
        read_nifti(_patched(path, tmp_path / "bad.nii", 344, b"xx1\x00"), salt=SALT)
    gz = tmp_path / "cut.nii.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:200])
    with pytest.raises(CorruptImageError):
        read_nifti(gz, salt=SALT)
    short = tmp_path / "short.nii"
    short.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptImageError, match=r"file holds 1,000 bytes: it is truncated"):
        read_nifti(short, salt=SALT)


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize(
    "offset, value, match",
    [
        # nibabel read dim[0] = 9 as a byte-swapped header and blamed the voxel offset
        (40, struct.pack("<h", 9), r"dim\[0\] \(the number of axes\) is 9, must be 1 to 7"),
        (40, struct.pack("<h", -1), r"dim\[0\] \(the number of axes\) is -1"),
        # numpy's "memory mapped length must be positive" / "negative count"
        (44, struct.pack("<h", -5), r"dim\[2\] \(the size of axis 2\) is -5, negative"),
        # "Expected 7200000 bytes, got 4800 bytes ... - could the file be damaged?" over 2 lines
        (42, struct.pack("<h", 30000), r"header states 30000×\d+×\d+ voxels .* truncated .* dim"),
        (70, struct.pack("<h", 999), r"datatype 999 is no NIfTI data type code"),
        # 32767³ voxels: read as-is, it ran a minute into "Cannot allocate memory"
        (42, struct.pack("<hhh", 32767, 32767, 32767), r"35,181,150,961,663 voxels, more than"),
    ],
    ids=["dim0-9", "dim0-negative", "dim2-negative", "dim1-huge", "datatype", "voxel-cap"],
)
def test_a_broken_header_field_is_named(tmp_path, stack, caplog, offset, value, match, gz):
    path = write_nifti(tmp_path / "v.nii", stack_to_ras(stack))
    bad = _patched(path, tmp_path / ("bad.nii.gz" if gz else "bad.nii"), offset, value, gz)
    with caplog.at_level(logging.WARNING), pytest.raises(CorruptImageError, match=match) as err:
        read_nifti(bad, salt=SALT)
    assert "\n" not in str(err.value) and "vox offset" not in str(err.value)
    assert not [r for r in caplog.records if r.name.startswith("nibabel")]  # no raw fix-ups


def test_a_big_endian_volume_passes_the_header_checks(tmp_path, stack):
    little = write_nifti(tmp_path / "v.nii", stack_to_ras(stack))
    img = nib.load(little)
    big = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header.as_byteswapped(">"))
    nib.save(big, tmp_path / "big.nii")
    assert (tmp_path / "big.nii").read_bytes()[:4] == struct.pack(">i", 348)
    a, b = read_nifti(little, salt=SALT), read_nifti(tmp_path / "big.nii", salt=SALT)
    assert len(a.slices) == len(b.slices) > 0
    for x, y in zip(a.slices, b.slices, strict=True):
        np.testing.assert_array_equal(x.image, y.image)


def test_a_gz_name_on_a_file_that_is_not_gzip_is_said_so(tmp_path, stack):
    """nibabel's "File <path> is not a gzip file" became "(File the file is not ...)" in
    predict; the reason now says what the file is and what to do."""
    plain = write_nifti(tmp_path / "v.nii", stack_to_ras(stack))
    named = tmp_path / "v.nii.gz"
    named.write_bytes(plain.read_bytes())
    with pytest.raises(CorruptImageError, match=r"named \.gz but not gzip.*rename it \.nii"):
        read_nifti(named, salt=SALT)
    (tmp_path / "t.nii.gz").write_bytes(b"hello world")
    with pytest.raises(CorruptImageError, match="not gzip-compressed"):
        read_nifti(tmp_path / "t.nii.gz", salt=SALT)


def test_a_volume_without_orientation_is_read_with_a_note(tmp_path, stack):
    """qform_code = sform_code = 0: "reoriented to RAS+, axial" is a guess, said in a note
    (ingest's "stored with a note", predict's volume row) instead of nothing."""
    from mriscan.readers import read_input

    data = stack_to_ras(stack)
    bare = nib.Nifti1Image(data, None)
    bare.header.set_qform(None, code=0)
    bare.header.set_sform(None, code=0)
    nib.save(bare, tmp_path / "bare.nii")
    write_nifti(tmp_path / "ok.nii", data)
    assert "states no orientation" in read_nifti(tmp_path / "bare.nii", salt=SALT).note
    assert read_nifti(tmp_path / "ok.nii", salt=SALT).note == ""
    r = read_input(tmp_path / "bare.nii", "nifti", salt=SALT, root=tmp_path)
    assert r.slices and "qform_code and sform_code 0" in r.note


def test_finite_values_past_float32_give_the_same_slices(tmp_path, stack):
    """Values near 1e300 (finite float64) overflowed the float32 window: "blank volume"."""
    data = stack_to_ras(stack).astype(np.float64)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    nib.save(nib.Nifti1Image(data * 1e300, np.eye(4)), tmp_path / "huge.nii")
    a, b = (read_nifti(tmp_path / n, salt=SALT, config=ALL) for n in ("a.nii", "huge.nii"))
    assert len(a.slices) == len(b.slices) > 0
    for x, y in zip(a.slices, b.slices, strict=True):
        assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 1
    assert b.slices[0].meta.window_high == pytest.approx(a.slices[0].meta.window_high * 1e300)


def test_a_2d_slice_is_read_as_a_volume_of_one_slice(tmp_path):
    """A single slice saved as a 2-D NIfTI (dim[0] = 2) was refused while the same slice
    saved as X×Y×1 was read."""
    img = np.add.outer(np.arange(24) * 30, np.arange(20) * 20).astype(np.int16)  # a ramp
    img[6:18, 5:15] += 2000  # and a square: anatomy enough, not noise
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(img[..., None], np.eye(4)), tmp_path / "one.nii")
    (a,), (b,) = (read_nifti(tmp_path / n, salt=SALT).slices for n in ("flat.nii", "one.nii"))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (20, 24)
    nib.save(nib.Nifti1Image(img[:, 0], np.eye(4)), tmp_path / "line.nii")
    with pytest.raises(UnsupportedFormatError, match="expected a 2-D slice or a 3-D or 4-D"):
        read_nifti(tmp_path / "line.nii", salt=SALT)


def test_an_all_nan_volume_is_named_so_not_blank(tmp_path):
    nib.save(nib.Nifti1Image(np.full((4, 5, 3), np.nan, np.float32), np.eye(4)), tmp_path / "n.nii")
    with pytest.raises(CorruptImageError, match="every voxel is NaN or infinite"):
        read_nifti(tmp_path / "n.nii", salt=SALT)


def test_zero_size_and_blank_volumes(tmp_path):
    empty = tmp_path / "empty.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.int16), np.eye(4)), empty)
    with pytest.raises(CorruptImageError, match="zero-size volume"):
        read_nifti(empty, salt=SALT)
    blank = tmp_path / "blank.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), np.eye(4)), blank)
    with pytest.raises(CorruptImageError, match="blank volume"):
        read_nifti(blank, salt=SALT)


@pytest.mark.parametrize(
    "rows",
    [[[0.0] * 4] * 3, [[1.0, 0.0, 0.0, 0.0], [0.0] * 4, [0.0, 0.0, 1.0, 0.0]]],
    ids=["all-zero", "zero-column"],
)
def test_a_singular_affine_is_refused_without_numpy_warnings(tmp_path, stack, rows):
    """N5: a volume whose sform is singular (all zeros, or a zero column) is refused with
    mriscan's own error only; nibabel's qform decomposition divided by zero and took the
    determinant of NaNs first, and numpy's RuntimeWarnings reached the console beside it."""
    import warnings

    path = tmp_path / "singular.nii"
    nib.save(nib.Nifti1Image(stack.astype(np.int16), np.eye(4)), path)
    raw = bytearray(path.read_bytes())  # nibabel will not write such an affine itself
    struct.pack_into("<hh", raw, 252, 0, 1)  # qform_code 0 (unknown), sform_code 1 (scanner)
    for offset, row in zip((280, 296, 312), rows, strict=True):  # srow_x, srow_y, srow_z
        struct.pack_into("<4f", raw, offset, *row)
    path.write_bytes(raw)
    assert np.linalg.matrix_rank(nib.load(path).affine[:3, :3]) < 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CorruptImageError, match="the affine cannot be oriented"):
            read_nifti(path, salt=SALT)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"plane": "oblique"}, "plane"),
        ({"selection": "some"}, "selection"),
        ({"brain_fraction": 0.0}, "brain_fraction"),
        ({"middle_count": 0}, "middle_count"),
        ({"window_percentiles": (99, 1)}, "window_percentiles"),
        ({"four_d": "mean"}, "four_d"),
    ],
)
def test_config_is_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NiftiConfig(**kwargs)


def _gz_variants(tmp_path, stack) -> list[Path]:
    """Gzipped volumes of several kinds: int16 LPS, float32 big-endian, NIfTI-2, scaled."""
    ras = stack_to_ras(stack)
    out = [write_nifti(tmp_path / "lps.nii.gz", ras, axcodes="LPS")]
    big = nib.Nifti1Image(ras.astype(">f4") * 0.5, np.diag([1.0, 1.0, 2.0, 1.0]))
    nib.save(big, tmp_path / "big.nii.gz")
    two = nib.Nifti2Image(ras.astype(np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    nib.save(two, tmp_path / "two.nii.gz")
    scaled = nib.Nifti1Image(ras.astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(0.25, -10.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    out += [tmp_path / "big.nii.gz", tmp_path / "two.nii.gz", tmp_path / "scaled.nii.gz"]
    return [*out, _nibabel_file("example4d.nii.gz"), _nibabel_file("example_nifti2.nii.gz")]


def test_truncated_gzip_and_broken_magic_say_what_to_do(tmp_path, stack):
    """A .nii.gz cut short is called truncated with the way out, and a header nibabel cannot
    read says what to do without repeating the path (tester20 F6)."""
    path = write_nifti(tmp_path / "v.nii", stack_to_ras(stack))
    packed = gzip.compress(path.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(packed[: len(packed) * 2 // 3])  # the stream ends inside the voxel data
    with pytest.raises(CorruptImageError, match=r"truncated.*: copy or export it again$"):
        read_nifti(cut, salt=SALT)
    bad = _patched(path, tmp_path / "bad.nii", 344, b"xx1\x00")
    with pytest.raises(
        CorruptImageError, match=r"broken or truncated header .*; export it ag"
    ) as e:
        read_nifti(bad, salt=SALT)
    assert str(bad) not in e.value.reason


def test_gzipped_volumes_read_through_isal_equal_nibabels_reading(tmp_path, stack, monkeypatch):
    """The ISA-L gzip reader gives the same slices and metadata as nibabel's own (Python gzip),
    and a truncated volume fails the same way."""
    from mriscan import nifti

    paths = _gz_variants(tmp_path, stack)
    cut = tmp_path / "cut_data.nii.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(paths[0].read_bytes())[:20_000]))
    fast = [read_nifti(p, salt=SALT, config=ALL) for p in paths]
    assert all(nifti._open_gzipped(p)[0] is not None for p in paths)
    with pytest.raises(CorruptImageError, match="it is truncated") as fast_err:
        read_nifti(cut, salt=SALT, config=ALL)
    monkeypatch.setattr(nifti, "_open_gzipped", lambda path: (None, None))
    slow = [read_nifti(p, salt=SALT, config=ALL) for p in paths]
    with pytest.raises(CorruptImageError, match="it is truncated") as slow_err:
        read_nifti(cut, salt=SALT, config=ALL)
    assert type(fast_err.value.__cause__) is type(slow_err.value.__cause__)
    for a, b in zip(fast, slow, strict=True):
        assert (a.shape, a.zooms, a.volume) == (b.shape, b.zooms, b.volume)
        assert len(a.slices) == len(b.slices) > 0
        for sa, sb in zip(a.slices, b.slices, strict=True):
            np.testing.assert_array_equal(sa.image, sb.image)
            assert sa.meta == sb.meta


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_volume_larger_than_free_memory_is_refused_before_reading(
    tmp_path, stack, monkeypatch, suffix
):
    """A volume under the voxel cap whose reading needs more memory than is free is this
    file's error (naming the need, what is free and what to do), before a voxel is read; it
    used to end a whole ingest with numpy's MemoryError (tester20 F2)."""
    import mriscan.nifti as nifti
    from mriscan.errors import ImageTooLargeError
    from mriscan.readers import read_input

    path = write_nifti(tmp_path / f"v{suffix}", stack_to_ras(stack))
    voxels = stack.size
    monkeypatch.setattr(nifti, "free_memory", lambda: voxels * nifti.BYTES_PER_VOXEL - 1)
    with pytest.raises(ImageTooLargeError, match=r"needs about .* GiB of memory .* are free: fre"):
        read_nifti(path, salt=SALT)
    r = read_input(path, "nifti", salt=SALT, root=None)
    assert r.error and "crop or resample the volume" in r.error and not r.slices
    monkeypatch.setattr(nifti, "free_memory", lambda: voxels * nifti.BYTES_PER_VOXEL)
    assert read_nifti(path, salt=SALT).slices


def test_free_memory_counts_the_address_space_limit():
    """``ulimit -v`` (RLIMIT_AS) bounds what may be allocated as much as the machine does."""
    import subprocess
    import sys

    code = (
        "import resource; from mriscan.nifti import free_memory; "
        "resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY)); "
        "print(free_memory())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) < 6 * 2**30


def test_a_large_volume_gets_one_window_in_any_voxel_order(tmp_path):
    """Above 2**20 voxels the percentiles come from an even subsample; it was taken in the
    file's voxel order, so one volume stored RAS or LPS got windows 0..671 and 0..667 and
    other pixels (tester34). It is taken in RAS+ order now."""
    vol = stack_to_ras(phantom_volume(4, n_slices=70, canvas=128))
    assert vol.size > 2**20
    reads = [
        read_nifti(write_nifti(tmp_path / f"{c}.nii", vol, axcodes=c), salt=SALT, config=ALL)
        for c in ("RAS", "LPS", "PSR", "ILA")
    ]
    first = reads[0].slices
    for r in reads[1:]:
        assert [(s.meta.window_low, s.meta.window_high) for s in r.slices] == [
            (s.meta.window_low, s.meta.window_high) for s in first
        ]
        for a, b in zip(first, r.slices, strict=True):
            np.testing.assert_array_equal(a.image, b.image)
