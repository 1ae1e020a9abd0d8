"""Decoding: every Pillow mode we accept, and a specific error for every kind of bad file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mriscan.errors import (
    CorruptImageError,
    EmptyDatasetError,
    ImageDecodeError,
    ImageTooLargeError,
    MriscanError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from mriscan.io import decode_image, list_class_folders

GRAD = np.tile(np.arange(0, 200, 4, dtype=np.uint8), (30, 1))  # 30x50 gradient


def _save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("name", ["a.png", "a.PNG", "a.jpg", "a.JPG", "a.jpeg"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decodes_gray_and_rgb_any_suffix(tmp_path, name, mode):
    img = Image.fromarray(GRAD).convert(mode)
    out = decode_image(_save(tmp_path, img, name))
    assert out.shape == (30, 50) and out.dtype == np.uint8
    tol = 0 if name.lower().endswith("png") else 3
    assert np.abs(out.astype(int) - GRAD).mean() <= tol


def test_rgba_drops_alpha_instead_of_blackening(tmp_path):
    rgba = np.dstack([GRAD] * 3 + [np.zeros_like(GRAD)])  # fully transparent
    out = decode_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    np.testing.assert_array_equal(out, GRAD)


def test_la_palette_and_cmyk(tmp_path):
    la = Image.fromarray(np.dstack([GRAD, np.zeros_like(GRAD)]), "LA")
    np.testing.assert_array_equal(decode_image(_save(tmp_path, la, "la.png")), GRAD)
    pal = Image.fromarray(GRAD).convert("P")
    assert np.abs(decode_image(_save(tmp_path, pal, "p.png")).astype(int) - GRAD).max() <= 8
    cmyk = Image.fromarray(GRAD).convert("RGB").convert("CMYK")
    out = decode_image(_save(tmp_path, cmyk, "c.jpg", quality=95))
    assert out.shape == GRAD.shape and np.abs(out.astype(int) - GRAD).mean() < 6


def test_16bit_grayscale_is_scaled_to_8bit(tmp_path):
    arr16 = (GRAD.astype(np.uint16) * 300).astype(np.uint16)
    img = Image.fromarray(arr16)
    out = decode_image(_save(tmp_path, img, "g16.png"))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)


def test_a_16bit_image_of_few_values_is_shifted_not_stretched(tmp_path):
    """Values 1000-1002 (noise on a flat image) stay 0-2, dark and uniform by the readers'
    rule, not full-contrast noise (tester30); a range of 256 values or more is stretched."""
    from mriscan.readers import slice_warnings

    rng = np.random.default_rng(0)
    noise = (1000 + rng.integers(0, 3, (40, 40))).astype(np.uint16)
    out = decode_image(_save(tmp_path, Image.fromarray(noise), "n16.png"))
    np.testing.assert_array_equal(out, noise - 1000)
    assert slice_warnings(out) == ("uniform",)
    wide = (1000 + rng.integers(0, 600, (40, 40))).astype(np.uint16)
    out = decode_image(_save(tmp_path, Image.fromarray(wide), "w16.png"))
    assert out.min() == 0 and out.max() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(GRAD)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(_save(tmp_path, img, "r.jpg", exif=exif, quality=95))
    assert out.shape == (50, 30)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        decode_image(p)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(buf, "JPEG")
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptImageError, match=r"trunc\.jpg: image data is truncated"):
        decode_image(p)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    with pytest.raises(UnsupportedFormatError, match=r"notes\.jpg: not a recognised image"):
        decode_image(p)


def test_unsupported_format(tmp_path):
    p = _save(tmp_path, Image.fromarray(GRAD), "a.bmp")
    with pytest.raises(UnsupportedFormatError, match="format BMP is not supported"):
        decode_image(p)


def test_pixel_cap(tmp_path):
    p = _save(tmp_path, Image.fromarray(GRAD), "big.png")
    with pytest.raises(ImageTooLargeError, match=r"50x30 = 1,500 pixels exceeds the cap of 1,000"):
        decode_image(p, max_pixels=1000)


def test_the_pixel_cap_hint_names_only_ways_that_exist(tmp_path):
    """The hint once said "raise max_pixels" as if it were an option: no command has one."""
    import re

    from click.testing import CliRunner

    import mriscan
    from mriscan.cli import main
    from mriscan.ingest import IngestConfig

    p = _save(tmp_path, Image.fromarray(GRAD), "big.png")
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(p, max_pixels=1000)
    message = str(info.value)
    assert "downscale the image" in message and "no command-line option" in message
    assert "mriscan.decode_image" in message and "IngestConfig" in message
    assert IngestConfig(max_pixels=5).max_pixels == 5  # the named parameters exist
    assert "max_pixels" in mriscan.decode_image.__code__.co_varnames
    for flag in re.findall(r"--[a-z-]+", message):  # any option it names is a real one
        assert flag in CliRunner().invoke(main, ["ingest", "--help"]).output


def test_missing_and_directory(tmp_path):
    with pytest.raises(UnreadableFileError, match="cannot open file"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(UnreadableFileError, match="is a directory"):
        decode_image(tmp_path)


def test_errors_share_one_hierarchy():
    for cls in (CorruptImageError, UnsupportedFormatError, ImageTooLargeError, UnreadableFileError):
        assert issubclass(cls, ImageDecodeError) and issubclass(cls, MriscanError)
    assert issubclass(ImageDecodeError, ValueError)


def test_list_class_folders(class_folder, tmp_path):
    classes = list_class_folders(class_folder)
    assert list(classes) == ["no", "yes"] and all(len(v) == 6 for v in classes.values())
    (tmp_path / "one" / "yes").mkdir(parents=True)
    with pytest.raises(EmptyDatasetError, match="at least two class sub-folders"):
        list_class_folders(tmp_path / "one")
    (tmp_path / "one" / "no").mkdir()
    with pytest.raises(EmptyDatasetError, match=r"hold no \.jpg"):
        list_class_folders(tmp_path / "one")


def test_links_into_another_class_and_broken_links_are_named(class_folder, tmp_path):
    """A folder link in yes/ pointing at no/ was read as yes too, and every file in it was
    reported as a label conflict; a broken link was "cannot read file (No such file...)"."""
    import os

    from mriscan.io import UNLISTED_FOLDER, scan_class_folders

    os.symlink("../no", class_folder / "yes" / "other")
    os.symlink("/nonexistent/x.jpg", class_folder / "yes" / "broken.jpg")
    listing = scan_class_folders(class_folder)
    assert {len(v) for v in listing.classes.values()} == {6}  # nothing read twice
    (why,) = [u.reason for u in listing.unused if u.path.name == "other"]
    assert "link into class folder no/" in why and "read there, as 'no'" in why
    ((path, reason),) = listing.unreadable
    assert path.name == "broken.jpg" and "broken symbolic link" in reason
    assert "/nonexistent/x.jpg" in reason and not reason.startswith(UNLISTED_FOLDER)


def test_one_class_folder_is_for_evaluate_only(class_folder, tmp_path):
    """Tester 16 finding 6: evaluate lists a folder of one class (a tumor-only collection);
    by default (ingest, train, cv) it is refused with the same message as before. The parent
    of the class folders is refused even then, naming the folder to use."""
    from mriscan.io import scan_class_folders

    (tmp_path / "one").mkdir()
    (class_folder / "yes").rename(tmp_path / "one" / "yes")
    with pytest.raises(EmptyDatasetError, match="at least two class sub-folders"):
        scan_class_folders(tmp_path / "one")
    listing = scan_class_folders(tmp_path / "one", min_classes=1)
    assert list(listing.classes) == ["yes"] and len(listing.classes["yes"]) == 6
    (tmp_path / "top").mkdir()
    class_folder.rename(tmp_path / "top" / "set")
    (tmp_path / "top" / "set" / "yes").mkdir()
    with pytest.raises(EmptyDatasetError, match=r"set/, and it holds folders named like classes"):
        scan_class_folders(tmp_path / "top", min_classes=1)
    with pytest.raises(EmptyDatasetError, match="holds no class sub-folder"):
        scan_class_folders(tmp_path / "top" / "set" / "no", min_classes=1)


def test_every_real_file_decodes(real_data):
    files = [p for d in ("yes", "no") for p in sorted((real_data / d).iterdir())]
    assert len(files) == 253
    shapes = set()
    for p in files:
        arr = decode_image(p)
        assert arr.ndim == 2 and arr.dtype == np.uint8 and arr.size > 0
        shapes.add(arr.shape)
    assert len(shapes) >= 150


# --- issue 19 item 11: no Pillow exception escapes decode --------------------------------------


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(GRAD).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("where", ["before IDAT", "after IDAT"])
@pytest.mark.parametrize("ctype", [b"zTXt", b"iTXt", b"iCCP"])
def test_png_metadata_chunk_past_pillows_limit(tmp_path, ctype, where):
    big = zlib.compress(b"a" * 2_000_000)
    body = {
        b"zTXt": b"Comment\0\0" + big,
        b"iTXt": b"Comment\0\x01\0\0\0" + big,
        b"iCCP": b"icc\0\0" + big,
    }[ctype]
    png = _png_bytes()
    at = 33 if where == "before IDAT" else png.rindex(b"IEND") - 4  # after IHDR / before IEND
    p = tmp_path / "meta.png"
    p.write_bytes(png[:at] + _chunk(ctype, body) + png[at:])
    with pytest.raises(CorruptImageError, match=r"meta\.png: a PNG metadata chunk decompresses"):
        decode_image(p)


@pytest.mark.parametrize("bit", range(32))
def test_any_flipped_bit_of_the_ihdr_length(tmp_path, bit):
    b = bytearray(_png_bytes())
    b[8 + bit // 8] ^= 1 << (7 - bit % 8)  # bytes 8..11: IHDR's length field
    p = tmp_path / "ihdr.png"
    p.write_bytes(bytes(b))
    try:
        out = decode_image(p)
    except ImageDecodeError as exc:
        assert exc.path == str(p) and exc.reason
    else:
        assert out.ndim == 2 and out.dtype == np.uint8


@pytest.mark.parametrize("stage", ["open", "load"])
@pytest.mark.parametrize(
    "error",
    [ValueError("x"), SyntaxError("x"), IndexError("x"), TypeError("x"), KeyError("x"),
     EOFError(), ZeroDivisionError(), RuntimeError("x"), struct.error("x")],
)  # fmt: skip
def test_every_pillow_exception_becomes_a_decode_error(tmp_path, monkeypatch, stage, error):
    """The whole kind: whatever a Pillow plugin raises on bad data names the file."""
    import PIL.ImageFile

    def boom(*args, **kwargs):
        raise error

    if stage == "open":
        monkeypatch.setattr(Image, "open", boom)
    else:
        monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", boom)
    p = _save(tmp_path, Image.fromarray(GRAD), "odd.png")
    with pytest.raises(CorruptImageError) as info:
        decode_image(p)
    assert info.value.path == str(p)
    assert ("header" if stage == "open" else "truncated or damaged") in info.value.reason
    assert info.value.__cause__ is error


@pytest.mark.parametrize("error", [MemoryError(), KeyboardInterrupt()])
def test_memory_error_and_interrupt_are_not_swallowed(tmp_path, monkeypatch, error):
    import PIL.ImageFile

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", boom)
    p = _save(tmp_path, Image.fromarray(GRAD), "big.png")
    with pytest.raises(type(error)) as info:
        decode_image(p)
    if isinstance(error, MemoryError):
        assert any(str(p) in note for note in info.value.__notes__)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` 8-bit grey pixels (its data is a
    few bytes: only the header is ever read when the size is refused)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [13000, 30000])  # under and over Pillow's own error limit
def test_images_over_pillows_bomb_limit_get_mriscans_cap_message(tmp_path, side):
    p = tmp_path / "huge.png"
    p.write_bytes(_png_claiming(side, side))
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(p)
    message = str(info.value)
    assert f"{side}x{side} = {side * side:,} pixels exceeds the cap of 64,000,000" in message
    assert "huge.png" in message and "downscale the image" in message
    assert "DOS attack" not in message and "decompression bomb (" not in message


def test_mriscans_cap_decides_where_pillows_limit_is_lower(tmp_path, monkeypatch):
    """An image Pillow alone would refuse (its limit set below the image) is decoded when it
    is within mriscan's cap, and refused with mriscan's message when it is not."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow errors past 200 pixels
    p = _save(tmp_path, Image.fromarray(GRAD), "a.png")
    np.testing.assert_array_equal(decode_image(p), GRAD)
    with pytest.raises(ImageTooLargeError, match=r"50x30 = 1,500 pixels exceeds the cap of 1,000"):
        decode_image(p, max_pixels=1000)


def test_ingest_names_huge_images_in_mriscans_words_without_pillows_warning(class_folder, tmp_path):
    import warnings

    from click.testing import CliRunner

    from mriscan.cli import main

    (class_folder / "yes" / "wide.png").write_bytes(_png_claiming(13000, 13000))
    (class_folder / "no" / "vast.png").write_bytes(_png_claiming(30000, 30000))
    args = ["ingest", str(class_folder), "--store", str(tmp_path / "s.zarr"), "--image-size", "32"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "DOS attack" not in res.output, res.output
    assert not [w for w in caught if "DOS attack" in str(w.message)]
    assert "yes/wide.png: 13000x13000 = 169,000,000 pixels exceeds the cap" in res.output
    assert "no/vast.png: 30000x30000 = 900,000,000 pixels exceeds the cap" in res.output


def test_one_line_joins_lines_and_escapes_odd_bytes():
    """Line breaks and tabs with the blanks around them become one space; double spaces of a
    file name stay; bytes that are not UTF-8 become \\xNN (as display_path shows them)."""
    import os

    from mriscan.io import one_line

    text = "affine (Could not decompose:\n[[1. 0.]\n [0. 0.]]) from " + os.fsdecode(b"a  b\xff")
    assert one_line(text) == "affine (Could not decompose: [[1. 0.] [0. 0.]]) from a  b\\xff"
    assert one_line("Expected 8 bytes\n - could the file be damaged?\n") == (
        "Expected 8 bytes - could the file be damaged?"
    )


def test_write_whole_replaces_a_file_in_one_step_or_leaves_it_as_it_was(tmp_path):
    """The DICOM reports and captures go through write_whole: a write that fails half-way
    leaves the old file and no temporary file; one that succeeds replaces it."""
    from mriscan.io import write_whole

    target = tmp_path / "x.dcm"
    target.write_bytes(b"old")

    def half(tmp):
        tmp.write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_whole(target, half)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    assert write_whole(target, lambda tmp: tmp.write_bytes(b"new")) == target
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


def _relpath_reference(path: str, root: str) -> str:
    """What ``relative_name`` returned before its prefix shortcut (``os.path.relpath``)."""
    from mriscan.io import display_path

    return display_path(Path(os.path.relpath(path, root)).as_posix())


@pytest.mark.parametrize(
    "root",
    ["data", "data/", "./data", "data/.", "data/../data", "/abs/data", "/abs/data/", "/", ".",
     "./", "a/b/..", "../up/data", "data//x"],
)  # fmt: skip
@pytest.mark.parametrize(
    "tail",
    ["x.dcm", "yes/p1/IM0001", "yes/./x", "yes/../x", "yes//x", "yes/x/", "..", ".", "",
     "../other/x", "ü/\udce9.dcm", ".hidden/x"],
)  # fmt: skip
def test_relative_name_equals_relpath(root, tail):
    """The shortcut for paths found under ``root`` gives exactly what ``os.path.relpath`` gives,
    also for paths it must hand over (unclean parts, a path not below ``root``)."""
    from mriscan.io import relative_name

    for path in (os.path.join(root, tail), root + tail, "elsewhere/" + tail, "/x/" + tail):
        if not path:
            continue
        assert relative_name(path, root) == _relpath_reference(path, root), (path, root)
        assert relative_name(Path(path), Path(root)) == _relpath_reference(path, root)


def test_an_empty_file_without_a_suffix_gets_the_one_empty_file_reason(tmp_path):
    """An empty file of no known suffix is no input, with the reason every empty input gets,
    the way out included (tester20 F6)."""
    from mriscan.io import EMPTY_FILE, classify_file

    (tmp_path / "empty").write_bytes(b"")
    assert classify_file(tmp_path / "empty") == (None, EMPTY_FILE)
    assert EMPTY_FILE.endswith("export it again or remove it")
