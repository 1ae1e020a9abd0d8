"""The series-level finding of ``mriscan predict`` written back as DICOM: one Structured Report
per predicted DICOM series, filed in the source's study (``mriscan predict --dicom-out``).

The report is a TID 1500 Measurement Report (DICOM PS3.16), built with ``highdicom.sr``
(``MeasurementReport`` in a ``ComprehensiveSR``), for the whole series (no region: the model
classifies slices, and the series row pools them). Comprehensive SR Storage holds TID 1500
without spatial coordinates and is the more widely accepted of the SOP classes highdicom
offers for it (Comprehensive 3D SR adds only 3-D coordinates, which a series-level finding
has none of). Its content:

- the observer is the device ``mriscan`` (TID 1004: the model file as its model name);
- procedure reported: SCT 363679005 "Imaging procedure";
- one measurement group, tracking identifier "mriscan finding": its finding (DCM 121071) is
  the predicted class, the only finding the report states; for a model with a healthy class
  (the models whose ``predict`` rows carry ``is_tumor``) also the qualitative evaluation
  SCT 108369006 "Neoplasm" = SCT 52101004 "Present" or SCT 272519000 "Absent", the label's
  tumor vs no tumor call (a two-class model's card does not say whether its positive class is
  a tumor, so it gets none); its source images (TID 1501 "Source", one per SOP instance read,
  with its frames for a multi-frame file) are the evidence, listed too in the Current
  Requested Procedure Evidence Sequence;
- in that group one measurement per class (TID 300): DCM 122157 "Probability" (unit UCUM "1",
  no units) = its pooled probability, exactly the ``p_<class>`` of ``predict``'s series row,
  with the pooling rule as its Measurement Method (SCT 370129005) and the class as its concept
  modifier SCT 278201002 "Classification" (TID 300 row 2: a concept modifier whose concept
  name, ``$ModType``, the user of the template chooses; highdicom's ``Measurement`` has no
  argument for it, so the item is added to its content, before the method as the rows go).
  The probabilities of the classes not predicted are thus stated as probabilities of those
  classes, never as findings: an earlier layout (one group per class, each with its class as
  Finding) made a report labelled ``no`` also say "Finding: yes";
- the group carries TID 4019 Algorithm Identification: name "mriscan <model file>", version
  (mriscan's and the model file's SHA-256 prefix from its card), and the decision rule
  (threshold, or the most probable class), the pooling rule and the class list as its
  parameters.

Codes are those shipped in ``pydicom.sr.codedict`` where one fits. Two kinds of concept have
no standard code, so they use the private coding scheme ``99MRISCAN`` (PS3.16 section 8.2:
private designators begin with "99"), declared in the file's Coding Scheme Identification
Sequence (0008,0110):

- the classes: they are the names of the training data's class folders (``yes``/``no``,
  ``glioma``, ...), chosen by whoever trained the model; mapping them to SNOMED would claim a
  meaning the model card does not record. Code Value = Code Meaning = the class name.
- the pooling rule (``top<k>-mean``, "Mean of top-<k> slice probabilities"): no
  DICOM or SNOMED concept names "mean of the k largest slice probabilities"
  (``mriscan.aggregate``).

The report is marked COMPLETE (every class is reported), PRELIMINARY and UNVERIFIED (an
algorithm's output that no person has checked). Like ``mriscan.dicom_sc``'s Secondary
Captures, highdicom copies the source's Patient and General Study modules (Patient Name,
Patient ID, Birth Date, Sex, Study Instance UID, Accession Number, ...) so that a PACS files
the report with the images; such a file carries the patient's identity, by design and unlike
everything else mriscan writes. Values there that do not parse for their VR (Patient's Sex
"U", a date "1961-07-23") are mended or emptied in the copy first (``mriscan.dicom_headers``).
Its file name is its own SOP Instance UID, never a patient's or file's name; that UID (and
its series') is derived from the source series, the model file's SHA-256, the threshold and
the pooling rule, so a repeated run replaces its report rather than adding a second one.
Keras-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mriscan.dicom_headers import HeaderError, library_messages, mask_values, tidy_copied_header
from mriscan.errors import MriscanError
from mriscan.io import write_whole

log = logging.getLogger(__name__)

__all__ = [
    "CODING_SCHEME",
    "SRSource",
    "StructuredReportError",
    "class_code",
    "pooling_code",
    "remove_stale_temp_files",
    "report_series_number",
    "write_series_report",
    "write_series_reports",
]

#: the private coding scheme designator of the class and pooling-rule codes (see module doc)
CODING_SCHEME = "99MRISCAN"
#: the Series Number (0020,0011) of a report is this + the source's Series Number modulo 1000
SERIES_NUMBER_BASE = 8000
# General Study / Patient attributes of Type 2 (present, possibly empty) that highdicom reads
# from the first source as attributes; a source that omits one gets it empty, as Type 2 allows
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class StructuredReportError(MriscanError, ValueError):
    """A Structured Report cannot be made for a series (the reason says why)."""


@dataclass(frozen=True)
class SRSource:
    """One slice of a series as ``predict`` read it: the DICOM ``path`` and its ``frame``
    (0-based; 0 for a single-frame file)."""

    path: Path
    frame: int = 0


def _code(value: str, meaning: str) -> Any:
    """A code of the private scheme ``CODING_SCHEME``."""
    from pydicom.sr.coding import Code

    return Code(value, CODING_SCHEME, meaning)


def class_code(name: str) -> Any:
    """The ``pydicom.sr.coding.Code`` of a model class: value and meaning the class name, in
    the private scheme ``CODING_SCHEME``.

    Raises
    ------
    StructuredReportError
        If the name cannot be a Code Meaning (LO: at most 64 characters, no backslash or
        control character): rename the class folder and train again.
    """
    if len(name) > 64 or "\\" in name or any(ord(c) < 32 for c in name):
        raise StructuredReportError(
            f"the class name {name!r} cannot be a DICOM Code Meaning (at most 64 characters, "
            "no backslash or control character)"
        )
    return _code(name, name)


def pooling_code(k: int) -> Any:
    """The private code of ``mriscan.aggregate``'s rule: ``top<k>-mean``."""
    return _code(f"top{k}-mean", f"Mean of top-{k} slice probabilities")


def _read_header(path: Path) -> Any:
    import pydicom

    from mriscan.dicom import read_header

    try:
        return read_header(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise StructuredReportError(f"cannot read a source's DICOM header ({exc})") from exc


def _source_image(hd: Any, ds: Any, frames: list[int], notes: list[str]) -> Any:
    """The SR's reference to one source file and the 0-based ``frames`` of it that were scored.

    A multi-frame file is referenced with its frame numbers (1-based). A file whose SOP class
    has no frames in its IOD (a legacy MR Image Storage object) but whose header states
    Number of Frames > 1, as some converters write, cannot be: highdicom refuses frame numbers
    for it (``TypeError``), as the standard has none for that class. It is referenced as a
    whole and ``notes`` gets a line saying which frames were scored, so the report stays
    exact about its evidence.
    """
    from_image = hd.sr.SourceImageForMeasurementGroup.from_source_image
    if int(ds.get("NumberOfFrames", 1) or 1) <= 1:
        return from_image(ds)
    try:
        return from_image(ds, referenced_frame_numbers=[f + 1 for f in frames])
    except TypeError as exc:
        if "multi-frame" not in str(exc):
            raise
    notes.append(
        f"instance {ds.SOPInstanceUID} (SOP class {ds.SOPClassUID}, whose IOD has no frames) "
        f"states {int(ds.NumberOfFrames)} frames; frame(s) "
        f"{', '.join(str(f + 1) for f in frames)} scored; referenced as a whole"
    )
    return from_image(ds)


def write_series_report(
    sources: Sequence[SRSource],
    row: Mapping[str, Any],
    card: Any,
    out: str | os.PathLike[str],
    *,
    model_path: str | os.PathLike[str],
    threshold: float | None,
    model_sha256: str | None = None,
) -> Path:
    """Write one series' finding (``row``: its ``level`` "series" row of
    ``mriscan.scan_predict.predict_inputs``) as a Comprehensive SR in the series' study.

    Parameters
    ----------
    sources : sequence of SRSource
        The slices pooled into the row (their files' headers only are read, with ``pydicom``).
    row : mapping
        ``label``, ``p_<class>`` for every class of ``card`` (floats in [0, 1]), ``slices``;
        ``aggregate`` names the rule (``"mean of the top-<k> slice probabilities"``); a
        non-empty ``warning`` (unreadable instances, flagged slices) is stated as an algorithm
        parameter ``note: ...``.
    card : ModelCard
        ``class_names``, ``healthy``, ``model_sha256``.
    out : path-like
        The folder; the file is ``<out>/<SOP Instance UID>.dcm``, written to a temporary file
        in that folder and renamed (``os.replace``), so a file of that name is always whole.
    model_path : path-like
        The model file (its name identifies the algorithm).
    threshold : float or None
        The two-class decision threshold used (None for more classes).
    model_sha256 : str, optional
        The model file's SHA-256 (hex); default: the card's, else the file's.

    The report's SOP Instance UID and Series Instance UID are derived
    (``pydicom.uid.generate_uid(entropy_srcs=...)``) from the source Series Instance UID, the
    model's SHA-256, the threshold and the pooling rule (the instance UID also from the
    instances scored, the label and the probabilities): the same report made again (a run
    repeated after a crash, into the same folder) replaces its file instead of adding a
    second report of the same finding, while another model, threshold, rule or content gives
    another (one UID never names two different reports).

    Returns
    -------
    Path
        The file: Comprehensive SR Storage (1.2.840.10008.5.1.4.1.1.88.33), Modality SR, the
        study and patient of the sources, a new series (Series Number
        ``report_series_number`` of the source's: ``SERIES_NUMBER_BASE`` + the source's modulo
        1000, ``SERIES_NUMBER_BASE`` for a source without one), content as the module doc
        describes. ``write_series_reports`` states the number chosen in each row.

    Raises
    ------
    StructuredReportError
        If there is no source, a source cannot be read, lacks a Study, Series or SOP Instance
        UID or has an invalid one (``pydicom.uid.UID.is_valid``), lacks a Modality, has a
        Type 1C patient/study element that does not parse, the sources span several
        series, or several patients (Patient ID) or studies (Study Instance UID), a frame is
        out of range, the row lacks a class's
        probability or its label is no class, or highdicom refuses the content (its reason,
        with the values it quotes masked: ``mriscan.dicom_headers.mask_values``).

    Values of the first source's Patient and Study modules that do not parse for their VR
    are mended or emptied in the report (``mriscan.dicom_headers.tidy_copied_header``); the
    warnings and log lines of pydicom and highdicom go to the debug log, values masked.
    """
    with library_messages():  # their warnings quote the header's values
        return _write_series_report(
            sources,
            row,
            card,
            out,
            model_path=model_path,
            threshold=threshold,
            model_sha256=model_sha256,
        )[0]


def _write_series_report(
    sources: Sequence[SRSource],
    row: Mapping[str, Any],
    card: Any,
    out: str | os.PathLike[str],
    *,
    model_path: str | os.PathLike[str],
    threshold: float | None,
    model_sha256: str | None = None,
) -> tuple[Path, int | None, int, list[str]]:
    """``write_series_report``, returning also the source's Series Number (None when it has
    none), the report's (``report_series_number``) and the lines saying which elements of
    the source header were mended or emptied in the report (``tidy_copied_header``)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import UID, generate_uid

    from mriscan import __version__
    from mriscan.dicom_sc import MANUFACTURER

    if not sources:
        raise StructuredReportError("no source instance: nothing to refer the finding to")
    names = tuple(card.class_names)
    label = row.get("label")
    if label not in names:
        raise StructuredReportError(f"the row's label {label!r} is not one of {list(names)}")
    probs: dict[str, float] = {}
    for n in names:
        p = row.get(f"p_{n}")
        if not isinstance(p, int | float) or not 0.0 <= float(p) <= 1.0:
            raise StructuredReportError(f"the row has no probability in [0, 1] for class {n!r}")
        probs[n] = float(p)
    frames: dict[Path, list[int]] = {}
    for s in sources:
        frames.setdefault(Path(s.path), []).append(int(s.frame))
    headers = []
    for path, fr in frames.items():
        ds = _read_header(path)
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not ds.get(key):
                raise StructuredReportError(
                    f"a source has no {key}: there is no study to file the report into"
                )
            if not UID(str(ds.get(key))).is_valid:  # copied into the report: it must be valid
                raise StructuredReportError(
                    f"a source's {key} is not a valid DICOM UID (digits and dots, at most 64 "
                    "characters, no component with a leading zero): fix the source's header"
                )
        if not ds.get("Modality"):  # highdicom reads it to check what the evidence is
            raise StructuredReportError(
                "the source has no Modality (0008,0060): it cannot be referenced as the "
                "report's evidence; fix the source's header"
            )
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        if bad := [f for f in fr if not 0 <= f < n_frames]:
            raise StructuredReportError(
                f"a source of {n_frames} frame(s) has no frame {bad[0] + 1} (1-based)"
            )
        headers.append((ds, sorted(set(fr))))
    series = {ds.SeriesInstanceUID for ds, _ in headers}
    if len(series) > 1:
        raise StructuredReportError(f"the sources span {len(series)} series, not one")
    # one report is filed under one patient and one study: a series whose instances name
    # several must not put a finding drawn partly from another's images into this record
    # the patient module is copied from the first instance: instances of one Patient ID that
    # disagree on name, birth date or sex would file the report under one of them unsaid
    for keyword, what in (("PatientID", "patients (Patient ID)"),
                          ("StudyInstanceUID", "studies (Study Instance UID)"),
                          ("PatientName", "Patient's Names (0010,0010)"),
                          ("PatientBirthDate", "Patient's Birth Dates (0010,0030)"),
                          ("PatientSex", "Patient's Sex values (0010,0040)")):  # fmt: skip
        counts: dict[str, int] = {}
        for ds, _ in headers:
            value = str(ds.get(keyword, "") or "").strip()
            counts[value] = counts.get(value, 0) + 1
        if len(counts) > 1:  # counts only: the reason is printed and must name no one
            split = " + ".join(str(n) for n in sorted(counts.values(), reverse=True))
            verb = "belong to" if keyword in ("PatientID", "StudyInstanceUID") else "state"
            raise StructuredReportError(
                f"the series' instances {verb} {len(counts)} {what} ({split} instances): "
                "one report cannot be filed for them; check the series"
            )
    first = headers[0][0]  # highdicom copies the patient and study from it
    try:
        changed = tidy_copied_header(first, "report")
    except HeaderError as exc:
        raise StructuredReportError(str(exc)) from exc
    for key in _TYPE2:
        if key not in first:
            setattr(first, key, None)  # Type 2: present and empty
    k = _top_k(row)
    rule = row.get("aggregate") or f"mean of the top-{k} slice probabilities"
    decision = (
        f"label: {names[1]} when P({names[1]}) >= {threshold:.6g}, else {names[0]}"
        if threshold is not None and len(names) == 2
        else "label: the most probable class"
    )
    pooling = (
        f"slice pooling: {rule} of each class over {row.get('slices', len(sources))} slice(s)"
        + ("" if len(names) == 2 else ", rescaled to sum to 1")
    )
    sha = model_sha256 or getattr(card, "model_sha256", "") or ""
    if not sha:
        from mriscan.readers import file_sha256

        try:
            sha = file_sha256(model_path)
        except OSError as exc:
            raise StructuredReportError(
                f"cannot read the model file to identify the report's algorithm ({exc})"
            ) from exc
    # the same source series, model, threshold and rule give the same report UIDs (see above)
    identity = [
        first.SeriesInstanceUID,
        sha,
        "threshold none" if threshold is None else f"threshold {float(threshold)!r}",
        f"pooling top{k}: {rule}",
    ]
    # the instance UID also depends on the content (the instances scored, the label and the
    # probabilities): one UID never names two different reports, which a PACS would treat as
    # one object (a series whose files changed gets a new report, in the same series)
    content = [
        *(f"{ds.SOPInstanceUID}#{','.join(map(str, fr))}" for ds, fr in sorted(
            headers, key=lambda h: str(h[0].SOPInstanceUID))),
        f"label {label}",
        *(f"p_{n} {probs[n]!r}" for n in names),
    ]  # fmt: skip
    frame_notes: list[str] = []
    try:
        source_items = [_source_image(hd, ds, fr, frame_notes) for ds, fr in headers]
    except (ValueError, TypeError, AttributeError) as exc:
        raise StructuredReportError(
            f"highdicom refused a source image ({mask_values(str(exc))})"
        ) from exc
    sop_uid = generate_uid(entropy_srcs=["mriscan SR instance", *identity, *content])
    series_uid = generate_uid(entropy_srcs=["mriscan SR series", *identity])
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"mriscan {Path(model_path).name}"[:1024],
        version=f"mriscan {__version__}" + (f"; model sha256 {sha[:16]}" if sha else ""),
        # the series row's warning (e.g. "1 of 12 instances unreadable ...: scored from the
        # others only"; counts only, no file names): a reader of the report must see that the
        # finding rests on part of the series
        parameters=[decision, pooling, "classes: " + ", ".join(names)]
        + ([f"note: {row['warning']}"] if row.get("warning") else [])
        + [f"note: {n}" for n in frame_notes],
        manufacturer=MANUFACTURER,
    )
    try:
        evaluations = []
        if len(names) > 2 and getattr(card, "healthy", None) is not None:
            present = codes.SCT.Absent if label == card.healthy else codes.SCT.Present
            evaluations.append(hd.sr.QualitativeEvaluation(codes.SCT.Neoplasm, present))
        measurements = []
        for n in names:
            measurement = hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=probs[n],
                unit=codes.UCUM.NoUnits,
                method=pooling_code(k),
            )
            # the class this probability is of: TID 300 row 2, a concept modifier of the
            # caller's choice ($ModType = SCT Classification), which highdicom's constructor
            # has no argument for; first, as the template's rows go (before the method)
            measurement[0].ContentSequence.insert(
                0,
                hd.sr.CodeContentItem(
                    name=codes.SCT.Classification,
                    value=class_code(n),
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
                ),
            )
            measurements.append(measurement)
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[sop_uid, "mriscan finding"]),
                    identifier="mriscan finding",
                ),
                finding_type=class_code(label),
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=evaluations or None,
                source_images=source_items,
            )
        ]
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(entropy_srcs=["mriscan", sha]),
                name="mriscan",
                manufacturer_name=MANUFACTURER,
                model_name=Path(model_path).name[:64],
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.SCT.ImagingProcedure,
            imaging_measurements=groups,
        )
        source_number = _series_number(first)
        number = report_series_number(source_number)
        sr = hd.sr.ComprehensiveSR(
            evidence=[ds for ds, _ in headers],
            content=report,
            series_instance_uid=series_uid,
            series_number=number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        if isinstance(exc, StructuredReportError):
            raise
        raise StructuredReportError(
            f"highdicom refused the report ({mask_values(str(exc))})"
        ) from exc
    sr.SeriesDescription = f"mriscan finding ({Path(model_path).name})"[:64]
    sr.SoftwareVersions = f"mriscan {__version__}"
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = "mriscan model classes and pooling rules"
    scheme.CodingSchemeResponsibleOrganization = "mriscan"
    sr.CodingSchemeIdentificationSequence = [scheme]
    out = Path(out)
    path = out / f"{sr.SOPInstanceUID}.dcm"
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_whole(path, lambda tmp: sr.save_as(tmp, enforce_file_format=True))
    except (OSError, ValueError) as exc:  # no half-written file is left (write_whole)
        raise StructuredReportError(f"cannot write {path} ({mask_values(str(exc))})") from exc
    return path, source_number, number, changed


def report_series_number(source: int | None) -> int:
    """The Series Number (0020,0011) of a report on a series numbered ``source``:
    ``SERIES_NUMBER_BASE`` + ``source`` modulo 1000, and ``SERIES_NUMBER_BASE`` itself for a
    source without one (None): a report's Series Number only sorts it beside its source in a
    viewer; its Series Instance UID, not the number, tells reports apart."""
    return SERIES_NUMBER_BASE + (source or 0) % 1000


def _series_number(ds: Any) -> int | None:
    """A header's Series Number (IS, Type 2: possibly absent or empty) as an int, else None.
    Raises ValueError for a value that is no integer (``write_series_report`` then refuses
    the report with highdicom's other refusals)."""
    value = ds.get("SeriesNumber")
    if value is None or str(value).strip() == "":
        return None
    return int(value)


def _top_k(row: Mapping[str, Any]) -> int:
    """The k of the row's rule "mean of the top-<k> slice probabilities" (``TOP_K`` if none)."""
    from mriscan.aggregate import TOP_K

    m = re.search(r"top-(\d+)", str(row.get("aggregate") or ""))
    return int(m.group(1)) if m else TOP_K


def write_series_reports(
    rows: Sequence[dict[str, Any]],
    sources: Mapping[str, Sequence[SRSource]],
    card: Any,
    out: str | os.PathLike[str],
    *,
    model_path: str | os.PathLike[str],
    threshold: float | None,
) -> None:
    """A report (``write_series_report``) for every ``level`` "series" row whose ``unit`` has
    ``sources``; the row gains ``dicom`` (the file) and ``dicom_series_number`` (the report's
    Series Number, ``report_series_number``), or ``dicom_skipped`` (why not: the
    ``StructuredReportError``'s reason), so one series' failure leaves the others written.
    A row whose source header had values mended or emptied in the report (Patient's Sex "U",
    a date YYYY-MM-DD, ...: ``mriscan.dicom_headers.tidy_copied_header``) gains
    ``dicom_note``, one clause per element, naming the element, never its value. A source
    series without a Series Number gets ``SERIES_NUMBER_BASE``: its ``dicom_note`` says so too,
    and a warning naming the row's ``path`` (the series as ``predict`` shows it) and the
    number is logged. A ``level`` "volume" row (NIfTI) gains
    ``dicom_skipped`` "not a DICOM input: ...". Other rows are left as they are. First removes
    the temporary files that writers killed midway left in ``out``
    (``remove_stale_temp_files``); the model file is hashed once."""
    remove_stale_temp_files(out)
    sha = getattr(card, "model_sha256", "") or ""
    if not sha and any(r.get("level") == "series" for r in rows):
        from mriscan.readers import file_sha256

        try:
            sha = file_sha256(model_path)
        except OSError:
            sha = ""  # each series row then says why it has no report
    for row in rows:
        level = row.get("level")
        if level == "volume":
            row["dicom_skipped"] = NOT_DICOM
        elif level == "series":
            try:
                with library_messages():  # their warnings quote the header's values
                    path, source_number, number, changed = _write_series_report(
                        sources.get(row["unit"], ()),
                        row,
                        card,
                        out,
                        model_path=model_path,
                        threshold=threshold,
                        model_sha256=sha or None,
                    )
            except StructuredReportError as exc:
                row["dicom_skipped"] = str(exc)
                continue
            row["dicom"] = str(path)
            row["dicom_series_number"] = number
            notes = list(changed)
            if source_number is None:
                notes.append(f"the source series has no Series Number: the report's is {number}")
            if notes:
                row["dicom_note"] = "; ".join(notes)
            if source_number is None:
                log.warning(
                    "%s: the source series has no Series Number; its Structured Report %s "
                    "gets Series Number %d",
                    row.get("path", row["unit"]),
                    path.name,
                    number,
                )


#: a temporary report file: ``.<SOP Instance UID>.<writer's process id>.tmp``
_TEMP_NAME = re.compile(r"\.([0-9.]+)\.(\d+)\.tmp")


def remove_stale_temp_files(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files (``.<SOP Instance UID>.<pid>.tmp``, see
    ``write_series_report``) in folder ``out`` whose writing process is no longer alive (a run
    killed while writing, e.g. ``kill -9``): a PACS import of the folder must not meet them.
    Files of a live process (another run writing into the folder now) are left. Returns the
    files removed; nothing when ``out`` is no folder, or on Windows (where ``os.kill`` cannot
    test a process without stopping it)."""
    out = Path(out)
    if os.name == "nt" or not out.is_dir():
        return []
    removed = []
    for p in sorted(out.iterdir()):
        m = _TEMP_NAME.fullmatch(p.name)
        if m is None or not p.is_file() or _alive(int(m.group(2))):
            continue
        with contextlib.suppress(FileNotFoundError):  # another run removed it meanwhile
            p.unlink()
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (POSIX: signal 0 tests without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process, or unsure
        return True
    return True


#: why an input gets no report
NOT_DICOM = "not a DICOM input: there is no study to file a Structured Report into"
