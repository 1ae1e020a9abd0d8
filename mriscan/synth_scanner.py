"""Synthetic scanner data with known answers: phantom volumes as DICOM series and NIfTI volumes.

The phantoms are ``mriscan.synth.phantom`` slices under an envelope that shrinks toward both ends
of the stack (so the brain area per slice is known to peak in the middle). They are written with
pydicom (made-up patient headers, MONOCHROME1/2, with and without windows, rescale, multi-frame)
and nibabel (any orientation), so tests can check grouping, windowing and orientation against
the arrays they started from. Nothing here is real patient data: names, IDs and birth dates are
invented on purpose, to test that none of them reaches mriscan's outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mriscan.errors import ConfigError
from mriscan.synth import phantom

__all__ = [
    "NIFTI_ORIENTATIONS",
    "FakePatient",
    "frame_stack",
    "phantom_volume",
    "stack_to_ras",
    "write_dicom_series",
    "write_nifti",
    "write_scanner_set",
]

_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
_MF_GREY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC Image Storage
# Image Orientation Patient (row direction, column direction) in LPS, as scanners write them
_IOP = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class FakePatient:
    """Made-up identifying header values (never real people)."""

    patient_id: str = "FAKE-0001"
    name: str = "Doe^Jane"
    birth_date: str = "19700101"
    sex: str = "F"


def phantom_volume(
    seed: int, *, n_slices: int = 9, canvas: int = 64, tumor: bool = False
) -> np.ndarray:
    """A stack of phantom slices, float32 (n_slices, canvas, canvas) in [0, 1].

    One ``mriscan.synth.phantom`` head inside a disc whose radius falls off like a sphere's
    cross-section away from the middle slice (so slice ``n_slices // 2`` has the largest head
    area and the area never grows toward either end), times a gain that rises from 0.85 to 1.0
    along the stack, plus a little noise per slice: every slice differs, so a flipped or
    permuted axis is detectable.
    """
    if n_slices < 1 or canvas < 16:
        raise ConfigError(
            f"n_slices must be >= 1 and canvas >= 16. Received: {n_slices}, {canvas}."
        )
    rng = np.random.default_rng([seed, 11])
    head = phantom(rng, tumor, canvas)
    yy, xx = np.mgrid[:canvas, :canvas]
    r = np.hypot(yy - (canvas - 1) / 2, xx - (canvas - 1) / 2) / (canvas / 2)
    fg = head > 0.2  # above the background noise
    extent = float(r[fg].max()) if fg.any() else 1.0  # the head's radius
    mid = (n_slices - 1) / 2
    out = np.empty((n_slices, canvas, canvas), np.float32)
    for k in range(n_slices):
        t = 0.0 if n_slices == 1 else (k - mid) / (mid + 1)
        radius = extent * np.sqrt(max(0.0, 1.0 - t * t))
        gain = 0.85 + 0.15 * (k / max(1, n_slices - 1))
        noisy = head * gain + rng.normal(0, 0.01, head.shape)
        out[k] = np.clip(noisy, 0, 1) * (r <= radius)
    return out


def frame_stack(stack: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The stack (Z, H, W) with its head shrunk to 60-100% and moved within the field of view,
    the same for every slice: one patient's placement in the scanner.

    Phantom heads sit in the middle of the canvas at nearly one size, so the whole-slice 16×16
    thumbnails that ``mriscan.duplicates`` compares (at correlation 0.95) looked alike across
    made-up patients, even across classes, and near-duplicate links joined 8 patients into 6
    split groups (30 into 3). Real patients are framed differently; so are these now. Bilinear
    (``scipy.ndimage.affine_transform``, order 1), zero outside the canvas.
    """
    from scipy import ndimage

    _, h, w = stack.shape
    scale = rng.uniform(0.45, 1.0)
    room_y, room_x = (1 - scale) * h / 2, (1 - scale) * w / 2
    dy, dx = rng.uniform(-room_y, room_y), rng.uniform(-room_x, room_x)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    # output (y, x) reads input centre + (y - centre - shift) / scale
    offset = centre - (centre + np.array([dy, dx])) / scale
    out = np.empty_like(stack)
    for k, plane in enumerate(stack):
        out[k] = ndimage.affine_transform(
            plane, np.eye(2) / scale, offset=offset, order=1, mode="constant", cval=0.0
        )
    return out


def stack_to_ras(stack: np.ndarray) -> np.ndarray:
    """Axial display slices (Z, H, W) -> a RAS+ voxel array (W, H, Z), and back by reading.

    Display convention (as DICOM axial images): rows run anterior -> posterior, columns the
    patient's right -> left. So ``ras[x, y, k] = stack[k, H-1-y, W-1-x]``; ``mriscan.nifti``
    slices a canonical volume back into exactly ``stack``.
    """
    return np.ascontiguousarray(stack[:, ::-1, ::-1].transpose(2, 1, 0))


def write_nifti(
    path: str | os.PathLike[str],
    ras: np.ndarray,
    *,
    axcodes: str = "RAS",
    zooms: tuple[float, float, float] = (1.0, 1.0, 1.0),
    dtype: type = np.int16,
    scale: float = 1000.0,
) -> Path:
    """Save a RAS+ volume in the voxel order ``axcodes`` (e.g. ``"LAS"``, ``"PSR"``).

    The voxel array is permuted/flipped to ``axcodes`` and the affine changed to match, so that
    ``nibabel.as_closest_canonical`` recovers ``ras * scale`` (cast to ``dtype``) exactly.
    ``ras`` of shape (X, Y, Z) or (X, Y, Z, T); ``zooms`` in mm along R, A, S.
    """
    path = Path(path)
    data = np.rint(np.asarray(ras, np.float64) * scale).astype(dtype)
    base = np.diag([*zooms, 1.0])
    base[:3, 3] = -np.asarray(zooms) * (np.asarray(data.shape[:3]) - 1) / 2  # centred
    t = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    moved = apply_orientation(data, t)
    affine = base @ inv_ornt_aff(t, data.shape[:3])
    img = nib.Nifti1Image(np.ascontiguousarray(moved), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def write_dicom_series(
    folder: str | os.PathLike[str],
    stack: np.ndarray,
    *,
    patient: FakePatient | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    description: str = "T1 AX",
    plane: str = "axial",
    monochrome1: bool = False,
    window: tuple[float, float] | None = (600.0, 1000.0),
    slope: float = 1.0,
    intercept: float = 0.0,
    stored_max: int = 2000,
    multiframe: bool = False,
    suffix: str = ".dcm",
    seed: int = 0,
) -> list[Path]:
    """Write a phantom stack (Z, H, W) in [0, 1] as one DICOM series (explicit VR LE).

    Stored values are ``round(stack * stored_max)`` (uint16, 12 bits); MONOCHROME1 stores
    ``stored_max - value`` so that the displayed image is the same. The real-world value of a
    pixel is ``stored * slope + intercept``; ``window`` (centre, width) in real-world units of
    the MONOCHROME2 values, or None for no VOI window (MONOCHROME1 files get its mirror image,
    centre ``stored_max * slope + 2 * intercept - centre``, so the display is the same: with
    the window as given, the head fell below it and read nearly black). ``multiframe``
    writes one file with all slices as frames (Multi-frame Grayscale Word Secondary Capture)
    instead of one file per slice. The header
    carries ``patient``'s made-up name, birth date and ID. ``suffix`` may be "" (no suffix).

    Returns
    -------
    list of Path
        The files written, in slice order.
    """
    if plane not in _IOP:
        raise ConfigError(f"plane must be one of {sorted(_IOP)}. Received: plane={plane!r}.")
    patient = patient if patient is not None else FakePatient()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.rint(np.clip(stack, 0, 1) * stored_max).astype(np.uint16)
    if monochrome1:
        stored = (stored_max - stored).astype(np.uint16)
    study_uid = study_uid or generate_uid(entropy_srcs=[patient.patient_id, "study", str(seed)])
    series_uid = generate_uid(entropy_srcs=[study_uid, "series", str(series_number), str(seed)])
    iop = _IOP[plane]
    normal = np.cross(iop[:3], iop[3:])
    n = stored.shape[0]
    frames = [stored] if multiframe else [stored[k : k + 1] for k in range(n)]
    paths = []
    for i, block in enumerate(frames):
        sop_class = _MF_GREY_WORD_SC if multiframe else _MR_IMAGE
        sop_uid = generate_uid(entropy_srcs=[series_uid, "instance", str(i)])
        ds = _base_dataset(patient, sop_class, sop_uid, study_uid, series_uid)
        ds.Modality = "MR"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = i + 1
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [float(v) for v in normal * (i * 3.0 - 20.0)]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 3.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        ds.Rows, ds.Columns = int(block.shape[1]), int(block.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if window is not None:
            centre = window[0]
            if monochrome1:  # the window of the mirrored values: the same display
                centre = stored_max * slope + 2 * intercept - centre
            ds.WindowCenter, ds.WindowWidth = f"{centre:g}", f"{window[1]:g}"
        if multiframe:
            ds.NumberOfFrames = n
        ds.PixelData = np.ascontiguousarray(block if multiframe else block[0]).tobytes()
        name = "multiframe" if multiframe else f"IM{i + 1:04d}"
        path = folder / f"{name}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _base_dataset(
    patient: FakePatient, sop_class: str, sop_uid: str, study_uid: str, series_uid: str
) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.InstitutionName = "Fictional General Hospital"
    ds.ReferringPhysicianName = "Smith^John"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyID, ds.AccessionNumber = "20240102", "S1", "ACC-FAKE-1"
    return ds


# the voxel orders the NIfTI volumes of ``write_scanner_set`` cycle through (nibabel axcodes)
NIFTI_ORIENTATIONS = ("RAS", "LPS", "LAS", "PSR", "ASL", "RPI")


#: how many placements a patient may be drawn with before the last is kept
_PLACEMENT_TRIES = 20
#: the highest correlation a made-up patient's slice thumbnail may have with one of the other
#: class: below ingest's near-duplicate threshold (``mriscan.duplicates.DEFAULT_THRESHOLD``,
#: 0.95), with a margin for the windowing a reader applies
_CROSS_CLASS_LIMIT = 0.9


def _framed_series(
    seed: int, i: int, attempt: int, n_series: int, n_slices: int, canvas: int, label: str
) -> list[np.ndarray]:
    """Patient ``i``'s ``n_series`` phantom stacks, framed with one placement (attempt 0 is
    the placement every earlier mriscan drew, so sets that needed no redraw are unchanged)."""
    key = [seed, i, 13] if attempt == 0 else [seed, i, 13, attempt]
    placement = np.random.default_rng(key).bit_generator.state
    out = []
    for s in range(n_series):
        stack = phantom_volume(
            seed * 100_003 + i * 101 + s, n_slices=n_slices, canvas=canvas, tumor=label == "yes"
        )
        # one placement per patient: every series of the patient is framed alike
        framing = np.random.default_rng()
        framing.bit_generator.state = placement
        out.append(frame_stack(stack, framing))
    return out


def _unit_signatures(stack: np.ndarray) -> np.ndarray:
    """The slices' ``mriscan.duplicates.signature`` thumbnails, centred and scaled to unit
    length (float32, (N, 256)): their dot products are the correlations ingest compares."""
    from mriscan.duplicates import signatures

    u8 = (np.clip(stack, 0, 1) * 255).astype(np.uint8)
    sig = signatures(list(u8)).reshape(len(u8), -1).astype(np.float32)
    sig -= sig.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(sig, axis=1, keepdims=True)
    return sig / np.where(norm > 0, norm, 1)


def write_scanner_set(
    out_dir: str | os.PathLike[str],
    *,
    fmt: str,
    patients: int = 8,
    tumor_fraction: float = 0.5,
    series_per_patient: int = 2,
    n_slices: int = 9,
    canvas: int = 64,
    seed: int = 0,
) -> dict[str, int]:
    """A labelled set of phantom scanner data under ``out_dir/yes`` and ``out_dir/no``.

    ``fmt="dicom"``: ``patients`` made-up patients (``FakePatient``: ID ``SYN-<seed>-<i>``,
    invented name and birth date), each in one study with ``series_per_patient`` axial series
    of ``n_slices`` slices (``canvas`` pixels square) in ``<class>/patient-<i>/series-<s>/``;
    the series alternate MONOCHROME2 / MONOCHROME1 and every third one has no VOI window
    (the rest Window Center/Width 600/1000), so a reader's inversion and fallback windowing
    are exercised. ``fmt="nifti"``: ``patients × series_per_patient`` volumes
    ``<class>/vol-<i>-<s>_<axcodes>.nii.gz``, their voxel orders cycling through
    ``NIFTI_ORIENTATIONS`` (``write_nifti``: the canonical volume is the same phantom).
    The first ``round(patients * tumor_fraction)`` patients are tumor cases (``yes``); every
    volume is seeded from ``seed``, the patient and the series, and framed by ``frame_stack``
    with one placement per patient (so near-duplicate links join a patient's slices, not
    different patients': 8 patients make 8 split groups; 30 patients of 20 slices at 256², 24).
    A placement that leaves a slice correlating above 0.9 with a slice of the other class
    (16×16 thumbnails, as ingest compares them) is drawn again (up to 20 times), so the set
    ingests under ``--strict`` without near-identical slices under two classes.

    Returns ``{"yes": patients, "no": patients, "series": n, "slices": n}`` (DICOM) or
    ``{"yes": volumes, "no": volumes, "volumes": n, "slices": n}`` (NIfTI).

    Raises
    ------
    ConfigError
        An unknown ``fmt``; ``patients < 2``; ``tumor_fraction`` that leaves a class without a
        patient; ``series_per_patient < 1``; ``n_slices < 1`` or ``canvas < 16``.
    """
    if fmt not in ("dicom", "nifti"):
        raise ConfigError(f"fmt must be 'dicom' or 'nifti'. Received: fmt={fmt!r}.")
    if patients < 2 or series_per_patient < 1:
        raise ConfigError(
            "patients must be >= 2 and series_per_patient >= 1. Received: "
            f"patients={patients}, series_per_patient={series_per_patient}."
        )
    n_yes = round(patients * tumor_fraction)
    if not 0 < n_yes < patients:
        raise ConfigError(
            f"tumor_fraction={tumor_fraction} of {patients} patients leaves a class without a "
            "patient: choose a fraction (or more patients) that gives both classes one."
        )
    out = Path(out_dir)
    counts = {"yes": 0, "no": 0, "slices": 0, "series" if fmt == "dicom" else "volumes": 0}
    k = 0  # series / volume counter across patients: the MONOCHROME, window, axcodes cycles
    taken: dict[str, list[np.ndarray]] = {"yes": [], "no": []}  # signatures written, by class
    for i in range(patients):
        label = "yes" if i < n_yes else "no"
        person = FakePatient(
            patient_id=f"SYN-{seed}-{i:04d}",
            name=f"Synth^Patient{i:04d}",
            birth_date=f"19{50 + i % 50:02d}0{1 + i % 9}1{i % 10}",
            sex="FM"[i % 2],
        )
        other = taken["no" if label == "yes" else "yes"]
        for attempt in range(_PLACEMENT_TRIES):
            stacks = _framed_series(seed, i, attempt, series_per_patient, n_slices, canvas, label)
            sigs = _unit_signatures(np.concatenate(stacks))
            if not other or float((np.concatenate(other) @ sigs.T).max()) < _CROSS_CLASS_LIMIT:
                break
        taken[label].append(sigs)
        for s, stack in enumerate(stacks):
            if fmt == "dicom":
                write_dicom_series(
                    out / label / f"patient-{i:04d}" / f"series-{s + 1}",
                    stack,
                    patient=person,
                    series_number=s + 1,
                    monochrome1=k % 2 == 1,
                    window=None if k % 3 == 2 else (600.0, 1000.0),
                    seed=seed * 1000 + i,
                )
                counts["series"] += 1
            else:
                axcodes = NIFTI_ORIENTATIONS[k % len(NIFTI_ORIENTATIONS)]
                folder = out / label
                folder.mkdir(parents=True, exist_ok=True)
                write_nifti(folder / f"vol-{i:04d}-{s + 1}_{axcodes}.nii.gz", stack_to_ras(stack),
                            axcodes=axcodes)  # fmt: skip
                counts["volumes"] += 1
            counts["slices"] += n_slices
            k += 1
        counts[label] += 1 if fmt == "dicom" else series_per_patient
    return counts
