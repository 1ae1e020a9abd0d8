"""The source header as copied into the DICOM objects mriscan files into a study
(``mriscan.dicom_sc``'s Secondary Captures, ``mriscan.dicom_sr``'s Structured Reports).

highdicom copies the source's Patient and Study modules and refuses values that do not parse
for their VR, yet many scanners and exporters write such values: Patient's Sex "U", a birth
date "1961-07-23", an ACR-NEMA time "14:04:38". ``tidy_copied_header`` mends the common forms
and empties the rest in the in-memory copy of the header (never the source file), saying per
element what it did. Those values identify a patient, so nothing here says a value:
``library_messages`` keeps the warnings and log lines pydicom and highdicom raise meanwhile
(which quote values) off the console, and ``mask_values`` takes values out of a library's
reason before mriscan shows it. Keras-free; imports pydicom only.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from mriscan.errors import MriscanError
from mriscan.library_warnings import recorded

log = logging.getLogger(__name__)

__all__ = [
    "COPIED",
    "HeaderError",
    "element_name",
    "library_messages",
    "mask_values",
    "tidy_copied_header",
]

#: the elements of the Patient and Study modules (root level) that highdicom copies from a
#: source image and parses by VR (DA, TM, AS, CS), with their Type in the image IODs
#: (PS3.3: "1C" present with a value when its condition holds, "2" present, possibly empty,
#: "3" optional); elements of other VRs (names, IDs, UIDs) are copied as they are
COPIED: dict[str, str] = {
    "PatientBirthDate": "2",
    "PatientSex": "2",
    "StudyDate": "2",
    "StudyTime": "2",
    "PatientSexNeutered": "2C",
    "PatientBirthTime": "3",
    "PatientAge": "3",
    "LastMenstrualDate": "3",
    "TypeOfPatientID": "3",
    "QualityControlSubject": "3",
    "PatientIdentityRemoved": "3",
    "SmokingStatus": "3",
    "PatientAlternativeCalendar": "1C",
    "ResponsiblePersonRole": "1C",
    "LongitudinalTemporalEventType": "1C",
}
#: the values PS3.3 enumerates for a CS element (others take any code string)
ENUMERATED: dict[str, tuple[str, ...]] = {
    "PatientSex": ("M", "F", "O"),
    "PatientSexNeutered": ("ALTERED", "UNALTERED"),
    "QualityControlSubject": ("YES", "NO"),
    "PatientIdentityRemoved": ("YES", "NO"),
    "SmokingStatus": ("YES", "NO", "UNKNOWN"),
}
# libraries whose log lines quote header values (pydicom.misc.warn_and_log logs and warns)
_LIBRARIES = ("pydicom", "highdicom")
_ISO_DATE = re.compile(r"(\d{4})[-.](\d{2})[-.](\d{2})")  # ISO, or ACR-NEMA's YYYY.MM.DD
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_COLON_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2}(?:\.\d{1,6})?))?")
_TIME = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?")
_AGE = re.compile(r"\d{3}[DWMY]")
_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")
_QUOTED = re.compile(r"(['\"])(.*?)\1")
_VR_NAME = re.compile(r"[A-Z]{2}")


class HeaderError(MriscanError, ValueError):
    """A source header cannot be copied into a DICOM object (the reason names the element,
    never its value)."""


def element_name(keyword: str) -> str:
    """An element as the messages name it: its dictionary name and tag, e.g.
    "Patient's Birth Date (0010,0030)"."""
    from pydicom.datadict import dictionary_description, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def tidy_copied_header(ds: Any, target: str) -> list[str]:
    """Make the elements of ``COPIED`` in ``ds`` (a header read into memory with
    ``mriscan.dicom.read_header``; the file is not touched) parse for their VR, so that
    highdicom copies them into ``target`` (e.g. "report", "Secondary Capture").

    A date written YYYY-MM-DD or YYYY.MM.DD becomes YYYYMMDD, a time HH:MM(:SS(.ffffff))
    becomes HHMM(SS(.ffffff)); any other value that does not parse (Patient's Sex "U", a date
    that is no date, an age "42 years") is emptied, which Type 2 and 3 elements allow (empty:
    unknown). Absent and empty elements are left as they are.

    Returns
    -------
    list of str
        One line per element changed, naming the element, never its value, e.g. "Patient's
        Birth Date (0010,0030) is not a DICOM date: written empty in the report".

    Raises
    ------
    HeaderError
        If a Type 1C element (present only when it has a value) has a value that does not
        parse: emptying it would make the object invalid; fix the source's header.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement

    notes = []
    with library_messages():
        for keyword, kind in COPIED.items():
            tag = tag_for_keyword(keyword)
            if tag is None or tag not in ds:
                continue
            vr = dictionary_VR(tag)
            text = _text(ds[tag].value)
            if text == "":
                continue
            fixed, what = _FIXES[vr](text, ENUMERATED.get(keyword))
            if fixed == text:
                continue
            name = element_name(keyword)
            if fixed == "" and kind.startswith("1"):
                raise HeaderError(
                    f"the source's {name} is not {what} and cannot be left empty in the "
                    f"{target}: fix the source's header"
                )
            ds[tag] = DataElement(tag, vr, fixed)
            if fixed:
                notes.append(f"{name} is not in DICOM form: rewritten as {what} in the {target}")
            else:
                notes.append(f"{name} is not {what}: written empty in the {target}")
    return notes


def _text(value: Any) -> str:
    """An element's value as the text the file holds (stripped; several values joined by a
    backslash, as the file separates them)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def _fix_date(text: str, _: tuple[str, ...] | None) -> tuple[str, str]:
    """(the DA value to write, what a DA is): YYYYMMDD for YYYYMMDD, YYYY-MM-DD and
    YYYY.MM.DD that name a real day; "" for anything else."""
    what = "a DICOM date (YYYYMMDD)"
    m = _DATE.fullmatch(text) or _ISO_DATE.fullmatch(text)
    if m is None:
        return "", what
    try:
        datetime.date(*(int(g) for g in m.groups()))
    except ValueError:
        return "", what
    return "".join(m.groups()), what


def _fix_time(text: str, _: tuple[str, ...] | None) -> tuple[str, str]:
    """(the TM value to write, what a TM is): HH(MM(SS(.ffffff))) as it is, HH:MM(:SS(.f))
    without its colons; "" for anything else or a time out of range."""
    what = "a DICOM time (HHMMSS.FFFFFF)"
    if (m := _COLON_TIME.fullmatch(text)) is not None:
        text = "".join(g for g in m.groups() if g is not None)
    m = _TIME.fullmatch(text)
    if m is None:
        return "", what
    limits = (23, 59, 60)  # 60: a leap second, which DICOM allows
    if any(int(g) > top for g, top in zip(m.groups(), limits, strict=True) if g is not None):
        return "", what
    return text, what


def _fix_age(text: str, _: tuple[str, ...] | None) -> tuple[str, str]:
    """(the AS value to write, what an AS is): nnnD/W/M/Y as it is; "" for anything else."""
    return (text if _AGE.fullmatch(text) else ""), "a DICOM age (nnnD, nnnW, nnnM or nnnY)"


def _fix_code(text: str, allowed: tuple[str, ...] | None) -> tuple[str, str]:
    """(the CS value to write, what it must be): one of ``allowed`` when given, else a code
    string (upper-case letters, digits, space, underscore; at most 16); "" for anything else."""
    if allowed:
        return (text if text in allowed else ""), " or ".join(
            (", ".join(allowed[:-1]), allowed[-1])
        )
    return (text if _CODE.fullmatch(text) else ""), "a DICOM code string"


_FIXES: dict[str, Callable[[str, tuple[str, ...] | None], tuple[str, str]]] = {
    "DA": _fix_date,
    "TM": _fix_time,
    "AS": _fix_age,
    "CS": _fix_code,
}


def mask_values(text: str) -> str:
    """A library's message with the values it quotes replaced by "<value>": pydicom and
    highdicom quote the offending value (``'U' is not a valid PatientSexValues``, ``Invalid
    value for VR DA: '1961-07-23'``), which may be a birth date or a name. Quoted DICOM
    keywords and VR names (``'DA'``, ``"PatientName"``) are kept: they name, not tell."""
    from pydicom.datadict import keyword_dict

    def keep_names(m: re.Match[str]) -> str:
        inner = m.group(2)
        if inner in keyword_dict or _VR_NAME.fullmatch(inner):
            return m.group(0)
        return f"{m.group(1)}<value>{m.group(1)}"

    return _QUOTED.sub(keep_names, text)


class _Keep(logging.Handler):
    """Keeps the records it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def library_messages() -> Iterator[None]:
    """Keep the warnings (``warnings``) and the pydicom and highdicom log records raised
    inside off the console: they quote header values (pydicom's "Invalid value for VR DA:
    '<birth date>'", highdicom's name checks). Each is logged afterwards at DEBUG on this
    module's logger, its values masked (``mask_values``), so ``-vv`` still shows what the
    libraries said. Not thread-safe: the libraries' loggers are detached meanwhile."""
    keep = _Keep()
    loggers = [logging.getLogger(n) for n in _LIBRARIES]
    before = [(lg.propagate, lg.handlers[:], lg.level, lg.filters[:]) for lg in loggers]
    for lg in loggers:
        lg.propagate = False
        lg.handlers = [keep]
        lg.setLevel(logging.WARNING)  # whatever level or filter the CLI set, its warnings are
        lg.filters = []  # kept (and said at DEBUG, masked, below)
    try:
        with recorded() as caught:  # one thread at a time: see mriscan.library_warnings
            yield
    finally:
        for lg, (propagate, handlers, level, filters) in zip(loggers, before, strict=True):
            lg.propagate, lg.handlers, lg.filters = propagate, handlers, filters
            lg.setLevel(level)
        said = {r.getMessage(): r.name for r in keep.records}
        for w in caught:  # pydicom both logs and warns each of its lines: said once
            said.setdefault(str(w.message), w.category.__name__)
        for message, source in said.items():
            log.debug("while copying a source header, %s: %s", source, mask_values(message))
