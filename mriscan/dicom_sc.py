"""Grad-CAM overlays written back as DICOM: one Secondary Capture Image per explained slice,
filed in the study of the DICOM file the slice came from (``mriscan explain --dicom-out``).

The object is built with ``highdicom`` (``highdicom.sc.SCImage.from_ref_dataset``), which
copies the source's Patient and General Study modules (Patient Name, Patient ID, Birth Date,
Sex, Study Instance UID, Accession Number, ...) so that a PACS files the overlay into the
source's study. Such a file therefore carries the patient's identity, by design and unlike
everything else mriscan writes (the store, predictions, reports and explain's PNGs hold
pseudonyms only); keep these files where the source images may be kept. Values that do not
parse for their VR (Patient's Sex "U", a date "1961-07-23") are mended or emptied in the copy
first (``mriscan.dicom_headers``). Keras-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mriscan.dicom_headers import HeaderError, library_messages, mask_values, tidy_copied_header
from mriscan.errors import MriscanError
from mriscan.io import display_path, write_whole

__all__ = ["SCSeries", "SecondaryCaptureError", "patient_orientation", "write_secondary_capture"]

#: Manufacturer (0008,0070) of the equipment that made the Secondary Capture
MANUFACTURER = "mriscan"
# the patient-based (LPS) axes: +x toward the patient's left, +y posterior, +z head
_POSITIVE, _NEGATIVE = ("L", "P", "H"), ("R", "A", "F")


class SecondaryCaptureError(MriscanError, ValueError):
    """A Secondary Capture cannot be made for a source file (the reason says why)."""


@dataclass(frozen=True)
class SCSeries:
    """The new series a run's Secondary Captures of one source series go into.

    Attributes
    ----------
    series_instance_uid : str
        One per source series, model and map (``explain`` derives it with
        ``pydicom.uid.generate_uid(entropy_srcs=...)``, so a rerun writes the same series).
    series_number : int
    description : str
        Series Description (0008,103E), e.g. "mriscan Grad-CAM (yes)".
    """

    series_instance_uid: str
    series_number: int
    description: str


def patient_orientation(ds, frame: int = 0) -> tuple[str, str]:
    """Patient Orientation (0020,0020) of a source image's rows and columns: the patient axis
    each points along most (DICOM PS3.3 C.7.6.1.1.1: L/R, A/P, H/F), from its Image
    Orientation (Patient) (top level, or the Plane Orientation Sequence of an enhanced
    multi-frame file, shared or for ``frame``, 0-based), else its own Patient Orientation.

    Only the dominant letter of each direction is given (``highdicom`` accepts single
    letters): an oblique axial slice tilted 20° is still ("L", "P").

    Raises
    ------
    SecondaryCaptureError
        If the file states neither.
    """
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        for seq, index in (
            ("SharedFunctionalGroupsSequence", 0),
            ("PerFrameFunctionalGroupsSequence", frame),
        ):
            items = ds.get(seq)
            if items and len(items) > index and items[index].get("PlaneOrientationSequence"):
                iop = items[index].PlaneOrientationSequence[0].get("ImageOrientationPatient")
                if iop is not None:
                    break
    if iop is not None and len(iop) == 6:
        cos = np.asarray([float(v) for v in iop]).reshape(2, 3)
        letters = []
        for v in cos:
            k = int(np.argmax(np.abs(v)))
            letters.append(_POSITIVE[k] if v[k] > 0 else _NEGATIVE[k])
        return letters[0], letters[1]
    own = ds.get("PatientOrientation")
    if own is not None and len(own) == 2 and all(str(x) in _POSITIVE + _NEGATIVE for x in own):
        return str(own[0]), str(own[1])
    raise SecondaryCaptureError(
        "the source states no Image Orientation (Patient) or single-letter Patient "
        "Orientation, so the overlay's orientation cannot be written"
    )


def write_secondary_capture(
    source: str | os.PathLike[str],
    rgb: np.ndarray,
    path: str | os.PathLike[str],
    *,
    series: SCSeries,
    instance_number: int,
    frame: int = 0,
    derivation: str = "",
    notes: list[str] | None = None,
) -> Path:
    """Write ``rgb`` as a Secondary Capture Image in the study of the DICOM file ``source``.

    Parameters
    ----------
    source : path-like
        The DICOM file the slice was read from (its header only is read, with ``pydicom``).
    rgb : ndarray of shape (H, W, 3), uint8
        The image (``mriscan.plots.overlay_rgb``), stored as 8-bit RGB, uncompressed
        (Explicit VR Little Endian).
    path : path-like
        The file written (folders created), or an existing folder: then the file is
        ``<folder>/<SOP Instance UID>.dcm``. Written to a temporary file first and renamed, so
        a rerun replaces the object whole.
    series : SCSeries
        The new series the image belongs to.
    instance_number : int >= 1
    frame : int
        The source frame (0-based) the slice is, referenced as Referenced Frame Number
        frame + 1 in a multi-frame source.
    derivation : str
        Derivation Description (0008,2111), e.g. the model and class explained (at most 1024
        characters, the ST limit).
    notes : list of str, optional
        Gets one line per element of the source's Patient and Study modules that was mended
        or emptied in the copy (``mriscan.dicom_headers.tidy_copied_header``: e.g. a birth
        date written YYYY-MM-DD, Patient's Sex "U"), naming the element, never its value.

    Returns
    -------
    Path
        The file written. Its SOP Instance UID is derived from the series' UID, the source's
        SOP Instance UID and ``frame`` (``generate_uid(entropy_srcs=...)``): the same slice
        explained again into the same series is the same object. The object has the Secondary
        Capture Image Storage SOP Class
        (1.2.840.10008.5.1.4.1.1.7), Modality OT, the source's Patient and Study modules
        (``highdicom.sc.SCImage.from_ref_dataset``), Patient Orientation from
        ``patient_orientation``, and a Source Image Sequence naming the source SOP instance
        (and frame).

    Raises
    ------
    SecondaryCaptureError
        If ``source`` cannot be read as DICOM, has no Study Instance UID, states no
        orientation, or has a Type 1C patient/study element that does not parse; if ``rgb``
        is not (H, W, 3) uint8; if highdicom refuses the object or it cannot be written (the
        reason names no header value: ``mriscan.dicom_headers.mask_values``). The warnings
        and log lines of pydicom and highdicom meanwhile go to the debug log, values masked
        (``mriscan.dicom_headers.library_messages``).
    """
    import pydicom

    from mriscan.dicom import read_header

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SecondaryCaptureError(
            f"the overlay must be an (H, W, 3) uint8 array; got {rgb.shape} {rgb.dtype}"
        )
    try:
        ref = read_header(source)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise SecondaryCaptureError(f"cannot read the source's DICOM header ({exc})") from exc
    with library_messages():  # their warnings quote the header's values
        if not ref.get("StudyInstanceUID") or not ref.get("SOPInstanceUID"):
            raise SecondaryCaptureError(
                "the source has no Study or SOP Instance UID: there is no study to file the "
                "Secondary Capture into"
            )
        try:
            changed = tidy_copied_header(ref, "Secondary Capture")
        except HeaderError as exc:
            raise SecondaryCaptureError(str(exc)) from exc
        orientation = patient_orientation(ref, frame)
        try:
            sc = _build(ref, rgb, series, instance_number, frame, orientation, derivation)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise SecondaryCaptureError(
                f"highdicom refused the Secondary Capture ({mask_values(str(exc))})"
            ) from exc
        path = Path(path)
        if path.is_dir():
            path = path / f"{sc.SOPInstanceUID}.dcm"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            written = write_whole(path, lambda tmp: sc.save_as(tmp, enforce_file_format=True))
        except (OSError, ValueError) as exc:  # no half-written file is left (write_whole)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SecondaryCaptureError(
                f"cannot write {display_path(path)} ({mask_values(reason)})"
            ) from exc
    if notes is not None:
        notes.extend(changed)
    return written


def _build(
    ref: Any,
    rgb: np.ndarray,
    series: SCSeries,
    instance_number: int,
    frame: int,
    orientation: tuple[str, str],
    derivation: str,
) -> Any:
    """The ``highdicom.sc.SCImage`` of ``write_secondary_capture``. Raises what highdicom
    and pydicom raise for values they refuse (ValueError, TypeError, ...)."""
    import highdicom
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sc = highdicom.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=generate_uid(
            entropy_srcs=[
                "mriscan SC instance",
                series.series_instance_uid,
                str(ref.SOPInstanceUID),
                str(frame),
            ]
        ),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.SeriesDescription = series.description[:64]
    sc.BurnedInAnnotation = "NO"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    if derivation:
        sc.DerivationDescription = derivation[:1024]
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    if int(ref.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = frame + 1
    sc.SourceImageSequence = [item]
    return sc
