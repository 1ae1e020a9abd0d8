"""A faster ``pydicom.dcmread`` for the plainest DICOM Part 10 files, or None for the rest.

Why mriscan walks these elements itself: ``pydicom.dcmread`` builds its data set through a
generic element generator (any transfer syntax, undefined lengths, sequences, VR switches,
deferred reads, ...) that costs ~0.25-0.3 ms of Python per file, about as much as everything else
ingest does with a 256x256 slice; since it holds the GIL, it also caps how much of ingest can
run on a second core (``bench/test_scanner.py``: ingest against pydicom's own read rate).

``read_part10`` takes the common layout only: the 128-byte preamble and ``DICM``, file meta
information (group 0002, explicit VR little endian) and a data set in explicit or implicit VR
little endian whose every element has a defined length and a standard VR, and that ends on an
element boundary. From these bytes it builds what ``pydicom.dcmread`` builds: the same
``RawDataElement`` for every element (tag, VR, length, value bytes, offset, encoding), in a
``FileDataset`` with the same ``FileMetaDataset``, preamble, file name and original encoding,
so every value is then converted by pydicom as before. For anything else (no preamble, other
transfer syntaxes, undefined lengths, an encapsulated or truncated element, an unknown VR, a
command set, a data set whose first element disagrees with its transfer syntax) it returns
None and the caller reads the file with ``pydicom.dcmread`` as before, which gives its own
warnings and errors. ``tests/test_dicom_part10.py`` checks the two agree element by element.
"""

from __future__ import annotations

import os
import struct

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

__all__ = ["read_part10", "tag_object"]

#: the standard VRs as their two bytes, and their names (pydicom's ``filereader.ENCODED_VR``)
_VR_NAMES = {str(vr).encode("ascii"): str(vr) for vr in VR}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT = struct.Struct("<HH2sH")  # tag group, element, VR, 2-byte length
_IMPLICIT = struct.Struct("<HHL")  # tag group, element, 4-byte length
_LENGTH32 = struct.Struct("<L")
_UNDEFINED = 0xFFFFFFFF
_ITEM_DELIMITER = 0xFFFEE00D
_PREAMBLE = 128
_CHUNK = 16384  # bytes read at once; larger values are read on their own
_raw_element = RawDataElement._make
#: Transfer Syntax UID bytes as writers pad them (to an even length, with a NUL) -> implicit
#: VR; any other spelling, even one pydicom would read as these, is left to pydicom
_SYNTAXES = {
    str(ExplicitVRLittleEndian).encode() + b"\x00": False,
    str(ImplicitVRLittleEndian).encode() + b"\x00": True,
}


_BASE_TAGS: dict[int, BaseTag] = {}
_MAX_SHARED_TAGS = 8192  # private tags vary by vendor: the table stays bounded


def tag_object(tag: int) -> BaseTag:
    """One shared ``BaseTag`` per tag number. The data sets read here use these objects as
    their keys, so a lookup with the same object matches by identity: ``BaseTag.__eq__`` is
    Python, and ``pydicom.tag.Tag`` returns a ``BaseTag`` at once but converts an int."""
    obj = _BASE_TAGS.get(tag)
    if obj is None:
        obj = BaseTag(tag)
        if len(_BASE_TAGS) < _MAX_SHARED_TAGS:
            _BASE_TAGS[tag] = obj
    return obj


def read_part10(path: str | os.PathLike[str]) -> FileDataset | None:
    """``pydicom.dcmread(path)`` for a file of the layout the module doc describes, else None.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    with open(path, "rb", buffering=0) as fh:
        src = _Source(fh)
        return _read(src, os.fspath(path))


def _read(src: _Source, name: str) -> FileDataset | None:
    head = src.buf
    if len(head) < _PREAMBLE + 4 or head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    meta_walk = _elements(src, _PREAMBLE + 4, implicit=False, meta=True)
    if meta_walk is None or not meta_walk[0]:
        return None
    meta_elements, start = meta_walk
    implicit = _SYNTAXES.get(_value(meta_elements, 0x00020010))
    if implicit is None:
        return None
    try:
        file_meta = _file_meta(meta_elements)
    except Exception:  # pydicom's own reader decides
        return None
    first = src.at(start, 8)
    if first is None or _looks_implicit(first) != implicit or first[:2] == b"\x00\x00":
        return None  # pydicom would switch the VR encoding, or read a command set (0000)
    walk = _elements(src, start, implicit=implicit, meta=False)
    if walk is None:
        return None
    # pydicom wraps the elements in a Dataset first and hands its dict to the FileDataset, whose
    # original character set is the one of those elements: the same state, one object less
    ds = FileDataset(name, walk[0], head[:_PREAMBLE], file_meta, implicit, True)
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds


class _Source:
    """A file read in chunks: the first ``_CHUNK`` bytes (the header, as a rule), then large
    values (Pixel Data) read on their own into a bytes object of their exact size, as pydicom
    reads them (slicing them out of one big read would copy 128 kB more per 256x256 slice)."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.size = os.fstat(fh.fileno()).st_size
        self.buf = fh.read(_CHUNK)
        self.base = 0

    def refill(self, pos: int) -> None:
        """Buffer the bytes from ``pos`` on."""
        self.fh.seek(pos)
        self.buf = self.fh.read(_CHUNK)
        self.base = pos

    def at(self, pos: int, n: int) -> bytes | None:
        """The ``n`` bytes at ``pos``, None past the end of the file."""
        if pos + n > self.size:
            return None
        if not self.base <= pos <= pos + n <= self.base + len(self.buf):
            if n > _CHUNK:
                self.fh.seek(pos)
                data = self.fh.read(n)
                return data if len(data) == n else None
            self.refill(pos)
            if pos + n > self.base + len(self.buf):
                return None
        return self.buf[pos - self.base : pos - self.base + n]


def _value(elements: dict, tag: int) -> bytes | None:
    elem = elements.get(tag)
    return None if elem is None else elem.value


def _file_meta(elements: dict) -> FileMetaDataset:
    """The file meta information as ``pydicom.filereader._read_file_meta_info`` makes it.
    (pydicom then converts its first element to try whether it was implicit VR, which these
    files are not: the element stays raw until used, with the same value then.)"""
    file_meta = FileMetaDataset(elements)
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding
    )
    return file_meta


def _looks_implicit(first: bytes) -> bool:
    """pydicom's test of a data set's first element (``filereader._is_implicit_vr``): no VR
    of two capital letters after its tag means implicit VR."""
    a, b = first[4], first[5]
    return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)


def _elements(src: _Source, pos: int, *, implicit: bool, meta: bool) -> tuple[dict, int] | None:
    """The ``RawDataElement`` of each element from ``pos`` on, keyed by tag, as pydicom's
    ``data_element_generator`` yields them, and the offset after the last one; ``meta``: stop
    before the first element outside group 0002. None where pydicom would do anything but read
    plain elements (see the module doc). The loop runs on ``src``'s buffer (a local, for speed)
    and asks ``src`` for bytes only past its end."""
    end = src.size
    buf, base = src.buf, src.base
    limit = base + len(buf)
    out: dict[BaseTag, RawDataElement] = {}
    while pos < end:
        if end - pos < 8:
            return None  # a stray tail: pydicom ignores it silently, mriscan lets it decide
        if pos + 12 > limit:  # the element's header may run past the buffer
            src.refill(pos)
            buf, base = src.buf, src.base
            limit = base + len(buf)
            if pos + 8 > limit:
                return None
        off = pos - base
        if implicit:
            group, element, length = _IMPLICIT.unpack_from(buf, off)
            vr = None
            pos += 8
        else:
            group, element, raw_vr, length = _EXPLICIT.unpack_from(buf, off)
            if meta and group != 2:
                break
            vr = _VR_NAMES.get(raw_vr)
            if vr is None:
                return None  # an unknown VR or a switch to implicit VR
            pos += 8
            if vr in _LONG_VRS:
                if pos + 4 > limit:
                    return None
                length = _LENGTH32.unpack_from(buf, off + 8)[0]
                pos += 4
        tag = group << 16 | element
        if length == _UNDEFINED or tag == _ITEM_DELIMITER or length > end - pos:
            return None
        if not length:
            value = empty_value_for_VR(vr, raw=True)
        elif pos + length <= limit:
            value = buf[pos - base : pos - base + length]
        else:
            value = src.at(pos, length)
            if value is None:
                return None
            buf, base = src.buf, src.base
            limit = base + len(buf)
        key = tag_object(tag)
        # RawDataElement(tag, VR, length, value, value_tell, is_implicit_VR,
        # is_little_endian, is_raw, is_buffered), as pydicom's generator yields it
        out[key] = _raw_element((key, vr, length, value, pos, implicit, True, True, False))
        pos += length
    return out, pos
